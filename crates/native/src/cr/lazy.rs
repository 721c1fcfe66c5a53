//! Lazy restore: a restored process runs before its memory is all there; its missing pages
//! are filled on demand and in the background through a userfaultfd.
//!
//! How the parts fit (the restore drives them, in this order):
//!
//! 1. [`take_uffd`]: with the seed ptrace-stopped and its mappings re-created (but their
//!    pages not written), a `userfaultfd(O_CLOEXEC|O_NONBLOCK)` is injected into it, taken
//!    into this process (`pidfd_open` + `pidfd_getfd`) and closed in the seed, then
//!    handshaken with the features lazy restore needs ([`REQUIRED_FEATURES`]: fork, mremap,
//!    munmap and madvise events — without them a moved, forked or dropped range would read
//!    zeros instead of its data). The seed must still have the privilege to create a
//!    userfaultfd that also handles kernel-mode faults (root, or `CAP_SYS_PTRACE`).
//! 2. [`register_lazy`]: the ranges to be served lazily (private anonymous mappings; the
//!    caller picks them) are registered for MISSING faults from this process. Nothing may
//!    touch them until the server runs: a fault with no server blocks.
//! 3. [`LazyServer::start`]: the server's threads start, and the caller resumes the process
//!    (then calls [`LazyHandle::mark_resumed`]).
//! 4. [`LazyHandle::wait`]: returns when every page of the image is in the process (or the
//!    process has gone), with [`LazyStats`]; or with the [`LazyError`] for which the process
//!    was killed.
//!
//! The server (one thread) owns the userfaultfd(s). Demand faults come first: a fault is
//! mapped to its page, and the aligned block around it ([`LazyOptions::fault_block`], 64 KiB)
//! is filled — image pages with `UFFDIO_COPY` from the [`PageSource`], pages not in the image
//! with `UFFDIO_ZEROPAGE`. A reader thread reads the rest of the image ahead, in big blocks
//! ([`LazyOptions::fill_block`], 2 MiB): first the blocks around
//! [`LazyOptions::prefetch`] (a working set recorded by an earlier restore; the first
//! [`LazyOptions::prefetch_first`] bytes of them are copied in by [`LazyServer::start`]
//! itself, before the process runs), then everything in address order; the server copies them in slices ([`LazyOptions::fill_slice`],
//! 64 KiB) and reads the userfaultfd between two, so a fault waits for at most one slice.
//! Pages already there (`EEXIST`) count as filled; when the address space is changing
//! (`EAGAIN`) the pending events are read and applied first: `madvise` (REMOVE) and `munmap` (UNMAP) ranges are never filled afterwards
//! (a later fault there gets a zero page, as the kernel would give), `mremap` (REMAP) moves
//! the pages still to fill with the mapping, and a `fork` (FORK) hands over the child's own
//! userfaultfd, which is then served like the parent's (the child's missing pages are the
//! parent's at the fork, filled again in the child: a forked child costs its own copy of the
//! pages it still lacked).
//!
//! Failure never means zeros: a page that cannot be read after [`LazyOptions::read_retries`]
//! retries (corrupt data — an [`io::ErrorKind::InvalidData`] error of the source, such as a
//! checksum mismatch — and a source's own time-out, [`io::ErrorKind::TimedOut`], at once,
//! without retries), a read that takes longer than
//! [`LazyOptions::read_timeout`] (checked by a watchdog thread), an unexpected userfaultfd
//! error, or a panic of the server kills the process and its descendants (SIGKILL, through
//! the pidfd) *before* the userfaultfd is closed, and [`LazyHandle::wait`] returns the reason.
//! Dropping the [`LazyHandle`] before the restore is complete does the same. The process
//! exiting (or exec'ing) mid-restore ends the server cleanly ([`LazyOutcome::Gone`]). What
//! this module cannot cover: the process that holds the userfaultfd (this one) dying — the
//! kernel then unregisters the ranges and the restored process reads zeros; the caller must
//! tie the restored Pod's life to it (kill the Pod's cgroup when the agent goes).
//!
//! Why `UFFDIO_COPY` into the private anonymous mappings, not memfd + `UFFDIO_CONTINUE`: a
//! minor-fault scheme would back the memory with a memfd whose page cache the fill writes,
//! and every page the process then touches still takes a (minor) fault to be mapped — about
//! 1.6 µs each here — while a page this server has copied costs nothing more. A demand fault
//! here fills a 64 KiB block for one round trip (p50 22–60 µs in the benchmark, i.e. 1.4–3.7
//! µs per page) and the background fill runs at 2–3.5 GB/s (about 1.2–2 µs per page, with no
//! fault afterwards).
//! The memfd would also turn private anonymous memory into a private mapping of a file, which
//! a later checkpoint and `/proc/PID/maps` would see. Shared memory (shmem/memfd objects) is
//! restored eagerly.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::image::{PAGE, PageRun};
use super::restore::PageSource;
use super::sys::{self, Injector, TRAMPOLINE_CODE, Wait};
use super::uffd::{self, Event, EventFd, Fill, PageBuf, Pidfd, Uffd, feature, ioctl};
use super::{CrError, Result};

/// The userfaultfd features lazy restore cannot do without: fork, mremap, munmap and madvise
/// events (without them such changes silently unregister ranges or drop pages, and the
/// process would read zeros instead of its data).
pub const REQUIRED_FEATURES: u64 =
    feature::EVENT_FORK | feature::EVENT_REMAP | feature::EVENT_REMOVE | feature::EVENT_UNMAP;
/// Features asked for when the kernel has them: MISSING registration of shmem ranges.
pub const OPTIONAL_FEATURES: u64 = feature::MISSING_SHMEM;

/// Takes a userfaultfd of a ptrace-stopped tracee whose injector's `code` holds
/// `syscall; int3`: `userfaultfd(O_CLOEXEC|O_NONBLOCK)` injected, the fd taken with
/// `pidfd_open` + `pidfd_getfd` and closed in the tracee, the `UFFDIO_API` handshake done
/// with [`REQUIRED_FEATURES`] (an error if the kernel lacks one) and [`OPTIONAL_FEATURES`].
/// The returned [`Uffd`] holds the tracee's pidfd as its owner.
pub fn take_uffd(inj: &mut Injector) -> Result<Uffd> {
    let pid = inj.pid;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = inj.call(
        "userfaultfd(O_CLOEXEC|O_NONBLOCK)",
        libc::SYS_userfaultfd,
        [flags, 0, 0, 0, 0, 0],
    )? as i32;
    let taken = uffd::pidfd_open(pid).and_then(|p| uffd::pidfd_getfd(&p, fd).map(|f| (p, f)));
    let closed = inj.call(
        &format!("close({fd}) of its userfaultfd"),
        libc::SYS_close,
        [fd as u64, 0, 0, 0, 0, 0],
    );
    let (pidfd, ours) = taken.map_err(|source| CrError::Proc {
        pid,
        what: format!("taking its userfaultfd (fd {fd}) with pidfd_open + pidfd_getfd"),
        source,
    })?;
    closed?;
    let mut uffd = Uffd::from_fd(ours).with_owner(pidfd);
    let info = uffd
        .api(REQUIRED_FEATURES | OPTIONAL_FEATURES)
        .map_err(|source| CrError::Proc {
            pid,
            what: "UFFDIO_API on its userfaultfd".into(),
            source,
        })?;
    let missing = REQUIRED_FEATURES & !info.granted;
    if missing != 0 {
        return Err(CrError::Incompatible(format!(
            "this kernel's userfaultfd lacks features {missing:#x} (fork/mremap/munmap/madvise \
             events), without which a lazily restored process could read zeros"
        )));
    }
    debug!(
        pid,
        granted = info.granted,
        available = info.available,
        "took a userfaultfd"
    );
    Ok(uffd)
}

