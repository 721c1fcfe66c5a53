//! Helpers shared by the end-to-end tests that drive a `podsnap serve` process.
#![allow(dead_code)]

#[path = "../../../../tests/support/busybox_root.rs"]
mod busybox_root;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use busybox_root::busybox_root;
use hyper::Method;
pub use podsnap_agent::client::Client;
use podsnap_engine::gvisor::SandboxCleanup;
use podsnap_engine::{GvisorConfig, GvisorEngine};
use podsnap_image::{ImageConfig, ImageStore};
use serde_json::{Value, json};

/// A `podsnap serve` process, killed (SIGKILL, as a crash would) when dropped.
pub struct Agent(pub std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn start_agent(dir: &Path) -> (Agent, Client, Arc<GvisorEngine>) {
    start_agent_with_env(dir, &[]).await
}

/// [`start_agent`] with extra environment variables for the agent process.
pub async fn start_agent_with_env(
    dir: &Path,
    env: &[(&str, &str)],
) -> (Agent, Client, Arc<GvisorEngine>) {
    start_agent_with(dir, env, &[]).await
}

/// [`start_agent`] with extra environment variables and `podsnap serve` arguments.
pub async fn start_agent_with(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Agent, Client, Arc<GvisorEngine>) {
    let socket = dir.join("agent.sock");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_podsnap"))
        .envs(env.iter().copied())
        .arg("serve")
        .args(args)
        .arg(format!("--state-dir={}", dir.display()))
        .arg(format!("--images={}", dir.join("images").display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pod-subnet={}", test_pod_subnet(dir)))
        .arg(format!("--pod-bridge={}", test_pod_bridge(dir)))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .request(Method::GET, "/healthz", None, "text/plain")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not come up: {}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let engine = Arc::new(
        GvisorEngine::new(GvisorConfig::new(dir.join("engine")))
            .await
            .unwrap(),
    );
    (agent, client, engine)
}

/// The bridge of the Pod network of the agent serving from `dir`: one per test subnet (the
/// bridge plugin gives a bridge one subnet).
pub fn test_pod_bridge(dir: &Path) -> String {
    let subnet = test_pod_subnet(dir);
    let n = subnet.split('.').nth(2).unwrap();
    format!("podsnapt{n}")
}

/// The Pod subnet of the agent serving from `dir`: a /24 of 10.89.0.0/16 that no other test
/// agent uses (a lock file held until this process ends), kept in `dir` so that a restarted
/// agent gets the same one.
pub fn test_pod_subnet(dir: &Path) -> String {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let kept = dir.join("test-pod-subnet");
    if let Ok(subnet) = std::fs::read_to_string(&kept) {
        return subnet;
    }
    let locks = Path::new("/tmp/podsnap-test-subnets");
    std::fs::create_dir_all(locks).unwrap();
    for n in 1..=254u8 {
        let file = std::fs::File::create(locks.join(n.to_string())).unwrap();
        if file.try_lock().is_ok() {
            HELD.lock().unwrap().push(file);
            let subnet = format!("10.89.{n}.0/24");
            std::fs::write(&kept, &subnet).unwrap();
            return subnet;
        }
    }
    panic!("every test Pod subnet is in use");
}

/// Removes what a killed test agent leaves in its state directory: every sandbox, then the
/// Pods' network namespaces.
pub struct StateCleanup(pub std::path::PathBuf);

impl Drop for StateCleanup {
    fn drop(&mut self) {
        drop(SandboxCleanup(self.0.join("engine")));
        podsnap_runtime::network::remove_namespaces(&self.0);
    }
}

/// A fresh directory with the busybox image imported and an agent serving from it, and a guard
/// that removes every sandbox and Pod network namespace when the test ends (declared before
/// the agent, so dropped after).
pub async fn busybox_agent() -> (
    tempfile::TempDir,
    StateCleanup,
    Agent,
    Client,
    Arc<GvisorEngine>,
) {
    let dir = tempfile::tempdir().unwrap();
    let cleanup = StateCleanup(dir.path().to_path_buf());
    busybox_image(dir.path());
    let (agent, client, engine) = start_agent(dir.path()).await;
    (dir, cleanup, agent, client, engine)
}

pub fn busybox_image(dir: &Path) {
    let root = busybox_root(
        &dir.join("busybox-root"),
        &[
            "sh", "httpd", "wget", "echo", "sleep", "touch", "[", "cat", "rm",
        ],
    );
    let store = ImageStore::open(dir.join("images")).unwrap();
    let config = ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        ..Default::default()
    };
    store
        .import(&root, Some("localhost/busybox"), Some(config))
        .unwrap();
}

pub async fn pod(client: &Client, name: &str) -> Value {
    client
        .json(Method::GET, &format!("/objects/Pod/default/{name}"), None)
        .await
        .unwrap()
}

pub async fn wait_phase(client: &Client, name: &str, phase: &str) -> Value {
    wait_phase_within(client, name, phase, Duration::from_secs(30)).await
}

pub async fn wait_phase_within(client: &Client, name: &str, phase: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let p = pod(client, name).await;
        if p["status"]["phase"] == phase {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {phase}: {}",
            p["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn pods(client: &Client) -> Vec<String> {
    let list = client
        .json(Method::GET, "/objects/Pod?namespace=default", None)
        .await
        .unwrap();
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

pub fn snapshot_setup(dir: &Path, app: &str, trigger: &str, pod: &str) -> String {
    format!(
        "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotStorageConfig\nmetadata: {{name: local}}\nspec:\n  snapshotStorageConfig:\n    local: {{directory: {}}}\n---\napiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotPolicy\nmetadata: {{name: {app}, namespace: default}}\nspec:\n  storageConfigName: local\n  selector: {{matchLabels: {{app: {app}}}}}\n  triggerConfig: {{{trigger}}}\n---{pod}",
        dir.join("snapshots").display()
    )
}

pub const COUNTER_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, labels: {app: counter}}
spec:
  containers:
  - name: counter
    image: localhost/busybox
    command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"]
"#;

/// The counter Pod `pod` has reached, once it counts (its start-up work, e.g. writing a large
/// file first, may take a while on a busy machine: up to 60 s).
pub async fn count(client: &Client, pod: &str) -> u64 {
    // The loop truncates the file before it writes it: a read in between sees nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = client
            .json(
                Method::POST,
                &format!("/exec/default/{pod}"),
                Some(&json!({"command": ["/bin/cat", "/tmp/count"]})),
            )
            .await
            .unwrap();
        if let Ok(n) = out["stdout"].as_str().unwrap_or_default().trim().parse() {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{pod}'s counter file stayed empty");
}

/// Applies manual trigger `trigger` for Pod `target` and waits until it completes or fails;
/// the trigger object at the end.
pub async fn run_trigger(client: &Client, trigger: &str, target: &str) -> Value {
    client.apply(&format!(
            "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotManualTrigger\nmetadata: {{name: {trigger}, namespace: default}}\nspec: {{targetPod: {target}}}\n"
        ),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let object = client
            .json(
                Method::GET,
                &format!("/objects/PodSnapshotManualTrigger/default/{trigger}"),
                None,
            )
            .await
            .unwrap();
        let reason = &object["status"]["conditions"][0]["reason"];
        if reason == "Complete" || reason == "Failed" {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "trigger {trigger} never ended: {}",
            object["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies Pod `yaml` named `name`, waits until it runs, and checks that it started cold, not
/// restored, with an event of `reason` saying why.
pub async fn apply_expecting_cold_start(client: &Client, yaml: &str, name: &str, reason: &str) {
    client.apply(yaml).await.unwrap();
    let pod = wait_phase(client, name, "Running").await;
    assert!(
        condition_of(&pod, "PodRestored").is_null(),
        "{name} was restored: {}",
        pod["status"]
    );
    let reasons = event_reasons(client, name).await;
    assert!(reasons.iter().any(|r| r == reason), "{name}: {reasons:?}");
}

/// The agent's metrics, in Prometheus' text format.
pub async fn agent_metrics(client: &Client) -> String {
    let body = client
        .request(Method::GET, "/metrics", None, "text/plain")
        .await
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The events recorded for object `name` in namespace default (`{"items": [...]}`).
pub async fn events(client: &Client, name: &str) -> Value {
    client
        .json(
            Method::GET,
            &format!("/events?namespace=default&name={name}"),
            None,
        )
        .await
        .unwrap()
}

/// The files under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The reasons of the events recorded for object `name` in namespace default.
pub async fn event_reasons(client: &Client, name: &str) -> Vec<String> {
    events(client, name).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

/// The condition of `type_` in an object's status, or null.
pub fn condition_of(object: &Value, type_: &str) -> Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// The sandboxes the engine in `dir/engine` still knows.
pub async fn sandboxes(engine: &GvisorEngine) -> Vec<String> {
    use podsnap_engine::Engine;
    engine.list().await.unwrap()
}
