//! The Pod controller: makes the node run exactly the Pods the store holds, and writes what it
//! sees back into their status.
//!
//! Each pass starts Pods that are not running (recording why one cannot start), stops Pods that
//! were deleted, and follows containers that exited: restarted after the kubelet's back-off
//! when the restart policy says so, otherwise reflected in the Pod's phase. When the agent
//! starts, it adopts sandboxes of Pods it still holds and removes the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use podsnap_runtime::{PodRunner, RunningPod};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::store::{Store, now};

/// Label on the Pods a Deployment owns.
pub const DEPLOYMENT_LABEL: &str = "podsnap.dev/deployment";

/// A short, stable hash of a Pod template (FNV-1a over its JSON).
fn template_hash(template: &Value) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash as u32)
}

/// What the controller knows about one Pod it runs.
#[derive(Clone, Debug)]
pub(crate) struct Tracked {
    pub(crate) uid: String,
    pub(crate) pod: Pod,
    pub(crate) running: RunningPod,
    /// The PodSnapshot this Pod was restored from.
    pub(crate) restored_from: Option<String>,
    /// How its memory came in, when it was restored lazily.
    pub(crate) memory: Option<podsnap_engine::RestoreProgress>,
    /// The Pod completed because its snapshot policy stops it after the checkpoint.
    pub(crate) completed_by_checkpoint: bool,
    /// Bumped whenever the sandbox is replaced under the Pod (a checkpoint stops it): exits
    /// seen by waiters of an older generation are not the Pod's.
    pub(crate) generation: u64,
    started_at: String,
    /// Container name → exit code, for containers that ended and were not restarted.
    pub(crate) exited: BTreeMap<String, i32>,
    /// Container name → restarts so far.
    restarts: BTreeMap<String, u32>,
    /// Container name → whether its readiness probe passes (absent: no probe result yet).
    probed_ready: BTreeMap<String, bool>,
}

impl Tracked {
    fn new(uid: String, pod: Pod, running: RunningPod, started_at: String) -> Self {
        Self {
            uid,
            pod,
            running,
            restored_from: None,
            memory: None,
            completed_by_checkpoint: false,
            generation: 0,
            started_at,
            exited: BTreeMap::new(),
            restarts: BTreeMap::new(),
            probed_ready: BTreeMap::new(),
        }
    }

    /// Whether container `name` counts as ready: running, and its readiness probe (if any)
    /// passes.
    fn container_ready(&self, name: &str) -> bool {
        let has_probe = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .any(|c| c.name == name && c.readiness_probe.is_some());
        !self.exited.contains_key(name)
            && (!has_probe || self.probed_ready.get(name) == Some(&true))
    }

    pub(crate) fn grace(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }
}

/// Runs the Pods of a store.
#[derive(Clone)]
pub struct Controller {
    pub(crate) store: Store,
    pub(crate) runner: PodRunner,
    /// This node's fingerprint for the gvisor engine; `None` when it cannot be read (then no
    /// snapshot is taken or restored, and events say why).
    pub(crate) node: Option<podsnap_api::NodeFingerprint>,
    /// Where checkpoint images and the chunk cache live.
    pub(crate) state_dir: std::path::PathBuf,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// The longest a restore streaming its memory from the repository waits for one chunk
    /// (then the restore fails with the reason; set it like the native engine's read timeout).
    pub fetch_timeout: Duration,
    /// Manual triggers being carried out.
    pub(crate) busy_triggers: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Pods being checkpointed: a deleted one is stopped only after its checkpoint ends, so
    /// that an in-place resume cannot bring a deleted Pod's sandbox back.
    pub(crate) checkpointing: Arc<Mutex<std::collections::HashSet<PodKey>>>,
    pub(crate) pods: Arc<Mutex<HashMap<(String, String), Tracked>>>,
    relays: Arc<Mutex<HashMap<PodKey, Vec<tokio::task::JoinHandle<()>>>>>,
    /// Deleted Pods being stopped: each in its own task, as a grace period can take a while
    /// and must not hold up other Pods.
    terminating: Arc<Mutex<std::collections::HashSet<PodKey>>>,
}

/// A Pod's namespace and name.
type PodKey = (String, String);

