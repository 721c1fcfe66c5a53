//! The node fingerprint: the facts about a node that decide whether a snapshot taken on one
//! node can be restored on another. Recorded in every PodSnapshot's status; compared by
//! `podsnap-core`; probed from the host by `podsnap-node`.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything about a node that a snapshot depends on. The CPU count and memory size are
/// deliberately absent: they may differ between the source and the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFingerprint {
    /// CPU architecture as Rust and `uname -m` name it, e.g. `x86_64`, `aarch64`.
    pub architecture: String,
    /// The CPU model.
    pub cpu: CpuInfo,
    /// ISA feature flags the CPU offers to programs (e.g. `avx2`, `aes`); a snapshot may rely on
    /// any of them, so a target node must offer every one.
    #[serde(default)]
    pub cpu_features: BTreeSet<String>,
    /// Host kernel release (`uname -r`).
    pub kernel_release: String,
    /// The engine that takes and restores snapshots on this node.
    pub engine: EngineInfo,
    /// GPUs on the node; empty when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
}

/// CPU identity, and the machine series derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuInfo {
    /// Vendor id, e.g. `GenuineIntel`, `AuthenticAMD`, `ARM`.
    pub vendor: String,
    /// CPU family number (x86), or the implementer code (Arm).
    pub family: u32,
    /// CPU model number (x86), or the part number (Arm).
    pub model: u32,
    /// Marketing name, for people only (never compared).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_name: String,
    /// Machine series: the micro-architecture generation, e.g. `amd-zen3`, `intel-sapphirerapids`.
    /// Snapshots move only between nodes of the same series.
    pub machine_series: String,
}

/// The snapshot engine and its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// `gvisor` or `native`.
    pub name: String,
    /// For gvisor the runsc release (e.g. `release-20221219.0`); for native the host kernel
    /// release, since restored processes depend on its ABI and vDSO.
    pub version: String,
}

/// One GPU, as far as a snapshot depends on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    /// Model name, e.g. `NVIDIA H200`.
    pub model: String,
    /// Kernel driver version, e.g. `570.86.15`.
    pub driver_version: String,
}
