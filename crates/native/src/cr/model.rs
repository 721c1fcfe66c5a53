//! The saved state of a process, as written in the image manifest.
//!
//! Every type here is plain data with named fields (serde), independent of the layout of the
//! kernel's or this crate's structs; [`Regs`] converts to and from `user_regs_struct`.

use serde::{Deserialize, Serialize};

/// One process: memory, files, signal dispositions, credentials and its threads.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessImage {
    /// The PID it had, and gets back.
    pub pid: i32,
    /// The PID of its parent in the image; 0 for the root of the tree (whose parent becomes
    /// the restorer).
    pub ppid: i32,
    /// Its process group.
    pub pgid: i32,
    /// Its session.
    pub sid: i32,
    /// The signal its parent gets when it exits (`exit_signal`, normally `SIGCHLD`).
    pub exit_signal: i32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The executable (`/proc/PID/exe`).
    pub exe: String,
    /// The working directory.
    pub cwd: String,
    /// The file mode creation mask.
    pub umask: u32,
    /// `personality(2)` flags.
    pub personality: u64,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Real, effective, saved and filesystem user IDs.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem group IDs.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub caps: Caps,
    /// Resource limits: resource number, soft and hard limit.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Armed interval timers (`ITIMER_REAL`, `_VIRTUAL`, `_PROF`): which, interval and value
    /// in microseconds.
    pub itimers: Vec<(u32, u64, u64)>,
    /// The address-space layout that `PR_SET_MM_MAP` restores.
    pub mm: MmLayout,
    /// Every mapping, in address order.
    pub vmas: Vec<Vma>,
    /// Every open file descriptor, in fd order.
    pub fds: Vec<Fd>,
    /// Dispositions of signals 1..=64 (except SIGKILL and SIGSTOP).
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (raw `siginfo_t`, hex), queued again blocked.
    pub shared_pending: Vec<String>,
    /// Its threads; the first is the main thread (its TID is the PID).
    pub threads: Vec<ThreadState>,
    /// Signals that arrived while the process was being checkpointed: sent again after restore.
    pub deferred_signals: Vec<i32>,
    /// Its page file in the image directory and the index of that file.
    pub pages: super::image::PagesInfo,
    /// Shared memory objects this process makes again for every process that maps them
    /// (it is the first in the image to map each).
    #[serde(default)]
    pub shmem: Vec<ShmemObject>,
    /// Its POSIX timers (`timer_create`), made again with the same IDs.
    #[serde(default)]
    pub posix_timers: Vec<PosixTimer>,
}

/// A POSIX timer (`timer_create`): what `/proc/PID/timers` and `timer_gettime` say of it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PosixTimer {
    /// Its ID (the kernel's `timer_t`), which it gets back.
    pub id: i32,
    /// Its clock (`CLOCK_MONOTONIC`, `CLOCK_REALTIME`...).
    pub clock: i32,
    /// `sigev_notify`: `SIGEV_SIGNAL`, `SIGEV_NONE`, or either with `SIGEV_THREAD_ID`.
    pub notify: i32,
    /// `sigev_signo`.
    pub signal: i32,
    /// `sigev_value` (the pointer or integer the signal carries).
    pub value: u64,
    /// The thread it signals (`SIGEV_THREAD_ID`); 0 otherwise.
    pub tid: i32,
    /// Its period in nanoseconds (0: one-shot).
    pub interval_ns: u64,
    /// Nanoseconds until it fires (0: disarmed).
    pub value_ns: u64,
}

/// A shared memory object (`MAP_SHARED` anonymous memory, a memfd, a deleted file of a
/// tmpfs), saved once however many processes map it and made again once, as a memfd, by its
/// owner (the first process of the image that maps it); the other processes take it from the
/// owner with `pidfd_getfd`. Its saved pages are in the owner's page file, at the addresses
/// of its [`Backing::ShmemStage`] mapping.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ShmemObject {
    /// Its number in the image (unique in the image).
    pub id: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The name given to `memfd_create` (what `/proc/PID/maps` shows after `/memfd:`).
    pub name: String,
    /// Its seals (`F_GET_SEALS`); `F_SEAL_SEAL` alone: sealing not allowed.
    pub seals: u32,
}

/// A child process that had exited but was not reaped by its parent: made again, and made
/// to exit with its code, so that the parent finds it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zombie {
    /// Its PID.
    pub pid: i32,
    /// Its parent, a process of the image.
    pub ppid: i32,
    /// Its exit code (a death by signal N is saved as 128 + N).
    pub exit_code: i32,
}

/// Capability sets, as `/proc/PID/status` shows them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Caps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// The `mm_struct` fields that `PR_SET_MM_MAP` sets.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The auxiliary vector (`/proc/PID/auxv`), as 64-bit words.
    pub auxv: Vec<u64>,
}

