//! Snapshot selection: which snapshot a new Pod restores from, or why it starts cold.
//!
//! Rules, in order:
//! 1. The Pod must be governed by exactly one policy ([`governing_policy`]).
//! 2. With grouping, the Pod must carry every grouping label; only snapshots whose labels
//!    carry the same values are candidates.
//! 3. Candidates are the policy's Ready snapshots (not being deleted), newest first by
//!    creation time, then by name.
//! 4. A Pod annotated `podsnap.dev/ps-name` (or GKE's `podsnapshot.gke.io/ps-name`) considers
//!    only that snapshot; it must still belong to the policy, be Ready, be in the group and be
//!    compatible. A pin that fails never falls back to another snapshot.
//! 5. The first candidate whose distilled-spec hash equals the Pod's (skipped for
//!    `rootfs-only` snapshots) and whose node fingerprint is compatible with this node wins.

use std::collections::BTreeMap;
use std::fmt;

use podsnap_api::snapshot::RestoreRequirements;
use podsnap_api::{
    GKE_PIN_ANNOTATION, NodeFingerprint, PIN_ANNOTATION, PodSnapshot, PodSnapshotPolicy,
    SnapshotScope,
};

use crate::compat::{Mismatch, check_compatibility};
use crate::distill::SpecHash;
use crate::matching::{PolicyMatch, governing_policy};

/// What selection needs to know about the Pod being created.
#[derive(Clone, Debug)]
pub struct PodFacts<'a> {
    /// The Pod's namespace.
    pub namespace: &'a str,
    /// The Pod's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The Pod's annotations (for the pin).
    pub annotations: &'a BTreeMap<String, String>,
    /// The hash of the Pod's distilled spec.
    pub spec_hash: &'a SpecHash,
}

/// The result of selection.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection<'a> {
    /// Restore from this snapshot.
    Restore {
        /// The snapshot.
        snapshot: &'a PodSnapshot,
        /// The policy governing the Pod and the snapshot.
        policy: &'a PodSnapshotPolicy,
        /// Newer Ready snapshots that were passed over, and why.
        passed_over: Vec<Candidate>,
    },
    /// Start the Pod normally, for this reason.
    ColdStart(NoSnapshot),
}

/// A snapshot that could not be used, and every reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The snapshot's name.
    pub name: String,
    /// Why it does not fit.
    pub rejections: Vec<Rejection>,
}

/// Why one snapshot does not fit the Pod or the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The Pod's distilled spec differs from the snapshot's.
    SpecHash {
        /// The snapshot's hash.
        snapshot: String,
        /// The Pod's hash.
        pod: String,
    },
    /// The node differs.
    Node(Mismatch),
    /// The snapshot records no restore requirements (it was not made by podsnap's agent).
    NoRequirements,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpecHash { snapshot, pod } => write!(
                f,
                "the Pod's distilled spec (hash {}) differs from the snapshot's ({}): image, command, args, volumes, security context or another hashed field changed; `podsnap distill -f POD.yaml` shows the hashed fields",
                short(pod),
                short(snapshot)
            ),
            Self::Node(mismatch) => mismatch.fmt(f),
            Self::NoRequirements => write!(
                f,
                "the snapshot records no spec hash or node fingerprint, so it cannot be checked; delete it and let the agent take a new one"
            ),
        }
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons: Vec<String> = self.rejections.iter().map(ToString::to_string).collect();
        write!(f, "{}: {}", self.name, reasons.join("; "))
    }
}

/// Why a Pod starts cold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoSnapshot {
    /// No policy selects the Pod.
    NoPolicy,
    /// Several policies select the Pod.
    AmbiguousPolicies(Vec<String>),
    /// The Pod lacks grouping labels its policy needs.
    MissingGroupLabels {
        /// The policy.
        policy: String,
        /// The labels missing on the Pod.
        labels: Vec<String>,
    },
    /// The policy has no Ready snapshot (in the Pod's group) yet.
    NoReadySnapshot {
        /// The policy.
        policy: String,
        /// The Pod's group, when grouping is on.
        group: BTreeMap<String, String>,
    },
    /// Every Ready snapshot was rejected.
    NoneCompatible(Vec<Candidate>),
    /// The pinned snapshot does not exist in the Pod's namespace.
    PinnedNotFound(String),
    /// The pinned snapshot belongs to another policy.
    PinnedOtherPolicy {
        /// The snapshot.
        snapshot: String,
        /// Its policy.
        snapshot_policy: String,
        /// The Pod's policy.
        pod_policy: String,
    },
    /// The pinned snapshot is not Ready (or is being deleted).
    PinnedNotReady {
        /// The snapshot.
        snapshot: String,
        /// Its status column.
        status: String,
    },
    /// The pinned snapshot is from another group.
    PinnedOtherGroup(String),
    /// The pinned snapshot does not fit.
    PinnedIncompatible(Candidate),
}

