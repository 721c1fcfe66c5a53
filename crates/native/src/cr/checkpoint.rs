//! Checkpoint of a process tree: every process and thread under a root process.
//!
//! The tree is walked through `/proc/PID/task/TID/children` and every thread is stopped with
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, walking again until no new process or thread appears.
//! Then, for each process, parents first: general registers (fs_base/gs_base included), the
//! XSAVE area, the signal mask, pending signals (per thread and shared), the alternate signal
//! stack, clear_child_tid, the robust futex list and the rseq registration of every thread,
//! with its name; every signal disposition, brk and the `PR_SET_MM_MAP` layout with the
//! auxiliary vector, cwd, umask, personality, no_new_privs, credentials, capabilities,
//! resource limits and armed interval timers, comm, parent, process group and session; every
//! mapping (private anonymous with its present non-zero pages; private file mappings with
//! their changed pages; the vDSO block by position only); the fds (see [`super::files`]).
//!
//! Shared memory (`MAP_SHARED` anonymous memory, memfds mapped shared or private, deleted
//! tmpfs files) is one object per device and inode across the tree: its present non-zero
//! pages are saved once, by the first process that maps it (at a staging place of its
//! layout, see [`super::model::ShmemObject`]); shared mappings of regular files (`/dev/shm`
//! included) are mapped again from the file, whose pages they are.
//!
//! Refused (an error naming the process and the resource, nothing written): strict seccomp,
//! seccomp filters installed with privileges since dropped (without no_new_privs), a
//! tracer, zombies, POSIX timers with `SIGEV_THREAD`, SysV shared memory, hugetlb mappings, memfds sealed against
//! writes, mappings of deleted files (but tmpfs), the fds [`super::files`] refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::info;

use super::files;
use super::image::{self, Manifest, PAGE, PagesWriter};
use super::model::{
    Backing, FdKind, MmLayout, PosixTimer, ProcessImage, ShmemObject, SigAction, ThreadState, Vma,
    Zombie, to_hex,
};
use super::procfs::{self, MapEntry, Stat};
use super::sys::{self, Injector, TRAMPOLINE_CODE, Wait};
use super::{CrError, Result};

/// How to checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Let the processes run on afterwards (default: kill them once the image is durable, so
    /// that their PIDs are free for the restore).
    pub leave_running: bool,
    /// Files that, open as standard input, output or error, are saved as "stdio" (given a new
    /// file by the restorer) rather than by path: e.g. a container's log file on the host.
    pub stdio_paths: Vec<PathBuf>,
}

/// What a checkpoint did, for people.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    /// The root process.
    pub pid: i32,
    /// Processes saved.
    pub processes: usize,
    /// Threads saved.
    pub threads: usize,
    /// Mappings saved.
    pub vmas: usize,
    /// Bytes of page data written.
    pub page_bytes: u64,
    /// How long the processes were stopped.
    pub frozen: Duration,
}

fn refused(pid: i32, resource: impl Into<String>, hint: impl Into<String>) -> CrError {
    CrError::Refused {
        pid,
        resource: resource.into(),
        hint: hint.into(),
    }
}

/// The processes of a tree, parents first, each with its threads (main thread first).
type Tree = Vec<(i32, Vec<i32>)>;

/// Walks the tree under `root` (pre-order, children in PID order).
fn walk(root: i32) -> Result<(Tree, Vec<i32>)> {
    let mut out = Vec::new();
    let mut zombies = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let state = Stat::parse(&procfs::read_text(pid, "stat")?).and_then(|s| s.state());
        if state == Some('Z') && pid != root {
            zombies.push(pid);
            continue;
        }
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|source| CrError::Proc {
                pid,
                what: "listing threads".into(),
                source,
            })?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable_by_key(|t| (*t != pid, *t));
        let mut children = Vec::new();
        for t in &tids {
            let c = procfs::read_text(pid, &format!("task/{t}/children")).unwrap_or_default();
            children.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
        children.sort_unstable();
        stack.extend(children.into_iter().rev());
        out.push((pid, tids));
    }
    Ok((out, zombies))
}

/// Every thread seized, stopped and accounted for; detached on drop unless `release`d.
struct Stopped {
    tids: Vec<i32>,
    /// Signals that arrived while stopping or injecting, per process: sent again later.
    deferred: BTreeMap<i32, Vec<i32>>,
    keep: bool,
}

impl Stopped {
    fn detach_all(&mut self) {
        for &t in &self.tids {
            let _ = sys::detach(t, 0);
        }
        for (pid, sigs) in std::mem::take(&mut self.deferred) {
            for s in sigs {
                let _ = sys::kill(pid, s);
            }
        }
        self.tids.clear();
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.keep {
            self.detach_all();
        }
    }
}

/// Stops one seized thread at its interrupt, letting signals on their way in be delivered.
fn stop_thread(tid: i32) -> Result<()> {
    sys::interrupt(tid)?;
    loop {
        match sys::wait(tid)? {
            Wait::Stopped(_, ev) if ev == libc::PTRACE_EVENT_STOP => return Ok(()),
            Wait::Stopped(sig, 0) => sys::cont(tid, sig)?,
            Wait::Stopped(_, _) => sys::cont(tid, 0)?,
            other => {
                return Err(CrError::Unexpected {
                    pid: tid,
                    what: format!("ended while being stopped for the checkpoint: {other:?}"),
                });
            }
        }
    }
}