/// [`take_uffd`] from a running process that this thread does not trace yet: seize it,
/// interrupt it, inject at its instruction pointer (3 bytes of code patched and put back,
/// registers restored), detach. Only the thread `pid` is stopped; signals that arrive
/// meanwhile are sent again. For tests and tools; a restore uses [`take_uffd`] on its seed.
pub fn attach_and_take_uffd(pid: i32) -> Result<Uffd> {
    sys::seize(pid)?;
    let mut deferred = Vec::new();
    let result = (|| {
        sys::interrupt(pid)?;
        loop {
            match sys::wait(pid)? {
                Wait::Stopped(_, ev) if ev == libc::PTRACE_EVENT_STOP => break,
                Wait::Stopped(sig, 0) => deferred.push(sig),
                Wait::Stopped(..) => {}
                other => {
                    return Err(CrError::Unexpected {
                        pid,
                        what: format!("ended while being stopped: {other:?}"),
                    });
                }
            }
            sys::cont(pid, 0)?;
        }
        let mut inj = Injector::new(pid)?;
        let regs = inj.base;
        let mut code = [0u8; 3];
        inj.read(inj.code, &mut code)?;
        inj.write(inj.code, &TRAMPOLINE_CODE)?;
        let taken = take_uffd(&mut inj);
        let put_back = inj
            .write(regs.rip, &code)
            .and_then(|()| sys::set_regs(pid, &regs));
        deferred.append(&mut inj.deferred);
        let uffd = taken?;
        put_back?;
        Ok(uffd)
    })();
    let detached = sys::detach(pid, 0);
    for s in deferred {
        let _ = sys::kill(pid, s);
    }
    let uffd = result?;
    detached?;
    Ok(uffd)
}

/// Registers `ranges` (`(start, len)`, page-aligned, each inside mappings the kernel can
/// serve: private anonymous, or shmem with `MISSING_SHMEM`) for MISSING faults, and checks
/// that they accept `UFFDIO_COPY`, `UFFDIO_ZEROPAGE` and `UFFDIO_WAKE`.
pub fn register_lazy(uffd: &mut Uffd, ranges: &[(u64, u64)]) -> Result<()> {
    let pid = uffd.owner().map_or(0, Pidfd::pid);
    let needed = ioctl::COPY | ioctl::ZEROPAGE | ioctl::WAKE;
    for &(start, len) in ranges {
        let got = uffd
            .register(start, len, uffd::MODE_MISSING)
            .map_err(|source| CrError::Proc {
                pid,
                what: format!(
                    "registering {start:#x}+{len:#x} for lazy restore (UFFDIO_REGISTER \
                     MISSING; it must be private anonymous memory)"
                ),
                source,
            })?;
        if got & needed != needed {
            return Err(CrError::Incompatible(format!(
                "the userfaultfd range {start:#x}+{len:#x} accepts ioctls {got:#x}, not \
                 COPY, ZEROPAGE and WAKE"
            )));
        }
    }
    Ok(())
}

/// How the server works.
#[derive(Debug, Clone)]
pub struct LazyOptions {
    /// Bytes filled around a demand fault: the aligned block that holds it (a power of two,
    /// at least a page; 64 KiB). A fault round trip costs ~13 µs here, so more than a page.
    pub fault_block: u64,
    /// Bytes per background read from the page source (a multiple of the page; 2 MiB).
    pub fill_block: u64,
    /// Bytes per background `UFFDIO_COPY` (a multiple of the page; 64 KiB): between two,
    /// pending faults are served, so a fault waits for at most one such copy.
    pub fill_slice: u64,
    /// Addresses (as in the image) whose fault blocks are read first, in this order: the
    /// [`LazyStats::working_set`] of an earlier restore. Addresses outside the image are
    /// ignored.
    pub prefetch: Vec<u64>,
    /// Bytes of those blocks copied in by [`LazyServer::start`] itself, before it returns —
    /// so before the process runs, which then finds them in place instead of racing the
    /// fill for them (32 MiB, a few milliseconds); the rest of them come first in the
    /// background.
    pub prefetch_first: u64,
    /// The longest one read from the page source may take before the restore fails (10 s).
    pub read_timeout: Duration,
    /// How many times a failed read is tried again (with 10 ms, 20 ms... pauses) before the
    /// restore fails (2).
    pub read_retries: u32,
    /// How many faulted blocks [`LazyStats::working_set`] records (4096).
    pub record_faults: usize,
    /// Background blocks read ahead of the copies (4).
    pub read_ahead: usize,
    /// When the restore started: the origin of [`LazyStats::time_to_resume`] and
    /// [`LazyStats::fully_resident`] (default: when the options were made).
    pub start: Instant,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            fault_block: 64 << 10,
            fill_block: 2 << 20,
            fill_slice: 64 << 10,
            prefetch: Vec::new(),
            prefetch_first: 32 << 20,
            read_timeout: Duration::from_secs(10),
            read_retries: 2,
            record_faults: 4096,
            read_ahead: 4,
            start: Instant::now(),
        }
    }
}

/// How a lazy restore ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyOutcome {
    /// Every page of the image is in the process (and in any child it forked meanwhile).
    Complete,
    /// The process's address space went away first (it exited, was killed, or exec'd).
    Gone,
}

/// What a lazy restore did.
#[derive(Debug, Clone)]
pub struct LazyStats {
    /// The restored process.
    pub pid: i32,
    /// Its PID in the image (set by a tree restore; else the same as `pid`).
    pub image_pid: i32,
    /// How it ended.
    pub outcome: LazyOutcome,
    /// From [`LazyOptions::start`] to [`LazyHandle::mark_resumed`] (or to the server's start
    /// if that was never called).
    pub time_to_resume: Duration,
    /// From [`LazyOptions::start`] until every image page was in the process (not counting
    /// forked children); `None` if it went away first.
    pub fully_resident: Option<Duration>,
    /// From the server's start to its end.
    pub elapsed: Duration,
    /// Page faults served (messages read, including ones on pages that were filled or removed
    /// meanwhile).
    pub demand_faults: u64,
    /// Median time from reading a fault to having filled its block.
    pub fault_p50: Duration,
    /// 99th percentile of the same.
    pub fault_p99: Duration,
    /// Longest of the same.
    pub fault_max: Duration,
    /// Image bytes copied for faults.
    pub demand_bytes: u64,
    /// Bytes of zero pages mapped for faults (pages not in the image, or dropped).
    pub zero_bytes: u64,
    /// Image bytes copied in the background.
    pub background_bytes: u64,
    /// Of those, the bytes of the [`LazyOptions::prefetch`] blocks (copied first).
    pub prefetch_bytes: u64,
    /// Image bytes never filled because the process dropped or unmapped them first.
    pub removed_bytes: u64,
    /// Forks served (children that got their own userfaultfd).
    pub forks: u64,
    /// The first [`LazyOptions::record_faults`] faulted blocks, in order: the image address
    /// of each block's start (blocks without image data are left out). Store it with the
    /// snapshot and pass it as [`LazyOptions::prefetch`] next time.
    pub working_set: Vec<u64>,
}

/// Why a lazy restore failed. In every case the process (and its descendants) was killed
/// before the userfaultfd was closed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The arguments cannot be served (page runs not sorted or overlapping, no owner...).
    #[error("lazy restore of process {pid} cannot start: {reason}; the process was killed")]
    Invalid {
        /// The process.
        pid: i32,
        /// What is wrong.
        reason: String,
    },
    /// Page data could not be read.
    #[error(
        "lazy restore of process {pid} failed, the process was killed: page data at offset \
         {offset:#x} (for address {addr:#x}) could not be read after {tries} tries: {source}"
    )]
    Source {
        /// The process.
        pid: i32,
        /// The image address of the first page asked for.
        addr: u64,
        /// Its offset in the page data.
        offset: u64,
        /// Tries made.
        tries: u32,
        /// The last error.
        source: io::Error,
    },
    /// A read of page data took too long.
    #[error(
        "lazy restore of process {pid} failed, the process was killed: reading page data at \
         offset {offset:#x} took longer than {timeout:?}"
    )]
    Stalled {
        /// The process.
        pid: i32,
        /// The offset being read.
        offset: u64,
        /// The limit ([`LazyOptions::read_timeout`]).
        timeout: Duration,
    },
    /// A userfaultfd operation failed in a way that leaves pages unfillable.
    #[error("lazy restore of process {pid} failed, the process was killed: {what}: {source}")]
    Uffd {
        /// The process.
        pid: i32,
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The server thread panicked.
    #[error(
        "lazy restore of process {pid} failed, the process was killed: the server thread \
         panicked: {message}"
    )]
    Panicked {
        /// The process.
        pid: i32,
        /// The panic's message.
        message: String,
    },
    /// The restore was stopped before it was complete.
    #[error("lazy restore of process {pid} stopped, the process was killed: {reason}")]
    Aborted {
        /// The process.
        pid: i32,
        /// Why.
        reason: String,
    },
}

