//! Conformance suite of the native checkpoint/restore (zdtm-like): each C program under
//! `tests/native/` sets up one kind of state, says "ready", is checkpointed (and killed),
//! restored with its PID, then asked with SIGUSR1 to verify its state and write "ok" or
//! "bad: …" to a result file. Needs root (ptrace, clone3 with set_tid), as in CI.

use std::time::Duration;

use podsnap_native::cr::{self, CheckpointOptions, CrError, RestoreOptions};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

#[test]
fn memory_pattern_heap_readonly_and_private_file_mapping() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("memory", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[dir.path(), &result]);
    let (cs, rs) = cycle(child, dir.path(), &result);
    assert!(cs.page_bytes > 40 << 20, "the pattern was saved");
    assert!(cs.page_bytes < 64 << 20, "holes and zero pages were not");
    eprintln!(
        "memory: checkpoint {:?} frozen, {} MiB; restore {:?}, {} syscalls",
        cs.frozen,
        cs.page_bytes >> 20,
        rs.elapsed,
        rs.syscalls
    );
}

#[test]
fn counter_continues_where_it_was() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("counter", dir.path());
    let out = dir.path().join("counts");
    let result = dir.path().join("result");
    let child = start(&bin, &[&out, &result]);
    std::thread::sleep(Duration::from_millis(100));
    let mut child = child;
    let pid = child.id() as i32;
    let img = dir.path().join("image");
    cr::checkpoint(pid, &img, &CheckpointOptions::default()).unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    cr::restore(&img, &RestoreOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let verdict = wait_result(&result);
    kill_and_reap(pid);
    assert_eq!(verdict, "ok");
    let text = std::fs::read_to_string(&out).unwrap();
    let nums: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        nums.len() > before + 10,
        "it went on counting after the restore"
    );
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "line {} of {text:?}", i + 1);
    }
}

#[test]
fn files_offsets_flags_and_devices() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("files", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[dir.path(), &result]);
    cycle(child, dir.path(), &result);
}

#[test]
fn signal_handlers_mask_and_altstack() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("signals", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    cycle(child, dir.path(), &result);
}

#[test]
fn a_socket_is_refused_naming_it_and_the_process_runs_on() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("refuse", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[&result]);
    let pid = child.id() as i32;
    let img = dir.path().join("image");
    let err = cr::checkpoint(pid, &img, &CheckpointOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CrError::Refused { .. }), "{msg}");
    assert!(
        msg.contains(&pid.to_string()) && msg.contains("fd 3 (socket:["),
        "{msg}"
    );
    assert!(!img.join("manifest.json").exists());
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(wait_result(&result), "ok");
    child.wait().unwrap();
}

#[test]
fn a_taken_pid_and_a_corrupt_image_are_clear_errors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("signals", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[&result]);
    let pid = child.id() as i32;
    let img = dir.path().join("image");
    cr::checkpoint(
        pid,
        &img,
        &CheckpointOptions {
            leave_running: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The original still runs and holds the PID.
    let err = cr::restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, CrError::PidTaken { pid: p } if p == pid),
        "{err}"
    );
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(wait_result(&result), "ok");
    child.wait().unwrap();

    // Corrupt page data: the restore fails when it reads the block, and kills (and reaps)
    // the process it was making.
    let pages = img.join(format!("pages-{pid}.img"));
    let mut data = std::fs::read(&pages).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&pages, &data).unwrap();
    let err = cr::restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // Truncated.
    std::fs::write(&pages, &data[..data.len() - 4096]).unwrap();
    let err = cr::restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // Another version.
    let m = std::fs::read_to_string(img.join("manifest.json")).unwrap();
    std::fs::write(
        img.join("manifest.json"),
        m.replacen("\"version\": 3", "\"version\": 99", 1),
    )
    .unwrap();
    let err = cr::restore(&img, &RestoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    // SAFETY: kill has no memory arguments (the PID is free: nothing must run there).
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
}

#[test]
fn threads_keep_their_tids_names_tls_and_a_waiting_condition_variable() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("threads", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    let (cs, rs) = cycle(child, dir.path(), &result);
    assert_eq!((cs.threads, rs.threads), (9, 9));
}

#[test]
fn a_tree_keeps_pipes_with_buffered_bytes_sessions_groups_and_parenthood() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("tree", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    let (cs, rs) = cycle(child, dir.path(), &result);
    assert_eq!((cs.processes, rs.processes), (3, 3));
}

#[test]
fn eventfd_timerfd_signalfd_epoll_shared_offsets_queued_signals_and_itimers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("kinds", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[dir.path(), &result]);
    cycle(child, dir.path(), &result);
}

#[test]
fn listening_and_bound_sockets_keep_their_ports_and_a_connection_inside_is_kept() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("sockets", dir.path());
    let result = dir.path().join("result");
    let child = start(&bin, &[&result]);
    cycle(child, dir.path(), &result);
}