/// Seizes and stops every thread of the tree, walking it again until it no longer changes.
fn stop_tree(root: i32, stopped: &mut Stopped) -> Result<(Tree, Vec<i32>)> {
    let mut seized = BTreeSet::new();
    loop {
        let (tree, zombies) = walk(root)?;
        let mut new = 0;
        for (pid, tids) in &tree {
            if !seized.contains(pid) {
                preflight(*pid)?;
            }
            for &t in tids {
                if seized.insert(t) {
                    sys::seize(t)?;
                    stopped.tids.push(t);
                    stop_thread(t)?;
                    new += 1;
                }
            }
        }
        if new == 0 {
            return Ok((tree, zombies));
        }
    }
}

/// Checkpoints the process tree under `pid` into the directory `dir`.
pub fn checkpoint(pid: i32, dir: &Path, opts: &CheckpointOptions) -> Result<CheckpointStats> {
    checkpoint_with(pid, dir, opts, &mut || Ok(()))
}

/// [`checkpoint`], running `while_stopped` once the image is written and before any process
/// runs again (or is killed): e.g. to copy the file system changes the processes made. Its
/// error fails the checkpoint.
pub fn checkpoint_with(
    pid: i32,
    dir: &Path,
    opts: &CheckpointOptions,
    while_stopped: &mut dyn FnMut() -> std::result::Result<(), String>,
) -> Result<CheckpointStats> {
    let root_ppid = Stat::parse(&procfs::read_text(pid, "stat")?)
        .and_then(|s| s.field(4))
        .unwrap_or(0) as i32;
    let t0 = Instant::now();
    let mut stopped = Stopped {
        tids: Vec::new(),
        deferred: BTreeMap::new(),
        keep: false,
    };
    let (tree, zombie_pids) = stop_tree(pid, &mut stopped)?;
    let (mut processes, page_bytes) =
        dump_tree(&tree, dir, &opts.stdio_paths, &mut stopped.deferred)?;
    let mut zombies = zombie_pids
        .iter()
        .map(|&z| zombie(z))
        .collect::<Result<Vec<_>>>()?;
    to_namespace_pids(dir, &mut processes, &mut zombies)?;
    let frozen = t0.elapsed();
    let threads = tree.iter().map(|(_, t)| t.len()).sum();
    let vmas = processes.iter().map(|p| p.vmas.len()).sum();
    let manifest = Manifest {
        magic: image::MAGIC.into(),
        version: image::VERSION,
        kernel_release: kernel_release(),
        processes,
        zombies,
    };
    image::write_manifest(dir, &manifest)?;
    while_stopped().map_err(|what| CrError::Unexpected { pid, what })?;
    if opts.leave_running {
        stopped.detach_all();
    } else {
        stopped.keep = true;
        for (p, _) in &tree {
            let _ = sys::kill(*p, libc::SIGKILL);
        }
        // A thread group's leader is reported only after its other threads: children and
        // threads first.
        for (_, tids) in tree.iter().rev() {
            for &t in tids.iter().rev() {
                sys::wait_exit(t, t == pid && root_ppid == std::process::id() as i32);
            }
        }
    }
    info!(
        pid,
        processes = tree.len(),
        threads,
        vmas,
        page_bytes,
        ?frozen,
        "checkpointed"
    );
    Ok(CheckpointStats {
        pid,
        processes: tree.len(),
        threads,
        vmas,
        page_bytes,
        frozen,
    })
}

/// Rewrites every PID and TID of the images (taken in this process's view) into the tree's
/// own pid namespace, where the restore makes them again. Process groups and sessions led
/// from outside the tree keep no number that means anything there: they become 0.
fn to_namespace_pids(
    dir: &Path,
    processes: &mut [ProcessImage],
    zombies: &mut [Zombie],
) -> Result<()> {
    let mut map = BTreeMap::new();
    for p in processes.iter() {
        for t in &p.threads {
            map.insert(t.tid, sys::ns_pid(t.tid)?);
        }
    }
    for z in zombies.iter() {
        map.insert(z.pid, sys::ns_pid(z.pid)?);
    }
    if map.iter().all(|(a, b)| a == b) {
        return Ok(());
    }
    let root = processes[0].pid;
    let tr = |x: i32| map.get(&x).copied().unwrap_or(0);
    for z in zombies.iter_mut() {
        z.pid = tr(z.pid);
        z.ppid = tr(z.ppid);
    }
    for p in processes.iter_mut() {
        let is_root = p.pid == root;
        p.pid = tr(p.pid);
        p.ppid = if is_root { 0 } else { tr(p.ppid) };
        p.pgid = tr(p.pgid);
        p.sid = tr(p.sid);
        // Renamed in two steps: a new name may be an old name not renamed yet.
        let tmp = format!("{}.renaming", p.pages.file);
        rename(dir, &p.pages.file, &tmp)?;
        p.pages.file = tmp;
        for t in &mut p.threads {
            t.tid = tr(t.tid);
        }
        for f in &mut p.fds {
            if let FdKind::Dup { pid, .. } = &mut f.kind {
                *pid = tr(*pid);
            }
        }
        for v in &mut p.vmas {
            if let Backing::Shmem { owner, .. } = &mut v.backing {
                *owner = tr(*owner);
            }
        }
        for t in &mut p.posix_timers {
            if t.tid != 0 {
                t.tid = tr(t.tid);
            }
        }
    }
    for p in processes.iter_mut() {
        let name = image::pages_file_name(p.pid);
        rename(dir, &p.pages.file, &name)?;
        p.pages.file = name;
    }
    Ok(())
}

