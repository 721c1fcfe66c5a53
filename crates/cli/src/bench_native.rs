//! `podsnap bench native`: the native checkpoint/restore engine on a program with a given
//! amount of touched memory, beside the snapshot repository's read throughput and runsc's
//! checkpoint and restore of the same program, in one run, figures side by side.
//!
//! For each size the benchmark compiles (once) a small C program ([`PROGRAM`]) that fills that
//! many MiB with a mixed pattern (random, pointer-like, text-like, counters and sparse pages),
//! listens on a TCP port of 127.0.0.1, says "ready", answers each connection's one-byte request
//! by reading a byte of each page of a fixed pseudo-random sample of [`SAMPLE_PAGES`] pages
//! and writing their sum back (its "first response" shows how soon a restored program serves
//! a request that needs memory from all over), and on SIGUSR1 checks every word and writes its
//! verdict. Then:
//!
//! 1. cold start: from exec until "ready", and until the first response;
//! 2. native checkpoint into a directory (the process killed), and native eager restore from
//!    it: the restore itself, and from its start to the first response;
//! 3. native lazy restore from the same image (the previous process killed and reaped first,
//!    so that its PID is free): from its start to the first response, the faults served on
//!    demand, the background fill (image bytes / time until fully resident);
//! 4. the same with the working set recorded by 3 as prefetch: first response, demand faults;
//! 5. that (lazily restored) process checkpointed through a fresh local repository (checkpoint
//!    into a staging directory, then every file stored, page files in page-aligned CDC chunks);
//! 6. the repository's read throughput for that image: every stream read (fetched, verified,
//!    decompressed) to nowhere through a fresh handle;
//! 7. a restore through the repository (fetch into a staging directory, then restore);
//!    7b. that process killed and reaped, then a lazy restore streamed from the repository,
//!    as on a node without the image: through a fresh handle, the snapshot opened, only its
//!    small files (the manifest) fetched, and each page file read in place while it arrives
//!    (a sparse file filled by a background fetcher, a read waiting only for the chunks it
//!    covers, fetched ahead of the rest); from the start (before opening the snapshot) to the
//!    process running, to the first response, and until its memory is all in (the effective
//!    fill throughput, beside the repository's read throughput of 6), and the demand faults;
//!    7c. the same again with the working set recorded by 3 prefetched: its chunks fetched
//!    first, in its order, and its pages copied in first (what a Pod's second restore on a
//!    new node does with the working set stored with its snapshot);
//! 8. a second checkpoint of that (streamed) process through the repository (left running):
//!    its upload;
//! 9. the process asked to check its memory (which also checks what the lazy restores brought
//!    in: the repository's image was taken from a lazily restored process, and this process's
//!    memory came in streamed from the repository);
//! 10. the same program, compiled statically, under runsc: cold start, checkpoint, restore,
//!     first response (asked from inside the sandbox with `runsc exec`) and the memory check.
//!
//! Every first response carries the same sum when the memory came back right; the table says
//! whether they agree. Nothing is asserted on time: the table shows the figures and the goals
//! beside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use podsnap_engine::{ImageFile, ImageFiles};
use podsnap_native::cr::lazy::{LazyOptions, LazyStats};
use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};
use podsnap_repo::{NoProgress, Repository};

use crate::native_repo::{self, mib};

/// Goal: native checkpoint throughput, GB/s of page data.
const CHECKPOINT_GOAL_GBS: f64 = 1.0;
/// Goal: eager restore throughput as a share of the repository's read throughput, in %.
const RESTORE_GOAL_PERCENT: f64 = 80.0;
/// Goal: a lazy restore's first response, from the start of the restore, whatever the size
/// (for the restore streamed from the repository, the start is before opening the snapshot).
const FIRST_RESPONSE_GOAL: Duration = Duration::from_millis(100);
/// Goal: a lazy restore's background fill, GB/s of image page data (image bytes / time until
/// fully resident), from a warm node cache (the image was just written and read).
const FILL_GOAL_GBS: f64 = 1.0;
/// Goal: a lazy restore with the recorded working set as prefetch takes at least this many %
/// fewer demand faults than one without.
const PREFETCH_GOAL_PERCENT: f64 = 90.0;
/// Pages a request touches (a byte of each; the program's `SAMPLE`, set when compiling it).
pub const SAMPLE_PAGES: usize = 256;

/// The workload: `bench MIB RESULT PORT` fills MIB MiB, listens on 127.0.0.1:PORT, prints
/// "ready"; answers each connection's one-byte request with the sum of one byte of each of
/// [`SAMPLE_PAGES`] pseudo-random pages (fixed) as a decimal line, then closes it; on SIGUSR1
/// checks every word and writes "ok" (or "bad page N") to RESULT (`-`: standard output), then
/// exits with 0 (ok) or 1. `bench ask PORT` is the client: it sends one request to
/// 127.0.0.1:PORT and prints the answer (exit 0), or exits with 10 when it gets none. Wrong
/// arguments: exit 2.
pub const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SAMPLE
#define SAMPLE 256
#endif

static volatile sig_atomic_t check_requested;
static void on_usr1(int sig) { (void)sig; check_requested = 1; }

static inline uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Word i of page p: pages of five kinds, chosen per page. */
static inline uint64_t word(uint64_t p, uint64_t i, uint64_t kind) {
    switch (kind) {
    case 0: case 1: case 2: return mix(p * 512 + i);                          /* random */
    case 3: case 4: return mix(p * 512 + i) & 0x00007fffff00fff8ull;          /* pointers */
    case 5: return 0x2065726f6d656d20ull + (i % 7) + (p << 56);               /* text */
    case 6: return p * 4096 + i;                                              /* counters */
    default: return i % 64 == 0 ? p + 1 : 0;                                  /* sparse */
    }
}

