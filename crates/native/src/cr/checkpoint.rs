//! Checkpoint of one single-threaded process.
//!
//! Saved: general registers (fs_base/gs_base included) and the XSAVE area, the signal mask,
//! every signal disposition, the alternate signal stack, clear_child_tid, the robust futex
//! list, the rseq registration, brk and the `PR_SET_MM_MAP` layout with the auxiliary vector,
//! cwd, umask, personality, no_new_privs, comm; every mapping (private anonymous with its
//! present non-zero pages; private file mappings with their changed pages; the vDSO block by
//! position only); files opened by path (regular files, directories, `/dev/null`, `/dev/zero`,
//! `/dev/urandom`, `/dev/random`) with flags and offset; standard input, output and error on a
//! terminal, pipe or socket as "stdio" (re-opened where the restorer says).
//!
//! Refused (an error naming the process and the resource, nothing written): more than one
//! thread, child processes, seccomp, pending signals, armed interval timers, POSIX timers,
//! shared mappings (incl. memfd and SysV shm), mappings of deleted files, sockets, pipes and
//! terminals beyond stdio, eventfd/epoll/timerfd/signalfd and other anonymous inodes, other
//! devices, deleted-but-open files.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::image::{self, Manifest, PAGE, PagesWriter};
use super::model::{Backing, Fd, FdKind, MmLayout, ProcessImage, SigAction, ThreadState, Vma};
use super::procfs::{self, MapEntry, Stat};
use super::sys::{self, Injector, TRAMPOLINE_CODE, Wait};
use super::{CrError, Result};

/// How to checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Let the process run on afterwards (default: kill it once the image is durable, so that
    /// its PID is free for the restore).
    pub leave_running: bool,
}

/// What a checkpoint did, for people.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    /// The process.
    pub pid: i32,
    /// Mappings saved.
    pub vmas: usize,
    /// Bytes of page data written.
    pub page_bytes: u64,
    /// How long the process was stopped.
    pub frozen: Duration,
}

fn refused(pid: i32, resource: impl Into<String>, hint: impl Into<String>) -> CrError {
    CrError::Refused {
        pid,
        resource: resource.into(),
        hint: hint.into(),
    }
}

/// Checkpoints process `pid` into the directory `dir`.
pub fn checkpoint(pid: i32, dir: &Path, opts: &CheckpointOptions) -> Result<CheckpointStats> {
    preflight(pid)?;
    let ppid = Stat::parse(&procfs::read_text(pid, "stat")?)
        .and_then(|s| s.field(4))
        .unwrap_or(0) as i32;
    let t0 = Instant::now();
    sys::seize(pid)?;
    sys::interrupt(pid)?;
    let mut deferred = Vec::new();
    loop {
        match sys::wait(pid)? {
            Wait::Stopped(_, ev) if ev == libc::PTRACE_EVENT_STOP => break,
            Wait::Stopped(sig, 0) => {
                // A signal on its way in: let it be delivered, then take the interrupt stop.
                sys::cont(pid, sig)?;
            }
            Wait::Stopped(_, _) => sys::cont(pid, 0)?,
            other => {
                return Err(CrError::Unexpected {
                    pid,
                    what: format!("ended while being stopped for the checkpoint: {other:?}"),
                });
            }
        }
    }
    let result = dump(pid, dir, &mut deferred);
    let frozen = t0.elapsed();
    match result {
        Ok((vmas, page_bytes)) => {
            if opts.leave_running {
                sys::detach(pid, 0)?;
                for s in deferred {
                    let _ = sys::kill(pid, s);
                }
            } else {
                let _ = sys::kill(pid, libc::SIGKILL);
                // The tracer sees the death first, then the parent, which reaps it. When this
                // process is both, leave the zombie to the parent's own wait.
                sys::wait_exit(pid, ppid == std::process::id() as i32);
            }
            info!(pid, vmas, page_bytes, ?frozen, "checkpointed");
            Ok(CheckpointStats {
                pid,
                vmas,
                page_bytes,
                frozen,
            })
        }
        Err(e) => {
            let _ = sys::detach(pid, 0);
            for s in deferred {
                let _ = sys::kill(pid, s);
            }
            Err(e)
        }
    }
}

