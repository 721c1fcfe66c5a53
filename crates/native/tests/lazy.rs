//! Lazy restore against the kernel (as root): a C program (`tests/native/lazy_child.c`) maps
//! an anonymous region and says where; the test takes a userfaultfd from it
//! (`attach_and_take_uffd`: seize, inject `userfaultfd()`, `pidfd_getfd`, close, detach),
//! registers the region, serves it from an in-memory page source holding a known pattern
//! (pages missing from the image read as zeros), and lets the program go; the program reads
//! and checks the region its own way and prints "ok" or "bad: …".
//!
//! `bench_1gib_region_prints_figures` prints fault latency and fill throughput for a 1 GiB
//! region (figures only, no timed assertions); for meaningful figures run it optimized and
//! alone: `cargo test -p podsnap-native --release --test lazy bench -- --nocapture`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use podsnap_native::cr::image::PageRun;
use podsnap_native::cr::lazy::{
    self, LazyError, LazyHandle, LazyOptions, LazyOutcome, LazyServer, LazyStats,
};
use podsnap_native::cr::restore::PageSource;

const PAGE: u64 = 4096;

/// The benchmark runs alone; the other tests share.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn present(layout: u32, p: u64) -> bool {
    if layout == 0 {
        !(p % 7 == 3 || (p / 64) % 13 == 5)
    } else {
        (p / 512) % 17 != 9
    }
}

fn pat(p: u64, w: u64) -> u64 {
    (p.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (w.wrapping_mul(0xD1B5_4A32_D192_ED03)) ^ 0x5eed
}

/// The image of the region at `addr`: runs of present pages, and their data.
fn image(addr: u64, pages: u64, layout: u32) -> (Vec<PageRun>, Vec<u8>) {
    let mut runs: Vec<PageRun> = Vec::new();
    let n = (0..pages).filter(|&p| present(layout, p)).count();
    let mut data = Vec::with_capacity(n * PAGE as usize);
    for p in (0..pages).filter(|&p| present(layout, p)) {
        let a = addr + p * PAGE;
        let offset = data.len() as u64;
        match runs.last_mut() {
            Some(r) if r.addr + r.pages * PAGE == a => r.pages += 1,
            _ => runs.push(PageRun {
                addr: a,
                pages: 1,
                offset,
            }),
        }
        for w in 0..PAGE / 8 {
            data.extend_from_slice(&pat(p, w).to_ne_bytes());
        }
    }
    (runs, data)
}

/// Page data in memory, with faults to order.
#[derive(Default)]
struct MemSource {
    data: Vec<u8>,
    /// Each read first sleeps this long.
    delay: Duration,
    /// Reads at or past this offset fail.
    fail_from: Option<u64>,
    /// Reads at or past this offset hang until `release`.
    stall_from: Option<u64>,
    /// Reads panic.
    panic: bool,
    release: AtomicBool,
    /// The offsets read, in order.
    log: Option<Mutex<Vec<u64>>>,
}

impl PageSource for MemSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if let Some(log) = &self.log {
            log.lock().unwrap().push(offset);
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.panic {
            panic!("the page source panics (on purpose)");
        }
        if self.fail_from.is_some_and(|f| offset >= f) {
            return Err(std::io::Error::other("injected read failure"));
        }
        if self.stall_from.is_some_and(|f| offset >= f) {
            while !self.release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let end = offset as usize + buf.len();
        if end > self.data.len() {
            return Err(std::io::Error::other("read past the end"));
        }
        buf.copy_from_slice(&self.data[offset as usize..end]);
        Ok(())
    }
}

fn compiled() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    BIN.get_or_init(|| {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/native/lazy_child.c");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lazy_child");
        // Every test process (nextest) compiles it: each into a file of its own, renamed into
        // place, so that none runs a file another is still writing ("text file busy").
        let fresh = bin.with_extension(format!("{}.tmp", std::process::id()));
        let st = Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&fresh)
            .arg(&src)
            .status()
            .expect("cc runs");
        assert!(st.success(), "compiling {}", src.display());
        std::fs::rename(&fresh, &bin).expect("placing the compiled test program");
        bin
    })
}

/// The test program, stopped at its "go".
struct Kid {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    addr: u64,
    pages: u64,
    layout: u32,
    deadline: Arc<AtomicBool>,
}

