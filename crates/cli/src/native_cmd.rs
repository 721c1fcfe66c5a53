//! `podsnap native …`: podsnap's own checkpoint/restore of a process, outside Pods, for
//! debugging the native engine: into and from an image directory, or a snapshot repository
//! (see [`crate::native_repo`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};

use crate::native_repo::{self, TempDir, mib, mib_per_s};
use crate::progress::TerminalProgress;

/// Prints a line to standard output, ignoring a closed one: a checkpoint must go on to store
/// its image (the process may be gone already) whoever reads the messages.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A snapshot repository holding native images.
#[derive(Args, Debug, Clone)]
pub struct NativeRepoArgs {
    /// Snapshot repository: a URL (file:///DIR, s3://BUCKET/PREFIX?endpoint=…, gs://…, az://…)
    /// or a local directory.
    #[arg(long, requires = "name")]
    repo: Option<String>,
    /// The snapshot's name in the repository.
    #[arg(long, requires = "repo")]
    name: Option<String>,
    /// Key file of an encrypted repository (64 hex digits; see `podsnap repo keygen`).
    #[arg(long, requires = "repo")]
    key_file: Option<PathBuf>,
    /// Node-local chunk cache directory (a restore through it downloads each chunk once).
    #[arg(long, requires = "repo")]
    cache_dir: Option<PathBuf>,
    /// Where the image is staged on its way to or from the repository (a temporary directory
    /// inside it, removed afterwards); default: beside --cache-dir, else /var/tmp.
    #[arg(long, requires = "repo")]
    tmp_dir: Option<PathBuf>,
    /// Chunks uploaded or fetched at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

impl NativeRepoArgs {
    fn open(&self) -> Result<Option<(podsnap_repo::Repository, String)>> {
        let (Some(repo), Some(name)) = (&self.repo, &self.name) else {
            return Ok(None);
        };
        let handle = native_repo::open_repo(
            repo,
            self.key_file.as_deref(),
            self.cache_dir.as_deref(),
            self.concurrency,
        )?;
        Ok(Some((handle, name.clone())))
    }

