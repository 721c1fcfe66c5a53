//! The podsnap API: the four custom resource kinds, their validation, and manifest loading.
//!
//! Kinds live in group [`GROUP`] at version [`VERSION`] and mirror GKE's `podsnapshot.gke.io/v1`
//! one for one; manifests written for GKE ([`GKE_GROUP`]) are read as the same kinds.
//!
//! This crate holds data types and pure checks only. It must not talk to Kubernetes, the
//! network, the file system or the kernel: loaders take text, validators take values.

#![forbid(unsafe_code)]

pub mod condition;
pub mod duration;
pub mod fingerprint;
pub mod manifest;
pub mod policy;
pub mod snapshot;
pub mod storage;
pub mod trigger;
pub mod validate;
mod yaml_lines;

pub use condition::{Condition, ConditionStatus};
pub use duration::RetentionDuration;
pub use fingerprint::{CpuInfo, EngineInfo, GpuInfo, NodeFingerprint};
pub use manifest::{Document, LoadError, Object, load_documents};
pub use policy::{
    LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, PodSnapshotPolicy,
    PodSnapshotPolicySpec, PostCheckpoint, SnapshotScope, TriggerType,
};
pub use snapshot::{PodSnapshot, PodSnapshotSpec, PodSnapshotStatus};
pub use storage::{PodSnapshotStorageConfig, PodSnapshotStorageConfigSpec, StorageBackend};
pub use trigger::{PodSnapshotManualTrigger, PodSnapshotManualTriggerSpec};
pub use validate::{FieldError, ValidationError};

/// podsnap's API group.
pub const GROUP: &str = "podsnap.dev";
/// podsnap's API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of podsnap's kinds.
pub const API_VERSION: &str = "podsnap.dev/v1alpha1";
/// GKE's API group; manifests in it are read as podsnap's kinds.
pub const GKE_GROUP: &str = "podsnapshot.gke.io";

/// Pod annotation that pins the snapshot to restore from (podsnap's spelling).
pub const PIN_ANNOTATION: &str = "podsnap.dev/ps-name";
/// Pod annotation that pins the snapshot to restore from (GKE's spelling, also honoured).
pub const GKE_PIN_ANNOTATION: &str = "podsnapshot.gke.io/ps-name";
/// PodSnapshot annotation naming the Pod it was taken from.
pub const ORIGIN_POD_ANNOTATION: &str = "podsnap.dev/origin-pod";
/// PodSnapshot label naming the manual trigger that created it.
pub const TRIGGERED_BY_LABEL: &str = "podsnap.dev/triggered-by";
/// Pod condition type set on a Pod restored from a snapshot.
pub const POD_RESTORED_CONDITION: &str = "PodRestored";
/// Pod condition type of a Pod restored lazily: `True` once all its memory is in (the Pod is
/// fully restored), `False` while it still comes in or if it could not.
pub const POD_MEMORY_RESIDENT_CONDITION: &str = "PodMemoryResident";

/// The CustomResourceDefinitions of the four kinds, in the order to apply them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        PodSnapshotStorageConfig::crd(),
        PodSnapshotPolicy::crd(),
        PodSnapshot::crd(),
        PodSnapshotManualTrigger::crd(),
    ]
}

/// The CRDs as multi-document YAML, ready for `kubectl apply -f -`.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser_error::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
