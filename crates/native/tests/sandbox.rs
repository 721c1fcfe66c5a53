//! The native engine's sandboxes against the real kernel (CI runs tests as root): namespaces,
//! overlay root, exec, member containers, kill/delete leaving nothing behind, freeze/thaw,
//! time offsets, and records that a restarted agent reads again.

#[path = "../../../tests/support/busybox_root.rs"]
mod busybox_root;
#[path = "../../../tests/support/shell_spec.rs"]
mod shell_spec;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use busybox_root::busybox_root;
use podsnap_engine::{Engine, Network, Status};
use podsnap_native::engine::{
    NativeCleanup, NativeConfig, NativeEngine, SandboxOptions, list_containers,
};
use podsnap_native::sandbox::TimeOffsets;
use shell_spec::shell_spec as spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

struct Setup {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    engine: NativeEngine,
    config: NativeConfig,
    _cleanup: NativeCleanup,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let mut config = NativeConfig::new(dir.path().join("state"));
    config.cgroup_parent = "podsnap-test".into();
    let engine = NativeEngine::new(config.clone()).expect("tests run as root");
    let cleanup = NativeCleanup(config.state_dir.clone());
    Setup {
        dir,
        rootfs,
        engine,
        config,
        _cleanup: cleanup,
    }
}

