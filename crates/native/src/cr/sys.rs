//! Thin wrappers over ptrace, waitpid, /proc/PID/mem and process_vm_readv, and the syscall
//! injector shared by checkpoint and restore. All of this crate's `unsafe` for C/R is here.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::{CrError, Result};

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NT_PRSTATUS: usize = 1;
/// NT_X86_XSTATE.
const NT_X86_XSTATE: usize = 0x202;

fn ptrace(pid: i32, req: libc::c_uint, addr: usize, data: usize, op: &'static str) -> Result<i64> {
    // SAFETY: every caller passes, for `addr`/`data`, either plain integers or pointers to
    // live buffers of the size the request writes (an iovec with its length, a u64...).
    let r = unsafe { libc::ptrace(req, pid, addr, data) };
    if r == -1 {
        Err(CrError::Ptrace {
            pid,
            op,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(r)
    }
}

/// `PTRACE_SEIZE` (no options).
pub fn seize(pid: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_SEIZE, 0, 0, "SEIZE").map(drop)
}

/// `PTRACE_SEIZE` with options.
pub fn seize_with(pid: i32, options: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_SEIZE, 0, options as usize, "SEIZE").map(drop)
}

/// `PTRACE_INTERRUPT`.
pub fn interrupt(pid: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_INTERRUPT, 0, 0, "INTERRUPT").map(drop)
}

/// `PTRACE_CONT` delivering `sig` (0 for none).
pub fn cont(pid: i32, sig: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_CONT, 0, sig as usize, "CONT").map(drop)
}

/// `PTRACE_SYSCALL`: run to the next syscall entry or exit.
pub fn cont_syscall(pid: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_SYSCALL, 0, 0, "SYSCALL").map(drop)
}

/// `PTRACE_DETACH` delivering `sig`.
pub fn detach(pid: i32, sig: i32) -> Result<()> {
    ptrace(pid, libc::PTRACE_DETACH, 0, sig as usize, "DETACH").map(drop)
}

/// How a waited-for tracee changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Stopped: the signal and the ptrace event (`status >> 16`).
    Stopped(i32, i32),
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// `waitpid(pid, __WALL)`, retried on EINTR.
pub fn wait(pid: i32) -> Result<Wait> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live i32 the kernel writes.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CrError::Ptrace {
                pid,
                op: "waitpid",
                source: e,
            });
        }
        break;
    }
    Ok(if libc::WIFSTOPPED(status) {
        Wait::Stopped(libc::WSTOPSIG(status), status >> 16)
    } else if libc::WIFEXITED(status) {
        Wait::Exited(libc::WEXITSTATUS(status))
    } else {
        Wait::Signaled(libc::WTERMSIG(status))
    })
}

/// Waits until the killed tracee `pid` has exited; with `keep_zombie` (the caller is also its
/// parent) the zombie is left for the parent's own wait.
pub fn wait_exit(pid: i32, keep_zombie: bool) {
    loop {
        // SAFETY: all-zero siginfo_t is valid; the kernel writes into the live one.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::__WALL | if keep_zombie { libc::WNOWAIT } else { 0 };
        // SAFETY: `info` is a live siginfo_t.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// `PTRACE_GETREGSET NT_PRSTATUS`.
pub fn get_regs(pid: i32) -> Result<libc::user_regs_struct> {
    // SAFETY: plain integers; all-zero is valid.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: (&raw mut regs).cast(),
        iov_len: size_of::<libc::user_regs_struct>(),
    };
    ptrace(
        pid,
        libc::PTRACE_GETREGSET,
        NT_PRSTATUS,
        (&raw mut iov) as usize,
        "GETREGSET NT_PRSTATUS",
    )?;
    Ok(regs)
}

/// `PTRACE_SETREGSET NT_PRSTATUS`.
pub fn set_regs(pid: i32, regs: &libc::user_regs_struct) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: (regs as *const libc::user_regs_struct).cast_mut().cast(),
        iov_len: size_of::<libc::user_regs_struct>(),
    };
    ptrace(
        pid,
        libc::PTRACE_SETREGSET,
        NT_PRSTATUS,
        (&raw mut iov) as usize,
        "SETREGSET NT_PRSTATUS",
    )
    .map(drop)
}