fn rename(dir: &Path, from: &str, to: &str) -> Result<()> {
    std::fs::rename(dir.join(from), dir.join(to)).map_err(|source| CrError::ImageIo {
        path: dir.join(from),
        what: format!("renaming to {to}"),
        source,
    })
}

/// A child that exited and was not reaped yet: its parent and exit code.
fn zombie(pid: i32) -> Result<Zombie> {
    let stat =
        Stat::parse(&procfs::read_text(pid, "stat")?).ok_or_else(|| CrError::Unexpected {
            pid,
            what: "unreadable /proc/PID/stat".into(),
        })?;
    // Field 52 is the wait status; a death by a signal comes back as the shell's 128 + N.
    let status = stat.field(52).unwrap_or(0) as i32;
    let code = if status & 0x7f != 0 {
        128 + (status & 0x7f)
    } else {
        (status >> 8) & 0xff
    };
    Ok(Zombie {
        pid,
        ppid: stat.field(4).unwrap_or(0) as i32,
        exit_code: code,
    })
}

/// Refusals that need no stop: the root a zombie, seccomp, another tracer.
fn preflight(pid: i32) -> Result<()> {
    let status = procfs::read_text(pid, "status")?;
    if procfs::status_field(&status, "State").is_some_and(|s| s.starts_with('Z')) {
        return Err(refused(
            pid,
            "a zombie process",
            "the process has exited; there is nothing to checkpoint",
        ));
    }
    if procfs::status_field(&status, "Seccomp") == Some("1") {
        return Err(refused(
            pid,
            "strict seccomp (mode 1)",
            "a process in strict mode can make no syscall a restore needs; use a filter \
             (SECCOMP_SET_MODE_FILTER) instead",
        ));
    }
    if procfs::status_field(&status, "TracerPid") != Some("0") {
        return Err(refused(
            pid,
            "a ptrace tracer",
            "the process is traced (by a debugger?); detach it first",
        ));
    }
    Ok(())
}

/// Every process of the stopped tree; the page bytes written.
fn dump_tree(
    tree: &Tree,
    dir: &Path,
    stdio_paths: &[PathBuf],
    deferred: &mut BTreeMap<i32, Vec<i32>>,
) -> Result<(Vec<ProcessImage>, u64)> {
    let pids: Vec<i32> = tree.iter().map(|(p, _)| *p).collect();
    let internal = files::internal_pipes(&pids)?;
    let mut table = files::FileTable::new(stdio_paths);
    let mut shared = SharedObjects::default();
    let mut out = Vec::new();
    let mut bytes = 0;
    for (i, (pid, tids)) in tree.iter().enumerate() {
        let d = deferred.entry(*pid).or_default();
        let p = dump(
            *pid,
            i == 0,
            tids,
            dir,
            d,
            &mut table,
            &internal,
            &mut shared,
        )?;
        bytes += p.pages.data_len;
        out.push(p);
    }
    mark_last_mappings(&mut out);
    Ok((out, bytes))
}

