//! Snapshots on the node: manual triggers carried out (checkpoint, upload, a PodSnapshot that
//! becomes Ready), and new Pods restored from the snapshot that fits them — or started cold with
//! the reason recorded.
//!
//! The decisions (which policy governs a Pod, which snapshot fits it on this node) are
//! `podsnap-core`'s pure functions; this module gathers the facts and carries the decisions out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use podsnap_api::{
    PodSnapshot, PodSnapshotPolicy, PodSnapshotStorageConfig, PostCheckpoint, SnapshotScope,
    TriggerType,
};
use podsnap_core::{
    DistilledSpec, NoSnapshot, PodFacts, PolicyMatch, Selection, governing_policy, select_snapshot,
};
use podsnap_engine::RestoreInput;
use podsnap_repo::{Chunking, EncryptionKey, RepoOptions, Repository, SnapshotMetadata};
use podsnap_runtime::RunningPod;
use serde_json::{Value, json};

use crate::controller::{Controller, object_key};
use crate::images::{self, CacheOutcome, ImageCache, Upload};
use crate::in_place;
use crate::metrics::Metrics;
use crate::progress::LogProgress;
use crate::store::now;

/// Streams of a `rootfs-only` snapshot: `rootfs/<container>/changes.cpio` (the changed
/// entries, cpio newc) and `rootfs/<container>/deleted` (deleted paths, NUL-separated).
const ROOTFS_PREFIX: &str = "rootfs/";
const ROOTFS_ARCHIVE: &str = "changes.cpio";
const ROOTFS_DELETED: &str = "deleted";

/// How often a failed checkpoint step (engine checkpoint, upload) is tried again; the pauses
/// between attempts are 1 s, 2 s, 4 s, ….
pub const CHECKPOINT_RETRIES: u32 = 2;

/// Bytes of assembled checkpoint images kept on the node for further restores.
pub const IMAGE_CACHE_BYTES: u64 = 20 << 30;

fn typed<T: serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<T> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()})
}

/// The status of a PodSnapshot whose checkpoint failed for good.
fn failed_status(message: &str, retries: u64) -> Value {
    json!({"conditions": [
        condition("Checkpoint", "False", "Failed", message),
        condition("Ready", "False", "Failed", message),
    ], "observedCheckpointRetryCount": retries})
}