impl LazyError {
    /// The process the restore was for.
    pub fn pid(&self) -> i32 {
        match self {
            LazyError::Invalid { pid, .. }
            | LazyError::Source { pid, .. }
            | LazyError::Stalled { pid, .. }
            | LazyError::Uffd { pid, .. }
            | LazyError::Panicked { pid, .. }
            | LazyError::Aborted { pid, .. } => *pid,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The image: page runs sorted by address, each page numbered (its index) in that order.

struct Image {
    runs: Vec<PageRun>,
    /// The index of each run's first page.
    base: Vec<u64>,
    total: u64,
}

impl Image {
    fn new(mut runs: Vec<PageRun>) -> std::result::Result<Image, String> {
        runs.retain(|r| r.pages > 0);
        runs.sort_by_key(|r| r.addr);
        let mut base = Vec::with_capacity(runs.len());
        let mut total = 0u64;
        let mut end = 0u64;
        for r in &runs {
            if !r.addr.is_multiple_of(PAGE) {
                return Err(format!("page run at {:#x} is not page-aligned", r.addr));
            }
            if r.addr < end {
                return Err(format!("page runs overlap at {:#x}", r.addr));
            }
            end = r.addr + r.pages * PAGE;
            base.push(total);
            total += r.pages;
        }
        Ok(Image { runs, base, total })
    }

    fn run_of(&self, idx: u64) -> usize {
        self.base.partition_point(|&b| b <= idx) - 1
    }

    fn offset(&self, idx: u64) -> u64 {
        let r = self.run_of(idx);
        self.runs[r].offset + (idx - self.base[r]) * PAGE
    }

    fn image_addr(&self, idx: u64) -> u64 {
        let r = self.run_of(idx);
        self.runs[r].addr + (idx - self.base[r]) * PAGE
    }

    /// One past the last index of the run holding `idx`.
    fn run_end(&self, idx: u64) -> u64 {
        let r = self.run_of(idx);
        self.base[r] + self.runs[r].pages
    }

    /// The index of the page at image address `addr`.
    fn index_at(&self, addr: u64) -> Option<u64> {
        let r = self
            .runs
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)?;
        let run = &self.runs[r];
        (addr < run.addr + run.pages * PAGE).then(|| self.base[r] + (addr - run.addr) / PAGE)
    }

    /// The read order: the fault blocks around `prefetch` first, then every run in address
    /// order cut at `fill`-aligned addresses; index ranges that never cross a run. Also how
    /// many of the ranges, at the front, are prefetched blocks.
    fn order(&self, prefetch: &[u64], fault: u64, fill: u64) -> (Vec<(u64, u64)>, usize) {
        let mut out = Vec::new();
        for &a in prefetch {
            let Some(idx) = self.index_at(a) else {
                continue;
            };
            let r = self.run_of(idx);
            let lo_addr = (a & !(fault - 1)).max(self.runs[r].addr);
            let lo = self.base[r] + (lo_addr - self.runs[r].addr) / PAGE;
            let hi = (lo + (fault - (lo_addr & (fault - 1))) / PAGE).min(self.run_end(idx));
            out.push((lo, hi));
        }
        let prefetched = out.len();
        for (r, run) in self.runs.iter().enumerate() {
            let end = run.addr + run.pages * PAGE;
            let mut a = run.addr;
            while a < end {
                let next = ((a / fill) + 1) * fill;
                let b = next.min(end);
                let lo = self.base[r] + (a - run.addr) / PAGE;
                out.push((lo, lo + (b - a) / PAGE));
                a = b;
            }
        }
        (out, prefetched)
    }
}

/// A bit per image page: still needed by some address space (read by the reader thread).
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(n: u64) -> Bits {
        let words = n.div_ceil(64) as usize;
        Bits((0..words).map(|_| AtomicU64::new(u64::MAX)).collect())
    }

    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
    }

    fn clear(&self, i: u64) {
        self.0[(i / 64) as usize].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// One address space being served: where each image page is now, and what became of it.

const MISSING: u8 = 0;
const FILLED: u8 = 1;
const REMOVED: u8 = 2;
const UNMAPPED: u8 = 3;

/// `pages` image pages from index `idx`, now at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    addr: u64,
    idx: u64,
    pages: u64,
}

impl Seg {
    fn end(&self) -> u64 {
        self.addr + self.pages * PAGE
    }
}

#[derive(Clone)]
struct Layout {
    /// Sorted by address.
    segs: Vec<Seg>,
    /// Positions in `segs`, sorted by index.
    by_idx: Vec<usize>,
    /// Per image page: MISSING, FILLED, REMOVED or UNMAPPED.
    state: Vec<u8>,
    missing: u64,
    /// Registered ranges `[start, end)` as far as this server knows.
    regs: Vec<(u64, u64)>,
}

impl Layout {
    fn new(img: &Image, regs: Vec<(u64, u64)>) -> Layout {
        let segs = img
            .runs
            .iter()
            .zip(&img.base)
            .map(|(r, &b)| Seg {
                addr: r.addr,
                idx: b,
                pages: r.pages,
            })
            .collect();
        let mut l = Layout {
            segs,
            by_idx: Vec::new(),
            state: vec![MISSING; img.total as usize],
            missing: img.total,
            regs,
        };
        l.reindex();
        l
    }

    fn reindex(&mut self) {
        self.segs.sort_by_key(|s| s.addr);
        let mut by: Vec<usize> = (0..self.segs.len()).collect();
        by.sort_by_key(|&i| self.segs[i].idx);
        self.by_idx = by;
    }

    fn seg_at(&self, addr: u64) -> Option<Seg> {
        let i = self
            .segs
            .partition_point(|s| s.addr <= addr)
            .checked_sub(1)?;
        let s = self.segs[i];
        (addr < s.end()).then_some(s)
    }

    fn seg_of_idx(&self, idx: u64) -> Option<Seg> {
        let i = self
            .by_idx
            .partition_point(|&k| self.segs[k].idx <= idx)
            .checked_sub(1)?;
        let s = self.segs[self.by_idx[i]];
        (idx < s.idx + s.pages).then_some(s)
    }

    fn reg_at(&self, addr: u64) -> Option<(u64, u64)> {
        self.regs
            .iter()
            .copied()
            .find(|&(s, e)| s <= addr && addr < e)
    }

    /// Marks a MISSING page; whether it was missing.
    fn set(&mut self, idx: u64, st: u8) -> bool {
        let p = &mut self.state[idx as usize];
        if *p == MISSING {
            *p = st;
            self.missing -= 1;
            true
        } else {
            false
        }
    }

    /// Takes the parts of the segments inside `[start, end)` out.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Seg> {
        let mut kept = Vec::with_capacity(self.segs.len() + 2);
        let mut out = Vec::new();
        for s in &self.segs {
            let (lo, hi) = (s.addr.max(start), s.end().min(end));
            if lo >= hi {
                kept.push(*s);
                continue;
            }
            let piece = |a: u64, b: u64| Seg {
                addr: a,
                idx: s.idx + (a - s.addr) / PAGE,
                pages: (b - a) / PAGE,
            };
            if s.addr < lo {
                kept.push(piece(s.addr, lo));
            }
            out.push(piece(lo, hi));
            if hi < s.end() {
                kept.push(piece(hi, s.end()));
            }
        }
        self.segs = kept;
        self.reindex();
        out
    }

    fn cut_regs(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut kept = Vec::new();
        let mut out = Vec::new();
        for &(s, e) in &self.regs {
            let (lo, hi) = (s.max(start), e.min(end));
            if lo >= hi {
                kept.push((s, e));
                continue;
            }
            if s < lo {
                kept.push((s, lo));
            }
            out.push((lo, hi));
            if hi < e {
                kept.push((hi, e));
            }
        }
        self.regs = kept;
        out
    }

    /// `madvise` dropped `[start, end)` (or `munmap` removed it, with `unmap`): its missing
    /// pages are never to be filled. Returns the indices that stopped being missing.
    fn remove(&mut self, start: u64, end: u64, unmap: bool) -> Vec<u64> {
        let mut done = Vec::new();
        let pieces = if unmap {
            self.cut_regs(start, end);
            self.cut(start, end)
        } else {
            self.segs
                .iter()
                .filter_map(|s| {
                    let (lo, hi) = (s.addr.max(start), s.end().min(end));
                    (lo < hi).then(|| Seg {
                        addr: lo,
                        idx: s.idx + (lo - s.addr) / PAGE,
                        pages: (hi - lo) / PAGE,
                    })
                })
                .collect()
        };
        let st = if unmap { UNMAPPED } else { REMOVED };
        for p in pieces {
            for i in p.idx..p.idx + p.pages {
                if self.set(i, st) {
                    done.push(i);
                }
            }
        }
        done
    }