impl NoSnapshot {
    /// A short CamelCase reason for events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoPolicy => "NoPolicy",
            Self::AmbiguousPolicies(_) => "AmbiguousPolicies",
            Self::MissingGroupLabels { .. } => "MissingGroupLabels",
            Self::NoReadySnapshot { .. } => "NoSnapshot",
            Self::NoneCompatible(c) => {
                let all =
                    |pred: fn(&Rejection) -> bool| c.iter().all(|c| c.rejections.iter().any(pred));
                if all(|r| matches!(r, Rejection::SpecHash { .. })) {
                    "HashMismatch"
                } else if all(|r| matches!(r, Rejection::Node(_))) {
                    "NodeMismatch"
                } else {
                    "NoCompatibleSnapshot"
                }
            }
            Self::PinnedNotFound(_)
            | Self::PinnedOtherPolicy { .. }
            | Self::PinnedNotReady { .. }
            | Self::PinnedOtherGroup(_)
            | Self::PinnedIncompatible(_) => "PinnedSnapshotUnusable",
        }
    }
}

impl fmt::Display for NoSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPolicy => write!(f, "no PodSnapshotPolicy selects this Pod"),
            Self::AmbiguousPolicies(names) => write!(
                f,
                "{} policies select this Pod ({}), so podsnap uses none; make their selectors disjoint",
                names.len(),
                names.join(", ")
            ),
            Self::MissingGroupLabels { policy, labels } => write!(
                f,
                "policy {policy} groups snapshots by label(s) {} that this Pod lacks; add them to the Pod",
                labels.join(", ")
            ),
            Self::NoReadySnapshot { policy, group } if group.is_empty() => write!(
                f,
                "policy {policy} has no Ready snapshot yet; the first one is taken when this Pod's trigger fires"
            ),
            Self::NoReadySnapshot { policy, group } => {
                let pairs: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "policy {policy} has no Ready snapshot for group {} yet",
                    pairs.join(",")
                )
            }
            Self::NoneCompatible(candidates) => {
                write!(f, "no Ready snapshot fits: ")?;
                let parts: Vec<String> = candidates.iter().map(ToString::to_string).collect();
                write!(f, "{}", parts.join(" | "))
            }
            Self::PinnedNotFound(name) => write!(
                f,
                "the pinned snapshot {name} does not exist in this namespace; fix or remove the {PIN_ANNOTATION} annotation"
            ),
            Self::PinnedOtherPolicy {
                snapshot,
                snapshot_policy,
                pod_policy,
            } => write!(
                f,
                "the pinned snapshot {snapshot} belongs to policy {snapshot_policy}, but this Pod is governed by {pod_policy}; pin a snapshot of {pod_policy}"
            ),
            Self::PinnedNotReady { snapshot, status } => write!(
                f,
                "the pinned snapshot {snapshot} is not Ready (status {}); wait for it or pin another",
                if status.is_empty() { "unknown" } else { status }
            ),
            Self::PinnedOtherGroup(name) => write!(
                f,
                "the pinned snapshot {name} belongs to another group than this Pod's labels; pin one of its own group"
            ),
            Self::PinnedIncompatible(candidate) => {
                write!(f, "the pinned snapshot does not fit: {candidate}")
            }
        }
    }
}

