//! The gvisor engine against the installed runsc (CI installs it and runs tests as root):
//! sandboxes, containers inside them, exec, kill, wait, checkpoint and restore of memory state,
//! and clean failures.

#[path = "../../../tests/support/busybox_root.rs"]
mod busybox_root;
#[path = "../../../tests/support/shell_spec.rs"]
mod shell_spec;

use busybox_root::busybox_root;
use podsnap_engine::gvisor::SandboxCleanup;
use shell_spec::shell_spec as spec;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podsnap_engine::{Engine, EngineError, GvisorConfig, GvisorEngine, Network, Status};

async fn engine(dir: &Path) -> GvisorEngine {
    GvisorEngine::new(GvisorConfig::new(dir.join("state")))
        .await
        .expect("runsc is installed by scripts/setup.sh")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

async fn read_counter(engine: &GvisorEngine, id: &str) -> u64 {
    // The loop truncates the file before it writes it: a read in between sees nothing.
    for _ in 0..50 {
        let out = engine
            .exec(id, &["/bin/cat".into(), "/tmp/counter".into()], &[])
            .await
            .unwrap();
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
        if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse() {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the counter file stayed empty");
}

/// Decodes `from/checkpoint.img` and writes it again, uncompressed, as `to/checkpoint.img`;
/// the length of the state.
fn rebuild_image(from: &Path, to: &Path) -> u64 {
    use podsnap_engine::gvisor_image::{ImageEncoder, StateDecoder};
    std::fs::create_dir_all(to).unwrap();
    let source = std::io::BufReader::new(std::fs::File::open(from.join("checkpoint.img")).unwrap());
    let (header, mut state) = StateDecoder::open(source).unwrap();
    let out = std::io::BufWriter::new(std::fs::File::create(to.join("checkpoint.img")).unwrap());
    let mut encoder = ImageEncoder::new(out, &header).unwrap();
    let len = std::io::copy(&mut state, &mut encoder).unwrap();
    encoder.finish().unwrap();
    len
}

const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_runs_execs_and_dies() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let engine = engine(dir.path()).await;
    let rootfs = busybox_rootfs(dir.path());
    let id = unique("life");
    engine
        .create_sandbox(
            &id,
            &spec(&id, &rootfs, dir.path(), "echo started; exec sleep 1000"),
            &Network::Loopback,
        )
        .await
        .unwrap();
    assert_eq!(engine.state(&id).await.unwrap().status, Status::Running);
    let out = engine
        .exec(&id, &["/bin/hostname".into()], &[])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "test-pod");
    let out = engine
        .exec(&id, &["/bin/sh".into(), "-c".into(), "exit 3".into()], &[])
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert!(engine.list().await.unwrap().contains(&id));
    // The agent waits on every container from its start; the wait reports the kill.
    let waiter = {
        let engine = engine.clone();
        let id = id.clone();
        tokio::spawn(async move { engine.wait(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.kill(&id, 9).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 137);
    engine.delete(&id).await.unwrap();
    assert!(!engine.list().await.unwrap().contains(&id));
    assert!(matches!(
        engine.state(&id).await,
        Err(EngineError::NotFound(_))
    ));
    engine.delete(&id).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join(format!("{id}.log"))).unwrap();
    assert!(log.contains("started"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_their_pods_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let engine = engine(dir.path()).await;
    let rootfs = busybox_rootfs(dir.path());
    let sandbox = unique("pod");
    engine
        .create_sandbox(
            &sandbox,
            &spec(&sandbox, &rootfs, dir.path(), "exec sleep 1000"),
            &Network::Loopback,
        )
        .await
        .unwrap();
    let app = format!("{sandbox}-app");
    engine
        .start_container(
            &sandbox,
            &spec(
                &app,
                &rootfs,
                dir.path(),
                "echo app > /tmp/who; exec sleep 1000",
            ),
        )
        .await
        .unwrap();
    let sidecar = format!("{sandbox}-sidecar");
    engine
        .start_container(
            &sandbox,
            &spec(&sidecar, &rootfs, dir.path(), "echo done; exit 4"),
        )
        .await
        .unwrap();
    assert_eq!(engine.wait(&sidecar).await.unwrap(), 4);
    assert_eq!(engine.state(&app).await.unwrap().status, Status::Running);
    let out = engine
        .exec(&app, &["/bin/cat".into(), "/tmp/who".into()], &[])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    for id in [&sidecar, &app, &sandbox] {
        engine.delete(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_restore_keep_memory_and_files() {
    // The restore reads an image rebuilt the way the agent rebuilds stored snapshots: the
    // state decompressed, then framed again in stored DEFLATE blocks.
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let engine = engine(dir.path()).await;
    let rootfs = busybox_rootfs(dir.path());
    let id = unique("ckpt");
    engine
        .create_sandbox(
            &id,
            &spec(&id, &rootfs, dir.path(), COUNTER),
            &Network::Loopback,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = read_counter(&engine, &id).await;
    assert!(before > 0);
    let image = engine
        .checkpoint(&id, &dir.path().join("image"), false)
        .await
        .unwrap();
    assert!(
        image
            .files
            .iter()
            .any(|(name, size)| name == "checkpoint.img" && *size > 0),
        "{:?}",
        image.files
    );
    assert_ne!(
        engine
            .state(&id)
            .await
            .map(|s| s.status)
            .unwrap_or(Status::Stopped),
        Status::Running
    );
    engine.delete(&id).await.unwrap();
    let rebuilt = dir.path().join("rebuilt");
    let state_len = rebuild_image(&image.dir, &rebuilt);
    assert!(
        std::fs::metadata(rebuilt.join("checkpoint.img"))
            .unwrap()
            .len()
            > state_len,
        "the rebuilt image holds the whole state uncompressed"
    );

    let restored = unique("restored");
    engine
        .restore(
            &restored,
            &spec(&restored, &rootfs, dir.path(), COUNTER),
            &Network::Loopback,
            &rebuilt,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        engine.state(&restored).await.unwrap().status,
        Status::Running
    );
    let after = read_counter(&engine, &restored).await;
    assert!(
        after >= before,
        "the counter restarted: {before} before, {after} after"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        read_counter(&engine, &restored).await > after,
        "the restored loop runs on"
    );
    engine.delete(&restored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_with_leave_running_keeps_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let engine = engine(dir.path()).await;
    let rootfs = busybox_rootfs(dir.path());
    let id = unique("resume");
    engine
        .create_sandbox(
            &id,
            &spec(&id, &rootfs, dir.path(), COUNTER),
            &Network::Loopback,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine
        .checkpoint(&id, &dir.path().join("image"), true)
        .await
        .unwrap();
    let a = read_counter(&engine, &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        read_counter(&engine, &id).await > a,
        "the sandbox goes on after the checkpoint"
    );
    engine.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_clear_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let missing = GvisorEngine::new(GvisorConfig {
        runsc: "/nonexistent/runsc".into(),
        ..GvisorConfig::new(dir.path().join("x"))
    })
    .await
    .unwrap_err();
    assert!(
        missing.to_string().contains("apt-get install -y runsc"),
        "{missing}"
    );

    let engine = engine(dir.path()).await;
    let id = unique("broken");
    let no_rootfs = dir.path().join("no-such-rootfs");
    let err = engine
        .create_sandbox(
            &id,
            &spec(&id, &no_rootfs, dir.path(), "true"),
            &Network::Loopback,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Command { .. }), "{err}");
    assert!(err.to_string().contains("runsc create"), "{err}");
    assert!(
        !engine.list().await.unwrap().contains(&id),
        "a failed create is cleaned up"
    );
    let err = engine
        .restore(
            &id,
            &spec(&id, &no_rootfs, dir.path(), "true"),
            &Network::Host,
            dir.path(),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("host network"), "{err}");
}

/// A root file system with a static busybox under `dir/rootfs`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    busybox_root(
        &dir.join("rootfs"),
        &["sh", "sleep", "cat", "echo", "hostname", "ps"],
    )
}