/// One process, stopped; it is left as it was found (code and registers) whether this
/// succeeds or not.
#[allow(clippy::too_many_arguments)]
fn dump(
    pid: i32,
    is_root: bool,
    tids: &[i32],
    dir: &Path,
    deferred: &mut Vec<i32>,
    table: &mut files::FileTable,
    internal: &BTreeSet<u64>,
    shared: &mut SharedObjects,
) -> Result<ProcessImage> {
    let status = procfs::read_text(pid, "status")?;
    let timers = procfs::read_text(pid, "timers").unwrap_or_default();
    let mut posix_timers = parse_timers(&timers).ok_or_else(|| {
        refused(
            pid,
            format!("POSIX timers {timers:?}"),
            "only timers that signal (SIGEV_SIGNAL, SIGEV_THREAD_ID) or do nothing \
             (SIGEV_NONE) are supported",
        )
    })?;
    let stat =
        Stat::parse(&procfs::read_text(pid, "stat")?).ok_or_else(|| CrError::Unexpected {
            pid,
            what: "unreadable /proc/PID/stat".into(),
        })?;
    let f = |n| stat.field(n).unwrap_or(0);

    let mut seccomp = Vec::new();
    for &tid in tids {
        seccomp.push(seccomp_filters(pid, tid)?);
    }
    let (process_state, thread_queries) = inject_queries(pid, tids, deferred, &mut posix_timers)?;
    let mut threads = Vec::new();
    for ((&tid, q), seccomp) in tids.iter().zip(thread_queries).zip(seccomp) {
        threads.push(ThreadState {
            tid,
            comm: procfs::read_text(pid, &format!("task/{tid}/comm"))?
                .trim_end_matches('\n')
                .to_string(),
            regs: sys::get_regs(tid)?.into(),
            xstate: to_hex(&sys::get_xstate(tid)?),
            sigmask: sys::get_sigmask(tid)?,
            pending: sys::peek_siginfo(tid, false)?
                .iter()
                .map(|s| to_hex(s))
                .collect(),
            altstack: q.altstack,
            clear_child_tid: q.clear_child_tid,
            robust_list: sys::get_robust_list(tid)?,
            rseq: sys::get_rseq(tid)?,
            seccomp,
        });
    }

    let mm = MmLayout {
        start_code: f(26),
        end_code: f(27),
        start_stack: f(28),
        start_data: f(45),
        end_data: f(46),
        start_brk: f(47),
        brk: process_state.brk,
        arg_start: f(48),
        arg_end: f(49),
        env_start: f(50),
        env_end: f(51),
        auxv: procfs::parse_auxv(&procfs::read_bytes(pid, "auxv")?),
    };
    let exe = procfs::read_link(pid, "exe")?;
    if exe.ends_with(" (deleted)") {
        return Err(refused(
            pid,
            format!("executable {exe}"),
            "its file was deleted",
        ));
    }
    let cwd = procfs::read_link(pid, "cwd")?;
    if cwd.ends_with(" (deleted)") {
        return Err(refused(
            pid,
            format!("working directory {cwd}"),
            "it was deleted",
        ));
    }
    let smaps = procfs::parse_smaps(&procfs::read_text(pid, "smaps")?).ok_or_else(|| {
        CrError::Unexpected {
            pid,
            what: "unreadable /proc/PID/smaps".into(),
        }
    })?;
    let mut vmas = smaps
        .iter()
        .filter(|m| m.path != "[vsyscall]")
        .map(|m| vma_of(pid, m, shared))
        .collect::<Result<Vec<_>>>()?;
    let shmem = shared.stage_new(pid, &mut vmas)?;
    let fds = files::read_fds(pid, table, internal)?;

    let mut writer = PagesWriter::create(dir, &image::pages_file_name(pid))?;
    dump_pages(pid, &vmas, shared, &mut writer)?;
    let pages = writer.finish()?;

    let creds = super::restore::Creds::from_status(&status);
    let mut rlimits = Vec::new();
    // RLIMIT_CPU (0) to RLIMIT_RTTIME (15).
    for r in 0..16u32 {
        let (soft, hard) = sys::get_rlimit(pid, r)?;
        rlimits.push((r, soft, hard));
    }
    Ok(ProcessImage {
        pid,
        ppid: if is_root { 0 } else { f(4) as i32 },
        pgid: f(5) as i32,
        sid: f(6) as i32,
        exit_signal: f(38) as i32,
        comm: procfs::read_text(pid, "comm")?
            .trim_end_matches('\n')
            .to_string(),
        exe,
        cwd,
        umask: procfs::status_field(&status, "Umask")
            .and_then(|u| u32::from_str_radix(u, 8).ok())
            .unwrap_or(0o022),
        personality: u64::from_str_radix(procfs::read_text(pid, "personality")?.trim(), 16)
            .unwrap_or(0),
        no_new_privs: procfs::status_field(&status, "NoNewPrivs") == Some("1"),
        uids: creds.uids,
        gids: creds.gids,
        groups: creds.groups,
        caps: creds.caps,
        rlimits,
        itimers: process_state.itimers,
        mm,
        vmas,
        fds,
        sigactions: process_state.sigactions,
        shared_pending: sys::peek_siginfo(pid, true)?
            .iter()
            .map(|s| to_hex(s))
            .collect(),
        threads,
        deferred_signals: deferred.clone(),
        pages,
        shmem,
        posix_timers,
    })
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the main thread says for its process.
struct ProcessQueries {
    sigactions: Vec<SigAction>,
    brk: u64,
    itimers: Vec<(u32, u64, u64)>,
}

/// What each thread says for itself.
struct ThreadQueries {
    altstack: (u64, i32, u64),
    clear_child_tid: u64,
}

/// Asks the process and each of its threads what only they can say, by syscalls injected at
/// the main thread's instruction pointer (3 bytes of code patched and put back) and, for the
/// others, through a scratch page mapped for the purpose and unmapped after.
fn inject_queries(
    pid: i32,
    tids: &[i32],
    deferred: &mut Vec<i32>,
    timers: &mut [PosixTimer],
) -> Result<(ProcessQueries, Vec<ThreadQueries>)> {
    let mut inj = Injector::new(pid)?;
    let orig_regs = inj.base;
    let mut orig_code = [0u8; 3];
    inj.read(inj.code, &mut orig_code)?;
    inj.write(inj.code, &TRAMPOLINE_CODE)?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = inj.call(
        "mmap of a scratch area",
        libc::SYS_mmap,
        [0, 2 * PAGE, rwx, flags, u64::MAX, 0],
    );
    let result = scratch.and_then(|scratch| {
        let out = (|| {
            inj.write(scratch, &TRAMPOLINE_CODE)?;
            let data = scratch + PAGE;
            let process = process_queries(&mut inj, data)?;
            timer_queries(&mut inj, data, timers)?;
            let mut threads = vec![thread_queries(&mut inj, data)?];
            for &tid in &tids[1..] {
                let mut t = Injector::new(tid)?;
                t.code = scratch;
                let q = thread_queries(&mut t, data);
                let put_back = sys::set_regs(tid, &t.base);
                deferred.append(&mut t.deferred);
                threads.push(q?);
                put_back?;
            }
            Ok((process, threads))
        })();
        inj.call(
            "munmap of the scratch area",
            libc::SYS_munmap,
            [scratch, 2 * PAGE, 0, 0, 0, 0],
        )?;
        out
    });
    // Put everything back, whatever happened.
    let put_back = inj
        .write(orig_regs.rip, &orig_code)
        .and_then(|()| sys::set_regs(pid, &orig_regs));
    deferred.append(&mut inj.deferred);
    let out = result?;
    put_back?;
    Ok(out)
}

fn process_queries(inj: &mut Injector, scratch: u64) -> Result<ProcessQueries> {
    let mut sigactions = Vec::new();
    let mut buf = [0u8; 32];
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        inj.call(
            &format!("rt_sigaction({sig}) query"),
            libc::SYS_rt_sigaction,
            [sig, 0, scratch, 8, 0, 0],
        )?;
        inj.read(scratch, &mut buf)?;
        let w = |i: usize| u64::from_ne_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8"));
        sigactions.push(SigAction {
            sig: sig as u32,
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        });
    }
    let brk = inj.call("brk(0)", libc::SYS_brk, [0; 6])?;
    let mut itimers = Vec::new();
    for which in 0..3u32 {
        inj.call(
            &format!("getitimer({which})"),
            libc::SYS_getitimer,
            [which as u64, scratch, 0, 0, 0, 0],
        )?;
        let mut it = [0u8; 32];
        inj.read(scratch, &mut it)?;
        let w = |i: usize| u64::from_ne_bytes(it[i * 8..i * 8 + 8].try_into().expect("8"));
        let (interval, value) = (w(0) * 1_000_000 + w(1), w(2) * 1_000_000 + w(3));
        if value != 0 || interval != 0 {
            itimers.push((which, interval, value));
        }
    }
    Ok(ProcessQueries {
        sigactions,
        brk,
        itimers,
    })
}

