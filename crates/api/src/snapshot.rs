//! PodSnapshot: one captured snapshot of one Pod, created by the node agent, never by users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, ConditionStatus, find};
use crate::fingerprint::NodeFingerprint;
use crate::policy::SnapshotScope;

/// A captured snapshot. Its name is a UUID; `spec.policyName` names the governing policy.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "podsnap.dev",
    version = "v1alpha1",
    kind = "PodSnapshot",
    namespaced,
    derive = "PartialEq",
    status = "PodSnapshotStatus",
    doc = "One snapshot of one Pod: its memory, processes, files and root file system changes, stored in the policy's storage.",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policyName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotSpec {
    /// The PodSnapshotPolicy (same namespace) that governs this snapshot. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("policyName is immutable; create a new PodSnapshot instead"))]
    pub policy_name: String,
}

/// Observed state of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotStatus {
    /// `Checkpoint`, `StorageReplicated` and `Ready`, with GKE's reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last time a Pod was restored from this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_access_time: Option<Time>,
    /// How many times the checkpoint has been retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_checkpoint_retry_count: Option<i32>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the snapshot's data lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_status: Option<StorageStatus>,
    /// What a Pod and a node must satisfy to restore from this snapshot (podsnap extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_requirements: Option<RestoreRequirements>,
}

/// Where a snapshot's data was written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    /// GKE's field for GCS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorageStatus>,
    /// The location as a URL, for every backend (`gs://…`, `s3://…`, `file:///…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_path: Option<String>,
    /// The snapshot's size: plain bytes over all its streams (podsnap extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Bytes this snapshot added to the repository: its new chunks, compressed (and
    /// encrypted); every other chunk was stored already (podsnap extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_bytes: Option<u64>,
}

/// GKE's GCS storage status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GcsStorageStatus {
    /// `gs://bucket/path/name`.
    #[serde(
        rename = "observedGCSPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_gcs_path: Option<String>,
}

/// Recorded at checkpoint: what a restore must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequirements {
    /// The scope the snapshot was taken with.
    pub scope: SnapshotScope,
    /// SHA-256 of the source Pod's distilled spec (hex).
    pub distilled_spec_hash: String,
    /// The source node.
    pub node: NodeFingerprint,
}

/// Condition type: the checkpoint itself.
pub const CHECKPOINT: &str = "Checkpoint";
/// Condition type: data written to storage.
pub const STORAGE_REPLICATED: &str = "StorageReplicated";
/// Condition type: usable for restores.
pub const READY: &str = "Ready";
/// Reason: waiting for the trigger or the upload.
pub const REASON_AWAITING_CHECKPOINT: &str = "AwaitingCheckpoint";
/// Reason: the step succeeded.
pub const REASON_SUCCEEDED: &str = "Succeeded";
/// Reason: the step failed.
pub const REASON_FAILED: &str = "Failed";
/// Reason: the snapshot is complete and stored.
pub const REASON_ALL_SNAPSHOTS_AVAILABLE: &str = "AllSnapshotsAvailable";

impl PodSnapshot {
    /// Whether the snapshot's `Ready` condition is `True` and it is not being deleted.
    pub fn is_ready(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && self
                .status
                .as_ref()
                .and_then(|s| find(&s.conditions, READY))
                .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// What `STATUS` shows: `Deleting`, the `Ready` reason, or empty.
    pub fn display_status(&self) -> String {
        if self.metadata.deletion_timestamp.is_some() {
            return "Deleting".to_owned();
        }
        self.status
            .as_ref()
            .and_then(|s| find(&s.conditions, READY))
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    }
}
