//! `NativeEngine`: the node runtime's `Engine` over native sandboxes (see [`crate::sandbox`]).
//!
//! State lives under the engine's state directory, so that a restarted agent finds every
//! sandbox again: `records/<id>.json` (pids, cgroup, overlay directories, how to enter it),
//! `exits/<id>` (the exit code, written by the container's supervisor process) and
//! `containers/<id>/{upper,work,merged}` (the overlay; `upper` holds the container's changes).
//! [`delete_all`] removes everything an engine left under a state directory.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::fcntl::{OFlag, open};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use podsnap_engine::{
    CheckpointImage, ContainerSpec, ContainerState, Engine, EngineDescription, EngineError,
    ExecOutput, Network, RestoreInput, RestoreProgress, Result, Status,
};
use serde::{Deserialize, Serialize};

use crate::sandbox::child::{self, read_reports};
use crate::sandbox::plan::{self, CLONE_NEWTIME, ChildPlan, JoinNs, OverlayDirs};
use crate::sandbox::{Cgroup, CgroupKind, TimeOffsets, cgroup};

mod snapshot;
pub mod working_set;
pub use snapshot::in_place_opener;
use snapshot::unpack_upper;

/// How the native engine runs.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// Records, exit codes and overlay directories.
    pub state_dir: PathBuf,
    /// Where the cgroup file systems are mounted.
    pub cgroup_root: PathBuf,
    /// The cgroup (below the v2 mount or the v1 freezer) that holds every sandbox's cgroup.
    pub cgroup_parent: String,
    /// Restore lazily: a restored sandbox runs at once and its memory comes in behind it
    /// (else every page is in before it runs).
    pub lazy_restore: bool,
    /// The longest a lazy restore waits for one read of page data (e.g. a chunk from a slow
    /// repository) before it kills the restored sandbox with the reason.
    pub lazy_read_timeout: Duration,
}

impl NativeConfig {
    /// Defaults: cgroups under `/sys/fs/cgroup/…/podsnap`, lazy restores.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "podsnap".into(),
            lazy_restore: true,
            lazy_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Options of a sandbox beyond the `Engine` trait's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SandboxOptions {
    /// Offsets of the sandbox's monotonic and boot-time clocks (zero for a fresh sandbox).
    pub time_offsets: TimeOffsets,
}

/// What the engine keeps about one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    /// Format version of the record.
    version: u32,
    id: String,
    sandbox: String,
    /// The container's first process (host pid) and its start time (clock ticks after boot).
    pid: u32,
    pid_start: u64,
    /// The supervisor that waits for it and writes its exit code.
    supervisor: u32,
    supervisor_start: u64,
    cgroup: Cgroup,
    sandbox_cgroup: Cgroup,
    dir: PathBuf,
    log_file: PathBuf,
    user: (u32, u32),
    cwd: String,
    env: Vec<String>,
    /// `loopback`, `host` or `namespace`.
    network: String,
    netns: Option<PathBuf>,
    time_offsets: TimeOffsets,
}

const RECORD_VERSION: u32 = 1;

impl Record {
    fn is_root(&self) -> bool {
        self.id == self.sandbox
    }

    fn running(&self) -> bool {
        alive(self.pid, self.pid_start)
    }
}

/// The paths under a state directory.
#[derive(Clone, Debug)]
struct Layout {
    state_dir: PathBuf,
}

impl Layout {
    fn record(&self, id: &str) -> PathBuf {
        self.state_dir.join("records").join(format!("{id}.json"))
    }
    fn exit(&self, id: &str) -> PathBuf {
        self.state_dir.join("exits").join(id)
    }
    fn exit_tmp(&self, id: &str) -> PathBuf {
        self.state_dir.join("exits").join(format!(".{id}.tmp"))
    }
    fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }

    fn read(&self, id: &str) -> Option<Record> {
        let bytes = std::fs::read(self.record(id)).ok()?;
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.version == RECORD_VERSION => Some(r),
            Ok(r) => {
                tracing::warn!(
                    id,
                    version = r.version,
                    "native record of an unknown version"
                );
                None
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "unreadable native record");
                None
            }
        }
    }

    fn write(&self, record: &Record) -> Result<()> {
        let path = self.record(&record.id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(record).expect("a record serialises"),
        )
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| io(format!("writing {}", path.display()), e))
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state_dir.join("records"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }

    fn exit_code(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.exit(id))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

