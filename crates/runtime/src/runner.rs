//! Running Pods: a sandbox per Pod (a pause process in a static busybox root), init containers
//! one after another, then the Pod's containers, all inside it; stopping with a grace period.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use podsnap_engine::{ContainerSpec, Engine, EngineError, ExecOutput, Network, RestoreInput};
use podsnap_image::{ImageError, ImageStore};

use crate::engines::Engines;
use crate::network::{self, NetworkError, PodNetwork, PodNetworkMode, PodNetworks};
use crate::plan::{self, PlanError, PodFields};
use crate::rootfs;

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Pod cannot be run as written.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// An image is missing or damaged.
    #[error("{0}")]
    Image(#[from] ImageError),
    /// The engine failed.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// The Pod's network could not be set up.
    #[error("setting up the Pod's network failed: {0}")]
    Network(#[from] NetworkError),
    /// An init container failed.
    #[error(
        "init container {container} exited with code {exit_code}; the Pod does not start. Its log ends with: {log_tail}"
    )]
    InitFailed {
        /// The init container.
        container: String,
        /// Its exit code.
        exit_code: i32,
        /// The end of its log.
        log_tail: String,
    },
    /// Capturing or applying root-file-system changes failed.
    #[error("{0}")]
    Rootfs(String),
    /// A container name that the Pod does not have.
    #[error("the Pod has no container named {0}")]
    NoSuchContainer(String),
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

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// Result type of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A Pod that is running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    /// The sandbox (and its pause container) id.
    pub sandbox_id: String,
    /// The Pod's containers: name and engine id, in spec order.
    pub containers: Vec<(String, String)>,
    /// The Pod's directory on the node (logs, volumes).
    pub dir: PathBuf,
    /// Its own network namespace and IP, when it has them.
    pub network: Option<PodNetwork>,
}

impl RunningPod {
    /// The Pod's IP (`status.podIP`): its own, or `127.0.0.1` when it has none.
    pub fn pod_ip(&self) -> String {
        self.network
            .as_ref()
            .map_or_else(|| "127.0.0.1".into(), PodNetwork::pod_ip)
    }

    /// The engine id of container `name`, or of the first container when `None`.
    pub fn container_id(&self, name: Option<&str>) -> Result<&str> {
        match name {
            None => self
                .containers
                .first()
                .map(|(_, id)| id.as_str())
                .ok_or_else(|| RuntimeError::NoSuchContainer(String::new())),
            Some(n) => self
                .containers
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, id)| id.as_str())
                .ok_or_else(|| RuntimeError::NoSuchContainer(n.to_owned())),
        }
    }

    /// The file where the exit code of container `name` is recorded when it runs as the
    /// sandbox's root.
    pub fn exit_code_path(&self, name: &str) -> PathBuf {
        status_dir(&self.dir, name).join("exit")
    }

    /// The host directory behind [`CONTRACT_DIR`].
    pub fn contract_dir(&self) -> PathBuf {
        self.dir.join("podsnap")
    }

    /// The log file of container `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
}

/// A container's root-file-system changes, captured to files on the host.
#[derive(Clone, Debug)]
pub struct CapturedRootfs {
    /// The archive (cpio, newc) of changed entries; empty when none changed.
    pub archive: PathBuf,
    /// The deleted paths, NUL-separated.
    pub deleted: PathBuf,
    /// What changed.
    pub diff: rootfs::RootfsDiff,
}

impl CapturedRootfs {
    /// Removes the files.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.archive);
        let _ = std::fs::remove_file(&self.deleted);
    }
}

/// Where the helper tools (a static busybox) appear in every container, for probes.
pub const HELPER_DIR: &str = "/.podsnap";

/// The exit code recorded when a container ended before its code could be collected.
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// The host directory where container `name` of the Pod in `pod_dir` records its exit code.
fn status_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("status").join(name)
}

/// Where the workload contract appears in every container: `trigger` (the workload writes
/// `1` to ask for a snapshot), `result` (the agent writes `resume`, `restore` or `error`) and
/// `spec_environ` (the Pod's current environment, NUL-separated).
pub const CONTRACT_DIR: &str = "/podsnap";

/// Where a sandbox's root process records its exit code (a host directory per container).
pub const STATUS_DIR: &str = "/.podsnap-status";

