//! Memory and process state through checkpoint and restore: shared memory between
//! processes (MAP_SHARED anonymous memory, memfds, /dev/shm files, shared file mappings),
//! POSIX timers and seccomp filters. Each C program under `tests/native/` sets up its
//! state, says "ready", is checkpointed (and killed), restored with its PID, then asked with
//! SIGUSR1 to verify its state and write "ok" or "bad: …" to a result file. Needs root
//! (ptrace, clone3 with set_tid), as in CI. The harness is the conformance suite's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podsnap_native::cr::{self, CheckpointOptions, CrError, RestoreOptions};

/// Restores are serialised: each takes a PID that another test's process must not hold.
static SERIAL: Mutex<()> = Mutex::new(());

fn compile(name: &str, out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/native/{name}.c"));
    let bin = out.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(st.success(), "compiling {}", src.display());
    bin
}

/// Starts a program and waits for its "ready" line.
fn start(bin: &Path, args: &[&Path]) -> Child {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{} did not get ready", bin.display());
    child
}

fn wait_result(path: &Path) -> String {
    let t0 = Instant::now();

    while t0.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no result in {} after 20 s", path.display());
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid on our own child, no memory arguments but a live status.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

/// [`cycle_keeping`] with no file outside `dir`.
fn cycle(child: Child, dir: &Path, result: &Path) -> (cr::CheckpointStats, cr::RestoreStats) {
    cycle_keeping(child, dir, result, &[])
}

/// Checkpoint (the original is killed and reaped), then restore it twice from the same
/// image — lazily, then eagerly — and each time SIGUSR1 and expect "ok"; the files of `dir`
/// and `extra` are put back as they were at the checkpoint before the second restore.
fn cycle_keeping(
    mut child: Child,
    dir: &Path,
    result: &Path,
    extra: &[PathBuf],
) -> (cr::CheckpointStats, cr::RestoreStats) {
    let pid = child.id() as i32;
    let img = dir.join("image");
    let cs = cr::checkpoint(pid, &img, &CheckpointOptions::default()).expect("checkpoint");
    let st = child.wait().unwrap();
    assert!(!st.success(), "the original was killed");
    // The files the program made, as they were at the checkpoint: put back before the
    // second restore (the first one's run changes them), with their modification times.
    let files: Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.path() != result)
        .map(|e| e.path())
        .chain(extra.iter().cloned())
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p.clone(), std::fs::read(&p).unwrap(), m.modified().unwrap())
        })
        .collect();

    let (rs, lazy) = cr::restore_lazily(&img, None, &RestoreOptions::default(), Default::default())
        .expect("lazy restore");
    assert_eq!(rs.pid, pid, "same PID");
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let verdict = wait_result(result);
    kill_and_reap(pid);
    assert_eq!(verdict, "ok", "after a lazy restore");
    lazy.wait().expect("the lazy restore ended cleanly");
    std::fs::remove_file(result).unwrap();
    for (path, bytes, mtime) in &files {
        std::fs::write(path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(*mtime)
            .unwrap();
    }

    let rs = cr::restore(&img, &RestoreOptions::default()).expect("restore");
    assert_eq!(rs.pid, pid, "same PID");
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let verdict = wait_result(result);
    kill_and_reap(pid);
    assert_eq!(verdict, "ok", "after an eager restore");
    (cs, rs)
}

#[test]
fn shared_memory_is_one_object_for_every_process_before_and_after_restore() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("shm", dir.path());
    let result = dir.path().join("result");
    let name = format!("/podsnap-cr-memory-{}", std::process::id());
    let shm_file = PathBuf::from(format!("/dev/shm{name}"));
    let child = start(&bin, &[dir.path(), Path::new(&name), &result]);
    let (cs, rs) = cycle_keeping(child, dir.path(), &result, std::slice::from_ref(&shm_file));
    let _ = std::fs::remove_file(&shm_file);
    assert_eq!((cs.processes, rs.processes), (2, 2));
    // Saved once: ~450 pages of shared anonymous memory, ~170 of the memfd, 26 changed
    // private pages; not the shm_open or regular file's pages, nor holes.
    assert!(cs.page_bytes < 3 << 20, "{} bytes saved", cs.page_bytes);
    eprintln!(
        "shm: checkpoint {:?} frozen, {} KiB; restore {:?}, {} syscalls",
        cs.frozen,
        cs.page_bytes >> 10,
        rs.elapsed,
        rs.syscalls
    );
}

#[test]
fn sysv_shared_memory_is_refused_naming_it_and_the_process_runs_on() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("sysv_shm", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[&result]);
    let pid = child.id() as i32;
    let img = dir.path().join("image");
    let err = cr::checkpoint(pid, &img, &CheckpointOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CrError::Refused { .. }), "{msg}");
    assert!(
        msg.contains(&pid.to_string()) && msg.contains("/SYSV") && msg.contains("SysV"),
        "{msg}"
    );
    assert!(!img.join("manifest.json").exists());
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(wait_result(&result), "ok");
    child.wait().unwrap();
}

#[test]
fn posix_timers_keep_their_ids_times_and_signals() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("timers", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    cycle(child, dir.path(), &result);
}

#[test]
fn a_seccomp_filter_still_applies_in_every_thread() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("seccomp", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    let (cs, rs) = cycle(child, dir.path(), &result);
    assert_eq!((cs.threads, rs.threads), (2, 2));
}