static struct sockaddr_in loopback(const char *port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* The client: one request, the answer on standard output. */
static int ask(const char *port) {
    struct sockaddr_in a = loopback(port);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) || write(s, "?", 1) != 1) return 10;
    char buf[64];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(s, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
    if (n == 0 || buf[n - 1] != '\n') return 10;
    fwrite(buf, 1, n, stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "ask")) return ask(argv[2]);
    if (argc != 4) { fprintf(stderr, "usage: bench MIB RESULT PORT | bench ask PORT\n"); return 2; }
    syscall(436 /* close_range */, 3, ~0U, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    uint64_t pages = strtoull(argv[1], NULL, 10) * 256;
    uint64_t *mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 2; }
    for (uint64_t p = 0; p < pages; p++) {
        uint64_t kind = mix(p ^ 0x5555) & 7, *w = mem + p * 512;
        for (uint64_t i = 0; i < 512; i++) w[i] = word(p, i, kind);
    }
    struct sockaddr_in addr = loopback(argv[3]);
    int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one)
        || bind(ls, (struct sockaddr *)&addr, sizeof addr) || listen(ls, 64)) {
        perror("listen");
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    const volatile unsigned char *bytes = (const volatile unsigned char *)mem;
    while (!check_requested) {
        /* SIGUSR1 is let in only while waiting here. */
        struct pollfd pfd = { .fd = ls, .events = POLLIN };
        if (ppoll(&pfd, 1, NULL, &old) != 1) continue;
        int c = accept(ls, NULL, NULL);
        if (c < 0) continue;
        char request;
        if (read(c, &request, 1) == 1) {
            uint64_t sum = 0;
            for (uint64_t k = 0; k < SAMPLE; k++)
                sum += bytes[(mix(k ^ 0xA5A5) % pages) * 4096 + mix(k) % 4096];
            char out[32];
            int n = snprintf(out, sizeof out, "%llu\n", (unsigned long long)sum);
            (void)!send(c, out, (size_t)n, MSG_NOSIGNAL);
        }
        close(c);
    }
    char verdict[64] = "ok";
    for (uint64_t p = 0; p < pages && !strcmp(verdict, "ok"); p++) {
        uint64_t kind = mix(p ^ 0x5555) & 7, *w = mem + p * 512;
        for (uint64_t i = 0; i < 512; i++)
            if (w[i] != word(p, i, kind)) { snprintf(verdict, sizeof verdict, "bad page %llu", (unsigned long long)p); break; }
    }
    FILE *out = strcmp(argv[2], "-") ? fopen(argv[2], "w") : stdout;
    if (!out) return 3;
    fprintf(out, "%s\n", verdict);
    fclose(out);
    return strcmp(verdict, "ok") ? 1 : 0;
}
"#;

/// The native figures of one size.
struct Native {
    page_bytes: u64,
    cold: Duration,
    /// From exec to the first response.
    cold_response: Duration,
    checkpoint: Duration,
    restore: Duration,
    /// From the start of the eager restore to the first response.
    eager_response: Duration,
    /// The lazy restore.
    lazy: Lazy,
    /// The lazy restore with the working set of [`Native::lazy`] as prefetch.
    prefetched: Lazy,
    /// The lazy restore streamed from the repository (its times from before opening the
    /// snapshot).
    streamed: Lazy,
    /// From the start of the streamed restore until the snapshot was open, its manifest
    /// fetched and the page files' fetchers started (the restore itself began then).
    streamed_opened: Duration,
    /// The streamed restore with the working set of [`Native::lazy`] prefetched.
    streamed_prefetched: Lazy,
    /// The first responses (page sample sums), labelled: equal when the memory came back.
    answers: Vec<(&'static str, u64)>,
    repo_read_bytes: u64,
    repo_read: Duration,
    repo_checkpoint: Duration,
    repo_store: Duration,
    stored_bytes: u64,
    uploaded: u64,
    repo_fetch: Duration,
    repo_restore: Duration,
    second_uploaded: u64,
    verdict: String,
}

/// One lazy restore: from its start to the first response, and how its memory came in.
struct Lazy {
    /// From the start of the restore until it returned (the process running).
    resumed: Duration,
    /// From the start of the restore to the first response.
    response: Duration,
    /// The first response.
    answer: u64,
    /// The restored process's memory server.
    stats: LazyStats,
}

/// runsc's figures for one size.
struct Runsc {
    cold: Duration,
    checkpoint: Duration,
    image_bytes: u64,
    restore: Duration,
    /// From the start of the restore to the first response (asked through `runsc exec`).
    response: Duration,
    /// The first response (the page sample sum).
    answer: u64,
    verdict: String,
}

/// Our processes: killed and reaped when the benchmark stops early.
#[derive(Default)]
struct Live(Vec<i32>);

impl Live {
    fn add(&mut self, pid: i32) {
        self.0.push(pid);
    }

    /// `pid` was killed (by a checkpoint, or after its check): reap it.
    fn reap(&mut self, pid: i32) {
        let _ = waitpid(Pid::from_raw(pid), None);
        self.0.retain(|p| *p != pid);
    }