/// Refusals that need no stop: threads, children, seccomp.
fn preflight(pid: i32) -> Result<()> {
    let status = procfs::read_text(pid, "status")?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|source| CrError::Proc {
            pid,
            what: "listing threads".into(),
            source,
        })?
        .count();
    if tasks > 1 {
        return Err(refused(
            pid,
            format!("{tasks} threads"),
            "multi-threaded processes are not supported yet",
        ));
    }
    let children = procfs::read_text(pid, &format!("task/{pid}/children"))?;
    if !children.trim().is_empty() {
        return Err(refused(
            pid,
            format!("child processes {}", children.trim()),
            "only single processes are supported yet, not process trees",
        ));
    }
    if procfs::status_field(&status, "Seccomp") != Some("0") {
        return Err(refused(
            pid,
            "a seccomp filter",
            "seccomp is not restored yet",
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

/// Everything, with the process stopped; the process is left as it was found (code and
/// registers) whether this succeeds or not.
fn dump(pid: i32, dir: &Path, deferred: &mut Vec<i32>) -> Result<(usize, u64)> {
    let status = procfs::read_text(pid, "status")?;
    for key in ["SigPnd", "ShdPnd"] {
        let v = procfs::status_field(&status, key).unwrap_or("0");
        if u64::from_str_radix(v, 16).unwrap_or(1) != 0 {
            return Err(refused(
                pid,
                format!("pending signals ({key} {v})"),
                "pending signals are not saved yet; retry",
            ));
        }
    }
    let timers = procfs::read_text(pid, "timers").unwrap_or_default();
    if !timers.trim().is_empty() {
        return Err(refused(
            pid,
            "POSIX timers",
            "timer_create timers are not saved yet",
        ));
    }
    let regs = sys::get_regs(pid)?;
    let xstate = sys::get_xstate(pid)?;
    let sigmask = sys::get_sigmask(pid)?;
    let rseq = sys::get_rseq(pid)?;
    let robust_list = sys::get_robust_list(pid)?;

    let injected = inject_queries(pid, deferred)?;

    let stat =
        Stat::parse(&procfs::read_text(pid, "stat")?).ok_or_else(|| CrError::Unexpected {
            pid,
            what: "unreadable /proc/PID/stat".into(),
        })?;
    let f = |n| stat.field(n).unwrap_or(0);
    let mm = MmLayout {
        start_code: f(26),
        end_code: f(27),
        start_stack: f(28),
        start_data: f(45),
        end_data: f(46),
        start_brk: f(47),
        brk: injected.brk,
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
    let vmas = smaps
        .iter()
        .filter(|m| m.path != "[vsyscall]")
        .map(|m| vma_of(pid, m))
        .collect::<Result<Vec<_>>>()?;
    let fds = read_fds(pid)?;

    let mut writer = PagesWriter::create(dir)?;
    dump_pages(pid, &vmas, &mut writer)?;
    let pages = writer.finish()?;
    let page_bytes = pages.data_len;

    let process = ProcessImage {
        pid,
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
        uids: procfs::status_ids(&status, "Uid").unwrap_or_default(),
        gids: procfs::status_ids(&status, "Gid").unwrap_or_default(),
        mm,
        vmas,
        fds,
        sigactions: injected.sigactions,
        thread: ThreadState {
            regs: regs.into(),
            xstate: super::model::to_hex(&xstate),
            sigmask,
            altstack: injected.altstack,
            clear_child_tid: injected.clear_child_tid,
            robust_list,
            rseq,
        },
        deferred_signals: deferred.clone(),
    };
    let manifest = Manifest {
        magic: image::MAGIC.into(),
        version: image::VERSION,
        kernel_release: kernel_release(),
        process,
        pages,
    };
    let n = manifest.process.vmas.len();
    image::write_manifest(dir, &manifest)?;
    Ok((n, page_bytes))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

struct Injected {
    sigactions: Vec<SigAction>,
    altstack: (u64, i32, u64),
    clear_child_tid: u64,
    brk: u64,
}

/// Asks the process what only it can say, by syscalls injected at its instruction pointer
/// (3 bytes of code patched and put back; a scratch page mapped and unmapped).
fn inject_queries(pid: i32, deferred: &mut Vec<i32>) -> Result<Injected> {
    let mut inj = Injector::new(pid)?;
    let orig_regs = inj.base;
    let mut orig_code = [0u8; 3];
    inj.read(inj.code, &mut orig_code)?;
    inj.write(inj.code, &TRAMPOLINE_CODE)?;
    let result = queries(&mut inj);
    // Put everything back, whatever happened.
    let put_back = inj
        .write(orig_regs.rip, &orig_code)
        .and_then(|()| sys::set_regs(pid, &orig_regs));
    deferred.append(&mut inj.deferred);
    let out = result?;
    put_back?;
    Ok(out)
}

fn queries(inj: &mut Injector) -> Result<Injected> {
    let pid = inj.pid;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = inj.call(
        "mmap of a scratch page",
        libc::SYS_mmap,
        [0, PAGE, rw, flags, u64::MAX, 0],
    )?;
    let out = (|| {
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
        let clear_child_tid = u64::from_ne_bytes(w);
        let brk = inj.call("brk(0)", libc::SYS_brk, [0; 6])?;
        for (which, name) in [
            (0u64, "ITIMER_REAL"),
            (1, "ITIMER_VIRTUAL"),
            (2, "ITIMER_PROF"),
        ] {
            inj.call(
                &format!("getitimer({name})"),
                libc::SYS_getitimer,
                [which, scratch, 0, 0, 0, 0],
            )?;
            let mut it = [0u8; 32];
            inj.read(scratch, &mut it)?;
            if it.iter().any(|&b| b != 0) {
                return Err(refused(
                    pid,
                    format!("an armed interval timer ({name})"),
                    "interval timers are not saved yet",
                ));
            }
        }
        Ok(Injected {
            sigactions,
            altstack,
            clear_child_tid,
            brk,
        })
    })();
    inj.call(
        "munmap of the scratch page",
        libc::SYS_munmap,
        [scratch, PAGE, 0, 0, 0, 0],
    )?;
    out
}

/// One mapping, or a refusal.
fn vma_of(pid: i32, m: &MapEntry) -> Result<Vma> {
    let what = || format!("mapping {:#x}-{:#x} {} {}", m.start, m.end, m.perms, m.path);
    if m.shared() {
        return Err(refused(
            pid,
            what(),
            "shared mappings (MAP_SHARED, memfd, SysV shm) are not supported yet",
        ));
    }
    let advice = m
        .vm_flags
        .iter()
        .filter(|f| ["dd", "wf", "hg", "nh"].contains(&f.as_str()))
        .cloned()
        .collect();
    let backing = match m.path.as_str() {
        "[vvar]" | "[vvar_vclock]" | "[vdso]" => Backing::Vdso {
            name: m.path.clone(),
        },
        "" | "[heap]" | "[stack]" => Backing::Anon {
            name: (!m.path.is_empty()).then(|| m.path.clone()),
        },
        p if p.starts_with("[anon:") => Backing::Anon {
            name: Some(p.to_string()),
        },
        p if p.starts_with('/') && !p.ends_with(" (deleted)") && m.inode != 0 => {
            let md = std::fs::metadata(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
                .map_err(|source| CrError::Proc {
                    pid,
                    what: format!("stat of the file behind {}", what()),
                    source,
                })?;
            let by_path = std::fs::metadata(p).ok();
            if !md.is_file() || by_path.is_none_or(|b| b.ino() != md.ino() || b.dev() != md.dev()) {
                return Err(refused(
                    pid,
                    what(),
                    "the mapped object is not the regular file at that path",
                ));
            }
            Backing::File {
                path: p.to_string(),
                offset: m.offset,
                size: md.size(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            }
        }
        _ => {
            return Err(refused(
                pid,
                what(),
                "only anonymous memory and mappings of existing regular files are supported",
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

const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// Every fd, or a refusal.
fn read_fds(pid: i32) -> Result<Vec<Fd>> {
    let mut nums: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|source| CrError::Proc {
            pid,
            what: "listing fds".into(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut fds = Vec::new();
    for fd in nums {
        let link = procfs::read_link(pid, &format!("fd/{fd}"))?;
        let (pos, flags) = procfs::parse_fdinfo(&procfs::read_text(pid, &format!("fdinfo/{fd}"))?)
            .ok_or_else(|| CrError::Unexpected {
                pid,
                what: format!("unreadable /proc/PID/fdinfo/{fd}"),
            })?;
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
        let is_tty = link.starts_with("/dev/pts/") || link.starts_with("/dev/tty");
        let kind =
            if fd <= 2 && (link.starts_with("pipe:[") || link.starts_with("socket:[") || is_tty) {
                FdKind::Stdio { was: link }
            } else if link.starts_with('/') && !link.ends_with(" (deleted)") {
                let md = md.ok_or_else(|| {
                    refused(
                        pid,
                        format!("fd {fd} ({link})"),
                        "its file cannot be stat'ed",
                    )
                })?;
                if md.is_file() || md.is_dir() || DEVICES.contains(&link.as_str()) {
                    FdKind::Path {
                        path: link,
                        flags,
                        pos,
                        seekable: md.is_file(),
                    }
                } else {
                    return Err(refused(
                        pid,
                        format!("fd {fd} ({link})"),
                        "of devices only /dev/null, /dev/zero, /dev/urandom and /dev/random are \
                     supported",
                    ));
                }
            } else {
                let hint = if link.ends_with(" (deleted)") {
                    "deleted-but-open files are not supported yet"
                } else {
                    "only files opened by path are supported yet (and pipes, sockets and terminals \
                 as stdin/stdout/stderr)"
                };
                return Err(refused(pid, format!("fd {fd} ({link})"), hint));
            };
        debug!(pid, fd, ?kind, "fd");
        fds.push(Fd { fd, kind });
    }
    Ok(fds)
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];

/// Saves the pages that a restore cannot get elsewhere: present (or swapped) pages of
/// anonymous mappings, except all-zero ones; anonymous copies (pagemap bit 61 clear) in
/// private file mappings.
fn dump_pages(pid: i32, vmas: &[Vma], writer: &mut PagesWriter) -> Result<()> {
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
            Backing::File { .. } => false,
            Backing::Vdso { .. } => continue,
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
