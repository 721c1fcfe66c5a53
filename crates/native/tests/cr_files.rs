//! Conformance of the native checkpoint/restore for files and sockets (zdtm-like, as
//! `cr_conformance.rs`): Unix sockets (pairs with queued data, listeners, bound datagram
//! sockets, connections leaving the tree), TCP connections inside the tree (repair mode),
//! FIFOs, deleted-but-open files, and real servers driven over the network after a restore.
//! Needs root (ptrace, clone3 with set_tid), as in CI.

#[path = "support/harness.rs"]
mod harness;
use harness::*;

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
