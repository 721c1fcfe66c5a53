//! The code that runs in a forked child of the agent, between `fork` and `exec`.
//!
//! The agent is multi-threaded, so after `fork` only async-signal-safe work is allowed: no
//! allocation, no locks. Everything here works from a [`ChildPlan`] prepared before the fork
//! and makes plain system calls (through nix where it does not allocate: its path arguments
//! are `CStr`s, passed on as they are).
//!
//! [`run`] runs inside `Command::pre_exec`. It forks once more: the first child (the
//! supervisor) stays outside the container, waits for the second and either writes its exit
//! code to a file (containers) or exits with it (exec); the second child sets up the
//! namespaces and the root file system and returns, and `Command` then `exec`s the program.

use std::ffi::CStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, open, renameat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, UnlinkatFlags, chdir, chroot, fchdir, fork, mkdir, pivot_root,
    setgid, setgroups, sethostname, setsid, setuid, symlinkat, unlinkat, write,
};

use super::plan::{CLONE_NEWTIME, ChildPlan, Op};

/// [`super::plan::OLD_ROOT`], relative and absolute.
const OLD_ROOT: &CStr = c".podsnap-old-root";
const OLD_ROOT_ABS: &CStr = c"/.podsnap-old-root";

/// A report on the info pipe: the container process's pid (host view).
const MSG_PID: u8 = b'P';
/// A report on the info pipe: a failed step.
const MSG_ERR: u8 = b'E';

/// A step of [`run`], named in error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `unshare(CLONE_NEWPID | CLONE_NEWTIME)`.
    UnsharePidTime,
    /// Writing `/proc/self/timens_offsets`.
    TimeOffsets,
    /// Entering plan.join_before_fork\[i\].
    JoinBeforeFork(u16),
    /// The second `fork`.
    Fork,
    /// Joining the outer cgroup.
    CgroupOuter,
    /// Entering plan.join\[i\].
    Join(u16),
    /// `unshare` of the new namespaces.
    Unshare,
    /// Joining the container's cgroup.
    CgroupInner,
    /// `sethostname`.
    Hostname,
    /// Bringing `lo` up.
    Loopback,
    /// plan.ops\[i\].
    Op(u16),
    /// Entering the container's root.
    Chroot,
    /// Dropping capabilities from the bounding set.
    Capabilities,
    /// `setgroups`, `setgid`, `setuid`.
    User,
    /// `chdir` to the working directory.
    Cwd,
}

impl Step {
    fn code(self) -> u32 {
        let (tag, i) = match self {
            Step::UnsharePidTime => (1, 0),
            Step::TimeOffsets => (2, 0),
            Step::JoinBeforeFork(i) => (3, i),
            Step::Fork => (4, 0),
            Step::CgroupOuter => (5, 0),
            Step::Join(i) => (6, i),
            Step::Unshare => (7, 0),
            Step::CgroupInner => (8, 0),
            Step::Hostname => (9, 0),
            Step::Loopback => (10, 0),
            Step::Op(i) => (11, i),
            Step::Chroot => (12, 0),
            Step::Capabilities => (13, 0),
            Step::User => (14, 0),
            Step::Cwd => (15, 0),
        };
        (tag << 16) | u32::from(i)
    }

    fn from_code(code: u32) -> Option<Self> {
        let i = (code & 0xffff) as u16;
        Some(match code >> 16 {
            1 => Step::UnsharePidTime,
            2 => Step::TimeOffsets,
            3 => Step::JoinBeforeFork(i),
            4 => Step::Fork,
            5 => Step::CgroupOuter,
            6 => Step::Join(i),
            7 => Step::Unshare,
            8 => Step::CgroupInner,
            9 => Step::Hostname,
            10 => Step::Loopback,
            11 => Step::Op(i),
            12 => Step::Chroot,
            13 => Step::Capabilities,
            14 => Step::User,
            15 => Step::Cwd,
            _ => return None,
        })
    }
}