/// `PTRACE_GETREGSET NT_X86_XSTATE`: the XSAVE area, as long as the kernel made it.
pub fn get_xstate(pid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        pid,
        libc::PTRACE_GETREGSET,
        NT_X86_XSTATE,
        (&raw mut iov) as usize,
        "GETREGSET NT_X86_XSTATE",
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `PTRACE_SETREGSET NT_X86_XSTATE`.
pub fn set_xstate(pid: i32, xstate: &[u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr().cast_mut().cast(),
        iov_len: xstate.len(),
    };
    ptrace(
        pid,
        libc::PTRACE_SETREGSET,
        NT_X86_XSTATE,
        (&raw mut iov) as usize,
        "SETREGSET NT_X86_XSTATE",
    )
    .map(drop)
}

/// `PTRACE_GETSIGMASK`.
pub fn get_sigmask(pid: i32) -> Result<u64> {
    let mut mask = 0u64;
    ptrace(
        pid,
        PTRACE_GETSIGMASK,
        8,
        (&raw mut mask) as usize,
        "GETSIGMASK",
    )?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK`.
pub fn set_sigmask(pid: i32, mask: u64) -> Result<()> {
    ptrace(
        pid,
        PTRACE_SETSIGMASK,
        8,
        (&raw const mask) as usize,
        "SETSIGMASK",
    )
    .map(drop)
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`: the registered rseq area (address, length, signature).
pub fn get_rseq(pid: i32) -> Result<Option<(u64, u32, u32)>> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = RseqConf::default();
    ptrace(
        pid,
        PTRACE_GET_RSEQ_CONFIGURATION,
        size_of::<RseqConf>(),
        (&raw mut c) as usize,
        "GET_RSEQ_CONFIGURATION",
    )?;
    Ok((c.ptr != 0).then_some((c.ptr, c.size, c.sig)))
}

/// `get_robust_list(pid)`: head and length.
pub fn get_robust_list(pid: i32) -> Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: both out-pointers are live and of the sizes the kernel writes.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &raw mut head, &raw mut len) };
    if r != 0 {
        return Err(CrError::Proc {
            pid,
            what: "get_robust_list".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok((head, len as u64))
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory arguments.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `buf.len()` bytes at `addr` of `pid`: `process_vm_readv`, falling back to
/// `/proc/PID/mem` (which also reads pages the process cannot read itself).
pub fn read_remote(pid: i32, mem: &File, addr: u64, buf: &mut [u8]) -> Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` points at `buf`, which is live and as long as the iovec says; the remote
    // iovec is only an address in the other process.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n == buf.len() as isize {
        return Ok(());
    }
    mem.read_exact_at(buf, addr)
        .map_err(|source| CrError::Proc {
            pid,
            what: format!("reading {} bytes of memory at {addr:#x}", buf.len()),
            source,
        })
}

/// The result of a `clone3` for a seed.
pub enum Cloned {
    /// In the parent: the child's PID.
    Parent(i32),
    /// In the child.
    Child,
}

/// `clone3` with `set_tid = [pid]` and `SIGCHLD`, fork-like (no shared memory).
pub fn clone3_with_pid(pid: i32) -> io::Result<Cloned> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tids = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: `args` and `tids` are live for the call; without CLONE_VM the child gets a copy of
    // this address space (like fork), and the caller runs only raw syscalls in the child.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        p => Ok(Cloned::Parent(p as i32)),
    }
}

/// The seed's life after `clone3`: become traced by its parent, stop, and exit if ever
/// resumed as itself. Only raw syscalls (glibc's cached state is the parent's).
pub fn seed_child_main() -> ! {
    // SAFETY: raw syscalls with integer arguments; nothing here touches memory shared with
    // the parent (there is none) or glibc state.
    unsafe {
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::syscall(libc::SYS_exit_group, 111);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Runs syscalls inside a ptrace-stopped process: regs at `code` (which holds `syscall; int3`),
/// continue, wait for the int3's SIGTRAP, read rax.
pub struct Injector {
    /// The tracee.
    pub pid: i32,
    /// `/proc/PID/mem`, read-write.
    pub mem: File,
    /// Where `syscall; int3` is.
    pub code: u64,
    /// Registers to start each injection from (segment registers, flags).
    pub base: libc::user_regs_struct,
    /// Signals that arrived while injecting (not delivered; to be sent again).
    pub deferred: Vec<i32>,
    /// The task an injected fork or clone made last, by its PID in this process's view.
    pub new_task: Option<i32>,
}

impl Injector {
    /// Opens `/proc/PID/mem` of a stopped tracee, taking its current registers as the base.
    pub fn new(pid: i32) -> Result<Injector> {
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| CrError::Proc {
                pid,
                what: "opening /proc/PID/mem".into(),
                source,
            })?;
        let base = get_regs(pid)?;
        Ok(Injector {
            pid,
            mem,
            code: base.rip,
            base,
            deferred: Vec::new(),
            new_task: None,
        })
    }

    /// Writes bytes into the tracee's memory (read-only pages included).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|source| CrError::Proc {
                pid: self.pid,
                what: format!("writing {} bytes of memory at {addr:#x}", data.len()),
                source,
            })
    }

    /// Reads bytes from the tracee's memory.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|source| CrError::Proc {
                pid: self.pid,
                what: format!("reading {} bytes of memory at {addr:#x}", buf.len()),
                source,
            })
    }

    /// Runs syscall `nr` with `args` in the tracee; its raw return value (`-errno` on error).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.base;
        r.rip = self.code;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        set_regs(self.pid, &r)?;
        cont(self.pid, 0)?;
        loop {
            match wait(self.pid)? {
                Wait::Stopped(libc::SIGTRAP, 0) => break,
                Wait::Stopped(sig, 0) => {
                    // A signal arrived before the int3: keep it for later and go on.
                    self.deferred.push(sig);
                    cont(self.pid, 0)?;
                }
                Wait::Stopped(_, ev) => {
                    if [
                        libc::PTRACE_EVENT_FORK,
                        libc::PTRACE_EVENT_VFORK,
                        libc::PTRACE_EVENT_CLONE,
                    ]
                    .contains(&ev)
                    {
                        self.new_task = Some(event_msg(self.pid)? as i32);
                    }
                    cont(self.pid, 0)?
                }
                other => {
                    return Err(CrError::Unexpected {
                        pid: self.pid,
                        what: format!("ended during an injected syscall {nr}: {other:?}"),
                    });
                }
            }
        }
        let after = get_regs(self.pid)?;
        if after.rip != self.code + 3 {
            return Err(CrError::Unexpected {
                pid: self.pid,
                what: format!(
                    "injected syscall {nr} stopped at {:#x}, not after the trampoline at {:#x}",
                    after.rip, self.code
                ),
            });
        }
        Ok(after.rax as i64)
    }

    /// Like [`Injector::syscall`], turning `-errno` into an error naming `call`.
    pub fn call(&mut self, call: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(CrError::Injected {
                pid: self.pid,
                call: call.to_string(),
                source: io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }
}

/// The bytes of `syscall; int3`.
pub const TRAMPOLINE_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];

/// `PTRACE_GETEVENTMSG`: after a fork or clone event stop, the new task's PID.
pub fn event_msg(pid: i32) -> Result<u64> {
    let mut msg = 0u64;
    ptrace(
        pid,
        libc::PTRACE_GETEVENTMSG,
        0,
        (&raw mut msg) as usize,
        "GETEVENTMSG",
    )?;
    Ok(msg)
}

/// The innermost PID of task `tid` (the last `NSpid` of its status): its PID in its own pid
/// namespace.
pub fn ns_pid(tid: i32) -> Result<i32> {
    let status = super::procfs::read_text(tid, "status")?;
    super::procfs::status_field(&status, "NSpid")
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .ok_or_else(|| CrError::Unexpected {
            pid: tid,
            what: "no NSpid in its status".into(),
        })
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(pid: i32, options: i32) -> Result<()> {
    ptrace(
        pid,
        libc::PTRACE_SETOPTIONS,
        0,
        options as usize,
        "SETOPTIONS",
    )
    .map(drop)
}

/// Size of a raw `siginfo_t`.
pub const SIGINFO_LEN: usize = 128;

/// `PTRACE_PEEKSIGINFO`: the signals pending for thread `tid` (or, with `shared`, for its
/// whole process), as raw `siginfo_t`s, oldest first.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<[u8; SIGINFO_LEN]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    let mut buf = [[0u8; SIGINFO_LEN]; 32];
    loop {
        let args = PeekArgs {
            off: out.len() as u64,
            flags: u32::from(shared), // PTRACE_PEEKSIGINFO_SHARED
            nr: buf.len() as i32,
        };
        let n = ptrace(
            tid,
            libc::PTRACE_PEEKSIGINFO,
            (&raw const args) as usize,
            buf.as_mut_ptr() as usize,
            "PEEKSIGINFO",
        )?;
        if n <= 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file (`kcmp`).
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    if r < 0 {
        return Err(CrError::Proc {
            pid: pid1,
            what: format!("kcmp of fd {fd1} with fd {fd2} of process {pid2}"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(r == 0)
}

/// `prlimit(pid, resource)`: soft and hard limit.
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a live rlimit64 the kernel writes; no new limit is passed.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut old,
        )
    };
    if r != 0 {
        return Err(CrError::Proc {
            pid,
            what: format!("prlimit of resource {resource}"),
            source: io::Error::last_os_error(),
        });
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// `prlimit(pid, resource, soft, hard)`.
pub fn set_rlimit(pid: i32, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `new` is a live rlimit64 the kernel reads; no old limit is asked for.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            &new,
            std::ptr::null_mut(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes buffered in the pipe that `/proc/PID/fd/FD` is an end of, without consuming
/// them (a new read end, `tee` into a private pipe), and the pipe's buffer size.
pub fn peek_pipe(pid: i32, fd: i32) -> Result<(Vec<u8>, u32)> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let err = |what: &str| CrError::Proc {
        pid,
        what: format!("{what} of the pipe at fd {fd}"),
        source: io::Error::last_os_error(),
    };
    let src = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|source| CrError::Proc {
            pid,
            what: format!("re-opening the pipe at fd {fd}"),
            source,
        })?;
    // SAFETY: fcntl with integer arguments on a live fd.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size < 0 {
        return Err(err("F_GETPIPE_SZ"));
    }
    let mut ends = [0i32; 2];
    // SAFETY: `ends` is a live [i32; 2] the kernel writes.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(err("a private pipe to copy"));
    }
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: fcntl with integer arguments on a live fd.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
        return Err(err("F_SETPIPE_SZ"));
    }
    // SAFETY: tee between two live pipe fds, integer arguments.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            w.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            return Ok((Vec::new(), size as u32));
        }
        return Err(err("tee"));
    }
    drop(w);
    let mut data = Vec::with_capacity(n as usize);
    File::from(r)
        .read_to_end(&mut data)
        .map_err(|source| CrError::Proc {
            pid,
            what: format!("reading the copy of the pipe at fd {fd}"),
            source,
        })?;
    Ok((data, size as u32))
}

/// A copy of fd `fd` of process `pid` in this process (`pidfd_open` + `pidfd_getfd`): the
/// same open file.
pub fn steal_fd(pid: i32, fd: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let err = |what: &str| CrError::Proc {
        pid,
        what: format!("{what} of fd {fd}"),
        source: io::Error::last_os_error(),
    };
    // SAFETY: pidfd_open takes integers only.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(err("pidfd_open for a copy"));
    }
    // SAFETY: pidfd_open just returned this fd, owned by nobody else.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes integers only.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(err("pidfd_getfd"));
    }
    // SAFETY: pidfd_getfd just returned this fd, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(got as i32) })
}

/// An integer socket option of `fd`.
pub fn sockopt_int(fd: &std::os::fd::OwnedFd, level: i32, name: i32) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and of the sizes getsockopt writes for an int option.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The local (or, with `peer`, the remote) address of a socket, as raw `sockaddr` bytes.
pub fn sock_addr(fd: &std::os::fd::OwnedFd, peer: bool) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let f = if peer {
        libc::getpeername
    } else {
        libc::getsockname
    };
    // SAFETY: `ss` is a live sockaddr_storage of `len` bytes the kernel writes into.
    let r = unsafe { f(fd.as_raw_fd(), (&raw mut ss).cast(), &mut len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote `len` (at most sizeof(ss)) bytes into `ss`.
    let bytes = unsafe { std::slice::from_raw_parts((&raw const ss).cast::<u8>(), len as usize) };
    Ok(bytes.to_vec())
}

/// `waitpid(pid, WNOHANG | __WALL)`: a state change of the tracee, if there is one.
pub fn try_wait(pid: i32) -> Result<Option<Wait>> {
    let mut status = 0;
    // SAFETY: `status` is a live i32 the kernel writes.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    if r == -1 {
        return Err(CrError::Ptrace {
            pid,
            op: "waitpid",
            source: io::Error::last_os_error(),
        });
    }
    if r == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFSTOPPED(status) {
        Wait::Stopped(libc::WSTOPSIG(status), status >> 16)
    } else if libc::WIFEXITED(status) {
        Wait::Exited(libc::WEXITSTATUS(status))
    } else {
        Wait::Signaled(libc::WTERMSIG(status))
    }))
}

/// `PTRACE_SECCOMP_GET_FILTER`.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// `PTRACE_SECCOMP_GET_FILTER`: seccomp filter `index` of thread `tid` (0: the newest) as
/// raw `struct sock_filter`s (8 bytes each); `None` past the oldest. Needs `CAP_SYS_ADMIN`.
pub fn seccomp_filter(tid: i32, index: u64) -> Result<Option<Vec<u8>>> {
    let len = match ptrace(
        tid,
        PTRACE_SECCOMP_GET_FILTER,
        index as usize,
        0,
        "SECCOMP_GET_FILTER",
    ) {
        Ok(n) => n as usize,
        Err(CrError::Ptrace { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; len * 8];
    let n = ptrace(
        tid,
        PTRACE_SECCOMP_GET_FILTER,
        index as usize,
        buf.as_mut_ptr() as usize,
        "SECCOMP_GET_FILTER",
    )? as usize;
    buf.truncate(n * 8);
    Ok(Some(buf))
}
