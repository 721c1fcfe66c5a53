//! PodSnapshotManualTrigger: a single-use request to snapshot one Pod now.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Asks for one checkpoint of one Pod, governed by a `manual` policy. Fires once.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podsnap.dev",
    version = "v1alpha1",
    kind = "PodSnapshotManualTrigger",
    namespaced,
    derive = "PartialEq",
    status = "PodSnapshotManualTriggerStatus",
    doc = "A single-use request to snapshot one Pod whose policy has a manual trigger.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetPod"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Triggered\")].reason"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotCreated.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotManualTriggerSpec {
    /// Name of the Pod, in the trigger's namespace, to snapshot.
    pub target_pod: String,
}

/// Outcome of a manual trigger.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotManualTriggerStatus {
    /// `Triggered`: `True`/`Complete` once the snapshot exists, `False`/`Failed` with a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The PodSnapshot the trigger produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_created: Option<SnapshotReference>,
}

/// A reference to a PodSnapshot in the same namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotReference {
    /// The PodSnapshot's name.
    pub name: String,
}

/// Condition type of a trigger.
pub const TRIGGERED: &str = "Triggered";
/// Reason: the snapshot was created.
pub const REASON_COMPLETE: &str = "Complete";
/// Reason: the checkpoint failed.
pub const REASON_FAILED: &str = "Failed";