fn hostname_of(pod: &Pod, fields: &PodFields) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fields.name.clone())
}

/// The Pod annotations the sandbox runtime reads (`dev.gvisor.*`).
fn runtime_annotations(pod: &Pod) -> std::collections::BTreeMap<String, String> {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("dev.gvisor."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether the Pod runs as a single-container sandbox (one container, no init containers).
pub fn is_solo(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.len() == 1 && s.init_containers.as_deref().unwrap_or_default().is_empty()
    })
}

/// The engine ids of a Pod's containers, by name, in spec order.
pub fn container_ids(pod: &Pod, sandbox_id: &str) -> Vec<(String, String)> {
    let solo = is_solo(pod);
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            let id = if solo {
                sandbox_id.to_owned()
            } else {
                plan::container_id(sandbox_id, &c.name)
            };
            (c.name.clone(), id)
        })
        .collect()
}

/// Whether the Pod asks for the host's network.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// How the engine networks a Pod's sandbox.
fn engine_network(pod: &Pod, net: Option<&PodNetwork>) -> Network {
    if host_network(pod) {
        return Network::Host;
    }
    match net {
        Some(n) if n.mode == PodNetworkMode::Netstack => Network::Netstack(n.netns.clone()),
        _ => Network::Loopback,
    }
}

/// Runs Pods with an engine and the local image store.
#[derive(Clone)]
pub struct PodRunner {
    /// [`PodRunner::engines`], as the one engine the agent talks to.
    engine: Arc<dyn Engine>,
    engines: Arc<Engines>,
    images: ImageStore,
    pods_dir: PathBuf,
    pause_rootfs: PathBuf,
    networks: Option<Arc<PodNetworks>>,
}

