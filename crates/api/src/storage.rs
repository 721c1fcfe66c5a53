//! PodSnapshotStorageConfig: where snapshot data is stored.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Where snapshots are stored. Cluster-scoped; policies refer to it by name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podsnap.dev",
    version = "v1alpha1",
    kind = "PodSnapshotStorageConfig",
    derive = "PartialEq",
    status = "PodSnapshotStorageConfigStatus",
    doc = "Where podsnap stores snapshot data: a GCS or S3 bucket, an Azure container, or a local directory.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotStorageConfigSpec {
    /// The storage backend; exactly one of its fields must be set.
    pub snapshot_storage_config: StorageBackends,
    /// Client-side encryption of snapshot data (podsnap extension): a snapshot holds the full
    /// memory of a workload, its secrets included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// Where the 256-bit key for client-side encryption comes from; exactly one source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfig {
    /// A key file on the node (64 hex digits, as `podsnap repo keygen` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// A key in a Kubernetes Secret, read by the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// A key of a Kubernetes Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The Secret's namespace; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The key within the Secret's data.
    pub key: String,
}

/// The backends a storage config may name. Exactly one must be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageBackends {
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
    /// Amazon S3 or any S3-compatible store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// Azure Blob Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorage>,
    /// A directory on the node (the embedded-mode default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStorage>,
}

/// Google Cloud Storage settings (GKE's only backend).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// Bucket name.
    pub bucket: String,
    /// Optional prefix inside the bucket under which snapshots are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Which identity reads and writes objects (`podKSA` or `federatedP4SA`); accepted for GKE
    /// compatibility. podsnap uses the node's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_source: Option<GcsTokenSource>,
}

/// GKE's choice of identity for bucket access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GcsTokenSource {
    /// The workload Pod's Kubernetes service account.
    #[serde(rename = "podKSA")]
    PodKsa,
    /// The node service agent.
    #[serde(rename = "federatedP4SA")]
    FederatedP4sa,
}

/// S3 and S3-compatible settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    pub bucket: String,
    /// Optional prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Region, e.g. `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service, e.g. `http://127.0.0.1:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Azure Blob Storage settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorage {
    /// Storage account name.
    pub account: String,
    /// Blob container name.
    pub container: String,
    /// Optional prefix inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A directory on the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalStorage {
    /// Absolute path of the directory that holds the snapshot repository.
    pub directory: String,
}

/// Status of a storage config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotStorageConfigStatus {
    /// Conditions; `Ready` says whether the storage is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The one backend a valid storage config names, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StorageBackend<'a> {
    /// Google Cloud Storage.
    Gcs(&'a GcsStorage),
    /// S3 or compatible.
    S3(&'a S3Storage),
    /// Azure Blob Storage.
    Azure(&'a AzureStorage),
    /// A local directory.
    Local(&'a LocalStorage),
}

impl StorageBackend<'_> {
    /// The backend's name as written in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gcs(_) => "gcs",
            Self::S3(_) => "s3",
            Self::Azure(_) => "azure",
            Self::Local(_) => "local",
        }
    }
}

impl StorageBackends {
    /// Every backend that is set, in manifest order.
    pub fn configured(&self) -> Vec<StorageBackend<'_>> {
        let mut out = Vec::new();
        if let Some(g) = &self.gcs {
            out.push(StorageBackend::Gcs(g));
        }
        if let Some(s) = &self.s3 {
            out.push(StorageBackend::S3(s));
        }
        if let Some(a) = &self.azure {
            out.push(StorageBackend::Azure(a));
        }
        if let Some(l) = &self.local {
            out.push(StorageBackend::Local(l));
        }
        out
    }

    /// The single backend, when exactly one is set.
    pub fn backend(&self) -> Option<StorageBackend<'_>> {
        match self.configured().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}