    /// `mremap` moved `len` bytes from `from` to `to`.
    fn remap(&mut self, from: u64, to: u64, len: u64) -> Vec<u64> {
        let moved = self.cut(from, from + len);
        let moved_regs = self.cut_regs(from, from + len);
        // Whatever was at the destination is gone (its UNMAP event normally came first).
        let done = self.remove(to, to + len, true);
        for mut s in moved {
            s.addr = s.addr - from + to;
            self.segs.push(s);
        }
        for (s, e) in moved_regs {
            self.regs.push((s - from + to, e - from + to));
        }
        self.reindex();
        done
    }
}

struct Space {
    id: u64,
    uffd: Uffd,
    map: Layout,
    main: bool,
    gone: bool,
}

// ---------------------------------------------------------------------------------------
// What the threads share.

const RUNNING: u8 = 0;
const FAILING: u8 = 1;
const FINISHING: u8 = 2;

/// A read in progress, for the watchdog: start (ns since `Shared::epoch`, +1; 0 = idle).
#[derive(Default)]
struct Slot {
    since: AtomicU64,
    offset: AtomicU64,
}

struct Shared {
    pid: i32,
    pidfd: Pidfd,
    epoch: Instant,
    phase: AtomicU8,
    result: Mutex<Option<std::result::Result<LazyStats, LazyError>>>,
    done: AtomicBool,
    cond: Condvar,
    resumed: Mutex<Option<Instant>>,
    server_exited: AtomicBool,
    timeout: Duration,
    /// Slot 0: the server's own reads (faults, sweep); slot 1: the reader thread's.
    slots: [Slot; 2],
}

impl Shared {
    fn stopping(&self) -> bool {
        self.phase.load(Ordering::Acquire) == FAILING
    }