    /// Kills `pid` and reaps it: its PID is free for the next restore.
    fn kill(&mut self, pid: i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        self.reap(pid);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// Runs the benchmark for `sizes` (MiB) in `work_dir` (a temporary directory under /var/tmp
/// when absent).
pub async fn run(sizes: &[usize], work_dir: Option<PathBuf>) -> Result<()> {
    anyhow::ensure!(!sizes.is_empty(), "--sizes: give at least one size in MiB");
    let (dir, temporary) = match work_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (std::path::absolute(&d)?, false)
        }
        None => {
            let d = PathBuf::from(format!(
                "/var/tmp/podsnap-bench-native-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (d, true)
        }
    };
    eprintln!("bench native: working in {}", dir.display());
    let result = tokio::select! {
        r = measure_all(&dir, sizes) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    for sub in ["src", "image", "repo", "stage", "runsc"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    let _ = std::fs::remove_file(dir.join("result"));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (runsc_version, rows) = result?;
    print_table(sizes, &rows, &runsc_version, &dir);
    Ok(())
}

/// The file system type holding `path` (from /proc/self/mountinfo), e.g. `ext4` or `tmpfs`.
fn fs_type(path: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount = Path::new(fields.get(4)?);
            let fs = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|i| fields.get(i + 1))?;
            path.starts_with(mount)
                .then(|| (mount.as_os_str().len(), fs.to_string()))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

type Rows = Vec<(Native, Result<Runsc, String>)>;

async fn measure_all(dir: &Path, sizes: &[usize]) -> Result<(String, Rows)> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("bench.c"), PROGRAM)?;
    let bin = src.join("bench");
    let compile = |extra: &[&str]| -> Result<bool> {
        Ok(Command::new("cc")
            .args(["-O2", "-Wall", &format!("-DSAMPLE={SAMPLE_PAGES}"), "-o"])
            .arg(&bin)
            .arg(src.join("bench.c"))
            .args(extra)
            .stderr(Stdio::null())
            .status()
            .context("running cc (install a C compiler: apt-get install -y gcc)")?
            .success())
    };
    // The same static binary for both engines; without a static C library, native only.
    let static_binary = compile(&["-static"])?;
    if !static_binary && !compile(&[])? {
        bail!(
            "cc cannot compile the benchmark program {}",
            src.join("bench.c").display()
        );
    }
    let runsc = podsnap_node::probe_runsc(None);
    let mut rows = Vec::new();
    for &size in sizes {
        eprintln!("[{size} MiB] native: cold start, checkpoint, restore, repository");
        let native = measure_native(dir, &bin, size).await?;
        let baseline = match (&runsc, static_binary) {
            (None, _) => Err("runsc not installed".to_owned()),
            (Some(_), false) => {
                Err("no static C library (libc.a) for the runsc build of the program".to_owned())
            }
            (Some(_), true) => {
                eprintln!("[{size} MiB] runsc: cold start, checkpoint, restore");
                measure_runsc(dir, &bin, size)
                    .await
                    .map_err(|e| format!("runsc failed: {e:#}"))
            }
        };
        rows.push((native, baseline));
    }
    let version = runsc.map(|r| r.version).unwrap_or_default();
    Ok((version, rows))
}

/// Runs a blocking checkpoint/restore call on one thread of the blocking pool (ptrace wants
/// one tracer thread throughout).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("benchmark task failed: {e}"))?
}

fn checkpoint_options(leave_running: bool) -> CheckpointOptions {
    #[allow(clippy::needless_update)]
    CheckpointOptions {
        leave_running,
        ..Default::default()
    }
}

async fn checkpoint(pid: i32, dir: &Path, leave_running: bool) -> Result<cr::CheckpointStats> {
    let dir = dir.to_path_buf();
    blocking(move || {
        cr::checkpoint(pid, &dir, &checkpoint_options(leave_running))
            .with_context(|| format!("native checkpoint of process {pid}"))
    })
    .await
}

async fn restore(dir: &Path) -> Result<(cr::RestoreStats, Duration)> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let t0 = Instant::now();
        let stats = cr::restore(&dir, &RestoreOptions::default())
            .with_context(|| format!("native restore from {}", dir.display()))?;
        Ok((stats, t0.elapsed()))
    })
    .await
}

/// Sends the program on 127.0.0.1:`port` one request and returns its answer (the page sample
/// sum): a refused connection (not listening yet) is tried again every millisecond, until
/// `limit`.
fn ask(port: u16, limit: Duration) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(limit))?;
                conn.write_all(b"?")
                    .and_then(|()| conn.set_nodelay(true))
                    .with_context(|| format!("sending a request to port {port}"))?;
                let mut answer = String::new();
                conn.read_to_string(&mut answer)
                    .with_context(|| format!("reading the answer on port {port}"))?;
                return answer.trim().parse().with_context(|| {
                    format!("the program on port {port} answered {answer:?}, not a number")
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && t0.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to 127.0.0.1:{port}"));
            }
        }
    }
}

/// An eager restore from `dir`, then the program asked on `port`: the restore's duration,
/// the time from its start to the first response, and the response.
async fn eager_first_response(
    dir: &Path,
    port: u16,
    limit: Duration,
) -> Result<(Duration, Duration, u64)> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let t0 = Instant::now();
        cr::restore(&dir, &RestoreOptions::default())
            .with_context(|| format!("native restore from {}", dir.display()))?;
        let restored = t0.elapsed();
        let answer = ask(port, limit).context("the eagerly restored program's first response")?;
        Ok((restored, t0.elapsed(), answer))
    })
    .await
}

