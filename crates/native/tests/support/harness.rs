//! The harness of the native checkpoint/restore tests (included with `#[path]` by
//! `cr_conformance.rs`, `cr_files.rs` and `cr_memory.rs`): each C program under
//! `tests/native/` sets up one kind of state, says "ready", is checkpointed (and killed),
//! restored with its PID — lazily, then eagerly from the same image — and asked with SIGUSR1
//! to verify its state and write "ok" or "bad: …" to a result file. Needs root (ptrace,
//! clone3 with set_tid), as in CI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};

pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn compile(name: &str, out: &Path) -> PathBuf {
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
pub fn start(bin: &Path, args: &[&Path]) -> Child {
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

pub fn wait_result(path: &Path) -> String {
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

pub fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid on our own child, no memory arguments but a live status.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

/// [`cycle_keeping`] with no file outside `dir`.
pub fn cycle(child: Child, dir: &Path, result: &Path) -> (cr::CheckpointStats, cr::RestoreStats) {
    cycle_keeping(child, dir, result, &[])
}

/// Checkpoint (the original is killed and reaped), then restore it twice from the same
/// image — lazily, then eagerly — and each time SIGUSR1 and expect "ok"; the files of `dir`
/// and `extra` are put back as they were at the checkpoint before the second restore.
pub fn cycle_keeping(
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
