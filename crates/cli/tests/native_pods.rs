//! End to end: `podsnap serve` runs a Pod with `runtimeClassName: native` on the native engine
//! (namespaces, overlay root) next to the default gvisor engine: Running, exec, logs, delete
//! leaving nothing; unknown runtime classes fail clearly; a native Pod is snapshotted with the
//! native engine's own checkpoint and a new replica is restored from it, its state intact.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::*;
use hyper::Method;
use podsnap_native::engine::{NativeCleanup, list_containers};
use serde_json::json;

const NATIVE_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: nat, namespace: default, labels: {app: nat}}
spec:
  runtimeClassName: native
  containers:
  - name: app
    image: localhost/busybox
    command: ["/bin/sh", "-c", "echo started natively; echo hi > /tmp/file; exec sleep 1000"]
"#;

#[tokio::test]
async fn a_native_pod_runs_execs_logs_and_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    // Declared before the agent, so dropped after it: the killed agent's native sandboxes go.
    let _native = NativeCleanup(dir.path().join("native"));
    busybox_image(dir.path());
    let (_agent, client, engine) = start_agent(dir.path()).await;

    client
        .apply(&snapshot_setup(
            dir.path(),
            "nat",
            "type: manual",
            NATIVE_POD,
        ))
        .await
        .unwrap();
    wait_phase(&client, "nat", "Running").await;
    let native_dir = dir.path().join("native");
    let ids = list_containers(&native_dir);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        !sandboxes(&engine).await.contains(&ids[0]),
        "the native Pod does not run under runsc"
    );

    let exec = |command: serde_json::Value| {
        let client = client.clone();
        async move {
            client
                .json(
                    Method::POST,
                    "/exec/default/nat",
                    Some(&json!({ "command": command })),
                )
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = exec(json!(["/bin/cat", "/tmp/file"])).await;
        if out["exitCode"] == 0 {
            assert_eq!(out["stdout"], "hi\n");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = exec(json!(["/bin/sh", "-c", "echo $(cat /proc/1/cmdline)"])).await;
    assert!(
        out["stdout"].as_str().unwrap().contains("sleep"),
        "pid 1 of the Pod is its process: {out}"
    );
    let logs = client
        .request(Method::GET, "/logs/default/nat", None, "text/plain")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs).contains("started natively"),
        "{}",
        String::from_utf8_lossy(&logs)
    );

    assert_eq!(pod(&client, "nat").await["status"]["phase"], "Running");

    client
        .request(
            Method::DELETE,
            "/objects/Pod/default/nat",
            None,
            "text/plain",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pods(&client).await.is_empty() || !list_containers(&native_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the native Pod was not removed: {:?}",
            list_containers(&native_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(native_dir.join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn unknown_runtime_classes_fail_with_the_choices() {
    let (_dir, _cleanup, _agent, client, _engine) = busybox_agent().await;
    client
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: odd}\nspec:\n  runtimeClassName: runc\n  containers: [{name: c, image: localhost/busybox, command: [/bin/sleep, '100']}]\n")
        .await
        .unwrap();
    let failed = wait_phase(&client, "odd", "Failed").await;
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("runtimeClassName `runc` is unknown: use gvisor or native"),
        "{}",
        failed["status"]
    );
}

/// A counter that holds 96 MB in a shell variable and wakes every 10 ms: a lazy restore's
/// background fill (in address order, the shell's stack last) is still going when the loop
/// first runs again, so it faults and a working set is recorded.
const NATIVE_COUNTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, labels: {app: counter}}
spec:
  runtimeClassName: native
  containers:
  - name: counter
    image: localhost/busybox
    command: ["/bin/sh", "-c", "x=$(head -c 96000000 /dev/zero | tr '\\0' m); echo kept > /tmp/kept; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.01; done"]
"#;

#[tokio::test]
async fn a_native_pod_is_snapshotted_and_a_replica_restored_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    let _native = NativeCleanup(dir.path().join("native"));
    busybox_image(dir.path());
    let (_agent, client, _engine) = start_agent(dir.path()).await;
    start_origin(dir.path(), &client).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = count(&client, "origin").await;
    assert!(before > 0);

    let trigger = run_trigger(&client, "now", "origin").await;
    assert_eq!(
        condition_of(&trigger, "Triggered")["reason"],
        "Complete",
        "{trigger}"
    );
    let snapshot = trigger["status"]["snapshotCreated"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    // postCheckpoint: resume — the origin goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(count(&client, "origin").await > before);

    apply_replica(&client, "replica").await;
    let replica = wait_phase(&client, "replica", "Running").await;
    let restored = condition_of(&replica, "PodRestored");
    assert!(
        restored["message"]
            .as_str()
            .is_some_and(|m| m.contains(&snapshot)),
        "not restored: {} {:?}",
        replica["status"],
        client
            .json(Method::GET, "/events?namespace=default&name=replica", None)
            .await
            .unwrap()
    );
    // Restored lazily: once all its memory is in, the Pod says so with the figures.
    let resident = wait_resident(&client, "replica").await;
    assert_eq!(resident["reason"], "Complete", "{resident}");
    assert!(
        resident["message"]
            .as_str()
            .is_some_and(|m| m.contains("all memory in") && m.contains("faults")),
        "{resident}"
    );
    // Its counter goes on from the snapshot; its file system has the origin's changes.
    assert!(count(&client, "replica").await >= before);
    let out = client
        .json(
            Method::POST,
            "/exec/default/replica",
            Some(&json!({"command": ["/bin/cat", "/tmp/kept"]})),
        )
        .await
        .unwrap();
    assert_eq!(out["stdout"], "kept\n", "{out}");
    assert_eq!(
        list_containers(&dir.path().join("native")).len(),
        2,
        "origin and replica run natively"
    );
    let metrics = agent_metrics(&client).await;
    assert!(
        metrics.contains("podsnap_lazy_restores_total{outcome=\"complete\"} 1"),
        "{metrics}"
    );
    // Not on this node yet: restored while its page files streamed in from the repository.
    assert!(
        metrics.contains("podsnap_restore_images_total{outcome=\"streamed\"} 1"),
        "{metrics}"
    );

    // The first lazy restore recorded what the replica touched first with the snapshot...
    let record = wait_for_working_set(&dir.path().join("snapshots"), &snapshot).await;
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(stored["magic"], "podsnap-working-set", "{stored}");
    assert!(
        stored["files"][0]["offsets"]
            .as_array()
            .is_some_and(|o| !o.is_empty()),
        "{stored}"
    );
    // ...and the next restore brings that in first.
    apply_replica(&client, "second").await;
    wait_phase(&client, "second", "Running").await;
    wait_resident(&client, "second").await;
    assert!(count(&client, "second").await >= before);
    let metrics = agent_metrics(&client).await;
    let prefetched: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("podsnap_lazy_restore_prefetched_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no prefetch metric: {metrics}"));
    assert!(prefetched > 0.0, "{metrics}");
}

/// Applies a local repository, a policy with manual triggers that resume the Pod, and the
/// native counter Pod `origin`; waits until it runs.
async fn start_origin(dir: &std::path::Path, client: &Client) {
    client
        .apply(&snapshot_setup(
            dir,
            "counter",
            "type: manual, postCheckpoint: resume",
            &NATIVE_COUNTER.replace("NAME", "origin"),
        ))
        .await
        .unwrap();
    wait_phase(client, "origin", "Running").await;
}

/// Applies the native counter Pod `name` (a replica of `origin`'s snapshot, by its labels).
async fn apply_replica(client: &Client, name: &str) {
    client
        .apply(&NATIVE_COUNTER.replace("NAME", name))
        .await
        .unwrap();
}

/// Waits for the working set of `snapshot` to be stored in the repository under `repo`.
async fn wait_for_working_set(repo: &std::path::Path, snapshot: &str) -> std::path::PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = files_under(repo).into_iter().find(|p| {
            p.ends_with("working-set.json") && p.parent().is_some_and(|d| d.ends_with(snapshot))
        });
        if let Some(path) = found {
            return path;
        }
        assert!(
            Instant::now() < deadline,
            "no working set was recorded for {snapshot}; the agent said: {}",
            std::fs::read_to_string(repo.with_file_name("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until Pod `name`'s memory is all in (its `PodMemoryResident` condition True).
async fn wait_resident(client: &Client, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pod(client, name).await;
        let resident = condition_of(&p, "PodMemoryResident");
        if resident["status"] == "True" {
            return resident;
        }
        assert_ne!(resident["reason"], "Failed", "{p}");
        assert!(Instant::now() < deadline, "the memory never came in: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The file of a stored chunk of snapshot `snapshot`'s largest page stream in the local
/// repository under `repo`: the one at `share` (0.0: the first, 1.0: the last) of the
/// stream's stored chunks.
fn page_chunk(repo: &std::path::Path, snapshot: &str, share: f64) -> std::path::PathBuf {
    let manifest = files_under(repo)
        .into_iter()
        .find(|p| p.ends_with("manifest.json") && p.parent().is_some_and(|d| d.ends_with(snapshot)))
        .expect("the snapshot's manifest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let stream = manifest["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("native/processes/pages-"))
        })
        .max_by_key(|s| s["size"].as_u64())
        .expect("a page stream");
    let ids: Vec<&str> = stream["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert!(!ids.is_empty(), "no stored chunk: {stream}");
    let id = ids[((ids.len() - 1) as f64 * share) as usize].to_owned();
    files_under(repo)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|f| f == id.as_str()))
        .expect("the chunk's file")
}

/// Applies the replica `name` and waits until its restore fails; the reason, which names the
/// page stream that could not be read. Where the chunk is first needed decides when: while
/// the Pod runs (it is killed; its `PodMemoryResident` condition says why) or before (it
/// starts cold; the `RestoreFailed` event says why) — both are checked for what follows.
async fn replica_fails(client: &Client, name: &str) -> String {
    apply_replica(client, name).await;
    let message = wait_restore_failure(client, name, Duration::from_secs(30)).await;
    assert!(message.contains("native/processes/pages-"), "{message}");
    if message.starts_with("its memory could not be brought in") {
        // Failed while it ran: its container was killed (not left blocked), and the restart
        // policy takes over.
        // (The status and the back-off event are written one after the other.)
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = pod(client, name).await;
            let killed =
                p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137;
            let reasons = event_reasons(client, name).await;
            if killed && reasons.iter().any(|r| r == "BackOff") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not killed and backed off: {p} {reasons:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        // Failed before it ran: it starts cold.
        assert!(message.contains("starting cold"), "{message}");
        wait_phase(client, name, "Running").await;
    }
    message
}

/// Empties the agent's chunk cache, as on a node that has not read the snapshot before (the
/// chunks an earlier replica's restore brought in would be served from it), once the
/// fetches still running have ended.
async fn forget_chunks(state_dir: &std::path::Path) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(state_dir.join("chunk-cache"));
}

/// Waits until Pod `name`'s restore failed cleanly; the reason: its `PodMemoryResident`
/// condition's message when it failed while running (its memory coming in), or the
/// `RestoreFailed` event's when it failed before (and the Pod started cold).
async fn wait_restore_failure(client: &Client, name: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let p = pod(client, name).await;
        let resident = condition_of(&p, "PodMemoryResident");
        if resident["reason"] == "Failed" {
            return resident["message"].as_str().unwrap_or_default().to_owned();
        }
        assert_ne!(resident["status"], "True", "{p}");
        let events = events(client, name).await;
        let failed = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["reason"] == "RestoreFailed");
        if let Some(event) = failed {
            return event["message"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the restore did not fail within {limit:?}: {p} {events}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fault injection on the repository a restored Pod streams its memory from: a corrupt chunk,
/// a missing one and one whose read never ends each fail the restore cleanly with the reason
/// naming the chunk (the latter after the agent's `--lazy-read-timeout`): a running Pod is
/// killed, not left blocked, and its `PodMemoryResident` condition says why; one not yet
/// running starts cold with a `RestoreFailed` event. None of them harms the snapshot: once
/// the store is mended, the next replica restores completely.
#[tokio::test]
async fn a_corrupt_missing_or_stalled_chunk_fails_a_lazily_restored_pod_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = StateCleanup(dir.path().to_path_buf());
    let _native = NativeCleanup(dir.path().join("native"));
    busybox_image(dir.path());
    let (_agent, client, _engine) =
        start_agent_with(dir.path(), &[], &["--lazy-read-timeout", "2"]).await;
    start_origin(dir.path(), &client).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let trigger = run_trigger(&client, "now", "origin").await;
    let snapshot = trigger["status"]["snapshotCreated"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot: {trigger}"))
        .to_owned();
    let repo = dir.path().join("snapshots");
    // A chunk in the middle of the shell's 96 MB (memory that comes in after it runs), and
    // the last one (which holds pages put in place before it runs).
    let (middle, last) = (
        page_chunk(&repo, &snapshot, 0.5),
        page_chunk(&repo, &snapshot, 1.0),
    );
    assert_ne!(middle, last);

    // A corrupt chunk: the restore fails as the memory reaches the chunk, naming it.
    let good = std::fs::read(&middle).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x55;
    std::fs::write(&middle, &bad).unwrap();
    let message = replica_fails(&client, "corrupt").await;
    assert!(
        message.contains("could not be fetched from the repository")
            && message.contains("is corrupt"),
        "{message}"
    );
    std::fs::write(&middle, &good).unwrap();

    // A missing chunk (a store that fails to deliver it): the same, naming it.
    let quarter = page_chunk(&repo, &snapshot, 0.25);
    let kept = std::fs::read(&quarter).unwrap();
    forget_chunks(dir.path()).await;
    std::fs::remove_file(&quarter).unwrap();
    let message = replica_fails(&client, "missing").await;
    assert!(
        message.contains("could not be fetched from the repository"),
        "{message}"
    );
    std::fs::write(&quarter, &kept).unwrap();

    // A chunk whose read never ends (a FIFO nobody writes): the restore waits for at most the
    // read timeout where it needs that memory, then fails with that reason.
    let chunk = last;
    let good = std::fs::read(&chunk).unwrap();
    forget_chunks(dir.path()).await;
    std::fs::remove_file(&chunk).unwrap();
    nix::unistd::mkfifo(&chunk, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let started = Instant::now();
    let message = replica_fails(&client, "stalled").await;
    assert!(
        message.contains("did not arrive from the repository within 2s"),
        "{message}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Let the stuck read end, and mend the store.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&chunk),
    );
    std::fs::remove_file(&chunk).unwrap();
    std::fs::write(&chunk, &good).unwrap();

    // The snapshot itself is unharmed: a new replica restores and all its memory comes in.
    apply_replica(&client, "mended").await;
    wait_phase(&client, "mended", "Running").await;
    wait_resident(&client, "mended").await;
    let metrics = agent_metrics(&client).await;
    assert!(
        metrics.contains("podsnap_lazy_restores_total{outcome=\"complete\"} 1"),
        "{metrics}"
    );
}