/// One mapping (VMA).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// `VM_GROWSDOWN` (a stack that grows down).
    pub growsdown: bool,
    /// smaps VmFlags that are restored with `madvise`: `dd`, `wf`, `hg`, `nh`.
    pub advice: Vec<String>,
    /// What backs it.
    pub backing: Backing,
}

impl Vma {
    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it has no bytes (never, for a real mapping).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What backs a mapping.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backing {
    /// Private anonymous memory (heap, stack, `MAP_ANONYMOUS`); its present non-zero pages are
    /// in the page file.
    Anon {
        /// The name in maps (`[heap]`, `[stack]`, `[anon:…]`), if any.
        name: Option<String>,
    },
    /// A private mapping of a regular file; re-mapped from the file, and its changed pages
    /// (anonymous copies) are in the page file.
    File {
        /// The file's path.
        path: String,
        /// Offset in the file, in bytes.
        offset: u64,
        /// The file's size at checkpoint (a restore refuses a file that changed).
        size: u64,
        /// The file's modification time at checkpoint, in nanoseconds since the epoch.
        mtime_ns: i64,
    },
    /// `[vvar]`, `[vvar_vclock]` or `[vdso]`: the restoring process's own, moved here.
    Vdso {
        /// The name in maps.
        name: String,
    },
    /// A shared mapping of a regular file (a file of `/dev/shm` included): mapped again from
    /// the file, whose pages are the mapping's (none are in the page file).
    SharedFile {
        /// The file's path.
        path: String,
        /// Offset in the file, in bytes.
        offset: u64,
        /// The file's size at checkpoint (a restore refuses a file that changed).
        size: u64,
        /// The file's modification time at checkpoint, in nanoseconds since the epoch.
        mtime_ns: i64,
        /// Whether the mapping may be written (`VM_MAYWRITE`): the file is opened read-write.
        writable: bool,
    },
    /// A mapping of a shared memory object ([`ShmemObject`]), `MAP_SHARED` or `MAP_PRIVATE`
    /// (then its changed pages, anonymous copies, are in the page file).
    Shmem {
        /// The object.
        id: u64,
        /// The process that makes the object again (has it in [`ProcessImage::shmem`]).
        owner: i32,
        /// Offset in the object, in bytes.
        offset: u64,
        /// `MAP_SHARED` (else `MAP_PRIVATE`).
        shared: bool,
        /// The last mapping of the object in the image: once it is mapped, the owner's
        /// temporary fd of the object is closed.
        last: bool,
    },
    /// Not a mapping of the process: the place where the owner of shared memory object `id`
    /// maps it while its saved pages are written, unmapped before the process runs.
    ShmemStage {
        /// The object.
        id: u64,
    },
}

/// One open file descriptor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Fd {
    /// Its number.
    pub fd: i32,
    /// What it refers to.
    pub kind: FdKind,
}