    fn publish(&self, r: std::result::Result<LazyStats, LazyError>) {
        let mut g = self.result.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(r);
        self.done.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    fn wait_done(&self) {
        let mut g = self.result.lock().unwrap_or_else(|e| e.into_inner());
        while !self.done.load(Ordering::Acquire) {
            g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Kills the process tree, waits (a while) for the process to be gone, and publishes
    /// `err` — unless another thread is already failing or finishing: then it waits for
    /// that to be published. Either way, when this returns nothing depends on the
    /// userfaultfd any more.
    fn fail(&self, err: LazyError) {
        if self
            .phase
            .compare_exchange(RUNNING, FAILING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.wait_done();
            return;
        }
        warn!(pid = self.pid, "{err}");
        kill_tree(&self.pidfd);
        if !self.pidfd.wait_exited(Duration::from_secs(5)) {
            warn!(pid = self.pid, "still not gone 5 s after SIGKILL");
        }
        self.publish(Err(err));
    }

    /// Publishes the stats unless the restore is failing.
    fn finish(&self, stats: LazyStats) {
        if self
            .phase
            .compare_exchange(RUNNING, FINISHING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.wait_done();
            return;
        }
        self.publish(Ok(stats));
    }

    fn begin_read(&self, slot: usize, offset: u64) {
        let s = &self.slots[slot];
        s.offset.store(offset, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        s.since.store(now, Ordering::Release);
    }

    fn end_read(&self, slot: usize) {
        self.slots[slot].since.store(0, Ordering::Release);
    }
}

/// SIGKILL to every descendant of the process (found through `/proc/PID/task/*/children`),
/// then to the process itself.
fn kill_tree(root: &Pidfd) {
    let mut stack = vec![root.pid()];
    let mut seen = HashSet::new();
    let mut descendants = Vec::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        if p != root.pid() {
            descendants.push(p);
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            if let Ok(s) = std::fs::read_to_string(path) {
                stack.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    for p in descendants {
        if let Ok(fd) = uffd::pidfd_open(p) {
            let _ = fd.send_signal(libc::SIGKILL);
        }
    }
    let _ = root.send_signal(libc::SIGKILL);
}

fn watchdog(shared: Arc<Shared>) {
    let interval =
        (shared.timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut g = shared.result.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if shared.done.load(Ordering::Acquire) {
            return;
        }
        g = shared
            .cond
            .wait_timeout(g, interval)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if shared.done.load(Ordering::Acquire) {
            return;
        }
        let now = shared.epoch.elapsed().as_nanos() as u64 + 1;
        for s in &shared.slots {
            let since = s.since.load(Ordering::Acquire);
            if since != 0 && Duration::from_nanos(now.saturating_sub(since)) > shared.timeout {
                drop(g);
                shared.fail(LazyError::Stalled {
                    pid: shared.pid,
                    offset: s.offset.load(Ordering::Relaxed),
                    timeout: shared.timeout,
                });
                return;
            }
        }
    }
}

/// Who reads page data: the watchdog slot it is watched in, and whether a process waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The server, for a page fault (a process is blocked on it).
    Fault,
    /// The server, filling what the reader thread left.
    Sweep,
    /// The reader thread, ahead of the server.
    Ahead,
}

impl Reading {
    fn slot(self) -> usize {
        match self {
            Reading::Fault | Reading::Sweep => 0,
            Reading::Ahead => 1,
        }
    }
}

/// Reads `buf.len()` bytes of image page data from page `idx`, trying again on errors;
/// watched by the watchdog.
fn read_pages(
    source: &(dyn PageSource + Send + Sync),
    img: &Image,
    shared: &Shared,
    reading: Reading,
    retries: u32,
    idx: u64,
    buf: &mut [u8],
) -> std::result::Result<(), LazyError> {
    let offset = img.offset(idx);
    let mut last = None;
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(10 << (attempt - 1).min(8)));
        }
        shared.begin_read(reading.slot(), offset);
        let r = match reading {
            Reading::Fault => source.read_for_fault(offset, buf),
            Reading::Sweep | Reading::Ahead => source.read_at(offset, buf),
        };
        shared.end_read(reading.slot());
        if shared.stopping() {
            return Err(stopped(shared.pid));
        }
        match r {
            Ok(()) => return Ok(()),
            // Corrupt data (a checksum mismatch) does not get better, and a read that already
            // waited its whole time out (a source with a time limit of its own) is not tried
            // again either: no retry.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LazyError::Source {
                    pid: shared.pid,
                    addr: img.image_addr(idx),
                    offset,
                    tries: attempt + 1,
                    source: e,
                });
            }
            Err(e) => {
                debug!(pid = shared.pid, offset, attempt, "page read failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(LazyError::Source {
        pid: shared.pid,
        addr: img.image_addr(idx),
        offset,
        tries: retries + 1,
        source: last.unwrap_or_else(|| io::Error::other("no read was tried")),
    })
}

fn stopped(pid: i32) -> LazyError {
    LazyError::Aborted {
        pid,
        reason: "stopped by another failure".into(),
    }
}

/// A block read ahead by the reader thread: `pages` image pages from index `idx`.
struct Block {
    idx: u64,
    pages: u64,
    buf: PageBuf,
    /// Read for a prefetched (working set) block.
    prefetch: bool,
}

struct Reader {
    img: Arc<Image>,
    source: Arc<dyn PageSource + Send + Sync>,
    shared: Arc<Shared>,
    need: Arc<Bits>,
    order: Vec<(u64, u64)>,
    /// How many ranges at the front of `order` are prefetched blocks.
    prefetched: usize,
    fill_pages: u64,
    retries: u32,
    tx: SyncSender<std::result::Result<Block, LazyError>>,
    pool: Receiver<PageBuf>,
    notify: Arc<EventFd>,
}

impl Reader {
    fn run(self) {
        let mut sent = vec![0u64; self.img.total.div_ceil(64) as usize];
        let is_sent = |sent: &[u64], i: u64| sent[(i / 64) as usize] & (1 << (i % 64)) != 0;
        for (n, &(lo, hi)) in self.order.iter().enumerate() {
            let mut i = lo;
            while i < hi {
                if self.shared.stopping() {
                    return;
                }
                if !self.need.get(i) || is_sent(&sent, i) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < hi && j - i < self.fill_pages && self.need.get(j) && !is_sent(&sent, j) {
                    j += 1;
                }
                let Ok(mut buf) = self.pool.recv() else {
                    return;
                };
                let bytes = ((j - i) * PAGE) as usize;
                let r = read_pages(
                    &*self.source,
                    &self.img,
                    &self.shared,
                    Reading::Ahead,
                    self.retries,
                    i,
                    &mut buf.as_mut_slice()[..bytes],
                );
                let block = r.map(|()| Block {
                    idx: i,
                    pages: j - i,
                    buf,
                    prefetch: n < self.prefetched,
                });
                let failed = block.is_err();
                if self.tx.send(block).is_err() || failed {
                    self.notify.notify();
                    return;
                }
                self.notify.notify();
                for k in i..j {
                    sent[(k / 64) as usize] |= 1 << (k % 64);
                }
                i = j;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server.

/// Starts lazy restores; see the [module documentation](self).
pub struct LazyServer;

/// A running lazy restore. Dropping it before [`LazyHandle::wait`] returned kills the
/// process if the restore is not complete (a process whose server is gone could only read
/// zeros).
pub struct LazyHandle {
    shared: Arc<Shared>,
    image_pid: i32,
    server: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    faults: u64,
    demand_bytes: u64,
    zero_bytes: u64,
    background_bytes: u64,
    prefetch_bytes: u64,
    removed_pages: u64,
    forks: u64,
    latencies_ns: Vec<u64>,
}

/// Why pages are copied (what their bytes count as).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// For a fault.
    Demand,
    /// Ahead of the process.
    Background,
    /// Ahead of the process, as part of the prefetched working set (counted as background
    /// too).
    Prefetch,
}

/// How a fill step ended.
#[derive(PartialEq, Eq)]
enum Step {
    Ok,
    /// Events are pending: read them and try again.
    Again,
    /// The address space is gone.
    Gone,
}

struct Server {
    img: Arc<Image>,
    source: Arc<dyn PageSource + Send + Sync>,
    shared: Arc<Shared>,
    need: Arc<Bits>,
    spaces: Vec<Space>,
    next_id: u64,
    faults: VecDeque<(u64, u64, Instant)>,
    fault_block: u64,
    fill_pages: u64,
    slice_pages: u64,
    retries: u32,
    record: usize,
    start: Instant,
    started: Instant,
    rx: Receiver<std::result::Result<Block, LazyError>>,
    pool: mpsc::Sender<PageBuf>,
    notify: Arc<EventFd>,
    fault_buf: PageBuf,
    sweep_buf: Option<PageBuf>,
    events: Vec<Event>,
    c: Counters,
    working_set: Vec<u64>,
    ws_seen: HashSet<u64>,
    fully_resident: Option<Duration>,
    main_gone: bool,
}

impl LazyServer {
    /// Starts serving `uffd` (from [`take_uffd`], its ranges registered with
    /// [`register_lazy`]): the image pages `runs` (addresses as in the process, offsets into
    /// `source`), every other page of the registered ranges as zeros. Returns at once; the
    /// caller then resumes the process. If the arguments are unusable the process is killed
    /// and the error says why.
    pub fn start(
        mut uffd: Uffd,
        runs: Vec<PageRun>,
        source: Arc<dyn PageSource + Send + Sync>,
        opts: LazyOptions,
    ) -> std::result::Result<LazyHandle, LazyError> {
        let Some(pidfd) = uffd.take_owner() else {
            return Err(LazyError::Invalid {
                pid: 0,
                reason: "the userfaultfd has no owner process (use take_uffd)".into(),
            });
        };
        let pid = pidfd.pid();
        let invalid = |reason: String| {
            kill_tree(&pidfd);
            pidfd.wait_exited(Duration::from_secs(5));
            LazyError::Invalid { pid, reason }
        };
        let fb = opts.fault_block;
        if !fb.is_power_of_two() || fb < PAGE {
            return Err(invalid(format!(
                "fault block {fb} is not a power of two >= a page"
            )));
        }
        for (what, n) in [
            ("fill block", opts.fill_block),
            ("fill slice", opts.fill_slice),
        ] {
            if n < PAGE || !n.is_multiple_of(PAGE) {
                return Err(invalid(format!("{what} {n} is not whole pages")));
            }
        }
        let img = match Image::new(runs) {
            Ok(i) => Arc::new(i),
            Err(e) => return Err(invalid(e)),
        };
        let notify = match EventFd::new() {
            Ok(e) => Arc::new(e),
            Err(e) => return Err(invalid(format!("eventfd: {e}"))),
        };
        let shared = Arc::new(Shared {
            pid,
            pidfd,
            epoch: Instant::now(),
            phase: AtomicU8::new(RUNNING),
            result: Mutex::new(None),
            done: AtomicBool::new(false),
            cond: Condvar::new(),
            resumed: Mutex::new(None),
            server_exited: AtomicBool::new(false),
            timeout: opts.read_timeout,
            slots: Default::default(),
        });
        let need = Arc::new(Bits::new(img.total));
        let depth = opts.read_ahead.max(1);
        let fill_pages = opts.fill_block / PAGE;
        let (tx, rx) = mpsc::sync_channel(depth);
        let (pool_tx, pool_rx) = mpsc::channel();
        for _ in 0..depth + 1 {
            let _ = pool_tx.send(PageBuf::new(opts.fill_block));
        }
        let (order, prefetched) = img.order(&opts.prefetch, fb, opts.fill_block);
        let pages = img.total;
        let map = Layout::new(&img, uffd.registered().to_vec());
        let server = Server {
            img: img.clone(),
            source: source.clone(),
            shared: shared.clone(),
            need: need.clone(),
            spaces: vec![Space {
                id: 0,
                uffd,
                map,
                main: true,
                gone: false,
            }],
            next_id: 1,
            faults: VecDeque::new(),
            fault_block: fb,
            fill_pages,
            slice_pages: (opts.fill_slice / PAGE).max(1),
            retries: opts.read_retries,
            record: opts.record_faults,
            start: opts.start,
            started: Instant::now(),
            rx,
            pool: pool_tx,
            notify: notify.clone(),
            fault_buf: PageBuf::new(fb),
            sweep_buf: None,
            events: Vec::new(),
            c: Counters::default(),
            working_set: Vec::new(),
            ws_seen: HashSet::new(),
            fully_resident: None,
            main_gone: false,
        };
        let first: Vec<(u64, u64)> = order[..prefetched].to_vec();
        let reader = Reader {
            img,
            source,
            shared: shared.clone(),
            need,
            order,
            prefetched,
            fill_pages,
            retries: opts.read_retries,
            tx,
            pool: pool_rx,
            notify,
        };
        let mut server = server;
        if let Err(e) = server.fill_first(&first, opts.prefetch_first) {
            kill_tree(&shared.pidfd);
            shared.pidfd.wait_exited(Duration::from_secs(5));
            drop(server);
            return Err(e);
        }
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("{name}-{pid}"))
                .spawn(f)
        };
        // The server is handed over through a channel, so that if its thread cannot start it
        // (and the userfaultfd) is still here, to be dropped only after the kill.
        let (hand_tx, hand_rx) = mpsc::channel::<Server>();
        let server_thread = spawn(
            "lazy-server",
            Box::new(move || {
                if let Ok(server) = hand_rx.recv() {
                    server_main(server);
                }
            }),
        );
        let server_thread = match server_thread {
            Ok(t) => {
                if let Err(mpsc::SendError(server)) = hand_tx.send(server) {
                    kill_tree(&shared.pidfd);
                    drop(server);
                    return Err(LazyError::Invalid {
                        pid,
                        reason: "the server thread ended at once".into(),
                    });
                }
                t
            }
            Err(e) => {
                kill_tree(&shared.pidfd);
                shared.pidfd.wait_exited(Duration::from_secs(5));
                drop(server);
                return Err(LazyError::Invalid {
                    pid,
                    reason: format!("spawning the server thread: {e}"),
                });
            }
        };
        // Without the reader, the server fills everything itself; without the watchdog,
        // stalls go unnoticed: both are worth a warning, not a failure.
        if let Err(e) = spawn("lazy-reader", Box::new(move || reader.run())) {
            warn!(
                pid,
                "no reader thread ({e}): the server reads everything itself"
            );
        }
        let wd = shared.clone();
        let watchdog = spawn("lazy-watchdog", Box::new(move || watchdog(wd)))
            .map_err(|e| warn!(pid, "no watchdog thread: {e}"))
            .ok();
        info!(pid, pages, "lazy restore serving");
        Ok(LazyHandle {
            image_pid: pid,
            shared,
            server: Some(server_thread),
            watchdog,
        })
    }
}

fn server_main(mut server: Server) {
    let shared = server.shared.clone();
    let r = catch_unwind(AssertUnwindSafe(|| server.run()));
    match r {
        Ok(Ok(())) => {
            let stats = server.stats();
            drop(server);
            shared.finish(stats);
        }
        Ok(Err(e)) => {
            shared.fail(e);
            drop(server);
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            shared.fail(LazyError::Panicked {
                pid: shared.pid,
                message,
            });
            drop(server);
        }
    }
    shared.server_exited.store(true, Ordering::Release);
}

impl Server {
    fn uffd_err(&self, what: String, source: io::Error) -> LazyError {
        LazyError::Uffd {
            pid: self.shared.pid,
            what,
            source,
        }
    }

