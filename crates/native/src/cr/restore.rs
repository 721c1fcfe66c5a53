//! Restore of one process from an image, with its PID.
//!
//! 1. The image is read and validated completely ([`image::read_image`]), and checked against
//!    this machine: same kernel release (the vDSO moves over as is), same credentials as the
//!    restorer, every mapped file unchanged (size and modification time).
//! 2. A seed is created with `clone3(set_tid = [pid])` — a fork of the restorer that makes
//!    itself traced and stops. A PID in use is a clear error ([`CrError::PidTaken`]).
//! 3. [`plan_restore`] (pure) turns the image and the seed's layout into the list of
//!    operations, and [`execute`] runs it through [`SeedOps`]: unregister the seed's rseq, map
//!    the `syscall; int3` trampoline at a free address, close the seed's fds, unmap the seed's
//!    mappings, move its `[vvar]`/`[vvar_vclock]`/`[vdso]` to the saved place, map every
//!    saved mapping, write the saved pages (through `/proc/PID/mem`, which reaches read-only
//!    pages), `PR_SET_MM_MAP` with the executable's fd, cwd/umask/personality/comm, signal
//!    dispositions, sigaltstack, clear_child_tid, robust list, rseq, files at their numbers
//!    and offsets; then the signal mask, XSAVE area, and — stopped at the exit of the
//!    trampoline's own `munmap` — the saved registers; detach.
//! 4. On any error the seed is killed: never a half-restored process.
//!
//! Standard input, output and error that were a terminal, pipe or socket are re-opened onto
//! the files in [`RestoreOptions::stdio`] (default `/dev/null`; output files are created and
//! appended to). The restored process is a child of the restorer (its parent, session and
//! process group are not restored in this slice).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::checkpoint::kernel_release;
use super::image::{self, PAGE, PageRun, PagesFile};
use super::model::{Backing, FdKind, ProcessImage, Regs, from_hex};
use super::procfs::{self, MapEntry};
use super::sys::{self, Cloned, Injector, TRAMPOLINE_CODE, Wait};
use super::{CrError, Result};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Files for fds 0, 1 and 2 when they were a terminal, pipe or socket (default
    /// `/dev/null`).
    pub stdio: [Option<PathBuf>; 3],
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreStats {
    /// The restored process (its PID from the image).
    pub pid: i32,
    /// Bytes of page data written into it.
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

/// What the plan needs to know of the seed.
#[derive(Debug, Clone)]
pub struct SeedLayout {
    /// Its mappings.
    pub maps: Vec<MapEntry>,
    /// Its rseq registration (address, length, signature), inherited from the restorer.
    pub rseq: Option<(u64, u32, u32)>,
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
    /// Bytes to write into the seed first (at the address given), e.g. a path.
    pub data: Option<(u64, Vec<u8>)>,
    /// The result it must have.
    pub expect: Expect,
    /// The call in words, for errors.
    pub what: String,
}

/// One step of a restore.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Inject a syscall.
    Syscall(Call),
    /// Write `syscall; int3` at this (freshly mapped) address and inject through it from now.
    InstallTrampoline {
        /// The trampoline's address.
        addr: u64,
    },
    /// Write every saved page.
    WritePages,
    /// Signal mask, XSAVE area, unmap the trampoline, registers, detach.
    Finish {
        /// The trampoline to unmap.
        trampoline: u64,
        /// The registers to resume with.
        regs: Regs,
        /// The XSAVE area.
        xstate: Vec<u8>,
        /// The blocked signal mask.
        sigmask: u64,
    },
}

/// The privileged side of a restore: a stopped seed process. The real one injects through
/// ptrace; tests use a recording double.
pub trait SeedOps {
    /// Injects syscall `nr`; its raw result (`-errno` on error).
    fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64>;
    /// Writes bytes into the seed's memory.
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()>;
    /// Injects through the `syscall; int3` at `addr` from now on.
    fn set_code(&mut self, addr: u64);
    /// Sets the mask and XSAVE area, unmaps the trampoline, sets the registers and detaches.
    fn finish(&mut self, trampoline: u64, regs: &Regs, xstate: &[u8], sigmask: u64) -> Result<()>;
}

/// Page data by offset.
pub trait PageSource {
    /// Reads `buf.len()` bytes at `offset` of the page data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl PageSource for PagesFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        PagesFile::read_at(self, offset, buf)
    }
}