/// A lazy restore from `dir` with `restore_options` (the blocks of `prefetch` first), the
/// program asked on `port` as soon as it runs, then the wait until its memory is all in. Times
/// run from `start` (when the restore was prepared, e.g. before its image was opened), else
/// from the call of the restore. The process is left running.
async fn lazy_first_response(
    dir: &Path,
    pid: i32,
    port: u16,
    prefetch: Vec<u64>,
    restore_options: RestoreOptions,
    start: Option<Instant>,
    limit: Duration,
) -> Result<Lazy> {
    let dir = dir.to_path_buf();
    // Off the runtime's workers: page files read in place wait on the runtime (block_on).
    blocking(move || {
        let start = start.unwrap_or_else(Instant::now);
        let options = LazyOptions {
            prefetch,
            start,
            ..Default::default()
        };
        let (_, served) = cr::restore_lazily(&dir, None, &restore_options, options)
            .with_context(|| format!("native lazy restore from {}", dir.display()))?;
        let resumed = start.elapsed();
        // The memory server stays until its memory is in, whatever the answer.
        let answer = ask(port, limit);
        let response = start.elapsed();
        let stats = served
            .wait()
            .context("lazy restore: the memory could not be served")?;
        let answer = answer.context("the lazily restored program's first response")?;
        let stats = stats
            .into_iter()
            .find(|s| s.pid == pid)
            .ok_or_else(|| anyhow!("lazy restore: no statistics for process {pid}"))?;
        Ok(Lazy {
            resumed,
            response,
            answer,
            stats,
        })
    })
    .await
}

/// A lazy restore of snapshot "first" of the repository in `repo_dir` streamed from it (see
/// [`stream_image`], staged under `stage`) with `working_set` (image addresses of process
/// `pid`) prefetched: how long the snapshot took to open, and the restore (its times from
/// before opening the snapshot).
async fn streamed_first_response(
    repo_dir: &Path,
    stage: &Path,
    pid: i32,
    port: u16,
    working_set: &[u64],
    limit: Duration,
) -> Result<(Duration, Lazy)> {
    let repo = open_repo(repo_dir)?;
    let staged = native_repo::TempDir::new_in(stage)?;
    let start = Instant::now();
    let files = stream_image(&repo, "first", staged.path(), working_set).await?;
    let opened = start.elapsed();
    let options = RestoreOptions {
        open_pages: Some(podsnap_native::engine::in_place_opener(
            staged.path(),
            files,
        )),
        ..Default::default()
    };
    let restored = lazy_first_response(
        staged.path(),
        pid,
        port,
        working_set.to_vec(),
        options,
        Some(start),
        limit,
    )
    .await?;
    Ok((opened, restored))
}

/// Snapshot `name` of `repo` as an image in the new directory `into` without fetching its
/// memory: the small files (every stream but the page files: the manifest) fetched, each page
/// file a sparse file that a background fetcher fills, read in place (a read waits only for
/// the chunks it covers, fetched ahead of the rest). The page files by path relative to
/// `into`. A read waits for its chunks as long as the lazy restore waits for a read of page
/// data. Must run inside the runtime (the fetchers run on it).
async fn stream_image(
    repo: &Repository,
    name: &str,
    into: &Path,
    working_set: &[u64],
) -> Result<ImageFiles> {
    let fetch_timeout = LazyOptions::default().read_timeout;
    let snapshot = repo.open_snapshot(name).await?;
    let streams = native_repo::native_streams(&snapshot, repo.url())?;
    std::fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut pages = Vec::new();
    for stream in streams {
        // Stream names are checked when written, but a manifest is data: never leave `into`.
        podsnap_repo::format::validate_stream_name(&stream)
            .map_err(|e| anyhow!("snapshot {name}: {e}"))?;
        let rel = stream[native_repo::NATIVE_PREFIX.len()..].to_owned();
        let path = into.join(&rel);
        if podsnap_agent::in_place::is_page_stream(snapshot.stream(&stream)?) {
            pages.push((stream, rel, path));
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        snapshot
            .read_stream_to_file(&stream, &path, &NoProgress)
            .await?;
    }
    let runs = page_runs(into)?;
    let block = LazyOptions::default().fault_block;
    let mut files = ImageFiles::new();
    for (stream, rel, path) in pages {
        let file = podsnap_agent::in_place::streamed_file(&snapshot, &stream, &path, fetch_timeout)
            .map_err(|e| anyhow!("snapshot {name}: reading {stream} in place: {e}"))?;
        if let Some(runs) = runs.get(&rel) {
            let offsets: Vec<u64> = working_set
                .iter()
                .filter_map(|&a| podsnap_native::engine::working_set::offset_of(runs, a, block))
                .collect();
            file.prefetch(&offsets, block);
        }
        files.insert(rel, Arc::new(file) as Arc<dyn ImageFile>);
    }
    anyhow::ensure!(
        !files.is_empty(),
        "snapshot {name} has no page files to read in place"
    );
    Ok(files)
}

/// The page runs of each page file of the image in `dir` (by file name), from its manifest.
fn page_runs(dir: &Path) -> Result<std::collections::BTreeMap<String, Vec<cr::image::PageRun>>> {
    let manifest = cr::image::read_manifest(dir)?;
    Ok(manifest
        .processes
        .into_iter()
        .map(|p| (p.pages.file, p.pages.runs))
        .collect())
}

/// A port of 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("finding a free port on 127.0.0.1")?
        .local_addr()?
        .port())
}

fn open_repo(dir: &Path) -> Result<Repository> {
    native_repo::open_repo(&dir.display().to_string(), None, None, 16)
}