impl PodRunner {
    /// A runner keeping Pod directories under `state_dir/pods`; prepares the pause root file
    /// system (a static busybox) under `state_dir/pause`. `engine` is the node's default
    /// engine (see [`PodRunner::add_engine`] for others).
    pub fn new(engine: Arc<dyn Engine>, images: ImageStore, state_dir: &Path) -> Result<Self> {
        let pause_rootfs = state_dir.join("pause");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| RuntimeError::Io {
                context: "the pause process needs a static busybox; install it with `apt-get install -y busybox-static`".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        std::fs::create_dir_all(pause_rootfs.join("bin"))
            .map_err(io_err("creating the pause root file system"))?;
        let target = pause_rootfs.join("bin/busybox");
        if !target.exists() {
            std::fs::copy(busybox, &target).map_err(io_err("copying busybox"))?;
        }
        let sleep = pause_rootfs.join("bin/sleep");
        if std::fs::symlink_metadata(&sleep).is_err() {
            std::os::unix::fs::symlink("busybox", &sleep).map_err(io_err("linking sleep"))?;
        }
        let pods_dir = state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(io_err("creating the Pods directory"))?;
        let engines = Arc::new(Engines::new(engine));
        Ok(Self {
            engine: engines.clone(),
            engines,
            images,
            pods_dir,
            pause_rootfs,
            networks: None,
        })
    }

    /// Gives Pods their own network namespaces and IPs as `settings` say (kept under
    /// `state_dir/network`), and asks the engine whether its netstack works here (else Pod
    /// ports are relayed). Without plugins or root, [`network::NetworkSetting::Auto`] leaves
    /// Pods on their loopback.
    pub async fn enable_networks(
        &mut self,
        state_dir: &Path,
        settings: &network::NetworkSettings,
    ) -> Result<()> {
        let Some(mut networks) = PodNetworks::open(state_dir, settings)? else {
            return Ok(());
        };
        let netstack = networks
            .probe_netstack(self.engine.as_ref(), &self.pause_rootfs)
            .await;
        tracing::info!(
            netstack,
            "Pod ports are reached {}",
            if netstack {
                "through the engine's netstack in each Pod's namespace"
            } else {
                "through relays in each Pod's namespace (the engine's netstack does not start here)"
            }
        );
        networks.set_netstack(netstack);
        self.networks = Some(Arc::new(networks));
        Ok(())
    }

    /// The Pod networks, when on.
    pub fn networks(&self) -> Option<&PodNetworks> {
        self.networks.as_deref()
    }

    /// How `pod` is networked on this node.
    pub fn network_mode(&self, pod: &Pod) -> PodNetworkMode {
        network::network_mode(
            host_network(pod),
            self.networks.is_some(),
            self.networks.as_ref().is_some_and(|n| n.netstack()),
        )
    }

    /// The recorded network of sandbox `sandbox_id` (for Pods adopted after a restart).
    pub fn recorded_network(&self, sandbox_id: &str) -> Option<PodNetwork> {
        self.networks.as_ref()?.load(sandbox_id)
    }

    /// Removes the networks (namespaces, address leases) of every sandbox not in `keep`.
    pub async fn cleanup_networks(&self, keep: &std::collections::HashSet<String>) -> usize {
        match &self.networks {
            Some(n) => n.cleanup(keep).await,
            None => 0,
        }
    }

    /// Checks the recorded network of sandbox `sandbox_id` with CNI CHECK (for Pods adopted
    /// after a restart); `Ok` when it has none.
    pub async fn check_network(&self, sandbox_id: &str) -> Result<()> {
        match &self.networks {
            Some(n) if n.load(sandbox_id).is_some() => Ok(n.check(sandbox_id).await?),
            _ => Ok(()),
        }
    }

    /// Removes the network of sandbox `sandbox_id`, if it has one.
    async fn release_network(&self, sandbox_id: &str) {
        if let Some(n) = &self.networks {
            n.teardown(sandbox_id).await;
        }
    }

    /// The directory of Pod `namespace/name` with uid `uid`.
    pub fn pod_dir_of(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pod_dir(&plan::sandbox_id(namespace, name, uid))
    }

    /// The directory of the Pod with sandbox `sandbox_id`.
    pub fn pod_dir(&self, sandbox_id: &str) -> PathBuf {
        self.pods_dir.join(sandbox_id)
    }

    /// The engine: calls about a sandbox or container go to the engine that runs it.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The node's engines by runtime class.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// Adds an engine that Pods pick with `runtimeClassName: <class>`, or records why that
    /// class is not available here (Pods asking for it then fail with the reason).
    pub fn add_engine(&self, class: &str, engine: std::result::Result<Arc<dyn Engine>, String>) {
        self.engines.add(class, engine);
    }

    /// Picks the engine of `pod` (its `runtimeClassName`, else the node default) for sandbox
    /// `sandbox_id`.
    fn assign_engine(&self, pod: &Pod, sandbox_id: &str) -> Result<()> {
        let requested = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref());
        let class = self
            .engines
            .class_for(requested)
            .map_err(|problem| PlanError {
                field: "spec.runtimeClassName".into(),
                problem,
            })?;
        self.engines.assign(sandbox_id, &class);
        Ok(())
    }

    /// Starts `pod`: its sandbox, its init containers to completion, then its containers. On
    /// any failure everything started is removed again.
    pub async fn start(&self, pod: &Pod) -> Result<RunningPod> {
        self.start_with(pod, None, &[]).await
    }

    /// Starts `pod` with the root-file-system changes of a `rootfs-only` snapshot applied to
    /// containers `names` before their processes run: the agent put each one's archive and
    /// deletion list at [`PodRunner::rootfs_restore_files`]. The processes start from their
    /// entry points.
    pub async fn start_with_rootfs(&self, pod: &Pod, names: &[String]) -> Result<RunningPod> {
        self.start_with(pod, None, names).await
    }

    /// Starts a single-container `pod` from a checkpoint image of the engine instead of from
    /// its entry point; `input` is what else the engine may use (see [`RestoreInput`]).
    pub async fn restore(
        &self,
        pod: &Pod,
        image_dir: &Path,
        input: &RestoreInput,
    ) -> Result<RunningPod> {
        if !is_solo(pod) {
            return Err(RuntimeError::Engine(EngineError::Unsupported(
                "only Pods with one container and no init containers restore from snapshots on this engine".into(),
            )));
        }
        self.start_with(pod, Some((image_dir, input)), &[]).await
    }

