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
struct Tracked {
    uid: String,
    running: RunningPod,
    started_at: String,
    /// Container name → exit code, for containers that ended.
    exited: BTreeMap<String, i32>,
}

/// Runs the Pods of a store.
#[derive(Clone)]
pub struct Controller {
    store: Store,
    runner: PodRunner,
    pods: Arc<Mutex<HashMap<(String, String), Tracked>>>,
    failed: Arc<Mutex<HashMap<String, String>>>,
}

fn pod_key(pod: &Value) -> (String, String) {
    let meta = &pod["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

impl Controller {
    /// A controller over `store` running Pods with `runner`.
    pub fn new(store: Store, runner: PodRunner) -> Self {
        Self {
            store,
            runner,
            pods: Arc::new(Mutex::new(HashMap::new())),
            failed: Arc::new(Mutex::new(HashMap::new())),
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
        let engine = self.runner.engine().clone();
        let existing = engine.list().await.unwrap_or_default();
        let pods = self.store.list("Pod", None).unwrap_or_default();
        let mut keep = Vec::new();
        for value in pods {
            let Ok(pod) = serde_json::from_value::<Pod>(value.clone()) else {
                continue;
            };
            let (namespace, name) = pod_key(&value);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let sandbox = podsnap_runtime::plan::sandbox_id(&namespace, &name, &uid);
            let alive = matches!(engine.state(&sandbox).await, Ok(s) if s.status == podsnap_engine::Status::Running);
            if !alive {
                continue;
            }
            let containers: Vec<(String, String)> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| {
                    (
                        c.name.clone(),
                        podsnap_runtime::plan::container_id(&sandbox, &c.name),
                    )
                })
                .collect();
            keep.push(sandbox.clone());
            keep.extend(containers.iter().map(|(_, id)| id.clone()));
            let dir = self.runner.pod_dir(&sandbox);
            let started_at = value["status"]["startTime"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(now);
            tracing::info!(namespace, name, "adopted a running Pod");
            let tracked = Tracked {
                uid,
                running: RunningPod {
                    sandbox_id: sandbox,
                    containers,
                    dir,
                },
                started_at,
                exited: BTreeMap::new(),
            };
            self.watch_containers(&namespace, &name, &tracked).await;
            self.pods.lock().await.insert((namespace, name), tracked);
        }
        for id in existing.iter().rev() {
            if !keep.contains(id) {
                tracing::info!(id, "removing a sandbox no Pod owns");
                let _ = engine.delete(id).await;
            }
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
            let (namespace, name) = pod_key(&deployment);
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
        let stored = self.store.list("Pod", None).unwrap_or_default();
        let wanted: HashMap<(String, String), Value> =
            stored.into_iter().map(|p| (pod_key(&p), p)).collect();
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
            let grace = Duration::from_secs(5);
            if let Err(e) = self.runner.stop(&tracked.running, grace).await {
                tracing::warn!(error = %e, "stopping a deleted Pod");
            }
            self.pods.lock().await.remove(&key);
            let _ = self.store.event(
                "Normal",
                "Killing",
                "Pod",
                &key.0,
                &key.1,
                "stopped the Pod's containers",
            );
        }
        for (key, value) in wanted {
            let uid = value["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if self.pods.lock().await.contains_key(&key)
                || self.failed.lock().await.contains_key(&uid)
            {
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
                self.fail(
                    key,
                    uid,
                    "InvalidSpec",
                    &format!("the Pod cannot be read: {e}"),
                )
                .await;
                return;
            }
        };
        match self.runner.start(&pod).await {
            Ok(running) => {
                let tracked = Tracked {
                    uid: uid.to_owned(),
                    running,
                    started_at: now(),
                    exited: BTreeMap::new(),
                };
                let _ = self.store.event(
                    "Normal",
                    "Started",
                    "Pod",
                    namespace,
                    name,
                    "started the Pod's containers",
                );
                self.write_status(namespace, name, &pod, &tracked);
                self.watch_containers(namespace, name, &tracked).await;
                self.pods.lock().await.insert(key.clone(), tracked);
            }
            Err(e) => self.fail(key, uid, "FailedCreate", &e.to_string()).await,
        }
    }

    async fn fail(&self, key: &(String, String), uid: &str, reason: &str, message: &str) {
        let (namespace, name) = key;
        self.failed
            .lock()
            .await
            .insert(uid.to_owned(), message.to_owned());
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
            let me = self.clone();
            let key = (namespace.to_owned(), name.to_owned());
            let uid = tracked.uid.clone();
            tokio::spawn(async move {
                let Ok(code) = me.runner.engine().wait(&id).await else {
                    return;
                };
                me.container_exited(&key, &uid, &container, code).await;
            });
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
        let Some(value) = self.store.get("Pod", namespace, name).ok().flatten() else {
            return;
        };
        if value["metadata"]["uid"].as_str() != Some(uid) {
            return;
        }
        let Ok(pod) = serde_json::from_value::<Pod>(value) else {
            return;
        };
        let tracked = {
            let mut pods = self.pods.lock().await;
            let Some(t) = pods.get_mut(key) else { return };
            t.exited.insert(container.to_owned(), code);
            t.clone()
        };
        let _ = self.store.event(
            if code == 0 { "Normal" } else { "Warning" },
            "ContainerExited",
            "Pod",
            namespace,
            name,
            &format!("container {container} exited with code {code}"),
        );
        self.write_status(namespace, name, &pod, &tracked);
    }

    fn write_status(&self, namespace: &str, name: &str, pod: &Pod, tracked: &Tracked) {
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| match tracked.exited.get(&c.name) {
                Some(code) => json!({"name": c.name, "ready": false, "restartCount": 0, "image": c.image,
                    "state": {"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" }}}}),
                None => json!({"name": c.name, "ready": true, "restartCount": 0, "image": c.image,
                    "state": {"running": {"startedAt": tracked.started_at}}}),
            })
            .collect();
        let all_exited = tracked.exited.len() == spec.containers.len();
        let phase = if !all_exited {
            "Running"
        } else if tracked.exited.values().all(|c| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        };
        let ready = tracked.exited.is_empty();
        let previous = self.store.get("Pod", namespace, name).ok().flatten();
        let transition = previous
            .as_ref()
            .and_then(|p| p["status"]["conditions"].as_array().cloned())
            .and_then(|c| c.into_iter().find(|c| c["type"] == "Ready"))
            .filter(|c| c["status"] == if ready { "True" } else { "False" })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned))
            .unwrap_or_else(now);
        let status = json!({
            "phase": phase,
            "startTime": tracked.started_at,
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": transition}],
            "containerStatuses": statuses,
        });
        let _ = self.store.set_status("Pod", namespace, name, status);
    }
}
