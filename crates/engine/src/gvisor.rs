//! The gvisor engine: Pod sandboxes run by `runsc`.
//!
//! What the installed runsc supports is detected at start-up from its `--help` texts (Debian's
//! 2022 build: checkpoint with `--leave-running`, eager restore; newer builds add
//! `--compression`, `--direct` and background restore). The platform is `ptrace` by default:
//! it works everywhere, while `kvm` hangs in nested virtualisation.
//!
//! Networking on this runsc: `--network=none` sandboxes (their own loopback) checkpoint and
//! restore; `host` sandboxes cannot be checkpointed; a sandbox in a Pod's network namespace runs
//! with the host stack inside that namespace (runsc's own netstack does not start on recent
//! kernels in this build), and every runsc command for it runs inside the namespace too, since
//! runsc's control socket is scoped to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::bundle::{Role, write_bundle};
use crate::{
    CheckpointImage, ContainerSpec, ContainerState, Engine, EngineDescription, EngineError,
    ExecOutput, Network, Result, Status,
};

/// How to run runsc.
#[derive(Clone, Debug)]
pub struct GvisorConfig {
    /// The runsc binary; found on `PATH` when relative.
    pub runsc: PathBuf,
    /// Directory for runsc's state (`--root`), bundles and container records.
    pub state_dir: PathBuf,
    /// runsc platform: `ptrace` (works everywhere), `systrap` or `kvm` where they work.
    pub platform: String,
    /// Keep each container's root file system changes in sandbox memory (`--overlay2=root:memory`
    /// where supported), so they are part of checkpoints.
    pub overlay_root: bool,
}

impl GvisorConfig {
    /// Defaults under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            runsc: PathBuf::from("runsc"),
            state_dir: state_dir.into(),
            platform: "ptrace".into(),
            overlay_root: true,
        }
    }
}

/// What the installed runsc can do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunscFeatures {
    /// `runsc --version`'s release.
    pub version: String,
    /// `checkpoint --leave-running`.
    pub leave_running: bool,
    /// `checkpoint --compression`.
    pub compression: bool,
    /// `checkpoint --direct`.
    pub direct: bool,
    /// `checkpoint --exclude-committed-zero-pages`.
    pub exclude_zero_pages: bool,
    /// `restore --background` (lazy memory).
    pub background_restore: bool,
    /// `--overlay2` (root-only overlay).
    pub overlay2: bool,
}

impl RunscFeatures {
    /// Reads the features from runsc's help texts.
    pub fn from_help(
        version: &str,
        checkpoint_help: &str,
        restore_help: &str,
        flags_help: &str,
    ) -> Self {
        let has = |text: &str, flag: &str| {
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("-{flag}")))
        };
        Self {
            version: version.to_owned(),
            leave_running: has(checkpoint_help, "leave-running"),
            compression: has(checkpoint_help, "compression"),
            direct: has(checkpoint_help, "direct"),
            exclude_zero_pages: has(checkpoint_help, "exclude-committed-zero-pages"),
            background_restore: has(restore_help, "background"),
            overlay2: has(flags_help, "overlay2"),
        }
    }

    /// The features in words.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!("runsc {}", self.version)];
        let mut flag =
            |on: bool, what: &str| out.push(format!("{what}: {}", if on { "yes" } else { "no" }));
        flag(self.leave_running, "checkpoint --leave-running");
        flag(self.compression, "checkpoint --compression");
        flag(self.direct, "checkpoint --direct");
        flag(self.exclude_zero_pages, "zero-page elision");
        flag(self.background_restore, "background (lazy) restore");
        flag(self.overlay2, "--overlay2");
        out
    }
}

/// Which sandbox a container belongs to and how to reach it; kept on disk so that a restarted
/// agent can still talk to its sandboxes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    sandbox: String,
    netns: Option<PathBuf>,
    #[serde(default)]
    log_file: Option<PathBuf>,
    /// The sandbox uses gVisor's netstack inside `netns` rather than the host stack there.
    #[serde(default)]
    netstack: bool,
    /// The sandbox uses the host's network stack (`hostNetwork: true`).
    #[serde(default)]
    host_network: bool,
}