    fn temp(&self) -> Result<TempDir> {
        TempDir::new_in(&native_repo::temp_parent(
            self.tmp_dir.as_deref(),
            self.cache_dir.as_deref(),
        ))
    }
}

/// `podsnap native` verbs.
#[derive(Subcommand, Debug)]
pub enum NativeCommand {
    /// Checkpoint a process into a directory (--dir) or into a snapshot of a repository
    /// (--repo, --name). The process is killed once the image is on disk, unless
    /// --leave-running. Anything that cannot be restored is refused with the resource named.
    Checkpoint {
        /// The process.
        #[arg(long)]
        pid: i32,
        /// The image directory (created).
        #[arg(long, required_unless_present = "repo", conflicts_with = "repo")]
        dir: Option<PathBuf>,
        /// Let the process run on.
        #[arg(long)]
        leave_running: bool,
        #[command(flatten)]
        repo: NativeRepoArgs,
    },
    /// Restore a process from a directory (--dir) or a repository snapshot (--repo, --name),
    /// with its PID (which must be free). Its stdin, stdout and stderr, if they were a terminal,
    /// pipe or socket, are opened on the files given here (default /dev/null; output files are
    /// appended to).
    Restore {
        /// The image directory.
        #[arg(long, required_unless_present = "repo", conflicts_with = "repo")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        repo: NativeRepoArgs,
        /// File for standard input.
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// File for standard output.
        #[arg(long)]
        stdout: Option<PathBuf>,
        /// File for standard error.
        #[arg(long)]
        stderr: Option<PathBuf>,
        /// Let the processes run at once and bring their memory in behind them (a
        /// userfaultfd serves the pages they touch first, the rest in the background); the
        /// command returns once every page is in.
        #[arg(long)]
        lazy: bool,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs a `podsnap native` verb.
pub fn run(command: NativeCommand) -> Result<()> {
    match command {
        NativeCommand::Checkpoint {
            pid,
            dir,
            leave_running,
            repo,
        } => match (repo.open()?, dir) {
            (Some((handle, name)), _) => {
                checkpoint_to_repo(pid, leave_running, &repo, &handle, &name)
            }
            (None, Some(dir)) => {
                checkpoint(pid, &dir, leave_running)?;
                Ok(())
            }
            (None, None) => anyhow::bail!("give --dir DIR, or --repo REPO and --name NAME"),
        },
        NativeCommand::Restore {
            dir,
            repo,
            stdin,
            stdout,
            stderr,
            lazy,
        } => {
            let options = RestoreOptions {
                stdio: [stdin, stdout, stderr],
                ..Default::default()
            };
            match (repo.open()?, dir) {
                (Some((handle, name)), _) => {
                    restore_from_repo(&repo, handle, &name, &options, lazy)
                }
                (None, Some(dir)) => {
                    restore(&dir, &dir.display().to_string(), &options, lazy)?;
                    Ok(())
                }
                (None, None) => anyhow::bail!("give --dir DIR, or --repo REPO and --name NAME"),
            }
        }
    }
}

/// Checkpoints `pid` into `dir` and says so.
fn checkpoint(pid: i32, dir: &Path, leave_running: bool) -> Result<cr::CheckpointStats> {
    let t0 = Instant::now();
    #[allow(clippy::needless_update)]
    let options = CheckpointOptions {
        leave_running,
        ..Default::default()
    };
    let s = cr::checkpoint(pid, dir, &options)
        .with_context(|| format!("checkpoint of process {pid}"))?;
    let elapsed = t0.elapsed();
    say!(
        "checkpointed process {pid} into {}: {} mappings, {:.1} MiB of pages in {:.3} s \
         ({:.0} MiB/s; stopped {:.3} s){}",
        dir.display(),
        s.vmas,
        mib(s.page_bytes),
        elapsed.as_secs_f64(),
        mib_per_s(s.page_bytes, elapsed),
        s.frozen.as_secs_f64(),
        if leave_running {
            ""
        } else {
            "; process killed"
        }
    );
    Ok(s)
}

/// Restores from `dir` (described as `from`) and says so; lazily: says when the processes
/// resumed, then waits until their memory is in and says how it came.
fn restore(
    dir: &Path,
    from: &str,
    options: &RestoreOptions,
    lazy: bool,
) -> Result<cr::RestoreStats> {
    if lazy {
        let (s, served) = cr::restore_lazily(dir, None, options, Default::default())
            .with_context(|| format!("lazy restore from {from}"))?;
        say!(
            "restored process {} from {from} lazily: running after {:.3} s ({} processes, {} \
             threads, {} injected syscalls); bringing in {:.1} MiB of pages",
            s.pid,
            s.elapsed.as_secs_f64(),
            s.processes,
            s.threads,
            s.syscalls,
            mib(s.page_bytes)
        );
        let stats = served
            .wait()
            .with_context(|| format!("lazy restore from {from}: the memory could not be served"))?;
        for l in &stats {
            say!(
                "process {}: {}; {} faults served on demand (p50 {:.0} µs, p99 {:.0} µs), \
                 {:.1} MiB on demand, {:.1} MiB in the background",
                l.pid,
                match l.fully_resident {
                    Some(t) => format!("all memory in after {:.3} s", t.as_secs_f64()),
                    None => "it ended before all its memory was in".into(),
                },
                l.demand_faults,
                l.fault_p50.as_secs_f64() * 1e6,
                l.fault_p99.as_secs_f64() * 1e6,
                mib(l.demand_bytes),
                mib(l.background_bytes)
            );
        }
        return Ok(s);
    }
    let s = cr::restore(dir, options).with_context(|| format!("restore from {from}"))?;
    say!(
        "restored process {} from {from}: {:.1} MiB of pages, {} injected syscalls, {:.3} s \
         ({:.0} MiB/s)",
        s.pid,
        mib(s.page_bytes),
        s.syscalls,
        s.elapsed.as_secs_f64(),
        mib_per_s(s.page_bytes, s.elapsed)
    );
    Ok(s)
}

fn checkpoint_to_repo(
    pid: i32,
    leave_running: bool,
    args: &NativeRepoArgs,
    repo: &podsnap_repo::Repository,
    name: &str,
) -> Result<()> {
    let rt = runtime()?;
    // Refuse a taken or invalid name before the process is stopped (or killed).
    rt.block_on(native_repo::check_new_name(repo, name))?;
    let temp = args.temp()?;
    let t0 = Instant::now();
    checkpoint(pid, temp.path(), leave_running)?;
    let checkpointed = t0.elapsed();
    let stored = rt.block_on(native_repo::store_image(
        repo,
        name,
        temp.path(),
        &TerminalProgress::new(),
    ));
    let report = match stored {
        Ok(report) => report,
        Err(e) => {
            let kept = temp.keep();
            return Err(e.context(format!(
                "storing snapshot {name} in {}; the image is kept in {}: restore it with \
                 `podsnap native restore --dir {}`{}",
                repo.url(),
                kept.display(),
                kept.display(),
                if leave_running {
                    ""
                } else {
                    " (the process was killed)"
                }
            )));
        }
    };
    say!(
        "stored snapshot {name} in {}: {} files, {:.1} MiB in {} chunks in {:.3} s ({:.0} MiB/s); \
         uploaded {:.1} MiB ({} bytes) in {} new chunks, {} chunks already stored, {} zero",
        repo.url(),
        report.files,
        mib(report.bytes),
        report.chunks,
        report.elapsed.as_secs_f64(),
        mib_per_s(report.bytes, report.elapsed),
        mib(report.new_bytes),
        report.new_bytes,
        report.new_chunks,
        report.reused_chunks,
        report.zero_chunks
    );
    say!(
        "total {:.3} s (checkpoint {:.3} s + store {:.3} s)",
        (checkpointed + report.elapsed).as_secs_f64(),
        checkpointed.as_secs_f64(),
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

fn restore_from_repo(
    args: &NativeRepoArgs,
    repo: podsnap_repo::Repository,
    name: &str,
    options: &RestoreOptions,
    lazy: bool,
) -> Result<()> {
    let temp = args.temp()?;
    let rt = runtime()?;
    let fetched = rt.block_on(native_repo::fetch_image(
        &repo,
        name,
        temp.path(),
        &TerminalProgress::new(),
    ));
    // The restored process is a child of this one: no runtime threads around it.
    drop(rt);
    let report = fetched.with_context(|| {
        format!(
            "fetching snapshot {name} from {}; nothing was restored",
            repo.url()
        )
    })?;
    say!(
        "fetched snapshot {name} from {}: {} files, {:.1} MiB ({} chunks verified, {} zero) in \
         {:.3} s ({:.0} MiB/s)",
        repo.url(),
        report.files,
        mib(report.bytes),
        report.fetched_chunks,
        report.zero_chunks,
        report.elapsed.as_secs_f64(),
        mib_per_s(report.bytes, report.elapsed)
    );
    let t0 = Instant::now();
    restore(temp.path(), &format!("snapshot {name}"), options, lazy)?;
    let restored = t0.elapsed();
    drop(temp);
    say!(
        "total {:.3} s (fetch {:.3} s + restore {:.3} s)",
        (report.elapsed + restored).as_secs_f64(),
        report.elapsed.as_secs_f64(),
        restored.as_secs_f64()
    );
    Ok(())
}