/// What a file descriptor refers to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FdKind {
    /// A file opened by path (regular file, directory, `/dev/null`, `/dev/zero`,
    /// `/dev/urandom`, `/dev/random`), re-opened with the same flags and offset.
    Path {
        /// The path.
        path: String,
        /// `open(2)` flags (from fdinfo), including `O_CLOEXEC`.
        flags: u32,
        /// The file offset.
        pos: u64,
        /// Whether the offset is restored (regular files).
        seekable: bool,
    },
    /// Standard input, output or error on a terminal, pipe or socket: re-opened on restore
    /// onto the file the restorer names (default `/dev/null`).
    Stdio {
        /// What it was (the `/proc/PID/fd` link), for information.
        was: String,
    },
    /// The same open file (description) as fd `fd` of process `pid`, which comes earlier in
    /// the image (a `dup`, or an fd inherited across `fork`): shares its offset and flags.
    Dup {
        /// The process holding the first fd of this open file.
        pid: i32,
        /// That fd.
        fd: i32,
        /// This fd's close-on-exec flag.
        cloexec: bool,
    },
    /// One end of an unnamed pipe.
    Pipe {
        /// The pipe's inode at checkpoint: both ends of one pipe have the same.
        inode: u64,
        /// The write end (else the read end).
        write: bool,
        /// `O_NONBLOCK` and `O_CLOEXEC` as open flags.
        flags: u32,
        /// The pipe's buffer size (`F_GETPIPE_SZ`).
        size: u32,
        /// Bytes in the pipe at checkpoint (hex), written back on restore; kept on the first
        /// end of the pipe in the image.
        data: String,
    },
    /// An eventfd with its counter.
    EventFd {
        /// The counter.
        count: u64,
        /// `EFD_SEMAPHORE`, `EFD_NONBLOCK`, `EFD_CLOEXEC`.
        flags: u32,
    },
    /// A signalfd with its signal mask.
    SignalFd {
        /// The signals it reads.
        mask: u64,
        /// `SFD_NONBLOCK`, `SFD_CLOEXEC`.
        flags: u32,
    },
    /// A timerfd, armed again with its remaining time.
    TimerFd {
        /// Its clock.
        clockid: i32,
        /// `TFD_NONBLOCK`, `TFD_CLOEXEC`.
        flags: u32,
        /// Nanoseconds until it fires (0: disarmed).
        value_ns: u64,
        /// Its period in nanoseconds (0: one-shot).
        interval_ns: u64,
        /// Expirations not read yet (given back as an immediate expiry when non-zero).
        ticks: u64,
    },
    /// An Internet (TCP or UDP, IPv4 or IPv6) socket that is not connected: listening,
    /// bound or fresh. Made again, bound to the same port; an address that belonged to the
    /// old network (neither loopback nor unspecified) becomes the unspecified one.
    InetSocket {
        /// `AF_INET` or `AF_INET6`.
        family: i32,
        /// `SOCK_STREAM` or `SOCK_DGRAM`.
        sock_type: i32,
        /// The protocol.
        protocol: i32,
        /// `O_NONBLOCK` and `O_CLOEXEC` as open flags.
        flags: u32,
        /// The bound address (raw `sockaddr`, hex), if bound.
        addr: Option<String>,
        /// Listening (`SO_ACCEPTCONN`).
        listening: bool,
        /// `SO_REUSEADDR`.
        reuse_addr: bool,
        /// `SO_REUSEPORT`.
        reuse_port: bool,
        /// `IPV6_V6ONLY` (IPv6 only).
        v6only: bool,
    },
    /// A connected socket whose peer is not part of the restore (a TCP connection; a Unix
    /// socket to outside): it comes back closed by its peer — reads see the end, writes fail.
    ClosedSocket {
        /// `O_NONBLOCK` and `O_CLOEXEC` as open flags.
        flags: u32,
        /// What it was, for information.
        was: String,
    },
    /// An epoll instance and its interest list (registered again once every fd exists).
    Epoll {
        /// `EPOLL_CLOEXEC` as open flags.
        flags: u32,
        /// The watched fds: fd, events, user data.
        watches: Vec<(i32, u32, u64)>,
    },
    /// A Unix socket (stream, datagram or seqpacket): a listening or bound one is bound to
    /// its name again (a stale socket file at its path is replaced); one connected to a
    /// socket of the tree is made again as a `socketpair` with its peer (names are not kept).
    UnixSocket {
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        sock_type: i32,
        /// `O_NONBLOCK` and `O_CLOEXEC` as open flags.
        flags: u32,
        /// Its inode at checkpoint.
        inode: u64,
        /// The inode of the socket of the tree it is connected to.
        peer: Option<u64>,
        /// Its name (raw `sun_path`, hex; abstract names start with `00`), when it is not
        /// connected and bound; a path is absolute.
        name: Option<String>,
        /// Listening.
        listening: bool,
        /// The messages (stream: the bytes) in its receive queue, hex; written back through
        /// its peer (or, for a bound datagram socket, sent to its name).
        queue: Vec<String>,
    },
    /// An established TCP connection over loopback whose other end is in the tree, made
    /// again in repair mode (`TCP_REPAIR`) with its sequence numbers, queues and options.
    TcpConnection {
        /// `AF_INET` or `AF_INET6`.
        family: i32,
        /// `O_NONBLOCK` and `O_CLOEXEC` as open flags.
        flags: u32,
        /// The local address (raw `sockaddr`, hex).
        local: String,
        /// The remote address (raw `sockaddr`, hex).
        remote: String,
        /// The next sequence number to send.
        send_seq: u32,
        /// The next sequence number expected.
        recv_seq: u32,
        /// The send queue (hex): sent but unacknowledged bytes, then `unsent` ones.
        send_queue: String,
        /// Bytes at the end of the send queue that were never sent.
        unsent: u32,
        /// The receive queue (hex).
        recv_queue: String,
        /// The MSS clamp.
        mss: u32,
        /// Send and receive window scale, if negotiated.
        wscale: Option<(u8, u8)>,
        /// SACK negotiated.
        sack: bool,
        /// Timestamps negotiated.
        timestamps: bool,
        /// The connection's timestamp clock.
        timestamp: u32,
        /// `TCP_REPAIR_WINDOW`: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
        window: [u32; 5],
        /// `TCP_NODELAY`.
        nodelay: bool,
        /// `SO_REUSEADDR` (an accepted connection has its listener's).
        #[serde(default)]
        reuse_addr: bool,
    },
    /// A named pipe (FIFO) opened by path, with its buffered bytes.
    Fifo {
        /// The path.
        path: String,
        /// `open(2)` flags.
        flags: u32,
        /// The pipe's inode: every end of one FIFO has the same.
        inode: u64,
        /// Bytes in the pipe at checkpoint (hex), kept on the first end in the image.
        data: String,
    },
    /// A regular file deleted while open: its contents are in the image and it is made
    /// again as an unnamed file (`O_TMPFILE`) in the same directory.
    DeletedFile {
        /// The path it had (without ` (deleted)`).
        path: String,
        /// `open(2)` flags.
        flags: u32,
        /// The file offset.
        pos: u64,
        /// Its permission bits.
        mode: u32,
        /// Its contents, hex.
        data: String,
    },
}