/// The seccomp filters of thread `tid`, oldest first (hex), or a refusal; with filters, the
/// thread's seccomp is suspended while it is stopped, so that injected queries pass.
fn seccomp_filters(pid: i32, tid: i32) -> Result<Vec<String>> {
    let status = procfs::read_text(pid, &format!("task/{tid}/status"))?;
    match procfs::status_field(&status, "Seccomp") {
        Some("0") | None => return Ok(Vec::new()),
        Some("2") => {}
        Some(mode) => {
            return Err(refused(
                pid,
                format!("seccomp mode {mode} of thread {tid}"),
                "only seccomp filters (mode 2) are restored",
            ));
        }
    }
    let nnp = procfs::status_field(&status, "NoNewPrivs") == Some("1");
    let cap_eff = procfs::status_field(&status, "CapEff")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    if !nnp && cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
        return Err(refused(
            pid,
            format!("the seccomp filter of thread {tid}"),
            "it was installed with privileges the thread no longer has, so it could not be \
             installed again; set no_new_privs (PR_SET_NO_NEW_PRIVS) before installing it",
        ));
    }
    let mut out = Vec::new();
    for index in 0.. {
        let Some(prog) = sys::seccomp_filter(tid, index)? else {
            break;
        };
        if prog.len() + 16 > PAGE as usize {
            return Err(refused(
                pid,
                format!(
                    "the seccomp filter of thread {tid} ({} instructions)",
                    prog.len() / 8
                ),
                "filters of more than 510 instructions are not restored yet",
            ));
        }
        out.push(to_hex(&prog));
    }
    out.reverse();
    sys::set_options(tid, libc::PTRACE_O_SUSPEND_SECCOMP)?;
    Ok(out)
}

/// `/proc/PID/timers`: every timer but its times; `None` for a kind not supported
/// (`SIGEV_THREAD` is glibc's, made of `SIGEV_THREAD_ID`, so never seen here).
fn parse_timers(text: &str) -> Option<Vec<PosixTimer>> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if key == "ID" {
            out.push(PosixTimer {
                id: v.parse().ok()?,
                clock: 0,
                notify: 0,
                signal: 0,
                value: 0,
                tid: 0,
                interval_ns: 0,
                value_ns: 0,
            });
            continue;
        }
        let t = out.last_mut()?;
        match key {
            "signal" => {
                let (sig, value) = v.split_once('/')?;
                t.signal = sig.parse().ok()?;
                t.value = u64::from_str_radix(value.trim_start_matches("0x"), 16).ok()?;
            }
            "notify" => {
                // signal/pid.N, signal/tid.N, none/pid.N
                let (kind, target) = v.split_once('/')?;
                let (whom, n) = target.split_once('.')?;
                t.notify = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    _ => return None,
                };
                if whom == "tid" {
                    t.notify |= libc::SIGEV_THREAD_ID;
                    t.tid = n.parse().ok()?;
                }
            }
            "ClockID" => t.clock = v.parse().ok()?,
            _ => {}
        }
    }
    Some(out)
}

