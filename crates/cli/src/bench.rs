//! `podsnap bench repo`: the snapshot repository against a plain file copy, on this machine,
//! in one run, figures side by side.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use podsnap_repo::{Chunking, NoProgress, RepoOptions, RepoStats, Repository, SnapshotMetadata};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Write and read throughput of the repository (local backend) for incompressible data and
    /// for data shaped like process memory, against a plain copy of the same bytes; dedup of a
    /// second snapshot; reads through a warm node cache; zstd levels.
    Repo {
        /// Size of each data set in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Working directory (needs about 5x the size free); a temporary one when absent.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The demo workload under the gvisor engine: cold start to first response against
    /// checkpoint and restore to first response, for several state sizes. Run from the
    /// repository root after `cargo build --release` (it uses scripts/demo-rootfs.sh).
    Gvisor {
        /// State sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "256,1024")]
        sizes: Vec<usize>,
        /// The demo server binary.
        #[arg(long, default_value = "target/release/podsnap-demo-server")]
        demo_binary: PathBuf,
    },
    /// The demo workload through a private podsnap agent against raw runsc: cold start,
    /// checkpoint on a manual trigger (time, bytes stored and uploaded), the upload of a second
    /// snapshot of the unchanged Pod, and restored replicas with a cold and a warm node cache,
    /// for several state sizes. Run from the repository root after
    /// `cargo build --release --bin podsnap --bin podsnap-demo-server`.
    Snapshot {
        /// State sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
        sizes: Vec<usize>,
        /// The demo server binary.
        #[arg(long, default_value = "target/release/podsnap-demo-server")]
        demo_binary: PathBuf,
        /// Working directory for the agent's state, the image store and the snapshot
        /// repository (needs about 4x the largest state free); a temporary one, removed at the
        /// end, when absent. A given one keeps the agent's log.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Passes the demo server makes over its state before it serves (its start-up work);
        /// the server's default when absent.
        #[arg(long)]
        passes: Option<u32>,
    },
    /// The native checkpoint/restore engine on a C program with N MiB of touched memory (built
    /// with `cc` here): cold start, checkpoint and eager restore (time, GB/s), time to first
    /// response after cold start, eager, lazy and prefetched lazy restores (demand faults with
    /// their wait, background fill), the snapshot repository's read throughput for the image,
    /// checkpoint and restore through the repository, lazy restores streamed from it (with
    /// and without the working set prefetched), a second checkpoint's upload, and runsc's
    /// checkpoint and restore of the same program, side by side with the goals. As root.
    Native {
        /// Memory sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
        sizes: Vec<usize>,
        /// Working directory (needs about 3x the largest size free); a temporary one under
        /// /var/tmp, removed at the end, when absent.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

pub(crate) const MIB: f64 = 1024.0 * 1024.0;

struct Row {
    data: &'static str,
    operation: &'static str,
    podsnap: f64,
    baseline_name: &'static str,
    baseline: f64,
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Repo { size_mib, dir } => bench_repo(size_mib, dir).await,
        BenchCommand::Gvisor { sizes, demo_binary } => bench_gvisor(&sizes, &demo_binary).await,
        BenchCommand::Snapshot {
            sizes,
            demo_binary,
            work_dir,
            passes,
        } => crate::bench_snapshot::run(&sizes, &demo_binary, work_dir, passes).await,
        BenchCommand::Native { sizes, work_dir } => {
            crate::bench_native::run(&sizes, work_dir).await
        }
    }
}

/// Fast deterministic pseudo-random words.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes `pages` pages shaped like a process's memory, in runs of 1 to 256 pages of one kind:
/// 45% zero pages, 20% copies of a few library code pages, 25% heap (pointers and small
/// integers: words whose high bytes are mostly zero), 10% random (compressed or encrypted
/// data).
fn write_memory_like(path: &Path, pages: u64, seed: u64) -> Result<()> {
    let mut rng = XorShift(seed | 1);
    let library: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..512).flat_map(|_| rng.next().to_le_bytes()).collect())
        .collect();
    let mut out = BufWriter::with_capacity(8 << 20, File::create(path)?);
    let zero = vec![0u8; 4096];
    let mut page = vec![0u8; 4096];
    let mut kind = 0;
    let mut run = 0;
    for _ in 0..pages {
        if run == 0 {
            kind = rng.next() % 100;
            run = 1 + rng.next() % 256;
        }
        run -= 1;
        match kind {
            0..45 => out.write_all(&zero)?,
            45..65 => out.write_all(&library[(rng.next() % 64) as usize])?,
            65..90 => {
                for word in page.chunks_exact_mut(8) {
                    let value = rng.next()
                        & 0x0000_7fff_ffff_fff8
                        & if rng.next().is_multiple_of(2) {
                            0xffff
                        } else {
                            u64::MAX
                        };
                    word.copy_from_slice(&value.to_le_bytes());
                }
                out.write_all(&page)?;
            }
            _ => {
                for word in page.chunks_exact_mut(8) {
                    word.copy_from_slice(&rng.next().to_le_bytes());
                }
                out.write_all(&page)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_random(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let mut rng = XorShift(seed | 1);
    let mut out = BufWriter::with_capacity(8 << 20, File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..bytes / (1 << 20) {
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(())
}

fn read_to_sink(path: &Path) -> Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn rate(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / MIB / started.elapsed().as_secs_f64().max(1e-9)
}

fn open_repo(dir: &Path, cache: Option<PathBuf>) -> Result<Repository> {
    let location =
        podsnap_repo::open_url(&format!("file://{}", dir.display()), &Default::default())?;
    let options = RepoOptions {
        cache: cache.map(|c| (c, 64 << 30)),
        ..RepoOptions::default()
    };
    Ok(Repository::new(location, None, options)?)
}

async fn put(repo: &Repository, id: &str, path: &Path) -> Result<podsnap_repo::WriteStats> {
    let mut writer = repo.begin_snapshot(id, SnapshotMetadata::default()).await?;
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let stats = writer
        .add_stream(
            "memory/pages",
            Chunking::MEMORY,
            file,
            Some(size),
            &NoProgress,
        )
        .await?;
    writer.commit().await?;
    Ok(stats)
}

async fn bench_repo(size_mib: u64, dir: Option<PathBuf>) -> Result<()> {
    let temp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let bytes = size_mib << 20;
    let random = dir.join("random.bin");
    let memory = dir.join("memory.bin");
    eprintln!(
        "generating {size_mib} MiB of incompressible data and {size_mib} MiB of memory-like data in {}",
        dir.display()
    );
    write_random(&random, bytes, 7)?;
    write_memory_like(&memory, bytes / 4096, 11)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (data, path, id) in [
        ("incompressible", &random, "random"),
        ("memory-like", &memory, "memory"),
    ] {
        // Warm the page cache so both sides read from memory.
        read_to_sink(path)?;
        let copy = dir.join("copy.bin");
        let started = Instant::now();
        std::fs::copy(path, &copy)?;
        File::open(&copy)?.sync_data()?;
        let copy_rate = rate(bytes, started);
        std::fs::remove_file(&copy)?;
        let started = Instant::now();
        read_to_sink(path)?;
        let read_rate = rate(bytes, started);

        let repo_dir = dir.join(format!("repo-{id}"));
        let _ = std::fs::remove_dir_all(&repo_dir);
        let repo = open_repo(&repo_dir, None)?;
        let started = Instant::now();
        let first = put(&repo, id, path).await?;
        let write_rate = rate(bytes, started);
        rows.push(Row {
            data,
            operation: "write (chunk, hash, compress, store)",
            podsnap: write_rate,
            baseline_name: "cp file",
            baseline: copy_rate,
        });

        let repo = open_repo(&repo_dir, None)?;
        let snapshot = repo.open_snapshot(id).await?;
        let read = timed_read(&snapshot, bytes).await?;
        rows.push(Row {
            data,
            operation: "read + verify + decompress",
            podsnap: read,
            baseline_name: "read file",
            baseline: read_rate,
        });

        let out = dir.join("restored.bin");
        let started = Instant::now();
        snapshot
            .read_stream_to_file("memory/pages", &out, &NoProgress)
            .await?;
        rows.push(Row {
            data,
            operation: "restore to a file",
            podsnap: rate(bytes, started),
            baseline_name: "cp file",
            baseline: copy_rate,
        });
        std::fs::remove_file(&out)?;

        let cached = open_repo(&repo_dir, Some(dir.join(format!("cache-{id}"))))?;
        let snapshot = cached.open_snapshot(id).await?;
        timed_read(&snapshot, bytes).await?;
        let gets = RepoStats::get(&cached.stats().store_gets);
        let warm = timed_read(&snapshot, bytes).await?;
        rows.push(Row {
            data,
            operation: "read through a warm node cache",
            podsnap: warm,
            baseline_name: "read file",
            baseline: read_rate,
        });
        let refetched = RepoStats::get(&cached.stats().store_gets) - gets;

        let second = put(&open_repo(&repo_dir, None)?, &format!("{id}-again"), path).await?;
        notes.push(format!(
            "{data}: stored {:.1} MiB for {size_mib} MiB ({:.1}%; {} chunks, {} zero); a second snapshot of the same bytes stored {} bytes ({:.3}%); the warm-cache read fetched {refetched} chunks from storage",
            first.new_bytes as f64 / MIB,
            100.0 * first.new_bytes as f64 / bytes as f64,
            first.chunks,
            first.zero_chunks,
            second.new_bytes,
            100.0 * second.new_bytes as f64 / bytes as f64,
        ));
        let _ = std::fs::remove_dir_all(&repo_dir);
        let _ = std::fs::remove_dir_all(dir.join(format!("cache-{id}")));
    }
    let levels = zstd_levels(&memory)?;
    println!(
        "podsnap repository benchmark: {size_mib} MiB per data set, local backend, {} CPUs, warm page cache",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<15} {:<38} {:>12} {:>12} {:<10} {:>7}",
        "data", "operation", "podsnap MB/s", "base MB/s", "baseline", "ratio"
    );
    for r in &rows {
        println!(
            "{:<15} {:<38} {:>12.0} {:>12.0} {:<10} {:>7.2}",
            r.data,
            r.operation,
            r.podsnap,
            r.baseline,
            r.baseline_name,
            r.podsnap / r.baseline
        );
    }
    println!();
    for note in notes {
        println!("{note}");
    }
    println!();
    println!("zstd on 256 MiB of memory-like data, one core (non-zero pages only):");
    println!(
        "{:<7} {:>8} {:>16} {:>18}",
        "level", "ratio", "compress MB/s", "decompress MB/s"
    );
    for (level, ratio, c, d) in levels {
        println!("{level:<7} {ratio:>8.2} {c:>16.0} {d:>18.0}");
    }
    std::fs::remove_file(&random)?;
    std::fs::remove_file(&memory)?;
    Ok(())
}

/// Reads stream `memory/pages` to nowhere; MiB/s.
async fn timed_read(snapshot: &podsnap_repo::Snapshot, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    snapshot
        .read_stream_to_writer("memory/pages", &mut std::io::sink(), &NoProgress)
        .await?;
    Ok(rate(bytes, started))
}

pub(crate) fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("podsnap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Compression ratio and speed of zstd levels on 1 MiB chunks of memory-like data.
fn zstd_levels(memory: &Path) -> Result<Vec<(i32, f64, f64, f64)>> {
    let mut data = vec![0u8; 256 << 20];
    let n = File::open(memory)?.read(&mut data)?;
    data.truncate(n);
    let chunks: Vec<&[u8]> = data
        .chunks(1 << 20)
        .filter(|c| c.iter().any(|b| *b != 0))
        .collect();
    let plain: usize = chunks.iter().map(|c| c.len()).sum();
    let mut out = Vec::new();
    for level in [1, 3, 6] {
        let started = Instant::now();
        let compressed: Vec<Vec<u8>> = chunks
            .iter()
            .map(|c| zstd_compress(c, level))
            .collect::<Result<_>>()?;
        let c_rate = rate(plain as u64, started);
        let stored: usize = compressed.iter().map(Vec::len).sum();
        let started = Instant::now();
        for (c, original) in compressed.iter().zip(&chunks) {
            zstd_decompress(c, original.len())?;
        }
        out.push((
            level,
            plain as f64 / stored as f64,
            c_rate,
            rate(plain as u64, started),
        ));
    }
    Ok(out)
}

fn zstd_compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    Ok(zstd::bulk::compress(data, level)?)
}

fn zstd_decompress(data: &[u8], len: usize) -> Result<Vec<u8>> {
    Ok(zstd::bulk::decompress(data, len)?)
}

/// Builds the demo image's root file system in `out` with scripts/demo-rootfs.sh (run from the
/// repository root).
pub(crate) fn demo_rootfs(demo_binary: &Path, out: &Path) -> Result<()> {
    anyhow::ensure!(
        demo_binary.is_file(),
        "{} does not exist; build it first: cargo build --release --bin podsnap-demo-server",
        demo_binary.display()
    );
    let status = std::process::Command::new("bash")
        .arg("scripts/demo-rootfs.sh")
        .arg(demo_binary)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running scripts/demo-rootfs.sh (run the benchmark from the repository root)")?;
    anyhow::ensure!(
        status.success(),
        "scripts/demo-rootfs.sh failed; build the demo first: cargo build --release"
    );
    Ok(())
}

/// The demo workload straight under runsc at one state size: the baseline of podsnap's figures.
pub(crate) struct RawRunsc {
    /// State size in MiB.
    pub mib: usize,
    /// `runsc create` + `start` to the first response.
    pub cold: Duration,
    /// `runsc checkpoint` (the sandbox stops).
    pub checkpoint: Duration,
    /// Size of the checkpoint image files.
    pub image_bytes: u64,
    /// `runsc restore` from the local image files to the first response.
    pub restore: Duration,
}

/// Runs the demo server (`rootfs` from [`demo_rootfs`]) straight under runsc for each size,
/// engine state and images under `dir`: cold start, checkpoint and restore, each to the first
/// response (`wget` run with `runsc exec` inside the sandbox). Returns runsc's version and the
/// figures (the restore: the median of `restores` restores of the same image); removes its
/// sandboxes whatever happens.
pub(crate) async fn raw_runsc(
    rootfs: &Path,
    dir: &Path,
    sizes: &[usize],
    passes: Option<u32>,
    restores: usize,
) -> Result<(String, Vec<RawRunsc>)> {
    use podsnap_engine::{ContainerSpec, Engine, GvisorConfig, GvisorEngine, Network};
    let _cleanup = podsnap_engine::gvisor::SandboxCleanup(dir.join("state"));
    let engine = GvisorEngine::new(GvisorConfig::new(dir.join("state"))).await?;
    let spec = |id: &str, mib: usize| ContainerSpec {
        id: id.into(),
        rootfs: rootfs.to_path_buf(),
        args: demo_args(mib, passes),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: (0, 0),
        hostname: id.into(),
        mounts: Vec::new(),
        log_file: dir.join(format!("{id}.log")),
        annotations: Default::default(),
    };
    let first_response = |id: String| {
        let engine = engine.clone();
        async move {
            let args = vec![
                "/bin/wget".to_string(),
                "-qO-".into(),
                "http://127.0.0.1:8080/".into(),
            ];
            let deadline = Instant::now() + FIRST_RESPONSE_LIMIT;
            loop {
                if let Ok(out) = engine.exec(&id, &args, &[]).await
                    && out.exit_code == 0
                {
                    return Ok(());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the demo server in sandbox {id} did not answer within {} s",
                    FIRST_RESPONSE_LIMIT.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut rows = Vec::new();
    for &mib in sizes {
        let id = format!("bench-{mib}-{}", std::process::id());
        eprintln!("[{mib} MiB] raw runsc: cold start, checkpoint, restore");
        let started = Instant::now();
        engine
            .create_sandbox(&id, &spec(&id, mib), &Network::Loopback)
            .await?;
        first_response(id.clone()).await?;
        let cold = started.elapsed();
        let image_dir = dir.join(format!("image-{mib}"));
        let started = Instant::now();
        let image = engine.checkpoint(&id, &image_dir, false).await?;
        let checkpoint = started.elapsed();
        let image_bytes: u64 = image.files.iter().map(|(_, s)| s).sum();
        engine.delete(&id).await?;
        let mut samples = Vec::new();
        for n in 0..restores.max(1) {
            let restored = format!("{id}-r{n}");
            let started = Instant::now();
            engine
                .restore(
                    &restored,
                    &spec(&restored, mib),
                    &Network::Loopback,
                    &image_dir,
                    &Default::default(),
                )
                .await?;
            first_response(restored.clone()).await?;
            samples.push(started.elapsed());
            engine.delete(&restored).await?;
        }
        samples.sort();
        let restore = samples[samples.len() / 2];
        std::fs::remove_dir_all(&image_dir)?;
        rows.push(RawRunsc {
            mib,
            cold,
            checkpoint,
            image_bytes,
            restore,
        });
    }
    Ok((engine.features().version.clone(), rows))
}

/// How long a demo server may take to answer its first request.
pub(crate) const FIRST_RESPONSE_LIMIT: Duration = Duration::from_secs(600);

/// The demo server's command line: `--state-mib`, port 8080, and `--passes` when given.
pub(crate) fn demo_args(mib: usize, passes: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "/app/podsnap-demo-server".to_owned(),
        format!("--state-mib={mib}"),
        "--port=8080".to_owned(),
    ];
    if let Some(p) = passes {
        args.push(format!("--passes={p}"));
    }
    args
}

async fn bench_gvisor(sizes: &[usize], demo_binary: &Path) -> Result<()> {
    let dir = tempfile_dir()?;
    let result = async {
        let rootfs = dir.join("rootfs");
        demo_rootfs(demo_binary, &rootfs)?;
        raw_runsc(&rootfs, &dir, sizes, None, 1).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (version, rows) = result?;
    println!(
        "demo workload under gvisor ({version}), first response polled with exec + wget inside the sandbox"
    );
    println!(
        "{:>10} {:>16} {:>12} {:>12} {:>18} {:>9}",
        "state MiB", "cold start s", "checkpoint s", "image MiB", "restore s", "speed-up"
    );
    for r in rows {
        println!(
            "{:>10} {:>16.2} {:>12.2} {:>12.0} {:>18.2} {:>8.1}x",
            r.mib,
            r.cold.as_secs_f64(),
            r.checkpoint.as_secs_f64(),
            r.image_bytes as f64 / MIB,
            r.restore.as_secs_f64(),
            r.cold.as_secs_f64() / r.restore.as_secs_f64()
        );
    }
    Ok(())
}