    /// Gives a restored Pod its own host name: runsc keeps the snapshot's. Called once the
    /// Pod's ports are open, so that the extra `runsc exec` does not delay them.
    pub async fn set_restored_hostname(&self, pod: &Pod, running: &RunningPod) -> Result<()> {
        let (fields, _, _) = self.identity(pod, None);
        let busybox = format!("{HELPER_DIR}/busybox");
        self.engine
            .set_hostname(&running.sandbox_id, &hostname_of(pod, &fields), &busybox)
            .await?;
        Ok(())
    }

    async fn start_with(
        &self,
        pod: &Pod,
        image: Option<(&Path, &RestoreInput)>,
        rootfs: &[String],
    ) -> Result<RunningPod> {
        let (_, sandbox_id, _) = self.identity(pod, None);
        self.assign_engine(pod, &sandbox_id)?;
        let net = match (self.network_mode(pod), &self.networks) {
            (PodNetworkMode::Netstack | PodNetworkMode::Relay, Some(networks)) => {
                Some(networks.setup(&sandbox_id).await?)
            }
            _ => None,
        };
        let result = self.start_sandbox(pod, image, rootfs, net.as_ref()).await;
        if result.is_err() && net.is_some() {
            self.release_network(&sandbox_id).await;
        }
        result
    }