/// Each timer's period and remaining time, by `timer_gettime`.
fn timer_queries(inj: &mut Injector, scratch: u64, timers: &mut [PosixTimer]) -> Result<()> {
    for t in timers {
        inj.call(
            &format!("timer_gettime({})", t.id),
            libc::SYS_timer_gettime,
            [t.id as u64, scratch, 0, 0, 0, 0],
        )?;
        let mut it = [0u8; 32];
        inj.read(scratch, &mut it)?;
        let w = |i: usize| u64::from_ne_bytes(it[i * 8..i * 8 + 8].try_into().expect("8"));
        t.interval_ns = w(0) * 1_000_000_000 + w(1);
        t.value_ns = w(2) * 1_000_000_000 + w(3);
    }
    Ok(())
}

fn thread_queries(inj: &mut Injector, scratch: u64) -> Result<ThreadQueries> {
    inj.call(
        "sigaltstack query",
        libc::SYS_sigaltstack,
        [0, scratch, 0, 0, 0, 0],
    )?;
    let mut ss = [0u8; 24];
    inj.read(scratch, &mut ss)?;
    let altstack = (
        u64::from_ne_bytes(ss[0..8].try_into().expect("8")),
        i32::from_ne_bytes(ss[8..12].try_into().expect("4")),
        u64::from_ne_bytes(ss[16..24].try_into().expect("8")),
    );
    inj.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0],
    )?;
    let mut w = [0u8; 8];
    inj.read(scratch, &mut w)?;
    Ok(ThreadQueries {
        altstack,
        clear_child_tid: u64::from_ne_bytes(w),
    })
}

/// The shared memory objects met so far in the tree, by device and inode.
#[derive(Default)]
struct SharedObjects {
    by_key: BTreeMap<(u64, u64), SharedObject>,
}

/// One shared memory object met at checkpoint.
struct SharedObject {
    id: u64,
    /// The first process that maps it.
    owner: i32,
    /// `/proc/OWNER/map_files/…` of one of the owner's mappings of it: where it is read.
    source: String,
    /// Its description, until the owner's image takes it.
    object: Option<ShmemObject>,
}

/// At most this many shared memory objects per image: each is held at its own fd number
/// (`SHMEM_FD_BASE + id`) while the processes that map it are restored.
pub const MAX_SHMEM_OBJECTS: u64 = 256;

impl SharedObjects {
    /// The object behind mapping `m` of `pid` (a shmem file: `/proc/PID/map_files` of it):
    /// its id and owner, registered on first sight.
    fn object(&mut self, pid: i32, m: &MapEntry, what: &str) -> Result<(u64, i32)> {
        let source = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let file = File::open(&source).map_err(|source| CrError::Proc {
            pid,
            what: format!("opening the object behind {what}"),
            source,
        })?;
        let md = file.metadata().map_err(|source| CrError::Proc {
            pid,
            what: format!("stat of the object behind {what}"),
            source,
        })?;
        let key = (md.dev(), md.ino());
        if let Some(o) = self.by_key.get(&key) {
            return Ok((o.id, o.owner));
        }
        let id = self.by_key.len() as u64;
        if id >= MAX_SHMEM_OBJECTS {
            return Err(refused(
                pid,
                what,
                format!("more than {MAX_SHMEM_OBJECTS} shared memory objects in one tree"),
            ));
        }
        let seals = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS)
            .map(|s| s as u32)
            .unwrap_or(libc::F_SEAL_SEAL as u32);
        if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) as u32 != 0 {
            return Err(refused(
                pid,
                what,
                "a memfd sealed against writes (F_SEAL_WRITE/F_SEAL_FUTURE_WRITE) cannot be                  restored yet; seal it only against shrinking and growing",
            ));
        }
        let shown = m
            .path
            .trim_end_matches(" (deleted)")
            .trim_start_matches('/');
        let mut name = shown.strip_prefix("memfd:").unwrap_or(shown).to_string();
        // MFD_NAME_MAX_LEN.
        while name.len() > 249 {
            name.pop();
        }
        self.by_key.insert(
            key,
            SharedObject {
                id,
                owner: pid,
                source,
                object: Some(ShmemObject {
                    id,
                    size: md.size(),
                    name,
                    seals,
                }),
            },
        );
        Ok((id, pid))
    }

    /// The objects `pid` owns and met for the first time: a staging mapping each, at a place
    /// free in `vmas` (which it joins, in address order); their descriptions.
    fn stage_new(&mut self, pid: i32, vmas: &mut Vec<Vma>) -> Result<Vec<ShmemObject>> {
        let mut out = Vec::new();
        for o in self.by_key.values_mut() {
            if o.owner != pid {
                continue;
            }
            let Some(obj) = o.object.take() else {
                continue;
            };
            let len = obj.size.next_multiple_of(PAGE).max(PAGE);
            let used: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
            let at = super::restore::find_gap(&used, len, 1 << 32).ok_or_else(|| {
                refused(
                    pid,
                    format!("shared memory object {}", obj.name),
                    "no free address range as large as the object",
                )
            })?;
            vmas.push(Vma {
                start: at,
                end: at + len,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                growsdown: false,
                advice: Vec::new(),
                backing: Backing::ShmemStage { id: obj.id },
            });
            out.push(obj);
        }
        vmas.sort_by_key(|v| v.start);
        Ok(out)
    }
}

