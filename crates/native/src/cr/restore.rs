//! Restore of a process tree from an image, with its PIDs and TIDs.
//!
//! 1. The image's manifest and page-file headers are read and validated
//!    ([`image::read_image_with`]) before anything is touched, and checked against this
//!    machine: same kernel release (the vDSO moves over as is), every mapped file unchanged
//!    (size and modification time), the page indexes inside the mappings. Page data is
//!    verified block by block as it is read (see [`image::PagesFile::read_at`]), so a corrupt
//!    block fails the restore — eagerly: before the processes run; lazily: the restored
//!    processes are killed, with the reason.
//! 2. The root's seed is created with `clone3(set_tid = [pid])` — a fork of the restorer that
//!    makes itself traced and stops. A PID in use is a clear error ([`CrError::PidTaken`]).
//! 3. [`plan_restore`] (pure) turns the images and the seed's layout into a list of
//!    operations, each for one task, and [`execute`] runs it through [`SeedOps`]:
//!    - the root seed unregisters its rseq and maps the `syscall; int3` trampoline at an
//!      address free in every process's layout; every other process is then forked, parents
//!      first, by an injected `clone3(set_tid)` in its parent's seed (inheriting the
//!      trampoline), and takes its session and process group;
//!    - each process closes the seed's fds, unmaps the seed's mappings, moves its
//!      `[vvar]`/`[vvar_vclock]`/`[vdso]` to the saved place, maps every saved mapping, gets
//!      its saved pages (through `/proc/PID/mem`, which reaches read-only pages),
//!      `PR_SET_MM_MAP` with the executable's fd, cwd/umask/personality, signal
//!      dispositions, interval timers and resource limits;
//!    - the fds of every process (see [`super::files`]; shared ones taken with
//!      `pidfd_getfd` from the process that has them first);
//!    - the other threads, by an injected `clone3(CLONE_THREAD, set_tid)`; then per thread
//!      its name, sigaltstack, clear_child_tid, robust list, rseq, credentials and
//!      capabilities, signal mask, pending signals queued again, XSAVE area and registers —
//!      the main thread last, stopped at the exit of the trampoline's own `munmap`;
//!    - everything is detached at once.
//! 4. On any error every seed is killed: never a half-restored tree.
//!
//! Standard input, output and error that were a terminal, socket or a pipe leaving the tree
//! are re-opened onto the files in [`RestoreOptions::stdio`] (default `/dev/null`; output
//! files are created and appended to). The root becomes a child of the restorer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::checkpoint::kernel_release;
use super::files::FilePlanner;
use super::image::{self, PAGE, PageRun, PagesFile, PagesOpener};
use super::lazy::{self, LazyError, LazyHandle, LazyOptions, LazyServer, LazyStats};
use super::model::{Backing, Caps, ProcessImage, Regs, Vma, Zombie, from_hex};
use super::procfs::{self, MapEntry};
use super::sys::{self, Cloned, Injector, TRAMPOLINE_CODE, Wait};
use super::{CrError, Result};
use std::sync::Arc;

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Files for fds 0, 1 and 2 when they were a terminal, socket or a pipe leaving the tree
    /// (default `/dev/null`).
    pub stdio: [Option<PathBuf>; 3],
    /// Give such fds the seed's own fds 0, 1 and 2 instead (a seed made by a container
    /// runtime, whose standard output is the container's log).
    pub inherit_stdio: bool,
    /// Where the page files are read from: called with each one's path in the image
    /// directory (e.g. to read them from a repository as they arrive); `None`: the files in
    /// the image directory. Their data is checked against the image's checksums either way.
    pub open_pages: Option<Arc<PagesOpener>>,
    /// For a lazy restore, the image addresses each process (by its PID in the image) needs
    /// first — the working set an earlier restore recorded; they are brought in before the
    /// rest ([`LazyOptions::prefetch`], which this replaces for the processes named).
    pub prefetch: BTreeMap<i32, Vec<u64>>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("stdio", &self.stdio)
            .field("inherit_stdio", &self.inherit_stdio)
            .field(
                "open_pages",
                &self
                    .open_pages
                    .as_ref()
                    .map_or("the image directory", |_| "custom"),
            )
            .field(
                "prefetch",
                &self
                    .prefetch
                    .iter()
                    .map(|(pid, a)| (pid, a.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreStats {
    /// The restored root process (its PID from the image).
    pub pid: i32,
    /// Processes restored.
    pub processes: usize,
    /// Threads restored.
    pub threads: usize,
    /// Bytes of page data written into them.
    pub page_bytes: u64,
    /// Injected syscalls.
    pub syscalls: usize,
    /// From the start of the restore to the detach.
    pub elapsed: Duration,
}

/// Size of the trampoline mapping: a code page (`syscall; int3`) and a data page.
pub const TRAMPOLINE_LEN: u64 = 2 * PAGE;
const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];
const LOWEST_ADDR: u64 = 1 << 20;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Where a restored process's stdio (fds 0–2 that were a terminal, socket or a pipe leaving
/// the tree) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    /// Opened on these absolute paths.
    Paths([String; 3]),
    /// The seed's own fds 0, 1 and 2, kept.
    Inherit,
}

impl Stdio {
    /// Whether the seed's fd `fd` is kept as fd `fd` of process `img`.
    pub fn keeps(&self, img: &ProcessImage, fd: i32) -> bool {
        *self == Stdio::Inherit
            && img
                .fds
                .iter()
                .any(|f| f.fd == fd && matches!(f.kind, super::model::FdKind::Stdio { .. }))
    }
}

/// What the plan needs to know of the root seed and the restorer.
#[derive(Debug, Clone)]
pub struct SeedLayout {
    /// Its mappings.
    pub maps: Vec<MapEntry>,
    /// Its rseq registration (address, length, signature), inherited from the restorer.
    pub rseq: Option<(u64, u32, u32)>,
    /// Its credentials (those of the restorer): uids, gids, groups, capabilities.
    pub creds: Creds,
}

/// Credentials of a task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved and filesystem user IDs.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem group IDs.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub caps: Caps,
}

impl Creds {
    /// The credentials `/proc/PID/status` shows.
    pub fn from_status(status: &str) -> Creds {
        let hex = |k: &str| {
            procfs::status_field(status, k)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .unwrap_or(0)
        };
        Creds {
            uids: procfs::status_ids(status, "Uid").unwrap_or_default(),
            gids: procfs::status_ids(status, "Gid").unwrap_or_default(),
            groups: procfs::status_field(status, "Groups")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect(),
            caps: Caps {
                inheritable: hex("CapInh"),
                permitted: hex("CapPrm"),
                effective: hex("CapEff"),
                bounding: hex("CapBnd"),
                ambient: hex("CapAmb"),
            },
        }
    }

    fn of(p: &ProcessImage) -> Creds {
        Creds {
            uids: p.uids,
            gids: p.gids,
            groups: p.groups.clone(),
            caps: p.caps,
        }
    }
}

/// What a syscall's result must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 0.
    Zero,
    /// This value (an address, an fd).
    Eq(u64),
    /// Anything but an error.
    Any,
}

/// A syscall to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Its number.
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
    /// Bytes to write into the task first (at the address given), e.g. a path.
    pub data: Option<(u64, Vec<u8>)>,
    /// The result it must have.
    pub expect: Expect,
    /// The call in words, for errors.
    pub what: String,
}

/// One step of a restore, for one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Inject a syscall into task `tid`.
    Syscall {
        /// The task.
        tid: i32,
        /// The call.
        call: Call,
    },
    /// Write `syscall; int3` at this (freshly mapped) address of the root seed and inject
    /// through it from now (it is inherited by every process forked after).
    InstallTrampoline {
        /// The root seed.
        tid: i32,
        /// The trampoline's address.
        addr: u64,
    },
    /// Inject a `clone3` into `tid` that creates task `child` (a process, or a thread), then
    /// take the new task, stopped, and inject into it through the trampoline at `code`.
    Clone {
        /// The parent (or the thread group's main thread).
        tid: i32,
        /// The PID or TID the new task must get.
        child: i32,
        /// The `clone3` call.
        call: Call,
        /// The trampoline.
        code: u64,
    },
    /// Write every saved page of process `pid`.
    WritePages {
        /// The process.
        pid: i32,
    },
    /// Write saved bytes through fd `fd` of process `pid`, opened again from here as
    /// `/proc/PID/fd/FD`: a pipe's or FIFO's buffered bytes, an unnamed file's contents.
    WriteFd {
        /// The process.
        pid: i32,
        /// The fd: a pipe's write end, a FIFO or a file open for writing.
        fd: i32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Set a resource limit of process `pid` (`prlimit` from outside).
    SetRlimit {
        /// The process.
        pid: i32,
        /// The resource.
        resource: u32,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
    },
    /// Set the blocked signal mask of task `tid`.
    SetSigmask {
        /// The task.
        tid: i32,
        /// The mask.
        mask: u64,
    },
    /// XSAVE area and registers of a thread other than the main one (it stays stopped until
    /// everything is released).
    FinishThread {
        /// The thread.
        tid: i32,
        /// The registers to resume with.
        regs: Regs,
        /// The XSAVE area.
        xstate: Vec<u8>,
    },
    /// XSAVE area, unmap the trampoline, registers of a process's main thread.
    FinishMain {
        /// The main thread.
        tid: i32,
        /// The trampoline to unmap.
        trampoline: u64,
        /// The registers to resume with.
        regs: Regs,
        /// The XSAVE area.
        xstate: Vec<u8>,
    },
    /// Make task `tid` (a fresh process) exit with `code`: it stays a zombie until its
    /// parent reaps it, as it was at the checkpoint.
    Exit {
        /// The process.
        tid: i32,
        /// Its exit code.
        code: i32,
    },
    /// Detach every task: the tree runs.
    Release,
    /// After the release, send signal `sig` to process `pid` (it arrived during the
    /// checkpoint, or was pending and not blocked).
    SignalAfter {
        /// The process.
        pid: i32,
        /// The signal.
        sig: i32,
    },
}

/// The privileged side of a restore: ptrace-stopped seed tasks. The real one injects through
/// ptrace; tests use a recording double.
pub trait SeedOps {
    /// Injects syscall `nr` into task `tid`; its raw result (`-errno` on error).
    fn syscall(&mut self, tid: i32, nr: i64, args: [u64; 6]) -> Result<i64>;
    /// Writes bytes into the task's memory.
    fn write_mem(&mut self, tid: i32, addr: u64, data: &[u8]) -> Result<()>;
    /// Injects through the `syscall; int3` at `addr` of `tid` from now on.
    fn set_code(&mut self, tid: i32, addr: u64);
    /// Takes the task `tid` that an injected `clone3` into `parent` just created, once it has
    /// stopped, and injects into it through `code`.
    fn adopt(&mut self, parent: i32, tid: i32, code: u64) -> Result<()>;
    /// Sends signal `sig` to process `pid`.
    fn signal(&mut self, pid: i32, sig: i32) -> Result<()>;
    /// Makes the fresh process `tid` exit with `code` and forgets it.
    fn exit(&mut self, tid: i32, code: i32) -> Result<()>;
    /// Registers `ranges` of process `pid` with a userfaultfd and starts serving `runs` (and
    /// zeros elsewhere in the ranges) into them, on demand first and in the background.
    fn serve_lazily(&mut self, pid: i32, ranges: &[(u64, u64)], runs: Vec<PageRun>) -> Result<()>;
    /// Writes bytes into the pipe, FIFO or file behind fd `fd` of `pid`.
    fn write_fd(&mut self, pid: i32, fd: i32, data: &[u8]) -> Result<()>;
    /// Sets a resource limit of `pid`.
    fn set_rlimit(&mut self, pid: i32, resource: u32, soft: u64, hard: u64) -> Result<()>;
    /// Sets the blocked signal mask of `tid`.
    fn set_sigmask(&mut self, tid: i32, mask: u64) -> Result<()>;
    /// Sets the XSAVE area and the registers of a stopped thread.
    fn finish_thread(&mut self, tid: i32, regs: &Regs, xstate: &[u8]) -> Result<()>;
    /// Sets the XSAVE area, unmaps the trampoline, sets the registers of a main thread.
    fn finish_main(&mut self, tid: i32, trampoline: u64, regs: &Regs, xstate: &[u8]) -> Result<()>;
    /// Detaches every task.
    fn release(&mut self) -> Result<()>;
}

/// Page data by offset.
pub trait PageSource {
    /// Reads `buf.len()` bytes at `offset` of the page data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// [`PageSource::read_at`] for a page fault a process is blocked on: ahead of reads
    /// already waiting, where the source queues them.
    fn read_for_fault(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_at(offset, buf)
    }
}

impl PageSource for PagesFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        PagesFile::read_at(self, offset, buf)
    }

    fn read_for_fault(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        PagesFile::read_for_fault(self, offset, buf)
    }
}

pub(crate) fn call(
    tid: i32,
    nr: i64,
    args: [u64; 6],
    expect: Expect,
    what: impl Into<String>,
) -> Op {
    Op::Syscall {
        tid,
        call: Call {
            nr,
            args,
            data: None,
            expect,
            what: what.into(),
        },
    }
}

pub(crate) fn call_with(
    tid: i32,
    nr: i64,
    args: [u64; 6],
    data: (u64, Vec<u8>),
    expect: Expect,
    what: impl Into<String>,
) -> Op {
    Op::Syscall {
        tid,
        call: Call {
            nr,
            args,
            data: Some(data),
            expect,
            what: what.into(),
        },
    }
}

/// The lowest address `>= from` where `len` bytes overlap none of `used`.
pub fn find_gap(used: &[(u64, u64)], len: u64, from: u64) -> Option<u64> {
    let mut used = used.to_vec();
    used.sort_unstable();
    let mut at = from;
    for (s, e) in used {
        if e <= at {
            continue;
        }
        if s >= at + len {
            break;
        }
        at = e.next_multiple_of(PAGE);
    }
    (at + len <= TASK_SIZE).then_some(at)
}

