//! Node compatibility: may a snapshot taken on one node be restored on another?

use std::collections::BTreeSet;
use std::fmt;

use podsnap_api::{NodeFingerprint, SnapshotScope};

/// One reason a snapshot cannot be restored on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Different CPU architectures.
    Architecture {
        /// Where the snapshot was taken.
        snapshot: String,
        /// This node.
        node: String,
    },
    /// Different machine series.
    MachineSeries {
        /// Where the snapshot was taken.
        snapshot: String,
        /// This node.
        node: String,
    },
    /// The node lacks CPU features the snapshot's node had.
    MissingCpuFeatures(Vec<String>),
    /// A different engine.
    Engine {
        /// Where the snapshot was taken.
        snapshot: String,
        /// This node.
        node: String,
    },
    /// The same engine at another version.
    EngineVersion {
        /// The engine.
        engine: String,
        /// Where the snapshot was taken.
        snapshot: String,
        /// This node.
        node: String,
    },
    /// The snapshot holds GPU state and the node lacks a GPU model it was taken with.
    GpuModels {
        /// Where the snapshot was taken.
        snapshot: Vec<String>,
        /// This node.
        node: Vec<String>,
    },
    /// The snapshot holds GPU state and the node's driver differs.
    GpuDriver {
        /// Where the snapshot was taken.
        snapshot: String,
        /// This node.
        node: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Architecture { snapshot, node } => write!(
                f,
                "the snapshot was taken on a {snapshot} CPU and this node is {node}; restore it on a {snapshot} node"
            ),
            Self::MachineSeries { snapshot, node } => write!(
                f,
                "the snapshot was taken on machine series {snapshot} and this node is {node}; restore on {snapshot} nodes (pin the node pool's machine series) or take a new snapshot here"
            ),
            Self::MissingCpuFeatures(features) => write!(
                f,
                "this node's CPU lacks features the snapshot may use: {}; restore on a node with a CPU at least as new",
                features.join(", ")
            ),
            Self::Engine { snapshot, node } => write!(
                f,
                "the snapshot was taken by the {snapshot} engine and this Pod runs with {node}; use runtimeClassName {snapshot} or take a new snapshot"
            ),
            Self::EngineVersion {
                engine,
                snapshot,
                node,
            } => write!(
                f,
                "the snapshot needs {engine} version {snapshot} and this node has {node}; restore on a node with the same version or take a new snapshot after the upgrade"
            ),
            Self::GpuModels { snapshot, node } => write!(
                f,
                "the snapshot holds GPU state from [{}] and this node has [{}]; restore on a node with the same GPU model",
                snapshot.join(", "),
                node.join(", ")
            ),
            Self::GpuDriver { snapshot, node } => write!(
                f,
                "the snapshot needs GPU driver {snapshot} and this node has {node}; restore on a node with the same driver"
            ),
        }
    }
}

/// Every reason why a snapshot taken on `snapshot` cannot be restored on `node`; empty when it
/// can. CPU count and memory size never matter.
///
/// With `rootfs-only` scope no process state is restored, so only the architecture counts.
pub fn check_compatibility(
    snapshot: &NodeFingerprint,
    node: &NodeFingerprint,
    scope: SnapshotScope,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if snapshot.architecture != node.architecture {
        out.push(Mismatch::Architecture {
            snapshot: snapshot.architecture.clone(),
            node: node.architecture.clone(),
        });
    }
    if scope == SnapshotScope::RootfsOnly {
        return out;
    }
    if snapshot.cpu.machine_series != node.cpu.machine_series {
        out.push(Mismatch::MachineSeries {
            snapshot: snapshot.cpu.machine_series.clone(),
            node: node.cpu.machine_series.clone(),
        });
    }
    let missing: Vec<String> = snapshot
        .cpu_features
        .difference(&node.cpu_features)
        .cloned()
        .collect();
    if !missing.is_empty() {
        out.push(Mismatch::MissingCpuFeatures(missing));
    }
    if snapshot.engine.name != node.engine.name {
        out.push(Mismatch::Engine {
            snapshot: snapshot.engine.name.clone(),
            node: node.engine.name.clone(),
        });
    } else if snapshot.engine.version != node.engine.version {
        out.push(Mismatch::EngineVersion {
            engine: snapshot.engine.name.clone(),
            snapshot: snapshot.engine.version.clone(),
            node: node.engine.version.clone(),
        });
    }
    if !snapshot.gpus.is_empty() {
        let models = |f: &NodeFingerprint| -> BTreeSet<String> {
            f.gpus.iter().map(|g| g.model.clone()).collect()
        };
        let (want, have) = (models(snapshot), models(node));
        if !want.is_subset(&have) {
            out.push(Mismatch::GpuModels {
                snapshot: want.into_iter().collect(),
                node: have.into_iter().collect(),
            });
        }
        let driver = |f: &NodeFingerprint| f.gpus.first().map(|g| g.driver_version.clone());
        if let (Some(want), Some(have)) = (driver(snapshot), driver(node))
            && want != have
        {
            out.push(Mismatch::GpuDriver {
                snapshot: want,
                node: have,
            });
        }
    }
    out
}
