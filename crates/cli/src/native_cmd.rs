//! `podsnap native …`: podsnap's own checkpoint/restore of a process, outside Pods, for
//! debugging the native engine. This slice handles one single-threaded process.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use podsnap_native::cr::{self, CheckpointOptions, RestoreOptions};

/// `podsnap native` verbs.
#[derive(Subcommand, Debug)]
pub enum NativeCommand {
    /// Checkpoint a process into a directory (the process is killed once the image is on
    /// disk, unless --leave-running). Anything that cannot be restored is refused with the
    /// resource named.
    Checkpoint {
        /// The process.
        #[arg(long)]
        pid: i32,
        /// The image directory (created).
        #[arg(long)]
        dir: PathBuf,
        /// Let the process run on.
        #[arg(long)]
        leave_running: bool,
    },
    /// Restore a process from a directory, with its PID (which must be free). Its stdin,
    /// stdout and stderr, if they were a terminal, pipe or socket, are opened on the files
    /// given here (default /dev/null; output files are appended to).
    Restore {
        /// The image directory.
        #[arg(long)]
        dir: PathBuf,
        /// File for standard input.
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// File for standard output.
        #[arg(long)]
        stdout: Option<PathBuf>,
        /// File for standard error.
        #[arg(long)]
        stderr: Option<PathBuf>,
    },
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-9)
}

/// Runs a `podsnap native` verb.
pub fn run(command: NativeCommand) -> Result<()> {
    match command {
        NativeCommand::Checkpoint {
            pid,
            dir,
            leave_running,
        } => {
            let t0 = std::time::Instant::now();
            let s = cr::checkpoint(pid, &dir, &CheckpointOptions { leave_running })
                .with_context(|| format!("checkpoint of process {pid}"))?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "checkpointed process {pid} into {}: {} mappings, {:.1} MiB of pages in {:.3} s \
                 ({:.0} MiB/s; stopped {:.3} s){}",
                dir.display(),
                s.vmas,
                s.page_bytes as f64 / (1u64 << 20) as f64,
                secs,
                mib_per_s(s.page_bytes, secs),
                s.frozen.as_secs_f64(),
                if leave_running {
                    ""
                } else {
                    "; process killed"
                }
            );
        }
        NativeCommand::Restore {
            dir,
            stdin,
            stdout,
            stderr,
        } => {
            let s = cr::restore(
                &dir,
                &RestoreOptions {
                    stdio: [stdin, stdout, stderr],
                },
            )
            .with_context(|| format!("restore from {}", dir.display()))?;
            let secs = s.elapsed.as_secs_f64();
            println!(
                "restored process {} from {}: {:.1} MiB of pages, {} injected syscalls, {:.3} s \
                 ({:.0} MiB/s)",
                s.pid,
                dir.display(),
                s.page_bytes as f64 / (1u64 << 20) as f64,
                s.syscalls,
                secs,
                mib_per_s(s.page_bytes, secs)
            );
        }
    }
    Ok(())
}
