//! Checkpoint and restore of a native sandbox: the layout of its image directory and the
//! steps around [`crate::cr`].
//!
//! An image directory holds
//! - `sandbox.json`: `{"magic": "podsnap-native-sandbox", "version": 1, ...}` — the sandbox's
//!   clocks at the checkpoint (so that a restore's time namespace continues them) and the
//!   name of the root file system archive;
//! - `processes/`: the process tree of the sandbox's root container ([`crate::cr::image`]);
//! - `rootfs-upper.tar`: the container's changes to its root file system (overlayfs's upper
//!   directory with its whiteouts and opaque directories), taken while the processes are
//!   stopped, so that files and memory agree.
//!
//! The container's log is its standard output and error: saved as "stdio", a restored
//! container writes to the new container's log.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use podsnap_engine::{
    CheckpointImage, EngineError, ImageFiles, RestoreInput, RestoreProgress, Result,
};
use serde::{Deserialize, Serialize};

use super::{Record, io, working_set};
use crate::cr::{self, CheckpointOptions, RestoreOptions};
use crate::sandbox::TimeOffsets;

/// The magic string of `sandbox.json`.
const MAGIC: &str = "podsnap-native-sandbox";
/// Its format version.
const VERSION: u32 = 1;
/// The file describing the sandbox.
const SANDBOX_FILE: &str = "sandbox.json";
/// The directory of the process tree's image.
const PROCESSES_DIR: &str = "processes";
/// The archive of the root file system's changes.
const UPPER_ARCHIVE: &str = "rootfs-upper.tar";

/// What `sandbox.json` says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SandboxImage {
    /// [`MAGIC`].
    pub magic: String,
    /// [`VERSION`].
    pub version: u32,
    /// `CLOCK_MONOTONIC` inside the sandbox at the checkpoint, in nanoseconds.
    pub monotonic_ns: i64,
    /// `CLOCK_BOOTTIME` inside the sandbox at the checkpoint, in nanoseconds.
    pub boottime_ns: i64,
    /// The archive of the root file system's changes, if any.
    pub upper_archive: Option<String>,
}

impl SandboxImage {
    /// The time namespace offsets that make the restored sandbox's clocks go on from the
    /// checkpoint's readings.
    pub fn time_offsets_now(&self) -> TimeOffsets {
        let (mono, boot) = host_clocks();
        TimeOffsets::continuing(self.monotonic_ns, mono, self.boottime_ns, boot)
    }

    /// The archive's path in `dir`, if the image has one.
    pub fn upper_archive(&self, dir: &Path) -> Option<PathBuf> {
        self.upper_archive.as_ref().map(|a| dir.join(a))
    }
}

/// The host's `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, in nanoseconds.
fn host_clocks() -> (i64, i64) {
    let ns = |clock| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a live timespec that clock_gettime writes.
        unsafe { libc::clock_gettime(clock, &mut t) };
        t.tv_sec * 1_000_000_000 + t.tv_nsec
    };
    (ns(libc::CLOCK_MONOTONIC), ns(libc::CLOCK_BOOTTIME))
}

fn cr_error(what: &str, e: cr::CrError) -> EngineError {
    match e {
        e @ cr::CrError::Refused { .. } => EngineError::Unsupported(format!("{what}: {e}")),
        e => EngineError::Command {
            command: what.to_owned(),
            status: "failed".into(),
            stderr: e.to_string(),
        },
    }
}