/// A path as a C string for the task, or an error.
pub(crate) fn cstr(s: &str) -> Result<Vec<u8>> {
    if s.len() >= PAGE as usize || s.contains('\0') {
        return Err(CrError::Incompatible(format!(
            "path {s:?} is too long (or has a NUL) to be passed to the restored process"
        )));
    }
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// `struct clone_args` for a `clone3` with `set_tid = [tid]`, the array written at
/// `set_tid_at`.
fn clone_args(flags: u64, exit_signal: u64, set_tid_at: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(88);
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
    // set_tid_size, cgroup
    for w in [flags, 0, 0, 0, exit_signal, 0, 0, 0, set_tid_at, 1, 0] {
        b.extend(w.to_ne_bytes());
    }
    b
}

/// The `clone3` that makes task `child` in `parent`, with the call's data at `data`.
fn clone_op(parent: i32, child: i32, flags: u64, exit_signal: u64, data: u64, code: u64) -> Op {
    let set_tid_at = data + 128;
    let mut bytes = clone_args(flags, exit_signal, set_tid_at);
    bytes.resize(128, 0);
    bytes.extend(child.to_ne_bytes());
    let thread = flags & libc::CLONE_THREAD as u64 != 0;
    Op::Clone {
        tid: parent,
        child,
        call: Call {
            nr: libc::SYS_clone3,
            args: [data, 88, 0, 0, 0, 0],
            data: Some((data, bytes)),
            expect: Expect::Eq(child as u64),
            what: format!(
                "clone3 of {} {child}",
                if thread { "thread" } else { "process" }
            ),
        },
        code,
    }
}

/// The restore, step by step: pure, from the images (parents first), the root seed's layout,
/// the absolute paths for stdio and every thread's XSAVE area (by TID).
pub fn plan_restore(
    images: &[ProcessImage],
    zombies: &[Zombie],
    seed: &SeedLayout,
    stdio: &Stdio,
    xstates: &BTreeMap<i32, Vec<u8>>,
) -> Result<Vec<Op>> {
    use libc::*;
    let root = images
        .first()
        .ok_or_else(|| CrError::Incompatible("the image has no process".into()))?;
    let mut ops = Vec::new();
    let seed_used: Vec<(u64, u64)> = seed
        .maps
        .iter()
        .map(|m| (m.start, m.end.min(TASK_SIZE)))
        .collect();
    let mut used = seed_used.clone();
    for p in images {
        used.extend(p.vmas.iter().map(|v| (v.start, v.end)));
    }
    let tramp = find_gap(&used, TRAMPOLINE_LEN, LOWEST_ADDR)
        .ok_or_else(|| CrError::Incompatible("no free address for the trampoline".into()))?;
    let data = tramp + PAGE;

    // The root seed: bootstrap through its own instruction pointer.
    if let Some((addr, len, sig)) = seed.rseq {
        ops.push(call(
            root.pid,
            SYS_rseq,
            [addr, len as u64, 1, sig as u64, 0, 0],
            Expect::Zero,
            "rseq unregistration of the seed's area",
        ));
    }
    ops.push(call(
        root.pid,
        SYS_mmap,
        [
            tramp,
            TRAMPOLINE_LEN,
            (PROT_READ | PROT_WRITE | PROT_EXEC) as u64,
            (MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
        Expect::Eq(tramp),
        format!("mmap of the trampoline at {tramp:#x}"),
    ));
    ops.push(Op::InstallTrampoline {
        tid: root.pid,
        addr: tramp,
    });

    // The tree, parents first, each with its session and process group; the zombies.
    plan_sessions(images, data, tramp, &mut ops);
    for z in zombies {
        ops.push(clone_op(
            z.ppid,
            z.pid,
            0,
            libc::SIGCHLD as u64,
            data,
            tramp,
        ));
        ops.push(Op::Exit {
            tid: z.pid,
            code: z.exit_code,
        });
    }

    // Each process's memory and attributes.
    for p in images {
        plan_process(p, seed, &seed_used, tramp, stdio, &mut ops)?;
    }

    // The fds of every process, then the temporaries gone.
    let mut files = FilePlanner::new(data, stdio);
    for p in images {
        files.plan(p.pid, &p.fds, &mut ops)?;
    }
    files.close_temporaries(&mut ops);

    // Threads, then each thread's own state, the main thread last.
    let thread_flags =
        (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM) as u64;
    for p in images {
        for t in &p.threads[1..] {
            ops.push(clone_op(p.pid, t.tid, thread_flags, 0, data, tramp));
        }
    }
    let mut after = Vec::new();
    for p in images {
        for t in p.threads.iter().rev() {
            plan_thread(p, t, seed, data, &mut ops, &mut after)?;
            let xstate = xstates.get(&t.tid).cloned().ok_or_else(|| {
                CrError::Incompatible(format!("no XSAVE area for thread {}", t.tid))
            })?;
            ops.push(if t.tid == p.pid {
                Op::FinishMain {
                    tid: t.tid,
                    trampoline: tramp,
                    regs: t.regs.for_resume(),
                    xstate,
                }
            } else {
                Op::FinishThread {
                    tid: t.tid,
                    regs: t.regs.for_resume(),
                    xstate,
                }
            });
        }
        after.extend(
            p.deferred_signals
                .iter()
                .map(|&sig| Op::SignalAfter { pid: p.pid, sig }),
        );
    }
    ops.push(Op::Release);
    ops.extend(after);
    Ok(ops)
}

/// Forks every process but the root from its parent's seed, parents first, and gives it its
/// session and process group (as far as they can be made again: a group is joined only when
/// a process of the tree made it).
fn plan_sessions(images: &[ProcessImage], data: u64, tramp: u64, ops: &mut Vec<Op>) {
    use libc::*;
    let root = &images[0];
    // (session, group) of each restored process, in the image's numbers; the root's are
    // the restorer's unless it led them.
    let mut now: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
    if root.sid == root.pid {
        ops.push(call(
            root.pid,
            SYS_setsid,
            [0; 6],
            Expect::Eq(root.pid as u64),
            "setsid",
        ));
    } else if root.pgid == root.pid {
        ops.push(call(
            root.pid,
            SYS_setpgid,
            [0; 6],
            Expect::Zero,
            "setpgid(0, 0)",
        ));
    }
    now.insert(root.pid, (root.sid, root.pgid));
    for p in &images[1..] {
        ops.push(clone_op(
            p.ppid,
            p.pid,
            0,
            p.exit_signal as u64,
            data,
            tramp,
        ));
        let (mut sid, mut pgid) = now[&p.ppid];
        if p.sid != sid && p.sid == p.pid {
            ops.push(call(
                p.pid,
                SYS_setsid,
                [0; 6],
                Expect::Eq(p.pid as u64),
                "setsid",
            ));
            (sid, pgid) = (p.pid, p.pid);
        }
        if p.pgid != pgid {
            let exists = now.values().any(|&(s, g)| s == sid && g == p.pgid);
            if p.pgid == p.pid || exists {
                let target = if p.pgid == p.pid { 0 } else { p.pgid as u64 };
                ops.push(call(
                    p.pid,
                    SYS_setpgid,
                    [0, target, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("setpgid(0, {})", p.pgid),
                ));
                pgid = p.pgid;
            }
        }
        now.insert(p.pid, (sid, pgid));
    }
}

/// One process's memory and process-wide attributes.
fn plan_process(
    img: &ProcessImage,
    seed: &SeedLayout,
    seed_used: &[(u64, u64)],
    tramp: u64,
    stdio: &Stdio,
    ops: &mut Vec<Op>,
) -> Result<()> {
    use libc::*;
    let pid = img.pid;
    let data = tramp + PAGE;
    let mut used: Vec<(u64, u64)> = img.vmas.iter().map(|v| (v.start, v.end)).collect();
    used.extend_from_slice(seed_used);
    used.push((tramp, tramp + TRAMPOLINE_LEN));
    // The seed's fds go, but those it passes on as the process's stdio.
    let mut first = 0;
    if let Stdio::Inherit = stdio {
        first = 3;
        for k in 0..3u64 {
            if !stdio.keeps(img, k as i32) {
                ops.push(call(
                    pid,
                    SYS_close_range,
                    [k, k, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("close of the seed's fd {k}"),
                ));
            }
        }
    }
    ops.push(call(
        pid,
        SYS_close_range,
        [first, u32::MAX as u64, 0, 0, 0, 0],
        Expect::Zero,
        "close_range of the seed's fds",
    ));

    // Away with the seed's memory, but its vDSO.
    for m in &seed.maps {
        if VDSO_NAMES.contains(&m.path.as_str()) || m.path == "[vsyscall]" || m.start >= TASK_SIZE {
            continue;
        }
        ops.push(call(
            pid,
            SYS_munmap,
            [m.start, m.end - m.start, 0, 0, 0, 0],
            Expect::Zero,
            format!(
                "munmap of the seed's {:#x}-{:#x} {}",
                m.start, m.end, m.path
            ),
        ));
    }
    plan_vdso(img, seed, &used, ops)?;

    // The shared memory objects it makes, then the saved mappings.
    let fds = free_fds(img, stdio);
    plan_shmem_objects(img, data, fds, ops)?;
    for v in &img.vmas {
        plan_vma(pid, v, data, fds, ops)?;
    }
    ops.push(Op::WritePages { pid });
    for v in &img.vmas {
        if let Backing::ShmemStage { id } = v.backing {
            ops.push(call(
                pid,
                SYS_munmap,
                [v.start, v.len(), 0, 0, 0, 0],
                Expect::Zero,
                format!("munmap of shared memory object {id}'s staging mapping"),
            ));
        }
    }

    // The mm layout and the executable.
    let mm = &img.mm;
    let auxv_at = data + 128;
    let auxv: Vec<u8> = mm
        .auxv
        .iter()
        .take(52)
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let mut map = Vec::with_capacity(104);
    for w in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_at,
    ] {
        map.extend(w.to_ne_bytes());
    }
    map.extend((auxv.len() as u32).to_ne_bytes());
    map.extend((fds[0] as u32).to_ne_bytes()); // exe_fd: opened just before
    map.resize(128, 0);
    map.extend(&auxv);
    ops.push(call_with(
        pid,
        SYS_openat,
        [
            AT_FDCWD as u64,
            data,
            (O_RDONLY | O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
        (data, cstr(&img.exe)?),
        Expect::Eq(fds[0]),
        format!("open of the executable {}", img.exe),
    ));
    ops.push(call_with(
        pid,
        SYS_prctl,
        [PR_SET_MM as u64, PR_SET_MM_MAP as u64, data, 104, 0, 0],
        (data, map),
        Expect::Zero,
        "prctl(PR_SET_MM_MAP)",
    ));
    ops.push(call(
        pid,
        SYS_close,
        [fds[0], 0, 0, 0, 0, 0],
        Expect::Zero,
        "close of the executable",
    ));

    // Process attributes.
    ops.push(call_with(
        pid,
        SYS_chdir,
        [data, 0, 0, 0, 0, 0],
        (data, cstr(&img.cwd)?),
        Expect::Zero,
        format!("chdir to {}", img.cwd),
    ));
    ops.push(call(
        pid,
        SYS_umask,
        [img.umask as u64, 0, 0, 0, 0, 0],
        Expect::Any,
        "umask",
    ));
    ops.push(call(
        pid,
        SYS_personality,
        [img.personality, 0, 0, 0, 0, 0],
        Expect::Any,
        "personality",
    ));
    for sa in &img.sigactions {
        let mut b = Vec::with_capacity(32);
        for w in [sa.handler, sa.flags, sa.restorer, sa.mask] {
            b.extend(w.to_ne_bytes());
        }
        ops.push(call_with(
            pid,
            SYS_rt_sigaction,
            [sa.sig as u64, data, 0, 8, 0, 0],
            (data, b),
            Expect::Zero,
            format!("rt_sigaction({})", sa.sig),
        ));
    }
    for &(which, interval, value) in &img.itimers {
        let mut it = Vec::with_capacity(32);
        for us in [interval, value] {
            it.extend((us / 1_000_000).to_ne_bytes());
            it.extend((us % 1_000_000).to_ne_bytes());
        }
        ops.push(call_with(
            pid,
            SYS_setitimer,
            [which as u64, data, 0, 0, 0, 0],
            (data, it),
            Expect::Zero,
            format!("setitimer({which})"),
        ));
    }
    for &(resource, soft, hard) in &img.rlimits {
        ops.push(Op::SetRlimit {
            pid,
            resource,
            soft,
            hard,
        });
    }
    Ok(())
}

/// Moves the seed's vDSO block to the image's place (through a free place if they overlap).
fn plan_vdso(
    img: &ProcessImage,
    seed: &SeedLayout,
    used: &[(u64, u64)],
    ops: &mut Vec<Op>,
) -> Result<()> {
    use libc::*;
    let pid = img.pid;
    let seed_vdso: Vec<&MapEntry> = seed
        .maps
        .iter()
        .filter(|m| VDSO_NAMES.contains(&m.path.as_str()))
        .collect();
    let img_vdso: Vec<&Vma> = img
        .vmas
        .iter()
        .filter(|v| matches!(v.backing, Backing::Vdso { .. }))
        .collect();
    if img_vdso.is_empty() {
        for m in &seed_vdso {
            ops.push(call(
                pid,
                SYS_munmap,
                [m.start, m.end - m.start, 0, 0, 0, 0],
                Expect::Zero,
                format!("munmap of the seed's {}", m.path),
            ));
        }
        return Ok(());
    }
    let same = seed_vdso.len() == img_vdso.len()
        && seed_vdso.iter().zip(&img_vdso).all(|(s, t)| {
            matches!(&t.backing, Backing::Vdso { name } if *name == s.path)
                && s.start - seed_vdso[0].start == t.start - img_vdso[0].start
                && s.end - s.start == t.end - t.start
        });
    if !same {
        return Err(CrError::Incompatible(format!(
            "the vDSO here ({:?}) is laid out unlike the image's ({:?})",
            seed_vdso
                .iter()
                .map(|m| (&m.path, m.end - m.start))
                .collect::<Vec<_>>(),
            img_vdso.iter().map(|v| v.len()).collect::<Vec<_>>()
        )));
    }
    let s0 = seed_vdso[0].start;
    let size = seed_vdso.last().map_or(0, |m| m.end) - s0;
    let t0 = img_vdso[0].start;
    let mut from = s0;
    let mut moves = Vec::new();
    if from != t0 {
        if from < t0 + size && t0 < from + size {
            let tmp = find_gap(used, size, LOWEST_ADDR).ok_or_else(|| {
                CrError::Incompatible("no free address to move the vDSO through".into())
            })?;
            moves.push(tmp);
        }
        moves.push(t0);
    }
    for to in moves {
        for m in &seed_vdso {
            let len = m.end - m.start;
            let (old, new) = (from + (m.start - s0), to + (m.start - s0));
            ops.push(call(
                pid,
                SYS_mremap,
                [
                    old,
                    len,
                    len,
                    (MREMAP_MAYMOVE | MREMAP_FIXED) as u64,
                    new,
                    0,
                ],
                Expect::Eq(new),
                format!("mremap of {} from {old:#x} to {new:#x}", m.path),
            ));
        }
        from = to;
    }
    Ok(())
}

/// The two lowest fds free while a process's memory is planned (the seed's are closed but
/// the stdio it passes on): the calls there open, map and close their fds at these.
fn free_fds(img: &ProcessImage, stdio: &Stdio) -> [u64; 2] {
    let mut free = (0u64..).filter(|k| *k >= 3 || !stdio.keeps(img, *k as i32));
    [free.next().expect("free"), free.next().expect("free")]
}

/// The fd at which the owner of shared memory object `id` holds it while the processes that
/// map it are restored (closed after the last mapping of it).
pub fn shmem_fd(id: u64) -> u64 {
    SHMEM_FD_BASE + id
}

/// The first of the fds that hold shared memory objects during a restore: above every fd a
/// process's memory planning uses, below the lowest common `RLIMIT_NOFILE` (1024) with
/// [`super::checkpoint::MAX_SHMEM_OBJECTS`] objects.
const SHMEM_FD_BASE: u64 = 700;

/// The shared memory objects process `img` owns: each made as a memfd of its size, with its
/// seals, mapped at its staging place (where [`Op::WritePages`] writes its saved pages) and
/// held at [`shmem_fd`] for the processes that map it.
fn plan_shmem_objects(
    img: &ProcessImage,
    data: u64,
    fds: [u64; 2],
    ops: &mut Vec<Op>,
) -> Result<()> {
    use libc::*;
    let pid = img.pid;
    for o in &img.shmem {
        let stage = img
            .vmas
            .iter()
            .find(|v| v.backing == Backing::ShmemStage { id: o.id })
            .ok_or_else(|| {
                CrError::Incompatible(format!(
                    "shared memory object {} of process {pid} has no staging place",
                    o.id
                ))
            })?;
        let sealing = o.seals & !(F_SEAL_SEAL as u32) != 0 || o.seals & F_SEAL_SEAL as u32 == 0;
        let flags = MFD_CLOEXEC | if sealing { MFD_ALLOW_SEALING } else { 0 };
        let fd = fds[0];
        ops.push(call_with(
            pid,
            SYS_memfd_create,
            [data, flags as u64, 0, 0, 0, 0],
            (data, cstr(&o.name)?),
            Expect::Eq(fd),
            format!("memfd_create of shared memory object {} ({})", o.id, o.name),
        ));
        ops.push(call(
            pid,
            SYS_ftruncate,
            [fd, o.size, 0, 0, 0, 0],
            Expect::Zero,
            format!("ftruncate of shared memory object {} to {}", o.id, o.size),
        ));
        if sealing && o.seals != 0 {
            ops.push(call(
                pid,
                SYS_fcntl,
                [fd, F_ADD_SEALS as u64, o.seals as u64, 0, 0, 0],
                Expect::Zero,
                format!(
                    "F_ADD_SEALS {:#x} of shared memory object {}",
                    o.seals, o.id
                ),
            ));
        }
        ops.push(call(
            pid,
            SYS_mmap,
            [
                stage.start,
                stage.len(),
                (PROT_READ | PROT_WRITE) as u64,
                (MAP_SHARED | MAP_FIXED) as u64,
                fd,
                0,
            ],
            Expect::Eq(stage.start),
            format!("mmap of shared memory object {} to stage its pages", o.id),
        ));
        let held = shmem_fd(o.id);
        ops.push(call(
            pid,
            SYS_dup3,
            [fd, held, O_CLOEXEC as u64, 0, 0, 0],
            Expect::Eq(held),
            format!("dup3 of shared memory object {} to fd {held}", o.id),
        ));
        ops.push(call(
            pid,
            SYS_close,
            [fd, 0, 0, 0, 0, 0],
            Expect::Zero,
            format!("close of fd {fd}"),
        ));
    }
    Ok(())
}

/// One saved mapping, with its advice; `fds`: the lowest free fds of the process.
fn plan_vma(pid: i32, v: &Vma, data: u64, fds: [u64; 2], ops: &mut Vec<Op>) -> Result<()> {
    use libc::*;
    let len = v.len();
    let mut flags = MAP_PRIVATE | MAP_FIXED;
    if v.growsdown {
        flags |= MAP_GROWSDOWN;
    }
    let open_and_map = |ops: &mut Vec<Op>, path: &str, write: bool, flags: i32, offset: u64| {
        let mode = if write { O_RDWR } else { O_RDONLY };
        ops.push(call_with(
            pid,
            SYS_openat,
            [AT_FDCWD as u64, data, (mode | O_CLOEXEC) as u64, 0, 0, 0],
            (data, cstr(path)?),
            Expect::Eq(fds[0]),
            format!("open of {path} to map it"),
        ));
        ops.push(call(
            pid,
            SYS_mmap,
            [v.start, len, v.prot as u64, flags as u64, fds[0], offset],
            Expect::Eq(v.start),
            format!("mmap of {path} at {:#x}-{:#x}", v.start, v.end),
        ));
        ops.push(call(
            pid,
            SYS_close,
            [fds[0], 0, 0, 0, 0, 0],
            Expect::Zero,
            "close of the mapped file",
        ));
        Ok::<(), CrError>(())
    };
    match &v.backing {
        Backing::Vdso { .. } | Backing::ShmemStage { .. } => return Ok(()),
        Backing::Anon { name } => ops.push(call(
            pid,
            SYS_mmap,
            [
                v.start,
                len,
                v.prot as u64,
                (flags | MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
            Expect::Eq(v.start),
            format!(
                "mmap of anonymous memory {:#x}-{:#x} {}",
                v.start,
                v.end,
                name.as_deref().unwrap_or("")
            ),
        )),
        Backing::File { path, offset, .. } => open_and_map(ops, path, false, flags, *offset)?,
        Backing::SharedFile {
            path,
            offset,
            writable,
            ..
        } => open_and_map(ops, path, *writable, MAP_SHARED | MAP_FIXED, *offset)?,
        Backing::Shmem {
            id,
            owner,
            offset,
            shared,
            last,
        } => {
            let held = shmem_fd(*id);
            let mut fd = held;
            if *owner != pid {
                // Taken from the owner, which holds it at the same number.
                ops.push(call(
                    pid,
                    SYS_pidfd_open,
                    [*owner as u64, 0, 0, 0, 0, 0],
                    Expect::Eq(fds[0]),
                    format!("pidfd_open of process {owner}, owner of shared memory {id}"),
                ));
                ops.push(call(
                    pid,
                    SYS_pidfd_getfd,
                    [fds[0], held, 0, 0, 0, 0],
                    Expect::Eq(fds[1]),
                    format!("pidfd_getfd of shared memory object {id} from process {owner}"),
                ));
                ops.push(call(
                    pid,
                    SYS_close,
                    [fds[0], 0, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("close of the pidfd of process {owner}"),
                ));
                fd = fds[1];
            }
            let share = if *shared { MAP_SHARED } else { MAP_PRIVATE };
            ops.push(call(
                pid,
                SYS_mmap,
                [
                    v.start,
                    len,
                    v.prot as u64,
                    ((flags & !MAP_PRIVATE) | share) as u64,
                    fd,
                    *offset,
                ],
                Expect::Eq(v.start),
                format!(
                    "mmap of shared memory object {id} at {:#x}-{:#x}",
                    v.start, v.end
                ),
            ));
            if fd != held {
                ops.push(call(
                    pid,
                    SYS_close,
                    [fd, 0, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("close of shared memory object {id}"),
                ));
            }
            if *last {
                ops.push(call(
                    *owner,
                    SYS_close,
                    [held, 0, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("close of shared memory object {id}, mapped by all"),
                ));
            }
        }
    }
    for a in &v.advice {
        let advice = match a.as_str() {
            "dd" => MADV_DONTDUMP,
            "wf" => MADV_WIPEONFORK,
            "hg" => MADV_HUGEPAGE,
            "nh" => MADV_NOHUGEPAGE,
            _ => continue,
        };
        ops.push(call(
            pid,
            SYS_madvise,
            [v.start, len, advice as u64, 0, 0, 0],
            Expect::Zero,
            format!("madvise({a}) of {:#x}-{:#x}", v.start, v.end),
        ));
    }
    Ok(())
}

/// One thread's own state up to its registers: name, sigaltstack, clear_child_tid, robust
/// list, rseq, no_new_privs, credentials, signal mask and pending signals. Pending signals
/// the mask does not block are sent after the release instead (into `after`).
fn plan_thread(
    p: &ProcessImage,
    t: &super::model::ThreadState,
    seed: &SeedLayout,
    data: u64,
    ops: &mut Vec<Op>,
    after: &mut Vec<Op>,
) -> Result<()> {
    use libc::*;
    let tid = t.tid;
    if tid == p.pid {
        // Every thread exists now: timers may signal any.
        plan_timers(p, data, ops);
    }
    let mut comm = t.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    ops.push(call_with(
        tid,
        SYS_prctl,
        [PR_SET_NAME as u64, data, 0, 0, 0, 0],
        (data, comm),
        Expect::Zero,
        "prctl(PR_SET_NAME)",
    ));
    let (sp, ss_flags, size) = t.altstack;
    let mut ss = Vec::with_capacity(24);
    if ss_flags & SS_DISABLE != 0 {
        ss.extend(0u64.to_ne_bytes());
        ss.extend(SS_DISABLE.to_ne_bytes());
        ss.extend([0; 4]);
        ss.extend(0u64.to_ne_bytes());
    } else {
        ss.extend(sp.to_ne_bytes());
        ss.extend((ss_flags & (1 << 31)).to_ne_bytes()); // SS_AUTODISARM
        ss.extend([0; 4]);
        ss.extend(size.to_ne_bytes());
    }
    ops.push(call_with(
        tid,
        SYS_sigaltstack,
        [data, 0, 0, 0, 0, 0],
        (data, ss),
        Expect::Zero,
        "sigaltstack",
    ));
    ops.push(call(
        tid,
        SYS_set_tid_address,
        [t.clear_child_tid, 0, 0, 0, 0, 0],
        Expect::Any,
        "set_tid_address",
    ));
    if t.robust_list.0 != 0 {
        ops.push(call(
            tid,
            SYS_set_robust_list,
            [t.robust_list.0, t.robust_list.1, 0, 0, 0, 0],
            Expect::Zero,
            "set_robust_list",
        ));
    }
    if let Some((addr, len, sig)) = t.rseq {
        ops.push(call(
            tid,
            SYS_rseq,
            [addr, len as u64, 0, sig as u64, 0, 0],
            Expect::Zero,
            format!("rseq registration at {addr:#x}"),
        ));
    }
    if p.no_new_privs {
        ops.push(call(
            tid,
            SYS_prctl,
            [PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            Expect::Zero,
            "prctl(PR_SET_NO_NEW_PRIVS)",
        ));
    }
    plan_creds(tid, &Creds::of(p), &seed.creds, data, ops);
    ops.push(Op::SetSigmask {
        tid,
        mask: t.sigmask,
    });
    let queue = |info: &String, shared: bool, ops: &mut Vec<Op>, after: &mut Vec<Op>| {
        let Some(bytes) = from_hex(info).filter(|b| b.len() == sys::SIGINFO_LEN) else {
            return Err(CrError::Incompatible(format!(
                "a pending signal of thread {tid} is not a siginfo"
            )));
        };
        let sig = i32::from_ne_bytes(bytes[..4].try_into().expect("4"));
        if !(1..=64).contains(&sig) {
            return Err(CrError::Incompatible(format!(
                "pending signal {sig} of thread {tid} is not a signal"
            )));
        }
        if t.sigmask & (1u64 << (sig - 1)) == 0 {
            after.push(Op::SignalAfter { pid: p.pid, sig });
        } else if shared {
            ops.push(call_with(
                tid,
                SYS_rt_sigqueueinfo,
                [p.pid as u64, sig as u64, data, 0, 0, 0],
                (data, bytes),
                Expect::Zero,
                format!("rt_sigqueueinfo of pending signal {sig}"),
            ));
        } else {
            ops.push(call_with(
                tid,
                SYS_rt_tgsigqueueinfo,
                [p.pid as u64, tid as u64, sig as u64, data, 0, 0],
                (data, bytes),
                Expect::Zero,
                format!("rt_tgsigqueueinfo of pending signal {sig}"),
            ));
        }
        Ok(())
    };
    for info in &t.pending {
        queue(info, false, ops, after)?;
    }
    if tid == p.pid {
        for info in &p.shared_pending {
            queue(info, true, ops, after)?;
        }
    }
    plan_seccomp(tid, &t.seccomp, data, ops)
}

/// The seccomp filters of thread `tid`, oldest first, each installed for this thread alone
/// (threads that shared a filter get equal ones): its last injected calls, so that no filter
/// stands in the way of the restore (but the main thread's trampoline `munmap`).
fn plan_seccomp(tid: i32, filters: &[String], data: u64, ops: &mut Vec<Op>) -> Result<()> {
    use libc::*;
    for (i, hex) in filters.iter().enumerate() {
        let prog = from_hex(hex)
            .filter(|p| !p.is_empty() && p.len() % 8 == 0 && p.len() + 16 <= PAGE as usize)
            .ok_or_else(|| {
                CrError::Incompatible(format!(
                    "seccomp filter {i} of thread {tid} is not a filter this restore can install"
                ))
            })?;
        // struct sock_fprog: len (u16), padding, pointer; the instructions after it.
        let mut b = Vec::with_capacity(16 + prog.len());
        b.extend(((prog.len() / 8) as u16).to_ne_bytes());
        b.extend([0u8; 6]);
        b.extend((data + 16).to_ne_bytes());
        b.extend(&prog);
        ops.push(call_with(
            tid,
            SYS_seccomp,
            [SECCOMP_SET_MODE_FILTER as u64, 0, data, 0, 0, 0],
            (data, b),
            Expect::Zero,
            format!("seccomp filter {i} ({} instructions)", prog.len() / 8),
        ));
    }
    Ok(())
}

/// The POSIX timers of process `p`, made by its main thread with their IDs
/// (`PR_TIMER_CREATE_RESTORE_IDS`: `timer_create` takes the ID it is given) and armed with
/// their remaining time and period.
fn plan_timers(p: &ProcessImage, data: u64, ops: &mut Vec<Op>) {
    use libc::*;
    if p.posix_timers.is_empty() {
        return;
    }
    let pid = p.pid;
    let restore_ids = |on: u64| {
        call(
            pid,
            SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, on, 0, 0, 0, 0],
            Expect::Zero,
            format!("prctl(PR_TIMER_CREATE_RESTORE_IDS, {on})"),
        )
    };
    ops.push(restore_ids(1));
    for t in &p.posix_timers {
        // struct sigevent (64 bytes): value, signo, notify, tid; then the timer_t.
        let mut ev = Vec::with_capacity(68);
        ev.extend(t.value.to_ne_bytes());
        ev.extend(t.signal.to_ne_bytes());
        ev.extend(t.notify.to_ne_bytes());
        ev.extend(t.tid.to_ne_bytes());
        ev.resize(64, 0);
        ev.extend(t.id.to_ne_bytes());
        ops.push(call_with(
            pid,
            SYS_timer_create,
            [t.clock as u64, data, data + 64, 0, 0, 0],
            (data, ev),
            Expect::Zero,
            format!("timer_create of timer {} (clock {})", t.id, t.clock),
        ));
        if t.value_ns != 0 {
            let mut it = Vec::with_capacity(32);
            for ns in [t.interval_ns, t.value_ns] {
                it.extend((ns / 1_000_000_000).to_ne_bytes());
                it.extend((ns % 1_000_000_000).to_ne_bytes());
            }
            ops.push(call_with(
                pid,
                SYS_timer_settime,
                [t.id as u64, 0, data, 0, 0, 0],
                (data, it),
                Expect::Zero,
                format!("timer_settime of timer {}", t.id),
            ));
        }
    }
    ops.push(restore_ids(0));
}

/// `PR_TIMER_CREATE_RESTORE_IDS` (linux/prctl.h, 6.17).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// Credentials and capabilities of one thread, when they differ from the seed's: bounding
/// set first (while privileged), groups and gids, uids keeping capabilities, then the
/// capability sets and the ambient ones.
fn plan_creds(tid: i32, want: &Creds, have: &Creds, data: u64, ops: &mut Vec<Op>) {
    use libc::*;
    if want == have {
        return;
    }
    for cap in 0..64u64 {
        let bit = 1u64 << cap;
        if have.caps.bounding & bit != 0 && want.caps.bounding & bit == 0 {
            ops.push(call(
                tid,
                SYS_prctl,
                [PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
                Expect::Zero,
                format!("prctl(PR_CAPBSET_DROP, {cap})"),
            ));
        }
    }
    if want.groups != have.groups {
        let list: Vec<u8> = want.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        ops.push(call_with(
            tid,
            SYS_setgroups,
            [want.groups.len() as u64, data, 0, 0, 0, 0],
            (data, list),
            Expect::Zero,
            "setgroups",
        ));
    }
    let [rg, eg, sg, fg] = want.gids.map(u64::from);
    ops.push(call(
        tid,
        SYS_setresgid,
        [rg, eg, sg, 0, 0, 0],
        Expect::Zero,
        "setresgid",
    ));
    if fg != eg {
        ops.push(call(
            tid,
            SYS_setfsgid,
            [fg, 0, 0, 0, 0, 0],
            Expect::Any,
            "setfsgid",
        ));
    }
    ops.push(call(
        tid,
        SYS_prctl,
        [PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
        Expect::Zero,
        "prctl(PR_SET_KEEPCAPS, 1)",
    ));
    let [ru, eu, su, fu] = want.uids.map(u64::from);
    ops.push(call(
        tid,
        SYS_setresuid,
        [ru, eu, su, 0, 0, 0],
        Expect::Zero,
        "setresuid",
    ));
    if fu != eu {
        ops.push(call(
            tid,
            SYS_setfsuid,
            [fu, 0, 0, 0, 0, 0],
            Expect::Any,
            "setfsuid",
        ));
    }
    // capset: header {version, pid}, then two {effective, permitted, inheritable} (u32).
    let c = want.caps;
    let mut b = Vec::with_capacity(32);
    b.extend(CAPABILITY_VERSION_3.to_ne_bytes());
    b.extend(0i32.to_ne_bytes());
    for half in [0, 32] {
        for set in [c.effective, c.permitted, c.inheritable] {
            b.extend(((set >> half) as u32).to_ne_bytes());
        }
    }
    ops.push(call_with(
        tid,
        SYS_capset,
        [data, data + 8, 0, 0, 0, 0],
        (data, b),
        Expect::Zero,
        "capset",
    ));
    ops.push(call(
        tid,
        SYS_prctl,
        [PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
        Expect::Zero,
        "prctl(PR_SET_KEEPCAPS, 0)",
    ));
    for cap in 0..64u64 {
        if c.ambient & (1u64 << cap) != 0 {
            ops.push(call(
                tid,
                SYS_prctl,
                [
                    PR_CAP_AMBIENT as u64,
                    PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
                Expect::Zero,
                format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
            ));
        }
    }
}

/// Page data of each process.
pub struct TreePages<'a> {
    /// By PID: the page index and its data.
    pub by_pid: BTreeMap<i32, (&'a [PageRun], &'a dyn PageSource)>,
    /// By PID: the ranges whose pages are served lazily (empty: every page written before
    /// the process runs).
    pub lazy: BTreeMap<i32, Vec<(u64, u64)>>,
}

/// The ranges of a process that a lazy restore serves on demand: its private anonymous
/// mappings (the kernel's userfaultfd serves missing pages of those; pages of private file
/// mappings are written before it runs).
pub fn lazy_ranges(img: &ProcessImage) -> Vec<(u64, u64)> {
    img.vmas
        .iter()
        .filter(|v| matches!(v.backing, Backing::Anon { .. }))
        .map(|v| (v.start, v.len()))
        .collect()
}

/// Splits page runs into those outside `ranges` (`(start, len)`, sorted, disjoint) and those
/// inside, cutting runs that cross a range's edge.
pub fn split_runs(runs: &[PageRun], ranges: &[(u64, u64)]) -> (Vec<PageRun>, Vec<PageRun>) {
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for r in runs {
        let mut at = r.addr;
        let end = r.addr + r.pages * PAGE;
        while at < end {
            // The range holding `at`, or the next one starting after it.
            let holding = ranges.iter().find(|(s, l)| *s <= at && at < s + l);
            let (piece_end, lazy) = match holding {
                Some((s, l)) => ((s + l).min(end), true),
                None => {
                    let next = ranges
                        .iter()
                        .map(|(s, _)| *s)
                        .filter(|s| *s > at)
                        .min()
                        .unwrap_or(end);
                    (next.min(end), false)
                }
            };
            let piece = PageRun {
                addr: at,
                pages: (piece_end - at) / PAGE,
                offset: r.offset + (at - r.addr),
            };
            if lazy {
                inside.push(piece);
            } else {
                outside.push(piece);
            }
            at = piece_end;
        }
    }
    (outside, inside)
}

/// How many times a `clone3` whose PID is still held (by a zombie about to be reaped) is
/// tried, 20 ms apart.
const CLONE_TRIES: u32 = 100;

/// Runs a plan; the number of syscalls injected.
pub fn execute(plan: &[Op], pages: &TreePages<'_>, seed: &mut dyn SeedOps) -> Result<usize> {
    let mut n = 0;
    let run = |seed: &mut dyn SeedOps, tid: i32, c: &Call, n: &mut usize| -> Result<i64> {
        if let Some((addr, bytes)) = &c.data {
            seed.write_mem(tid, *addr, bytes)?;
        }
        let r = seed.syscall(tid, c.nr, c.args)?;
        *n += 1;
        Ok(r)
    };
    let check = |tid: i32, c: &Call, r: i64| -> Result<()> {
        if (-4095..0).contains(&r) {
            return Err(CrError::Injected {
                pid: tid,
                call: c.what.clone(),
                source: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        let ok = match c.expect {
            Expect::Zero => r == 0,
            Expect::Eq(v) => r as u64 == v,
            Expect::Any => true,
        };
        if !ok {
            return Err(CrError::Unexpected {
                pid: tid,
                what: format!("{} returned {r:#x}, expected {:?}", c.what, c.expect),
            });
        }
        Ok(())
    };
    for op in plan {
        match op {
            Op::Syscall { tid, call } => {
                let r = run(seed, *tid, call, &mut n)?;
                check(*tid, call, r)?;
            }
            Op::InstallTrampoline { tid, addr } => {
                seed.write_mem(*tid, *addr, &TRAMPOLINE_CODE)?;
                seed.set_code(*tid, *addr);
            }
            Op::Clone {
                tid,
                child,
                call,
                code,
            } => {
                let mut tries = 0;
                let r = loop {
                    let r = run(seed, *tid, call, &mut n)?;
                    tries += 1;
                    if r != -(libc::EEXIST as i64) {
                        break r;
                    }
                    if tries >= CLONE_TRIES {
                        return Err(CrError::PidTaken { pid: *child });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                check(*tid, call, r)?;
                seed.adopt(*tid, *child, *code)?;
            }
            Op::WritePages { pid } => {
                let Some((runs, source)) = pages.by_pid.get(pid) else {
                    return Err(CrError::Incompatible(format!("no pages for process {pid}")));
                };
                let lazy = pages.lazy.get(pid).filter(|l| !l.is_empty());
                let (eager, later) = match lazy {
                    Some(ranges) => split_runs(runs, ranges),
                    None => (runs.to_vec(), Vec::new()),
                };
                if let Some(ranges) = lazy {
                    // Served from now on: injected calls that touch the memory (rseq's
                    // registration writes its area) are answered too.
                    seed.serve_lazily(*pid, ranges, later)?;
                }
                let mut buf = vec![0u8; 8 << 20];
                for r in eager.iter() {
                    let mut done = 0;
                    while done < r.pages * PAGE {
                        let len = (r.pages * PAGE - done).min(buf.len() as u64);
                        let chunk = &mut buf[..len as usize];
                        source.read_at(r.offset + done, chunk).map_err(|source| {
                            CrError::ImageIo {
                                path: image::pages_file_name(*pid).into(),
                                what: "reading pages".into(),
                                source,
                            }
                        })?;
                        seed.write_mem(*pid, r.addr + done, chunk)?;
                        done += len;
                    }
                }
            }
            Op::WriteFd { pid, fd, data } => seed.write_fd(*pid, *fd, data)?,
            Op::SetRlimit {
                pid,
                resource,
                soft,
                hard,
            } => seed.set_rlimit(*pid, *resource, *soft, *hard)?,
            Op::SetSigmask { tid, mask } => seed.set_sigmask(*tid, *mask)?,
            Op::FinishThread { tid, regs, xstate } => seed.finish_thread(*tid, regs, xstate)?,
            Op::FinishMain {
                tid,
                trampoline,
                regs,
                xstate,
            } => seed.finish_main(*tid, *trampoline, regs, xstate)?,
            Op::Exit { tid, code } => seed.exit(*tid, *code)?,
            Op::Release => seed.release()?,
            Op::SignalAfter { pid, sig } => {
                if let Err(e) = seed.signal(*pid, *sig) {
                    warn!(pid, sig, error = %e, "could not send a deferred signal");
                }
            }
        }
    }
    Ok(n)
}

/// The real seeds: ptrace-stopped tasks, every one killed unless released. Tasks are named
/// by their IDs in the image (their own pid namespace); each injector holds the host's.
struct LiveSeeds {
    tasks: BTreeMap<i32, Injector>,
    /// Host PIDs in the order the tasks were taken.
    order: Vec<i32>,
    released: bool,
    /// Page data by process, for lazy restores.
    sources: BTreeMap<i32, Arc<dyn PageSource + Send + Sync>>,
    /// How lazy restores are served.
    lazy: LazyOptions,
    /// Addresses to bring in first, by image PID ([`RestoreOptions::prefetch`]).
    prefetch: BTreeMap<i32, Vec<u64>>,
    /// The running lazy restores.
    handles: Vec<LazyHandle>,
}

impl LiveSeeds {
    fn new(root_host: i32, lazy: LazyOptions) -> Self {
        LiveSeeds {
            tasks: BTreeMap::new(),
            order: vec![root_host],
            released: false,
            sources: BTreeMap::new(),
            lazy,
            prefetch: BTreeMap::new(),
            handles: Vec::new(),
        }
    }
}

impl LiveSeeds {
    fn task(&mut self, tid: i32) -> Result<&mut Injector> {
        self.tasks.get_mut(&tid).ok_or_else(|| CrError::Unexpected {
            pid: tid,
            what: "the plan names a task that was not created".into(),
        })
    }

    fn host(&mut self, tid: i32) -> Result<i32> {
        Ok(self.task(tid)?.pid)
    }
}

impl Drop for LiveSeeds {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        for t in self.tasks.values() {
            let _ = sys::kill(t.pid, libc::SIGKILL);
        }
        // Newest first: a pid namespace's first process waits, as it dies, for every other
        // process of the namespace to be reaped — by this tracer first.
        let mut hosts: Vec<i32> = self.tasks.values().map(|t| t.pid).collect();
        hosts.sort_unstable_by_key(|h| std::cmp::Reverse(self.order.iter().position(|o| o == h)));
        for h in hosts {
            while let Ok(Wait::Stopped(..)) = sys::wait(h) {
                let _ = sys::cont(h, 0);
            }
        }
    }
}

impl SeedOps for LiveSeeds {
    fn syscall(&mut self, tid: i32, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.task(tid)?.syscall(nr, args)
    }

    fn write_mem(&mut self, tid: i32, addr: u64, data: &[u8]) -> Result<()> {
        self.task(tid)?.write(addr, data)
    }

    fn set_code(&mut self, tid: i32, addr: u64) {
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.code = addr;
        }
    }

    fn adopt(&mut self, parent: i32, tid: i32, code: u64) -> Result<()> {
        let host = self
            .task(parent)?
            .new_task
            .take()
            .ok_or_else(|| CrError::Unexpected {
                pid: tid,
                what: "the clone3 that made it reported no new task".into(),
            })?;
        // Auto-attached (PTRACE_O_TRACEFORK/CLONE): it starts with a SIGSTOP, or with an
        // event stop when the tracer seized its parent.
        match sys::wait(host)? {
            Wait::Stopped(libc::SIGSTOP, 0) => {}
            Wait::Stopped(_, ev) if ev == libc::PTRACE_EVENT_STOP => {}
            other => {
                let _ = sys::kill(host, libc::SIGKILL);
                return Err(CrError::Unexpected {
                    pid: tid,
                    what: format!("the new task did not stop as expected: {other:?}"),
                });
            }
        }
        self.order.push(host);
        let mut inj = Injector::new(host)?;
        inj.code = code;
        self.tasks.insert(tid, inj);
        Ok(())
    }

    fn signal(&mut self, pid: i32, sig: i32) -> Result<()> {
        let host = self.host(pid)?;
        sys::kill(host, sig).map_err(|source| CrError::Proc {
            pid,
            what: format!("sending signal {sig}"),
            source,
        })
    }

    fn serve_lazily(&mut self, pid: i32, ranges: &[(u64, u64)], runs: Vec<PageRun>) -> Result<()> {
        let source = self
            .sources
            .get(&pid)
            .cloned()
            .ok_or_else(|| CrError::Incompatible(format!("no page data for process {pid}")))?;
        let mut opts = self.lazy.clone();
        if let Some(first) = self.prefetch.get(&pid) {
            opts.prefetch = first.clone();
        }
        let mut uffd = lazy::take_uffd(self.task(pid)?)?;
        lazy::register_lazy(&mut uffd, ranges)?;
        let handle =
            LazyServer::start(uffd, runs, source, opts).map_err(|e| CrError::Unexpected {
                pid,
                what: format!("starting its lazy restore: {e}"),
            })?;
        self.handles.push(handle.with_image_pid(pid));
        Ok(())
    }

    fn exit(&mut self, tid: i32, code: i32) -> Result<()> {
        let t = self.tasks.remove(&tid).ok_or_else(|| CrError::Unexpected {
            pid: tid,
            what: "the plan names a task that was not created".into(),
        })?;
        self.order.retain(|h| *h != t.pid);
        let mut r = t.base;
        r.rip = t.code;
        r.rax = libc::SYS_exit_group as u64;
        r.orig_rax = u64::MAX;
        r.rdi = code as u64;
        sys::set_regs(t.pid, &r)?;
        sys::cont(t.pid, 0)?;
        loop {
            match sys::wait(t.pid)? {
                Wait::Exited(_) | Wait::Signaled(_) => return Ok(()),
                Wait::Stopped(..) => sys::cont(t.pid, 0)?,
            }
        }
    }

    fn write_fd(&mut self, pid: i32, fd: i32, data: &[u8]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = format!("/proc/{}/fd/{fd}", self.host(pid)?);
        std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut f| f.write_all(data))
            .map_err(|source| CrError::Proc {
                pid,
                what: format!("writing {} saved bytes through its fd {fd}", data.len()),
                source,
            })
    }

    fn set_rlimit(&mut self, pid: i32, resource: u32, soft: u64, hard: u64) -> Result<()> {
        let host = self.host(pid)?;
        sys::set_rlimit(host, resource, soft, hard).map_err(|e| {
            CrError::Incompatible(format!(
                "resource limit {resource} of process {pid} cannot be set to {soft}/{hard} \
                 here ({e}); the restorer's own hard limit is lower — raise it (ulimit -H) \
                 and retry"
            ))
        })
    }

    fn set_sigmask(&mut self, tid: i32, mask: u64) -> Result<()> {
        sys::set_sigmask(self.host(tid)?, mask)
    }

    fn finish_thread(&mut self, tid: i32, regs: &Regs, xstate: &[u8]) -> Result<()> {
        let host = self.host(tid)?;
        sys::set_xstate(host, xstate)?;
        sys::set_regs(host, &regs.to_user_regs())
    }

    fn finish_main(&mut self, tid: i32, trampoline: u64, regs: &Regs, xstate: &[u8]) -> Result<()> {
        let (host, base) = {
            let t = self.task(tid)?;
            (t.pid, t.base)
        };
        sys::set_xstate(host, xstate)?;
        // munmap the trampoline from the trampoline, stopping at the syscall's exit.
        let mut r = base;
        r.rip = trampoline;
        r.rax = libc::SYS_munmap as u64;
        r.orig_rax = u64::MAX;
        r.rdi = trampoline;
        r.rsi = TRAMPOLINE_LEN;
        sys::set_regs(host, &r)?;
        for stop in ["entry", "exit"] {
            sys::cont_syscall(host)?;
            match sys::wait(host)? {
                Wait::Stopped(libc::SIGTRAP, 0) => {}
                other => {
                    return Err(CrError::Unexpected {
                        pid: tid,
                        what: format!("expected the munmap {stop} stop, got {other:?}"),
                    });
                }
            }
        }
        let after = sys::get_regs(host)?;
        if after.rax != 0 || after.orig_rax != libc::SYS_munmap as u64 {
            return Err(CrError::Unexpected {
                pid: tid,
                what: format!(
                    "munmap of the trampoline: syscall {} returned {:#x}",
                    after.orig_rax as i64, after.rax
                ),
            });
        }
        sys::set_regs(host, &regs.to_user_regs())
    }

    fn release(&mut self) -> Result<()> {
        let mut first = None;
        for t in self.tasks.values() {
            if let Err(e) = sys::detach(t.pid, 0) {
                first.get_or_insert(e);
            }
        }
        for h in &self.handles {
            h.mark_resumed();
        }
        self.released = true;
        first.map_or(Ok(()), Err)
    }
}

/// ptrace options of seeds (inherited by the tasks forked from them): trace forks and
/// clones, kill the seeds if the restorer dies, and suspend seccomp filters so that a filter
/// installed by the plan cannot block the calls injected after it.
const SEED_OPTIONS: i32 = libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_EXITKILL
    | libc::PTRACE_O_SUSPEND_SECCOMP;

/// A stopped, traced seed with PID `pid`, tracing its forks and threads; a PID still held
/// by a zombie about to be reaped is waited for.
fn spawn_seed(pid: i32) -> Result<i32> {
    let mut tries = 0;
    loop {
        match sys::clone3_with_pid(pid) {
            Ok(Cloned::Child) => sys::seed_child_main(),
            Ok(Cloned::Parent(p)) => {
                return match sys::wait(p)? {
                    Wait::Stopped(libc::SIGSTOP, 0) => {
                        let opts = SEED_OPTIONS;
                        if let Err(e) = sys::set_options(p, opts) {
                            let _ = sys::kill(p, libc::SIGKILL);
                            return Err(e);
                        }
                        Ok(p)
                    }
                    other => {
                        let _ = sys::kill(p, libc::SIGKILL);
                        Err(CrError::Unexpected {
                            pid: p,
                            what: format!("the seed did not stop as expected: {other:?}"),
                        })
                    }
                };
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tries += 1;
                if tries >= CLONE_TRIES {
                    return Err(CrError::PidTaken { pid });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(CrError::Incompatible(format!(
                    "PID {pid} cannot be created here (kernel.pid_max is {})",
                    std::fs::read_to_string("/proc/sys/kernel/pid_max")
                        .unwrap_or_default()
                        .trim()
                )));
            }
            Err(source) => {
                return Err(CrError::Proc {
                    pid,
                    what: "clone3 with set_tid (root with CAP_CHECKPOINT_RESTORE is needed)".into(),
                    source,
                });
            }
        }
    }
}

/// Checks that the image fits this machine and its page indexes fit its mappings; the
/// processes' paths are resolved under `root` (where the seed's root is, seen from here).
fn check_compatible(dir: &Path, m: &image::Manifest, root: &Path) -> Result<()> {
    let here = kernel_release();
    if m.kernel_release != here {
        return Err(CrError::Incompatible(format!(
            "the image was taken on kernel {}, this is {here}: the vDSO must be the same",
            m.kernel_release
        )));
    }
    for p in &m.processes {
        if root == Path::new("/")
            && std::fs::read_link("/proc/self/exe").is_ok_and(|e| e == Path::new(&p.exe))
        {
            return Err(CrError::Incompatible(format!(
                "process {} runs the restoring program itself",
                p.pid
            )));
        }
        for v in &p.vmas {
            if let Backing::File {
                path,
                size,
                mtime_ns,
                ..
            }
            | Backing::SharedFile {
                path,
                size,
                mtime_ns,
                ..
            } = &v.backing
            {
                use std::os::unix::fs::MetadataExt;
                let md =
                    std::fs::metadata(root.join(path.trim_start_matches('/'))).map_err(|e| {
                        CrError::Incompatible(format!("mapped file {path} is not here: {e}"))
                    })?;
                let mt = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                if md.size() != *size || mt != *mtime_ns {
                    return Err(CrError::Incompatible(format!(
                        "mapped file {path} changed since the checkpoint (size or modification \
                         time)"
                    )));
                }
            }
        }
        check_runs(dir, p)?;
    }
    Ok(())
}

/// Every saved page must lie in a saved mapping (a run may span adjacent mappings).
fn check_runs(dir: &Path, p: &ProcessImage) -> Result<()> {
    let mut vi = p.vmas.iter().peekable();
    for r in &p.pages.runs {
        let end = r.addr + r.pages * PAGE;
        while vi.peek().is_some_and(|v| v.end <= r.addr) {
            vi.next();
        }
        let mut at = r.addr;
        let mut it = vi.clone();
        while at < end {
            match it.next() {
                Some(v) if v.start <= at && !matches!(v.backing, Backing::Vdso { .. }) => {
                    at = v.end
                }
                _ => {
                    return Err(CrError::BadImage {
                        path: dir.join(image::MANIFEST),
                        reason: format!(
                            "pages of process {} at {at:#x} lie outside its saved mappings",
                            p.pid
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The credentials of process `pid`.
fn creds_of(pid: i32) -> Result<Creds> {
    Ok(Creds::from_status(&procfs::read_text(pid, "status")?))
}

/// Restores the process tree in `dir`, with its PIDs and TIDs, as children of this process;
/// returns once it runs, every page in place.
pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<RestoreStats> {
    restore_tree(dir, opts, None, None).map(|(s, ..)| s)
}

/// Restores the process tree in `dir` into an existing seed: process `seed` (a PID of this
/// process's view), which must have the root's PID in its own pid namespace, run no code of
/// its own that matters (e.g. `pause` in a loop) and be nobody's tracee. The seed's pid,
/// mount, network and other namespaces, root and cgroup become the tree's: this is how a
/// container runtime restores a container.
pub fn restore_into(dir: &Path, seed: i32, opts: &RestoreOptions) -> Result<RestoreStats> {
    restore_tree(dir, opts, Some(seed), None).map(|(s, ..)| s)
}

/// [`restore`] (with `seed`: [`restore_into`]) that lets the processes run before their
/// memory is in: the private anonymous memory of every process is served through a
/// userfaultfd — pages the processes touch first, the rest in the background — by the
/// returned [`LazyRestore`], which must be kept until it is complete (dropping it kills
/// processes whose memory is not all in). Until then each process is also traced, with
/// `PTRACE_O_EXITKILL`, by a keeper thread of this process: should the restorer die, its
/// processes die with it instead of reading zeros where their memory was to come.
pub fn restore_lazily(
    dir: &Path,
    seed: Option<i32>,
    opts: &RestoreOptions,
    lazy: LazyOptions,
) -> Result<(RestoreStats, LazyRestore)> {
    let (stats, handles, processes) = restore_tree(dir, opts, seed, Some(lazy))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("lazy-keeper".into())
            .spawn(move || keep(&processes, &stop))
            .map_err(|source| CrError::Proc {
                pid: stats.pid,
                what: "starting the lazy restore's keeper thread".into(),
                source,
            })?
    };
    Ok((
        stats,
        LazyRestore {
            handles,
            stop,
            keeper: Some(keeper),
        },
    ))
}

/// Traces `pids` with `PTRACE_O_EXITKILL` until `stop`, passing on every signal they get,
/// then lets them go.
fn keep(pids: &[i32], stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut alive: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| sys::seize_with(p, libc::PTRACE_O_EXITKILL).is_ok())
        .collect();
    let pass_on = |pid: i32, w: Wait| -> bool {
        match w {
            Wait::Stopped(sig, 0) => sys::cont(pid, sig).is_ok(),
            Wait::Stopped(..) => sys::cont(pid, 0).is_ok(),
            Wait::Exited(_) | Wait::Signaled(_) => false,
        }
    };
    while !stop.load(Ordering::Acquire) && !alive.is_empty() {
        alive.retain(|&p| match sys::try_wait(p) {
            Ok(Some(w)) => pass_on(p, w),
            Ok(None) => true,
            Err(_) => false,
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    for p in alive {
        if sys::interrupt(p).is_err() {
            continue;
        }
        loop {
            match sys::wait(p) {
                Ok(Wait::Stopped(_, ev)) if ev == libc::PTRACE_EVENT_STOP => {
                    let _ = sys::detach(p, 0);
                    break;
                }
                Ok(w @ Wait::Stopped(..)) => {
                    if !pass_on(p, w) {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

/// The memory servers of a lazy restore, one per process, and the keeper that ties the
/// processes' lives to this one's until their memory is in.
pub struct LazyRestore {
    handles: Vec<LazyHandle>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl LazyRestore {
    /// Whether every process's memory is in (or the process went away, or failed).
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(LazyHandle::is_finished)
    }

    /// Waits until every process's memory is in; the statistics of each, or the first
    /// failure (the processes of a failed server were killed). The processes are let go.
    pub fn wait(mut self) -> std::result::Result<Vec<LazyStats>, LazyError> {
        let mut out = Vec::new();
        let mut first = None;
        for h in std::mem::take(&mut self.handles) {
            match h.wait() {
                Ok(s) => out.push(s),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        self.release_keeper();
        first.map_or(Ok(out), Err)
    }

    fn release_keeper(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

impl Drop for LazyRestore {
    fn drop(&mut self) {
        // The handles kill unfinished processes as they drop; then the keeper lets go.
        self.handles.clear();
        self.release_keeper();
    }
}

/// Seizes the existing seed `pid` (tracing its forks and clones) and stops it.
fn seize_seed(pid: i32) -> Result<i32> {
    let opts = SEED_OPTIONS;
    sys::seize_with(pid, opts)?;
    sys::interrupt(pid)?;
    loop {
        match sys::wait(pid)? {
            Wait::Stopped(_, ev) if ev == libc::PTRACE_EVENT_STOP => return Ok(pid),
            Wait::Stopped(_, _) => sys::cont(pid, 0)?,
            other => {
                return Err(CrError::Unexpected {
                    pid,
                    what: format!("the seed ended before the restore: {other:?}"),
                });
            }
        }
    }
}

fn restore_tree(
    dir: &Path,
    opts: &RestoreOptions,
    seed: Option<i32>,
    lazy: Option<LazyOptions>,
) -> Result<(RestoreStats, Vec<LazyHandle>, Vec<i32>)> {
    let t0 = Instant::now();
    let open = opts.open_pages.as_deref().unwrap_or(&image::open_local);
    let (manifest, pages) = image::read_image_with(dir, open)?;
    let root_dir = match seed {
        Some(s) => PathBuf::from(format!("/proc/{s}/root")),
        None => PathBuf::from("/"),
    };
    check_compatible(dir, &manifest, &root_dir)?;
    let mut xstates = BTreeMap::new();
    for p in &manifest.processes {
        for t in &p.threads {
            let x = from_hex(&t.xstate).ok_or_else(|| CrError::BadImage {
                path: dir.join(image::MANIFEST),
                reason: format!("the XSAVE area of thread {} is not hex", t.tid),
            })?;
            xstates.insert(t.tid, x);
        }
    }
    let stdio = if opts.inherit_stdio {
        Stdio::Inherit
    } else {
        Stdio::Paths(stdio_paths(opts)?)
    };
    debug!(secs = t0.elapsed().as_secs_f64(), "image validated");

    let root = &manifest.processes[0];
    let host = match seed {
        None => spawn_seed(root.pid)?,
        Some(s) => {
            let ns = sys::ns_pid(s)?;
            if ns != root.pid {
                return Err(CrError::Incompatible(format!(
                    "the seed is PID {ns} in its namespace, the image's root is {}",
                    root.pid
                )));
            }
            seize_seed(s)?
        }
    };
    let pages: Vec<Arc<PagesFile>> = pages.into_iter().map(Arc::new).collect();
    let lazy_on = lazy.is_some();
    let mut seeds = LiveSeeds::new(
        host,
        lazy.unwrap_or_else(|| LazyOptions {
            start: t0,
            ..LazyOptions::default()
        }),
    );
    seeds.lazy.start = t0;
    seeds.prefetch = opts.prefetch.clone();
    for (p, f) in manifest.processes.iter().zip(&pages) {
        seeds
            .sources
            .insert(p.pid, f.clone() as Arc<dyn PageSource + Send + Sync>);
    }
    let inj = Injector::new(host)?;
    inj.write(inj.code, &TRAMPOLINE_CODE)?;
    seeds.tasks.insert(root.pid, inj);
    let maps = procfs::parse_maps(&procfs::read_text(host, "maps")?).ok_or_else(|| {
        CrError::Unexpected {
            pid: host,
            what: "unreadable maps of the seed".into(),
        }
    })?;
    let layout = SeedLayout {
        maps,
        rseq: sys::get_rseq(host)?,
        creds: creds_of(host)?,
    };
    let plan = plan_restore(
        &manifest.processes,
        &manifest.zombies,
        &layout,
        &stdio,
        &xstates,
    )?;
    let tree_pages = TreePages {
        by_pid: manifest
            .processes
            .iter()
            .zip(&pages)
            .map(|(p, f)| (p.pid, (&p.pages.runs[..], &**f as &dyn PageSource)))
            .collect(),
        lazy: if lazy_on {
            manifest
                .processes
                .iter()
                .map(|p| (p.pid, lazy_ranges(p)))
                .collect()
        } else {
            BTreeMap::new()
        },
    };
    let syscalls = execute(&plan, &tree_pages, &mut seeds).map_err(|e| {
        // A process whose memory could not be served was killed by its server: that, not
        // the restore step it broke, is the reason.
        match seeds.handles.iter().find_map(LazyHandle::failure) {
            Some(reason) => CrError::Unexpected {
                pid: root.pid,
                what: format!("restoring the tree lazily: {reason} (then: {e})"),
            },
            None => e,
        }
    })?;
    let elapsed = t0.elapsed();
    let threads = manifest.processes.iter().map(|p| p.threads.len()).sum();
    let page_bytes = manifest.processes.iter().map(|p| p.pages.data_len).sum();
    info!(
        pid = host,
        processes = manifest.processes.len(),
        threads,
        syscalls,
        ?elapsed,
        lazy = lazy_on,
        "restored"
    );
    let handles = std::mem::take(&mut seeds.handles);
    let processes = manifest
        .processes
        .iter()
        .filter_map(|p| seeds.tasks.get(&p.pid).map(|t| t.pid))
        .collect();
    Ok((
        RestoreStats {
            pid: host,
            processes: manifest.processes.len(),
            threads,
            page_bytes,
            syscalls,
            elapsed,
        },
        handles,
        processes,
    ))
}

/// The absolute stdio paths of the options (output files created).
fn stdio_paths(opts: &RestoreOptions) -> Result<[String; 3]> {
    let mut stdio: [String; 3] = Default::default();
    for (i, s) in stdio.iter_mut().enumerate() {
        let p = opts.stdio[i]
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        if i > 0 {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|source| CrError::ImageIo {
                    path: p.clone(),
                    what: "creating the file for stdout/stderr".into(),
                    source,
                })?;
        }
        let abs = std::path::absolute(&p).map_err(|source| CrError::ImageIo {
            path: p.clone(),
            what: "resolving".into(),
            source,
        })?;
        *s = abs.to_string_lossy().into_owned();
    }
    Ok(stdio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cr::image::PagesInfo;
    use crate::cr::model::{Fd, FdKind, MmLayout, SigAction, ThreadState, Vma};
    use std::collections::BTreeSet;

    /// An open file in the double: what it is, told apart by a serial number.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Obj(String, u32);

    /// A recording double that answers like the kernel would for a plan that is right: it
    /// keeps every process's fd table and the tasks that exist, and refuses calls into tasks
    /// that were not created.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(i32, i64, [u64; 6])>,
        events: Vec<String>,
        writes: Vec<(i32, u64, usize)>,
        /// Task → its process.
        tasks: BTreeMap<i32, i32>,
        fds: BTreeMap<i32, BTreeMap<u64, Obj>>,
        serial: u32,
        released: bool,
        last_write: Vec<u8>,
    }

    impl Recorder {
        fn with_root(pid: i32) -> Self {
            let mut r = Recorder::default();
            r.tasks.insert(pid, pid);
            r.fds.insert(pid, [(0, Obj("restorer's".into(), 0))].into());
            r
        }
        fn table(&mut self, tid: i32) -> &mut BTreeMap<u64, Obj> {
            let pid = self.tasks[&tid];
            self.fds.get_mut(&pid).unwrap()
        }
        fn lowest(&mut self, tid: i32) -> u64 {
            let t = self.table(tid);
            (0..).find(|n| !t.contains_key(n)).unwrap()
        }
        fn new_fd(&mut self, tid: i32, what: &str) -> i64 {
            self.serial += 1;
            let o = Obj(what.into(), self.serial);
            let fd = self.lowest(tid);
            self.table(tid).insert(fd, o);
            fd as i64
        }
    }

    impl SeedOps for Recorder {
        fn syscall(&mut self, tid: i32, nr: i64, a: [u64; 6]) -> Result<i64> {
            assert!(
                self.tasks.contains_key(&tid),
                "call into task {tid} before it exists"
            );
            assert!(!self.released, "call after the release");
            self.calls.push((tid, nr, a));
            let ebadf = -(libc::EBADF as i64);
            Ok(match nr {
                libc::SYS_mmap => a[0] as i64,
                libc::SYS_mremap => a[4] as i64,
                libc::SYS_openat => self.new_fd(tid, "file"),
                libc::SYS_eventfd2 => self.new_fd(tid, "eventfd"),
                libc::SYS_memfd_create => self.new_fd(tid, "memfd"),
                libc::SYS_epoll_create1 => self.new_fd(tid, "epoll"),
                libc::SYS_pidfd_open => self.new_fd(tid, &format!("pidfd {}", a[0])),
                libc::SYS_pipe2 => {
                    self.serial += 1;
                    let n = self.serial;
                    for end in ["pipe r", "pipe w"] {
                        let fd = self.lowest(tid);
                        self.table(tid).insert(fd, Obj(end.into(), n));
                    }
                    0
                }
                libc::SYS_pidfd_getfd => {
                    let Some(Obj(what, _)) = self.table(tid).get(&a[0]).cloned() else {
                        return Ok(ebadf);
                    };
                    let owner: i32 = what.strip_prefix("pidfd ").unwrap().parse().unwrap();
                    let Some(o) = self.fds[&owner].get(&a[1]).cloned() else {
                        return Ok(ebadf);
                    };
                    let fd = self.lowest(tid);
                    self.table(tid).insert(fd, o);
                    fd as i64
                }
                libc::SYS_dup3 => {
                    let Some(o) = self.table(tid).get(&a[0]).cloned() else {
                        return Ok(ebadf);
                    };
                    self.table(tid).insert(a[1], o);
                    a[1] as i64
                }
                libc::SYS_close => match self.table(tid).remove(&a[0]) {
                    Some(_) => 0,
                    None => ebadf,
                },
                libc::SYS_close_range => {
                    self.table(tid).retain(|fd, _| *fd < a[0] || *fd > a[1]);
                    0
                }
                libc::SYS_fcntl | libc::SYS_epoll_ctl | libc::SYS_lseek => {
                    if !self.table(tid).contains_key(&a[0]) {
                        ebadf
                    } else if nr == libc::SYS_lseek {
                        a[1] as i64
                    } else {
                        0
                    }
                }
                libc::SYS_setsid => self.tasks[&tid] as i64,
                libc::SYS_clone3 => {
                    // set_tid[0], written with the clone_args at offset 128.
                    i32::from_ne_bytes(self.last_write[128..132].try_into().unwrap()) as i64
                }
                _ => 0,
            })
        }
        fn write_mem(&mut self, tid: i32, addr: u64, data: &[u8]) -> Result<()> {
            assert!(self.tasks.contains_key(&tid));
            self.writes.push((tid, addr, data.len()));
            self.last_write = data.to_vec();
            Ok(())
        }
        fn set_code(&mut self, _: i32, _: u64) {}
        fn adopt(&mut self, parent: i32, tid: i32, _: u64) -> Result<()> {
            let (called, nr, _) = *self.calls.last().unwrap();
            assert_eq!((called, nr), (parent, libc::SYS_clone3));
            self.events.push(format!("adopt {tid}"));
            let parent_pid = self.tasks[&parent];
            // The clone_args were written just before: their flags tell a thread.
            let flags = u64::from_ne_bytes(self.last_write[..8].try_into().unwrap());
            let is_thread = flags & libc::CLONE_THREAD as u64 != 0;
            if is_thread {
                self.tasks.insert(tid, parent_pid);
            } else {
                self.tasks.insert(tid, tid);
                let copy = self.fds[&parent_pid].clone();
                self.fds.insert(tid, copy);
            }
            Ok(())
        }
        fn signal(&mut self, pid: i32, sig: i32) -> Result<()> {
            assert!(self.released);
            self.events.push(format!("signal {pid} {sig}"));
            Ok(())
        }
        fn serve_lazily(
            &mut self,
            pid: i32,
            ranges: &[(u64, u64)],
            runs: Vec<PageRun>,
        ) -> Result<()> {
            self.events.push(format!("lazy {pid} {ranges:x?} {runs:?}"));
            Ok(())
        }
        fn exit(&mut self, tid: i32, code: i32) -> Result<()> {
            self.events.push(format!("exit {tid} {code}"));
            self.tasks.remove(&tid);
            Ok(())
        }
        fn write_fd(&mut self, pid: i32, fd: i32, _: &[u8]) -> Result<()> {
            let o = self.fds[&pid].get(&(fd as u64)).cloned();
            assert_eq!(
                o.map(|o| o.0),
                Some("pipe w".to_string()),
                "fill through a write end"
            );
            self.events.push(format!("fill {pid}:{fd}"));
            Ok(())
        }
        fn set_rlimit(&mut self, pid: i32, _: u32, _: u64, _: u64) -> Result<()> {
            assert!(self.tasks.contains_key(&pid));
            Ok(())
        }
        fn set_sigmask(&mut self, tid: i32, _: u64) -> Result<()> {
            self.events.push(format!("sigmask {tid}"));
            Ok(())
        }
        fn finish_thread(&mut self, tid: i32, _: &Regs, _: &[u8]) -> Result<()> {
            self.events.push(format!("finish thread {tid}"));
            Ok(())
        }
        fn finish_main(&mut self, tid: i32, _: u64, _: &Regs, _: &[u8]) -> Result<()> {
            self.events.push(format!("finish main {tid}"));
            Ok(())
        }
        fn release(&mut self) -> Result<()> {
            self.events.push("release".into());
            self.released = true;
            Ok(())
        }
    }

    struct NoPages;
    impl PageSource for NoPages {
        fn read_at(&self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(7);
            Ok(())
        }
    }

    fn map(start: u64, end: u64, path: &str) -> MapEntry {
        MapEntry {
            start,
            end,
            perms: "r-xp".into(),
            offset: 0,
            inode: 0,
            path: path.into(),
            vm_flags: vec![],
        }
    }

    fn vma(start: u64, end: u64, backing: Backing) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            growsdown: false,
            advice: vec![],
            backing,
        }
    }

    fn thread(tid: i32) -> ThreadState {
        ThreadState {
            tid,
            comm: "prog".into(),
            regs: Regs::default(),
            xstate: String::new(),
            sigmask: 0,
            pending: vec![],
            altstack: (0, libc::SS_DISABLE, 0),
            clear_child_tid: 0,
            robust_list: (0x600100, 24),
            rseq: Some((0x600200, 32, 0x53053053)),
            seccomp: vec![],
        }
    }

    fn image(pid: i32, ppid: i32) -> ProcessImage {
        let vdso = |n: &str| Backing::Vdso { name: n.into() };
        ProcessImage {
            pid,
            ppid,
            pgid: 1,
            sid: 1,
            exit_signal: libc::SIGCHLD,
            comm: "prog".into(),
            exe: "/bin/prog".into(),
            cwd: "/".into(),
            umask: 0o22,
            personality: 0,
            no_new_privs: false,
            uids: [0; 4],
            gids: [0; 4],
            groups: vec![],
            caps: Caps::default(),
            rlimits: vec![(7, 1024, 4096)],
            itimers: vec![],
            mm: MmLayout::default(),
            vmas: vec![
                vma(
                    0x400000,
                    0x402000,
                    Backing::File {
                        path: "/bin/prog".into(),
                        offset: 0,
                        size: 1,
                        mtime_ns: 0,
                    },
                ),
                vma(0x600000, 0x700000, Backing::Anon { name: None }),
                // The image's vDSO overlaps the seed's: moved through a free place.
                vma(0x7f00_0000_1000, 0x7f00_0000_5000, vdso("[vvar]")),
                vma(0x7f00_0000_5000, 0x7f00_0000_7000, vdso("[vvar_vclock]")),
                vma(0x7f00_0000_7000, 0x7f00_0000_9000, vdso("[vdso]")),
            ],
            fds: vec![
                Fd {
                    fd: 1,
                    kind: FdKind::Stdio {
                        was: "pipe:[1]".into(),
                    },
                },
                Fd {
                    fd: 5,
                    kind: FdKind::Path {
                        path: "/data".into(),
                        flags: libc::O_RDONLY as u32,
                        pos: 42,
                        seekable: true,
                    },
                },
            ],
            sigactions: vec![SigAction {
                sig: 10,
                handler: 0x401000,
                flags: 0,
                restorer: 0,
                mask: 0,
            }],
            shared_pending: vec![],
            threads: vec![thread(pid)],
            deferred_signals: vec![],
            pages: PagesInfo {
                file: crate::cr::image::pages_file_name(pid),
                data_len: 8192,
                block_size: crate::cr::image::PAGES_CHECK_BLOCK,
                block_crc32: vec![0],
                runs: vec![],
            },
            shmem: vec![],
            posix_timers: vec![],
        }
    }

    fn seed() -> SeedLayout {
        SeedLayout {
            maps: vec![
                map(0x500000, 0x510000, "/usr/bin/restorer"),
                map(0x7f00_0000_0000, 0x7f00_0000_4000, "[vvar]"),
                map(0x7f00_0000_4000, 0x7f00_0000_6000, "[vvar_vclock]"),
                map(0x7f00_0000_6000, 0x7f00_0000_8000, "[vdso]"),
                map(0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000, "[vsyscall]"),
            ],
            rseq: Some((0x510000, 32, 0x53053053)),
            creds: Creds::default(),
        }
    }

    fn xstates(images: &[ProcessImage]) -> BTreeMap<i32, Vec<u8>> {
        images
            .iter()
            .flat_map(|p| p.threads.iter().map(|t| (t.tid, vec![0u8; 8])))
            .collect()
    }

    fn paths(p: [&str; 3]) -> Stdio {
        Stdio::Paths(p.map(String::from))
    }

    fn run(images: &[ProcessImage], stdio: &Stdio) -> Recorder {
        let plan = plan_restore(images, &[], &seed(), stdio, &xstates(images)).unwrap();
        let mut rec = Recorder::with_root(images[0].pid);
        let runs = [PageRun {
            addr: 0x600000,
            pages: 2,
            offset: 0,
        }];
        let pages = TreePages {
            by_pid: images
                .iter()
                .map(|p| (p.pid, (&runs[..], &NoPages as &dyn PageSource)))
                .collect(),
            lazy: BTreeMap::new(),
        };
        let n = execute(&plan, &pages, &mut rec).unwrap();
        assert_eq!(n, rec.calls.len());
        assert!(rec.released);
        rec
    }

    #[test]
    fn one_process_is_restored_in_a_safe_order_with_consistent_results() {
        let rec = run(&[image(100, 0)], &paths(["/dev/null", "/out", "/dev/null"]));
        let pos = |nr: i64, f: &dyn Fn(&[u64; 6]) -> bool| {
            rec.calls
                .iter()
                .position(|(_, n, a)| *n == nr && f(a))
                .unwrap_or_else(|| panic!("no call {nr}"))
        };
        // The seed's rseq goes first, before any memory it points into is unmapped.
        assert_eq!(rec.calls[0].1, libc::SYS_rseq);
        assert_eq!(rec.calls[0].2[2], 1, "unregister");
        let tramp = pos(libc::SYS_mmap, &|a| a[1] == TRAMPOLINE_LEN);
        let unmap_seed = pos(libc::SYS_munmap, &|a| a[0] == 0x500000);
        let vdso_moves: Vec<usize> = (0..rec.calls.len())
            .filter(|i| rec.calls[*i].1 == libc::SYS_mremap)
            .collect();
        assert_eq!(vdso_moves.len(), 6, "overlapping vDSO moved in two steps");
        assert_eq!(rec.calls[vdso_moves[5]].2[4], 0x7f00_0000_7000);
        let anon = pos(libc::SYS_mmap, &|a| a[0] == 0x600000);
        let mm_map = pos(libc::SYS_prctl, &|a| a[0] == libc::PR_SET_MM as u64);
        let files = pos(libc::SYS_lseek, &|a| a[0] == 5 && a[1] == 42);
        assert!(tramp < unmap_seed && unmap_seed < vdso_moves[0] && vdso_moves[5] < anon);
        assert!(anon < mm_map && mm_map < files);
        // No munmap of [vsyscall] or of the seed's vDSO.
        assert!(!rec.calls.iter().any(|(_, n, a)| *n == libc::SYS_munmap
            && (a[0] >= 0x7f00_0000_0000 && a[0] < 0x7f00_0000_8000 || a[0] > TASK_SIZE)));
        // Pages were written, and rseq registered again at the image's address.
        assert!(rec.writes.contains(&(100, 0x600000, 8192)));
        assert!(
            rec.calls
                .iter()
                .any(|(_, n, a)| *n == libc::SYS_rseq && a[0] == 0x600200 && a[2] == 0)
        );
        // fds 1 and 5 end up where they were, nothing else open.
        assert_eq!(
            rec.fds[&100].keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 5])
        );
        assert_eq!(
            rec.events.iter().rev().take(2).collect::<Vec<_>>(),
            ["release", "finish main 100"]
        );
    }

    /// A root with a second thread and a child (its own session) sharing a pipe with
    /// buffered bytes, a dup'ed file, an eventfd watched by an epoll instance.
    fn tree() -> Vec<ProcessImage> {
        let mut root = image(100, 0);
        root.sid = 100;
        root.pgid = 100;
        root.threads.push(thread(102));
        root.threads[1].pending = vec![{
            let mut si = vec![0u8; sys::SIGINFO_LEN];
            si[..4].copy_from_slice(&libc::SIGUSR2.to_ne_bytes());
            crate::cr::model::to_hex(&si)
        }];
        root.threads[1].sigmask = 1 << (libc::SIGUSR2 - 1);
        root.fds = vec![
            Fd {
                fd: 0,
                kind: FdKind::Pipe {
                    inode: 9,
                    write: true,
                    flags: 0,
                    size: 65536,
                    data: "6869".into(),
                },
            },
            Fd {
                fd: 3,
                kind: FdKind::EventFd { count: 5, flags: 0 },
            },
            Fd {
                fd: 4,
                kind: FdKind::Epoll {
                    flags: 0,
                    watches: vec![(3, 1, 77)],
                },
            },
            Fd {
                fd: 5,
                kind: FdKind::Path {
                    path: "/data".into(),
                    flags: libc::O_RDONLY as u32,
                    pos: 0,
                    seekable: true,
                },
            },
            Fd {
                fd: 6,
                kind: FdKind::Dup {
                    pid: 100,
                    fd: 5,
                    cloexec: true,
                },
            },
        ];
        let mut child = image(101, 100);
        child.sid = 101;
        child.pgid = 101;
        child.deferred_signals = vec![libc::SIGTERM];
        child.fds = vec![
            Fd {
                fd: 0,
                kind: FdKind::Pipe {
                    inode: 9,
                    write: false,
                    flags: libc::O_NONBLOCK as u32,
                    size: 65536,
                    data: String::new(),
                },
            },
            Fd {
                fd: 1,
                kind: FdKind::Dup {
                    pid: 100,
                    fd: 5,
                    cloexec: false,
                },
            },
        ];
        vec![root, child]
    }

    #[test]
    fn a_tree_gets_its_processes_threads_and_shared_files_back() {
        let rec = run(&tree(), &paths(["/dev/null"; 3]));
        let idx = |e: &str| {
            rec.events
                .iter()
                .position(|x| x == e)
                .unwrap_or_else(|| panic!("no {e} in {:?}", rec.events))
        };
        // The child is forked (from the root's seed) before the thread, which comes after
        // the files; every thread is finished before the release, main threads last.
        assert!(idx("adopt 101") < idx("adopt 102"));
        assert!(idx("fill 100:0") < idx("adopt 102"));
        assert!(idx("finish thread 102") < idx("finish main 100"));
        assert!(idx("finish main 101") < idx("release"));
        assert!(idx("sigmask 102") < idx("finish thread 102"));
        // The child made its own session right after its fork, before anything else.
        let child_calls: Vec<i64> = rec
            .calls
            .iter()
            .filter(|(t, ..)| *t == 101)
            .map(|(_, n, _)| *n)
            .collect();
        assert_eq!(child_calls[0], libc::SYS_setsid);
        assert_eq!(child_calls[1], libc::SYS_close_range);
        // The pipe: the root's fd 0 is its write end, the child's fd 0 the read end of the
        // same pipe; the parked end is gone.
        let root = &rec.fds[&100];
        let child = &rec.fds[&101];
        assert_eq!(root[&0].0, "pipe w");
        assert_eq!(child[&0].0, "pipe r");
        assert_eq!(root[&0].1, child[&0].1, "one pipe");
        assert_eq!(root.keys().copied().collect::<Vec<_>>(), [0, 3, 4, 5, 6]);
        assert_eq!(child.keys().copied().collect::<Vec<_>>(), [0, 1]);
        // Shared open files are the same object in both processes.
        assert_eq!(root[&5], root[&6]);
        assert_eq!(root[&5], child[&1]);
        assert_eq!(root[&3].0, "eventfd");
        assert_eq!(root[&4].0, "epoll");
        // The epoll instance watches the eventfd, once both exist.
        let ctl = rec
            .calls
            .iter()
            .position(|(t, n, a)| *t == 100 && *n == libc::SYS_epoll_ctl && a[2] == 3)
            .expect("epoll_ctl");
        let ev = rec
            .calls
            .iter()
            .position(|(t, n, _)| *t == 100 && *n == libc::SYS_eventfd2)
            .unwrap();
        assert!(ev < ctl);
        // The blocked pending signal is queued to its thread; the deferred one comes after.
        assert!(rec.calls.iter().any(|(t, n, a)| *t == 102
            && *n == libc::SYS_rt_tgsigqueueinfo
            && a[1] == 102
            && a[2] == libc::SIGUSR2 as u64));
    }

    #[test]
    fn a_zombie_is_forked_from_its_parent_and_exits_before_the_parent_changes() {
        let imgs = tree();
        let zombies = [Zombie {
            pid: 103,
            ppid: 101,
            exit_code: 3,
        }];
        let plan = plan_restore(
            &imgs,
            &zombies,
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&imgs),
        )
        .unwrap();
        let mut rec = Recorder::with_root(100);
        let runs: [PageRun; 0] = [];
        let pages = TreePages {
            by_pid: imgs
                .iter()
                .map(|p| (p.pid, (&runs[..], &NoPages as &dyn PageSource)))
                .collect(),
            lazy: BTreeMap::new(),
        };
        execute(&plan, &pages, &mut rec).unwrap();
        let at = |e: &str| rec.events.iter().position(|x| x == e).unwrap();
        assert!(at("adopt 101") < at("adopt 103") && at("adopt 103") < at("exit 103 3"));
        // The parent's seed forked it before being reshaped.
        let reshape = rec
            .calls
            .iter()
            .position(|(t, n, _)| *t == 101 && *n == libc::SYS_close_range)
            .unwrap();
        let fork = rec
            .calls
            .iter()
            .position(|(t, n, _)| *t == 101 && *n == libc::SYS_clone3)
            .unwrap();
        assert!(fork < reshape);
    }

    #[test]
    fn the_plan_ends_with_deferred_signals_after_the_release() {
        let ops = plan_restore(
            &tree(),
            &[],
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&tree()),
        )
        .unwrap();
        let release = ops.iter().position(|o| *o == Op::Release).unwrap();
        assert_eq!(
            ops[release + 1..],
            [Op::SignalAfter {
                pid: 101,
                sig: libc::SIGTERM
            }]
        );
    }

    #[test]
    fn other_credentials_are_set_per_thread_before_the_mask() {
        let mut imgs = tree();
        imgs[0].uids = [1000; 4];
        imgs[0].gids = [1000; 4];
        imgs[0].caps.bounding = 0xff;
        let ops = plan_restore(
            &imgs,
            &[],
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&imgs),
        )
        .unwrap();
        let of = |tid: i32, nr: i64| {
            ops.iter().position(
                |o| matches!(o, Op::Syscall { tid: t, call } if *t == tid && call.nr == nr),
            )
        };
        for tid in [100, 102] {
            let uid = of(tid, libc::SYS_setresuid).expect("setresuid in every thread");
            let gid = of(tid, libc::SYS_setresgid).unwrap();
            let cap = of(tid, libc::SYS_capset).unwrap();
            let mask = ops
                .iter()
                .position(|o| {
                    *o == Op::SetSigmask {
                        tid,
                        mask: imgs[0].threads[if tid == 100 { 0 } else { 1 }].sigmask,
                    }
                })
                .unwrap();
            assert!(gid < uid && uid < cap && cap < mask);
        }
        assert_eq!(
            of(101, libc::SYS_setresuid),
            None,
            "the child has the restorer's"
        );
    }

    #[test]
    fn inherited_stdio_keeps_the_seeds_fds_and_closes_the_rest() {
        let mut img = image(100, 0);
        // fd 1 was the container's log; fd 0 is a file; fd 2 was not open.
        img.fds.insert(
            0,
            Fd {
                fd: 0,
                kind: FdKind::Path {
                    path: "/in".into(),
                    flags: 0,
                    pos: 0,
                    seekable: true,
                },
            },
        );
        let mut rec = Recorder::with_root(100);
        for fd in 0..3 {
            rec.fds
                .get_mut(&100)
                .unwrap()
                .insert(fd, Obj(format!("seed's {fd}"), 0));
        }
        let imgs = [img];
        let plan = plan_restore(&imgs, &[], &seed(), &Stdio::Inherit, &xstates(&imgs)).unwrap();
        let runs: [PageRun; 0] = [];
        let pages = TreePages {
            by_pid: [(100, (&runs[..], &NoPages as &dyn PageSource))].into(),
            lazy: BTreeMap::new(),
        };
        execute(&plan, &pages, &mut rec).unwrap();
        let fds = &rec.fds[&100];
        assert_eq!(fds.keys().copied().collect::<Vec<_>>(), [0, 1, 5]);
        assert_eq!(
            fds[&1].0, "seed's 1",
            "the seed's fd 1 is the process's stdout"
        );
        assert_eq!(fds[&0].0, "file");
    }

    #[test]
    fn a_different_vdso_is_refused() {
        let mut s = seed();
        s.maps = vec![map(0x7f00_0010_0000, 0x7f00_0010_2000, "[vdso]")];
        s.rseq = None;
        let imgs = [image(100, 0)];
        let err =
            plan_restore(&imgs, &[], &s, &paths(["/dev/null"; 3]), &xstates(&imgs)).unwrap_err();
        assert!(err.to_string().contains("vDSO"), "{err}");
    }

    #[test]
    fn runs_are_split_at_the_edges_of_lazy_ranges() {
        let run = |addr: u64, pages: u64, offset: u64| PageRun {
            addr,
            pages,
            offset,
        };
        // Pages 0x1000..0x6000 at offset 0; lazy range 0x2000..0x4000.
        let (eager, lazy) = split_runs(&[run(0x1000, 5, 0)], &[(0x2000, 0x2000)]);
        assert_eq!(eager, [run(0x1000, 1, 0), run(0x4000, 2, 0x3000)]);
        assert_eq!(lazy, [run(0x2000, 2, 0x1000)]);
        // Wholly inside, wholly outside, and no ranges at all.
        let (eager, lazy) = split_runs(
            &[run(0x2000, 1, 0), run(0x8000, 1, 0x1000)],
            &[(0x2000, 0x2000)],
        );
        assert_eq!(
            (eager, lazy),
            (vec![run(0x8000, 1, 0x1000)], vec![run(0x2000, 1, 0)])
        );
        let (eager, lazy) = split_runs(&[run(0x2000, 3, 0)], &[]);
        assert_eq!((eager.len(), lazy.len()), (1, 0));
    }

    #[test]
    fn a_lazy_restore_serves_anonymous_memory_before_rseq_touches_it() {
        let imgs = [image(100, 0)];
        let plan = plan_restore(
            &imgs,
            &[],
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&imgs),
        )
        .unwrap();
        let mut rec = Recorder::with_root(100);
        let runs = [
            PageRun {
                addr: 0x400000,
                pages: 1,
                offset: 0,
            },
            PageRun {
                addr: 0x600000,
                pages: 2,
                offset: 0x1000,
            },
        ];
        let pages = TreePages {
            by_pid: [(100, (&runs[..], &NoPages as &dyn PageSource))].into(),
            lazy: [(100, lazy_ranges(&imgs[0]))].into(),
        };
        execute(&plan, &pages, &mut rec).unwrap();
        // Only the file mapping's changed page is written; the anonymous pages are served.
        assert_eq!(
            rec.writes
                .iter()
                .filter(|(_, a, _)| *a == 0x400000 || *a == 0x600000)
                .collect::<Vec<_>>(),
            [&(100, 0x400000, 4096)]
        );
        let lazy = rec
            .events
            .iter()
            .find(|e| e.starts_with("lazy 100"))
            .expect("served lazily");
        assert!(
            lazy.contains("600000") && lazy.contains("offset: 4096"),
            "{lazy}"
        );
        assert!(!lazy.contains("400000"), "{lazy}");
        let rseq = rec
            .calls
            .iter()
            .position(|(_, n, a)| *n == libc::SYS_rseq && a[2] == 0)
            .unwrap();
        assert!(rec.calls.len() > rseq);
    }

    #[test]
    fn gaps() {
        assert_eq!(find_gap(&[], 0x2000, 0x10000), Some(0x10000));
        assert_eq!(
            find_gap(&[(0x10000, 0x20000), (0x21000, 0x30000)], 0x2000, 0x10000),
            Some(0x30000)
        );
        assert_eq!(
            find_gap(&[(0x10000, 0x20000)], 0x1000, 0x10000),
            Some(0x20000)
        );
    }

    /// Shared memory: the root owns one object (mapped shared and private), its child maps
    /// it shared too, and a shared file mapping.
    #[test]
    fn shared_memory_is_made_once_staged_and_taken_by_every_process_that_maps_it() {
        use crate::cr::model::ShmemObject;
        let mut imgs = tree();
        let shm = |owner, shared, last| Backing::Shmem {
            id: 3,
            owner,
            offset: 0x1000,
            shared,
            last,
        };
        imgs[0].shmem = vec![ShmemObject {
            id: 3,
            size: 0x5000,
            name: "dev/zero".into(),
            seals: libc::F_SEAL_SEAL as u32,
        }];
        imgs[0]
            .vmas
            .insert(2, vma(0x800000, 0x804000, shm(100, true, false)));
        imgs[0]
            .vmas
            .insert(3, vma(0x804000, 0x808000, shm(100, false, false)));
        imgs[0].vmas.insert(
            0,
            vma(0x1_0000_0000, 0x1_0000_5000, Backing::ShmemStage { id: 3 }),
        );
        imgs[0].vmas.sort_by_key(|v| v.start);
        imgs[1]
            .vmas
            .insert(2, vma(0x900000, 0x904000, shm(100, true, true)));
        imgs[1].vmas.insert(
            3,
            vma(
                0xa00000,
                0xa01000,
                Backing::SharedFile {
                    path: "/dev/shm/x".into(),
                    offset: 0,
                    size: 4096,
                    mtime_ns: 0,
                    writable: true,
                },
            ),
        );
        let rec = run(&imgs, &paths(["/dev/null"; 3]));
        let at = |tid: i32, nr: i64, f: &dyn Fn(&[u64; 6]) -> bool| {
            rec.calls
                .iter()
                .position(|(t, n, a)| *t == tid && *n == nr && f(a))
                .unwrap_or_else(|| panic!("no call {nr} in {tid}"))
        };
        let held = shmem_fd(3);
        let create = at(100, libc::SYS_memfd_create, &|_| true);
        let stage = at(100, libc::SYS_mmap, &|a| a[0] == 0x1_0000_0000);
        let keep = at(100, libc::SYS_dup3, &|a| a[1] == held);
        let shared = at(100, libc::SYS_mmap, &|a| a[0] == 0x800000);
        let private = at(100, libc::SYS_mmap, &|a| a[0] == 0x804000);
        let unstage = at(100, libc::SYS_munmap, &|a| a[0] == 0x1_0000_0000);
        assert!(create < stage && stage < keep && keep < shared && shared < unstage);
        // Sealing was not allowed: no MFD_ALLOW_SEALING, no F_ADD_SEALS.
        assert_eq!(rec.calls[create].2[1], libc::MFD_CLOEXEC as u64);
        assert_eq!(
            rec.calls[at(100, libc::SYS_ftruncate, &|_| true)].2[1],
            0x5000
        );
        let (_, _, s) = rec.calls[shared];
        assert_eq!(
            (s[3], s[4], s[5]),
            ((libc::MAP_SHARED | libc::MAP_FIXED) as u64, held, 0x1000)
        );
        let (_, _, p) = rec.calls[private];
        assert_eq!(p[3], (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64);
        // The child takes it from the root (fd 0: the pidfd, fd 1: the object).
        let pidfd = at(101, libc::SYS_pidfd_open, &|a| a[0] == 100);
        let got = at(101, libc::SYS_pidfd_getfd, &|a| a[1] == held);
        let child_map = at(101, libc::SYS_mmap, &|a| a[0] == 0x900000);
        assert!(unstage < pidfd && pidfd < got && got < child_map);
        assert_eq!(rec.calls[child_map].2[4], 1);
        // Then, mapped by all, the root's fd is closed; no fd is left over.
        let close = at(100, libc::SYS_close, &|a| a[0] == held);
        assert!(child_map < close);
        assert!(!rec.fds[&100].contains_key(&held));
        // The staged pages were written between the stage mapping and its munmap.
        let file = at(101, libc::SYS_openat, &|a| {
            a[2] == (libc::O_RDWR | libc::O_CLOEXEC) as u64
        });
        let fmap = at(101, libc::SYS_mmap, &|a| a[0] == 0xa00000);
        assert_eq!(
            rec.calls[fmap].2[3],
            (libc::MAP_SHARED | libc::MAP_FIXED) as u64
        );
        assert!(file < fmap);
    }

    #[test]
    fn posix_timers_come_back_with_their_ids_once_every_thread_exists() {
        use crate::cr::model::PosixTimer;
        let mut imgs = tree();
        let timer = |id, notify, tid, value_ns| PosixTimer {
            id,
            clock: libc::CLOCK_MONOTONIC,
            notify,
            signal: libc::SIGRTMIN() + 1,
            value: 0x5eed,
            tid,
            interval_ns: 20_000_000,
            value_ns,
        };
        imgs[0].posix_timers = vec![
            timer(1, libc::SIGEV_SIGNAL, 0, 5_000_000),
            timer(
                2,
                libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID,
                102,
                1_500_000_000,
            ),
            timer(4, libc::SIGEV_NONE, 0, 0),
        ];
        let ops = plan_restore(
            &imgs,
            &[],
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&imgs),
        )
        .unwrap();
        let calls: Vec<(usize, &Call)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Op::Syscall { tid: 100, call } => Some((i, call)),
                _ => None,
            })
            .collect();
        let of = |nr: i64| calls.iter().filter(|(_, c)| c.nr == nr).collect::<Vec<_>>();
        let prctl: Vec<_> = of(libc::SYS_prctl)
            .into_iter()
            .filter(|(_, c)| c.args[0] == PR_TIMER_CREATE_RESTORE_IDS)
            .collect();
        let creates = of(libc::SYS_timer_create);
        let sets = of(libc::SYS_timer_settime);
        assert_eq!((prctl.len(), creates.len(), sets.len()), (2, 3, 2));
        assert_eq!((prctl[0].1.args[1], prctl[1].1.args[1]), (1, 0));
        assert!(prctl[0].0 < creates[0].0 && sets[1].0 < prctl[1].0);
        // The thread the second timer signals exists before.
        let thread = ops
            .iter()
            .position(|o| matches!(o, Op::Clone { child: 102, .. }))
            .unwrap();
        assert!(thread < creates[0].0);
        // The sigevent and the ID it asks for.
        let ev = &creates[1].1.data.as_ref().unwrap().1;
        assert_eq!(u64::from_ne_bytes(ev[..8].try_into().unwrap()), 0x5eed);
        assert_eq!(i32::from_ne_bytes(ev[16..20].try_into().unwrap()), 102);
        assert_eq!(i32::from_ne_bytes(ev[64..68].try_into().unwrap()), 2);
        // Armed with the remaining time and the period; the disarmed one is not.
        let it = &sets[1].1.data.as_ref().unwrap().1;
        let w = |i: usize| u64::from_ne_bytes(it[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((w(0), w(1), w(2), w(3)), (0, 20_000_000, 1, 500_000_000));
        assert_eq!(sets[1].1.args[0], 2);
    }

    #[test]
    fn seccomp_filters_are_the_last_calls_of_each_thread_oldest_first() {
        let mut imgs = tree();
        let filter = |k: u8| crate::cr::model::to_hex(&[6, 0, 0, 0, k, 0, 0xff, 0x7f]);
        for t in &mut imgs[0].threads {
            t.seccomp = vec![filter(1), filter(2)];
        }
        imgs[0].no_new_privs = true;
        let ops = plan_restore(
            &imgs,
            &[],
            &seed(),
            &paths(["/dev/null"; 3]),
            &xstates(&imgs),
        )
        .unwrap();
        for tid in [100, 102] {
            let mine: Vec<&Call> = ops
                .iter()
                .filter_map(|o| match o {
                    Op::Syscall { tid: t, call } if *t == tid => Some(call),
                    _ => None,
                })
                .collect();
            let n = mine.len();
            assert_eq!(mine[n - 2].nr, libc::SYS_seccomp, "thread {tid}");
            assert_eq!(mine[n - 1].nr, libc::SYS_seccomp);
            let prog = |c: &Call| c.data.as_ref().unwrap().1.clone();
            assert_eq!(prog(mine[n - 2])[..2], 1u16.to_ne_bytes());
            assert_eq!(prog(mine[n - 2])[16 + 4], 1, "oldest first");
            assert_eq!(prog(mine[n - 1])[16 + 4], 2);
            // After the no_new_privs and the queued signals of the thread.
            let nnp = mine
                .iter()
                .position(|c| {
                    c.nr == libc::SYS_prctl && c.args[0] == libc::PR_SET_NO_NEW_PRIVS as u64
                })
                .unwrap();
            assert!(nnp < n - 2);
        }
    }
}
