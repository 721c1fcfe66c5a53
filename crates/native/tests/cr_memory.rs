//! Memory and process state through checkpoint and restore: shared memory between
//! processes (MAP_SHARED anonymous memory, memfds, /dev/shm files, shared file mappings),
//! POSIX timers and seccomp filters. Each C program under `tests/native/` sets up its
//! state, says "ready", is checkpointed (and killed), restored with its PID, then asked with
//! SIGUSR1 to verify its state and write "ok" or "bad: …" to a result file. Needs root
//! (ptrace, clone3 with set_tid), as in CI. The harness is the conformance suite's.

use std::path::{Path, PathBuf};

use podsnap_native::cr::{self, CheckpointOptions, CrError};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

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
