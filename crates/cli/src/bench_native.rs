//! `podsnap bench native`: the native checkpoint/restore engine on a program with a given
//! amount of touched memory, beside the snapshot repository's read throughput and runsc's
//! checkpoint and restore of the same program, in one run, figures side by side.
//!
//! For each size the benchmark compiles (once) a small C program ([`PROGRAM`]) that fills that
//! many MiB with a mixed pattern (random, pointer-like, text-like, counters and sparse pages),
//! says "ready", and on SIGUSR1 checks every word and writes its verdict. Then:
//!
//! 1. cold start: from exec until "ready";
//! 2. native checkpoint into a directory (the process killed), and native eager restore from it;
//! 3. the restored process checkpointed through a fresh local repository (checkpoint into a
//!    staging directory, then every file stored, page files in page-aligned CDC chunks);
//! 4. the repository's read throughput for that image: every stream read (fetched, verified,
//!    decompressed) to nowhere through a fresh handle;
//! 5. a restore through the repository (fetch into a staging directory, then restore);
//! 6. a second checkpoint of that process through the repository (left running): its upload;
//! 7. the process asked to check its memory;
//! 8. the same program, compiled statically, under runsc: cold start, checkpoint, restore and
//!    the memory check.
//!
//! Nothing is asserted on time: the table shows the figures and the goals beside them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};
use podsnap_repo::{NoProgress, Repository};

use crate::native_repo::{self, mib};

/// Goal: native checkpoint throughput, GB/s of page data.
const CHECKPOINT_GOAL_GBS: f64 = 1.0;
/// Goal: eager restore throughput as a share of the repository's read throughput, in %.
const RESTORE_GOAL_PERCENT: f64 = 80.0;

/// The workload: `bench MIB RESULT` fills MIB MiB, prints "ready", and on SIGUSR1 checks every
/// word and writes "ok" (or "bad page N") to RESULT (`-`: standard output), then exits with 0
/// (ok) or 1.
pub const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: bench MIB RESULT\n"); return 2; }
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
    printf("ready\n");
    fflush(stdout);
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    while (!check_requested) sigsuspend(&old);
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
    checkpoint: Duration,
    restore: Duration,
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

/// runsc's figures for one size.
struct Runsc {
    cold: Duration,
    checkpoint: Duration,
    image_bytes: u64,
    restore: Duration,
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
            .args(["-O2", "-Wall", "-o"])
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

    // 1. Cold start.
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .arg(size.to_string())
        .arg(&result)
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

    // 2. Checkpoint into a directory, eager restore from it.
    let t0 = Instant::now();
    let stats = checkpoint(pid, &image, false).await?;
    let checkpoint_time = t0.elapsed();
    let _ = child.wait();
    live.0.retain(|p| *p != pid);
    let (_, restore_time) = restore(&image).await?;
    live.add(pid);
    std::fs::remove_dir_all(&image)?;

    // 3. Checkpoint through a fresh repository.
    let repo = open_repo(&repo_dir)?;
    let staged = native_repo::TempDir::new_in(&stage)?;
    let t0 = Instant::now();
    checkpoint(pid, staged.path(), false).await?;
    let repo_checkpoint = t0.elapsed();
    live.reap(pid);
    let stored = native_repo::store_image(&repo, "first", staged.path(), &NoProgress).await?;
    drop(staged);

    // 4. The repository's read throughput for the image.
    let t0 = Instant::now();
    let repo_read_bytes = native_repo::read_image_to_sink(&open_repo(&repo_dir)?, "first").await?;
    let repo_read = t0.elapsed();

    // 5. Restore through the repository.
    let staged = native_repo::TempDir::new_in(&stage)?;
    let fetched =
        native_repo::fetch_image(&open_repo(&repo_dir)?, "first", staged.path(), &NoProgress)
            .await?;
    let (_, repo_restore) = restore(staged.path()).await?;
    live.add(pid);
    drop(staged);

    // 6. A second checkpoint of the running process through the repository.
    let staged = native_repo::TempDir::new_in(&stage)?;
    checkpoint(pid, staged.path(), true).await?;
    let second = native_repo::store_image(&repo, "second", staged.path(), &NoProgress).await?;
    drop(staged);

    // 7. The memory check.
    kill(Pid::from_raw(pid), Signal::SIGUSR1).context("signalling the restored process")?;
    let verdict = wait_for_line(&result, |_| true, check_limit(size)).await;
    live.reap(pid);
    let _ = std::fs::remove_dir_all(&repo_dir);
    let _ = std::fs::remove_dir_all(&stage);
    Ok(Native {
        page_bytes: stats.page_bytes,
        cold,
        checkpoint: checkpoint_time,
        restore: restore_time,
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

/// The program (static) straight under runsc: cold start, checkpoint, restore, check.
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
    let _cleanup = podsnap_engine::gvisor::SandboxCleanup(state.clone());
    let engine = GvisorEngine::new(GvisorConfig::new(state.clone())).await?;
    let spec = |id: &str| ContainerSpec {
        id: id.into(),
        rootfs: rootfs.clone(),
        args: vec!["/bench".into(), size.to_string(), "/tmp/result".into()],
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
        .restore(&restored, &spec(&restored), &Network::Loopback, &image_dir)
        .await?;
    // runsc returns before the sandbox has loaded its state (a signal sent now is lost): the
    // restore ends when the sandbox runs a command (the program without arguments exits 2).
    loop {
        if let Ok(out) = engine.exec(&restored, &["/bench".to_owned()], &[]).await
            && out.exit_code == 2
        {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "the restored sandbox did not run a command within {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restore = t0.elapsed();
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
        verdict,
    })
}

fn gbs(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e9 / time.as_secs_f64().max(1e-9)
}

fn secs(time: Duration) -> String {
    format!("{:.2} s", time.as_secs_f64())
}

fn print_table(sizes: &[usize], rows: &Rows, runsc_version: &str, dir: &Path) {
    println!(
        "podsnap bench native: a C program with N MiB of touched memory (mixed pattern), native \
         engine vs the snapshot repository vs runsc{}; {} CPUs; images, staging and a local \
         repository in {} ({}; checkpoints are synced to it); GB/s = 10^9 bytes of page data \
         per second",
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
        "runsc restored memory check",
        &runsc(|r, _| r.verdict.clone()),
    );

    let label_width = table.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..sizes.len())
        .map(|i| {
            table
                .iter()
                .map(|(_, cells)| cells[i].len())
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
}

/// Eager restore throughput as a share of the repository's read throughput, in %.
fn restore_share(n: &Native) -> f64 {
    100.0 * gbs(n.page_bytes, n.restore) / gbs(n.repo_read_bytes, n.repo_read).max(1e-12)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}