async fn exec(engine: &NativeEngine, id: &str, script: &str) -> (i32, String) {
    let out = engine
        .exec(id, &["/bin/sh".into(), "-c".into(), script.into()], &[])
        .await
        .unwrap();
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mountinfo_mentions(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(path.to_str().unwrap())
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_sandbox_runs_in_its_own_namespaces_on_an_overlay_and_reports_its_exit_code() {
    let s = setup();
    let id = unique("ns");
    let script = "echo pid=$$; echo host=$(hostname); echo net=$(ls /sys/class/net); \
                  echo written > /tmp/written; ls /dev; exit 7";
    let root = spec(&id, &s.rootfs, s.dir.path(), script);
    s.engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap();
    assert_eq!(s.engine.wait(&id).await.unwrap(), 7);
    let log = std::fs::read_to_string(&root.log_file).unwrap();
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(log.contains("host=test-pod\n"), "{log}");
    assert!(log.contains("net=lo\n"), "{log}");
    for dev in ["null", "zero", "urandom", "pts", "shm", "tty"] {
        assert!(log.lines().any(|l| l == dev), "no /dev/{dev}: {log}");
    }
    // The write landed in the container's upper directory, not in the image.
    assert_eq!(
        std::fs::read_to_string(s.engine.upper_dir(&id).join("tmp/written")).unwrap(),
        "written\n"
    );
    assert!(!s.rootfs.join("tmp/written").exists());
    assert_eq!(s.engine.state(&id).await.unwrap().status, Status::Stopped);
    let cgroup = s.engine.sandbox_cgroup(&id);
    s.engine.delete(&id).await.unwrap();
    assert!(!cgroup.path.exists(), "{} remains", cgroup.path.display());
    assert!(list_containers(&s.config.state_dir).is_empty());
    assert!(!s.engine.upper_dir(&id).exists());
    // A second delete is fine.
    s.engine.delete(&id).await.unwrap();
}

#[tokio::test]
async fn exec_and_member_containers_share_the_sandbox_and_delete_leaves_nothing() {
    let s = setup();
    let id = unique("sb");
    let root = spec(
        &id,
        &s.rootfs,
        s.dir.path(),
        "echo ready > /tmp/ready; exec sleep 1000",
    );
    s.engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap();
    let state = s.engine.state(&id).await.unwrap();
    assert_eq!(state.status, Status::Running);
    let root_pid = state.pid.unwrap();
    // The overlay is mounted in the sandbox's mount namespace only.
    let mounts = std::fs::read_to_string(format!("/proc/{root_pid}/mountinfo")).unwrap();
    assert!(
        mounts.contains(" / ") && mounts.contains("overlay"),
        "{mounts}"
    );
    assert!(!mountinfo_mentions(&s.config.state_dir));

    // exec sees the same files, host name and pid namespace (but is not pid 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = exec(&s.engine, &id, "cat /tmp/ready").await;
        if code == 0 {
            assert_eq!(out, "ready\n");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out) = exec(&s.engine, &id, "echo $$ $(hostname); cat /proc/1/cmdline").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" test-pod\nsleep"), "{out}");
    assert_ne!(out.split(' ').next().unwrap(), "1", "{out}");
    let (code, _) = exec(&s.engine, &id, "exit 3").await;
    assert_eq!(code, 3);

    // exec_piped: a relay's forwarder.
    let mut child = s
        .engine
        .exec_piped(&id, &["/bin/cat".into()])
        .await
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    drop(stdin);
    let mut echoed = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut echoed)
        .await
        .unwrap();
    assert_eq!(echoed, "ping");

    // A member container: same pid, net, uts and ipc namespaces; its own root.
    let member_id = format!("{id}-app");
    let member = spec(&member_id, &s.rootfs, s.dir.path(), "exec sleep 1000");
    s.engine.start_container(&id, &member).await.unwrap();
    let member_pid = s.engine.pid(&member_id).unwrap();
    let ns = |pid: u32, name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap();
    for name in ["pid", "net", "uts", "ipc", "cgroup", "time"] {
        assert_eq!(ns(root_pid, name), ns(member_pid, name), "{name}");
    }
    assert_ne!(ns(root_pid, "mnt"), ns(member_pid, "mnt"));
    let (code, out) = exec(&s.engine, &member_id, "cat /proc/1/cmdline; cat /tmp/ready").await;
    assert_ne!(code, 0, "the member has its own root: {out}");
    assert!(out.starts_with("sleep"), "{out}");

    // A restarted agent finds the containers again from their records.
    let again = NativeEngine::new(s.config.clone()).unwrap();
    let mut ids = again.list().await.unwrap();
    ids.sort();
    let mut expected = vec![id.clone(), member_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        again.state(&member_id).await.unwrap().status,
        Status::Running
    );

    again.kill(&member_id, 9).await.unwrap();
    assert_eq!(again.wait(&member_id).await.unwrap(), 128 + 9);
    assert_eq!(s.engine.state(&id).await.unwrap().status, Status::Running);

    let supervisors: Vec<u32> = [root_pid, member_pid].to_vec();
    let cgroup = s.engine.sandbox_cgroup(&id);
    again.delete(&id).await.unwrap();
    for pid in supervisors {
        assert!(!process_alive(pid), "process {pid} survived the delete");
    }
    assert!(!cgroup.path.exists(), "{} remains", cgroup.path.display());
    assert!(list_containers(&s.config.state_dir).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(s.config.state_dir.join("containers"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        std::fs::read_dir(s.config.state_dir.join("exits"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(!mountinfo_mentions(&s.config.state_dir));
}

#[tokio::test]
async fn freeze_and_thaw_stop_and_resume_a_counter() {
    let s = setup();
    let id = unique("frz");
    let root = spec(
        &id,
        &s.rootfs,
        s.dir.path(),
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done",
    );
    s.engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap();
    let count_file = s.engine.upper_dir(&id).join("tmp/count");
    let count = || -> u64 {
        std::fs::read_to_string(&count_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() < 3 {
        assert!(Instant::now() < deadline, "the counter never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.engine.freeze(&id).unwrap();
    assert_eq!(s.engine.state(&id).await.unwrap().status, Status::Paused);
    let frozen = count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(), frozen, "the counter went on while frozen");
    s.engine.thaw(&id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() <= frozen {
        assert!(Instant::now() < deadline, "the counter did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A frozen sandbox is deleted too.
    s.engine.freeze(&id).unwrap();
    s.engine.delete(&id).await.unwrap();
    assert!(!s.engine.sandbox_cgroup(&id).path.exists());
}

#[tokio::test]
async fn time_offsets_shift_the_sandboxs_clocks() {
    let s = setup();
    let id = unique("time");
    let root = spec(&id, &s.rootfs, s.dir.path(), "cat /proc/uptime");
    let day = 86_400_000_000_000;
    s.engine
        .create_sandbox_with(
            &id,
            &root,
            &Network::Loopback,
            SandboxOptions {
                time_offsets: TimeOffsets {
                    monotonic_ns: day,
                    boottime_ns: day,
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(s.engine.wait(&id).await.unwrap(), 0);
    let log = std::fs::read_to_string(&root.log_file).unwrap();
    let uptime: f64 = log.split_whitespace().next().unwrap().parse().unwrap();
    assert!(uptime > 86_400.0, "{log}");
    s.engine.delete(&id).await.unwrap();
}

#[tokio::test]
async fn failures_say_what_failed_and_leave_nothing() {
    let s = setup();
    let id = unique("bad");
    let mut root = spec(&id, &s.rootfs, s.dir.path(), "");
    root.args = vec!["/bin/does-not-exist".into()];
    let e = s
        .engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/bin/does-not-exist"), "{e}");
    let mut root = spec(&id, &s.rootfs, s.dir.path(), "true");
    root.mounts.push(podsnap_engine::Mount {
        destination: "/data".into(),
        source: s.dir.path().join("missing"),
        kind: podsnap_engine::MountKind::Bind,
        read_only: false,
    });
    let e = s
        .engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    assert!(list_containers(&s.config.state_dir).is_empty());
    assert!(!s.engine.sandbox_cgroup(&id).path.exists());
    let e = s
        .engine
        .checkpoint(&id, s.dir.path(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&id) && e.contains("does not exist"), "{e}");
}

/// A root file system with a static busybox under `dir/rootfs`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    busybox_root(
        &dir.join("rootfs"),
        &["sh", "sleep", "cat", "echo", "hostname", "ls", "readlink"],
    )
}

/// Waits until `path` has a line starting with `prefix`; the last such line.
async fn wait_line(path: &Path, prefix: &str) -> String {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().rfind(|l| l.starts_with(prefix)) {
            return l.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no line {prefix}… in {}", path.display());
}

fn uptime(text: &str) -> f64 {
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_sandbox_is_restored_with_its_processes_files_and_clocks_in_a_new_sandbox() {
    let s = setup();
    let id = unique("cr");
    // State in a shell's memory (a counter), a child process, a file in the root file
    // system, and the output going to the container's log.
    let script = "echo kept > /tmp/state; (while true; do sleep 1; done) & i=0; \
                  while true; do i=$((i+1)); echo n=$i; sleep 0.05; done";
    let root = spec(&id, &s.rootfs, s.dir.path(), script);
    s.engine
        .create_sandbox(&id, &root, &Network::Loopback)
        .await
        .unwrap();
    wait_line(&root.log_file, "n=20").await;
    let (_, up) = exec(&s.engine, &id, "cat /proc/uptime").await;
    let image = s.dir.path().join("image");
    let img = s.engine.checkpoint(&id, &image, false).await.unwrap();
    let names: Vec<&str> = img.files.iter().map(|(f, _)| f.as_str()).collect();
    assert!(
        names.contains(&"sandbox.json") && names.contains(&"rootfs-upper.tar"),
        "{names:?}"
    );
    assert!(names.contains(&"processes/manifest.json"), "{names:?}");
    let last = wait_line(&root.log_file, "n=").await;
    let last: u64 = last[2..].parse().unwrap();
    s.engine.delete(&id).await.unwrap();
    // Time passes between the checkpoint and the restore.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let id2 = unique("restored");
    let mut spec2 = spec(&id2, &s.rootfs, s.dir.path(), "exit 99");
    spec2.hostname = "restored-pod".into();
    s.engine
        .restore(
            &id2,
            &spec2,
            &Network::Loopback,
            &image,
            &Default::default(),
        )
        .await
        .unwrap();
    // The counter goes on from where it was, into the new container's log.
    let first = wait_line(&spec2.log_file, "n=").await;
    let first: u64 = first[2..].parse().unwrap();
    assert!(first > last, "the counter restarted: {first} after {last}");
    let (code, out) = exec(
        &s.engine,
        &id2,
        "cat /tmp/state; hostname; cat /proc/uptime",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["kept", "restored-pod"], "{out}");
    // The sandbox's clocks went on from the checkpoint: the 3 s between are not seen.
    let (before, after) = (uptime(&up), uptime(lines[2]));
    assert!(
        after >= before && after < before + 2.5,
        "uptime {before} at the checkpoint, {after} after the restore"
    );
    // The child process came back too.
    let (_, ps) = exec(&s.engine, &id2, "ls /proc | grep -c '^[0-9]'").await;
    assert!(ps.trim().parse::<u32>().unwrap() >= 3, "processes: {ps}");
    s.engine.delete(&id2).await.unwrap();
}

#[tokio::test]
async fn a_corrupt_sandbox_image_is_refused_and_leaves_nothing_running() {
    let s = setup();
    let id = unique("bad");
    let image = s.dir.path().join("not-an-image");
    std::fs::create_dir_all(&image).unwrap();
    let root = spec(&id, &s.rootfs, s.dir.path(), "exit 0");
    let err = s
        .engine
        .restore(&id, &root, &Network::Loopback, &image, &Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a native sandbox image"), "{err}");
    assert!(list_containers(&s.config.state_dir).is_empty());
}