/// Chooses the snapshot to restore `pod` from on `node`, or says why there is none.
pub fn select_snapshot<'a>(
    pod: &PodFacts<'_>,
    policies: &'a [PodSnapshotPolicy],
    snapshots: &'a [PodSnapshot],
    node: &NodeFingerprint,
) -> Selection<'a> {
    let policy = match governing_policy(pod.namespace, pod.labels, policies) {
        PolicyMatch::None => return Selection::ColdStart(NoSnapshot::NoPolicy),
        PolicyMatch::Ambiguous(many) => {
            let names = many.iter().map(|p| name_of(&p.metadata.name)).collect();
            return Selection::ColdStart(NoSnapshot::AmbiguousPolicies(names));
        }
        PolicyMatch::One(policy) => policy,
    };
    let policy_name = name_of(&policy.metadata.name);
    let group_keys = policy.spec.group_labels();
    let missing: Vec<String> = group_keys
        .iter()
        .filter(|k| !pod.labels.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Selection::ColdStart(NoSnapshot::MissingGroupLabels {
            policy: policy_name,
            labels: missing,
        });
    }
    let group: BTreeMap<String, String> = group_keys
        .iter()
        .map(|k| (k.clone(), pod.labels[k].clone()))
        .collect();
    let in_group = |s: &PodSnapshot| {
        group
            .iter()
            .all(|(k, v)| s.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
    };
    let in_namespace =
        |s: &&PodSnapshot| s.metadata.namespace.as_deref().unwrap_or("default") == pod.namespace;

    let pin = pod
        .annotations
        .get(PIN_ANNOTATION)
        .or_else(|| pod.annotations.get(GKE_PIN_ANNOTATION))
        .filter(|p| !p.is_empty());
    if let Some(pin) = pin {
        let Some(snapshot) = snapshots
            .iter()
            .filter(in_namespace)
            .find(|s| s.metadata.name.as_deref() == Some(pin.as_str()))
        else {
            return Selection::ColdStart(NoSnapshot::PinnedNotFound(pin.clone()));
        };
        if snapshot.spec.policy_name != policy_name {
            return Selection::ColdStart(NoSnapshot::PinnedOtherPolicy {
                snapshot: pin.clone(),
                snapshot_policy: snapshot.spec.policy_name.clone(),
                pod_policy: policy_name,
            });
        }
        if !snapshot.is_ready() {
            return Selection::ColdStart(NoSnapshot::PinnedNotReady {
                snapshot: pin.clone(),
                status: snapshot.display_status(),
            });
        }
        if !in_group(snapshot) {
            return Selection::ColdStart(NoSnapshot::PinnedOtherGroup(pin.clone()));
        }
        let rejections = rejections(snapshot, pod.spec_hash, node);
        if !rejections.is_empty() {
            return Selection::ColdStart(NoSnapshot::PinnedIncompatible(Candidate {
                name: pin.clone(),
                rejections,
            }));
        }
        return Selection::Restore {
            snapshot,
            policy,
            passed_over: Vec::new(),
        };
    }

    let mut candidates: Vec<&PodSnapshot> = snapshots
        .iter()
        .filter(in_namespace)
        .filter(|s| s.spec.policy_name == policy_name && s.is_ready() && in_group(s))
        .collect();
    if candidates.is_empty() {
        return Selection::ColdStart(NoSnapshot::NoReadySnapshot {
            policy: policy_name,
            group,
        });
    }
    candidates.sort_by(|a, b| {
        let key = |s: &PodSnapshot| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.metadata.name.clone(),
            )
        };
        key(b).cmp(&key(a))
    });
    let mut passed_over = Vec::new();
    for snapshot in candidates {
        let rejections = rejections(snapshot, pod.spec_hash, node);
        if rejections.is_empty() {
            return Selection::Restore {
                snapshot,
                policy,
                passed_over,
            };
        }
        passed_over.push(Candidate {
            name: name_of(&snapshot.metadata.name),
            rejections,
        });
    }
    Selection::ColdStart(NoSnapshot::NoneCompatible(passed_over))
}

/// Every reason `snapshot` cannot restore a Pod with `spec_hash` on `node`.
pub fn rejections(
    snapshot: &PodSnapshot,
    spec_hash: &SpecHash,
    node: &NodeFingerprint,
) -> Vec<Rejection> {
    let Some(req): Option<&RestoreRequirements> = snapshot
        .status
        .as_ref()
        .and_then(|s| s.restore_requirements.as_ref())
    else {
        return vec![Rejection::NoRequirements];
    };
    let mut out = Vec::new();
    if req.scope == SnapshotScope::WholePod && req.distilled_spec_hash != spec_hash.as_str() {
        out.push(Rejection::SpecHash {
            snapshot: req.distilled_spec_hash.clone(),
            pod: spec_hash.to_string(),
        });
    }
    out.extend(
        check_compatibility(&req.node, node, req.scope)
            .into_iter()
            .map(Rejection::Node),
    );
    out
}

fn name_of(name: &Option<String>) -> String {
    name.clone().unwrap_or_default()
}