async fn measure_native(dir: &Path, bin: &Path, size: usize) -> Result<Native> {
    let mut live = Live::default();
    let result = dir.join("result");
    let _ = std::fs::remove_file(&result);
    let image = dir.join("image");
    let repo_dir = dir.join("repo");
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&image);
    let _ = std::fs::remove_dir_all(&repo_dir);
    let port = free_port()?;
    let limit = check_limit(size);

    // 1. Cold start: until "ready" (listening), then the first response.
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .arg(size.to_string())
        .arg(&result)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id() as i32;
    live.add(pid);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading the program's output")?;
    anyhow::ensure!(
        line.trim() == "ready",
        "the benchmark program did not get ready (it said {line:?})"
    );
    let cold = t0.elapsed();
    let cold_answer = blocking(move || ask(port, limit))
        .await
        .context("the program's first response")?;
    let cold_response = t0.elapsed();

    // 2. Checkpoint into a directory, eager restore from it, its first response.
    let t0 = Instant::now();
    let stats = checkpoint(pid, &image, false).await?;
    let checkpoint_time = t0.elapsed();
    let _ = child.wait();
    live.0.retain(|p| *p != pid);
    live.add(pid);
    let (restore_time, eager_response, eager_answer) =
        eager_first_response(&image, port, limit).await?;

    // 3. Lazy restore from the same image (warm in the page cache), the PID freed first.
    live.kill(pid);
    live.add(pid);
    let lazy = lazy_first_response(
        &image,
        pid,
        port,
        Vec::new(),
        RestoreOptions::default(),
        None,
        limit,
    )
    .await?;

    // 4. Again, with the working set that restore recorded as prefetch. This process goes on.
    live.kill(pid);
    live.add(pid);
    let prefetch = lazy.stats.working_set.clone();
    let prefetched = lazy_first_response(
        &image,
        pid,
        port,
        prefetch,
        RestoreOptions::default(),
        None,
        limit,
    )
    .await?;
    std::fs::remove_dir_all(&image)?;

    // 5. Checkpoint through a fresh repository.
    let repo = open_repo(&repo_dir)?;
    let staged = native_repo::TempDir::new_in(&stage)?;
    let t0 = Instant::now();
    checkpoint(pid, staged.path(), false).await?;
    let repo_checkpoint = t0.elapsed();
    live.reap(pid);
    let stored = native_repo::store_image(&repo, "first", staged.path(), &NoProgress).await?;
    drop(staged);

    // 6. The repository's read throughput for the image.
    let t0 = Instant::now();
    let repo_read_bytes = native_repo::read_image_to_sink(&open_repo(&repo_dir)?, "first").await?;
    let repo_read = t0.elapsed();

    // 7. Restore through the repository.
    let staged = native_repo::TempDir::new_in(&stage)?;
    let fetched =
        native_repo::fetch_image(&open_repo(&repo_dir)?, "first", staged.path(), &NoProgress)
            .await?;
    live.add(pid);
    let (_, repo_restore) = restore(staged.path()).await?;
    drop(staged);

    // 7b. Lazy restore streamed from the repository, as on a node without the image: only
    // the manifest fetched, the page files read in place while they arrive. The PID freed
    // first.
    live.kill(pid);
    live.add(pid);
    let (streamed_opened, streamed) =
        streamed_first_response(&repo_dir, &stage, pid, port, &[], limit).await?;

    // 7c. The same with the working set of 3 prefetched. This process goes on.
    live.kill(pid);
    live.add(pid);
    let working_set = lazy.stats.working_set.clone();
    let (_, streamed_prefetched) =
        streamed_first_response(&repo_dir, &stage, pid, port, &working_set, limit).await?;

    // 8. A second checkpoint of the running process through the repository.
    let staged = native_repo::TempDir::new_in(&stage)?;
    checkpoint(pid, staged.path(), true).await?;
    let second = native_repo::store_image(&repo, "second", staged.path(), &NoProgress).await?;
    drop(staged);

    // 9. The memory check.
    kill(Pid::from_raw(pid), Signal::SIGUSR1).context("signalling the restored process")?;
    let verdict = wait_for_line(&result, |_| true, limit).await;
    live.reap(pid);
    let _ = std::fs::remove_dir_all(&repo_dir);
    let _ = std::fs::remove_dir_all(&stage);
    let answers = vec![
        ("cold", cold_answer),
        ("eager", eager_answer),
        ("lazy", lazy.answer),
        ("prefetch", prefetched.answer),
        ("streamed", streamed.answer),
        ("streamed+prefetch", streamed_prefetched.answer),
    ];
    Ok(Native {
        page_bytes: stats.page_bytes,
        cold,
        cold_response,
        checkpoint: checkpoint_time,
        restore: restore_time,
        eager_response,
        lazy,
        prefetched,
        streamed,
        streamed_opened,
        streamed_prefetched,
        answers,
        repo_read_bytes,
        repo_read,
        repo_checkpoint,
        repo_store: stored.elapsed,
        stored_bytes: stored.bytes,
        uploaded: stored.new_bytes,
        repo_fetch: fetched.elapsed,
        repo_restore,
        second_uploaded: second.new_bytes,
        verdict: verdict.unwrap_or_else(|| "no verdict".into()),
    })
}

/// How long the program may take to check its memory.
fn check_limit(size: usize) -> Duration {
    Duration::from_secs(30 + size as u64 / 16)
}