fn io(context: impl Into<String>, source: std::io::Error) -> EngineError {
    EngineError::Io {
        context: context.into(),
        source,
    }
}

fn plan_err(e: plan::PlanError) -> EngineError {
    EngineError::Unsupported(e.to_string())
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); a zombie has ended.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn alive(pid: u32, start: u64) -> bool {
    pid > 0 && start > 0 && start_time(pid) == Some(start)
}

fn ns_fd(pid: u32, name: &str, kind: CloneFlags) -> Result<JoinNs> {
    let path = format!("/proc/{pid}/ns/{name}");
    let fd = open_fd(Path::new(&path), OFlag::O_RDONLY)?;
    Ok(JoinNs { fd, kind })
}

fn open_fd(path: &Path, flags: OFlag) -> Result<OwnedFd> {
    open(path, flags | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io(format!("opening {}", path.display()), e.into()))
}

fn c(s: impl AsRef<[u8]>) -> Result<CString> {
    plan::c(s).map_err(plan_err)
}

fn c_path(p: &Path) -> Result<CString> {
    plan::c_path(p).map_err(plan_err)
}

/// Which namespaces a container's first process enters or creates.
enum Role<'a> {
    /// A sandbox's root container, with the sandbox's network.
    Root(&'a Network, TimeOffsets),
    /// A member of the sandbox whose root container is this.
    Member(&'a Record),
}

/// How a container's first process starts.
enum Start {
    /// It runs the container's program.
    Exec,
    /// It waits as a seed for a restore, its root file system's changes unpacked first.
    Seed {
        /// The archive of the saved upper directory.
        upper_archive: Option<PathBuf>,
    },
}

/// The native engine.
#[derive(Clone, Debug)]
pub struct NativeEngine {
    layout: Layout,
    cgroup_kind: CgroupKind,
    cgroup_base: PathBuf,
    kernel: String,
    lazy_restore: bool,
    lazy_read_timeout: Duration,
    /// Lazy restores of this agent's life, by sandbox.
    progress: snapshot::Progress,
}

impl NativeEngine {
    /// Checks that this host can run native sandboxes (root, time namespaces, a cgroup that
    /// can freeze) and prepares the state directory.
    pub fn new(config: NativeConfig) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(EngineError::Unsupported(
                "the native engine needs root (it creates namespaces, mounts and cgroups): run the agent as root or use the gvisor engine".into(),
            ));
        }
        if !Path::new("/proc/self/ns/time").exists() {
            return Err(EngineError::Unsupported(
                "this kernel has no time namespaces (CONFIG_TIME_NS), which the native engine needs; use the gvisor engine".into(),
            ));
        }
        let (cgroup_kind, cgroup_base) = cgroup::detect(&config.cgroup_root, &config.cgroup_parent)
            .ok_or_else(|| {
                EngineError::Unsupported(format!(
                    "no usable cgroup under {}: the native engine needs cgroup v2 (with cgroup.freeze) or the v1 freezer mounted there",
                    config.cgroup_root.display()
                ))
            })?;
        for dir in ["records", "exits", "containers"] {
            let path = config.state_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| io(format!("creating {}", path.display()), e))?;
        }
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        tracing::info!(cgroup = %cgroup_base.display(), kind = cgroup_kind.describe(), %kernel, "native engine ready");
        Ok(Self {
            layout: Layout {
                state_dir: config.state_dir,
            },
            cgroup_kind,
            cgroup_base,
            kernel,
            lazy_restore: config.lazy_restore,
            lazy_read_timeout: config.lazy_read_timeout,
            progress: Default::default(),
        })
    }

    /// Which cgroup interface sandboxes use here.
    pub fn cgroup_kind(&self) -> CgroupKind {
        self.cgroup_kind
    }

    /// The cgroup of sandbox `sandbox_id` (it and its containers' cgroups below it).
    pub fn sandbox_cgroup(&self, sandbox_id: &str) -> Cgroup {
        Cgroup {
            kind: self.cgroup_kind,
            path: self.cgroup_base.join(sandbox_id),
        }
    }

    /// The directory holding container `id`'s changes to its root file system (overlayfs's
    /// upper directory).
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        self.layout.container_dir(id).join("upper")
    }

    /// Freezes every process of sandbox `sandbox_id` (for a consistent checkpoint).
    pub fn freeze(&self, sandbox_id: &str) -> Result<()> {
        let record = self.record(sandbox_id)?;
        record
            .sandbox_cgroup
            .freeze()
            .map_err(|e| io(format!("freezing sandbox {sandbox_id}"), e))
    }

    /// Lets the processes of a frozen sandbox run again.
    pub fn thaw(&self, sandbox_id: &str) -> Result<()> {
        let record = self.record(sandbox_id)?;
        record
            .sandbox_cgroup
            .thaw()
            .map_err(|e| io(format!("thawing sandbox {sandbox_id}"), e))
    }

    /// The host pid of container `id`'s first process (pid 1 of the sandbox for its root).
    pub fn pid(&self, id: &str) -> Result<u32> {
        let record = self.record(id)?;
        if record.running() {
            Ok(record.pid)
        } else {
            Err(EngineError::Unsupported(format!(
                "container {id} is not running"
            )))
        }
    }

    /// [`Engine::create_sandbox`] with options the trait does not carry (clock offsets for a
    /// restore).
    pub async fn create_sandbox_with(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
        options: SandboxOptions,
    ) -> Result<()> {
        if root.id != sandbox_id {
            return Err(EngineError::Unsupported(format!(
                "the root container's id ({}) must be the sandbox id ({sandbox_id})",
                root.id
            )));
        }
        let me = self.clone();
        let (id, spec, network) = (sandbox_id.to_owned(), root.clone(), network.clone());
        blocking(move || {
            me.launch(
                &id,
                &spec,
                Role::Root(&network, options.time_offsets),
                &Start::Exec,
            )
        })
        .await
    }

    /// Checkpoints sandbox `sandbox_id` into `image_dir` (see [`snapshot`]): its process tree,
    /// the changes to its root file system, its clocks.
    fn checkpoint_blocking(
        &self,
        sandbox_id: &str,
        image_dir: &Path,
        leave_running: bool,
    ) -> Result<CheckpointImage> {
        let record = self.record(sandbox_id)?;
        let members: Vec<String> = self
            .layout
            .ids()
            .into_iter()
            .filter(|id| {
                id != sandbox_id
                    && self
                        .layout
                        .read(id)
                        .is_some_and(|r| r.sandbox == sandbox_id)
            })
            .collect();
        if !members.is_empty() {
            return Err(EngineError::Unsupported(format!(
                "sandbox {sandbox_id} has more containers ({}): native snapshots of Pods with \
                 several containers are not supported yet; run the Pod with runtimeClassName \
                 gvisor to snapshot it",
                members.join(", ")
            )));
        }
        if !record.running() {
            return Err(EngineError::Unsupported(format!(
                "sandbox {sandbox_id} is not running: there is nothing to checkpoint"
            )));
        }
        snapshot::checkpoint(&record, image_dir, leave_running)
    }

    /// Restores sandbox `sandbox_id` from `image_dir`: a new sandbox whose first process is a
    /// seed, then the saved tree restored into it.
    fn restore_blocking(
        &self,
        sandbox_id: &str,
        spec: &ContainerSpec,
        network: &Network,
        image_dir: &Path,
        input: &RestoreInput,
    ) -> Result<()> {
        let saved = snapshot::read_sandbox_image(image_dir)?;
        let offsets = saved.time_offsets_now();
        let start = Start::Seed {
            upper_archive: saved.upper_archive(image_dir),
        };
        self.launch(sandbox_id, spec, Role::Root(network, offsets), &start)?;
        let record = self.record(sandbox_id)?;
        let lazy = self
            .lazy_restore
            .then_some((&self.progress, self.lazy_read_timeout));
        match snapshot::restore_into(&record, image_dir, lazy, input) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = delete_container(&self.layout, sandbox_id);
                Err(e)
            }
        }
    }

    fn record(&self, id: &str) -> Result<Record> {
        self.layout
            .read(id)
            .ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    /// Starts container `spec` (blocking: forks and waits for the `exec`).
    fn launch(
        &self,
        sandbox_id: &str,
        spec: &ContainerSpec,
        role: Role<'_>,
        start: &Start,
    ) -> Result<()> {
        if let Some(old) = self.layout.read(&spec.id) {
            if old.running() {
                return Err(EngineError::Unsupported(format!(
                    "container {} already runs; delete it first",
                    spec.id
                )));
            }
            delete_container(&self.layout, &spec.id)?;
        }
        if spec.args.is_empty() {
            return Err(EngineError::Unsupported(format!(
                "container {} has no command to run",
                spec.id
            )));
        }
        let cgroup = match &role {
            Role::Root(..) => self.sandbox_cgroup(sandbox_id),
            Role::Member(root) => root.sandbox_cgroup.child(&spec.id),
        };
        let result = self.launch_inner(sandbox_id, spec, role, start);
        if result.is_err() {
            let _ = delete_container(&self.layout, &spec.id);
            cgroup.kill_all(Duration::from_secs(5));
            let _ = cgroup.remove();
            let _ = std::fs::remove_dir_all(self.layout.container_dir(&spec.id));
        }
        result
    }

    fn launch_inner(
        &self,
        sandbox_id: &str,
        spec: &ContainerSpec,
        role: Role<'_>,
        start: &Start,
    ) -> Result<()> {
        let dir = self.layout.container_dir(&spec.id);
        let overlay = OverlayDirs {
            lower: spec.rootfs.clone(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
        };
        if !spec.rootfs.is_dir() {
            return Err(EngineError::Unsupported(format!(
                "the root file system {} of container {} is not a directory",
                spec.rootfs.display(),
                spec.id
            )));
        }
        for d in [&overlay.upper, &overlay.work, &overlay.merged] {
            std::fs::create_dir_all(d).map_err(|e| io(format!("creating {}", d.display()), e))?;
        }
        if let Start::Seed {
            upper_archive: Some(archive),
        } = start
        {
            unpack_upper(archive, &overlay.upper)?;
        }
        let _ = std::fs::remove_file(self.layout.exit(&spec.id));
        let sandbox_cgroup = match &role {
            Role::Root(..) => Cgroup::create(self.cgroup_kind, self.cgroup_base.join(sandbox_id))
                .map_err(|e| io("creating the sandbox's cgroup", e))?,
            Role::Member(root) => root.sandbox_cgroup.clone(),
        };
        let cgroup = Cgroup::create(sandbox_cgroup.kind, sandbox_cgroup.path.join(&spec.id))
            .map_err(|e| io("creating the container's cgroup", e))?;
        let mut plan = ChildPlan {
            exit_file: Some((
                c_path(&self.layout.exit(&spec.id))?,
                c_path(&self.layout.exit_tmp(&spec.id))?,
            )),
            cgroup_outer: Some(c_path(&sandbox_cgroup.procs_file())?),
            cgroup_inner: Some(c_path(&cgroup.procs_file())?),
            ops: plan::rootfs_ops(&overlay, &spec.mounts, &spec.cwd).map_err(plan_err)?,
            keep_caps: plan::default_capabilities(),
            user: spec.user,
            cwd: Some(c(&spec.cwd)?),
            seed: matches!(start, Start::Seed { .. }),
            ..ChildPlan::default()
        };
        let (network_kind, netns, time_offsets) = match &role {
            Role::Root(network, offsets) => {
                plan.new_pid_and_time = true;
                if !offsets.is_zero() {
                    plan.timens_offsets = Some(c(offsets.proc_text())?);
                }
                let mut unshare = CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWCGROUP;
                plan.hostname = Some(spec.hostname.clone());
                let (kind, netns) = match network {
                    Network::Loopback => {
                        unshare |= CloneFlags::CLONE_NEWNET;
                        plan.loopback_up = true;
                        ("loopback", None)
                    }
                    Network::Host => ("host", None),
                    Network::Namespace(path) | Network::Netstack(path) => {
                        plan.join.push(JoinNs {
                            fd: open_fd(path, OFlag::O_RDONLY)?,
                            kind: CloneFlags::CLONE_NEWNET,
                        });
                        ("namespace", Some(path.clone()))
                    }
                };
                plan.unshare = Some(unshare);
                (kind, netns, *offsets)
            }
            Role::Member(root) => {
                if !root.running() {
                    return Err(EngineError::Unsupported(format!(
                        "sandbox {sandbox_id} is not running: its containers cannot start"
                    )));
                }
                plan.join_before_fork = vec![
                    ns_fd(root.pid, "pid", CloneFlags::CLONE_NEWPID)?,
                    ns_fd(root.pid, "time", CLONE_NEWTIME)?,
                ];
                plan.join = vec![
                    ns_fd(root.pid, "cgroup", CloneFlags::CLONE_NEWCGROUP)?,
                    ns_fd(root.pid, "ipc", CloneFlags::CLONE_NEWIPC)?,
                    ns_fd(root.pid, "uts", CloneFlags::CLONE_NEWUTS)?,
                    ns_fd(root.pid, "net", CloneFlags::CLONE_NEWNET)?,
                ];
                plan.unshare = Some(CloneFlags::CLONE_NEWNS);
                (root.network.as_str(), root.netns.clone(), root.time_offsets)
            }
        };
        if let Some(parent) = spec.log_file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io(format!("creating {}", parent.display()), e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(|e| io(format!("opening the log {}", spec.log_file.display()), e))?;
        let log_err = log.try_clone().map_err(|e| io("duplicating the log", e))?;
        let (read_end, write_end) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io("creating a pipe", e.into()))?;
        plan.info = Some(write_end);
        plan.make_source_slots();
        let describe = DescribeSteps::of(&plan);
        let mut cmd = std::process::Command::new(&spec.args[0]);
        cmd.args(&spec.args[1..])
            .env_clear()
            .envs(plan::env_pairs(&spec.env))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // SAFETY: `child::run` only makes async-signal-safe system calls on data prepared
        // before the fork (no allocation, no locks), as `pre_exec` requires.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || child::run(&mut plan));
        }
        let spawned = cmd.spawn();
        // The plan (and the agent's copy of the pipe's write end) goes with the command.
        drop(cmd);
        let reports = read_reports(read_end);
        let supervisor = match spawned {
            Ok(child) => child,
            Err(e) => {
                let what = match reports.error {
                    Some((step, errno)) => {
                        format!("{} failed: {}", describe.get(step), errno.desc())
                    }
                    None => format!("running {} failed: {e}", spec.args[0]),
                };
                return Err(EngineError::Command {
                    command: format!("start container {}", spec.id),
                    status: "the container did not start".into(),
                    stderr: what,
                });
            }
        };
        let supervisor_pid = supervisor.id();
        let supervisor_start = start_time(supervisor_pid).unwrap_or(0);
        std::thread::Builder::new()
            .name("native-reaper".into())
            .spawn(move || {
                let mut supervisor = supervisor;
                let _ = supervisor.wait();
            })
            .map_err(|e| io("starting a reaper thread", e))?;
        let pid = reports.pid.ok_or_else(|| EngineError::Command {
            command: format!("start container {}", spec.id),
            status: "no pid reported".into(),
            stderr: String::new(),
        })?;
        let record = Record {
            version: RECORD_VERSION,
            id: spec.id.clone(),
            sandbox: sandbox_id.to_owned(),
            pid,
            pid_start: start_time(pid).unwrap_or(0),
            supervisor: supervisor_pid,
            supervisor_start,
            cgroup,
            sandbox_cgroup,
            dir,
            log_file: spec.log_file.clone(),
            user: spec.user,
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            network: network_kind.to_owned(),
            netns,
            time_offsets,
        };
        self.layout.write(&record)?;
        tracing::info!(id = %spec.id, sandbox = sandbox_id, pid, "native container started");
        Ok(())
    }

    /// A command to run inside running container `id`: it enters every namespace of the
    /// container's first process, its cgroup and its root.
    fn exec_command(
        &self,
        id: &str,
        args: &[String],
        env: &[String],
    ) -> Result<tokio::process::Command> {
        let record = self.record(id)?;
        if !record.running() {
            return Err(EngineError::Unsupported(format!(
                "container {id} is not running: nothing to exec into"
            )));
        }
        if args.is_empty() {
            return Err(EngineError::Unsupported("exec needs a command".into()));
        }
        let pid = record.pid;
        let mut plan = ChildPlan {
            join_before_fork: vec![
                ns_fd(pid, "pid", CloneFlags::CLONE_NEWPID)?,
                ns_fd(pid, "time", CLONE_NEWTIME)?,
            ],
            cgroup_outer: Some(c_path(&record.cgroup.procs_file())?),
            join: vec![
                ns_fd(pid, "cgroup", CloneFlags::CLONE_NEWCGROUP)?,
                ns_fd(pid, "ipc", CloneFlags::CLONE_NEWIPC)?,
                ns_fd(pid, "uts", CloneFlags::CLONE_NEWUTS)?,
                ns_fd(pid, "net", CloneFlags::CLONE_NEWNET)?,
                ns_fd(pid, "mnt", CloneFlags::CLONE_NEWNS)?,
            ],
            chroot: Some(open_fd(
                Path::new(&format!("/proc/{pid}/root")),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )?),
            keep_caps: plan::default_capabilities(),
            user: record.user,
            cwd: Some(c(&record.cwd)?),
            ..ChildPlan::default()
        };
        let mut cmd = tokio::process::Command::new(&args[0]);
        cmd.args(&args[1..])
            .env_clear()
            .envs(plan::env_pairs(&record.env))
            .envs(plan::env_pairs(env));
        // SAFETY: `child::run` only makes async-signal-safe system calls on data prepared
        // before the fork (no allocation, no locks), as `pre_exec` requires.
        unsafe {
            cmd.pre_exec(move || child::run(&mut plan));
        }
        Ok(cmd)
    }
}