fn ns_name(kind: CloneFlags) -> &'static str {
    match kind {
        k if k == CloneFlags::CLONE_NEWPID => "pid",
        k if k == CloneFlags::CLONE_NEWNET => "network",
        k if k == CloneFlags::CLONE_NEWNS => "mount",
        k if k == CloneFlags::CLONE_NEWUTS => "uts",
        k if k == CloneFlags::CLONE_NEWIPC => "ipc",
        k if k == CloneFlags::CLONE_NEWCGROUP => "cgroup",
        k if k == CLONE_NEWTIME => "time",
        _ => "other",
    }
}

impl ChildPlan {
    /// A step of this plan in words.
    pub fn describe(&self, step: Step) -> String {
        match step {
            Step::UnsharePidTime => "creating the pid and time namespaces".into(),
            Step::TimeOffsets => "writing the time namespace offsets".into(),
            Step::JoinBeforeFork(i) => format!(
                "entering the sandbox's {} namespace",
                self.join_before_fork
                    .get(usize::from(i))
                    .map_or("?", |j| ns_name(j.kind))
            ),
            Step::Fork => "forking the container's first process".into(),
            Step::CgroupOuter => format!(
                "joining the cgroup ({})",
                self.cgroup_outer
                    .as_ref()
                    .map_or(String::new(), |c| c.to_string_lossy().into_owned())
            ),
            Step::Join(i) => format!(
                "entering the {} namespace",
                self.join
                    .get(usize::from(i))
                    .map_or("?", |j| ns_name(j.kind))
            ),
            Step::Unshare => "creating the namespaces".into(),
            Step::CgroupInner => format!(
                "joining the container's cgroup ({})",
                self.cgroup_inner
                    .as_ref()
                    .map_or(String::new(), |c| c.to_string_lossy().into_owned())
            ),
            Step::Hostname => "setting the host name".into(),
            Step::Loopback => "bringing the loopback device up".into(),
            Step::Op(i) => self
                .ops
                .get(usize::from(i))
                .map_or_else(|| "?".into(), Op::describe),
            Step::Chroot => "entering the container's root file system".into(),
            Step::Capabilities => "dropping capabilities".into(),
            Step::User => format!("switching to user {}:{}", self.user.0, self.user.1),
            Step::Cwd => format!(
                "changing into the working directory {}",
                self.cwd
                    .as_ref()
                    .map_or(String::new(), |c| c.to_string_lossy().into_owned())
            ),
        }
    }
}

/// What the children reported on the info pipe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reports {
    /// The container process's pid.
    pub pid: Option<u32>,
    /// The step that failed and its error.
    pub error: Option<(Step, Errno)>,
}

/// Reads the info pipe to its end (every writer closed: the agent's copy must be dropped).
pub fn read_reports(read_end: OwnedFd) -> Reports {
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut bytes);
    let mut out = Reports::default();
    for msg in bytes.chunks_exact(9) {
        let a = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let b = i32::from_le_bytes([msg[5], msg[6], msg[7], msg[8]]);
        match msg[0] {
            MSG_PID => out.pid = Some(a),
            MSG_ERR => {
                if let Some(step) = Step::from_code(a) {
                    out.error.get_or_insert((step, Errno::from_raw(b)));
                }
            }
            _ => {}
        }
    }
    out
}

fn report(info: Option<&OwnedFd>, kind: u8, a: u32, b: i32) {
    if let Some(fd) = info {
        let mut msg = [0u8; 9];
        msg[0] = kind;
        msg[1..5].copy_from_slice(&a.to_le_bytes());
        msg[5..9].copy_from_slice(&b.to_le_bytes());
        let _ = write(fd, &msg);
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends this forked process without running exit handlers or destructors
    // that belong to the agent; it is async-signal-safe.
    unsafe { libc::_exit(code) }
}

fn close_all_from(first: u32) {
    // SAFETY: close_range(2) only closes descriptors of this (single-threaded, forked) process;
    // nothing here uses them afterwards.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32);
    }
}