impl Record {
    /// runsc's `--network` for commands about this container. It must match the sandbox's:
    /// `runsc start` with `none` for a sandbox on the host's stack fails ("creating default
    /// loopback interface: … unknown method").
    fn network_flag(&self) -> &'static str {
        if self.netstack {
            "sandbox"
        } else if self.netns.is_some() || self.host_network {
            "host"
        } else {
            "none"
        }
    }
}

/// The gvisor engine.
#[derive(Clone, Debug)]
pub struct GvisorEngine {
    config: GvisorConfig,
    runsc: PathBuf,
    features: RunscFeatures,
    /// Containers this process waits on in the background.
    waiters: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl GvisorEngine {
    /// Finds runsc, reads its features, and prepares the state directory.
    pub async fn new(config: GvisorConfig) -> Result<Self> {
        let runsc = find_binary(&config.runsc).ok_or_else(|| EngineError::Missing {
            tool: config.runsc.display().to_string(),
        })?;
        for dir in ["runsc", "bundles", "records", "checkpoints", "exits"] {
            let path = config.state_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| EngineError::io(format!("creating {}", path.display()), e))?;
        }
        let help = |args: &'static [&'static str]| {
            let runsc = runsc.clone();
            async move {
                let out = Command::new(&runsc)
                    .args(args)
                    .output()
                    .await
                    .map_err(|e| EngineError::io("running runsc", e))?;
                Ok::<_, EngineError>(format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let version_text = help(&["--version"]).await?;
        let version = version_text
            .lines()
            .find_map(|l| l.trim().strip_prefix("runsc version "))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let features = RunscFeatures::from_help(
            &version,
            &help(&["checkpoint", "--help"]).await?,
            &help(&["restore", "--help"]).await?,
            &help(&["flags"]).await?,
        );
        tracing::info!(features = ?features.describe(), "gvisor engine ready");
        Ok(Self {
            config,
            runsc,
            features,
            waiters: Default::default(),
        })
    }

    /// What the installed runsc supports.
    pub fn features(&self) -> &RunscFeatures {
        &self.features
    }

    fn record_path(&self, container_id: &str) -> PathBuf {
        self.config
            .state_dir
            .join("records")
            .join(format!("{container_id}.json"))
    }

    fn write_record(&self, container_id: &str, record: &Record) -> Result<()> {
        let path = self.record_path(container_id);
        std::fs::write(
            &path,
            serde_json::to_vec(record).expect("record serialises"),
        )
        .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))
    }