/// Runs GNU tar with `args`, keeping owners, modes, device nodes (whiteouts) and extended
/// attributes (opaque directories).
fn tar(args: &[&std::ffi::OsStr]) -> std::result::Result<(), String> {
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner"])
        .args(args)
        .output()
        .map_err(|e| format!("running tar: {e} (install it: apt-get install -y tar)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tar {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unpacks a saved upper directory into `upper`.
pub fn unpack_upper(archive: &Path, upper: &Path) -> Result<()> {
    tar(&[
        "-xpf".as_ref(),
        archive.as_os_str(),
        "-C".as_ref(),
        upper.as_os_str(),
    ])
    .map_err(|e| EngineError::Command {
        command: format!("unpacking {}", archive.display()),
        status: "failed".into(),
        stderr: e,
    })
}

/// Every file under `dir`, relative, with its size.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| io(format!("listing {}", d.display()), e))?;
        for e in entries {
            let e = e.map_err(|e| io(format!("listing {}", d.display()), e))?;
            let md = e
                .metadata()
                .map_err(|err| io(format!("stat of {}", e.path().display()), err))?;
            if md.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, md.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checkpoints the sandbox whose root container is `record` into `image_dir`.
pub fn checkpoint(
    record: &Record,
    image_dir: &Path,
    leave_running: bool,
) -> Result<CheckpointImage> {
    let _ = std::fs::remove_dir_all(image_dir);
    std::fs::create_dir_all(image_dir)
        .map_err(|e| io(format!("creating {}", image_dir.display()), e))?;
    let upper = record.dir.join("upper");
    let archive = image_dir.join(UPPER_ARCHIVE);
    let offsets = record.time_offsets;
    let mut clocks = None;
    let mut while_stopped = || {
        let (mono, boot) = host_clocks();
        clocks = Some((mono + offsets.monotonic_ns, boot + offsets.boottime_ns));
        tar(&[
            "-cpf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            upper.as_os_str(),
            ".".as_ref(),
        ])
    };
    let opts = CheckpointOptions {
        leave_running,
        stdio_paths: vec![record.log_file.clone()],
    };
    let stats = cr::checkpoint::checkpoint_with(
        record.pid as i32,
        &image_dir.join(PROCESSES_DIR),
        &opts,
        &mut while_stopped,
    )
    .map_err(|e| cr_error(&format!("checkpoint of sandbox {}", record.sandbox), e))?;
    let (monotonic_ns, boottime_ns) = clocks.unwrap_or_else(host_clocks);
    let meta = SandboxImage {
        magic: MAGIC.into(),
        version: VERSION,
        monotonic_ns,
        boottime_ns,
        upper_archive: Some(UPPER_ARCHIVE.into()),
    };
    let path = image_dir.join(SANDBOX_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&meta).expect("the sandbox image serialises"),
    )
    .map_err(|e| io(format!("writing {}", path.display()), e))?;
    tracing::info!(
        sandbox = %record.sandbox,
        processes = stats.processes,
        threads = stats.threads,
        page_bytes = stats.page_bytes,
        frozen = ?stats.frozen,
        "native sandbox checkpointed"
    );
    Ok(CheckpointImage {
        dir: image_dir.to_path_buf(),
        files: list_files(image_dir)?,
    })
}

/// Reads and validates `sandbox.json` of an image directory.
pub fn read_sandbox_image(image_dir: &Path) -> Result<SandboxImage> {
    let path = image_dir.join(SANDBOX_FILE);
    let bad = |why: String| {
        EngineError::Unsupported(format!(
            "{} is not a native sandbox image: {why}; take the snapshot again with the native \
             engine",
            image_dir.display()
        ))
    };
    let text = std::fs::read(&path).map_err(|e| bad(format!("{SANDBOX_FILE}: {e}")))?;
    let meta: SandboxImage = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{SANDBOX_FILE} is unreadable: {e}")))?;
    if meta.magic != MAGIC || meta.version != VERSION {
        return Err(bad(format!(
            "{SANDBOX_FILE} says {:?} version {}, this podsnap reads {MAGIC:?} version {VERSION}",
            meta.magic, meta.version
        )));
    }
    if let Some(a) = &meta.upper_archive
        && (a.contains('/') || !image_dir.join(a).is_file())
    {
        return Err(bad(format!(
            "its root file system archive {a:?} is missing"
        )));
    }
    Ok(meta)
}

/// The progress of the lazy restores of an engine, by sandbox.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Mutex<BTreeMap<String, RestoreProgress>>>);

impl Progress {
    /// The progress of sandbox `id`'s restore, if it was restored lazily.
    pub fn get(&self, id: &str) -> Option<RestoreProgress> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn set(&self, id: &str, p: RestoreProgress) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), p);
    }
}