    fn run(&mut self) -> std::result::Result<(), LazyError> {
        let mut reader_done = false;
        let mut sweep_cursor = 0u64;
        loop {
            if self.shared.stopping() {
                return Err(stopped(self.shared.pid));
            }
            self.serve_pending()?;
            self.retire();
            if self.spaces.is_empty() {
                return Ok(());
            }
            if !reader_done {
                match self.rx.try_recv() {
                    Ok(Ok(block)) => self.fill_block(block)?,
                    Ok(Err(e)) => return Err(e),
                    Err(TryRecvError::Empty) => self.idle()?,
                    Err(TryRecvError::Disconnected) => reader_done = true,
                }
            } else if let Some(idx) = self.next_missing(&mut sweep_cursor) {
                self.sweep(idx)?;
            } else if self.spaces.iter().any(|s| s.map.missing > 0 && !s.gone) {
                return Err(LazyError::Aborted {
                    pid: self.shared.pid,
                    reason: "internal error: pages left missing but none found".into(),
                });
            }
        }
    }

    /// Reads the pending messages and serves the faults among them (and those that come
    /// meanwhile); whether there were any.
    fn serve_pending(&mut self) -> std::result::Result<bool, LazyError> {
        self.drain()?;
        let mut any = false;
        while let Some(f) = self.faults.pop_front() {
            any = true;
            self.serve_fault(f)?;
            if self.faults.is_empty() {
                self.drain()?;
            }
        }
        Ok(any)
    }

    /// Waits for a message, a block from the reader, or 100 ms.
    fn idle(&mut self) -> std::result::Result<(), LazyError> {
        let mut fds: Vec<_> = self.spaces.iter().map(|s| s.uffd.as_fd()).collect();
        fds.push(self.notify.as_fd());
        uffd::poll_readable(&fds, Some(Duration::from_millis(100)))
            .map_err(|e| self.uffd_err("poll".into(), e))?;
        self.notify.clear();
        Ok(())
    }

    fn space(&self, id: u64) -> Option<usize> {
        self.spaces.iter().position(|s| s.id == id && !s.gone)
    }

    /// Reads every pending message of every address space and applies its events (page
    /// faults are queued). Returns how many were read.
    fn drain(&mut self) -> std::result::Result<usize, LazyError> {
        let mut total = 0;
        let mut si = 0;
        while si < self.spaces.len() {
            if self.spaces[si].gone {
                si += 1;
                continue;
            }
            let mut events = std::mem::take(&mut self.events);
            let r = self.spaces[si].uffd.read_events(&mut events);
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    self.events = events;
                    return Err(self.uffd_err("reading the userfaultfd".into(), e));
                }
            };
            total += n;
            for ev in events.drain(..) {
                self.apply(si, ev);
            }
            self.events = events;
            si += 1;
        }
        Ok(total)
    }

    fn apply(&mut self, si: usize, ev: Event) {
        let now = Instant::now();
        let id = self.spaces[si].id;
        match ev {
            Event::PageFault { addr, .. } => self.faults.push_back((id, addr, now)),
            Event::Fork(child) => {
                self.c.forks += 1;
                let map = self.spaces[si].map.clone();
                let id = self.next_id;
                self.next_id += 1;
                debug!(pid = self.shared.pid, id, "serving a forked child");
                self.spaces.push(Space {
                    id,
                    uffd: child,
                    map,
                    main: false,
                    gone: false,
                });
            }
            Event::Remap { from, to, len } => {
                let done = self.spaces[si].map.remap(from, to, len);
                self.c.removed_pages += done.len() as u64;
                self.update_need(&done);
            }
            Event::Remove { start, end } => {
                let done = self.spaces[si].map.remove(start, end, false);
                self.c.removed_pages += done.len() as u64;
                self.update_need(&done);
            }
            Event::Unmap { start, end } => {
                let done = self.spaces[si].map.remove(start, end, true);
                self.c.removed_pages += done.len() as u64;
                self.update_need(&done);
            }
            Event::Unknown(e) => warn!(pid = self.shared.pid, event = e, "unknown uffd event"),
        }
    }

    /// Pages that stopped being missing somewhere: no longer needed if nowhere missing.
    fn update_need(&self, idx: &[u64]) {
        for &i in idx {
            if self
                .spaces
                .iter()
                .all(|s| s.gone || s.map.state[i as usize] != MISSING)
            {
                self.need.clear(i);
            }
        }
    }

    fn mark(&mut self, si: usize, lo: u64, hi: u64, st: u8) {
        for i in lo..hi {
            if self.spaces[si].map.set(i, st)
                && self
                    .spaces
                    .iter()
                    .all(|s| s.gone || s.map.state[i as usize] != MISSING)
            {
                self.need.clear(i);
            }
        }
    }

    /// Drops completed and gone address spaces (closing their userfaultfds: every image page
    /// is in place, so the kernel's own zero-fill is right for the rest).
    fn retire(&mut self) {
        let now = self.start.elapsed();
        let mut i = 0;
        while i < self.spaces.len() {
            let (gone, main) = (self.spaces[i].gone, self.spaces[i].main);
            if gone || self.spaces[i].map.missing == 0 {
                if main && gone {
                    self.main_gone = true;
                } else if main {
                    self.fully_resident = Some(now);
                }
                let s = self.spaces.remove(i);
                debug!(pid = self.shared.pid, id = s.id, gone, "address space done");
                let gone_idx: Vec<u64> = if s.gone {
                    (0..self.img.total)
                        .filter(|&k| s.map.state[k as usize] == MISSING)
                        .collect()
                } else {
                    Vec::new()
                };
                drop(s);
                self.update_need(&gone_idx);
            } else {
                i += 1;
            }
        }
    }