/// The relays a running Pod needs: its hostPorts on the host's loopback (Pods on the host's
/// network listen there themselves), and, when its sandbox has only its loopback, its TCP
/// container ports at its Pod IP.
fn port_mappings(tracked: &Tracked) -> Vec<crate::relay::PortMapping> {
    use crate::relay::{Listen, PortMapping};
    let host_network = podsnap_runtime::runner::host_network(&tracked.pod);
    let relay_netns = tracked
        .running
        .network
        .as_ref()
        .filter(|n| n.mode == podsnap_runtime::network::PodNetworkMode::Relay)
        .map(|n| n.netns.clone());
    let mut pod_ports = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for c in tracked.pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let Ok(id) = tracked.running.container_id(Some(&c.name)) else {
            continue;
        };
        for port in c.ports.iter().flatten() {
            let container_port = port.container_port as u16;
            if let Some(host_port) = port.host_port.filter(|p| *p > 0)
                && !host_network
            {
                out.push(PortMapping {
                    listen: Listen::HostLoopback(host_port as u16),
                    container_port,
                    container_id: id.to_owned(),
                });
            }
            let tcp = port.protocol.as_deref().unwrap_or("TCP") == "TCP";
            if let Some(netns) = &relay_netns
                && tcp
                && pod_ports.insert(container_port)
            {
                out.push(PortMapping {
                    listen: Listen::PodNamespace {
                        netns: netns.clone(),
                        port: container_port,
                    },
                    container_port,
                    container_id: id.to_owned(),
                });
            }
        }
    }
    out
}