/// Marks the last mapping (in image order) of every shared memory object.
fn mark_last_mappings(processes: &mut [ProcessImage]) {
    let mut seen = BTreeSet::new();
    for p in processes.iter_mut().rev() {
        for v in p.vmas.iter_mut().rev() {
            if let Backing::Shmem { id, last, .. } = &mut v.backing {
                *last = seen.insert(*id);
            }
        }
    }
}

/// One mapping, or a refusal.
fn vma_of(pid: i32, m: &MapEntry, shared: &mut SharedObjects) -> Result<Vma> {
    let what = || format!("mapping {:#x}-{:#x} {} {}", m.start, m.end, m.perms, m.path);
    let deleted = m.path.ends_with(" (deleted)");
    if m.path.starts_with("/SYSV") && (deleted || m.inode == 0) {
        return Err(refused(
            pid,
            what(),
            "SysV shared memory (shmget/shmat) is not supported; use shm_open or a memfd",
        ));
    }
    if m.vm_flags.iter().any(|f| f == "ht") {
        return Err(refused(
            pid,
            what(),
            "hugetlb mappings (MAP_HUGETLB, MFD_HUGETLB, hugetlbfs) are not supported",
        ));
    }
    let advice = m
        .vm_flags
        .iter()
        .filter(|f| ["dd", "wf", "hg", "nh"].contains(&f.as_str()))
        .cloned()
        .collect();
    let map_files = || format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let on_tmpfs = || {
        nix::sys::statfs::statfs(map_files().as_str())
            .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    };
    let backing = match m.path.as_str() {
        "[vvar]" | "[vvar_vclock]" | "[vdso]" if !m.shared() => Backing::Vdso {
            name: m.path.clone(),
        },
        "" | "[heap]" | "[stack]" if !m.shared() => Backing::Anon {
            name: (!m.path.is_empty()).then(|| m.path.clone()),
        },
        p if p.starts_with("[anon:") && !m.shared() => Backing::Anon {
            name: Some(p.to_string()),
        },
        p if p.starts_with('/') && deleted && m.inode != 0 && on_tmpfs() => {
            // Shared anonymous memory (/dev/zero), a memfd, a deleted tmpfs file.
            let (id, owner) = shared.object(pid, m, &what())?;
            Backing::Shmem {
                id,
                owner,
                offset: m.offset,
                shared: m.shared(),
                last: false,
            }
        }
        p if p.starts_with('/') && !deleted && m.inode != 0 => {
            let md = std::fs::metadata(map_files()).map_err(|source| CrError::Proc {
                pid,
                what: format!("stat of the file behind {}", what()),
                source,
            })?;
            // The path as the process sees it, from its own root.
            let by_path = std::fs::metadata(format!("/proc/{pid}/root{p}")).ok();
            if !md.is_file() || by_path.is_none_or(|b| b.ino() != md.ino() || b.dev() != md.dev()) {
                return Err(refused(
                    pid,
                    what(),
                    "the mapped object is not the regular file at that path",
                ));
            }
            let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            if m.shared() {
                Backing::SharedFile {
                    path: p.to_string(),
                    offset: m.offset,
                    size: md.size(),
                    mtime_ns,
                    writable: m.vm_flags.iter().any(|f| f == "mw"),
                }
            } else {
                Backing::File {
                    path: p.to_string(),
                    offset: m.offset,
                    size: md.size(),
                    mtime_ns,
                }
            }
        }
        p if p.starts_with('/') && deleted => {
            return Err(refused(
                pid,
                what(),
                "the mapped file was deleted (only deleted files of a tmpfs, memfds and shared \
                 anonymous memory are saved with their contents)",
            ));
        }
        _ => {
            return Err(refused(
                pid,
                what(),
                "only anonymous memory, shared memory (MAP_SHARED anonymous, memfd, /dev/shm) \
                 and mappings of existing regular files are supported",
            ));
        }
    };
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot: m.prot(),
        growsdown: m.vm_flags.iter().any(|f| f == "gd"),
        advice,
        backing,
    })
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];