fn call(nr: i64, args: [u64; 6], expect: Expect, what: impl Into<String>) -> Op {
    Op::Syscall(Call {
        nr,
        args,
        data: None,
        expect,
        what: what.into(),
    })
}

fn call_with(
    nr: i64,
    args: [u64; 6],
    data: (u64, Vec<u8>),
    expect: Expect,
    what: impl Into<String>,
) -> Op {
    Op::Syscall(Call {
        nr,
        args,
        data: Some(data),
        expect,
        what: what.into(),
    })
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

fn cstr(s: &str) -> Result<Vec<u8>> {
    if s.len() >= PAGE as usize || s.contains('\0') {
        return Err(CrError::Incompatible(format!(
            "path {s:?} is too long (or has a NUL) to be passed to the restored process"
        )));
    }
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

const OPEN_FLAGS_KEPT: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC
    | libc::O_PATH;

/// The restore, step by step: pure, from the image, the seed's layout, the absolute paths
/// for stdio and the XSAVE area.
pub fn plan_restore(
    img: &ProcessImage,
    seed: &SeedLayout,
    stdio: &[String; 3],
    xstate: Vec<u8>,
) -> Result<Vec<Op>> {
    use libc::*;
    let mut ops = Vec::new();
    let mut used: Vec<(u64, u64)> = img.vmas.iter().map(|v| (v.start, v.end)).collect();
    used.extend(seed.maps.iter().map(|m| (m.start, m.end.min(TASK_SIZE))));
    let tramp = find_gap(&used, TRAMPOLINE_LEN, LOWEST_ADDR)
        .ok_or_else(|| CrError::Incompatible("no free address for the trampoline".into()))?;
    used.push((tramp, tramp + TRAMPOLINE_LEN));
    let data = tramp + PAGE;

    // Bootstrap, through the seed's own instruction pointer.
    if let Some((addr, len, sig)) = seed.rseq {
        ops.push(call(
            SYS_rseq,
            [addr, len as u64, 1, sig as u64, 0, 0],
            Expect::Zero,
            "rseq unregistration of the seed's area",
        ));
    }
    ops.push(call(
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
    ops.push(Op::InstallTrampoline { addr: tramp });
    ops.push(call(
        SYS_close_range,
        [0, u32::MAX as u64, 0, 0, 0, 0],
        Expect::Zero,
        "close_range of the seed's fds",
    ));

    // Away with the seed's memory, but its vDSO.
    for m in &seed.maps {
        if VDSO_NAMES.contains(&m.path.as_str()) || m.path == "[vsyscall]" || m.start >= TASK_SIZE {
            continue;
        }
        ops.push(call(
            SYS_munmap,
            [m.start, m.end - m.start, 0, 0, 0, 0],
            Expect::Zero,
            format!(
                "munmap of the seed's {:#x}-{:#x} {}",
                m.start, m.end, m.path
            ),
        ));
    }
    let seed_vdso: Vec<&MapEntry> = seed
        .maps
        .iter()
        .filter(|m| VDSO_NAMES.contains(&m.path.as_str()))
        .collect();
    let img_vdso: Vec<_> = img
        .vmas
        .iter()
        .filter(|v| matches!(v.backing, Backing::Vdso { .. }))
        .collect();
    if img_vdso.is_empty() {
        for m in &seed_vdso {
            ops.push(call(
                SYS_munmap,
                [m.start, m.end - m.start, 0, 0, 0, 0],
                Expect::Zero,
                format!("munmap of the seed's {}", m.path),
            ));
        }
    } else {
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
                let tmp = find_gap(&used, size, LOWEST_ADDR).ok_or_else(|| {
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
    }

    // The saved mappings.
    for v in &img.vmas {
        let len = v.len();
        let mut flags = MAP_PRIVATE | MAP_FIXED;
        if v.growsdown {
            flags |= MAP_GROWSDOWN;
        }
        match &v.backing {
            Backing::Vdso { .. } => continue,
            Backing::Anon { name } => ops.push(call(
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
            Backing::File { path, offset, .. } => {
                ops.push(call_with(
                    SYS_openat,
                    [
                        AT_FDCWD as u64,
                        data,
                        (O_RDONLY | O_CLOEXEC) as u64,
                        0,
                        0,
                        0,
                    ],
                    (data, cstr(path)?),
                    Expect::Eq(0),
                    format!("open of {path} to map it"),
                ));
                ops.push(call(
                    SYS_mmap,
                    [v.start, len, v.prot as u64, flags as u64, 0, *offset],
                    Expect::Eq(v.start),
                    format!("mmap of {path} at {:#x}-{:#x}", v.start, v.end),
                ));
                ops.push(call(
                    SYS_close,
                    [0; 6],
                    Expect::Zero,
                    "close of the mapped file",
                ));
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
                SYS_madvise,
                [v.start, len, advice as u64, 0, 0, 0],
                Expect::Zero,
                format!("madvise({a}) of {:#x}-{:#x}", v.start, v.end),
            ));
        }
    }
    ops.push(Op::WritePages);

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
    map.extend(0u32.to_ne_bytes()); // exe_fd: opened as fd 0 just before
    map.resize(128, 0);
    map.extend(&auxv);
    ops.push(call_with(
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
        Expect::Eq(0),
        format!("open of the executable {}", img.exe),
    ));
    ops.push(call_with(
        SYS_prctl,
        [PR_SET_MM as u64, PR_SET_MM_MAP as u64, data, 104, 0, 0],
        (data, map),
        Expect::Zero,
        "prctl(PR_SET_MM_MAP)",
    ));
    ops.push(call(
        SYS_close,
        [0; 6],
        Expect::Zero,
        "close of the executable",
    ));

    // Process attributes.
    ops.push(call_with(
        SYS_chdir,
        [data, 0, 0, 0, 0, 0],
        (data, cstr(&img.cwd)?),
        Expect::Zero,
        format!("chdir to {}", img.cwd),
    ));
    ops.push(call(
        SYS_umask,
        [img.umask as u64, 0, 0, 0, 0, 0],
        Expect::Any,
        "umask",
    ));
    ops.push(call(
        SYS_personality,
        [img.personality, 0, 0, 0, 0, 0],
        Expect::Any,
        "personality",
    ));
    let mut comm = img.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    ops.push(call_with(
        SYS_prctl,
        [PR_SET_NAME as u64, data, 0, 0, 0, 0],
        (data, comm),
        Expect::Zero,
        "prctl(PR_SET_NAME)",
    ));
    for sa in &img.sigactions {
        let mut b = Vec::with_capacity(32);
        for w in [sa.handler, sa.flags, sa.restorer, sa.mask] {
            b.extend(w.to_ne_bytes());
        }
        ops.push(call_with(
            SYS_rt_sigaction,
            [sa.sig as u64, data, 0, 8, 0, 0],
            (data, b),
            Expect::Zero,
            format!("rt_sigaction({})", sa.sig),
        ));
    }

    // The thread.
    let t = &img.thread;
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
        SYS_sigaltstack,
        [data, 0, 0, 0, 0, 0],
        (data, ss),
        Expect::Zero,
        "sigaltstack",
    ));
    ops.push(call(
        SYS_set_tid_address,
        [t.clear_child_tid, 0, 0, 0, 0, 0],
        Expect::Any,
        "set_tid_address",
    ));
    if t.robust_list.0 != 0 {
        ops.push(call(
            SYS_set_robust_list,
            [t.robust_list.0, t.robust_list.1, 0, 0, 0, 0],
            Expect::Zero,
            "set_robust_list",
        ));
    }
    if let Some((addr, len, sig)) = t.rseq {
        ops.push(call(
            SYS_rseq,
            [addr, len as u64, 0, sig as u64, 0, 0],
            Expect::Zero,
            format!("rseq registration at {addr:#x}"),
        ));
    }

    // Files, lowest number first; openat returns the lowest free fd, so every result is known.
    let mut open = BTreeSet::new();
    for f in &img.fds {
        let (path, flags, pos) = match &f.kind {
            FdKind::Path {
                path,
                flags,
                pos,
                seekable,
            } => (
                path.as_str(),
                *flags as i32 & OPEN_FLAGS_KEPT,
                seekable.then_some(*pos).filter(|p| *p != 0),
            ),
            FdKind::Stdio { .. } => {
                let Some(p) = stdio.get(f.fd as usize) else {
                    return Err(CrError::Incompatible(format!("stdio fd {}", f.fd)));
                };
                let flags = if f.fd == 0 {
                    O_RDONLY
                } else {
                    O_WRONLY | O_APPEND
                };
                (p.as_str(), flags, None)
            }
        };
        let low = (0..).find(|n| !open.contains(n)).expect("a free fd");
        ops.push(call_with(
            SYS_openat,
            [AT_FDCWD as u64, data, flags as u64, 0, 0, 0],
            (data, cstr(path)?),
            Expect::Eq(low as u64),
            format!("open of {path} for fd {}", f.fd),
        ));
        if low != f.fd {
            ops.push(call(
                SYS_dup3,
                [low as u64, f.fd as u64, (flags & O_CLOEXEC) as u64, 0, 0, 0],
                Expect::Eq(f.fd as u64),
                format!("dup3 to fd {}", f.fd),
            ));
            ops.push(call(
                SYS_close,
                [low as u64, 0, 0, 0, 0, 0],
                Expect::Zero,
                format!("close of fd {low}"),
            ));
        }
        open.insert(f.fd);
        if let Some(pos) = pos {
            ops.push(call(
                SYS_lseek,
                [f.fd as u64, pos, SEEK_SET as u64, 0, 0, 0],
                Expect::Eq(pos),
                format!("lseek of fd {} to {pos}", f.fd),
            ));
        }
    }
    if img.no_new_privs {
        ops.push(call(
            SYS_prctl,
            [PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            Expect::Zero,
            "prctl(PR_SET_NO_NEW_PRIVS)",
        ));
    }
    ops.push(Op::Finish {
        trampoline: tramp,
        regs: t.regs.for_resume(),
        xstate,
        sigmask: t.sigmask,
    });
    Ok(ops)
}

/// Runs a plan; the number of syscalls injected.
pub fn execute(
    pid: i32,
    plan: &[Op],
    runs: &[PageRun],
    pages: &dyn PageSource,
    seed: &mut dyn SeedOps,
) -> Result<usize> {
    let mut n = 0;
    for op in plan {
        match op {
            Op::Syscall(c) => {
                if let Some((addr, bytes)) = &c.data {
                    seed.write_mem(*addr, bytes)?;
                }
                let r = seed.syscall(c.nr, c.args)?;
                n += 1;
                if (-4095..0).contains(&r) {
                    return Err(CrError::Injected {
                        pid,
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
                        pid,
                        what: format!("{} returned {r:#x}, expected {:?}", c.what, c.expect),
                    });
                }
            }
            Op::InstallTrampoline { addr } => {
                seed.write_mem(*addr, &TRAMPOLINE_CODE)?;
                seed.set_code(*addr);
            }
            Op::WritePages => {
                let mut buf = vec![0u8; 8 << 20];
                for r in runs {
                    let mut done = 0;
                    while done < r.pages * PAGE {
                        let n = (r.pages * PAGE - done).min(buf.len() as u64);
                        let chunk = &mut buf[..n as usize];
                        pages.read_at(r.offset + done, chunk).map_err(|source| {
                            CrError::ImageIo {
                                path: image::PAGES.into(),
                                what: "reading pages".into(),
                                source,
                            }
                        })?;
                        seed.write_mem(r.addr + done, chunk)?;
                        done += n;
                    }
                }
            }
            Op::Finish {
                trampoline,
                regs,
                xstate,
                sigmask,
            } => seed.finish(*trampoline, regs, xstate, *sigmask)?,
        }
    }
    Ok(n)
}

/// The real seed: a ptrace-stopped child.
struct LiveSeed {
    inj: Injector,
}

impl SeedOps for LiveSeed {
    fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.inj.syscall(nr, args)
    }

    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        self.inj.write(addr, data)
    }

    fn set_code(&mut self, addr: u64) {
        self.inj.code = addr;
    }

    fn finish(&mut self, trampoline: u64, regs: &Regs, xstate: &[u8], sigmask: u64) -> Result<()> {
        let pid = self.inj.pid;
        sys::set_sigmask(pid, sigmask)?;
        sys::set_xstate(pid, xstate)?;
        // munmap the trampoline from the trampoline, stopping at the syscall's exit.
        let mut r = self.inj.base;
        r.rip = trampoline;
        r.rax = libc::SYS_munmap as u64;
        r.orig_rax = u64::MAX;
        r.rdi = trampoline;
        r.rsi = TRAMPOLINE_LEN;
        sys::set_regs(pid, &r)?;
        for stop in ["entry", "exit"] {
            sys::cont_syscall(pid)?;
            match sys::wait(pid)? {
                Wait::Stopped(libc::SIGTRAP, 0) => {}
                other => {
                    return Err(CrError::Unexpected {
                        pid,
                        what: format!("expected the munmap {stop} stop, got {other:?}"),
                    });
                }
            }
        }
        let after = sys::get_regs(pid)?;
        if after.rax != 0 || after.orig_rax != libc::SYS_munmap as u64 {
            return Err(CrError::Unexpected {
                pid,
                what: format!(
                    "munmap of the trampoline: syscall {} returned {:#x}",
                    after.orig_rax as i64, after.rax
                ),
            });
        }
        sys::set_regs(pid, &regs.to_user_regs())?;
        sys::detach(pid, 0)
    }
}

/// Kills the seed unless defused.
struct SeedGuard(Option<i32>);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = sys::kill(pid, libc::SIGKILL);
            while let Ok(Wait::Stopped(..)) = sys::wait(pid) {
                let _ = sys::cont(pid, 0);
            }
        }
    }
}

/// A stopped, traced seed with PID `pid`.
fn spawn_seed(pid: i32) -> Result<i32> {
    match sys::clone3_with_pid(pid) {
        Ok(Cloned::Child) => sys::seed_child_main(),
        Ok(Cloned::Parent(p)) => match sys::wait(p)? {
            Wait::Stopped(libc::SIGSTOP, 0) => Ok(p),
            other => {
                let _ = sys::kill(p, libc::SIGKILL);
                Err(CrError::Unexpected {
                    pid: p,
                    what: format!("the seed did not stop as expected: {other:?}"),
                })
            }
        },
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(CrError::PidTaken { pid }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(CrError::Incompatible(format!(
            "PID {pid} cannot be created here (kernel.pid_max is {})",
            std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .unwrap_or_default()
                .trim()
        ))),
        Err(source) => Err(CrError::Proc {
            pid,
            what: "clone3 with set_tid (root with CAP_CHECKPOINT_RESTORE is needed)".into(),
            source,
        }),
    }
}

/// Checks that the image fits this machine and its page index fits its mappings.
fn check_compatible(dir: &Path, m: &image::Manifest) -> Result<()> {
    let here = kernel_release();
    if m.kernel_release != here {
        return Err(CrError::Incompatible(format!(
            "the image was taken on kernel {}, this is {here}: the vDSO must be the same",
            m.kernel_release
        )));
    }
    let status = procfs::read_text(std::process::id() as i32, "status")?;
    let (uids, gids) = (
        procfs::status_ids(&status, "Uid").unwrap_or_default(),
        procfs::status_ids(&status, "Gid").unwrap_or_default(),
    );
    let p = &m.process;
    if p.uids != uids || p.gids != gids {
        return Err(CrError::Incompatible(format!(
            "the process ran with uids {:?} gids {:?}, the restorer has {uids:?} {gids:?}; \
             credentials are not changed yet, so restore as the same user",
            p.uids, p.gids
        )));
    }
    if std::fs::read_link("/proc/self/exe").is_ok_and(|e| e == Path::new(&p.exe)) {
        return Err(CrError::Incompatible(
            "the process runs the restoring program itself".into(),
        ));
    }
    for v in &p.vmas {
        if let Backing::File {
            path,
            size,
            mtime_ns,
            ..
        } = &v.backing
        {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(path).map_err(|e| {
                CrError::Incompatible(format!("mapped file {path} is not here: {e}"))
            })?;
            let mt = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            if md.size() != *size || mt != *mtime_ns {
                return Err(CrError::Incompatible(format!(
                    "mapped file {path} changed since the checkpoint (size or modification time)"
                )));
            }
        }
    }
    let mut vi = p.vmas.iter().peekable();
    for r in &m.pages.runs {
        let end = r.addr + r.pages * PAGE;
        while vi.peek().is_some_and(|v| v.end <= r.addr) {
            vi.next();
        }
        // A run may span adjacent mappings.
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
                        reason: format!("pages at {at:#x} lie outside the saved mappings"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Restores the process in `dir`, with its PID; returns once it runs.
pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<RestoreStats> {
    let t0 = Instant::now();
    let (manifest, pages) = image::read_image(dir)?;
    check_compatible(dir, &manifest)?;
    let img = &manifest.process;
    let xstate = from_hex(&img.thread.xstate).ok_or_else(|| CrError::BadImage {
        path: dir.join(image::MANIFEST),
        reason: "the XSAVE area is not hex".into(),
    })?;
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
    debug!(secs = t0.elapsed().as_secs_f64(), "image validated");

    let pid = spawn_seed(img.pid)?;
    let mut guard = SeedGuard(Some(pid));
    let maps = procfs::parse_maps(&procfs::read_text(pid, "maps")?).ok_or_else(|| {
        CrError::Unexpected {
            pid,
            what: "unreadable maps of the seed".into(),
        }
    })?;
    let layout = SeedLayout {
        maps,
        rseq: sys::get_rseq(pid)?,
    };
    let plan = plan_restore(img, &layout, &stdio, xstate)?;
    let inj = Injector::new(pid)?;
    inj.write(inj.code, &TRAMPOLINE_CODE)?;
    let mut seed = LiveSeed { inj };
    let syscalls = execute(pid, &plan, &manifest.pages.runs, &pages, &mut seed)?;
    guard.0 = None;
    for s in &img.deferred_signals {
        let _ = sys::kill(pid, *s);
    }
    let elapsed = t0.elapsed();
    info!(pid, syscalls, ?elapsed, "restored");
    Ok(RestoreStats {
        pid,
        page_bytes: manifest.pages.data_len,
        syscalls,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cr::model::{Fd, MmLayout, SigAction, ThreadState, Vma};

    /// A recording double that answers like the kernel would for a plan that is right.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(i64, [u64; 6])>,
        writes: Vec<(u64, usize)>,
        fds: BTreeSet<u64>,
        finished: bool,
    }

    impl SeedOps for Recorder {
        fn syscall(&mut self, nr: i64, a: [u64; 6]) -> Result<i64> {
            self.calls.push((nr, a));
            Ok(match nr {
                libc::SYS_mmap => a[0] as i64,
                libc::SYS_mremap => a[4] as i64,
                libc::SYS_openat => {
                    let fd = (0..).find(|n| !self.fds.contains(n)).unwrap();
                    self.fds.insert(fd);
                    fd as i64
                }
                libc::SYS_dup3 => {
                    self.fds.insert(a[1]);
                    a[1] as i64
                }
                libc::SYS_close => {
                    self.fds.remove(&a[0]);
                    0
                }
                libc::SYS_lseek => a[1] as i64,
                _ => 0,
            })
        }
        fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
            self.writes.push((addr, data.len()));
            Ok(())
        }
        fn set_code(&mut self, _: u64) {}
        fn finish(&mut self, _: u64, _: &Regs, _: &[u8], _: u64) -> Result<()> {
            self.finished = true;
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

    fn image() -> ProcessImage {
        let vdso = |n: &str| Backing::Vdso { name: n.into() };
        ProcessImage {
            pid: 100,
            comm: "prog".into(),
            exe: "/bin/prog".into(),
            cwd: "/".into(),
            umask: 0o22,
            personality: 0,
            no_new_privs: false,
            uids: [0; 4],
            gids: [0; 4],
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
            thread: ThreadState {
                regs: Regs::default(),
                xstate: String::new(),
                sigmask: 0,
                altstack: (0, libc::SS_DISABLE, 0),
                clear_child_tid: 0,
                robust_list: (0x600100, 24),
                rseq: Some((0x600200, 32, 0x53053053)),
            },
            deferred_signals: vec![],
        }
    }

    #[test]
    fn the_plan_runs_in_a_safe_order_with_consistent_results() {
        let seed = SeedLayout {
            maps: vec![
                map(0x500000, 0x510000, "/usr/bin/restorer"),
                map(0x7f00_0000_0000, 0x7f00_0000_4000, "[vvar]"),
                map(0x7f00_0000_4000, 0x7f00_0000_6000, "[vvar_vclock]"),
                map(0x7f00_0000_6000, 0x7f00_0000_8000, "[vdso]"),
                map(0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000, "[vsyscall]"),
            ],
            rseq: Some((0x510000, 32, 0x53053053)),
        };
        let stdio = ["/dev/null".to_string(), "/out".into(), "/dev/null".into()];
        let plan = plan_restore(&image(), &seed, &stdio, vec![0; 8]).unwrap();
        let mut rec = Recorder::default();
        let runs = [PageRun {
            addr: 0x600000,
            pages: 2,
            offset: 0,
        }];
        let n = execute(1, &plan, &runs, &NoPages, &mut rec).unwrap();
        assert_eq!(n, rec.calls.len());
        assert!(rec.finished);
        let pos = |nr: i64, f: &dyn Fn(&[u64; 6]) -> bool| {
            rec.calls
                .iter()
                .position(|(n, a)| *n == nr && f(a))
                .unwrap_or_else(|| panic!("no call {nr}"))
        };
        // The seed's rseq goes first, before any memory it points into is unmapped.
        assert_eq!(rec.calls[0].0, libc::SYS_rseq);
        assert_eq!(rec.calls[0].1[2], 1, "unregister");
        let tramp = pos(libc::SYS_mmap, &|a| a[1] == TRAMPOLINE_LEN);
        let unmap_seed = pos(libc::SYS_munmap, &|a| a[0] == 0x500000);
        let vdso_moves: Vec<usize> = (0..rec.calls.len())
            .filter(|i| rec.calls[*i].0 == libc::SYS_mremap)
            .collect();
        assert_eq!(vdso_moves.len(), 6, "overlapping vDSO moved in two steps");
        assert_eq!(rec.calls[vdso_moves[5]].1[4], 0x7f00_0000_7000);
        let anon = pos(libc::SYS_mmap, &|a| a[0] == 0x600000);
        let mm_map = pos(libc::SYS_prctl, &|a| a[0] == libc::PR_SET_MM as u64);
        let files = pos(libc::SYS_lseek, &|a| a[0] == 5 && a[1] == 42);
        assert!(tramp < unmap_seed && unmap_seed < vdso_moves[0] && vdso_moves[5] < anon);
        assert!(anon < mm_map && mm_map < files);
        // No munmap of [vsyscall] or of the seed's vDSO.
        assert!(!rec.calls.iter().any(|(n, a)| *n == libc::SYS_munmap
            && (a[0] >= 0x7f00_0000_0000 && a[0] < 0x7f00_0000_8000 || a[0] > TASK_SIZE)));
        // Pages were written, and rseq registered again at the image's address.
        assert!(rec.writes.contains(&(0x600000, 8192)));
        assert!(
            rec.calls
                .iter()
                .any(|(n, a)| *n == libc::SYS_rseq && a[0] == 0x600200 && a[2] == 0)
        );
        // fds 1 and 5 end up where they were, nothing else open.
        assert_eq!(rec.fds, BTreeSet::from([1, 5]));
    }

    #[test]
    fn a_different_vdso_is_refused() {
        let seed = SeedLayout {
            maps: vec![map(0x7f00_0010_0000, 0x7f00_0010_2000, "[vdso]")],
            rseq: None,
        };
        let err = plan_restore(&image(), &seed, &Default::default(), vec![]).unwrap_err();
        assert!(err.to_string().contains("vDSO"), "{err}");
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
}
