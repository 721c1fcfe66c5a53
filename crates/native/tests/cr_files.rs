//! Conformance of the native checkpoint/restore for files and sockets (zdtm-like, as
//! `cr_conformance.rs`): Unix sockets (pairs with queued data, listeners, bound datagram
//! sockets, connections leaving the tree), TCP connections inside the tree (repair mode),
//! FIFOs, deleted-but-open files, and real servers driven over the network after a restore.
//! Needs root (ptrace, clone3 with set_tid), as in CI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};

/// Restores are serialised: each takes a PID that another test's process must not hold.
static SERIAL: Mutex<()> = Mutex::new(());

fn compile(name: &str, out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/native/{name}.c"));
    let bin = out.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
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

/// Checkpoint (the original is killed and reaped), then restore it twice from the same
/// image — lazily (memory served through a userfaultfd while it runs), then eagerly — and
/// each time SIGUSR1 and expect "ok".
fn cycle(mut child: Child, dir: &Path, result: &Path) -> (cr::CheckpointStats, cr::RestoreStats) {
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
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.path(),
                std::fs::read(e.path()).unwrap(),
                m.modified().unwrap(),
            )
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
fn unix_socket_pairs_listeners_and_queues_come_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("unix_sockets", dir.path());
    let result = dir.path().join("result");
    let outside_path = dir.path().join("outside.sock");
    let outside = std::os::unix::net::UnixListener::bind(&outside_path).unwrap();
    let child = start(&bin, &[dir.path(), &outside_path, &result]);
    let (_peer, _) = outside.accept().unwrap();
    let (cs, rs) = cycle(child, dir.path(), &result);
    eprintln!(
        "unix sockets: checkpoint {:?} frozen; restore {:?}, {} syscalls",
        cs.frozen, rs.elapsed, rs.syscalls
    );
}

#[test]
fn tcp_connections_inside_the_tree_keep_their_data_and_flow() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("tcp_conn", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    let (cs, rs) = cycle(child, dir.path(), &result);
    eprintln!(
        "tcp: checkpoint {:?} frozen; restore {:?}, {} syscalls",
        cs.frozen, rs.elapsed, rs.syscalls
    );
}

#[test]
fn fifos_and_deleted_files_keep_their_bytes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("fifo_deleted", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[dir.path(), &result]);
    cycle(child, dir.path(), &result);
}
