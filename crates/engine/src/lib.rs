//! The Engine trait — how podsnap runs, checkpoints and restores a Pod's sandbox — and the
//! gvisor engine, which drives the `runsc` command-line tool.
//!
//! A Pod is one sandbox: a root (pause) container that holds the namespaces, and the Pod's
//! containers inside it. Engines take fully resolved specs (root file system paths, arguments,
//! environment, mounts, log files); they must not know about Kubernetes objects, images or
//! storage: the node runtime prepares those and the repository stores what checkpoints write.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod gvisor;
pub mod gvisor_image;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use gvisor::{GvisorConfig, GvisorEngine, RunscFeatures};

/// What an engine reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineDescription {
    /// `gvisor` or `native`.
    pub name: String,
    /// The version snapshots depend on.
    pub version: String,
    /// Capabilities found at start-up, in words (for `podsnap node-info` and logs).
    pub features: Vec<String>,
}

/// How a sandbox is networked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Only its own loopback (checkpointable with every runsc).
    Loopback,
    /// The host's network stack (`hostNetwork: true`); runsc cannot checkpoint it.
    Host,
    /// An existing network namespace (a Pod IP), by path, e.g. `/var/run/netns/pod-x`, used
    /// through the host's network stack inside it (runsc cannot checkpoint that).
    Namespace(PathBuf),
    /// An existing network namespace, by path, used through the engine's own network stack
    /// (gVisor's netstack): the Pod IP without a host socket in the sandbox, so it checkpoints.
    /// Only where [`Engine::probe_netstack`] says that stack works.
    Netstack(PathBuf),
}

/// A bind or tmpfs mount inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it appears in the container.
    pub destination: String,
    /// A host path for binds; ignored for tmpfs.
    pub source: PathBuf,
    /// Bind or tmpfs.
    pub kind: MountKind,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Kinds of mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a host path.
    Bind,
    /// A fresh tmpfs.
    Tmpfs,
}

/// A container to create: everything resolved to host paths and plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique id (also the runsc container id).
    pub id: String,
    /// Root file system directory on the host.
    pub rootfs: PathBuf,
    /// The process: argv.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User and group ids.
    pub user: (u32, u32),
    /// Host name seen inside.
    pub hostname: String,
    /// Mounts besides the standard /proc, /dev, /sys.
    pub mounts: Vec<Mount>,
    /// File receiving the container's standard output and error.
    pub log_file: PathBuf,
    /// Extra OCI annotations (e.g. `dev.gvisor.*` from the Pod).
    pub annotations: BTreeMap<String, String>,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Exited.
    Stopped,
}

/// A container's observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// Its status.
    pub status: Status,
    /// Host pid of its init process, when running.
    pub pid: Option<u32>,
}

/// Output of a command run in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// What a checkpoint wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointImage {
    /// The directory holding the image files.
    pub dir: PathBuf,
    /// The files, relative to `dir`, with their sizes.
    pub files: Vec<(String, u64)>,
}

/// The state of a lazy restore: the sandbox runs while its memory comes in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    /// `Serving` (memory still coming in), `Complete` (all of it in) or `Failed` (the
    /// sandbox's processes were killed; `message` says why).
    pub state: String,
    /// Seconds from the start of the restore until the processes ran.
    pub seconds_to_resume: f64,
    /// Seconds from the start of the restore until all memory was in, once it is.
    pub seconds_to_resident: Option<f64>,
    /// Page faults served on demand.
    pub demand_faults: u64,
    /// Median and 99th percentile of their service time, in microseconds.
    pub fault_p50_us: f64,
    /// 99th percentile.
    pub fault_p99_us: f64,
    /// Bytes brought in for faults.
    pub demand_bytes: u64,
    /// Bytes brought in ahead of the processes.
    pub background_bytes: u64,
    /// Of those, the bytes of a recorded working set, brought in first.
    #[serde(default)]
    pub prefetched_bytes: u64,
    /// Why it failed.
    pub message: Option<String>,
    /// Once complete: what the processes touched first (record it with the snapshot and pass
    /// it to later restores as [`RestoreInput::working_set`]); `None` before, or when nothing
    /// was faulted in.
    #[serde(skip)]
    pub working_set: Option<WorkingSet>,
}

/// The parts of an image's files a restored sandbox needed first, in the order it needed
/// them: recorded by one lazy restore, fetched first by the next ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkingSet {
    /// Bytes needed at each offset (a power of two).
    pub block: u64,
    /// By file (its path relative to the image directory): byte offsets into the file, in
    /// the order they were first needed.
    pub files: BTreeMap<String, Vec<u64>>,
}

