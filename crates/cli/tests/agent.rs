//! `podsnap serve` end to end under runsc: apply a Pod and a Deployment through the API, see
//! them run, exec and read logs, scale, delete, kill and restart the agent and find the Pods
//! again, and bad input refused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::Method;
use podsnap_engine::Engine;
use serde_json::{Value, json};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers:
  - name: server
    image: localhost/busybox
    command: ["/bin/sh", "-c", "echo serving; exec httpd -f -p 8080 -h /bin"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: workers}
spec:
  replicas: 2
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      containers:
      - name: worker
        image: localhost/busybox
        args: ["-c", "exec sleep 1000"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_deployments_run_and_survive_an_agent_restart() {
    let (dir, _cleanup, agent, client, engine) = busybox_agent().await;

    let applied = client.apply(MANIFESTS).await.unwrap();
    assert_eq!(applied["results"][0]["result"], "created");
    let web = wait_phase(&client, "web", "Running").await;
    let ready = web["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True");
    assert!(ready["lastTransitionTime"].is_string());
    let out = client
        .json(
            Method::POST,
            "/exec/default/web",
            Some(&json!({"command": ["/bin/wget", "-qO-", "http://127.0.0.1:8080/sh"]})),
        )
        .await
        .unwrap();
    assert_eq!(out["exitCode"], 0);
    let logs = client
        .request(Method::GET, "/logs/default/web", None, "text/plain")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&logs).contains("serving"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pods(&client).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the Deployment's Pods did not appear"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers: Vec<String> = pods(&client)
        .await
        .into_iter()
        .filter(|n| n.starts_with("workers-"))
        .collect();
    for w in &workers {
        wait_phase(&client, w, "Running").await;
    }
    // Applying the same manifests again changes nothing.
    let again = client.apply(MANIFESTS).await.unwrap();
    assert_eq!(again["results"][0]["result"], "unchanged");

    // Kill the agent and start it again: the Pods are found again, not restarted.
    let started_before = pod(&client, "web").await["status"]["startTime"].clone();
    drop(agent);
    let (agent, client, _) = start_agent(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let web = pod(&client, "web").await;
    assert_eq!(web["status"]["startTime"], started_before);
    let out = client
        .json(
            Method::POST,
            "/exec/default/web",
            Some(&json!({"command": ["/bin/echo", "ok"]})),
        )
        .await
        .unwrap();
    assert_eq!(out["stdout"], "ok\n");

    // Scale down, then delete everything: no sandbox is left.
    client
        .json(
            Method::POST,
            "/scale/default/workers",
            Some(&json!({"replicas": 1})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pods(&client).await.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "scaling down did not remove a Pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .json(Method::DELETE, "/objects/Pod/default/web", None)
        .await
        .unwrap();
    client
        .json(Method::DELETE, "/objects/Deployment/default/workers", None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine.list().await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "sandboxes left: {:?}",
            engine.list().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_failures_are_recorded() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let err = client
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the Pod has no containers"),
        "{err}"
    );
    let err = client.apply("kind: Gadget\n").await.unwrap_err();
    assert!(err.to_string().contains("apiVersion"), "{err}");
    client.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  containers: [{name: c, image: localhost/missing}]\n").await.unwrap();
    let failed = wait_phase(&client, "ghost", "Failed").await;
    assert!(
        failed["status"]["message"]
            .as_str()
            .unwrap()
            .contains("localhost/missing:latest is not in the store")
    );
    let events = client
        .json(Method::GET, "/events?namespace=default&name=ghost", None)
        .await
        .unwrap();
    assert_eq!(events["items"][0]["reason"], "FailedCreate");
    let err = client.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  containers: [{name: c, image: localhost/busybox}]\n").await.unwrap_err();
    assert!(err.to_string().contains("delete it first"), "{err}");
    let err = client
        .json(Method::GET, "/objects/Pod/default/nope", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let err = Client::new(dir.path().join("no.sock"))
        .json(Method::GET, "/healthz", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("podsnap serve"), "{err}");
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: slow, namespace: default}
spec:
  containers:
  - name: server
    image: localhost/busybox
    command: ["/bin/sh", "-c", "sleep 2; exec httpd -f -p 8080 -h /bin"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /sh, port: http}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: flaky, namespace: default}
spec:
  restartPolicy: OnFailure
  volumes: [{name: state, emptyDir: {}}]
  containers:
  - name: job
    image: localhost/busybox
    command: ["/bin/sh", "-c", "if [ -f /state/ran ]; then echo second run; exit 0; fi; touch /state/ran; echo first run fails; exit 1"]
    volumeMounts: [{name: state, mountPath: /state}]
"#;

fn ready_condition(pod: &Value) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_gate_ready_and_failed_containers_restart() {
    let (_dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    client.apply(PROBED).await.unwrap();
    wait_phase(&client, "slow", "Running").await;
    assert_eq!(
        ready_condition(&pod(&client, "slow").await)["status"],
        "False",
        "not ready before the probe passes"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pod(&client, "slow").await;
        if ready_condition(&p)["status"] == "True" {
            assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the readiness probe never passed: {}",
            p["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The job fails once, is restarted after the back-off (10 s), then succeeds.
    let done = wait_phase_within(&client, "flaky", "Succeeded", Duration::from_secs(40)).await;
    assert_eq!(done["status"]["containerStatuses"][0]["restartCount"], 1);
    let logs = client
        .request(Method::GET, "/logs/default/flaky", None, "text/plain")
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&logs);
    assert!(
        logs.contains("first run fails") && logs.contains("second run"),
        "{logs}"
    );
}

const PORTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: exposed, namespace: default}
spec:
  containers:
  - name: server
    image: localhost/busybox
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/bin"]
    ports: [{containerPort: 8080, hostPort: 18431}]
---
apiVersion: v1
kind: Pod
metadata: {name: clash, namespace: default}
spec:
  containers:
  - name: server
    image: localhost/busybox
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/bin"]
    ports: [{containerPort: 8080, hostPort: 18431}]
"#;

/// GET through the host port; the response body.
async fn host_get(port: u16, path: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line = response.split(|b| *b == b'\n').next()?;
    String::from_utf8_lossy(status_line)
        .contains(" 200 ")
        .then(|| response[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_reach_the_pod_and_a_clash_is_refused() {
    let (_dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    client.apply(PORTS).await.unwrap();
    wait_phase(&client, "exposed", "Running").await;
    let expected = std::fs::read("/bin/busybox").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(body) = host_get(18431, "/busybox").await {
            break body;
        }
        assert!(Instant::now() < deadline, "the host port never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        body.len(),
        expected.len(),
        "the whole file came through the relay"
    );
    assert!(body == expected);
    let failed = wait_phase(&client, "clash", "Failed").await;
    assert!(
        failed["status"]["message"]
            .as_str()
            .unwrap()
            .contains("hostPort 18431"),
        "{}",
        failed["status"]
    );
    assert_eq!(failed["status"]["reason"], "PortConflict");
}

/// A local storage config under `dir` and a policy selecting `app: APP` with `trigger` (the
/// body of `triggerConfig`), followed by `pod`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_snapshot_restores_a_new_pod_and_a_changed_pod_starts_cold() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    // 16 MiB of random state in memory (gVisor's /tmp), so that deduplication has something
    // to find.
    let counter_pod = COUNTER_POD.replace(
        "i=0;",
        "busybox head -c 16777216 /dev/urandom > /tmp/state; i=0;",
    );
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual, postCheckpoint: resume",
        &counter_pod.replace("NAME", "origin"),
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = count(&client, "origin").await;
    assert!(before > 0);

    client.apply("apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotManualTrigger\nmetadata: {name: now, namespace: default}\nspec: {targetPod: origin}\n").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let snapshot = loop {
        let trigger = client
            .json(
                Method::GET,
                "/objects/PodSnapshotManualTrigger/default/now",
                None,
            )
            .await
            .unwrap();
        let reason = trigger["status"]["conditions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if reason == "Complete" {
            break trigger["status"]["snapshotCreated"]["name"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert_ne!(reason, "Failed", "{}", trigger["status"]);
        assert!(Instant::now() < deadline, "the trigger never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = client
        .json(
            Method::GET,
            &format!("/objects/PodSnapshot/default/{snapshot}"),
            None,
        )
        .await
        .unwrap();
    let ready = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "AllSnapshotsAvailable");
    assert_eq!(
        stored["metadata"]["annotations"]["podsnap.dev/origin-pod"],
        "origin"
    );
    // postCheckpoint: resume — the origin goes on, not restarted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let origin = pod(&client, "origin").await;
    assert_eq!(
        origin["status"]["containerStatuses"][0]["restartCount"], 0,
        "{}",
        origin["status"]
    );
    assert!(count(&client, "origin").await > before);

    // A new Pod with the same spec is restored: its counter goes on from the snapshot.
    client
        .apply(&counter_pod.replace("NAME", "replica"))
        .await
        .unwrap();
    let replica = wait_phase(&client, "replica", "Running").await;
    let restored = replica["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodRestored")
        .cloned();
    let restored = restored.unwrap_or_else(|| panic!("not restored: {}", replica["status"]));
    assert!(restored["message"].as_str().unwrap().contains(&snapshot));
    assert!(
        count(&client, "replica").await >= before,
        "the replica's counter did not start over"
    );

    // A second replica's image comes from the node's cache of assembled images.
    client
        .apply(&counter_pod.replace("NAME", "replica2"))
        .await
        .unwrap();
    let replica2 = wait_phase(&client, "replica2", "Running").await;
    assert!(
        condition_of(&replica2, "PodRestored")["message"]
            .as_str()
            .is_some_and(|m| m.contains(&snapshot)),
        "{}",
        replica2["status"]
    );
    assert!(count(&client, "replica2").await >= before);

    // A second snapshot of the unchanged workload stores few new bytes: the state is stored
    // decompressed, in content-defined chunks.
    let second = run_trigger(&client, "again", "origin").await;
    let second = second["status"]["snapshotCreated"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = client
        .json(
            Method::GET,
            &format!("/objects/PodSnapshot/default/{second}"),
            None,
        )
        .await
        .unwrap();
    let size = second["status"]["storageStatus"]["sizeBytes"]
        .as_u64()
        .unwrap();
    let uploaded = second["status"]["storageStatus"]["uploadedBytes"]
        .as_u64()
        .unwrap();
    eprintln!("second snapshot: {uploaded} of {size} bytes new");
    // Stored compressed, the state would be all new (its random half does not compress);
    // the fixed cost is the sandbox's kernel state, ~2-3 MiB whatever the Pod's size.
    assert!(
        uploaded * 2 < size,
        "the second snapshot stored {uploaded} new bytes of {size}"
    );

    // A Pod whose distilled spec differs starts cold, and the event says why.
    let changed = counter_pod
        .replace("NAME", "changed")
        .replace("sleep 0.1", "sleep 0.2");
    apply_expecting_cold_start(&client, &changed, "changed", "HashMismatch").await;

    // The agent's metrics count what happened.
    let metrics = agent_metrics(&client).await;
    for line in [
        "podsnap_checkpoints_total{outcome=\"success\"} 2",
        "podsnap_restores_total{outcome=\"success\"} 2",
        "podsnap_restore_images_total{outcome=\"assembled\"} 1",
        "podsnap_restore_images_total{outcome=\"cached\"} 1",
        "podsnap_cold_starts_total{outcome=\"HashMismatch\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
    assert!(
        metrics.contains("podsnap_checkpoint_duration_seconds_count 2"),
        "{metrics}"
    );

    // Deleting the PodSnapshot deletes its data, then the object.
    let manifest = dir
        .path()
        .join(format!("snapshots/snapshots/{snapshot}/manifest.json"));
    assert!(manifest.exists());
    client
        .json(
            Method::DELETE,
            &format!("/objects/PodSnapshot/default/{snapshot}"),
            None,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .json(
            Method::GET,
            &format!("/objects/PodSnapshot/default/{snapshot}"),
            None,
        )
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the PodSnapshot was never removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!manifest.exists(), "the snapshot's data is gone");
}

const WORKLOAD_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, labels: {app: warm}}
spec:
  containers:
  - name: app
    image: localhost/busybox
    command:
    - /bin/sh
    - -c
    - >-
      echo warming; rm -f /podsnap/result; echo 1 > /podsnap/trigger;
      while true; do r=$(cat /podsnap/result 2>/dev/null);
      case "$r" in resume|restore|error) break;; esac; sleep 0.1; done;
      echo "outcome=$r"; echo "$r" > /tmp/outcome.new;
      mv /tmp/outcome.new /tmp/outcome; exec sleep 1000
"#;

async fn outcome(client: &Client, pod: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = client
            .json(
                Method::POST,
                &format!("/exec/default/{pod}"),
                Some(&json!({"command": ["/bin/cat", "/tmp/outcome"]})),
            )
            .await;
        // The file is renamed into place, but an empty read must never count as an answer.
        if let Ok(out) = out
            && out["exitCode"] == 0
            && let Some(answer) = out["stdout"].as_str().map(str::trim)
            && !answer.is_empty()
        {
            return answer.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{pod} never learned the outcome of its trigger"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_trigger_snapshots_and_tells_original_and_copy_apart() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "warm",
        "type: workload",
        &WORKLOAD_POD.replace("NAME", "first"),
    );
    client.apply(&setup).await.unwrap();
    assert_eq!(outcome(&client, "first").await, "resume");
    let snapshots = client
        .json(Method::GET, "/objects/PodSnapshot?namespace=default", None)
        .await
        .unwrap();
    let items = snapshots["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let snapshot = items[0]["metadata"]["name"].as_str().unwrap().to_owned();
    client
        .apply(&WORKLOAD_POD.replace("NAME", "copy"))
        .await
        .unwrap();
    assert_eq!(outcome(&client, "copy").await, "restore");
    let copy = pod(&client, "copy").await;
    let restored = copy["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodRestored")
        .cloned()
        .unwrap();
    assert!(restored["message"].as_str().unwrap().contains(&snapshot));
    let logs = String::from_utf8_lossy(
        &client
            .request(Method::GET, "/logs/default/copy", None, "text/plain")
            .await
            .unwrap(),
    )
    .into_owned();
    assert!(
        !logs.contains("warming"),
        "the copy did not run its start-up again: {logs}"
    );
    let hostname = client
        .json(
            Method::POST,
            "/exec/default/copy",
            Some(&json!({"command": ["/.podsnap/busybox", "hostname"]})),
        )
        .await
        .unwrap();
    assert_eq!(
        hostname["stdout"].as_str().unwrap().trim(),
        "copy",
        "the restored Pod has its own host name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_checkpoint_stop_completes_the_pod() {
    let (dir, _cleanup, _agent, client, engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual, postCheckpoint: stop",
        &COUNTER_POD.replace("NAME", "once"),
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "once", "Running").await;
    // The trigger completes once the snapshot is stored; the Pod completed at its checkpoint.
    let trigger = run_trigger(&client, "stop-now", "once").await;
    assert_eq!(
        trigger["status"]["conditions"][0]["reason"], "Complete",
        "{}",
        trigger["status"]
    );
    let done = wait_phase_within(&client, "once", "Succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["status"]["containerStatuses"][0]["restartCount"], 0);
    // The sandbox is gone and stays gone (no restart although the policy is Always).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running: Vec<String> = engine.list().await.unwrap();
    assert!(running.iter().all(|id| !id.contains("once")), "{running:?}");
    assert_eq!(pod(&client, "once").await["status"]["phase"], "Succeeded");
}

const ROOTFS_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, labels: {app: files}}
spec:
  containers:
  - name: app
    image: localhost/busybox
    command:
    - /bin/sh
    - -c
    - >-
      if [ -e /warm ]; then echo "reused $(cat /warm)"; else echo warming;
      echo built-by-NAME > /warm; fi; exec sleep 1000
    env: [{name: FLAVOUR, value: FLAVOUR_VALUE}]
  - name: side
    image: localhost/busybox
    command: ["/bin/sleep", "1000"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rootfs_only_snapshot_carries_file_changes_to_a_pod_that_starts_fresh() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "files",
        "type: manual",
        &ROOTFS_POD
            .replace("NAME", "origin")
            .replace("FLAVOUR_VALUE", "a"),
    )
    .replace(
        "  triggerConfig:",
        "  snapshotScope: rootfs-only\n  triggerConfig:",
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;
    // Two containers and a pause container: the whole Pod could not be checkpointed here, its
    // root file systems can.
    let trigger = run_trigger(&client, "files-now", "origin").await;
    assert_eq!(
        condition_of(&trigger, "Triggered")["reason"],
        "Complete",
        "{trigger}"
    );
    let snapshot = trigger["status"]["snapshotCreated"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = client
        .json(
            Method::GET,
            &format!("/objects/PodSnapshot/default/{snapshot}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        stored["status"]["restoreRequirements"]["scope"],
        "rootfs-only"
    );
    // postCheckpoint resume: the origin goes on.
    assert_eq!(pod(&client, "origin").await["status"]["phase"], "Running");

    // A Pod with another spec (the hash check is skipped for rootfs-only snapshots) starts
    // from its entry point with the origin's files in place.
    client
        .apply(
            &ROOTFS_POD
                .replace("NAME", "copy")
                .replace("FLAVOUR_VALUE", "b"),
        )
        .await
        .unwrap();
    let copy = wait_phase(&client, "copy", "Running").await;
    let restored = condition_of(&copy, "PodRestored");
    assert!(
        restored["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&snapshot),
        "{}",
        copy["status"]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = client
            .request(
                Method::GET,
                "/logs/default/copy?container=app",
                None,
                "text/plain",
            )
            .await
            .unwrap();
        let logs = String::from_utf8_lossy(&logs).into_owned();
        if logs.contains("reused built-by-origin") {
            break;
        }
        assert!(
            !logs.contains("warming") && Instant::now() < deadline,
            "the copy did not find the origin's files: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn grouped_pod(name: &str, tier: &str, pin: Option<&str>) -> String {
    let annotations = pin
        .map(|p| format!("podsnap.dev/ps-name: {p}"))
        .unwrap_or_default();
    COUNTER_POD.replace("NAME", name).replace(
        "labels: {app: counter}}",
        &format!("labels: {{app: counter, tier: {tier}}}, annotations: {{{annotations}}}}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_keep_their_newest_snapshot_and_pins_choose_or_refuse() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual",
        &grouped_pod("gold-origin", "gold", None),
    )
    .replace(
        "  triggerConfig:",
        "  snapshotGroupingRules:\n    groupByLabelValue:\n      labels: [tier]\n      groupRetentionPolicy: {maxSnapshotCountPerGroup: 1}\n  triggerConfig:",
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "gold-origin", "Running").await;
    let mut taken = Vec::new();
    for trigger in ["first", "second"] {
        let t = run_trigger(&client, trigger, "gold-origin").await;
        assert_eq!(condition_of(&t, "Triggered")["reason"], "Complete", "{t}");
        taken.push(
            t["status"]["snapshotCreated"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The group keeps one snapshot: the older one and its data go.
    let manifest = |name: &str| {
        dir.path()
            .join(format!("snapshots/snapshots/{name}/manifest.json"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while manifest(&taken[0]).exists() {
        assert!(
            Instant::now() < deadline,
            "the older snapshot was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = client
        .json(Method::GET, "/objects/PodSnapshot?namespace=default", None)
        .await
        .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [taken[1].as_str()]);
    assert_eq!(list["items"][0]["metadata"]["labels"]["tier"], "gold");
    assert!(manifest(&taken[1]).exists());

    // Another group has no snapshot: cold, with the reason.
    let silver = grouped_pod("silver", "silver", None);
    apply_expecting_cold_start(&client, &silver, "silver", "NoSnapshot").await;

    // A pin to the pruned snapshot never falls back to the one that exists.
    let gone = grouped_pod("pinned-gone", "gold", Some(&taken[0]));
    apply_expecting_cold_start(&client, &gone, "pinned-gone", "PinnedSnapshotUnusable").await;
    // A pin to the existing one restores from it.
    client
        .apply(&grouped_pod("pinned", "gold", Some(&taken[1])))
        .await
        .unwrap();
    let pinned = wait_phase(&client, "pinned", "Running").await;
    let restored = condition_of(&pinned, "PodRestored");
    assert!(
        restored["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&taken[1]),
        "{}",
        pinned["status"]
    );
}

/// A `runsc` in front of the real one that fails (file `fail` in `control`) or hangs (file
/// `hang`) on `create`.
fn faulty_runsc(dir: &std::path::Path, control: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("faulty-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = ["/usr/bin/runsc", "/usr/sbin/runsc", "/usr/local/bin/runsc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("runsc is installed by scripts/setup.sh");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = create ]; then\n    if [ -e {c}/fail ]; then echo 'runsc: create exploded (injected by the test)' >&2; exit 1; fi\n    if [ -e {c}/hang ]; then exec sleep 60; fi\n  fi\ndone\nexec {real} \"$@\"\n",
        c = control.display()
    );
    let path = bin.join("runsc");
    std::fs::write(&path, script).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    bin
}

fn network_namespaces(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("network/netns"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_failures_and_an_agent_killed_mid_start_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    busybox_image(dir.path());
    let control = dir.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    let bin = faulty_runsc(dir.path(), &control);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let (agent, client, engine) = start_agent_with_env(dir.path(), &[("PATH", &path)]).await;

    // Malformed YAML is refused with its line.
    let err = client
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");

    // runsc failing: the Pod fails with runsc's own words; no sandbox, no network left.
    std::fs::write(control.join("fail"), "").unwrap();
    client
        .apply(&COUNTER_POD.replace("NAME", "doomed"))
        .await
        .unwrap();
    let failed = wait_phase(&client, "doomed", "Failed").await;
    assert!(
        failed["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("create exploded"),
        "{}",
        failed["status"]
    );
    assert!(
        event_reasons(&client, "doomed")
            .await
            .contains(&"FailedCreate".to_owned())
    );
    assert!(sandboxes(&engine).await.is_empty());
    assert!(network_namespaces(dir.path()).is_empty());

    // The agent killed while runsc creates a Pod's sandbox: the next agent removes the half
    // made sandbox and network, and runs the Pod.
    std::fs::remove_file(control.join("fail")).unwrap();
    std::fs::write(control.join("hang"), "").unwrap();
    client
        .apply(&COUNTER_POD.replace("NAME", "interrupted"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while network_namespaces(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "the Pod's start never began");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(agent);
    std::fs::remove_file(control.join("hang")).unwrap();
    let (_agent, client, engine) = start_agent_with_env(dir.path(), &[("PATH", &path)]).await;
    wait_phase(&client, "interrupted", "Running").await;
    // A failed Pod stays failed across the restart, as Kubernetes' terminal phases do.
    assert_eq!(pod(&client, "doomed").await["status"]["phase"], "Failed");
    assert!(count(&client, "interrupted").await > 0);
    assert_eq!(
        network_namespaces(dir.path()).len(),
        1,
        "only the running Pod's network is left: {:?}, sandboxes {:?}\n{}",
        network_namespaces(dir.path()),
        sandboxes(&engine).await,
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    assert_eq!(
        sandboxes(&engine).await.len(),
        1,
        "one sandbox: the running Pod's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waiting_out_its_grace_period_holds_up_no_other_pod() {
    let (dir, _cleanup, _agent, client, engine) = busybox_agent().await;
    // A Pod that ignores SIGTERM: its deletion takes the whole grace period.
    let stubborn = COUNTER_POD
        .replace("NAME", "stubborn")
        .replace("i=0;", "trap '' TERM; i=0;")
        .replace("spec:\n", "spec:\n  terminationGracePeriodSeconds: 8\n");
    client.apply(&stubborn).await.unwrap();
    wait_phase(&client, "stubborn", "Running").await;
    client
        .json(Method::DELETE, "/objects/Pod/default/stubborn", None)
        .await
        .unwrap();
    let deleted = Instant::now();
    client
        .apply(&COUNTER_POD.replace("NAME", "other"))
        .await
        .unwrap();
    wait_phase_within(&client, "other", "Running", Duration::from_secs(6)).await;
    assert!(deleted.elapsed() < Duration::from_secs(8));
    assert_eq!(
        sandboxes(&engine).await.len(),
        2,
        "the deleted Pod is still in its grace period"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandboxes(&engine).await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the deleted Pod was never stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        deleted.elapsed() >= Duration::from_secs(7),
        "SIGTERM was ignored, so the grace period ran out before the kill ({:?})\n{}",
        deleted.elapsed(),
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
}
