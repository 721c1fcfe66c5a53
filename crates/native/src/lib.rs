//! podsnap's native engine: a Pod's processes in their own Linux namespaces (no gVisor, no
//! syscall tax), and podsnap's own checkpoint/restore of those process trees — the base for
//! lazy restore and GPU snapshots.
//!
//! - [`sandbox`]: the Pod sandbox (namespaces, overlay root, cgroup) and [`engine`], the
//!   `Engine` implementation the node runtime drives.
//! - [`cr`]: checkpoint (ptrace, `/proc`, `pidfd_getfd`; no code injected to stay) and restore
//!   (seed processes shaped by injected syscalls) of process trees, and the image format.
//!
//! This is the one crate besides GPU FFI that may use `unsafe`: every block says why it is
//! sound in a `// SAFETY:` comment, and privileged calls sit behind small traits so that the
//! planning logic is tested without root. It must not know about Kubernetes objects, images
//! or repositories beyond the image streams it reads and writes.

pub mod cr;
pub mod engine;
pub mod sandbox;
