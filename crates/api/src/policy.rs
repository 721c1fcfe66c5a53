//! PodSnapshotPolicy: which Pods are snapshotted, when, where to, and how long snapshots live.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::duration::RetentionDuration;

/// Selects Pods by label and holds the snapshot configuration that applies to them.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podsnap.dev",
    version = "v1alpha1",
    kind = "PodSnapshotPolicy",
    namespaced,
    derive = "PartialEq",
    status = "PodSnapshotPolicyStatus",
    doc = "Selects Pods by label; snapshots them on a workload or manual trigger and restores new matching Pods from the latest compatible snapshot.",
    printcolumn = r#"{"name":"Storage","type":"string","jsonPath":".spec.storageConfigName"}"#,
    printcolumn = r#"{"name":"Trigger","type":"string","jsonPath":".spec.triggerConfig.type"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotPolicySpec {
    /// The Pods this policy governs, for both checkpoint and restore.
    pub selector: LabelSelector,
    /// Name of the PodSnapshotStorageConfig that receives the snapshots.
    pub storage_config_name: String,
    /// When snapshots are taken and what happens to the Pod afterwards.
    pub trigger_config: TriggerConfig,
    /// What a snapshot captures; `whole-pod` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_scope: Option<SnapshotScope>,
    /// When unused snapshots are deleted; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_config: Option<RetentionConfig>,
    /// Groups snapshots by Pod label values; a Pod restores only from its own group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_grouping_rules: Option<SnapshotGroupingRules>,
}

impl PodSnapshotPolicySpec {
    /// The scope, with its default applied.
    pub fn scope(&self) -> SnapshotScope {
        self.snapshot_scope.unwrap_or_default()
    }

    /// The label keys snapshots are grouped by; empty without grouping.
    pub fn group_labels(&self) -> &[String] {
        self.snapshot_grouping_rules
            .as_ref()
            .map(|g| g.group_by_label_value.labels.as_slice())
            .unwrap_or(&[])
    }
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One selector requirement: a key, an operator and (for `In`/`NotIn`) values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the key relates to the values.
    pub operator: LabelSelectorOperator,
    /// Values for `In` and `NotIn` (non-empty); must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Label selector operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LabelSelectorOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Trigger configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerConfig {
    /// Who asks for the snapshot.
    #[serde(rename = "type")]
    pub type_: TriggerType,
    /// What the Pod does after the checkpoint; `resume` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_checkpoint: Option<PostCheckpoint>,
}

impl TriggerConfig {
    /// The post-checkpoint action, with its default applied.
    pub fn post_checkpoint(&self) -> PostCheckpoint {
        self.post_checkpoint.unwrap_or_default()
    }
}

/// Who asks for a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerType {
    /// The application inside the Pod signals through the trigger file.
    Workload,
    /// A PodSnapshotManualTrigger object names the Pod.
    Manual,
}

/// What happens to the Pod after its checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PostCheckpoint {
    /// The workload keeps running.
    #[default]
    Resume,
    /// The Pod completes.
    Stop,
}

/// What a snapshot captures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotScope {
    /// Memory, threads, registers, files, sockets and the root file systems.
    #[default]
    #[serde(rename = "whole-pod")]
    WholePod,
    /// Only the containers' root file system changes; restores skip the spec-hash check.
    #[serde(rename = "rootfs-only")]
    RootfsOnly,
}

/// Retention settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionConfig {
    /// A snapshot not used to restore a Pod for this long is deleted.
    pub last_access_timeout: RetentionDuration,
}

/// Grouping rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotGroupingRules {
    /// Group by the values of Pod labels.
    pub group_by_label_value: GroupByLabelValue,
}

/// Group snapshots by the values of these Pod labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupByLabelValue {
    /// Label keys forming the group key; the Pod must carry all of them.
    pub labels: Vec<String>,
    /// Per-group retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_retention_policy: Option<GroupRetentionPolicy>,
}

/// Per-group retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupRetentionPolicy {
    /// Keep at most this many snapshots per group, deleting the oldest; 0 means no limit.
    pub max_snapshot_count_per_group: i64,
}

/// Status of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotPolicyStatus {
    /// Conditions; `Ready` says whether the policy is in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