    async fn start_sandbox(
        &self,
        pod: &Pod,
        image: Option<(&Path, &RestoreInput)>,
        rootfs: &[String],
        net: Option<&PodNetwork>,
    ) -> Result<RunningPod> {
        let spec = pod.spec.as_ref().ok_or_else(|| PlanError {
            field: "spec".into(),
            problem: "the Pod has no spec".into(),
        })?;
        let (fields, sandbox_id, dir) = self.identity(pod, net);
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io_err(format!("creating {}", dir.display())))?;
        for v in spec.volumes.iter().flatten() {
            if v.host_path.is_none() {
                std::fs::create_dir_all(dir.join("volumes").join(&v.name))
                    .map_err(io_err("creating a volume"))?;
            }
        }
        let hostname = hostname_of(pod, &fields);
        let annotations = runtime_annotations(pod);
        // Plan every container before starting anything, so a mistake starts nothing.
        let plan_container =
            |list: &str, i: usize, c: &Container| self.container_spec(pod, net, list, i, c);
        let init: Vec<ContainerSpec> = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| plan_container("initContainers", i, c))
            .collect::<Result<_>>()?;
        let mut main: Vec<ContainerSpec> = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| plan_container("containers", i, c))
            .collect::<Result<_>>()?;
        // Containers that get root-file-system changes wait for them before their process runs.
        let mut waiting: Vec<(String, PathBuf)> = Vec::new();
        for (c, planned) in spec.containers.iter().zip(main.iter_mut()) {
            if rootfs.contains(&c.name) {
                let status = status_dir(&dir, &c.name);
                let _ = std::fs::remove_file(status.join(rootfs::READY_MARKER));
                rootfs::wait_for_changes(planned);
                waiting.push((planned.id.clone(), status));
            }
        }
        let network = engine_network(pod, net);
        if is_solo(pod) {
            // One container and no init containers: the container is the sandbox's root, so
            // the sandbox checkpoints and restores as one (runsc here cannot checkpoint a
            // sandbox with containers inside a pause container).
            let mut root = main.into_iter().next().expect("one container");
            root.id = sandbox_id.clone();
            self.record_exit_code(&mut root, &dir, &spec.containers[0].name);
            match image {
                Some(image) => {
                    // The host name is set afterwards (`set_restored_hostname`), so that
                    // the Pod's ports can open meanwhile.
                    self.engine
                        .restore(&sandbox_id, &root, &network, image.0, image.1)
                        .await?;
                }
                None => {
                    self.engine
                        .create_sandbox(&sandbox_id, &root, &network)
                        .await?;
                    if let Some((_, status)) = waiting.first()
                        && let Err(e) = self.apply_rootfs(&sandbox_id, status).await
                    {
                        let _ = self.engine.delete(&sandbox_id).await;
                        return Err(e);
                    }
                }
            }
            return Ok(RunningPod {
                containers: container_ids(pod, &sandbox_id),
                sandbox_id,
                dir,
                network: net.cloned(),
            });
        }
        let pause = ContainerSpec {
            id: sandbox_id.clone(),
            rootfs: self.pause_rootfs.clone(),
            args: vec!["/bin/sleep".into(), "2147483647".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: (0, 0),
            hostname: hostname.clone(),
            mounts: Vec::new(),
            log_file: dir.join("logs").join("pause.log"),
            annotations: annotations.clone(),
        };
        self.engine
            .create_sandbox(&sandbox_id, &pause, &network)
            .await?;
        let mut started = vec![sandbox_id.clone()];
        let init_names: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let result = async {
            for (c, init_name) in init.iter().zip(&init_names) {
                self.engine.start_container(&sandbox_id, c).await?;
                started.push(c.id.clone());
                let exit_code = self.engine.wait(&c.id).await?;
                if exit_code != 0 {
                    let log = std::fs::read_to_string(&c.log_file).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    return Err(RuntimeError::InitFailed {
                        container: init_name.clone(),
                        exit_code,
                        log_tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                    });
                }
                // A finished init container leaves only its log behind.
                self.engine.delete(&c.id).await?;
                started.pop();
            }
            for c in &main {
                self.engine.start_container(&sandbox_id, c).await?;
                started.push(c.id.clone());
                if let Some((_, status)) = waiting.iter().find(|(id, _)| *id == c.id) {
                    self.apply_rootfs(&c.id, status).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            for id in started.iter().rev() {
                let _ = self.engine.delete(id).await;
            }
            return Err(e);
        }
        Ok(RunningPod {
            containers: container_ids(pod, &sandbox_id),
            sandbox_id,
            dir,
            network: net.cloned(),
        })
    }

    /// The Pod's field values (with the IP of `net`), sandbox id and directory.
    fn identity(&self, pod: &Pod, net: Option<&PodNetwork>) -> (PodFields, String, PathBuf) {
        let meta = &pod.metadata;
        let fields = PodFields {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: meta.uid.clone().unwrap_or_default(),
            pod_ip: net.map_or_else(|| "127.0.0.1".into(), PodNetwork::pod_ip),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
        };
        let sandbox_id = plan::sandbox_id(&fields.namespace, &fields.name, &fields.uid);
        let dir = self.pod_dir(&sandbox_id);
        (fields, sandbox_id, dir)
    }

    /// The engine spec of container `c` (at `spec.LIST[i]`) of `pod`. Every container gets the
    /// helper directory at [`HELPER_DIR`] (a static busybox) that probes run.
    fn container_spec(
        &self,
        pod: &Pod,
        net: Option<&PodNetwork>,
        list: &str,
        i: usize,
        c: &Container,
    ) -> Result<ContainerSpec> {
        let (fields, sandbox_id, dir) = self.identity(pod, net);
        let field = format!("spec.{list}[{i}]");
        let image = self.images.get(c.image.as_deref().unwrap_or_default())?;
        let process = plan::process(&field, pod, c, &image.config, &fields)?;
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut mounts = plan::mounts(&field, c, &volumes, &dir)?;
        mounts.push(podsnap_engine::Mount {
            destination: HELPER_DIR.into(),
            source: self.pause_rootfs.join("bin"),
            kind: podsnap_engine::MountKind::Bind,
            read_only: true,
        });
        // The workload contract: a directory shared with the agent, holding the trigger
        // files and the Pod's current environment (see docs/workload-contract.md).
        let contract = dir.join("podsnap");
        std::fs::create_dir_all(&contract)
            .map_err(io_err("creating the workload contract directory"))?;
        let environ: Vec<u8> = process
            .env
            .iter()
            .flat_map(|e| e.bytes().chain([0]))
            .collect();
        std::fs::write(contract.join("spec_environ"), environ)
            .map_err(io_err("writing spec_environ"))?;
        mounts.push(podsnap_engine::Mount {
            destination: CONTRACT_DIR.into(),
            source: contract,
            kind: podsnap_engine::MountKind::Bind,
            read_only: false,
        });
        // podsnap's private directory of this container: its exit code, root-file-system
        // changes on their way in or out.
        let status = status_dir(&dir, &c.name);
        std::fs::create_dir_all(&status).map_err(io_err("creating the status directory"))?;
        mounts.push(podsnap_engine::Mount {
            destination: STATUS_DIR.into(),
            source: status,
            kind: podsnap_engine::MountKind::Bind,
            read_only: false,
        });
        Ok(ContainerSpec {
            id: plan::container_id(&sandbox_id, &c.name),
            rootfs: self.images.rootfs(&image)?,
            args: process.args,
            env: process.env,
            cwd: process.cwd,
            user: process.user,
            hostname: hostname_of(pod, &fields),
            mounts,
            log_file: dir.join("logs").join(format!("{}.log", c.name)),
            annotations: runtime_annotations(pod),
        })
    }

    /// Starts container `name` of a running Pod again (after it exited or failed its liveness
    /// probe): the old one is removed, a new one starts with the same spec.
    pub async fn restart_container(
        &self,
        pod: &Pod,
        running: &RunningPod,
        name: &str,
    ) -> Result<()> {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        let (i, c) = spec
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        let net = running.network.as_ref();
        self.assign_engine(pod, &running.sandbox_id)?;
        let mut container = self.container_spec(pod, net, "containers", i, c)?;
        if is_solo(pod) {
            // The container is the sandbox: start the sandbox again.
            container.id = running.sandbox_id.clone();
            self.record_exit_code(&mut container, &running.dir, name);
            self.engine.delete(&container.id).await?;
            self.engine
                .create_sandbox(&running.sandbox_id, &container, &engine_network(pod, net))
                .await?;
        } else {
            self.engine.delete(&container.id).await?;
            self.engine
                .start_container(&running.sandbox_id, &container)
                .await?;
        }
        Ok(())
    }

    /// Waits until container `name` (engine id `id`) of the Pod in `pod_dir` exits; its exit
    /// code: from the engine, else from the code the root process recorded, else
    /// [`UNKNOWN_EXIT_CODE`] for a process that ended before anyone could collect its code.
    /// `None` when the wait failed but the container still runs.
    pub async fn wait_container(&self, pod_dir: &Path, name: &str, id: &str) -> Option<i32> {
        if let Ok(code) = self.engine.wait(id).await {
            return Some(code);
        }
        let recorded = status_dir(pod_dir, name).join("exit");
        if let Ok(text) = std::fs::read_to_string(&recorded) {
            return Some(text.trim().parse().unwrap_or(UNKNOWN_EXIT_CODE));
        }
        match self.engine.state(id).await {
            Ok(state) if state.status != podsnap_engine::Status::Stopped => None,
            _ => Some(UNKNOWN_EXIT_CODE),
        }
    }

    /// Wraps a sandbox's root process so that its exit code lands in
    /// [`RunningPod::exit_code_path`]: runsc forgets a sandbox's exit code once the sandbox is
    /// gone, so a process that exits at once would otherwise leave no code behind.
    fn record_exit_code(&self, spec: &mut ContainerSpec, pod_dir: &Path, name: &str) {
        let _ = std::fs::remove_file(status_dir(pod_dir, name).join("exit"));
        // The wrapper is the sandbox's PID 1: it must outlive a SIGTERM so that the app gets
        // its grace period (a trap, unlike an ignored signal, is not inherited by the app).
        let script = format!(
            "trap : TERM; \"$0\" \"$@\"; code=$?; echo $code > {STATUS_DIR}/exit; exit $code"
        );
        let mut args = vec![
            format!("{HELPER_DIR}/busybox"),
            "sh".into(),
            "-c".into(),
            script,
        ];
        args.append(&mut spec.args);
        spec.args = args;
    }

    /// Where the agent puts container `name`'s root-file-system changes (archive, deletion
    /// list) before [`PodRunner::start_with_rootfs`].
    pub fn rootfs_restore_files(&self, pod: &Pod, name: &str) -> Result<(PathBuf, PathBuf)> {
        let (_, _, dir) = self.identity(pod, None);
        let status = status_dir(&dir, name);
        std::fs::create_dir_all(&status).map_err(io_err("creating the status directory"))?;
        Ok((status.join(rootfs::ARCHIVE), status.join(rootfs::DELETED)))
    }

    /// Applies the changes waiting in `status` (a container's status directory) inside
    /// running container `id`, then lets its process go on.
    async fn apply_rootfs(&self, id: &str, status: &Path) -> Result<()> {
        let out = self.engine.exec(id, &rootfs::apply_command(), &[]).await?;
        if out.exit_code != 0 {
            return Err(RuntimeError::Rootfs(format!(
                "applying the snapshot's root-file-system changes failed (exit code {}): {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for file in [rootfs::ARCHIVE, rootfs::DELETED] {
            let _ = std::fs::remove_file(status.join(file));
        }
        std::fs::write(status.join(rootfs::READY_MARKER), b"")
            .map_err(io_err("releasing the container"))
    }

    /// Captures how container `name` of a running Pod changed its root file system against
    /// its image: an archive of the changed entries and the list of deleted ones, as files on
    /// the host (remove them with [`CapturedRootfs::remove`] once stored).
    pub async fn capture_rootfs(
        &self,
        pod: &Pod,
        running: &RunningPod,
        name: &str,
    ) -> Result<CapturedRootfs> {
        let container = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.name == name)
            .ok_or_else(|| RuntimeError::NoSuchContainer(name.to_owned()))?;
        let image = self
            .images
            .get(container.image.as_deref().unwrap_or_default())?;
        let image_root = self.images.rootfs(&image)?;
        let id = running.container_id(Some(name))?;
        let busybox = format!("{HELPER_DIR}/busybox");
        let run = async |args: Vec<String>, what: &str| {
            let out = self.engine.exec(id, &args, &[]).await?;
            if out.exit_code != 0 && out.stdout.is_empty() {
                return Err(RuntimeError::Rootfs(format!(
                    "{what} in container {name} failed (exit code {}): {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let mounts = run(
            vec![busybox.clone(), "cat".into(), "/proc/mounts".into()],
            "reading the mount table",
        )
        .await?;
        let listing = run(rootfs::listing_command(), "listing the root file system").await?;
        let diff = rootfs::diff(
            &rootfs::parse_listing(&listing),
            &image_root,
            &rootfs::parse_mount_points(&mounts),
        );
        let status = status_dir(&running.dir, name);
        let archive = status.join(rootfs::ARCHIVE);
        let deleted = status.join(rootfs::DELETED);
        std::fs::write(&deleted, rootfs::nul_separated(&diff.deleted, false))
            .map_err(io_err("writing the deleted paths"))?;
        if diff.changed.is_empty() {
            std::fs::write(&archive, b"").map_err(io_err("writing an empty archive"))?;
        } else {
            std::fs::write(
                status.join(rootfs::ARCHIVE_LIST),
                rootfs::nul_separated(&diff.changed, true),
            )
            .map_err(io_err("writing the paths to archive"))?;
            let out = self
                .engine
                .exec(id, &rootfs::archive_command(), &[])
                .await?;
            let _ = std::fs::remove_file(status.join(rootfs::ARCHIVE_LIST));
            if out.exit_code != 0 {
                return Err(RuntimeError::Rootfs(format!(
                    "archiving the changed files of container {name} failed (exit code {}): {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(CapturedRootfs {
            archive,
            deleted,
            diff,
        })
    }

    /// Runs a command in container `name` (the first one when `None`).
    pub async fn exec(
        &self,
        pod: &RunningPod,
        name: Option<&str>,
        args: &[String],
    ) -> Result<ExecOutput> {
        Ok(self.engine.exec(pod.container_id(name)?, args, &[]).await?)
    }

    /// Stops a Pod: SIGTERM to every container, SIGKILL after `grace`, then removes the
    /// containers, the sandbox and the Pod's network (its namespace and address).
    pub async fn stop(&self, pod: &RunningPod, grace: Duration) -> Result<()> {
        for (_, id) in &pod.containers {
            let _ = self.engine.kill(id, 15).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (_, id) in &pod.containers {
            while tokio::time::Instant::now() < deadline {
                match self.engine.state(id).await {
                    Ok(s) if s.status == podsnap_engine::Status::Running => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => break,
                }
            }
        }
        let mut result = Ok(());
        for (_, id) in pod.containers.iter().rev() {
            if let Err(e) = self.engine.delete(id).await {
                result = Err(e.into());
            }
        }
        if let Err(e) = self.engine.delete(&pod.sandbox_id).await {
            result = Err(e.into());
        }
        if result.is_ok() {
            // A sandbox that could not be removed keeps its network; the next start of the
            // agent removes both.
            self.release_network(&pod.sandbox_id).await;
        }
        result
    }
}