/// A signal's disposition (`struct kernel_sigaction`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub struct SigAction {
    pub sig: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// A thread's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ThreadState {
    /// Its TID, which it gets back.
    pub tid: i32,
    /// Its name (`/proc/PID/task/TID/comm`).
    pub comm: String,
    /// General registers (NT_PRSTATUS), as saved (syscall restart is decided at restore).
    pub regs: Regs,
    /// The XSAVE area (NT_X86_XSTATE), hex.
    pub xstate: String,
    /// The blocked signal mask.
    pub sigmask: u64,
    /// Signals pending for this thread (raw `siginfo_t`, hex), queued again blocked.
    pub pending: Vec<String>,
    /// `sigaltstack`: sp, flags, size.
    pub altstack: (u64, i32, u64),
    /// `set_tid_address` value (`PR_GET_TID_ADDRESS`).
    pub clear_child_tid: u64,
    /// `set_robust_list`: head and length.
    pub robust_list: (u64, u64),
    /// The registered rseq area, if any: address, length, signature.
    pub rseq: Option<(u64, u32, u32)>,
    /// Its seccomp filters, oldest first: raw `struct sock_filter` programs, hex. Installed
    /// again, in order, as its last injected calls.
    #[serde(default)]
    pub seccomp: Vec<String>,
}

/// x86-64 general registers, field for field `user_regs_struct`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[allow(missing_docs)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

macro_rules! regs_conv {
    ($($f:ident),*) => {
        impl From<libc::user_regs_struct> for Regs {
            fn from(r: libc::user_regs_struct) -> Self {
                Regs { $($f: r.$f),* }
            }
        }
        impl Regs {
            /// Into the kernel's layout.
            pub fn to_user_regs(&self) -> libc::user_regs_struct {
                // SAFETY: user_regs_struct is plain old data (integers only); all-zero is valid.
                let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
                $(r.$f = self.$f;)*
                r
            }
        }
    };
}
regs_conv!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs
);

impl Regs {
    /// The registers to resume with: a syscall that the checkpoint interrupted is restarted
    /// the way the kernel would have when no handler runs (`-ERESTARTSYS`/`-ERESTARTNOINTR`:
    /// back up over the `syscall` instruction), or fails with `EINTR` — as after a signal
    /// handler — when a user-space restart would race with a signal (`-ERESTARTNOHAND`:
    /// `pause`, `sigsuspend`, `poll`, `select`; a handler running between the resume and the
    /// restarted call would leave `pause` asleep for good) or needed kernel state that is gone
    /// (`-ERESTART_RESTARTBLOCK`: `nanosleep`, `clock_nanosleep`). `orig_rax` is cleared so
    /// the kernel does no restart handling of its own.
    pub fn for_resume(&self) -> Regs {
        let mut r = *self;
        if (r.orig_rax as i64) >= 0 {
            match r.rax as i64 {
                -513..=-512 => {
                    r.rax = r.orig_rax;
                    r.rip -= 2;
                }
                -514 | -516 => r.rax = (-(libc::EINTR as i64)) as u64,
                _ => {}
            }
        }
        r.orig_rax = u64::MAX;
        r
    }
}

/// Lower-case hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of lower- or upper-case hex; `None` when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&b)), Some(b));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn interrupted_syscalls_restart_or_fail_with_eintr() {
        let r = Regs {
            orig_rax: 0,
            rax: (-512i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let f = r.for_resume();
        assert_eq!((f.rax, f.rip, f.orig_rax), (0, 0x1000, u64::MAX));
        let r = Regs {
            orig_rax: 34,
            rax: (-514i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        assert_eq!(r.for_resume().rax as i64, -4, "pause returns EINTR");
        let r = Regs {
            orig_rax: 35,
            rax: (-516i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let f = r.for_resume();
        assert_eq!((f.rax as i64, f.rip), (-4, 0x1002));
        // Not in a syscall: untouched but orig_rax.
        let r = Regs {
            orig_rax: u64::MAX,
            rax: (-512i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        assert_eq!(r.for_resume(), r);
    }
}
