//! Checkpoint and restore of Linux process trees, without code left in the target.
//!
//! - [`checkpoint()`]: every thread of every process under a root is stopped with
//!   `PTRACE_SEIZE` + `PTRACE_INTERRUPT`; registers, signal masks and pending signals through
//!   ptrace, everything `/proc` says (maps, smaps, pagemap, stat, status, auxv, fds, fdinfo,
//!   timers), shared open files found with `kcmp`, pipe contents copied with `tee`, and what
//!   only a task can say (signal handlers, alternate stack, clear_child_tid, brk, itimers)
//!   through syscalls injected at its stopped instruction pointer. Anything that cannot be
//!   restored is refused with an error naming the process and the resource.
//! - [`restore()`]: the root's seed is created with `clone3(set_tid)` so that it gets the
//!   same PID; every other process and thread is created from its parent's seed by an
//!   injected `clone3(set_tid)`; each is shaped by syscalls injected through a `syscall; int3`
//!   trampoline page. The restore is planned by a pure function ([`restore::plan_restore`])
//!   and executed against the [`restore::SeedOps`] trait, so the plan is tested without root.
//! - [`files`]: what is saved of each kind of fd, and the calls that make it again.
//! - [`image`]: the on-disk image (versioned JSON manifest + one page file per process with an
//!   index and a checksum per 64 KiB block): the manifest and page-file headers are validated
//!   before a restore starts, page data block by block as it is read.

pub mod checkpoint;
pub mod files;
pub mod image;
pub mod lazy;
pub mod model;
pub mod procfs;
pub mod restore;
pub mod sockets;
mod sys;
pub mod uffd;

pub use checkpoint::{CheckpointOptions, CheckpointStats, checkpoint};
pub use image::{ImageFile, PagesOpener};
pub use restore::{LazyRestore, RestoreOptions, RestoreStats, restore, restore_lazily};

use std::path::PathBuf;

/// Everything that can go wrong in checkpoint or restore, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CrError {
    /// The process holds something this engine cannot restore yet; nothing was written.
    #[error("cannot checkpoint process {pid}: {resource} is not supported ({hint})")]
    Refused {
        /// The process.
        pid: i32,
        /// The resource, e.g. `fd 5 (socket:[1234])`.
        resource: String,
        /// What the user can do, or why it is refused.
        hint: String,
    },
    /// The process does not exist or cannot be inspected.
    #[error("process {pid}: {what}: {source}")]
    Proc {
        /// The process.
        pid: i32,
        /// What was being read or done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A ptrace request or a wait on the tracee failed.
    #[error("process {pid}: ptrace {op} failed: {source}")]
    Ptrace {
        /// The process.
        pid: i32,
        /// The ptrace request.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The tracee stopped, exited or was signalled in a way the engine did not expect.
    #[error("process {pid}: {what}")]
    Unexpected {
        /// The process.
        pid: i32,
        /// What happened.
        what: String,
    },
    /// A syscall injected into the process failed.
    #[error("process {pid}: injected {call} failed: {source}")]
    Injected {
        /// The process.
        pid: i32,
        /// The call, with its arguments in words.
        call: String,
        /// The errno it returned.
        source: std::io::Error,
    },
    /// An image file could not be read or written.
    #[error("image {path}: {what}: {source}")]
    ImageIo {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image is not a valid image of this format (truncated, corrupt, another version).
    #[error("image {path} is invalid: {reason}")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image cannot be restored on this machine (another kernel, a changed file...).
    #[error("cannot restore here: {0}")]
    Incompatible(String),
    /// The saved PID is in use, so the process cannot get it back.
    #[error(
        "PID {pid} is in use: the restored process must get its PID back; stop the process \
         that has it (or wait for it to be reaped) and retry"
    )]
    PidTaken {
        /// The PID.
        pid: i32,
    },
}

/// A result with a [`CrError`].
pub type Result<T> = std::result::Result<T, CrError>;