    /// While events are pending (`EAGAIN`): read them; if there were none yet (the change is
    /// between its event being read and its end), pause a little. Fails after the read
    /// timeout.
    fn again(&mut self, since: &mut Option<Instant>) -> std::result::Result<(), LazyError> {
        let t0 = *since.get_or_insert_with(Instant::now);
        if self.drain()? == 0 {
            if t0.elapsed() > self.shared.timeout {
                return Err(self.uffd_err(
                    "the address space stayed busy".into(),
                    io::Error::from_raw_os_error(libc::EAGAIN),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if self.shared.stopping() {
            return Err(stopped(self.shared.pid));
        }
        Ok(())
    }

    /// Copies `n` missing image pages from index `idx`, now at `addr` in space `si`, from
    /// `data`; pages found there already are marked filled; ranges outside any registered
    /// mapping are split until the page that is outside, which is then given up (the process
    /// can no longer fault on it through this userfaultfd).
    fn copy_pages(
        &mut self,
        si: usize,
        addr: u64,
        idx: u64,
        n: u64,
        data: &[u8],
        kind: Kind,
    ) -> std::result::Result<Step, LazyError> {
        let mut done = 0;
        let mut chunk = n;
        while done < n {
            let a = addr + done * PAGE;
            let from = (done * PAGE) as usize;
            let src = &data[from..from + (chunk * PAGE) as usize];
            let r = self.spaces[si].uffd.copy(a, src, true);
            let filled = match r {
                Ok(Fill::Done) => chunk,
                Ok(Fill::Partial(b)) => b / PAGE,
                Ok(Fill::Exists) => {
                    self.mark(si, idx + done, idx + done + 1, FILLED);
                    done += 1;
                    chunk = n - done;
                    continue;
                }
                Ok(Fill::Again) => return Ok(Step::Again),
                Ok(Fill::Gone) => return Ok(Step::Gone),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if chunk > 1 {
                        chunk = chunk.div_ceil(2);
                    } else {
                        debug!(pid = self.shared.pid, addr = a, "page no longer registered");
                        self.mark(si, idx + done, idx + done + 1, UNMAPPED);
                        done += 1;
                        chunk = n - done;
                    }
                    continue;
                }
                Err(e) => {
                    return Err(self.uffd_err(format!("UFFDIO_COPY of {chunk} pages at {a:#x}"), e));
                }
            };
            self.mark(si, idx + done, idx + done + filled, FILLED);
            let bytes = filled * PAGE;
            match kind {
                Kind::Demand => self.c.demand_bytes += bytes,
                Kind::Background => self.c.background_bytes += bytes,
                Kind::Prefetch => {
                    self.c.background_bytes += bytes;
                    self.c.prefetch_bytes += bytes;
                }
            }
            done += filled;
            chunk = n - done;
        }
        Ok(Step::Ok)
    }

    /// Zero pages at the `n` pages from `addr` (pages not in the image): those there already,
    /// or outside the registered mappings, are left alone.
    fn zero_pages(&mut self, si: usize, addr: u64, n: u64) -> std::result::Result<Step, LazyError> {
        let mut done = 0;
        let mut chunk = n;
        while done < n {
            let a = addr + done * PAGE;
            let filled = match self.spaces[si].uffd.zeropage(a, chunk * PAGE, true) {
                Ok(Fill::Done) => chunk,
                Ok(Fill::Partial(b)) => b / PAGE,
                Ok(Fill::Exists) => {
                    done += 1;
                    chunk = n - done;
                    continue;
                }
                Ok(Fill::Again) => return Ok(Step::Again),
                Ok(Fill::Gone) => return Ok(Step::Gone),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if chunk > 1 {
                        chunk = chunk.div_ceil(2);
                    } else {
                        done += 1;
                        chunk = n - done;
                    }
                    continue;
                }
                Err(e) => {
                    return Err(
                        self.uffd_err(format!("UFFDIO_ZEROPAGE of {chunk} pages at {a:#x}"), e)
                    );
                }
            };
            self.c.zero_bytes += filled * PAGE;
            done += filled;
            chunk = n - done;
        }
        Ok(Step::Ok)
    }

    fn serve_fault(
        &mut self,
        (id, addr, t0): (u64, u64, Instant),
    ) -> std::result::Result<(), LazyError> {
        self.c.faults += 1;
        let Some(mut si) = self.space(id) else {
            return Ok(());
        };
        let page = addr & !(PAGE - 1);
        let fb = self.fault_block;
        let (lo, hi) = match self.spaces[si].map.reg_at(page) {
            Some((s, e)) => ((page & !(fb - 1)).max(s), ((page & !(fb - 1)) + fb).min(e)),
            None => (page, page + PAGE),
        };
        if self.working_set.len() < self.record
            && let Some(seg) = self.spaces[si].map.seg_at(page)
        {
            let at = self.img.image_addr(seg.idx + (page - seg.addr) / PAGE) & !(fb - 1);
            if self.ws_seen.insert(at) {
                self.working_set.push(at);
            }
        }
        let mut buf = std::mem::replace(&mut self.fault_buf, PageBuf::new(0));
        let r = self.fill_around(&mut si, id, lo, hi, page, &mut buf);
        self.fault_buf = buf;
        let gone = r?;
        if !gone {
            // The faulting thread may wait on a page filled earlier (or dropped meanwhile):
            // waking it costs little, a thread left waiting would hang.
            let _ = self.spaces[si].uffd.wake(page, PAGE);
        }
        self.c.latencies_ns.push(t0.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Fills `[lo, hi)` of space `si` around the fault at `page`; whether the space is gone.
    fn fill_around(
        &mut self,
        si: &mut usize,
        id: u64,
        lo: u64,
        hi: u64,
        page: u64,
        buf: &mut PageBuf,
    ) -> std::result::Result<bool, LazyError> {
        let mut busy = None;
        let mut a = lo;
        let mut fault_done = false;
        while a < hi {
            let map = &self.spaces[*si].map;
            let step = match map.seg_at(a) {
                Some(seg) => {
                    let idx = seg.idx + (a - seg.addr) / PAGE;
                    if map.state[idx as usize] != MISSING {
                        a += PAGE;
                        continue;
                    }
                    let end = hi.min(seg.end());
                    let mut n = 1;
                    while a + n * PAGE < end && map.state[(idx + n) as usize] == MISSING {
                        n += 1;
                    }
                    let bytes = (n * PAGE) as usize;
                    read_pages(
                        &*self.source,
                        &self.img,
                        &self.shared,
                        Reading::Fault,
                        self.retries,
                        idx,
                        &mut buf.as_mut_slice()[..bytes],
                    )?;
                    let s =
                        self.copy_pages(*si, a, idx, n, &buf.as_slice()[..bytes], Kind::Demand)?;
                    (s, n)
                }
                None => {
                    let mut n = 1;
                    while a + n * PAGE < hi && map.seg_at(a + n * PAGE).is_none() {
                        n += 1;
                    }
                    (self.zero_pages(*si, a, n)?, n)
                }
            };
            match step {
                (Step::Ok, n) => {
                    if (a..a + n * PAGE).contains(&page) {
                        fault_done = true;
                    }
                    a += n * PAGE;
                }
                (Step::Again, _) => {
                    self.again(&mut busy)?;
                    // Events may have retired nothing (retire runs in the main loop), but a
                    // fork may have added spaces: find ours again.
                    match self.space(id) {
                        Some(i) => *si = i,
                        None => return Ok(true),
                    }
                }
                (Step::Gone, _) => {
                    self.spaces[*si].gone = true;
                    return Ok(true);
                }
            }
        }
        if !fault_done {
            // The faulting page was not filled here: it was filled before (a race) or
            // dropped by madvise, which reads as zeros.
            loop {
                match self.zero_pages(*si, page, 1)? {
                    Step::Ok => break,
                    Step::Again => {
                        self.again(&mut busy)?;
                        match self.space(id) {
                            Some(i) => *si = i,
                            None => return Ok(true),
                        }
                    }
                    Step::Gone => {
                        self.spaces[*si].gone = true;
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Copies the missing pages of image indices `[idx, idx + pages)` into every address
    /// space, from `data` (ahead of the process: `kind` is background or prefetch).
    fn fill_indices(
        &mut self,
        idx: u64,
        pages: u64,
        data: &[u8],
        kind: Kind,
    ) -> std::result::Result<(), LazyError> {
        let ids: Vec<u64> = self.spaces.iter().map(|s| s.id).collect();
        for id in ids {
            let mut busy = None;
            'again: while let Some(si) = self.space(id) {
                let mut i = idx;
                while i < idx + pages {
                    let map = &self.spaces[si].map;
                    let Some(seg) = map.seg_of_idx(i) else {
                        i += 1;
                        continue;
                    };
                    if map.state[i as usize] != MISSING {
                        i += 1;
                        continue;
                    }
                    let end = (idx + pages)
                        .min(seg.idx + seg.pages)
                        .min(i + self.slice_pages);
                    let mut j = i + 1;
                    while j < end && map.state[j as usize] == MISSING {
                        j += 1;
                    }
                    let addr = seg.addr + (i - seg.idx) * PAGE;
                    let from = ((i - idx) * PAGE) as usize;
                    let to = ((j - idx) * PAGE) as usize;
                    match self.copy_pages(si, addr, i, j - i, &data[from..to], kind)? {
                        Step::Ok => {
                            // Faults that came meanwhile go first; then this block goes on
                            // from its start (what they filled is skipped).
                            if self.serve_pending()? {
                                continue 'again;
                            }
                            i = j;
                        }
                        Step::Again => {
                            self.again(&mut busy)?;
                            continue 'again;
                        }
                        Step::Gone => {
                            self.spaces[si].gone = true;
                            break 'again;
                        }
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// Copies in the prefetch `ranges` (image index ranges, each at most a fault block), up
    /// to `budget` bytes, before the process runs.
    fn fill_first(
        &mut self,
        ranges: &[(u64, u64)],
        budget: u64,
    ) -> std::result::Result<(), LazyError> {
        let mut buf = PageBuf::new(self.fault_block);
        let mut spent = 0;
        for &(lo, hi) in ranges {
            if spent >= budget {
                break;
            }
            if !(lo..hi).any(|i| self.need.get(i)) {
                continue;
            }
            let bytes = ((hi - lo) * PAGE) as usize;
            read_pages(
                &*self.source,
                &self.img,
                &self.shared,
                Reading::Sweep,
                self.retries,
                lo,
                &mut buf.as_mut_slice()[..bytes],
            )?;
            self.fill_indices(lo, hi - lo, &buf.as_slice()[..bytes], Kind::Prefetch)?;
            spent += bytes as u64;
        }
        Ok(())
    }

    fn fill_block(&mut self, b: Block) -> std::result::Result<(), LazyError> {
        let bytes = (b.pages * PAGE) as usize;
        let kind = if b.prefetch {
            Kind::Prefetch
        } else {
            Kind::Background
        };
        self.fill_indices(b.idx, b.pages, &b.buf.as_slice()[..bytes], kind)?;
        let _ = self.pool.send(b.buf);
        Ok(())
    }

    /// The first index from `cursor` still missing in some address space.
    fn next_missing(&self, cursor: &mut u64) -> Option<u64> {
        while *cursor < self.img.total {
            let i = *cursor;
            if self
                .spaces
                .iter()
                .any(|s| !s.gone && s.map.state[i as usize] == MISSING)
            {
                return Some(i);
            }
            *cursor += 1;
        }
        None
    }

    /// Reads and fills, here, one block from `idx` (after the reader thread ended).
    fn sweep(&mut self, idx: u64) -> std::result::Result<(), LazyError> {
        let end = self.img.run_end(idx).min(idx + self.fill_pages);
        let mut buf = self
            .sweep_buf
            .take()
            .unwrap_or_else(|| PageBuf::new(self.fill_pages * PAGE));
        let bytes = ((end - idx) * PAGE) as usize;
        let r = read_pages(
            &*self.source,
            &self.img,
            &self.shared,
            Reading::Sweep,
            self.retries,
            idx,
            &mut buf.as_mut_slice()[..bytes],
        )
        .and_then(|()| {
            self.fill_indices(idx, end - idx, &buf.as_slice()[..bytes], Kind::Background)
        });
        self.sweep_buf = Some(buf);
        r
    }

    fn stats(&self) -> LazyStats {
        let mut l = self.c.latencies_ns.clone();
        l.sort_unstable();
        let pct = |p: usize| {
            if l.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_nanos(l[(l.len() - 1) * p / 100])
            }
        };
        let resumed = self
            .shared
            .resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(self.started);
        LazyStats {
            pid: self.shared.pid,
            outcome: if self.main_gone {
                LazyOutcome::Gone
            } else {
                LazyOutcome::Complete
            },
            time_to_resume: resumed.saturating_duration_since(self.start),
            fully_resident: self.fully_resident,
            elapsed: self.started.elapsed(),
            demand_faults: self.c.faults,
            fault_p50: pct(50),
            fault_p99: pct(99),
            fault_max: l
                .last()
                .map_or(Duration::ZERO, |&n| Duration::from_nanos(n)),
            demand_bytes: self.c.demand_bytes,
            zero_bytes: self.c.zero_bytes,
            background_bytes: self.c.background_bytes,
            prefetch_bytes: self.c.prefetch_bytes,
            image_pid: self.shared.pid,
            removed_bytes: self.c.removed_pages * PAGE,
            forks: self.c.forks,
            working_set: self.working_set.clone(),
        }
    }
}

impl LazyHandle {
    /// The restored process.
    pub fn pid(&self) -> i32 {
        self.shared.pid
    }

    /// Records that the process was resumed now (for [`LazyStats::time_to_resume`]).
    pub fn mark_resumed(&self) {
        *self
            .shared
            .resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether the restore has ended (complete, gone, or failed).
    pub fn is_finished(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Why the restore failed, if it has (the process was killed for it). A failure being
    /// published (the process killed, its exit awaited) is waited for, up to 6 s.
    pub fn failure(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(6);
        while self.shared.phase.load(Ordering::Acquire) == FAILING
            && !self.is_finished()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.is_finished() {
            return None;
        }
        match &*self.shared.result.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Waits until the restore has ended: every image page is in the process, or the process
    /// went away ([`LazyOutcome`]); or it failed, and the process was killed.
    pub fn wait(mut self) -> std::result::Result<LazyStats, LazyError> {
        self.shared.wait_done();
        let r = self
            .shared
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // The server may still be stuck in a read the watchdog gave up on: then it is left
        // to end on its own.
        if self.shared.server_exited.load(Ordering::Acquire)
            && let Some(t) = self.server.take()
        {
            let _ = t.join();
        }
        if let Some(t) = self.watchdog.take() {
            let _ = t.join();
        }
        let image_pid = self.image_pid;
        r.unwrap_or_else(|| {
            Err(LazyError::Aborted {
                pid: self.shared.pid,
                reason: "the result was already taken".into(),
            })
        })
        .map(|s| LazyStats { image_pid, ..s })
    }

    /// Names the process by its PID in the image (for [`LazyStats::image_pid`]).
    pub fn with_image_pid(mut self, image_pid: i32) -> Self {
        self.image_pid = image_pid;
        self
    }
}

impl Drop for LazyHandle {
    fn drop(&mut self) {
        if !self.shared.done.load(Ordering::Acquire) {
            self.shared.fail(LazyError::Aborted {
                pid: self.shared.pid,
                reason: "the LazyHandle was dropped before the restore completed".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, pages: u64, offset: u64) -> PageRun {
        PageRun {
            addr,
            pages,
            offset,
        }
    }

    const M: u64 = 1 << 20;

    #[test]
    fn image_indexes_pages_in_address_order() {
        let img = Image::new(vec![run(0x20_0000, 4, 0), run(0x10_0000, 2, 4 * PAGE)]).unwrap();
        assert_eq!(img.total, 6);
        assert_eq!(img.index_at(0x10_0000), Some(0));
        assert_eq!(img.index_at(0x10_1000), Some(1));
        assert_eq!(img.index_at(0x10_2000), None);
        assert_eq!(img.index_at(0x20_3000), Some(5));
        assert_eq!(img.offset(0), 4 * PAGE);
        assert_eq!(img.offset(3), PAGE);
        assert_eq!(img.image_addr(2), 0x20_0000);
        assert_eq!(img.run_end(3), 6);
        assert!(Image::new(vec![run(0x1000, 2, 0), run(0x2000, 1, 0)]).is_err());
        assert!(Image::new(vec![run(0x1001, 1, 0)]).is_err());
    }

    #[test]
    fn order_puts_prefetch_blocks_first_then_aligned_fill_blocks() {
        // One run from 1 MiB to 5 MiB + 8 KiB.
        let img = Image::new(vec![run(M, 1026, 0)]).unwrap();
        let (order, prefetched) = img.order(&[3 * M + 0x5000, 0x99], 64 << 10, 2 * M);
        // The prefetch block: 3 MiB .. 3 MiB + 64 KiB (the address outside the image is
        // left out).
        assert_eq!(prefetched, 1);
        assert_eq!(order[0], (512, 528));
        // Then 1..2, 2..4, 4..5+8K MiB.
        assert_eq!(&order[1..], &[(0, 256), (256, 768), (768, 1026)]);
    }

    #[test]
    fn remove_unmap_and_remap_keep_track_of_pages() {
        let img = Image::new(vec![run(0x10_0000, 16, 0)]).unwrap();
        let mut l = Layout::new(&img, vec![(0x10_0000, 0x12_0000)]);
        assert_eq!(l.missing, 16);
        assert!(l.set(0, FILLED));
        assert!(!l.set(0, FILLED));
        // madvise over pages 0..3: 1 and 2 were missing.
        assert_eq!(l.remove(0x10_0000, 0x10_3000, false), vec![1, 2]);
        assert_eq!(l.state[0], FILLED);
        assert!(l.seg_at(0x10_1000).is_some(), "still mapped");
        // munmap of pages 14..16 (and beyond).
        assert_eq!(l.remove(0x10_e000, 0x13_0000, true), vec![14, 15]);
        assert!(l.seg_at(0x10_e000).is_none());
        assert_eq!(l.regs, vec![(0x10_0000, 0x10_e000)]);
        // mremap of pages 4..8 to 0x50_0000.
        l.remap(0x10_4000, 0x50_0000, 0x4000);
        assert_eq!(
            l.seg_at(0x50_1000),
            Some(Seg {
                addr: 0x50_0000,
                idx: 4,
                pages: 4
            })
        );
        assert!(l.seg_at(0x10_4000).is_none());
        assert_eq!(l.seg_of_idx(5).unwrap().addr, 0x50_0000);
        assert_eq!(l.seg_of_idx(9).unwrap().addr, 0x10_8000);
        assert!(l.seg_of_idx(14).is_none());
        assert_eq!(l.reg_at(0x50_3fff), Some((0x50_0000, 0x50_4000)));
        assert_eq!(l.missing, 16 - 5);
    }

    #[test]
    fn bits_start_set() {
        let b = Bits::new(130);
        assert!(b.get(129));
        b.clear(129);
        assert!(!b.get(129) && b.get(128));
    }
}
