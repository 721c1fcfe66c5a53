//! Snapshots through `podsnap serve` when things go wrong: storage that cannot be reached, a
//! corrupt snapshot, a Pod deleted while it is checkpointed (it is stopped once the checkpoint
//! ends), the agent killed during an upload, and encrypted storage whose key lives in a Secret.
//! Nothing half-visible may remain, Pods go on or start cold with the reason recorded, and no
//! sandbox leaks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::Method;
use serde_json::Value;

async fn snapshots(client: &Client) -> Vec<Value> {
    client
        .json(Method::GET, "/objects/PodSnapshot?namespace=default", None)
        .await
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn restart_count(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_storage_fails_the_snapshot_after_retries_and_the_pod_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    busybox_image(dir.path());
    // Nothing listens on the endpoint; credentials keep the S3 client from asking a metadata
    // service for them.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_agent, client, engine) = start_agent_with_env(
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual",
        &COUNTER_POD.replace("NAME", "origin"),
    )
    .replace(
        &format!(
            "local: {{directory: {}}}",
            dir.path().join("snapshots").display()
        ),
        &format!("s3: {{bucket: gone, endpoint: \"http://127.0.0.1:{closed_port}\"}}"),
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;
    let before = count(&client, "origin").await;

    let trigger = run_trigger(&client, "to-nowhere", "origin").await;
    let failed = condition_of(&trigger, "Triggered");
    assert_eq!(failed["reason"], "Failed", "{trigger}");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains("uploading the snapshot failed") && message.contains("retries"),
        "the message says what failed: {message}"
    );

    let items = snapshots(&client).await;
    assert_eq!(items.len(), 1);
    let snapshot = &items[0];
    assert_eq!(condition_of(snapshot, "Ready")["reason"], "Failed");
    assert_eq!(
        snapshot["status"]["observedCheckpointRetryCount"],
        podsnap_agent::snapshots::CHECKPOINT_RETRIES
    );
    let name = snapshot["metadata"]["name"].as_str().unwrap();
    assert!(
        event_reasons(&client, name)
            .await
            .contains(&"CheckpointRetry".to_owned())
    );

    // The Pod went on (postCheckpoint resume), not restarted, and nothing was left behind.
    let origin = pod(&client, "origin").await;
    assert_eq!(origin["status"]["phase"], "Running");
    assert_eq!(restart_count(&origin), 0, "{}", origin["status"]);
    assert!(count(&client, "origin").await > before);
    assert!(files_under(&dir.path().join("checkpoints")).is_empty());
    assert_eq!(sandboxes(&engine).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_refused_and_the_pod_starts_cold_with_the_reason() {
    let (dir, _cleanup, _agent, client, engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual",
        &COUNTER_POD.replace("NAME", "origin"),
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;
    let trigger = run_trigger(&client, "now", "origin").await;
    assert_eq!(
        condition_of(&trigger, "Triggered")["reason"],
        "Complete",
        "{trigger}"
    );

    // Every stored chunk, and every chunk the node cached, loses a byte in the middle.
    let mut corrupted = 0;
    for root in [
        dir.path().join("snapshots/chunks"),
        dir.path().join("chunk-cache"),
    ] {
        for file in files_under(&root) {
            let mut bytes = std::fs::read(&file).unwrap();
            if bytes.len() > 64 {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(&file, bytes).unwrap();
                corrupted += 1;
            }
        }
    }
    assert!(corrupted > 0);

    client
        .apply(&COUNTER_POD.replace("NAME", "copy"))
        .await
        .unwrap();
    let copy = wait_phase(&client, "copy", "Running").await;
    assert!(condition_of(&copy, "PodRestored").is_null(), "{copy}");
    let events = client
        .json(Method::GET, "/events?namespace=default&name=copy", None)
        .await
        .unwrap();
    let failure = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "RestoreFailed")
        .unwrap_or_else(|| panic!("no RestoreFailed event: {events}"))
        .clone();
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("starting cold") && message.contains("chunk"),
        "the event names the damaged data: {message}"
    );
    assert!(files_under(&dir.path().join("restores")).is_empty());
    assert_eq!(sandboxes(&engine).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_during_its_checkpoint_leaves_nothing_behind() {
    let (dir, _cleanup, _agent, client, engine) = busybox_agent().await;
    // 64 MiB of state in the root file system makes the checkpoint take a moment.
    let pod = COUNTER_POD
        .replace("NAME", "doomed")
        .replace("i=0;", "head -c 67108864 /dev/urandom > /tmp/state; i=0;");
    let setup = snapshot_setup(dir.path(), "counter", "type: manual", &pod);
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "doomed", "Running").await;
    count(&client, "doomed").await;

    let trigger = async { run_trigger(&client, "last-words", "doomed").await };
    let delete = async {
        // Deleted once its checkpoint has begun (the PodSnapshot exists).
        while snapshots(&client).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
            .json(Method::DELETE, "/objects/Pod/default/doomed", None)
            .await
            .unwrap();
    };
    let (trigger, ()) = tokio::join!(trigger, delete);

    // The deletion waits for the checkpoint that had begun: the snapshot is complete.
    assert_eq!(
        condition_of(&trigger, "Triggered")["reason"],
        "Complete",
        "{trigger}"
    );
    let items = snapshots(&client).await;
    assert_eq!(items.len(), 1);
    let name = items[0]["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        condition_of(&items[0], "Ready")["reason"],
        "AllSnapshotsAvailable"
    );
    assert!(
        dir.path()
            .join(format!("snapshots/snapshots/{name}/manifest.json"))
            .exists()
    );
    // The Pod is stopped once its checkpoint ended: no sandbox, no images left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandboxes(&engine).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the deleted Pod's sandbox is still there: {:?}",
            sandboxes(&engine).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(files_under(&dir.path().join("checkpoints")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_an_upload_leaves_no_snapshot_and_recovers() {
    let (dir, _cleanup, agent, client, engine) = busybox_agent().await;
    let pod = COUNTER_POD
        .replace("NAME", "origin")
        .replace("i=0;", "head -c 134217728 /dev/urandom > /tmp/state; i=0;");
    let setup = snapshot_setup(dir.path(), "counter", "type: manual", &pod);
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;
    count(&client, "origin").await;

    client.apply("apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotManualTrigger\nmetadata: {name: interrupted, namespace: default}\nspec: {targetPod: origin}\n").await.unwrap();
    // The upload has begun once the repository holds a write marker.
    let pending = dir.path().join("snapshots/pending");
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_under(&pending).is_empty() {
        assert!(Instant::now() < deadline, "the upload never began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(agent); // SIGKILL

    let (_agent, client, _) = start_agent(dir.path()).await;
    // The snapshot the killed agent was writing is marked failed and never became visible in
    // the repository; the trigger is carried out again and succeeds.
    let trigger = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = client
                .json(
                    Method::GET,
                    "/objects/PodSnapshotManualTrigger/default/interrupted",
                    None,
                )
                .await
                .unwrap();
            if condition_of(&t, "Triggered")["reason"] == "Complete" {
                break t;
            }
            assert!(Instant::now() < deadline, "{}", t["status"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let created = trigger["status"]["snapshotCreated"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let items = snapshots(&client).await;
    assert_eq!(items.len(), 2, "{items:?}");
    for snapshot in &items {
        let name = snapshot["metadata"]["name"].as_str().unwrap();
        let manifest = dir
            .path()
            .join(format!("snapshots/snapshots/{name}/manifest.json"));
        if name == created {
            assert_eq!(
                condition_of(snapshot, "Ready")["reason"],
                "AllSnapshotsAvailable"
            );
            assert!(manifest.exists());
        } else {
            assert_eq!(condition_of(snapshot, "Ready")["reason"], "Failed");
            assert!(!manifest.exists(), "a half-written snapshot is visible");
        }
    }
    let origin = wait_phase(&client, "origin", "Running").await;
    assert_eq!(origin["metadata"]["name"], "origin");
    assert_eq!(sandboxes(&engine).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_storage_reads_its_key_from_a_secret() {
    let (dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    let setup = snapshot_setup(
        dir.path(),
        "counter",
        "type: manual",
        &COUNTER_POD.replace("NAME", "origin"),
    )
    .replace(
        "  snapshotStorageConfig:",
        "  encryption: {secretRef: {name: repo-key, key: key}}\n  snapshotStorageConfig:",
    );
    client.apply(&setup).await.unwrap();
    wait_phase(&client, "origin", "Running").await;

    // Without the Secret the trigger fails and says which Secret is missing.
    let trigger = run_trigger(&client, "no-key", "origin").await;
    let message = condition_of(&trigger, "Triggered")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("Secret default/repo-key"), "{message}");

    let key = "3f".repeat(32);
    client.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: repo-key, namespace: default}}\nstringData: {{key: \"{key}\"}}\n"
        ),
    )
    .await
    .unwrap();
    let trigger = run_trigger(&client, "with-key", "origin").await;
    assert_eq!(
        condition_of(&trigger, "Triggered")["reason"],
        "Complete",
        "{trigger}"
    );
    let config: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("snapshots/podsnap-repo.json")).unwrap(),
    )
    .unwrap();
    assert!(
        config["keyId"].is_string(),
        "the repository is encrypted: {config}"
    );

    client
        .apply(&COUNTER_POD.replace("NAME", "copy"))
        .await
        .unwrap();
    let copy = wait_phase(&client, "copy", "Running").await;
    assert!(!condition_of(&copy, "PodRestored").is_null(), "{copy}");
}
