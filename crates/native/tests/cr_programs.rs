//! Real programs across checkpoint/restore (issue #6, item 5): a server is driven over TCP on
//! 127.0.0.1 to build up state in memory, checkpointed (and killed), restored lazily — its
//! listening socket keeps its port — and must go on from where it was; then killed, and
//! restored again eagerly from the same image, where it must go on from the same place.
//! Needs root (ptrace, clone3 with set_tid), as in CI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};

/// Restores are serialised: each takes a PID that another test's process must not hold.
static SERIAL: Mutex<()> = Mutex::new(());

const PYTHON: &str = "/usr/bin/python3";

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/native/{name}"))
}

/// Starts a server, reads its port and "ready" from its standard output.
fn start(cmd: &mut Command) -> (Child, u16) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port = String::new();
    let mut ready = String::new();
    out.read_line(&mut port).unwrap();
    out.read_line(&mut ready).unwrap();
    assert_eq!(
        ready.trim(),
        "ready",
        "{cmd:?} did not get ready (port line {port:?})"
    );
    // Kept open: the program's standard output stays a live pipe until the checkpoint.
    child.stdout = Some(out.into_inner());
    (child, port.trim().parse().expect("a port"))
}

/// One exchange on a fresh connection: sends `req`, reads until the server closes.
fn ask(port: u16, req: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| {
        panic!(
            "reading the answer to {:?}: {e}",
            String::from_utf8_lossy(req)
        )
    });
    out
}

/// `GET /count` of the Python server: its body as a number.
fn http_count(port: u16) -> u64 {
    let resp = ask(port, b"GET /count HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{resp:?}"));
    assert!(head.starts_with("HTTP/1.0 200"), "{resp:?}");
    body.trim().parse().unwrap_or_else(|_| panic!("{resp:?}"))
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid on our own child, no memory arguments but a live status.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

/// Threads of `pid` not sleeping ("S"): a program between requests has none.
fn busy_threads(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.split(' ').next()?.to_string();
            (state != "S").then(|| format!("{} {state}", t.file_name().to_string_lossy()))
        })
        .collect()
}

/// Waits until `pid` has `threads` threads, all asleep (its requests are over).
fn settle(pid: i32, threads: usize) {
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        let busy = busy_threads(pid);
        if n == threads && busy.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{pid} has {n} threads (want {threads}), busy: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checkpoints `child` (killed by it), then restores it lazily and runs `check`, then kills
/// it, restores it eagerly from the same image and runs `check` again. `what` names it.
fn cycle(mut child: Child, dir: &Path, what: &str, check: impl Fn(&str)) {
    let pid = child.id() as i32;
    let img = dir.join("image");
    let cs = cr::checkpoint(pid, &img, &CheckpointOptions::default())
        .unwrap_or_else(|e| panic!("{what}: checkpoint: {e}"));
    assert!(!child.wait().unwrap().success(), "the original was killed");
    eprintln!(
        "{what}: checkpoint {:?} frozen, {} threads, {} KiB of pages",
        cs.frozen,
        cs.threads,
        cs.page_bytes >> 10
    );

    let (rs, lazy) = cr::restore_lazily(&img, None, &RestoreOptions::default(), Default::default())
        .unwrap_or_else(|e| panic!("{what}: lazy restore: {e}"));
    assert_eq!(rs.pid, pid, "same PID");
    let t0 = Instant::now();
    check("lazy");
    let served = t0.elapsed();
    // Its memory all in, with the process still running.
    let ls = lazy.wait();
    kill_and_reap(pid);
    let ls = ls.unwrap_or_else(|e| panic!("{what}: the lazy restore did not end cleanly: {e}"));
    for s in &ls {
        eprintln!(
            "{what}: lazy restore {:?} ({} threads), checked in {served:?}; {:?}: {} faults \
             (p50 {:?}, p99 {:?}), {} KiB on demand, all in after {:?}",
            rs.elapsed,
            rs.threads,
            s.outcome,
            s.demand_faults,
            s.fault_p50,
            s.fault_p99,
            s.demand_bytes >> 10,
            s.fully_resident
        );
    }

    let rs = cr::restore(&img, &RestoreOptions::default())
        .unwrap_or_else(|e| panic!("{what}: eager restore: {e}"));
    assert_eq!(rs.pid, pid, "same PID");
    let t0 = Instant::now();
    check("eager");
    let served = t0.elapsed();
    kill_and_reap(pid);
    eprintln!(
        "{what}: eager restore {:?} ({} threads, {} KiB, {} syscalls), checked in {served:?}",
        rs.elapsed,
        rs.threads,
        rs.page_bytes >> 10,
        rs.syscalls
    );
}

#[test]
fn a_python_http_server_keeps_its_counter() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install it with `apt-get install -y python3` (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = start(
        Command::new(PYTHON)
            .args(["-I", "-B"])
            .arg(source("http_counter.py")),
    );
    let pid = child.id() as i32;
    for want in 1..=3 {
        assert_eq!(http_count(port), want);
    }
    // Its request threads are gone: only the main thread, in its poll.
    settle(pid, 1);
    cycle(child, dir.path(), "python http.server", |how| {
        assert_eq!(http_count(port), 4, "the counter after a {how} restore");
        assert_eq!(http_count(port), 5, "and on, after a {how} restore");
    });
}

#[test]
fn a_multithreaded_c_server_keeps_its_counter_and_workers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("mt_server");
    let st = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&bin)
        .arg(source("mt_server.c"))
        .status()
        .expect("cc runs");
    assert!(st.success(), "compiling mt_server.c");
    let (child, port) = start(&mut Command::new(&bin));
    let pid = child.id() as i32;

    // Some requests one after another, then some at once, so that several workers serve.
    let inc = |port| {
        let a = ask(port, b"inc\n");
        let v: Vec<u64> = a
            .split_whitespace()
            .map(|w| w.parse().unwrap_or_else(|_| panic!("{a:?}")))
            .collect();
        assert_eq!(v.len(), 3, "{a:?}");
        (v[0], v[1])
    };
    let burst = |port, clients: usize, each: usize| -> (Vec<u64>, Vec<u64>) {
        let answers: Vec<(u64, u64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..clients)
                .map(|_| s.spawn(move || (0..each).map(|_| inc(port)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut counts: Vec<u64> = answers.iter().map(|a| a.0).collect();
        counts.sort();
        let mut workers: Vec<u64> = answers.iter().map(|a| a.1).collect();
        workers.sort();
        workers.dedup();
        (counts, workers)
    };
    for want in 1..=5 {
        assert_eq!(inc(port).0, want);
    }
    let (counts, workers) = burst(port, 8, 5);
    assert_eq!(counts, (6..=45).collect::<Vec<_>>());
    assert!(workers.len() > 1, "only worker(s) {workers:?} served");
    assert_eq!(ask(port, b"sum\n").trim(), "45 45");
    // Every worker is back waiting (0 and 1 in accept, 2 and 3 in epoll_wait or accept).
    settle(pid, 5);
    cycle(child, dir.path(), "multi-threaded C server", |how| {
        let (counts, workers) = burst(port, 8, 4);
        assert_eq!(
            counts,
            (46..=77).collect::<Vec<_>>(),
            "the counter after a {how} restore"
        );
        assert!(
            workers.len() > 1,
            "only worker(s) {workers:?} served after a {how} restore"
        );
        assert_eq!(ask(port, b"sum\n").trim(), "77 77", "after a {how} restore");
    });
}
