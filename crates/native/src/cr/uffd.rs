//! Safe wrappers over the kernel interfaces of lazy restore: userfaultfd (`UFFDIO_*` ioctls
//! and its messages), pidfds (`pidfd_open`, `pidfd_getfd`, `pidfd_send_signal`), an eventfd,
//! `poll`, and page-aligned buffers. All of lazy restore's `unsafe` is here; the logic that
//! uses it is in [`super::lazy`].
//!
//! The kernel's numbers (ioctls, features, events) are spelled out here because the `libc`
//! crate does not carry them; they are the x86-64 values of `<linux/userfaultfd.h>`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The page size this module works in.
pub const PAGE: u64 = 4096;

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const MSG_SIZE: usize = 32;

/// `UFFD_FEATURE_*` bits, as asked for in [`Uffd::api`] and reported in [`ApiInfo`].
pub mod feature {
    /// Write-protect faults are reported with a flag.
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// `fork()` hands the monitor a new userfaultfd for the child's registered ranges
    /// (without it the child's ranges are unregistered and its missing pages read as zero).
    pub const EVENT_FORK: u64 = 1 << 1;
    /// `mremap()` of a registered range is reported (without it the moved range is
    /// unregistered).
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// `madvise(MADV_DONTNEED/MADV_REMOVE/MADV_FREE)` of a registered range is reported.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// MISSING registration of hugetlbfs ranges.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// MISSING registration of shmem (memfd, `/dev/shm`, `MAP_SHARED|MAP_ANONYMOUS`) ranges.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// `munmap()` of a registered range is reported.
    pub const EVENT_UNMAP: u64 = 1 << 6;
    /// Faults raise SIGBUS instead of being reported.
    pub const SIGBUS: u64 = 1 << 7;
    /// Page-fault messages carry the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// MINOR registration of hugetlbfs ranges.
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    /// MINOR registration of shmem ranges (`UFFDIO_CONTINUE`).
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// Page-fault messages carry the exact address, not the page.
    pub const EXACT_ADDRESS: u64 = 1 << 11;
    /// Write protection of hugetlbfs and shmem.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// Write protection of unpopulated anonymous pages.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// Asynchronous write protection (dirty tracking with `PAGEMAP_SCAN`).
    pub const WP_ASYNC: u64 = 1 << 15;
    /// `UFFDIO_MOVE`.
    pub const MOVE: u64 = 1 << 16;
}

/// `_UFFDIO_*` bits of the ioctl masks the kernel returns from [`Uffd::api`] and
/// [`Uffd::register`].
pub mod ioctl {
    /// `UFFDIO_REGISTER`.
    pub const REGISTER: u64 = 1 << 0;
    /// `UFFDIO_UNREGISTER`.
    pub const UNREGISTER: u64 = 1 << 1;
    /// `UFFDIO_WAKE`.
    pub const WAKE: u64 = 1 << 2;
    /// `UFFDIO_COPY`.
    pub const COPY: u64 = 1 << 3;
    /// `UFFDIO_ZEROPAGE`.
    pub const ZEROPAGE: u64 = 1 << 4;
    /// `UFFDIO_MOVE`.
    pub const MOVE: u64 = 1 << 5;
    /// `UFFDIO_WRITEPROTECT`.
    pub const WRITEPROTECT: u64 = 1 << 6;
    /// `UFFDIO_CONTINUE`.
    pub const CONTINUE: u64 = 1 << 7;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 8;
    /// `UFFDIO_API`.
    pub const API: u64 = 1 << 0x3f;
}

/// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages that are not there.
pub const MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`: faults on writes to write-protected pages.
pub const MODE_WP: u64 = 1 << 1;
/// `UFFDIO_REGISTER_MODE_MINOR`: faults on pages in the page cache but not mapped.
pub const MODE_MINOR: u64 = 1 << 2;

/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

/// What the `UFFDIO_API` handshake gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiInfo {
    /// The features asked for (what the caller wanted, less what this kernel lacks): these
    /// are the ones enabled on the userfaultfd.
    pub granted: u64,
    /// Every feature this kernel offers.
    pub available: u64,
    /// The ioctls the userfaultfd accepts (bits of [`ioctl`]).
    pub ioctls: u64,
}

/// How a [`Uffd::copy`] or [`Uffd::zeropage`] of a range went. Everything but `Done` leaves
/// the rest of the range to the caller:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The whole range was filled (and its waiters woken unless asked not to).
    Done,
    /// Only the first `n` bytes were filled; call again for the rest to learn why it stopped.
    Partial(u64),
    /// `EEXIST`: the first page of the range is already there (filled earlier, or written by
    /// the process): nothing was filled. Fine — skip that page.
    Exists,
    /// `EAGAIN` with nothing filled: the address space is changing (a fork, mremap, munmap or
    /// madvise event is pending). Read the pending events ([`Uffd::read_events`]), apply them,
    /// then retry what is still to be filled.
    Again,
    /// `ESRCH`: the address space is gone (the process exited or exec'd).
    Gone,
}

/// A message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread is blocked on a missing page.
    PageFault {
        /// The page's address (page-aligned unless `EXACT_ADDRESS` was asked for).
        addr: u64,
        /// `UFFD_PAGEFAULT_FLAG_*` (e.g. [`PAGEFAULT_FLAG_WRITE`]).
        flags: u64,
        /// The faulting thread (in its own PID namespace), with `THREAD_ID`; else 0.
        tid: u32,
    },
    /// The process forked: the child's registered ranges belong to this new userfaultfd
    /// (already handshaken, same features), which the monitor must serve like the parent's.
    Fork(Uffd),
    /// A registered range moved (`mremap`): `len` bytes from `from` are now at `to`.
    Remap {
        /// The old start.
        from: u64,
        /// The new start.
        to: u64,
        /// The length moved.
        len: u64,
    },
    /// `[start, end)` was dropped with `madvise`: its pages now read as zero.
    Remove {
        /// Start address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// `[start, end)` was unmapped: it is no longer registered.
    Unmap {
        /// Start address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// A message this code does not know.
    Unknown(u8),
}

/// A userfaultfd: the handshake, registration, filling pages, and reading its messages.
///
/// It may belong to another process (taken with [`pidfd_getfd`]): then every range is that
/// process's, and [`Uffd::owner`] can hold that process's pidfd. Closing it (drop) unregisters
/// every range, after which missing pages read as zero in the process — lazy restore must
/// never let that happen to a process that still runs with pages to fill.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
    registered: Vec<(u64, u64)>,
    owner: Option<Pidfd>,
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Uffd {
    /// `userfaultfd(flags)` in this process (`O_CLOEXEC`, `O_NONBLOCK`, `UFFD_USER_MODE_ONLY`):
    /// for probes and tests; a process being restored creates its own.
    pub fn new_local(flags: libc::c_int) -> io::Result<Uffd> {
        // SAFETY: userfaultfd takes only flags; it returns a new fd or -1.
        let fd = cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
        // SAFETY: the fd was just created for us and nothing else owns it.
        Ok(Uffd::from_fd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Wraps a userfaultfd (not yet handshaken, unless it came from an [`Event::Fork`]).
    pub fn from_fd(fd: OwnedFd) -> Uffd {
        Uffd {
            fd,
            features: 0,
            registered: Vec::new(),
            owner: None,
        }
    }

    /// Attaches the pidfd of the process whose address space this is.
    pub fn with_owner(mut self, owner: Pidfd) -> Uffd {
        self.owner = Some(owner);
        self
    }

    /// The pidfd of the process whose address space this is, if known.
    pub fn owner(&self) -> Option<&Pidfd> {
        self.owner.as_ref()
    }

    /// Takes the owner's pidfd out.
    pub fn take_owner(&mut self) -> Option<Pidfd> {
        self.owner.take()
    }

    /// Every feature this kernel offers (asked once of a throwaway userfaultfd in this
    /// process, `UFFD_USER_MODE_ONLY` so that it works without privileges; then cached).
    pub fn available_features() -> io::Result<u64> {
        static AVAILABLE: OnceLock<u64> = OnceLock::new();
        if let Some(f) = AVAILABLE.get() {
            return Ok(*f);
        }
        let probe = Uffd::new_local(libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY)
            .or_else(|_| Uffd::new_local(libc::O_CLOEXEC | libc::O_NONBLOCK))?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one live uffdio_api.
        cvt(unsafe { libc::ioctl(probe.fd.as_raw_fd(), UFFDIO_API, &raw mut api) } as _)?;
        Ok(*AVAILABLE.get_or_init(|| api.features))
    }

    /// The `UFFDIO_API` handshake (once per userfaultfd), enabling `wanted` less what this
    /// kernel lacks; the caller checks [`ApiInfo::granted`] for what it cannot do without.
    pub fn api(&mut self, wanted: u64) -> io::Result<ApiInfo> {
        let available = Uffd::available_features()?;
        let granted = wanted & available;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: granted,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one live uffdio_api.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_API, &raw mut api) } as _)?;
        self.features = granted;
        Ok(ApiInfo {
            granted,
            available: api.features,
            ioctls: api.ioctls,
        })
    }

    /// The features enabled by [`Uffd::api`] (or inherited, for a fork's userfaultfd).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// `UFFDIO_REGISTER` of `[start, start + len)` with `mode` (e.g. [`MODE_MISSING`]): the
    /// range must be mapped and of a kind the mode supports (private anonymous memory; shmem
    /// with `MISSING_SHMEM`). Returns the ioctls the range accepts (bits of [`ioctl`]).
    pub fn register(&mut self, start: u64, len: u64, mode: u64) -> io::Result<u64> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one live uffdio_register.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &raw mut reg) } as _)?;
        self.registered.push((start, start + len));
        Ok(reg.ioctls)
    }

    /// `UFFDIO_UNREGISTER` of `[start, start + len)`.
    pub fn unregister(&mut self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one live uffdio_range.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &raw mut range) } as _)?;
        let end = start + len;
        let mut kept = Vec::new();
        for &(s, e) in &self.registered {
            if s < start {
                kept.push((s, e.min(start)));
            }
            if e > end {
                kept.push((s.max(end), e));
            }
        }
        self.registered = kept;
        Ok(())
    }

    /// The ranges registered through this value, as `[start, end)` (as registered: the
    /// process may have changed its mappings since).
    pub fn registered(&self) -> &[(u64, u64)] {
        &self.registered
    }

    /// `UFFDIO_COPY`: fills the missing pages at `dst` with `src` (whole pages; `dst`
    /// page-aligned) and, unless `wake` is false, wakes the threads waiting on them. See
    /// [`Fill`] for the outcomes that are not errors; errors are what is left (`ENOENT`: the
    /// range is not (all) in one registered mapping of this userfaultfd; `ENOMEM`...).
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool) -> io::Result<Fill> {
        check_range(dst, src.len() as u64)?;
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: if wake { 0 } else { 1 },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes one live uffdio_copy; the kernel reads
        // `src.len()` bytes at `src`, which is a live slice.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &raw mut c) };
        fill_result(r, c.copy)
    }

    /// `UFFDIO_ZEROPAGE`: maps the zero page at the missing pages of `[dst, dst + len)`
    /// (outcomes as for [`Uffd::copy`]).
    pub fn zeropage(&self, dst: u64, len: u64, wake: bool) -> io::Result<Fill> {
        check_range(dst, len)?;
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: if wake { 0 } else { 1 },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes one live uffdio_zeropage.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, &raw mut z) };
        fill_result(r, z.zeropage)
    }

    /// `UFFDIO_WAKE`: wakes the threads waiting on `[start, start + len)` (after pages were
    /// filled without waking, or found already there).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads one live uffdio_range.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &raw mut range) } as _).map(drop)
    }

    /// Reads the pending messages into `out` without blocking (the userfaultfd must be
    /// `O_NONBLOCK`): page faults first, then events, as the kernel orders them. Returns how
    /// many were read (0: none pending). A [`Event::Fork`] carries a new fd that this process
    /// now owns. Events that an address space change waits for (fork, mremap, munmap,
    /// madvise) are acknowledged by being read: the change then goes on.
    pub fn read_events(&self, out: &mut Vec<Event>) -> io::Result<usize> {
        let mut buf = [0u8; MSG_SIZE * 64];
        let mut total = 0;
        loop {
            // SAFETY: read writes at most `buf.len()` bytes into the live buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = errno();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(total),
                    Some(libc::EINTR) => continue,
                    _ => Err(e),
                };
            }
            let n = n as usize;
            for m in buf[..n].chunks_exact(MSG_SIZE) {
                out.push(self.parse(m));
                total += 1;
            }
            if n < buf.len() {
                return Ok(total);
            }
        }
    }

    fn parse(&self, m: &[u8]) -> Event {
        let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
        match m[0] {
            EVENT_PAGEFAULT => Event::PageFault {
                flags: u64_at(8),
                addr: u64_at(16),
                tid: u32_at(24),
            },
            EVENT_FORK => {
                // SAFETY: for a fork message the kernel installed a new fd in this process's
                // table while the message was read; it is handed to no one else.
                let fd = unsafe { OwnedFd::from_raw_fd(u32_at(8) as RawFd) };
                let mut child = Uffd::from_fd(fd);
                child.features = self.features;
                child.registered = self.registered.clone();
                Event::Fork(child)
            }
            EVENT_REMAP => Event::Remap {
                from: u64_at(8),
                to: u64_at(16),
                len: u64_at(24),
            },
            EVENT_REMOVE => Event::Remove {
                start: u64_at(8),
                end: u64_at(16),
            },
            EVENT_UNMAP => Event::Unmap {
                start: u64_at(8),
                end: u64_at(16),
            },
            other => Event::Unknown(other),
        }
    }
}

fn check_range(dst: u64, len: u64) -> io::Result<()> {
    if !dst.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {dst:#x}+{len:#x} is not whole pages"),
        ));
    }
    Ok(())
}

fn fill_result(r: libc::c_int, done: i64) -> io::Result<Fill> {
    if r == 0 {
        return Ok(Fill::Done);
    }
    let e = errno();
    if done > 0 {
        return Ok(Fill::Partial(done as u64));
    }
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(Fill::Exists),
        Some(libc::EAGAIN) => Ok(Fill::Again),
        Some(libc::ESRCH) => Ok(Fill::Gone),
        _ => Err(e),
    }
}

/// A pidfd: a reference to a process that cannot be confused with a later process that
/// reuses its PID.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `pidfd_open(pid, 0)`: `pid` must be a process (thread-group leader).
pub fn pidfd_open(pid: i32) -> io::Result<Pidfd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    Ok(Pidfd {
        // SAFETY: the fd was just created for us and nothing else owns it.
        fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        pid,
    })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate, in this process (close-on-exec), of the
/// process's fd `fd` (same open file). Needs ptrace access to the process.
pub fn pidfd_getfd(pidfd: &Pidfd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes integers and returns a new fd or -1.
    let ours = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.fd.as_raw_fd(), fd, 0) })?;
    // SAFETY: the fd was just created for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ours as RawFd) })
}

impl Pidfd {
    /// The process's PID (in this process's namespace, when opened).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `pidfd_send_signal(sig)`; `ESRCH` once the process has been reaped.
    pub fn send_signal(&self, sig: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo takes integers only.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        })
        .map(drop)
    }

    /// Whether the process has exited (a zombie counts), waiting up to `timeout` for it.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match poll_readable(&[self.fd.as_fd()], Some(left)) {
                Ok(r) if r[0] => return true,
                Ok(_) if !left.is_zero() => {}
                _ => return false,
            }
        }
    }

    /// Whether the process has exited (a zombie counts), without waiting.
    pub fn has_exited(&self) -> bool {
        self.wait_exited(Duration::ZERO)
    }
}

/// `poll` for readability (or error/hang-up) of `fds`, waiting up to `timeout` (forever with
/// `None`). Interrupted by a signal, it returns "nothing ready".
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: poll reads and writes `pfds.len()` live pollfds.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = errno();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// A non-blocking eventfd: one thread [`EventFd::notify`]s, another polls it.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl EventFd {
    /// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes integers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: the fd was just created for us and nothing else owns it.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable.
    pub fn notify(&self) {
        let one = 1u64;
        // SAFETY: write reads 8 bytes from a live u64. A full counter (EAGAIN) is already
        // readable, which is all a notification means.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Resets it to not readable.
    pub fn clear(&self) {
        let mut v = 0u64;
        // SAFETY: read writes 8 bytes into a live u64; EAGAIN (nothing to clear) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }
}

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct AlignedPage([u8; PAGE as usize]);

/// A page-aligned buffer of whole pages, its memory touched once at creation (so that
/// filling it later costs no page faults). Page-aligned sources make `UFFDIO_COPY` faster.
pub struct PageBuf {
    pages: Vec<AlignedPage>,
}

impl PageBuf {
    /// A zeroed buffer of `bytes` rounded up to whole pages.
    pub fn new(bytes: u64) -> PageBuf {
        let n = bytes.div_ceil(PAGE) as usize;
        PageBuf {
            pages: vec![AlignedPage([0; PAGE as usize]); n],
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.pages.len() * PAGE as usize
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: AlignedPage is repr(C) over [u8; PAGE] with an alignment equal to its size,
        // so the Vec's elements are contiguous initialized bytes with no padding.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast(), self.len()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `as_slice`; the borrow is unique through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast(), len) }
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private anonymous mapping of this process, unmapped on drop.
    struct Map {
        addr: u64,
        len: u64,
    }

    impl Map {
        fn new(len: u64) -> Map {
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Map {
                addr: p as u64,
                len,
            }
        }

        fn read(&self, off: u64) -> u8 {
            // SAFETY: `off` is inside the mapping, which lives as long as `self`; volatile so
            // that the compiler does not assume the kernel left it alone.
            unsafe { std::ptr::read_volatile((self.addr + off) as *const u8) }
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: our own mapping, no references into it remain.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
        }
    }

    fn local() -> Uffd {
        let mut u = Uffd::new_local(libc::O_CLOEXEC | libc::O_NONBLOCK).expect("userfaultfd");
        let info = u
            .api(feature::EVENT_REMOVE | feature::EVENT_UNMAP | feature::MISSING_SHMEM)
            .expect("UFFDIO_API");
        assert_eq!(info.granted & feature::EVENT_REMOVE, feature::EVENT_REMOVE);
        assert_ne!(info.ioctls & ioctl::REGISTER, 0);
        u
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        let enc = |dir: libc::c_ulong, nr: libc::c_ulong, size: usize| {
            (dir << 30) | ((size as libc::c_ulong) << 16) | (0xaa << 8) | nr
        };
        let (r, rw) = (2, 3);
        assert_eq!(UFFDIO_API, enc(rw, 0x3f, size_of::<UffdioApi>()));
        assert_eq!(UFFDIO_REGISTER, enc(rw, 0, size_of::<UffdioRegister>()));
        assert_eq!(UFFDIO_UNREGISTER, enc(r, 1, size_of::<UffdioRange>()));
        assert_eq!(UFFDIO_WAKE, enc(r, 2, size_of::<UffdioRange>()));
        assert_eq!(UFFDIO_COPY, enc(rw, 3, size_of::<UffdioCopy>()));
        assert_eq!(UFFDIO_ZEROPAGE, enc(rw, 4, size_of::<UffdioZeropage>()));
    }

    #[test]
    fn copy_zeropage_exists_and_unregister_in_this_process() {
        let m = Map::new(8 * PAGE);
        let mut u = local();
        let ioctls = u.register(m.addr, m.len, MODE_MISSING).expect("register");
        assert_eq!(ioctls & (ioctl::COPY | ioctl::ZEROPAGE | ioctl::WAKE), 0x1c);
        let mut src = PageBuf::new(2 * PAGE);
        src.as_mut_slice().fill(0x5a);
        assert_eq!(u.copy(m.addr, src.as_slice(), true).unwrap(), Fill::Done);
        assert_eq!(m.read(PAGE + 17), 0x5a);
        // Already there: EEXIST; a range starting there stops at once.
        assert_eq!(
            u.copy(m.addr, &src.as_slice()[..PAGE as usize], true)
                .unwrap(),
            Fill::Exists
        );
        // A range whose later page exists: partial.
        assert_eq!(
            u.copy(m.addr + 3 * PAGE, src.as_slice(), true).unwrap(),
            Fill::Done
        );
        assert_eq!(
            u.zeropage(m.addr + 2 * PAGE, 2 * PAGE, true).unwrap(),
            Fill::Partial(PAGE)
        );
        assert_eq!(
            u.zeropage(m.addr + 5 * PAGE, PAGE, true).unwrap(),
            Fill::Done
        );
        assert_eq!(m.read(5 * PAGE), 0);
        assert_eq!(m.read(4 * PAGE), 0x5a);
        assert!(
            u.copy(m.addr + 1, src.as_slice(), true).is_err(),
            "not page-aligned"
        );
        let mut ev = Vec::new();
        assert_eq!(u.read_events(&mut ev).unwrap(), 0, "nothing pending");
        u.unregister(m.addr, m.len).unwrap();
        assert!(u.registered().is_empty());
        assert_eq!(
            m.read(7 * PAGE),
            0,
            "unregistered: an ordinary zero-fill fault"
        );
    }

    #[test]
    fn a_fault_in_another_thread_is_read_and_served() {
        // The map outlives the userfaultfd: with EVENT_UNMAP, a munmap waits until the
        // userfaultfd's reader has read the event.
        let m = Map::new(4 * PAGE);
        let mut u = local();
        u.register(m.addr, m.len, MODE_MISSING).unwrap();
        let addr = m.addr;
        let t = std::thread::spawn(move || {
            // SAFETY: the mapping outlives the thread (joined below); the read blocks until
            // the main thread fills the page.
            unsafe { std::ptr::read_volatile((addr + 2 * PAGE + 5) as *const u8) }
        });
        let mut ev = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ev.is_empty() {
            assert!(Instant::now() < deadline, "no fault reported");
            let r = poll_readable(&[u.as_fd()], Some(Duration::from_millis(100))).unwrap();
            if r[0] {
                u.read_events(&mut ev).unwrap();
            }
        }
        let Event::PageFault { addr: fault, .. } = ev[0] else {
            panic!("expected a page fault, got {:?}", ev[0]);
        };
        assert_eq!(fault, addr + 2 * PAGE);
        let mut src = PageBuf::new(PAGE);
        src.as_mut_slice().fill(0x77);
        assert_eq!(u.copy(fault, src.as_slice(), true).unwrap(), Fill::Done);
        assert_eq!(t.join().unwrap(), 0x77);
    }

    #[test]
    fn remove_and_unmap_are_reported() {
        let m = Map::new(4 * PAGE);
        let mut u = local();
        u.register(m.addr, m.len, MODE_MISSING).unwrap();
        let addr = m.addr;
        let t = std::thread::spawn(move || {
            // SAFETY: madvise and munmap of the test's own mapping, whose `Map` is forgotten
            // below so that it is not unmapped twice.
            unsafe {
                libc::madvise(
                    addr as *mut libc::c_void,
                    PAGE as usize,
                    libc::MADV_DONTNEED,
                );
                libc::munmap((addr + 3 * PAGE) as *mut libc::c_void, PAGE as usize);
            }
        });
        let mut ev = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ev.len() < 2 {
            assert!(Instant::now() < deadline, "events missing: {ev:?}");
            poll_readable(&[u.as_fd()], Some(Duration::from_millis(100))).unwrap();
            u.read_events(&mut ev).unwrap();
        }
        t.join().unwrap();
        assert!(
            matches!(ev[0], Event::Remove { start, end } if start == addr && end == addr + PAGE)
        );
        assert!(matches!(ev[1], Event::Unmap { start, .. } if start == addr + 3 * PAGE));
        drop(u);
        let rest = Map {
            addr: m.addr,
            len: 3 * PAGE,
        };
        std::mem::forget(m);
        drop(rest);
    }

    #[test]
    fn pidfd_of_a_child_sees_its_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = pidfd_open(child.id() as i32).unwrap();
        assert!(!p.has_exited());
        p.send_signal(libc::SIGKILL).unwrap();
        assert!(p.wait_exited(Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(p.send_signal(0).is_err(), "reaped");
    }

    #[test]
    fn eventfd_notifies() {
        let e = EventFd::new().unwrap();
        assert!(!poll_readable(&[e.as_fd()], Some(Duration::ZERO)).unwrap()[0]);
        e.notify();
        assert!(poll_readable(&[e.as_fd()], Some(Duration::ZERO)).unwrap()[0]);
        e.clear();
        assert!(!poll_readable(&[e.as_fd()], Some(Duration::ZERO)).unwrap()[0]);
    }
}