fn write_file(path: &CStr, data: &[u8]) -> Result<(), Errno> {
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let n = write(&fd, data)?;
    if n != data.len() {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// Formats `n` in decimal into `buf`; the digits.
fn decimal(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    let negative = n < 0;
    let mut v = i64::from(n).unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

fn wait_code(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The supervisor: reports the pid, lets go of every descriptor, waits, and records or passes
/// on the exit code.
fn supervise(plan: &ChildPlan, child: Pid) -> ! {
    report(plan.info.as_ref(), MSG_PID, child.as_raw() as u32, 0);
    close_all_from(0);
    let code = wait_code(child);
    match &plan.exit_file {
        Some((file, tmp)) => {
            let mut buf = [0u8; 12];
            let digits = decimal(code, &mut buf);
            if let Ok(fd) = open(
                tmp.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                let _ = write(&fd, digits);
                drop(fd);
                let _ = renameat(AT_FDCWD, tmp.as_c_str(), AT_FDCWD, file.as_c_str());
            }
            exit_now(0)
        }
        None => exit_now(code),
    }
}

fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `raw` is a descriptor just returned by socket(2) and owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data, for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: SIOCGIFFLAGS fills `req`, which is a valid, writable ifreq for the whole call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq naming `lo` with its flags set.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

fn ignore_exists(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

fn run_op(op: &Op, sources: &mut [Option<OwnedFd>]) -> Result<(), Errno> {
    match op {
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(
            source.as_deref(),
            target.as_c_str(),
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::OpenSource { path, slot } => {
            let fd = open(
                path.as_c_str(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            // The slots were made before the fork: this stores, it does not allocate.
            match sources.get_mut(*slot) {
                Some(place) => {
                    *place = Some(fd);
                    Ok(())
                }
                None => Err(Errno::EBADF),
            }
        }
        Op::BindSource { slot, target } => {
            let fd = sources
                .get(*slot)
                .and_then(Option::as_ref)
                .ok_or(Errno::EBADF)?;
            let mut buf = [0u8; 40];
            let prefix = b"/proc/self/fd/";
            buf[..prefix.len()].copy_from_slice(prefix);
            let mut digits = [0u8; 12];
            let d = decimal(fd.as_raw_fd(), &mut digits);
            buf[prefix.len()..prefix.len() + d.len()].copy_from_slice(d);
            let source = CStr::from_bytes_until_nul(&buf).map_err(|_| Errno::EINVAL)?;
            mount(
                Some(source),
                target.as_c_str(),
                None::<&CStr>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&CStr>,
            )
        }
        Op::RemountReadOnly { target } => mount(
            None::<&CStr>,
            target.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&CStr>,
        ),
        Op::Mkdir(path) => ignore_exists(mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755))),
        Op::Touch(path) => open(
            path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop)
        .or_else(|e| match e {
            // A directory there: the bind fails later with a clear step.
            Errno::EISDIR => Ok(()),
            e => Err(e),
        }),
        Op::Symlink { target, link } => {
            ignore_exists(symlinkat(target.as_c_str(), AT_FDCWD, link.as_c_str()))
        }
        Op::Chdir(path) => chdir(path.as_c_str()),
        Op::PivotRoot => {
            pivot_root(c".", OLD_ROOT)?;
            chdir(c"/")
        }
        Op::DetachOldRoot => {
            umount2(OLD_ROOT_ABS, MntFlags::MNT_DETACH)?;
            unlinkat(AT_FDCWD, OLD_ROOT_ABS, UnlinkatFlags::RemoveDir)
        }
    }
}

fn drop_capabilities(keep: u64) -> Result<(), Errno> {
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers and touches no memory.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            match Errno::last() {
                // Past the last capability this kernel knows.
                Errno::EINVAL => break,
                e => return Err(e),
            }
        }
    }
    Ok(())
}

/// A seed for a restore: inside every namespace, root and cgroup of the container, with every
/// privilege, fds 0–2 (the container's log) kept and the rest closed (so that the agent's
/// spawn sees the end of its pipes), waiting to be taken over with ptrace.
fn become_seed() -> ! {
    close_all_from(3);
    loop {
        // SAFETY: pause(2) takes no arguments; it returns only when a signal was handled.
        unsafe {
            libc::pause();
        }
    }
}

/// Runs `plan` in a forked child (inside `Command::pre_exec`). Returns `Ok` in the process
/// that goes on to `exec` the program; the supervisor never returns. On failure the step is
/// reported on the info pipe and the error returned (so `Command::spawn` fails with it).
pub fn run(plan: &mut ChildPlan) -> std::io::Result<()> {
    let ChildPlan { sources, ops, .. } = plan;
    let mut sources = std::mem::take(sources);
    let ops = std::mem::take(ops);
    let result = run_steps(plan, &ops, &mut sources);
    // Only reached on failure or in the process that execs: put things back for Drop.
    plan.ops = ops;
    plan.sources = sources;
    result
}

fn run_steps(plan: &ChildPlan, ops: &[Op], sources: &mut [Option<OwnedFd>]) -> std::io::Result<()> {
    let info = plan.info.as_ref();
    let fail = |step: Step| {
        move |e: Errno| {
            report(info, MSG_ERR, step.code(), e as i32);
            std::io::Error::from_raw_os_error(e as i32)
        }
    };
    if plan.exit_file.is_some() {
        // Out of the agent's session: the supervisor outlives the agent.
        let _ = setsid();
    }
    if plan.new_pid_and_time {
        unshare(CloneFlags::CLONE_NEWPID | CLONE_NEWTIME).map_err(fail(Step::UnsharePidTime))?;
        if let Some(offsets) = &plan.timens_offsets {
            write_file(c"/proc/self/timens_offsets", offsets.as_bytes())
                .map_err(fail(Step::TimeOffsets))?;
        }
    }
    for (i, j) in plan.join_before_fork.iter().enumerate() {
        setns(&j.fd, j.kind).map_err(fail(Step::JoinBeforeFork(i as u16)))?;
    }
    // SAFETY: this process is a single-threaded child of `fork`, so a further fork is sound;
    // both sides only make async-signal-safe calls from here on.
    match unsafe { fork() }.map_err(fail(Step::Fork))? {
        ForkResult::Parent { child } => supervise(plan, child),
        ForkResult::Child => {}
    }
    if plan.exit_file.is_none() {
        // An exec'd command dies with its supervisor (the agent's child).
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    }
    if let Some(procs) = &plan.cgroup_outer {
        write_file(procs, b"0").map_err(fail(Step::CgroupOuter))?;
    }
    for (i, j) in plan.join.iter().enumerate() {
        setns(&j.fd, j.kind).map_err(fail(Step::Join(i as u16)))?;
    }
    if let Some(flags) = plan.unshare {
        unshare(flags).map_err(fail(Step::Unshare))?;
    }
    if let Some(procs) = &plan.cgroup_inner {
        write_file(procs, b"0").map_err(fail(Step::CgroupInner))?;
    }
    if let Some(name) = &plan.hostname {
        sethostname(name).map_err(fail(Step::Hostname))?;
    }
    if plan.loopback_up {
        loopback_up().map_err(fail(Step::Loopback))?;
    }
    for (i, op) in ops.iter().enumerate() {
        run_op(op, sources).map_err(fail(Step::Op(i as u16)))?;
    }
    if let Some(root) = &plan.chroot {
        fchdir(root)
            .and_then(|()| chroot(c"."))
            .map_err(fail(Step::Chroot))?;
    }
    if plan.seed {
        become_seed();
    }
    drop_capabilities(plan.keep_caps).map_err(fail(Step::Capabilities))?;
    let (uid, gid) = plan.user;
    setgroups(&[Gid::from_raw(gid)])
        .and_then(|()| setgid(Gid::from_raw(gid)))
        .and_then(|()| setuid(Uid::from_raw(uid)))
        .map_err(fail(Step::User))?;
    if let Some(cwd) = &plan.cwd {
        chdir(cwd.as_c_str()).map_err(fail(Step::Cwd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_numbers_round_trip() {
        for step in [Step::Op(7), Step::Join(2), Step::Cwd, Step::UnsharePidTime] {
            assert_eq!(Step::from_code(step.code()), Some(step));
        }
        let mut buf = [0u8; 12];
        assert_eq!(decimal(137, &mut buf), b"137");
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(-5, &mut buf), b"-5");
    }

    #[test]
    fn reports_are_read_from_the_pipe() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        report(Some(&w), MSG_PID, 4242, 0);
        report(Some(&w), MSG_ERR, Step::Op(3).code(), Errno::ENOENT as i32);
        drop(w);
        let got = read_reports(r);
        assert_eq!(got.pid, Some(4242));
        assert_eq!(got.error, Some((Step::Op(3), Errno::ENOENT)));
    }
}