impl Kid {
    fn spawn(mode: &str, pages: u64, layout: u32) -> Kid {
        let mut child = Command::new(compiled())
            .args([mode, &pages.to_string(), &layout.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the test program");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .unwrap_or_else(|| panic!("not ready: {line:?}"));
        // Nothing here may hang for good: the program is killed after 120 s.
        let deadline = Arc::new(AtomicBool::new(false));
        let (pid, flag) = (child.id() as i32, deadline.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if t0.elapsed() > Duration::from_secs(120) {
                    eprintln!("test program {pid} still running after 120 s: killed");
                    // SAFETY: kill has no memory arguments; the child is not reaped until the
                    // flag is set, so the PID is still ours.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Kid {
            child,
            stdin,
            out,
            addr,
            pages,
            layout,
            deadline,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Takes its userfaultfd, registers the region and starts serving it from `source`
    /// (made from this region's image by `make`).
    fn serve(
        &self,
        make: impl FnOnce(Vec<u8>) -> MemSource,
        opts: LazyOptions,
    ) -> (LazyHandle, Arc<MemSource>) {
        let (runs, data) = image(self.addr, self.pages, self.layout);
        let source = Arc::new(make(data));
        let mut uffd = lazy::attach_and_take_uffd(self.pid()).expect("take the userfaultfd");
        lazy::register_lazy(&mut uffd, &[(self.addr, self.pages * PAGE)]).expect("register");
        let handle = LazyServer::start(uffd, runs, source.clone(), opts).expect("start");
        (handle, source)
    }

    /// Lets it go on (one byte on stdin).
    fn go(&mut self) {
        self.stdin.write_all(b"g").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Its remaining output and exit status.
    fn finish(mut self) -> (String, ExitStatus) {
        let mut s = String::new();
        let _ = self.out.read_to_string(&mut s);
        let st = self.child.wait().unwrap();
        self.deadline.store(true, Ordering::Relaxed);
        (s.trim().to_string(), st)
    }
}

fn print_stats(name: &str, s: &LazyStats) {
    eprintln!(
        "{name}: {:?}, resumed after {:?}, fully resident after {:?}; {} faults \
         (p50 {:?}, p99 {:?}, max {:?}); demand {} KiB, zero {} KiB, background {} KiB, \
         removed {} KiB, forks {}; working set {} blocks",
        s.outcome,
        s.time_to_resume,
        s.fully_resident,
        s.demand_faults,
        s.fault_p50,
        s.fault_p99,
        s.fault_max,
        s.demand_bytes >> 10,
        s.zero_bytes >> 10,
        s.background_bytes >> 10,
        s.removed_bytes >> 10,
        s.forks,
        s.working_set.len()
    );
}

fn image_bytes(pages: u64, layout: u32) -> u64 {
    (0..pages).filter(|&p| present(layout, p)).count() as u64 * PAGE
}

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn background_fill_alone_restores_the_pattern() {
    let _g = shared();
    let (pages, layout) = (4096, 0);
    let mut kid = Kid::spawn("wait-verify", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    handle.mark_resumed();
    let stats = handle.wait().expect("lazy restore");
    print_stats("background only", &stats);
    assert_eq!(stats.outcome, LazyOutcome::Complete);
    assert_eq!(stats.demand_faults, 0, "the program touched nothing yet");
    assert_eq!(stats.background_bytes, image_bytes(pages, layout));
    assert!(stats.fully_resident.is_some());
    kid.go();
    let (out, st) = kid.finish();
    assert!(out.starts_with("ok"), "{out}");
    assert!(st.success(), "{st:?}");
}

#[test]
fn demand_faults_come_before_the_fill_gets_there() {
    let _g = shared();
    let (pages, layout) = (8192, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let last = kid.addr + (pages - 1) * PAGE;
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(5),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    handle.mark_resumed();
    let stats = handle.wait().expect("lazy restore");
    print_stats("demand first", &stats);
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success(), "{st:?}");
    assert_eq!(stats.outcome, LazyOutcome::Complete);
    assert!(stats.demand_faults > 0);
    assert!(stats.demand_bytes > 0);
    // The program touches the last page first: the first block of the working set.
    assert_eq!(stats.working_set[0], last & !(64 * 1024 - 1));
    assert_eq!(
        stats.demand_bytes + stats.background_bytes,
        image_bytes(pages, layout),
        "every image page copied once"
    );
}

#[test]
fn faults_and_fill_together_with_holes_and_zero_pages() {
    let _g = shared();
    let (pages, layout) = (8192, 0);
    let mut kid = Kid::spawn("verify", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            ..Default::default()
        },
        LazyOptions {
            fault_block: 16 * 1024,
            fill_block: 256 * 1024,
            ..Default::default()
        },
    );
    kid.go();
    let stats = handle.wait().expect("lazy restore");
    print_stats("holes", &stats);
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success(), "{st:?}");
    assert_eq!(stats.outcome, LazyOutcome::Complete);
    assert_eq!(
        stats.demand_bytes + stats.background_bytes,
        image_bytes(pages, layout)
    );
}

#[test]
fn a_prefetch_order_is_read_first() {
    let _g = shared();
    let (pages, layout) = (8192, 1);
    let mut kid = Kid::spawn("wait-verify", pages, layout);
    let addr = kid.addr;
    // Eight blocks near the end first (in a run that starts at page 5120: image index = page
    // - 512), then the rest.
    let prefetch: Vec<u64> = (0..8)
        .map(|i| addr + (pages - 40 - i * 16) * PAGE)
        .collect();
    let fb = 64 * 1024;
    let expected: Vec<u64> = prefetch
        .iter()
        .map(|&a| {
            let start = (a & !(fb - 1)).max(addr + 5120 * PAGE);
            ((start - addr) / PAGE - 512) * PAGE
        })
        .collect();
    let (handle, src) = kid.serve(
        |data| MemSource {
            data,
            log: Some(Mutex::new(Vec::new())),
            ..Default::default()
        },
        LazyOptions {
            prefetch,
            fault_block: fb,
            ..Default::default()
        },
    );
    // `prefetch_first`: the blocks were read (and copied) before `start` returned.
    assert!(src.log.as_ref().unwrap().lock().unwrap().len() >= 8);
    kid.go();
    let stats = handle.wait().expect("lazy restore");
    assert_eq!(stats.background_bytes, image_bytes(pages, layout));
    kid.go();
    let (out, st) = kid.finish();
    assert!(out.starts_with("ok"), "{out}");
    assert!(st.success());
    let log = src.log.as_ref().unwrap().lock().unwrap();
    assert_eq!(&log[..8], &expected[..], "prefetch blocks first, in order");
    assert!(log[8] < expected[7], "then the rest from the start");
    assert_eq!(stats.prefetch_bytes, 8 * fb, "counted as prefetched");
}

#[test]
fn a_failing_source_kills_the_process_with_the_reason() {
    let _g = shared();
    let (pages, layout) = (4096, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let half = image_bytes(pages, layout) / 2;
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            fail_from: Some(half),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    let err = handle.wait().expect_err("the source fails");
    eprintln!("failing source: {err}");
    assert!(matches!(err, LazyError::Source { tries: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("injected read failure"));
    let (out, st) = kid.finish();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed: {st:?}, {out}");
    assert!(!out.contains("bad"), "no wrong data was seen: {out}");
}

#[test]
fn a_stalled_source_kills_the_process_after_the_timeout() {
    let _g = shared();
    let (pages, layout) = (4096, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let (handle, src) = kid.serve(
        |data| MemSource {
            data,
            stall_from: Some(PAGE * 1000),
            ..Default::default()
        },
        LazyOptions {
            read_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    );
    kid.go();
    let t0 = Instant::now();
    let err = handle.wait().expect_err("the source stalls");
    eprintln!("stalled source: {err} (after {:?})", t0.elapsed());
    assert!(matches!(err, LazyError::Stalled { .. }), "{err:?}");
    src.release.store(true, Ordering::Relaxed);
    let (out, st) = kid.finish();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed: {st:?}, {out}");
    assert!(!out.contains("bad"), "{out}");
}

#[test]
fn a_slow_source_makes_faults_wait_but_they_complete() {
    let _g = shared();
    let (pages, layout) = (4096, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(20),
            ..Default::default()
        },
        LazyOptions {
            read_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    kid.go();
    let stats = handle.wait().expect("lazy restore");
    print_stats("slow source", &stats);
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success());
    assert_eq!(stats.outcome, LazyOutcome::Complete);
    assert!(stats.demand_faults > 0);
}

#[test]
fn the_process_exiting_mid_restore_ends_the_server_cleanly() {
    let _g = shared();
    let (pages, layout) = (16384, 1);
    let mut kid = Kid::spawn("exit-early", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(5),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    let stats = handle.wait().expect("no error when the process goes");
    print_stats("exit mid-restore", &stats);
    assert_eq!(stats.outcome, LazyOutcome::Gone);
    assert!(stats.fully_resident.is_none());
    assert!(stats.background_bytes < image_bytes(pages, layout));
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success());
}

#[test]
fn madvise_munmap_and_mremap_during_the_fill() {
    let _g = shared();
    let (pages, layout) = (8192, 1);
    let mut kid = Kid::spawn("dontneed", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(5),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    let stats = handle.wait().expect("lazy restore");
    print_stats("madvise/munmap/mremap", &stats);
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success(), "{st:?}");
    assert_eq!(stats.outcome, LazyOutcome::Complete);
    // The fill is slow: it had not reached the dropped and unmapped ranges.
    assert!(stats.removed_bytes >= 64 * PAGE, "{}", stats.removed_bytes);
}

#[test]
fn a_fork_during_the_fill_is_served_too() {
    let _g = shared();
    let (pages, layout) = (8192, 1);
    let mut kid = Kid::spawn("fork", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(2),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    let stats = handle.wait().expect("lazy restore");
    print_stats("fork", &stats);
    let (out, st) = kid.finish();
    assert_eq!(out, "ok");
    assert!(st.success(), "{st:?}");
    assert_eq!(stats.forks, 1);
}

#[test]
fn a_panicking_server_kills_the_process() {
    let _g = shared();
    let (pages, layout) = (1024, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            panic: true,
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    let err = handle.wait().expect_err("the server panics");
    assert!(matches!(err, LazyError::Panicked { .. }), "{err:?}");
    let (out, st) = kid.finish();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed: {st:?}, {out}");
    assert!(!out.contains("bad"), "{out}");
}

#[test]
fn dropping_the_handle_before_completion_kills_the_process() {
    let _g = shared();
    let (pages, layout) = (4096, 1);
    let mut kid = Kid::spawn("verify", pages, layout);
    let (handle, _src) = kid.serve(
        |data| MemSource {
            data,
            delay: Duration::from_millis(50),
            ..Default::default()
        },
        LazyOptions::default(),
    );
    kid.go();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!handle.is_finished());
    drop(handle);
    let (out, st) = kid.finish();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "killed: {st:?}, {out}");
    assert!(!out.contains("bad"), "{out}");
}

#[test]
fn bench_1gib_region_prints_figures() {
    let _g = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    let (pages, layout) = (262_144, 1);
    let bytes = image_bytes(pages, layout);
    eprintln!(
        "BENCH a 1 GiB region, {} MiB of it in the image",
        bytes >> 20
    );

    // The background fill alone, the program waiting: twice (the first run meets cold
    // memory).
    // An unoptimized build runs one case of each kind (for coverage; its figures mean
    // little): `cargo test --release --test lazy bench -- --nocapture` for all of them.
    let all = !cfg!(debug_assertions);
    let alone = [
        ("first run, 64 KiB slices", 64u64 << 10),
        ("64 KiB slices", 64 << 10),
        ("256 KiB slices", 256 << 10),
        ("2 MiB slices", 2 << 20),
    ];
    for (round, slice) in alone.into_iter().take(if all { 4 } else { 1 }) {
        let mut kid = Kid::spawn("wait-verify", pages, layout);
        let (handle, _src) = kid.serve(
            |data| MemSource {
                data,
                ..Default::default()
            },
            LazyOptions {
                fill_slice: slice,
                ..Default::default()
            },
        );
        kid.go();
        handle.mark_resumed();
        let s = handle.wait().expect("lazy restore");
        let fill = s.fully_resident.unwrap() - s.time_to_resume;
        kid.go();
        let (out, st) = kid.finish();
        assert!(out.starts_with("ok") && st.success(), "{out}");
        eprintln!(
            "BENCH background fill alone ({round}): {fill:?} = {:.2} GB/s; the program \
             then reads every page: {out}",
            bytes as f64 / fill.as_secs_f64() / 1e9
        );
    }

    // Random first touches while the fill runs.
    let touched = [
        (64u64 << 10, 64u64 << 10),
        (4096, 64 << 10),
        (64 << 10, 256 << 10),
        (64 << 10, 2 << 20),
    ];
    for (fb, slice) in touched.into_iter().take(if all { 4 } else { 1 }) {
        let mut kid = Kid::spawn("bench", pages, layout);
        let (handle, _src) = kid.serve(
            |data| MemSource {
                data,
                ..Default::default()
            },
            LazyOptions {
                fault_block: fb,
                fill_slice: slice,
                ..Default::default()
            },
        );
        kid.go();
        handle.mark_resumed();
        let s = handle.wait().expect("lazy restore");
        let (out, st) = kid.finish();
        assert!(out.starts_with("ok") && st.success(), "{out}");
        let resident = s.fully_resident.unwrap() - s.time_to_resume;
        eprintln!(
            "BENCH fault block {} KiB, fill slice {} KiB: server fault service p50 {:?} p99 \
             {:?} max {:?} over {} faults; demand {} MiB, zero {} MiB, background {} MiB; \
             fully resident {resident:?} after resume ({:.2} GB/s); program: {out}",
            fb >> 10,
            slice >> 10,
            s.fault_p50,
            s.fault_p99,
            s.fault_max,
            s.demand_faults,
            s.demand_bytes >> 20,
            s.zero_bytes >> 20,
            s.background_bytes >> 20,
            bytes as f64 / resident.as_secs_f64() / 1e9
        );
    }
}