/// The namespace (`default` when absent) and name of a stored object.
pub(crate) fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Controller {
    /// Records an event about Pod `namespace/name` (the store logs it; a failure to record it
    /// does not stop the controller).
    pub(crate) fn pod_event(
        &self,
        event_type: &str,
        reason: &str,
        namespace: &str,
        name: &str,
        message: &str,
    ) {
        let _ = self
            .store
            .event(event_type, reason, "Pod", namespace, name, message);
    }

    /// A controller over `store` running Pods with `runner`, keeping checkpoint images and
    /// the chunk cache under `state_dir`.
    pub fn new(store: Store, runner: PodRunner, state_dir: &std::path::Path) -> Self {
        let runsc = podsnap_node::probe_runsc(None);
        let host = podsnap_node::HostRoot::default();
        let node = podsnap_node::probe_fingerprint(&host, &podsnap_node::EngineKind::Gvisor(runsc))
            .map_err(|e| tracing::warn!(error = %e, "no node fingerprint: snapshots are off"))
            .ok();
        Self {
            store,
            runner,
            node,
            state_dir: state_dir.to_path_buf(),
            busy_triggers: Arc::new(Mutex::new(std::collections::HashSet::new())),
            checkpointing: Arc::new(Mutex::new(std::collections::HashSet::new())),
            metrics: crate::metrics::Metrics::default(),
            fetch_timeout: Duration::from_secs(10),
            pods: Arc::new(Mutex::new(HashMap::new())),
            relays: Arc::new(Mutex::new(HashMap::new())),
            terminating: Arc::new(Mutex::new(std::collections::HashSet::new())),
        }
    }

    /// The runner, for exec and logs.
    pub fn runner(&self) -> &PodRunner {
        &self.runner
    }

    /// The running Pod `namespace/name`, if it runs.
    pub async fn running(&self, namespace: &str, name: &str) -> Option<RunningPod> {
        self.pods
            .lock()
            .await
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|t| t.running.clone())
    }

    /// Adopts sandboxes of stored Pods that still run, and removes every other sandbox.
    pub async fn adopt(&self) {
        self.fail_interrupted_checkpoints();
        let engine = self.runner.engine().clone();
        let existing = engine.list().await.unwrap_or_default();
        let pods = self.store.list("Pod", None).unwrap_or_default();
        let mut keep = Vec::new();
        let mut keep_sandboxes = std::collections::HashSet::new();
        for value in pods {
            let Ok(pod) = serde_json::from_value::<Pod>(value.clone()) else {
                continue;
            };
            let (namespace, name) = object_key(&value);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let sandbox = podsnap_runtime::plan::sandbox_id(&namespace, &name, &uid);
            let alive = matches!(engine.state(&sandbox).await, Ok(s) if s.status == podsnap_engine::Status::Running);
            if !alive {
                continue;
            }
            let containers = podsnap_runtime::runner::container_ids(&pod, &sandbox);
            keep.push(sandbox.clone());
            keep_sandboxes.insert(sandbox.clone());
            keep.extend(containers.iter().map(|(_, id)| id.clone()));
            let dir = self.runner.pod_dir(&sandbox);
            let started_at = value["status"]["startTime"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(now);
            tracing::info!(namespace, name, "adopted a running Pod");
            let network = self.runner.recorded_network(&sandbox);
            if let Err(e) = self.runner.check_network(&sandbox).await {
                let message = format!("the adopted Pod's network is not as it was set up: {e}");
                self.pod_event("Warning", "NetworkCheckFailed", &namespace, &name, &message);
            }
            let running = RunningPod {
                sandbox_id: sandbox,
                containers,
                dir,
                network,
            };
            let tracked = Tracked::new(uid, pod, running, started_at);
            self.watch_containers(&namespace, &name, &tracked).await;
            self.probe_containers(&namespace, &name, &tracked);
            let mappings = port_mappings(&tracked);
            match crate::relay::start(self.runner.engine().clone(), mappings).await {
                Ok(handles) => {
                    self.relays
                        .lock()
                        .await
                        .insert((namespace.clone(), name.clone()), handles);
                }
                Err(message) => {
                    self.pod_event("Warning", "PortConflict", &namespace, &name, &message)
                }
            }
            self.pods.lock().await.insert((namespace, name), tracked);
        }
        for id in existing.iter().rev() {
            if !keep.contains(id) {
                tracing::info!(id, "removing a sandbox no Pod owns");
                let _ = engine.delete(id).await;
            }
        }
        // Networks (namespaces, address leases) of Pods that are gone or no longer run; the
        // Pods that run keep theirs.
        let removed = self.runner.cleanup_networks(&keep_sandboxes).await;
        if removed > 0 {
            tracing::info!(removed, "removed Pod networks left from before the restart");
        }
    }

    /// Runs passes until the process ends: on every change of the store and every second.
    pub async fn run(self) {
        self.adopt().await;
        loop {
            self.pass().await;
            tokio::select! {
                () = self.store.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Makes each Deployment's Pods match its replica count and template: Pods named
    /// `NAME-HASH-INDEX`, where HASH identifies the template, so a changed template replaces
    /// every Pod and scaling adds or removes the highest indices.
    pub fn reconcile_deployments(&self) {
        for deployment in self.store.list("Deployment", None).unwrap_or_default() {
            let (namespace, name) = object_key(&deployment);
            let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
            let template = &deployment["spec"]["template"];
            let hash = template_hash(template);
            let wanted: Vec<String> = (0..replicas)
                .map(|i| format!("{name}-{hash}-{i}"))
                .collect();
            let owned: Vec<Value> = self
                .store
                .list("Pod", Some(&namespace))
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p["metadata"]["labels"][DEPLOYMENT_LABEL] == name.as_str())
                .collect();
            for pod in &owned {
                let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
                if !wanted.iter().any(|w| w == pod_name) {
                    let _ = self.store.delete("Pod", &namespace, pod_name);
                    let _ = self.store.event(
                        "Normal",
                        "SuccessfulDelete",
                        "Deployment",
                        &namespace,
                        &name,
                        &format!("deleted Pod {pod_name}"),
                    );
                }
            }
            for pod_name in &wanted {
                if owned
                    .iter()
                    .any(|p| p["metadata"]["name"] == pod_name.as_str())
                {
                    continue;
                }
                let mut labels = template["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                labels[DEPLOYMENT_LABEL] = json!(name);
                labels["pod-template-hash"] = json!(hash);
                let pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": namespace, "labels": labels,
                                 "annotations": template["metadata"]["annotations"].clone()},
                    "spec": template["spec"].clone(),
                });
                if self.store.apply("Pod", &namespace, pod_name, pod).is_ok() {
                    let _ = self.store.event(
                        "Normal",
                        "SuccessfulCreate",
                        "Deployment",
                        &namespace,
                        &name,
                        &format!("created Pod {pod_name}"),
                    );
                }
            }
            let pods = self.store.list("Pod", Some(&namespace)).unwrap_or_default();
            let ready = pods
                .iter()
                .filter(|p| p["metadata"]["labels"][DEPLOYMENT_LABEL] == name.as_str())
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            let _ = self.store.set_status(
                "Deployment",
                &namespace,
                &name,
                json!({"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}),
            );
        }
    }

    /// One reconciliation pass.
    pub async fn pass(&self) {
        self.reconcile_deployments();
        self.reconcile_triggers().await;
        self.reconcile_workload_triggers().await;
        self.reconcile_retention().await;
        let stored = self.store.list("Pod", None).unwrap_or_default();
        let wanted: HashMap<(String, String), Value> =
            stored.into_iter().map(|p| (object_key(&p), p)).collect();
        // Stop Pods that were deleted (or re-created with a new uid).
        let stale: Vec<((String, String), Tracked)> = {
            let pods = self.pods.lock().await;
            pods.iter()
                .filter(|(k, t)| {
                    wanted
                        .get(*k)
                        .is_none_or(|p| p["metadata"]["uid"].as_str() != Some(t.uid.as_str()))
                })
                .map(|(k, t)| (k.clone(), t.clone()))
                .collect()
        };
        for (key, tracked) in stale {
            if self.checkpointing.lock().await.contains(&key)
                || !self.terminating.lock().await.insert(key.clone())
            {
                continue;
            }
            for handle in self.relays.lock().await.remove(&key).unwrap_or_default() {
                handle.abort();
            }
            // Its containers' exits are no longer the Pod's to restart.
            if let Some(t) = self.pods.lock().await.get_mut(&key) {
                t.generation += 1;
            }
            let me = self.clone();
            tokio::spawn(async move {
                tracing::info!(namespace = key.0, name = key.1, grace = ?tracked.grace(), "stopping a deleted Pod");
                if let Err(e) = me.runner.stop(&tracked.running, tracked.grace()).await {
                    tracing::warn!(error = %e, "stopping a deleted Pod");
                }
                me.pods.lock().await.remove(&key);
                me.terminating.lock().await.remove(&key);
                me.pod_event(
                    "Normal",
                    "Killing",
                    &key.0,
                    &key.1,
                    "stopped the Pod's containers",
                );
            });
        }
        // Oldest first, so that of two Pods competing for a host port the earlier one wins.
        let mut order: Vec<((String, String), Value)> = wanted.into_iter().collect();
        order.sort_by_key(|(_, p)| {
            let meta = &p["metadata"];
            (
                meta["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                meta["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            )
        });
        for (key, value) in order {
            let uid = value["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // A Pod in a terminal phase never runs again (also after an agent restart).
            let terminal = matches!(
                value["status"]["phase"].as_str(),
                Some("Failed" | "Succeeded")
            );
            if terminal || self.pods.lock().await.contains_key(&key) {
                continue;
            }
            self.start(&key, &uid, &value).await;
        }
    }

    async fn start(&self, key: &(String, String), uid: &str, value: &Value) {
        let (namespace, name) = key;
        let _ = self
            .store
            .set_status("Pod", namespace, name, json!({"phase": "Pending"}));
        let pod: Pod = match serde_json::from_value(value.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.fail(key, "InvalidSpec", &format!("the Pod cannot be read: {e}"))
                    .await;
                return;
            }
        };
        let (result, restored_from) = match self.try_restore(namespace, name, &pod).await {
            Some((running, snapshot)) => (Ok(running), Some(snapshot)),
            None => (self.runner.start(&pod).await, None),
        };
        match result {
            Ok(running) => {
                let mut tracked = Tracked::new(uid.to_owned(), pod, running, now());
                tracked.restored_from = restored_from;
                match crate::relay::start(self.runner.engine().clone(), port_mappings(&tracked))
                    .await
                {
                    Ok(handles) => {
                        self.relays.lock().await.insert(key.clone(), handles);
                    }
                    Err(message) => {
                        let _ = self.runner.stop(&tracked.running, Duration::ZERO).await;
                        self.fail(key, "PortConflict", &message).await;
                        return;
                    }
                }
                if tracked.restored_from.is_some()
                    && let Err(e) = self
                        .runner
                        .set_restored_hostname(&tracked.pod, &tracked.running)
                        .await
                {
                    tracing::warn!(error = %e, "could not set the restored Pod's host name");
                }
                if tracked.restored_from.is_some() {
                    tracked.memory = self
                        .runner
                        .engine()
                        .restore_progress(&tracked.running.sandbox_id)
                        .await;
                    match &tracked.memory {
                        Some(m) if m.state == "Serving" => {
                            self.watch_memory(key.clone(), tracked.running.sandbox_id.clone())
                        }
                        Some(m) => self.metrics.record_lazy_restore(m),
                        None => {}
                    }
                }
                self.pod_event(
                    "Normal",
                    "Started",
                    namespace,
                    name,
                    "started the Pod's containers",
                );
                self.write_status(namespace, name, &tracked);
                self.watch_containers(namespace, name, &tracked).await;
                self.probe_containers(namespace, name, &tracked);
                self.pods.lock().await.insert(key.clone(), tracked);
            }
            Err(e) => self.fail(key, "FailedCreate", &e.to_string()).await,
        }
    }

    /// Marks the Pod Failed (a terminal phase: it is not started again) with an event.
    async fn fail(&self, key: &(String, String), reason: &str, message: &str) {
        let (namespace, name) = key;
        let _ = self
            .store
            .event("Warning", reason, "Pod", namespace, name, message);
        let _ = self.store.set_status(
            "Pod",
            namespace,
            name,
            json!({"phase": "Failed", "reason": reason, "message": message}),
        );
    }

    /// Waits on every container of a Pod; an exit updates the status and, per the restart
    /// policy, restarts the container after the back-off.
    async fn watch_containers(&self, namespace: &str, name: &str, tracked: &Tracked) {
        for (container, id) in tracked.running.containers.clone() {
            self.watch_container(
                namespace,
                name,
                &tracked.uid,
                container,
                id,
                tracked.generation,
            );
        }
    }

    pub(crate) fn watch_container(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: String,
        id: String,
        generation: u64,
    ) {
        let me = self.clone();
        let key = (namespace.to_owned(), name.to_owned());
        let uid = uid.to_owned();
        let pod_dir = self.runner.pod_dir_of(namespace, name, &uid);
        tokio::spawn(async move {
            let Some(code) = me.runner.wait_container(&pod_dir, &container, &id).await else {
                return;
            };
            let current = me.pods.lock().await.get(&key).map(|t| t.generation);
            if current.is_some_and(|g| g != generation) {
                return;
            }
            me.container_exited(&key, &uid, &container, code).await;
        });
    }

    /// Runs each container's readiness and liveness probes: readiness decides the Ready
    /// condition, a failing liveness probe kills the container (the restart policy then
    /// applies).
    fn probe_containers(&self, namespace: &str, name: &str, tracked: &Tracked) {
        let containers = tracked
            .pod
            .spec
            .clone()
            .map(|s| s.containers)
            .unwrap_or_default();
        for (i, c) in containers.into_iter().enumerate() {
            for (liveness, probe) in [
                (false, c.readiness_probe.clone()),
                (true, c.liveness_probe.clone()),
            ] {
                let Some(probe) = probe else { continue };
                let kind = if liveness {
                    "livenessProbe"
                } else {
                    "readinessProbe"
                };
                let field = format!("spec.containers[{i}].{kind}");
                let helper = podsnap_runtime::runner::HELPER_DIR;
                let command = match podsnap_runtime::plan::probe_command(&field, &probe, &c, helper)
                {
                    Ok(cmd) => cmd,
                    Err(e) => {
                        self.pod_event("Warning", "InvalidProbe", namespace, name, &e.to_string());
                        continue;
                    }
                };
                let timing = podsnap_runtime::plan::probe_timing(&probe);
                let me = self.clone();
                let key = (namespace.to_owned(), name.to_owned());
                let uid = tracked.uid.clone();
                let container = c.name.clone();
                tokio::spawn(async move {
                    me.probe_loop(key, uid, container, liveness, command, timing)
                        .await
                });
            }
        }
    }

    async fn probe_loop(
        &self,
        key: (String, String),
        uid: String,
        container: String,
        liveness: bool,
        command: Vec<String>,
        timing: podsnap_runtime::plan::ProbeTiming,
    ) {
        tokio::time::sleep(timing.initial_delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            let tracked = match self.pods.lock().await.get(&key) {
                Some(t) if t.uid == uid => t.clone(),
                _ => return,
            };
            if !tracked.exited.contains_key(&container)
                && let Ok(id) = tracked.running.container_id(Some(&container))
            {
                let id = id.to_owned();
                let run = self.runner.engine().exec(&id, &command, &[]);
                let limit = timing.timeout + Duration::from_secs(2);
                let ok = matches!(tokio::time::timeout(limit, run).await, Ok(Ok(out)) if out.exit_code == 0);
                if ok {
                    successes += 1;
                    failures = 0;
                } else {
                    failures += 1;
                    successes = 0;
                }
                let (namespace, name) = &key;
                if liveness {
                    if failures == timing.failure_threshold {
                        let message = format!(
                            "liveness probe of {container} failed {failures} times; killing it"
                        );
                        self.pod_event("Warning", "Unhealthy", namespace, name, &message);
                        let _ = self.runner.engine().kill(&id, 9).await;
                    }
                } else {
                    let known = tracked.probed_ready.get(&container).copied();
                    let ready = if successes >= timing.success_threshold {
                        Some(true)
                    } else if failures >= timing.failure_threshold || known.is_none() {
                        Some(false)
                    } else {
                        None
                    };
                    if let Some(ready) = ready
                        && known != Some(ready)
                    {
                        let updated = {
                            let mut pods = self.pods.lock().await;
                            let Some(t) = pods.get_mut(&key) else { return };
                            t.probed_ready.insert(container.clone(), ready);
                            t.clone()
                        };
                        if !ready && failures >= timing.failure_threshold {
                            let message = format!("readiness probe of {container} failed");
                            self.pod_event("Warning", "Unhealthy", namespace, name, &message);
                        }
                        self.write_status(namespace, name, &updated);
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    }

    async fn container_exited(
        &self,
        key: &(String, String),
        uid: &str,
        container: &str,
        code: i32,
    ) {
        let (namespace, name) = key;
        let tracked = {
            let mut pods = self.pods.lock().await;
            let Some(t) = pods.get_mut(key) else { return };
            if t.uid != uid {
                return;
            }
            t.exited.insert(container.to_owned(), code);
            t.clone()
        };
        self.pod_event(
            if code == 0 { "Normal" } else { "Warning" },
            "ContainerExited",
            namespace,
            name,
            &format!("container {container} exited with code {code}"),
        );
        self.write_status(namespace, name, &tracked);
        let policy = tracked
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone());
        if tracked.completed_by_checkpoint
            || !podsnap_runtime::plan::should_restart(policy.as_deref(), code)
        {
            return;
        }
        let restarts = tracked.restarts.get(container).copied().unwrap_or(0);
        let delay = podsnap_runtime::plan::restart_backoff(restarts);
        self.pod_event(
            "Normal",
            "BackOff",
            namespace,
            name,
            &format!("restarting {container} in {}s", delay.as_secs()),
        );
        tokio::time::sleep(delay).await;
        let still_ours = matches!(self.pods.lock().await.get(key), Some(t) if t.uid == uid);
        if !still_ours {
            return;
        }
        match self
            .runner
            .restart_container(&tracked.pod, &tracked.running, container)
            .await
        {
            Ok(()) => {
                let updated = {
                    let mut pods = self.pods.lock().await;
                    let Some(t) = pods.get_mut(key) else { return };
                    t.exited.remove(container);
                    t.probed_ready.remove(container);
                    *t.restarts.entry(container.to_owned()).or_insert(0) += 1;
                    t.clone()
                };
                self.pod_event(
                    "Normal",
                    "Started",
                    namespace,
                    name,
                    &format!("restarted container {container}"),
                );
                self.write_status(namespace, name, &updated);
                if let Ok(id) = updated.running.container_id(Some(container)) {
                    let generation = updated.generation;
                    self.watch_container(
                        namespace,
                        name,
                        uid,
                        container.to_owned(),
                        id.to_owned(),
                        generation,
                    );
                }
            }
            Err(e) => {
                self.pod_event(
                    "Warning",
                    "FailedRestart",
                    namespace,
                    name,
                    &format!("could not restart {container}: {e}"),
                );
            }
        }
    }

    /// Follows the memory of a lazily restored Pod until all of it is in (or its restore
    /// failed): its `PodMemoryResident` condition and the lazy-restore metrics.
    fn watch_memory(&self, key: PodKey, sandbox_id: String) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let progress = me.runner.engine().restore_progress(&sandbox_id).await;
                let mut pods = me.pods.lock().await;
                let Some(t) = pods.get_mut(&key) else {
                    return;
                };
                if t.running.sandbox_id != sandbox_id {
                    return;
                }
                let Some(p) = progress else {
                    return;
                };
                if t.memory.as_ref() != Some(&p) {
                    t.memory = Some(p.clone());
                    me.write_status(&key.0, &key.1, t);
                }
                drop(pods);
                if p.state != "Serving" {
                    me.metrics.record_lazy_restore(&p);
                    return;
                }
            }
        });
    }

    pub(crate) fn write_status(&self, namespace: &str, name: &str, tracked: &Tracked) {
        let spec = tracked.pod.spec.clone().unwrap_or_default();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let restarts = tracked.restarts.get(&c.name).copied().unwrap_or(0);
                let ready = tracked.container_ready(&c.name);
                let state = match tracked.exited.get(&c.name) {
                    Some(code) => json!({"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" }}}),
                    None => json!({"running": {"startedAt": tracked.started_at}}),
                };
                json!({"name": c.name, "ready": ready, "restartCount": restarts, "image": c.image, "state": state})
            })
            .collect();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let all_exited = tracked.exited.len() == spec.containers.len();
        let phase = if !all_exited || policy == "Always" {
            "Running"
        } else if tracked.exited.values().all(|c| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        };
        let ready = spec
            .containers
            .iter()
            .all(|c| tracked.container_ready(&c.name));
        let previous = self.store.get("Pod", namespace, name).ok().flatten();
        let transition = previous
            .as_ref()
            .and_then(|p| p["status"]["conditions"].as_array().cloned())
            .and_then(|c| c.into_iter().find(|c| c["type"] == "Ready"))
            .filter(|c| c["status"] == if ready { "True" } else { "False" })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(now);
        let mut conditions = vec![json!({
            "type": "Ready",
            "status": if ready { "True" } else { "False" },
            "lastTransitionTime": transition
        })];
        if let Some(snapshot) = &tracked.restored_from {
            conditions.push(json!({
                "type": podsnap_api::POD_RESTORED_CONDITION,
                "status": "True",
                "reason": "Restored",
                "message": format!("restored from PodSnapshot {snapshot}"),
                "lastTransitionTime": tracked.started_at,
            }));
        }
        if let Some(m) = &tracked.memory {
            conditions.push(memory_condition(m, &tracked.started_at));
        }
        let phase = if tracked.completed_by_checkpoint {
            "Succeeded"
        } else {
            phase
        };
        let status = json!({
            "phase": phase,
            "startTime": tracked.started_at,
            "podIP": tracked.running.pod_ip(),
            "podIPs": [{"ip": tracked.running.pod_ip()}],
            "conditions": conditions,
            "containerStatuses": statuses,
        });
        let _ = self.store.set_status("Pod", namespace, name, status);
    }
}