/// Step descriptions of a plan, taken before the plan moves into the child.
struct DescribeSteps(Vec<(child::Step, String)>, String);

impl DescribeSteps {
    fn of(plan: &ChildPlan) -> Self {
        use child::Step;
        let mut steps = vec![
            Step::UnsharePidTime,
            Step::TimeOffsets,
            Step::Fork,
            Step::CgroupOuter,
            Step::Unshare,
            Step::CgroupInner,
            Step::Hostname,
            Step::Loopback,
            Step::Chroot,
            Step::Capabilities,
            Step::User,
            Step::Cwd,
        ];
        steps.extend((0..plan.join_before_fork.len()).map(|i| Step::JoinBeforeFork(i as u16)));
        steps.extend((0..plan.join.len()).map(|i| Step::Join(i as u16)));
        steps.extend((0..plan.ops.len()).map(|i| Step::Op(i as u16)));
        Self(
            steps.into_iter().map(|s| (s, plan.describe(s))).collect(),
            "setting up the container".into(),
        )
    }

    fn get(&self, step: child::Step) -> &str {
        self.0
            .iter()
            .find(|(s, _)| *s == step)
            .map_or(self.1.as_str(), |(_, w)| w.as_str())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Io {
            context: "a native engine task failed".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Removes container `id`: kills its processes (the whole sandbox's for a root container,
/// whose members go first), waits for its supervisor, removes its cgroup, overlay
/// directories, exit code and record. Succeeds when there is nothing to remove.
fn delete_container(layout: &Layout, id: &str) -> Result<()> {
    let Some(record) = layout.read(id) else {
        let _ = std::fs::remove_dir_all(layout.container_dir(id));
        let _ = std::fs::remove_file(layout.exit(id));
        let _ = std::fs::remove_file(layout.record(id));
        return Ok(());
    };
    if record.is_root() {
        for other in layout.ids() {
            if other != id && layout.read(&other).is_some_and(|r| r.sandbox == id) {
                delete_container(layout, &other)?;
            }
        }
    }
    let cgroup = if record.is_root() {
        &record.sandbox_cgroup
    } else {
        &record.cgroup
    };
    let gone = cgroup.kill_all(Duration::from_secs(10));
    if record.running() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(record.pid as i32),
            Signal::SIGKILL,
        );
    }
    if !gone {
        return Err(EngineError::Unsupported(format!(
            "processes of container {id} survived SIGKILL (pids {:?}); try again",
            cgroup.pids()
        )));
    }
    // The supervisor writes the exit code once the process is gone: let it finish first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(record.supervisor, record.supervisor_start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut result = Ok(());
    if let Err(e) = cgroup.remove() {
        result = Err(io(
            format!("removing the cgroup {}", cgroup.path.display()),
            e,
        ));
    }
    if let Err(e) = std::fs::remove_dir_all(&record.dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        result = Err(io(format!("removing {}", record.dir.display()), e));
    }
    let _ = std::fs::remove_file(layout.exit(id));
    let _ = std::fs::remove_file(layout.exit_tmp(id));
    let _ = std::fs::remove_file(layout.record(id));
    tracing::info!(id, "native container deleted");
    result
}

/// Removes every container recorded under an engine state directory, whatever state it is
/// in: for cleaning up after tests and tools.
pub fn delete_all(state_dir: &Path) {
    let layout = Layout {
        state_dir: state_dir.to_path_buf(),
    };
    let ids = layout.ids();
    // Members first (a root's deletion also removes its members).
    for id in &ids {
        if layout.read(id).is_some_and(|r| !r.is_root()) {
            let _ = delete_container(&layout, id);
        }
    }
    for id in &ids {
        let _ = delete_container(&layout, id);
    }
}

/// The ids of the containers recorded under an engine state directory.
pub fn list_containers(state_dir: &Path) -> Vec<String> {
    Layout {
        state_dir: state_dir.to_path_buf(),
    }
    .ids()
}

/// Calls [`delete_all`] when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct NativeCleanup(pub PathBuf);

impl Drop for NativeCleanup {
    fn drop(&mut self) {
        delete_all(&self.0);
    }
}

#[async_trait]
impl Engine for NativeEngine {
    fn describe(&self) -> EngineDescription {
        EngineDescription {
            name: "native".into(),
            version: self.kernel.clone(),
            features: vec![
                format!("kernel {}", self.kernel),
                "namespaces: pid, mount, uts, ipc, net, cgroup, time".into(),
                "root file system: overlayfs".into(),
                self.cgroup_kind.describe().into(),
                "checkpoint/restore: not yet".into(),
            ],
        }
    }

    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
    ) -> Result<()> {
        self.create_sandbox_with(sandbox_id, root, network, SandboxOptions::default())
            .await
    }

    async fn start_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<()> {
        let root = self.record(sandbox_id)?;
        if !root.is_root() {
            return Err(EngineError::NotFound(sandbox_id.to_owned()));
        }
        let me = self.clone();
        let (id, spec) = (sandbox_id.to_owned(), spec.clone());
        blocking(move || me.launch(&id, &spec, Role::Member(&root), &Start::Exec)).await
    }

    async fn state(&self, container_id: &str) -> Result<ContainerState> {
        let record = self.record(container_id)?;
        let running = record.running() && self.layout.exit_code(container_id).is_none();
        let status = match running {
            true if record.cgroup.is_frozen() => Status::Paused,
            true => Status::Running,
            false => Status::Stopped,
        };
        Ok(ContainerState {
            status,
            pid: running.then_some(record.pid),
        })
    }

    async fn wait(&self, container_id: &str) -> Result<i32> {
        let mut gone_since: Option<Instant> = None;
        loop {
            if let Some(code) = self.layout.exit_code(container_id) {
                return Ok(code);
            }
            let record = self.record(container_id)?;
            if !record.running() && !alive(record.supervisor, record.supervisor_start) {
                // Give a supervisor that just ended a moment to have renamed its file.
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    return Err(EngineError::Command {
                        command: format!("wait {container_id}"),
                        status: "exit code unknown".into(),
                        stderr: "the container's supervisor ended without recording an exit code"
                            .into(),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(
        &self,
        container_id: &str,
        args: &[String],
        env: &[String],
    ) -> Result<ExecOutput> {
        let mut cmd = self.exec_command(container_id, args, env)?;
        cmd.stdin(Stdio::null());
        let out = cmd.output().await.map_err(|e| {
            io(
                format!("running {} in container {container_id}", args[0]),
                e,
            )
        })?;
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
        let mut cmd = self.exec_command(container_id, args, &[])?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| {
            io(
                format!("running {} in container {container_id}", args[0]),
                e,
            )
        })
    }

    async fn set_hostname(&self, sandbox_id: &str, hostname: &str, _busybox: &str) -> Result<()> {
        let record = self.record(sandbox_id)?;
        if !record.running() {
            return Err(EngineError::Unsupported(format!(
                "sandbox {sandbox_id} is not running"
            )));
        }
        let uts = ns_fd(record.pid, "uts", CloneFlags::CLONE_NEWUTS)?;
        let name = hostname.to_owned();
        // setns acts on the calling thread only: a thread of its own, which then ends.
        std::thread::Builder::new()
            .name("native-hostname".into())
            .spawn(move || {
                nix::sched::setns(&uts.fd, uts.kind)?;
                nix::unistd::sethostname(&name)
            })
            .map_err(|e| io("starting a thread", e))?
            .join()
            .map_err(|_| EngineError::Unsupported("setting the host name panicked".into()))?
            .map_err(|e| io(format!("setting the host name of {sandbox_id}"), e.into()))
    }

    async fn kill(&self, container_id: &str, signal: i32) -> Result<()> {
        let record = self.record(container_id)?;
        let signal = Signal::try_from(signal)
            .map_err(|_| EngineError::Unsupported(format!("{signal} is not a signal")))?;
        let cgroup = if record.is_root() {
            record.sandbox_cgroup.clone()
        } else {
            record.cgroup.clone()
        };
        if signal == Signal::SIGKILL {
            blocking(move || {
                cgroup.kill_all(Duration::from_secs(5));
                Ok(())
            })
            .await
        } else {
            cgroup.signal_all(signal);
            Ok(())
        }
    }

    async fn delete(&self, container_id: &str) -> Result<()> {
        let layout = self.layout.clone();
        let id = container_id.to_owned();
        blocking(move || delete_container(&layout, &id)).await
    }

    async fn checkpoint(
        &self,
        sandbox_id: &str,
        image_dir: &Path,
        leave_running: bool,
    ) -> Result<CheckpointImage> {
        let me = self.clone();
        let (id, dir) = (sandbox_id.to_owned(), image_dir.to_path_buf());
        blocking(move || me.checkpoint_blocking(&id, &dir, leave_running)).await
    }

    async fn restore(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
        image_dir: &Path,
        input: &RestoreInput,
    ) -> Result<()> {
        if root.id != sandbox_id {
            return Err(EngineError::Unsupported(format!(
                "the root container's id ({}) must be the sandbox id ({sandbox_id})",
                root.id
            )));
        }
        let me = self.clone();
        let (id, spec, network, dir, input) = (
            sandbox_id.to_owned(),
            root.clone(),
            network.clone(),
            image_dir.to_path_buf(),
            input.clone(),
        );
        blocking(move || me.restore_blocking(&id, &spec, &network, &dir, &input)).await
    }

    async fn list(&self) -> Result<Vec<String>> {
        Ok(self.layout.ids())
    }

    async fn restore_progress(&self, sandbox_id: &str) -> Option<RestoreProgress> {
        self.progress.get(sandbox_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_tell_a_living_process_from_a_reused_pid() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert!(!alive(0, 0));
    }
}