impl WorkingSet {
    /// Offsets in all files together.
    pub fn len(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// Whether it holds no offset.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One file of an image that is read in place rather than from the image directory: e.g. a
/// page file still arriving from the repository, whose parts are fetched as they are read.
pub trait ImageFile: Send + Sync {
    /// The file's length in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset` (blocking: it may wait for a fetch).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// [`ImageFile::read_at`] for a page fault a restored process is blocked on: its fetches
    /// go ahead of those already waiting (default: the same as `read_at`).
    fn read_for_fault(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_at(offset, buf)
    }
}

/// Image files to read in place, by path relative to the image directory.
pub type ImageFiles = BTreeMap<String, std::sync::Arc<dyn ImageFile>>;

/// What a restore may use besides the image directory.
#[derive(Clone, Default)]
pub struct RestoreInput {
    /// The working set an earlier restore of the same image recorded: an engine that
    /// restores lazily brings those parts in first.
    pub working_set: Option<WorkingSet>,
    /// Files to read through these instead of from the image directory (where the directory
    /// holds them only as placeholders). Engines that read the image directory themselves
    /// (gvisor) need the directory complete and get none.
    pub files: ImageFiles,
}

impl std::fmt::Debug for RestoreInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreInput")
            .field(
                "working_set",
                &self.working_set.as_ref().map(WorkingSet::len),
            )
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Errors of an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's tool is not installed.
    #[error(
        "{tool} was not found; install it (`apt-get install -y runsc`) or choose another engine"
    )]
    Missing {
        /// The missing tool.
        tool: String,
    },
    /// A command of the engine failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status in words.
        status: String,
        /// The tail of what it wrote to standard error.
        stderr: String,
    },
    /// The engine cannot do this here.
    #[error("{0}")]
    Unsupported(String),
    /// A container that does not exist.
    #[error("container {0} does not exist in the engine")]
    NotFound(String),
    /// Local input or output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result type of engines.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Runs, checkpoints and restores Pod sandboxes.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Name, version and features.
    fn describe(&self) -> EngineDescription;

    /// Creates and starts a Pod's sandbox, whose root container runs `root` (a pause process).
    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
    ) -> Result<()>;

    /// Creates and starts a container inside an existing sandbox.
    async fn start_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<()>;

    /// The state of a container (the sandbox's root container has the sandbox's id).
    async fn state(&self, container_id: &str) -> Result<ContainerState>;

    /// Waits for a container's process to exit; its exit code.
    async fn wait(&self, container_id: &str) -> Result<i32>;

    /// Runs a command inside a running container and collects its output.
    async fn exec(&self, container_id: &str, args: &[String], env: &[String])
    -> Result<ExecOutput>;

    /// Starts a command inside a running container with its standard input and output piped to
    /// the caller (for port relays); the caller owns the child process.
    async fn exec_piped(
        &self,
        container_id: &str,
        args: &[String],
    ) -> Result<tokio::process::Child>;

    /// Sets the host name a running sandbox reports, using the `hostname` applet of the
    /// busybox at `busybox` inside it (runsc keeps a checkpointed sandbox's old host name).
    async fn set_hostname(&self, sandbox_id: &str, hostname: &str, busybox: &str) -> Result<()>;

    /// Sends a signal (e.g. 15 for SIGTERM) to a container's processes.
    async fn kill(&self, container_id: &str, signal: i32) -> Result<()>;

    /// Removes a container, killing it first if needed; succeeds if it is already gone.
    async fn delete(&self, container_id: &str) -> Result<()>;

    /// Writes the sandbox's state into `image_dir`; with `leave_running` the sandbox goes on.
    async fn checkpoint(
        &self,
        sandbox_id: &str,
        image_dir: &std::path::Path,
        leave_running: bool,
    ) -> Result<CheckpointImage>;

    /// Starts a sandbox from a checkpoint image instead of from its entry point; `input`
    /// says what else the restore may use (see [`RestoreInput`]).
    async fn restore(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
        image_dir: &std::path::Path,
        input: &RestoreInput,
    ) -> Result<()>;

    /// Ids of every container the engine knows on this node (for cleanup after a crash).
    async fn list(&self) -> Result<Vec<String>>;

    /// How the memory of a sandbox restored lazily is coming in (`None`: not restored
    /// lazily by this engine, or not known).
    async fn restore_progress(&self, _sandbox_id: &str) -> Option<RestoreProgress> {
        None
    }

    /// Whether a sandbox runs with the engine's own network stack inside the fresh network
    /// namespace `netns` ([`Network::Netstack`]); `rootfs` holds a static busybox at
    /// `/bin/busybox` for a trial run. Engines without such a stack answer `false`.
    async fn probe_netstack(&self, _netns: &std::path::Path, _rootfs: &std::path::Path) -> bool {
        false
    }
}