/// Saves the pages that a restore cannot get elsewhere: present (or swapped) pages of
/// anonymous mappings, except all-zero ones; anonymous copies (pagemap bit 61 clear) in
/// private file and shared memory mappings; the present non-zero pages of the shared memory
/// objects the process owns, at their staging addresses. Shared file mappings have none.
fn dump_pages(
    pid: i32,
    vmas: &[Vma],
    shared: &SharedObjects,
    writer: &mut PagesWriter,
) -> Result<()> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| CrError::Proc {
        pid,
        what: "opening pagemap".into(),
        source,
    })?;
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|source| CrError::Proc {
        pid,
        what: "opening mem".into(),
        source,
    })?;
    const CHUNK: u64 = 1024; // pages per read
    let mut pm = Vec::new();
    let mut buf = vec![0u8; (CHUNK * PAGE) as usize];
    for vma in vmas {
        let anon = match vma.backing {
            Backing::Anon { .. } => true,
            Backing::File { .. } | Backing::Shmem { shared: false, .. } => false,
            Backing::Vdso { .. } | Backing::SharedFile { .. } | Backing::Shmem { .. } => continue,
            Backing::ShmemStage { id } => {
                let Some(o) = shared.by_key.values().find(|o| o.id == id) else {
                    continue;
                };
                dump_object(pid, &o.source, vma, &mut buf, writer)?;
                continue;
            }
        };
        let npages = vma.len() / PAGE;
        pm.resize(npages as usize * 8, 0);
        pagemap
            .read_exact_at(&mut pm, vma.start / PAGE * 8)
            .map_err(|source| CrError::Proc {
                pid,
                what: format!("reading pagemap of {:#x}-{:#x}", vma.start, vma.end),
                source,
            })?;
        let wanted = |i: u64| {
            let e = u64::from_ne_bytes(
                pm[i as usize * 8..i as usize * 8 + 8]
                    .try_into()
                    .expect("8"),
            );
            if anon {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            } else {
                e & PM_SWAPPED != 0 || (e & PM_PRESENT != 0 && e & PM_FILE == 0)
            }
        };
        let mut i = 0;
        while i < npages {
            if !wanted(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < npages && j - i < CHUNK && wanted(j) {
                j += 1;
            }
            let bytes = &mut buf[..((j - i) * PAGE) as usize];
            let addr = vma.start + i * PAGE;
            sys::read_remote(pid, &mem, addr, bytes)?;
            if anon {
                // Zero pages are elided: a fresh anonymous mapping reads as zeros.
                let mut k = 0usize;
                let pages: Vec<&[u8]> = bytes.chunks(PAGE as usize).collect();
                while k < pages.len() {
                    if pages[k] == &ZERO_PAGE[..] {
                        k += 1;
                        continue;
                    }
                    let mut l = k + 1;
                    while l < pages.len() && pages[l] != &ZERO_PAGE[..] {
                        l += 1;
                    }
                    writer.add(
                        addr + k as u64 * PAGE,
                        &bytes[k * PAGE as usize..l * PAGE as usize],
                    )?;
                    k = l;
                }
            } else {
                writer.add(addr, bytes)?;
            }
            i = j;
        }
    }
    Ok(())
}

/// The present non-zero pages of the shared memory object at `source` (a `map_files` entry),
/// at `stage` + their offset in the object.
fn dump_object(
    pid: i32,
    source: &str,
    stage: &Vma,
    buf: &mut [u8],
    writer: &mut PagesWriter,
) -> Result<()> {
    use nix::unistd::{Whence, lseek};
    let err = |what: &str| {
        let what = format!("{what} of the shared memory object {source}");
        move |source| CrError::Proc { pid, what, source }
    };
    let file = File::open(source).map_err(err("opening"))?;
    let size = stage.len();
    let mut at = 0u64;
    while at < size {
        // Holes (pages never written) are not saved: they read as zeros again.
        let data = match lseek(&file, at as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(err("SEEK_DATA")(e.into())),
        };
        let hole = match lseek(&file, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).next_multiple_of(PAGE).min(size),
            Err(e) => return Err(err("SEEK_HOLE")(e.into())),
        };
        let mut off = data - data % PAGE;
        while off < hole {
            let len = (hole - off).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..len];
            // The object may end inside its last page: the rest reads as zeros.
            chunk.fill(0);
            let mut got = 0;
            while got < len {
                match file.read_at(&mut chunk[got..], off + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err("reading")(e)),
                }
            }
            for (k, page) in chunk.chunks(PAGE as usize).enumerate() {
                if page != &ZERO_PAGE[..] {
                    writer.add(stage.start + off + k as u64 * PAGE, page)?;
                }
            }
            off += len as u64;
        }
        at = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_are_parsed() {
        let text = "ID: 1\nsignal: 35/0000000000005eed\nnotify: signal/pid.812\nClockID: 1\n\
                    ID: 2\nsignal: 12/0000000000000077\nnotify: signal/tid.813\nClockID: 0\n\
                    ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.812\nClockID: 0\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].id, t[0].signal, t[0].value, t[0].notify, t[0].clock),
            (1, 35, 0x5eed, libc::SIGEV_SIGNAL, 1)
        );
        assert_eq!(
            (t[1].notify, t[1].tid),
            (libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID, 813)
        );
        assert_eq!((t[2].id, t[2].notify), (4, libc::SIGEV_NONE));
        assert_eq!(parse_timers(""), Some(vec![]));
        assert_eq!(parse_timers("ID: 1\nnotify: thread/pid.3\n"), None);
    }
}