/// The `PodMemoryResident` condition of a lazily restored Pod: False while its memory comes
/// in, True once all of it is in (the Pod is fully restored), with the figures.
fn memory_condition(m: &podsnap_engine::RestoreProgress, since: &str) -> serde_json::Value {
    let message = match m.state.as_str() {
        "Complete" => format!(
            "all memory in {:.3} s after the restore started (running after {:.3} s); {} \
             faults served on demand (p50 {:.0} µs, p99 {:.0} µs, {:.1} MiB), {:.1} MiB \
             in the background ({:.1} MiB of them the recorded working set, first)",
            m.seconds_to_resident.unwrap_or_default(),
            m.seconds_to_resume,
            m.demand_faults,
            m.fault_p50_us,
            m.fault_p99_us,
            m.demand_bytes as f64 / (1u64 << 20) as f64,
            m.background_bytes as f64 / (1u64 << 20) as f64,
            m.prefetched_bytes as f64 / (1u64 << 20) as f64
        ),
        "Failed" => format!(
            "its memory could not be brought in: {}",
            m.message.as_deref().unwrap_or("unknown")
        ),
        _ => format!(
            "running after {:.3} s; memory still coming in",
            m.seconds_to_resume
        ),
    };
    json!({
        "type": podsnap_api::POD_MEMORY_RESIDENT_CONDITION,
        "status": if m.state == "Complete" { "True" } else { "False" },
        "reason": m.state,
        "message": message,
        "lastTransitionTime": since,
    })
}
