//! The Pod sandbox of the native engine: namespaces, overlay root file system, cgroup.
//!
//! A sandbox's root container is a process tree in new pid, mount, uts, ipc, net (or the Pod's
//! network namespace), cgroup and time namespaces. Its root file system is an overlayfs: the
//! image's root below, the Pod's changes in a per-container upper directory on disk. Member
//! containers join the root's pid, net, ipc, uts, cgroup and time namespaces with a mount
//! namespace and overlay root of their own.
//!
//! How a container starts, without running Rust code that is unsafe after `fork` in a
//! multi-threaded agent: everything is prepared in the agent as a [`plan::ChildPlan`] (C
//! strings, opened file descriptors, a list of [`plan::Op`]s), and the forked child only makes
//! plain system calls ([`child`]). The forked child stays as the container's supervisor: it
//! enters or creates the pid and time namespaces, forks the container's first process (which
//! sets up the remaining namespaces and the root file system, then `exec`s the workload),
//! waits for it and writes its exit code to a file. The supervisor lives on when the agent
//! restarts, so exit codes are never lost.
//!
//! - [`cgroup`]: the sandbox's cgroup (v2 where it works, else the v1 freezer): freeze, thaw,
//!   kill everything.
//! - [`timens`]: time namespace offsets (so a restore can continue the monotonic clocks).
//! - [`plan`]: what the child does, planned without privileges (unit-tested).
//! - [`child`]: the code that runs between `fork` and `exec`.

pub mod cgroup;
pub mod child;
pub mod plan;
pub mod timens;

pub use cgroup::{Cgroup, CgroupKind};
pub use timens::TimeOffsets;