/// Restores the image's process tree into the seed that is `record`'s first process; with
/// `lazy` (where to record progress, and the longest wait for one read of page data),
/// returns as soon as the processes run and records how their memory comes in (a thread
/// waits for the end). `input`'s files are read in place of the image directory's
/// (page files still arriving), its working set is brought in first.
pub fn restore_into(
    record: &Record,
    image_dir: &Path,
    lazy: Option<(&Progress, std::time::Duration)>,
    input: &RestoreInput,
) -> Result<()> {
    let mut opts = RestoreOptions {
        inherit_stdio: true,
        ..Default::default()
    };
    if !input.files.is_empty() {
        opts.open_pages = Some(in_place_opener(image_dir, input.files.clone()));
    }
    let dir = image_dir.join(PROCESSES_DIR);
    let what = format!("restore of sandbox {}", record.sandbox);
    let Some((progress, read_timeout)) = lazy else {
        let stats = cr::restore::restore_into(&dir, record.pid as i32, &opts)
            .map_err(|e| cr_error(&what, e))?;
        tracing::info!(
            sandbox = %record.sandbox,
            processes = stats.processes,
            threads = stats.threads,
            page_bytes = stats.page_bytes,
            syscalls = stats.syscalls,
            elapsed = ?stats.elapsed,
            "native sandbox restored"
        );
        return Ok(());
    };
    let index = page_index(&dir)?;
    if let Some(set) = &input.working_set {
        opts.prefetch = working_set::to_addresses(PROCESSES_DIR, &index, set);
        tracing::info!(
            sandbox = %record.sandbox,
            blocks = set.len(),
            "prefetching the working set recorded by an earlier restore"
        );
    }
    let lazy_options = cr::lazy::LazyOptions {
        read_timeout,
        ..Default::default()
    };
    let block = lazy_options.fault_block;
    let (stats, served) = cr::restore_lazily(&dir, Some(record.pid as i32), &opts, lazy_options)
        .map_err(|e| cr_error(&what, e))?;
    let resumed = stats.elapsed.as_secs_f64();
    tracing::info!(
        sandbox = %record.sandbox,
        processes = stats.processes,
        threads = stats.threads,
        page_bytes = stats.page_bytes,
        resumed_after = resumed,
        "native sandbox restored lazily: running, its memory coming in"
    );
    let sandbox = record.sandbox.clone();
    let mut state = RestoreProgress {
        state: "Serving".into(),
        seconds_to_resume: resumed,
        seconds_to_resident: None,
        demand_faults: 0,
        fault_p50_us: 0.0,
        fault_p99_us: 0.0,
        demand_bytes: 0,
        background_bytes: 0,
        prefetched_bytes: 0,
        message: None,
        working_set: None,
    };
    progress.set(&sandbox, state.clone());
    let progress = progress.clone();
    std::thread::Builder::new()
        .name("lazy-restore".into())
        .spawn(move || {
            match served.wait() {
                Ok(all) => {
                    state.state = "Complete".into();
                    state.seconds_to_resident = all
                        .iter()
                        .filter_map(|s| s.fully_resident)
                        .max()
                        .map(|d| d.as_secs_f64());
                    state.demand_faults = all.iter().map(|s| s.demand_faults).sum();
                    state.demand_bytes = all.iter().map(|s| s.demand_bytes).sum();
                    state.background_bytes = all.iter().map(|s| s.background_bytes).sum();
                    state.prefetched_bytes = all.iter().map(|s| s.prefetch_bytes).sum();
                    state.fault_p50_us = all
                        .iter()
                        .map(|s| s.fault_p50.as_secs_f64() * 1e6)
                        .fold(0.0, f64::max);
                    state.fault_p99_us = all
                        .iter()
                        .map(|s| s.fault_p99.as_secs_f64() * 1e6)
                        .fold(0.0, f64::max);
                    let recorded: BTreeMap<i32, Vec<u64>> = all
                        .iter()
                        .map(|s| (s.image_pid, s.working_set.clone()))
                        .collect();
                    let set = working_set::to_offsets(PROCESSES_DIR, &index, &recorded, block);
                    state.working_set = (!set.is_empty()).then_some(set);
                    tracing::info!(
                        %sandbox,
                        seconds_to_resident = ?state.seconds_to_resident,
                        demand_faults = state.demand_faults,
                        fault_p99_us = state.fault_p99_us,
                        "lazy restore complete"
                    );
                }
                Err(e) => {
                    state.state = "Failed".into();
                    state.message = Some(e.to_string());
                    tracing::error!(%sandbox, error = %e, "lazy restore failed: the sandbox was killed");
                }
            }
            progress.set(&sandbox, state);
        })
        .map_err(|e| io("starting the lazy restore's waiter", e))?;
    Ok(())
}

/// The page runs of every process of the process-tree image in `dir`, by image pid.
fn page_index(dir: &Path) -> Result<BTreeMap<i32, Vec<cr::image::PageRun>>> {
    let manifest =
        cr::image::read_manifest(dir).map_err(|e| cr_error("reading the process-tree image", e))?;
    Ok(manifest
        .processes
        .into_iter()
        .map(|p| (p.pid, p.pages.runs))
        .collect())
}

/// An opener of page files ([`RestoreOptions::open_pages`]) that reads them from `files` (by
/// their path relative to `image_dir`) where it has them, from the directory otherwise.
pub fn in_place_opener(image_dir: &Path, files: ImageFiles) -> Arc<cr::image::PagesOpener> {
    let image_dir = image_dir.to_path_buf();
    Arc::new(move |path: &Path| {
        let relative = path
            .strip_prefix(&image_dir)
            .ok()
            .and_then(|p| p.to_str())
            .and_then(|p| files.get(p));
        match relative {
            Some(file) => Ok(file.clone()),
            None => cr::image::open_local(path),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_image_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_sandbox_image(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a native sandbox image"), "{err}");
        let meta = SandboxImage {
            magic: MAGIC.into(),
            version: VERSION,
            monotonic_ns: 5,
            boottime_ns: 6,
            upper_archive: Some(UPPER_ARCHIVE.into()),
        };
        let write = |m: &SandboxImage| {
            std::fs::write(
                dir.path().join(SANDBOX_FILE),
                serde_json::to_vec(m).unwrap(),
            )
            .unwrap()
        };
        write(&meta);
        let err = read_sandbox_image(dir.path()).unwrap_err().to_string();
        assert!(err.contains("archive"), "{err}");
        std::fs::write(dir.path().join(UPPER_ARCHIVE), b"").unwrap();
        assert_eq!(read_sandbox_image(dir.path()).unwrap(), meta);
        write(&SandboxImage {
            version: 9,
            ..meta.clone()
        });
        let err = read_sandbox_image(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
        let o = meta.time_offsets_now();
        assert!(o.monotonic_ns < 0, "the checkpoint's clock was behind now");
    }
}