/// The first line of `path` that `wanted` accepts, waiting up to `limit`.
async fn wait_for_line(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
    limit: Duration,
) -> Option<String> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(str::trim)
                .find(|l| wanted(l))
        {
            return Some(line.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The program (static) straight under runsc: cold start, checkpoint, restore, first
/// response, check.
async fn measure_runsc(dir: &Path, bin: &Path, size: usize) -> Result<Runsc> {
    use podsnap_engine::{ContainerSpec, Engine, GvisorConfig, GvisorEngine, Network};
    let base = dir.join("runsc");
    let _ = std::fs::remove_dir_all(&base);
    let rootfs = base.join("rootfs");
    for sub in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy(bin, rootfs.join("bench"))?;
    let state = base.join("state");
    // The sandbox's own loopback: any port does.
    let port = free_port()?.to_string();
    let _cleanup = podsnap_engine::gvisor::SandboxCleanup(state.clone());
    let engine = GvisorEngine::new(GvisorConfig::new(state.clone())).await?;
    let spec = |id: &str| ContainerSpec {
        id: id.into(),
        rootfs: rootfs.clone(),
        args: vec![
            "/bench".into(),
            size.to_string(),
            "/tmp/result".into(),
            port.clone(),
        ],
        env: vec!["PATH=/".into()],
        cwd: "/".into(),
        user: (0, 0),
        hostname: id.into(),
        mounts: Vec::new(),
        log_file: base.join(format!("{id}.log")),
        annotations: Default::default(),
    };
    let limit = check_limit(size) * 2;
    let id = format!("bench-native-{size}-{}", std::process::id());
    let t0 = Instant::now();
    engine
        .create_sandbox(&id, &spec(&id), &Network::Loopback)
        .await?;
    wait_for_line(&base.join(format!("{id}.log")), |l| l == "ready", limit)
        .await
        .ok_or_else(|| anyhow!("the program did not get ready under runsc"))?;
    let cold = t0.elapsed();
    let image_dir = base.join("image");
    let t0 = Instant::now();
    let image = engine.checkpoint(&id, &image_dir, false).await?;
    let checkpoint = t0.elapsed();
    let image_bytes = image.files.iter().map(|(_, s)| s).sum();
    engine.delete(&id).await?;
    let restored = format!("{id}-r");
    let t0 = Instant::now();
    engine
        .restore(
            &restored,
            &spec(&restored),
            &Network::Loopback,
            &image_dir,
            &Default::default(),
        )
        .await?;
    // runsc returns before the sandbox has loaded its state (a signal sent now is lost): the
    // restore ends when the sandbox runs a command. The command is the program's client
    // (`bench ask PORT`: 0 with the answer, 10 without one), so the first time it runs ends
    // the restore, and the first time it gets an answer is the first response — which
    // includes a `runsc exec` (tens of ms).
    let ask = ["/bench".to_owned(), "ask".to_owned(), port.clone()];
    let mut restore = None;
    let (response, answer) = loop {
        if let Ok(out) = engine.exec(&restored, &ask, &[]).await {
            if out.exit_code == 0 || out.exit_code == 10 {
                restore.get_or_insert(t0.elapsed());
            }
            if out.exit_code == 0 {
                let text = String::from_utf8_lossy(&out.stdout);
                let answer = text.trim().parse().with_context(|| {
                    format!("the program under runsc answered {text:?}, not a number")
                })?;
                break (t0.elapsed(), answer);
            }
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "the restored sandbox did not {} within {} s",
            if restore.is_some() {
                "answer a request"
            } else {
                "run a command"
            },
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let restore = restore.unwrap_or(response);
    // Not `runsc kill --all` (the engine's kill): a restored sandbox's processes still carry
    // the old container's id, so --all finds none; the container's init process is the program.
    let signalled = tokio::process::Command::new("runsc")
        .arg(format!("--root={}", state.join("runsc").display()))
        .args(["kill", &restored, &(Signal::SIGUSR1 as i32).to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running runsc kill")?;
    anyhow::ensure!(
        signalled.status.success(),
        "runsc kill failed: {}",
        String::from_utf8_lossy(&signalled.stderr).trim()
    );
    // Its exit code is the verdict (its output stays inside the sandbox).
    let verdict = match tokio::time::timeout(limit, engine.wait(&restored)).await {
        Ok(Ok(0)) => "ok".to_owned(),
        Ok(Ok(code)) => format!("bad (exit code {code})"),
        Ok(Err(e)) => format!("no verdict ({e})"),
        Err(_) => "no verdict (timed out)".to_owned(),
    };
    engine.delete(&restored).await?;
    let _ = std::fs::remove_dir_all(&image_dir);
    Ok(Runsc {
        cold,
        checkpoint,
        image_bytes,
        restore,
        response,
        answer,
        verdict,
    })
}

fn gbs(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e9 / time.as_secs_f64().max(1e-9)
}

fn secs(time: Duration) -> String {
    format!("{:.2} s", time.as_secs_f64())
}

fn ms(time: Duration) -> String {
    format!("{:.1} ms", time.as_secs_f64() * 1e3)
}

fn print_table(sizes: &[usize], rows: &Rows, runsc_version: &str, dir: &Path) {
    println!(
        "podsnap bench native: a C program with N MiB of touched memory (mixed pattern), native \
         engine vs the snapshot repository vs runsc{}; {} CPUs; images, staging and a local \
         repository in {} ({}; checkpoints are synced to it); GB/s = 10^9 bytes of page data \
         per second; first response = a one-byte request over TCP that the program answers \
         by reading a byte of each of {SAMPLE_PAGES} pseudo-random pages of its memory",
        if runsc_version.is_empty() {
            String::new()
        } else {
            format!(" ({runsc_version})")
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        dir.display(),
        fs_type(dir)
    );
    let mut table: Vec<(&str, Vec<String>)> = Vec::new();
    let mut row = |label: &'static str,
                   cell: &dyn Fn(&Native, &Result<Runsc, String>) -> String| {
        table.push((label, rows.iter().map(|(n, r)| cell(n, r)).collect()));
    };
    row("memory (page data)", &|n, _| {
        format!("{:.0} MiB", mib(n.page_bytes))
    });
    row("cold start (exec to ready)", &|n, _| secs(n.cold));
    row("cold start to first response", &|n, _| ms(n.cold_response));
    row("native checkpoint", &|n, _| {
        format!(
            "{} {:.2} GB/s",
            secs(n.checkpoint),
            gbs(n.page_bytes, n.checkpoint)
        )
    });
    row("native eager restore", &|n, _| {
        format!(
            "{} {:.2} GB/s",
            secs(n.restore),
            gbs(n.page_bytes, n.restore)
        )
    });
    row("eager restore to first response", &|n, _| {
        ms(n.eager_response)
    });
    row("lazy restore to first response", &|n, _| {
        format!(
            "{} (running after {})",
            ms(n.lazy.response),
            ms(n.lazy.resumed)
        )
    });
    row("  lazy demand faults (wait p50/p99)", &|n, _| {
        faults(&n.lazy.stats)
    });
    row(
        "  lazy background fill",
        &|n, _| match n.lazy.stats.fully_resident {
            Some(t) => format!("{:.2} GB/s, all in after {}", gbs(n.page_bytes, t), secs(t)),
            None => "the process ended first".into(),
        },
    );
    row("prefetch restore to first response", &|n, _| {
        format!(
            "{} (running after {})",
            ms(n.prefetched.response),
            ms(n.prefetched.resumed)
        )
    });
    row("  prefetch demand faults (wait p50/p99)", &|n, _| {
        faults(&n.prefetched.stats)
    });
    row("  prefetch faults fewer than lazy", &|n, _| {
        format!("{:.1}%", fewer_faults(n))
    });
    row(
        "lazy restore streamed from the repository → first response",
        &|n, _| ms(n.streamed.response),
    );
    row("  streamed: running after", &|n, _| {
        format!(
            "{} (image open after {})",
            ms(n.streamed.resumed),
            ms(n.streamed_opened)
        )
    });
    row("  streamed: demand faults (wait p50/p99)", &|n, _| {
        faults(&n.streamed.stats)
    });
    row(
        "  streamed: all in after",
        &|n, _| match n.streamed.stats.fully_resident {
            Some(t) => secs(t),
            None => "the process ended first".into(),
        },
    );
    row(
        "  streamed: fill (vs repository read)",
        &|n, _| match n.streamed.stats.fully_resident {
            Some(t) => format!(
                "{:.2} GB/s (repository read {:.2} GB/s)",
                gbs(n.page_bytes, t),
                gbs(n.repo_read_bytes, n.repo_read)
            ),
            None => "the process ended first".into(),
        },
    );
    row(
        "streamed, with the working set prefetched → first response",
        &|n, _| {
            format!(
                "{} (running after {})",
                ms(n.streamed_prefetched.response),
                ms(n.streamed_prefetched.resumed)
            )
        },
    );
    row(
        "  streamed+prefetch: demand faults (wait p50/p99)",
        &|n, _| faults(&n.streamed_prefetched.stats),
    );
    row("repository read (streams to a sink)", &|n, _| {
        format!(
            "{} {:.2} GB/s",
            secs(n.repo_read),
            gbs(n.repo_read_bytes, n.repo_read)
        )
    });
    row("restore / repository read", &|n, _| {
        format!("{:.1}%", restore_share(n))
    });
    row("checkpoint through the repository", &|n, _| {
        format!(
            "{} (ckpt {:.2} + store {:.2})",
            secs(n.repo_checkpoint + n.repo_store),
            n.repo_checkpoint.as_secs_f64(),
            n.repo_store.as_secs_f64()
        )
    });
    row("  uploaded", &|n, _| {
        format!(
            "{:.1} MiB ({:.0}%)",
            mib(n.uploaded),
            100.0 * n.uploaded as f64 / n.stored_bytes.max(1) as f64
        )
    });
    row("restore through the repository", &|n, _| {
        format!(
            "{} (fetch {:.2} + restore {:.2})",
            secs(n.repo_fetch + n.repo_restore),
            n.repo_fetch.as_secs_f64(),
            n.repo_restore.as_secs_f64()
        )
    });
    row("2nd checkpoint uploaded", &|n, _| {
        format!(
            "{:.2} MiB ({:.2}%)",
            mib(n.second_uploaded),
            100.0 * n.second_uploaded as f64 / n.stored_bytes.max(1) as f64
        )
    });
    row("restored memory check", &|n, _| n.verdict.clone());
    let runsc = |f: fn(&Runsc, &Native) -> String| {
        move |n: &Native, r: &Result<Runsc, String>| match r {
            Ok(r) => f(r, n),
            Err(e) => e.clone(),
        }
    };
    row("runsc cold start", &runsc(|r, _| secs(r.cold)));
    row(
        "runsc checkpoint",
        &runsc(|r, n| {
            format!(
                "{} {:.2} GB/s, image {:.0} MiB",
                secs(r.checkpoint),
                gbs(n.page_bytes, r.checkpoint),
                mib(r.image_bytes)
            )
        }),
    );
    row(
        "runsc restore",
        &runsc(|r, n| {
            format!(
                "{} {:.2} GB/s",
                secs(r.restore),
                gbs(n.page_bytes, r.restore)
            )
        }),
    );
    row(
        "runsc restore to first response",
        &runsc(|r, _| format!("{} (runsc exec)", ms(r.response))),
    );
    row("first responses agree (page sample sums)", &|n, r| {
        agree(n, r.as_ref().ok())
    });
    row(
        "runsc restored memory check",
        &runsc(|r, _| r.verdict.clone()),
    );

    // Widths in characters (labels and cells hold → and µ), as the padding counts them.
    let label_width = table
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..sizes.len())
        .map(|i| {
            table
                .iter()
                .map(|(_, cells)| cells[i].chars().count())
                .chain([format!("{} MiB", sizes[i]).len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut header = format!("{:<label_width$}", "size");
    for (size, w) in sizes.iter().zip(&widths) {
        header.push_str(&format!("   {:>w$}", format!("{size} MiB")));
    }
    println!("{header}");
    for (label, cells) in &table {
        let mut line = format!("{label:<label_width$}");
        for (cell, w) in cells.iter().zip(&widths) {
            line.push_str(&format!("   {cell:>w$}"));
        }
        println!("{line}");
    }
    println!();
    let checkpoint_goal: Vec<String> = sizes
        .iter()
        .zip(rows)
        .map(|(size, (n, _))| {
            let got = gbs(n.page_bytes, n.checkpoint);
            format!(
                "{size} MiB {got:.2} GB/s {}",
                met(got >= CHECKPOINT_GOAL_GBS)
            )
        })
        .collect();
    println!(
        "goal: native checkpoint >= {CHECKPOINT_GOAL_GBS} GB/s: {}",
        checkpoint_goal.join("; ")
    );
    let restore_goal: Vec<String> = sizes
        .iter()
        .zip(rows)
        .map(|(size, (n, _))| {
            let share = restore_share(n);
            format!(
                "{size} MiB {share:.1}% {}",
                met(share >= RESTORE_GOAL_PERCENT)
            )
        })
        .collect();
    println!(
        "goal: native eager restore >= {RESTORE_GOAL_PERCENT}% of the repository's read throughput: {}",
        restore_goal.join("; ")
    );
    let each = |f: &dyn Fn(&Native) -> (String, bool)| -> String {
        sizes
            .iter()
            .zip(rows)
            .map(|(size, (n, _))| {
                let (got, ok) = f(n);
                format!("{size} MiB {got} {}", met(ok))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!(
        "goal: lazy restore first response within {} ms of the restore starting: {}",
        FIRST_RESPONSE_GOAL.as_millis(),
        each(&|n| (ms(n.lazy.response), n.lazy.response <= FIRST_RESPONSE_GOAL))
    );
    println!(
        "goal: lazy restore streamed from the repository, first response within {} ms of its \
         start (which includes opening the snapshot and fetching the manifest), whatever the \
         size: {}",
        FIRST_RESPONSE_GOAL.as_millis(),
        each(&|n| (
            format!(
                "{} ({} with the working set prefetched)",
                ms(n.streamed.response),
                ms(n.streamed_prefetched.response)
            ),
            n.streamed_prefetched.response <= FIRST_RESPONSE_GOAL
        ))
    );
    println!(
        "goal: lazy background fill >= {FILL_GOAL_GBS} GB/s from a warm node cache: {}",
        each(&|n| match n.lazy.stats.fully_resident {
            Some(t) => {
                let got = gbs(n.page_bytes, t);
                (format!("{got:.2} GB/s"), got >= FILL_GOAL_GBS)
            }
            None => ("(ended first)".into(), false),
        })
    );
    println!(
        "goal: prefetch of the recorded working set >= {PREFETCH_GOAL_PERCENT}% fewer demand faults: {}",
        each(&|n| {
            let fewer = fewer_faults(n);
            (
                format!(
                    "{} -> {} ({fewer:.1}% fewer)",
                    n.lazy.stats.demand_faults, n.prefetched.stats.demand_faults
                ),
                fewer >= PREFETCH_GOAL_PERCENT,
            )
        })
    );
}

/// Eager restore throughput as a share of the repository's read throughput, in %.
fn restore_share(n: &Native) -> f64 {
    100.0 * gbs(n.page_bytes, n.restore) / gbs(n.repo_read_bytes, n.repo_read).max(1e-12)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// A lazy restore's demand faults and the wait for each.
fn faults(s: &LazyStats) -> String {
    format!(
        "{} ({} / {}), {:.1} MiB",
        s.demand_faults,
        short(s.fault_p50),
        short(s.fault_p99),
        mib(s.demand_bytes)
    )
}

/// How many % fewer demand faults the prefetched lazy restore took than the plain one.
fn fewer_faults(n: &Native) -> f64 {
    let (plain, prefetched) = (n.lazy.stats.demand_faults, n.prefetched.stats.demand_faults);
    if plain == 0 {
        return if prefetched == 0 { 100.0 } else { 0.0 };
    }
    100.0 * (plain as f64 - prefetched as f64) / plain as f64
}

/// Whether every first response (native, and runsc's when it ran) carried the same sum.
fn agree(n: &Native, runsc: Option<&Runsc>) -> String {
    let mut answers = n.answers.clone();
    if let Some(r) = runsc {
        answers.push(("runsc", r.answer));
    }
    if answers.iter().all(|(_, a)| *a == answers[0].1) {
        format!("yes ({} sums {})", answers.len(), answers[0].1)
    } else {
        let each: Vec<String> = answers.iter().map(|(l, a)| format!("{l} {a}")).collect();
        format!("NO: {}", each.join(", "))
    }
}

/// A short duration: µs below a millisecond, else ms.
fn short(time: Duration) -> String {
    if time < Duration::from_millis(1) {
        format!("{} µs", time.as_micros())
    } else {
        format!("{:.1} ms", time.as_secs_f64() * 1e3)
    }
}