impl Controller {
    fn repository(&self, storage_name: &str) -> Result<Repository, String> {
        let value = self
            .store
            .get("PodSnapshotStorageConfig", "", storage_name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("PodSnapshotStorageConfig {storage_name} does not exist; apply it first")
            })?;
        let config: PodSnapshotStorageConfig =
            serde_json::from_value(value).map_err(|e| e.to_string())?;
        let location =
            podsnap_repo::open(&config.spec.snapshot_storage_config, &Default::default())
                .map_err(|e| e.to_string())?;
        let key = match &config.spec.encryption {
            None => None,
            Some(encryption) => Some(self.encryption_key(storage_name, encryption)?),
        };
        let options = RepoOptions {
            cache: Some((self.state_dir.join("chunk-cache"), 20 << 30)),
            ..RepoOptions::default()
        };
        Repository::new(location, key, options).map_err(|e| e.to_string())
    }

    /// The encryption key of storage config `storage_name`: from the key file on this node, or
    /// from a key of a Secret (64 hex digits, as `podsnap repo keygen` writes, or 32 raw bytes).
    fn encryption_key(
        &self,
        storage_name: &str,
        encryption: &podsnap_api::storage::EncryptionConfig,
    ) -> Result<EncryptionKey, String> {
        if let Some(path) = &encryption.key_file {
            return EncryptionKey::from_file(std::path::Path::new(path))
                .map_err(|e| format!("PodSnapshotStorageConfig {storage_name}: {e}"));
        }
        let Some(secret_ref) = &encryption.secret_ref else {
            return Err(format!(
                "PodSnapshotStorageConfig {storage_name} enables encryption without a key; set encryption.keyFile or encryption.secretRef"
            ));
        };
        let namespace = secret_ref.namespace.as_deref().unwrap_or("default");
        let name = &secret_ref.name;
        let secret = self
            .store
            .get("Secret", namespace, name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "the encryption key of PodSnapshotStorageConfig {storage_name} is in Secret {namespace}/{name}, which does not exist; create it, e.g. `podsnap repo keygen -o repo.key` and a Secret with the file's text under key {}",
                    secret_ref.key
                )
            })?;
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(secret).map_err(|e| e.to_string())?;
        let raw: Option<Vec<u8>> = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&secret_ref.key))
            .map(|v| v.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&secret_ref.key))
                    .map(|v| v.clone().into_bytes())
            });
        let raw = raw.ok_or_else(|| {
            format!(
                "Secret {namespace}/{name} has no key {}; the storage config {storage_name} reads its encryption key from there",
                secret_ref.key
            )
        })?;
        EncryptionKey::parse(&raw).ok_or_else(|| {
            format!(
                "key {} of Secret {namespace}/{name} is not a podsnap key: it must hold 64 hex digits (`podsnap repo keygen`) or 32 raw bytes",
                secret_ref.key
            )
        })
    }

    /// Once the lazy restore of sandbox `sandbox_id` has all its memory in, stores what its
    /// processes touched first with snapshot `snapshot`, for later restores to fetch first.
    fn record_working_set(
        &self,
        repo: Repository,
        snapshot: String,
        sandbox_id: String,
        source: String,
    ) {
        let engine = self.runner.engine().clone();
        tokio::spawn(async move {
            let progress = loop {
                match engine.restore_progress(&sandbox_id).await {
                    Some(p) if p.state == "Serving" => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    other => break other,
                }
            };
            let Some(set) = progress.and_then(|p| p.working_set) else {
                return;
            };
            let stored = in_place::to_stored(&set, &source);
            match repo.put_working_set(&snapshot, &stored).await {
                Ok(()) => {
                    tracing::info!(%snapshot, blocks = set.len(), "working set recorded with the snapshot")
                }
                Err(e) => {
                    tracing::warn!(%snapshot, error = %e, "the working set could not be stored; later restores will not prefetch it")
                }
            }
        });
    }

    /// The node's cache of assembled checkpoint images.
    fn image_cache(&self) -> ImageCache {
        ImageCache::new(self.state_dir.join("image-cache"), IMAGE_CACHE_BYTES)
    }

    fn policies(&self, namespace: &str) -> Vec<PodSnapshotPolicy> {
        typed(
            self.store
                .list("PodSnapshotPolicy", Some(namespace))
                .unwrap_or_default(),
        )
    }

    /// Carries out workload triggers: a Pod whose workload wrote `1` to its trigger file is
    /// snapshotted, and the workload learns the outcome from its result file (`resume` or
    /// `error`; restored copies read `restore`).
    pub(crate) async fn reconcile_workload_triggers(&self) {
        let running: Vec<((String, String), RunningPod)> = self
            .pods
            .lock()
            .await
            .iter()
            .filter(|(_, t)| !t.completed_by_checkpoint)
            .map(|(k, t)| (k.clone(), t.running.clone()))
            .collect();
        for ((namespace, name), pod) in running {
            let contract = pod.contract_dir();
            let trigger = contract.join("trigger");
            let asked = std::fs::read_to_string(&trigger).is_ok_and(|t| t.trim() == "1");
            if !asked || std::fs::rename(&trigger, contract.join("trigger.taken")).is_err() {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let outcome = me.checkpoint_pod(&namespace, &name, None).await;
                let answer = match &outcome {
                    Ok(_) => "resume",
                    Err(message) => {
                        me.pod_event("Warning", "CheckpointFailed", &namespace, &name, message);
                        "error"
                    }
                };
                let _ = std::fs::write(contract.join("result"), format!("{answer}\n"));
            });
        }
    }

    /// Applies retention (the pure plan of `podsnap-core`) and finishes deletions: a PodSnapshot
    /// being deleted loses its data in the repository first, then the object goes. A failure
    /// keeps the object (shown as Deleting) and is retried on the next pass.
    pub(crate) async fn reconcile_retention(&self) {
        let policies: Vec<PodSnapshotPolicy> = typed(
            self.store
                .list("PodSnapshotPolicy", None)
                .unwrap_or_default(),
        );
        let snapshots: Vec<PodSnapshot> =
            typed(self.store.list("PodSnapshot", None).unwrap_or_default());
        let now = jiff::Timestamp::now().as_second();
        for prune in podsnap_core::plan_retention(now, &policies, &snapshots) {
            if self
                .store
                .mark_deleting("PodSnapshot", &prune.namespace, &prune.name)
                .unwrap_or(false)
            {
                let message = format!("deleting snapshot {}: {}", prune.name, prune.reason);
                let _ = self.store.event(
                    "Normal",
                    "Pruned",
                    "PodSnapshot",
                    &prune.namespace,
                    &prune.name,
                    &message,
                );
            }
        }
        for value in self.store.list("PodSnapshot", None).unwrap_or_default() {
            if value["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let (namespace, name) = object_key(&value);
            let policy = value["spec"]["policyName"].as_str().unwrap_or_default();
            let storage = policies
                .iter()
                .find(|p| {
                    p.metadata.name.as_deref() == Some(policy)
                        && p.metadata.namespace.as_deref() == Some(namespace.as_str())
                })
                .map(|p| p.spec.storage_config_name.clone());
            let result = match storage {
                // Without its policy the data cannot be found; the object goes (nothing to keep).
                None => Ok(()),
                Some(storage) => match self.repository(&storage) {
                    Err(e) => Err(e),
                    Ok(repo) => match repo.delete_snapshot(&name).await {
                        Ok(()) => {
                            // Chunks no snapshot references any more (older than the grace
                            // period) go now; younger ones at a later deletion or `repo gc`.
                            if let Err(e) = repo.gc(&podsnap_repo::GcOptions::default()).await {
                                tracing::warn!(error = %e, "collecting unreferenced chunks");
                            }
                            Ok(())
                        }
                        Err(podsnap_repo::RepoError::SnapshotNotFound { .. })
                        | Err(podsnap_repo::RepoError::NoRepository(_)) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    },
                },
            };
            match result {
                Ok(()) => {
                    let _ = self.store.delete("PodSnapshot", &namespace, &name);
                }
                Err(message) => {
                    let _ = self.store.event(
                        "Warning",
                        "DeleteFailed",
                        "PodSnapshot",
                        &namespace,
                        &name,
                        &format!("the snapshot's data could not be deleted (retrying): {message}"),
                    );
                }
            }
        }
    }

    /// After a restart of the agent: leftover checkpoint and restore images are removed, and a
    /// PodSnapshot still awaiting its checkpoint lost the process that was taking it. It is
    /// marked failed (it never was Ready, so nothing restores from it); a manual trigger that
    /// had not completed is carried out again by the next pass.
    pub(crate) fn fail_interrupted_checkpoints(&self) {
        // Images of checkpoints and restores the stopped agent was working on are of no use.
        for dir in ["checkpoints", "restores"] {
            let _ = std::fs::remove_dir_all(self.state_dir.join(dir));
        }
        self.image_cache().remove_partial();
        let message = "the agent stopped while this snapshot was being taken; trigger a new one";
        for value in self.store.list("PodSnapshot", None).unwrap_or_default() {
            let awaiting = value["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["reason"] == "AwaitingCheckpoint")
            });
            if !awaiting {
                continue;
            }
            let (namespace, name) = object_key(&value);
            let retries = value["status"]["observedCheckpointRetryCount"]
                .as_u64()
                .unwrap_or(0);
            let status = failed_status(message, retries);
            let _ = self
                .store
                .set_status("PodSnapshot", &namespace, &name, status);
            let _ = self.store.event(
                "Warning",
                "Failed",
                "PodSnapshot",
                &namespace,
                &name,
                message,
            );
        }
    }

    /// Starts every manual trigger that has not fired yet.
    pub(crate) async fn reconcile_triggers(&self) {
        for trigger in self
            .store
            .list("PodSnapshotManualTrigger", None)
            .unwrap_or_default()
        {
            if trigger["status"]["conditions"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
            {
                continue;
            }
            let uid = trigger["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if !self.busy_triggers.lock().await.insert(uid) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move { me.run_trigger(trigger).await });
        }
    }

    async fn run_trigger(&self, trigger: Value) {
        let (namespace, name) = object_key(&trigger);
        let target = trigger["spec"]["targetPod"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let result = self.checkpoint_pod(&namespace, &target, Some(&name)).await;
        let status = match &result {
            Ok(snapshot) => json!({
                "conditions": [condition("Triggered", "True", "Complete", &format!("created PodSnapshot {snapshot}"))],
                "snapshotCreated": {"name": snapshot},
            }),
            Err(message) => {
                json!({"conditions": [condition("Triggered", "False", "Failed", message)]})
            }
        };
        let _ = self
            .store
            .set_status("PodSnapshotManualTrigger", &namespace, &name, status);
        match result {
            Ok(snapshot) => {
                let _ = self.store.event(
                    "Normal",
                    "Triggered",
                    "PodSnapshotManualTrigger",
                    &namespace,
                    &name,
                    &format!("snapshot {snapshot} of Pod {target} is ready"),
                );
            }
            Err(message) => {
                let _ = self.store.event(
                    "Warning",
                    "Failed",
                    "PodSnapshotManualTrigger",
                    &namespace,
                    &name,
                    &message,
                );
            }
        }
    }

    /// Checkpoints a running Pod and uploads it: a PodSnapshot that moves from
    /// AwaitingCheckpoint to AllSnapshotsAvailable, or says what failed.
    pub(crate) async fn checkpoint_pod(
        &self,
        namespace: &str,
        pod_name: &str,
        trigger: Option<&str>,
    ) -> Result<String, String> {
        let key = (namespace.to_owned(), pod_name.to_owned());
        if !self.checkpointing.lock().await.insert(key.clone()) {
            return Err(format!(
                "a checkpoint of Pod {pod_name} is already running; trigger again when it ends"
            ));
        }
        let result = self.checkpoint_tracked(&key, trigger).await;
        self.checkpointing.lock().await.remove(&key);
        result
    }

    async fn checkpoint_tracked(
        &self,
        key: &(String, String),
        trigger: Option<&str>,
    ) -> Result<String, String> {
        let (namespace, pod_name) = (key.0.as_str(), key.1.as_str());
        let tracked = self
            .pods
            .lock()
            .await
            .get(key)
            .cloned()
            .ok_or_else(|| format!("Pod {pod_name} is not running in namespace {namespace}"))?;
        if !self.pod_exists(namespace, pod_name, &tracked.uid) {
            return Err(format!(
                "Pod {pod_name} is being deleted; nothing to snapshot"
            ));
        }
        let pod = tracked.pod.clone();
        let labels = labels_of(&pod);
        let policies = self.policies(namespace);
        let policy = match governing_policy(namespace, &labels, &policies) {
            PolicyMatch::One(p) => p.clone(),
            PolicyMatch::None => {
                return Err(format!("no PodSnapshotPolicy selects Pod {pod_name}"));
            }
            PolicyMatch::Ambiguous(ps) => {
                let names: Vec<String> =
                    ps.iter().filter_map(|p| p.metadata.name.clone()).collect();
                return Err(format!(
                    "policies {} all select Pod {pod_name}; make their selectors disjoint",
                    names.join(", ")
                ));
            }
        };
        let policy_name = policy.metadata.name.clone().unwrap_or_default();
        if policy.spec.scope() == SnapshotScope::WholePod && !podsnap_runtime::runner::is_solo(&pod)
        {
            return Err(format!(
                "Pod {pod_name} has several containers or init containers; the gvisor engine here snapshots the whole of single-container Pods only (a policy with snapshotScope: rootfs-only captures any Pod's root-file-system changes)"
            ));
        }
        if trigger.is_some() && policy.spec.trigger_config.type_ != TriggerType::Manual {
            return Err(format!(
                "policy {policy_name} has a workload trigger; manual triggers are ignored for it"
            ));
        }
        let node = self
            .node
            .clone()
            .ok_or("this node's fingerprint could not be read; see the agent's log")?;
        let repo = self.repository(&policy.spec.storage_config_name)?;
        let hash = DistilledSpec::from_pod(&pod)
            .map_err(|e| e.to_string())?
            .hash();
        let snapshot = uuid::Uuid::new_v4().to_string();
        let mut snapshot_labels = serde_json::Map::new();
        for key in policy.spec.group_labels() {
            if let Some(v) = labels.get(key) {
                snapshot_labels.insert(key.clone(), json!(v));
            }
        }
        if let Some(t) = trigger {
            snapshot_labels.insert(podsnap_api::TRIGGERED_BY_LABEL.into(), json!(t));
        }
        let object = json!({
            "apiVersion": podsnap_api::API_VERSION,
            "kind": "PodSnapshot",
            "metadata": {"name": snapshot, "namespace": namespace, "labels": snapshot_labels,
                         "annotations": {podsnap_api::ORIGIN_POD_ANNOTATION: pod_name}},
            "spec": {"policyName": policy_name},
        });
        self.store
            .apply("PodSnapshot", namespace, &snapshot, object)
            .map_err(|e| e.to_string())?;
        let awaiting = json!({"conditions": [
            condition("Checkpoint", "Unknown", "AwaitingCheckpoint", ""),
            condition("Ready", "False", "AwaitingCheckpoint", ""),
        ], "observedCheckpointRetryCount": 0});
        let _ = self
            .store
            .set_status("PodSnapshot", namespace, &snapshot, awaiting);
        let started = std::time::Instant::now();
        let mut retries = 0;
        let result = self
            .checkpoint_and_upload(
                &tracked,
                &policy,
                &repo,
                &snapshot,
                &hash.to_string(),
                &node,
                &mut retries,
            )
            .await;
        match result {
            Ok(stats) => {
                self.metrics.uploaded_bytes.inc_by(stats.new_bytes);
                let status = json!({
                    "conditions": [
                        condition("Checkpoint", "True", "Succeeded", ""),
                        condition("StorageReplicated", "True", "Succeeded", ""),
                        condition("Ready", "True", "AllSnapshotsAvailable", ""),
                    ],
                    "observedCheckpointRetryCount": retries,
                    "storageStatus": {
                        "observedPath": format!("{}/snapshots/{snapshot}", repo.url()),
                        "sizeBytes": stats.bytes,
                        "uploadedBytes": stats.new_bytes,
                    },
                    "restoreRequirements": {"scope": policy.spec.scope(), "distilledSpecHash": hash.to_string(), "node": node},
                });
                let _ = self
                    .store
                    .set_status("PodSnapshot", namespace, &snapshot, status);
                Metrics::count(&self.metrics.checkpoints, "success");
                self.metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.pod_event(
                    "Normal",
                    "Checkpointed",
                    namespace,
                    pod_name,
                    &format!("snapshot {snapshot} is stored"),
                );
                Ok(snapshot)
            }
            Err(message) => {
                let message = if retries > 0 {
                    format!("{message} (gave up after {retries} retries)")
                } else {
                    message
                };
                let status = failed_status(&message, u64::from(retries));
                let _ = self
                    .store
                    .set_status("PodSnapshot", namespace, &snapshot, status);
                Metrics::count(&self.metrics.checkpoints, "failure");
                Err(message)
            }
        }
    }

    /// Whether Pod `namespace/name` with `uid` still exists and is not being replaced.
    fn pod_exists(&self, namespace: &str, name: &str, uid: &str) -> bool {
        matches!(self.store.get("Pod", namespace, name), Ok(Some(p)) if p["metadata"]["uid"] == uid)
    }

    /// Runs `step` until it succeeds, at most [`CHECKPOINT_RETRIES`] times more, with a growing
    /// pause; each retry is counted in `retries` and shown on PodSnapshot `snapshot`. No retry
    /// once the Pod is gone.
    async fn retrying<T, F>(
        &self,
        tracked: &crate::controller::Tracked,
        snapshot: &str,
        retries: &mut u32,
        mut step: impl FnMut() -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let namespace = tracked
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let name = tracked.pod.metadata.name.as_deref().unwrap_or_default();
        loop {
            let error = match step().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if *retries >= CHECKPOINT_RETRIES || !self.pod_exists(namespace, name, &tracked.uid) {
                return Err(error);
            }
            *retries += 1;
            let pause = Duration::from_secs(1 << (*retries - 1));
            let message = format!(
                "attempt {} failed: {error}; retrying in {} s",
                *retries,
                pause.as_secs()
            );
            tracing::warn!(snapshot, pod = name, "{message}");
            let status = json!({"conditions": [
                condition("Checkpoint", "Unknown", "AwaitingCheckpoint", &message),
                condition("Ready", "False", "AwaitingCheckpoint", ""),
            ], "observedCheckpointRetryCount": *retries});
            let _ = self
                .store
                .set_status("PodSnapshot", namespace, snapshot, status);
            let _ = self.store.event(
                "Warning",
                "CheckpointRetry",
                "PodSnapshot",
                namespace,
                snapshot,
                &message,
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Checkpoints the Pod with the engine and uploads the image, each step retried on failure
    /// (an upload retry reuses the image, and the chunks an earlier attempt stored).
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint_and_upload(
        &self,
        tracked: &crate::controller::Tracked,
        policy: &PodSnapshotPolicy,
        repo: &Repository,
        snapshot: &str,
        hash: &str,
        node: &podsnap_api::NodeFingerprint,
        retries: &mut u32,
    ) -> Result<podsnap_repo::WriteStats, String> {
        let pod = &tracked.pod;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let resume = policy.spec.trigger_config.post_checkpoint() == PostCheckpoint::Resume;
        let key = (namespace.clone(), name.clone());
        let image_dir = self.state_dir.join("checkpoints").join(snapshot);
        let files = match policy.spec.scope() {
            SnapshotScope::WholePod => {
                self.checkpoint_sandbox(tracked, &key, &image_dir, resume, snapshot, retries)
                    .await?
            }
            SnapshotScope::RootfsOnly => {
                self.capture_rootfs(tracked, &key, resume, snapshot, retries)
                    .await?
            }
        };
        if let Some(t) = self.pods.lock().await.get(&key).cloned() {
            self.write_status(&namespace, &name, &t);
        }
        let paths: std::collections::BTreeSet<&PathBuf> = files.iter().map(|u| &u.path).collect();
        self.metrics.checkpoint_bytes.inc_by(
            paths
                .iter()
                .filter_map(|path| std::fs::metadata(path).ok())
                .map(|m| m.len())
                .sum(),
        );
        let metadata = SnapshotMetadata {
            policy: policy.metadata.name.clone(),
            distilled_spec_hash: Some(hash.to_owned()),
            node: Some(node.clone()),
            engine: Some(node.engine.clone()),
            labels: BTreeMap::new(),
        };
        let (metadata, files_ref) = (&metadata, &files);
        let uploaded = self
            .retrying(tracked, snapshot, retries, move || async move {
                let mut writer = repo
                    .begin_snapshot(snapshot, metadata.clone())
                    .await
                    .map_err(|e| format!("uploading the snapshot failed: {e}"))?;
                let written = async {
                    for upload in files_ref {
                        let (source, size) = upload.open().map_err(|e| {
                            podsnap_repo::RepoError::io(
                                format!("reading {}", upload.path.display()),
                                e,
                            )
                        })?;
                        let progress = LogProgress::new(format!("snapshot {snapshot} upload"));
                        writer
                            .add_stream(&upload.stream, upload.chunking, source, size, &progress)
                            .await?;
                    }
                    Ok::<_, podsnap_repo::RepoError>(())
                }
                .await;
                if let Err(e) = written {
                    let _ = writer.abort().await;
                    return Err(format!("uploading the snapshot failed: {e}"));
                }
                let stats = writer.stats().clone();
                writer
                    .commit()
                    .await
                    .map_err(|e| format!("storing the snapshot's manifest failed: {e}"))?;
                Ok(stats)
            })
            .await;
        let _ = std::fs::remove_dir_all(&image_dir);
        for upload in &files {
            let _ = std::fs::remove_file(&upload.path);
        }
        uploaded
    }

    /// Checkpoints the Pod's sandbox with the engine into `image_dir` (retried); the files to
    /// store as (stream, path, chunking).
    async fn checkpoint_sandbox(
        &self,
        tracked: &crate::controller::Tracked,
        key: &(String, String),
        image_dir: &std::path::Path,
        resume: bool,
        snapshot: &str,
        retries: &mut u32,
    ) -> Result<Vec<Upload>, String> {
        let (pod, running) = (&tracked.pod, &tracked.running);
        let engine = self.runner.engine().clone();
        let engine = &engine;
        let image = self
            .retrying(tracked, snapshot, retries, move || async move {
                let _ = std::fs::remove_dir_all(image_dir);
                // The checkpoint stops the sandbox: its waiters' reports are not an exit of
                // the Pod.
                if let Some(t) = self.pods.lock().await.get_mut(key) {
                    t.generation += 1;
                }
                let image = engine
                    .checkpoint(&running.sandbox_id, image_dir, resume)
                    .await
                    .map_err(|e| format!("the checkpoint failed: {e}"));
                if image.is_err()
                    && let Some((container, id)) = running.containers.first().cloned()
                {
                    // The sandbox may still run: watch it again.
                    self.rewatch(key, pod, container, id).await;
                }
                image
            })
            .await;
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                let _ = std::fs::remove_dir_all(image_dir);
                return Err(e);
            }
        };
        if let Some((container, id)) = running.containers.first().cloned() {
            if resume {
                // The sandbox was restored in place: wait on the new one.
                self.rewatch(key, pod, container, id).await;
            } else {
                if let Some(t) = self.pods.lock().await.get_mut(key) {
                    t.completed_by_checkpoint = true;
                    t.exited.insert(container, 0);
                }
                // postCheckpoint: stop — the Pod completed; its sandbox is freed.
                if let Err(e) = engine.delete(&running.sandbox_id).await {
                    tracing::warn!(error = %e, "removing a stopped sandbox");
                }
            }
        }
        Ok(images::checkpoint_uploads(&image.dir, &image.files))
    }

    /// Captures the root-file-system changes of every container of the Pod (retried); the
    /// files to store as (stream, path, chunking). With postCheckpoint stop, the Pod then
    /// completes.
    async fn capture_rootfs(
        &self,
        tracked: &crate::controller::Tracked,
        key: &(String, String),
        resume: bool,
        snapshot: &str,
        retries: &mut u32,
    ) -> Result<Vec<Upload>, String> {
        let (pod, running) = (&tracked.pod, &tracked.running);
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| c.name.clone())
            .collect();
        let names = &names;
        let files = self
            .retrying(tracked, snapshot, retries, move || async move {
                let mut files = Vec::new();
                for name in names {
                    let captured = self
                        .runner
                        .capture_rootfs(pod, running, name)
                        .await
                        .map_err(|e| format!("capturing the root file system failed: {e}"))?;
                    files.push(Upload::plain(
                        format!("{ROOTFS_PREFIX}{name}/{ROOTFS_ARCHIVE}"),
                        captured.archive.clone(),
                        Chunking::FILES,
                    ));
                    files.push(Upload::plain(
                        format!("{ROOTFS_PREFIX}{name}/{ROOTFS_DELETED}"),
                        captured.deleted.clone(),
                        Chunking::FILES,
                    ));
                }
                Ok(files)
            })
            .await?;
        if !resume {
            // postCheckpoint: stop — the Pod completed.
            if let Some(t) = self.pods.lock().await.get_mut(key) {
                t.completed_by_checkpoint = true;
                t.generation += 1;
                for name in names {
                    t.exited.insert(name.clone(), 0);
                }
            }
            if let Err(e) = self.runner.stop(running, tracked.grace()).await {
                tracing::warn!(error = %e, "stopping a Pod after its snapshot");
            }
        }
        Ok(files)
    }

    /// Starts `pod` with the root-file-system changes of a `rootfs-only` snapshot: each
    /// container gets the changes captured from the container of the same name (containers
    /// the snapshot does not know start as their image is).
    async fn restore_rootfs(
        &self,
        pod: &Pod,
        opened: &podsnap_repo::Snapshot,
    ) -> Result<RunningPod, String> {
        let mut names = Vec::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let archive_stream = format!("{ROOTFS_PREFIX}{}/{ROOTFS_ARCHIVE}", c.name);
            let deleted_stream = format!("{ROOTFS_PREFIX}{}/{ROOTFS_DELETED}", c.name);
            if opened.manifest().stream(&archive_stream).is_none() {
                continue;
            }
            let (archive, deleted) = self
                .runner
                .rootfs_restore_files(pod, &c.name)
                .map_err(|e| e.to_string())?;
            for (stream, path) in [(&archive_stream, &archive), (&deleted_stream, &deleted)] {
                opened
                    .read_stream_to_file(stream, path, &podsnap_repo::NoProgress)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            names.push(c.name.clone());
        }
        self.runner
            .start_with_rootfs(pod, &names)
            .await
            .map_err(|e| e.to_string())
    }

    /// Follows container `container` (engine id `id`) of the Pod at `key` again after its
    /// sandbox was stopped or replaced by a checkpoint.
    async fn rewatch(&self, key: &(String, String), pod: &Pod, container: String, id: String) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let generation = self.pods.lock().await.get(key).map_or(0, |t| t.generation);
        self.watch_container(&key.0, &key.1, &uid, container, id, generation);
    }

    /// Restores `pod` from the snapshot that fits it, if any; records why not otherwise.
    pub(crate) async fn try_restore(
        &self,
        namespace: &str,
        name: &str,
        pod: &Pod,
    ) -> Option<(RunningPod, String)> {
        let labels = labels_of(pod);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let policies = self.policies(namespace);
        let snapshots: Vec<PodSnapshot> = typed(
            self.store
                .list("PodSnapshot", Some(namespace))
                .unwrap_or_default(),
        );
        let hash = DistilledSpec::from_pod(pod).ok()?.hash();
        let node = match &self.node {
            Some(n) => n.clone(),
            None => return None,
        };
        let facts = PodFacts {
            namespace,
            labels: &labels,
            annotations: &annotations,
            spec_hash: &hash,
        };
        let (snapshot, policy) = match select_snapshot(&facts, &policies, &snapshots, &node) {
            Selection::Restore {
                snapshot, policy, ..
            } => (snapshot.clone(), policy.clone()),
            Selection::ColdStart(NoSnapshot::NoPolicy) => return None,
            Selection::ColdStart(reason) => {
                Metrics::count(&self.metrics.cold_starts, reason.reason());
                self.pod_event(
                    "Normal",
                    reason.reason(),
                    namespace,
                    name,
                    &format!("starting cold: {reason}"),
                );
                return None;
            }
        };
        let snapshot_name = snapshot.metadata.name.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let image_dir: PathBuf = self
            .state_dir
            .join("restores")
            .join(uuid::Uuid::new_v4().to_string());
        let scope = snapshot
            .status
            .as_ref()
            .and_then(|s| s.restore_requirements.as_ref())
            .map(|r| r.scope)
            .unwrap_or_default();
        let restored = async {
            let repo = self.repository(&policy.spec.storage_config_name)?;
            let opened = repo
                .open_snapshot(&snapshot_name)
                .await
                .map_err(|e| e.to_string())?;
            if scope == SnapshotScope::RootfsOnly {
                return self.restore_rootfs(pod, &opened).await;
            }
            if !podsnap_runtime::runner::is_solo(pod) {
                return Err("the Pod has several containers; the engines here restore the whole of single-container Pods only".to_owned());
            }
            if !images::has_engine_image(&opened) {
                return Err("the snapshot holds no engine checkpoint image".to_owned());
            }
            std::fs::create_dir_all(&image_dir).map_err(|e| e.to_string())?;
            let download = LogProgress::new(format!("snapshot {snapshot_name} download"));
            let in_place = in_place::can_read_in_place(&opened);
            // The working set an earlier restore recorded (native images); a damaged record
            // only costs the prefetch.
            let stored_set = match in_place {
                false => None,
                true => repo
                    .working_set(&snapshot_name)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(snapshot = %snapshot_name, error = %e, "the stored working set is not usable; restoring without prefetch and recording it again");
                        None
                    }),
            };
            let mut input = RestoreInput {
                working_set: stored_set.as_ref().map(in_place::from_stored),
                ..Default::default()
            };
            let outcome = if in_place {
                let (outcome, files) = in_place::provide(
                    &self.image_cache(),
                    &opened,
                    &image_dir,
                    input.working_set.as_ref(),
                    self.fetch_timeout,
                    &download,
                )
                .await?;
                input.files = files;
                outcome
            } else {
                self.image_cache()
                    .provide(&opened, &image_dir, &download)
                    .await?
            };
            Metrics::count(
                &self.metrics.restore_images,
                match outcome {
                    CacheOutcome::Hit => "cached",
                    CacheOutcome::Assembled => "assembled",
                    CacheOutcome::Streamed => "streamed",
                },
            );
            // The restored workload, still waiting on its trigger, reads `restore`.
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let contract = self.runner.pod_dir_of(namespace, name, &uid).join("podsnap");
            std::fs::create_dir_all(&contract).map_err(|e| e.to_string())?;
            std::fs::write(contract.join("result"), "restore\n").map_err(|e| e.to_string())?;
            let image_ready = started.elapsed();
            let restored = self.runner.restore(pod, &image_dir, &input).await;
            tracing::info!(
                namespace,
                name,
                snapshot = %snapshot_name,
                image = ?outcome,
                image_ms = image_ready.as_millis() as u64,
                engine_ms = (started.elapsed() - image_ready).as_millis() as u64,
                "restore timing"
            );
            if let Ok(running) = &restored
                && in_place
                && stored_set.is_none()
            {
                self.record_working_set(
                    repo.clone(),
                    snapshot_name.clone(),
                    running.sandbox_id.clone(),
                    format!("restore of Pod {namespace}/{name}"),
                );
            }
            restored.map_err(|e| {
                // A damaged cached image must not fail every later restore too.
                self.image_cache().forget(&opened);
                e.to_string()
            })
        }
        .await;
        // The image is read into the sandbox's memory by now, or of no use.
        let _ = std::fs::remove_dir_all(&image_dir);
        match restored {
            Ok(running) => {
                Metrics::count(&self.metrics.restores, "success");
                self.metrics
                    .restore_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.pod_event(
                    "Normal",
                    "Restored",
                    namespace,
                    name,
                    &format!("Successfully restored the pod from PodSnapshot {snapshot_name}"),
                );
                if let Ok(Some(mut value)) =
                    self.store.get("PodSnapshot", namespace, &snapshot_name)
                {
                    value["status"]["lastAccessTime"] = json!(now());
                    let _ = self.store.set_status(
                        "PodSnapshot",
                        namespace,
                        &snapshot_name,
                        value["status"].clone(),
                    );
                }
                Some((running, snapshot_name))
            }
            Err(message) => {
                Metrics::count(&self.metrics.restores, "failure");
                Metrics::count(&self.metrics.cold_starts, "RestoreFailed");
                self.pod_event("Warning", "RestoreFailed", namespace, name, &format!("restoring from PodSnapshot {snapshot_name} failed, starting cold: {message}"));
                None
            }
        }
    }
}