    fn read_record(&self, container_id: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(container_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A runsc command with the global flags, entering the container's network namespace when
    /// it has one.
    fn runsc(&self, netns: Option<&Path>, network: &str) -> Command {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.runsc);
                c
            }
            None => Command::new(&self.runsc),
        };
        cmd.arg(format!(
            "--root={}",
            self.config.state_dir.join("runsc").display()
        ))
        .arg(format!("--platform={}", self.config.platform))
        .arg(format!("--network={network}"));
        if self.config.overlay_root {
            if self.features.overlay2 {
                cmd.arg("--overlay2=root:memory");
            } else {
                cmd.arg("--overlay");
            }
        }
        cmd.kill_on_drop(false);
        cmd
    }

    fn command_for(&self, container_id: &str) -> Command {
        let record = self.read_record(container_id);
        let netns = record.as_ref().and_then(|r| r.netns.clone());
        let network = record.as_ref().map_or("none", Record::network_flag);
        self.runsc(netns.as_deref(), network)
    }

    async fn create_and_start(
        &self,
        sandbox_id: &str,
        spec: &ContainerSpec,
        role: Role,
        network: &Network,
        restore_from: Option<&Path>,
    ) -> Result<()> {
        let bundles = self.config.state_dir.join("bundles");
        let bundle = write_bundle(&bundles, spec, sandbox_id, role, network)?;
        let sandbox_record = match role {
            Role::Member => self.read_record(sandbox_id),
            Role::Root => None,
        };
        let netns = match network {
            Network::Namespace(path) | Network::Netstack(path) => Some(path.clone()),
            _ => sandbox_record.as_ref().and_then(|r| r.netns.clone()),
        };
        let record = Record {
            sandbox: sandbox_id.to_owned(),
            netns: netns.clone(),
            log_file: Some(spec.log_file.clone()),
            netstack: matches!(network, Network::Netstack(_))
                || sandbox_record.as_ref().is_some_and(|r| r.netstack),
            host_network: matches!(network, Network::Host)
                || sandbox_record.as_ref().is_some_and(|r| r.host_network),
        };
        let network_flag = record.network_flag();
        self.write_record(&spec.id, &record)?;
        let action = if restore_from.is_some() {
            "restore"
        } else {
            "create"
        };
        let mut cmd = self.runsc(netns.as_deref(), network_flag);
        match restore_from {
            None => cmd.arg("create"),
            Some(image) => {
                cmd.arg("restore")
                    .arg(format!("--image-path={}", image.display()))
                    .arg("--detach");
                // Lazy memory where this runsc has it; Debian's build restores eagerly (its
                // features, in `podsnap node-info`, say "background (lazy) restore: no").
                if self.features.background_restore {
                    cmd.arg("--background");
                }
                &mut cmd
            }
        };
        cmd.arg(format!("--bundle={}", bundle.display()))
            .arg(&spec.id);
        let mut result = self
            .run_with_log(&mut cmd, &spec.log_file, action, &spec.id)
            .await;
        if result.is_ok() && restore_from.is_none() {
            // runsc hands the container the standard output of `start` (for containers joining
            // a sandbox), so `start` writes to the log file too, never to a pipe.
            let mut start = self.command_for(&spec.id);
            start.arg("start").arg(&spec.id);
            result = self
                .run_with_log(&mut start, &spec.log_file, "start", &spec.id)
                .await;
        }
        if result.is_ok() {
            // Wait from right after the start: runsc forgets a sandbox's exit code once the
            // sandbox is gone, so the code is recorded while runsc still has it.
            self.spawn_waiter(&spec.id);
        } else {
            let _ = self.delete(&spec.id).await;
        }
        result
    }

    /// Runs a runsc command whose output goes to the container's log file (runsc passes it on
    /// to the sandbox); on failure the error quotes the end of the log.
    async fn run_with_log(
        &self,
        cmd: &mut Command,
        log_file: &Path,
        action: &str,
        id: &str,
    ) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(|e| EngineError::io(format!("opening the log {}", log_file.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| EngineError::io("duplicating the log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let status = cmd
            .status()
            .await
            .map_err(|e| EngineError::io(format!("running runsc {action}"), e))?;
        if status.success() {
            return Ok(());
        }
        Err(EngineError::Command {
            command: format!("runsc {action} {id}"),
            status: status.to_string(),
            stderr: log_tail(log_file),
        })
    }

    async fn run_checked(&self, cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| EngineError::io(format!("running runsc {what}"), e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            if stderr.contains("does not exist") || stderr.contains("not found") {
                return Err(EngineError::NotFound(what.to_owned()));
            }
            return Err(EngineError::Command {
                command: format!("runsc {what}"),
                status: out.status.to_string(),
                stderr: last_lines(stderr, 6),
            });
        }
        Ok(out.stdout)
    }
}

impl GvisorEngine {
    fn exit_path(&self, container_id: &str) -> PathBuf {
        self.config.state_dir.join("exits").join(container_id)
    }

    /// Runs `runsc wait` in the background from now on and records the exit code in a file
    /// that [`Engine::wait`] reads.
    fn spawn_waiter(&self, container_id: &str) {
        let _ = std::fs::remove_file(self.exit_path(container_id));
        self.waiters
            .lock()
            .expect("waiter lock")
            .insert(container_id.to_owned());
        let me = self.clone();
        let id = container_id.to_owned();
        tokio::spawn(async move {
            if let Ok(code) = me.wait_direct(&id).await {
                let _ = std::fs::write(me.exit_path(&id), code.to_string());
            }
            me.waiters.lock().expect("waiter lock").remove(&id);
        });
    }

    /// `runsc wait`: works while runsc still knows the container.
    async fn wait_direct(&self, container_id: &str) -> Result<i32> {
        let out = self
            .run_checked(
                self.command_for(container_id).arg("wait").arg(container_id),
                &format!("wait {container_id}"),
            )
            .await?;
        #[derive(Deserialize)]
        struct Waited {
            #[serde(rename = "exitStatus")]
            exit_status: i32,
        }
        let waited: Waited = serde_json::from_slice(&out).map_err(|e| EngineError::Command {
            command: format!("runsc wait {container_id}"),
            status: "unreadable output".into(),
            stderr: e.to_string(),
        })?;
        // runsc reports the exit code, or 128 + the signal for a process killed by one.
        Ok(waited.exit_status)
    }
}

/// The sandboxes runsc knows under an engine state directory (empty when runsc cannot be
/// run), synchronously: for tests and tools that watch an engine from outside.
pub fn list_sandboxes(state_dir: &Path) -> Vec<String> {
    let root = format!("--root={}", state_dir.join("runsc").display());
    let Ok(out) = std::process::Command::new("runsc")
        .args([root.as_str(), "list", "--quiet"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Removes every sandbox runsc knows under an engine state directory, synchronously: for
/// cleaning up after tests and tools, whatever state they ended in.
pub fn delete_all_sandboxes(state_dir: &Path) {
    let root = format!("--root={}", state_dir.join("runsc").display());
    for id in list_sandboxes(state_dir) {
        let _ = std::process::Command::new("runsc")
            .args([root.as_str(), "delete", "--force", id.as_str()])
            .output();
    }
}

/// Calls [`delete_all_sandboxes`] when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct SandboxCleanup(pub PathBuf);

impl Drop for SandboxCleanup {
    fn drop(&mut self) {
        delete_all_sandboxes(&self.0);
    }
}

fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.is_absolute() {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    last_lines(text.trim(), 6)
}

#[derive(Deserialize)]
struct RunscState {
    status: String,
    #[serde(default)]
    pid: Option<u32>,
}

#[async_trait]
impl Engine for GvisorEngine {
    fn describe(&self) -> EngineDescription {
        EngineDescription {
            name: "gvisor".into(),
            version: self.features.version.clone(),
            features: self.features.describe(),
        }
    }

    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
    ) -> Result<()> {
        if root.id != sandbox_id {
            return Err(EngineError::Unsupported(format!(
                "the root container's id ({}) must be the sandbox id ({sandbox_id})",
                root.id
            )));
        }
        self.create_and_start(sandbox_id, root, Role::Root, network, None)
            .await
    }

    async fn start_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<()> {
        let network = match self.read_record(sandbox_id) {
            Some(Record {
                netns: Some(ns),
                netstack: true,
                ..
            }) => Network::Netstack(ns),
            Some(Record {
                netns: Some(ns), ..
            }) => Network::Namespace(ns),
            Some(_) => Network::Loopback,
            None => return Err(EngineError::NotFound(sandbox_id.to_owned())),
        };
        self.create_and_start(sandbox_id, spec, Role::Member, &network, None)
            .await
    }

    async fn state(&self, container_id: &str) -> Result<ContainerState> {
        let out = self
            .run_checked(
                self.command_for(container_id)
                    .arg("state")
                    .arg(container_id),
                &format!("state {container_id}"),
            )
            .await
            .map_err(|e| match e {
                EngineError::NotFound(_) => EngineError::NotFound(container_id.to_owned()),
                other => other,
            })?;
        let state: RunscState = serde_json::from_slice(&out).map_err(|e| EngineError::Command {
            command: format!("runsc state {container_id}"),
            status: "unreadable output".into(),
            stderr: e.to_string(),
        })?;
        let status = match state.status.as_str() {
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            _ => Status::Stopped,
        };
        Ok(ContainerState {
            status,
            pid: state.pid.filter(|p| *p > 0 && status != Status::Stopped),
        })
    }

    async fn wait(&self, container_id: &str) -> Result<i32> {
        let exit_file = self.exit_path(container_id);
        if self
            .waiters
            .lock()
            .expect("waiter lock")
            .contains(container_id)
        {
            // This process is already waiting: read what its waiter records.
            loop {
                if let Ok(text) = std::fs::read_to_string(&exit_file)
                    && let Ok(code) = text.trim().parse()
                {
                    return Ok(code);
                }
                if !self
                    .waiters
                    .lock()
                    .expect("waiter lock")
                    .contains(container_id)
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        if let Ok(text) = std::fs::read_to_string(&exit_file)
            && let Ok(code) = text.trim().parse()
        {
            return Ok(code);
        }
        self.wait_direct(container_id).await
    }

    async fn exec(
        &self,
        container_id: &str,
        args: &[String],
        env: &[String],
    ) -> Result<ExecOutput> {
        let mut cmd = self.command_for(container_id);
        cmd.arg("exec");
        for e in env {
            cmd.arg(format!("--env={e}"));
        }
        cmd.arg(container_id).args(args).stdin(Stdio::null());
        let out = cmd
            .output()
            .await
            .map_err(|e| EngineError::io("running runsc exec", e))?;
        Ok(ExecOutput {
            exit_code: out.status.code().unwrap_or(128 + 9),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn exec_piped(
        &self,
        container_id: &str,
        args: &[String],
    ) -> Result<tokio::process::Child> {
        let mut cmd = self.command_for(container_id);
        cmd.arg("exec").arg(container_id).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        cmd.spawn()
            .map_err(|e| EngineError::io("running runsc exec", e))
    }

    async fn set_hostname(&self, sandbox_id: &str, hostname: &str, busybox: &str) -> Result<()> {
        let mut cmd = self.command_for(sandbox_id);
        cmd.arg("exec")
            .arg("--cap=CAP_SYS_ADMIN")
            .arg(sandbox_id)
            .arg(busybox)
            .arg("hostname")
            .arg(hostname);
        self.run_checked(&mut cmd, &format!("exec {sandbox_id} hostname"))
            .await
            .map(|_| ())
    }

    async fn kill(&self, container_id: &str, signal: i32) -> Result<()> {
        self.run_checked(
            self.command_for(container_id)
                .arg("kill")
                .arg("--all")
                .arg(container_id)
                .arg(signal.to_string()),
            &format!("kill {container_id}"),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, container_id: &str) -> Result<()> {
        let result = self
            .run_checked(
                self.command_for(container_id)
                    .arg("delete")
                    .arg("--force")
                    .arg(container_id),
                &format!("delete {container_id}"),
            )
            .await;
        let _ = std::fs::remove_file(self.record_path(container_id));
        let _ = std::fs::remove_file(self.exit_path(container_id));
        let _ = std::fs::remove_dir_all(self.config.state_dir.join("bundles").join(container_id));
        match result {
            Ok(_) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn checkpoint(
        &self,
        sandbox_id: &str,
        image_dir: &Path,
        leave_running: bool,
    ) -> Result<CheckpointImage> {
        std::fs::create_dir_all(image_dir)
            .map_err(|e| EngineError::io(format!("creating {}", image_dir.display()), e))?;
        let record = self
            .read_record(sandbox_id)
            .ok_or_else(|| EngineError::NotFound(sandbox_id.to_owned()))?;
        if record.host_network || (record.netns.is_some() && !record.netstack) {
            return Err(EngineError::Unsupported(
                "runsc cannot checkpoint a sandbox on a host network stack (hostNetwork: true); \
                 remove hostNetwork from the Pod (its ports stay reachable through its Pod IP) \
                 or do not select it with a PodSnapshotPolicy"
                    .into(),
            ));
        }
        let mut cmd = self.command_for(sandbox_id);
        cmd.arg("checkpoint")
            .arg(format!("--image-path={}", image_dir.display()))
            .arg(sandbox_id);
        self.run_checked(&mut cmd, &format!("checkpoint {sandbox_id}"))
            .await?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(image_dir)
            .map_err(|e| EngineError::io(format!("reading {}", image_dir.display()), e))?
        {
            let entry = entry.map_err(|e| EngineError::io("reading the image", e))?;
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.push((entry.file_name().to_string_lossy().into_owned(), size));
        }
        files.sort();
        if leave_running {
            // runsc's own --leave-running stalls for tens of seconds in Debian's build, so the
            // sandbox is resumed the portable way: restored in place from the image just
            // written, with its own bundle and log.
            self.run_checked(
                self.command_for(sandbox_id)
                    .arg("delete")
                    .arg("--force")
                    .arg(sandbox_id),
                &format!("delete {sandbox_id}"),
            )
            .await?;
            let bundle = self.config.state_dir.join("bundles").join(sandbox_id);
            let log = record
                .log_file
                .clone()
                .unwrap_or_else(|| self.config.state_dir.join(format!("{sandbox_id}.log")));
            let mut cmd = self.runsc(record.netns.as_deref(), record.network_flag());
            cmd.arg("restore")
                .arg(format!("--image-path={}", image_dir.display()))
                .arg("--detach")
                .arg(format!("--bundle={}", bundle.display()))
                .arg(sandbox_id);
            self.run_with_log(&mut cmd, &log, "restore", sandbox_id)
                .await?;
            self.spawn_waiter(sandbox_id);
        }
        Ok(CheckpointImage {
            dir: image_dir.to_path_buf(),
            files,
        })
    }

    async fn restore(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
        image_dir: &Path,
        input: &crate::RestoreInput,
    ) -> Result<()> {
        if !input.files.is_empty() {
            return Err(EngineError::Unsupported(
                "runsc reads its checkpoint image from the image directory; assemble the \
                 whole image before restoring"
                    .into(),
            ));
        }
        if matches!(network, Network::Host) {
            return Err(EngineError::Unsupported(
                "runsc cannot checkpoint or restore sandboxes on the host network".into(),
            ));
        }
        self.create_and_start(sandbox_id, root, Role::Root, network, Some(image_dir))
            .await
    }

    async fn probe_netstack(&self, netns: &Path, rootfs: &Path) -> bool {
        let id = format!("podsnap-netstack-probe-{}", std::process::id());
        let spec = ContainerSpec {
            id: id.clone(),
            rootfs: rootfs.to_path_buf(),
            args: vec!["/bin/busybox".into(), "true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: (0, 0),
            hostname: "probe".into(),
            mounts: Vec::new(),
            log_file: self.config.state_dir.join(format!("{id}.log")),
            annotations: Default::default(),
        };
        let bundles = self.config.state_dir.join("bundles");
        let network = Network::Netstack(netns.to_path_buf());
        let Ok(bundle) = write_bundle(&bundles, &spec, &id, Role::Root, &network) else {
            return false;
        };
        let mut cmd = self.runsc(Some(netns), "sandbox");
        cmd.arg("run")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(&id)
            .kill_on_drop(true);
        let limit = std::time::Duration::from_secs(30);
        let outcome = tokio::time::timeout(
            limit,
            self.run_with_log(&mut cmd, &spec.log_file, "run", &id),
        )
        .await;
        let works = matches!(outcome, Ok(Ok(())));
        if !works {
            tracing::info!(
                log = %log_tail(&spec.log_file),
                "runsc's netstack does not start here: Pods get their IP through a relay"
            );
        }
        let _ = self
            .runsc(Some(netns), "sandbox")
            .args(["delete", "--force", &id])
            .stdin(Stdio::null())
            .output()
            .await;
        let _ = std::fs::remove_dir_all(&bundle);
        let _ = std::fs::remove_file(&spec.log_file);
        works
    }

    async fn list(&self) -> Result<Vec<String>> {
        let out = self
            .run_checked(self.runsc(None, "none").arg("list").arg("--quiet"), "list")
            .await?;
        let mut ids: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        // Sandboxes in other network namespaces are listed from their records.
        for entry in std::fs::read_dir(self.config.state_dir.join("records"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runsc_command_gets_the_sandboxs_network() {
        let record = |netns: Option<&str>, netstack, host_network| Record {
            sandbox: "sb".into(),
            netns: netns.map(PathBuf::from),
            log_file: None,
            netstack,
            host_network,
        };
        assert_eq!(record(None, false, false).network_flag(), "none");
        assert_eq!(record(None, false, true).network_flag(), "host");
        assert_eq!(record(Some("/ns"), false, false).network_flag(), "host");
        assert_eq!(record(Some("/ns"), true, false).network_flag(), "sandbox");
        // Records written before these fields existed read as loopback sandboxes.
        let old: Record = serde_json::from_str(r#"{"sandbox": "sb", "netns": null}"#).unwrap();
        assert_eq!(old.network_flag(), "none");
    }

    #[test]
    fn features_come_from_help_texts() {
        let checkpoint =
            "checkpoint [flags] <id>\n  -image-path string\n  -leave-running\n    \trestart\n";
        let restore = "restore\n  -bundle string\n  -detach\n";
        let f = RunscFeatures::from_help(
            "0.0~20221219.0",
            checkpoint,
            restore,
            "  -overlay2 string\n",
        );
        assert!(f.leave_running && f.overlay2);
        assert!(!f.compression && !f.direct && !f.background_restore);
        let newer = RunscFeatures::from_help(
            "release-20260801.0",
            "  -compression string\n  -direct\n  -exclude-committed-zero-pages\n",
            "  -background\n",
            "",
        );
        assert!(
            newer.compression
                && newer.direct
                && newer.background_restore
                && newer.exclude_zero_pages
        );
        assert!(
            f.describe()
                .iter()
                .any(|l| l == "background (lazy) restore: no")
        );
    }
}
