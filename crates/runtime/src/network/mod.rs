//! Pod networks: each Pod in its own network namespace with its own IP on the agent's bridge,
//! attached through the standard CNI plugins the way a kubelet attaches Pods.
//!
//! How a sandbox uses its namespace depends on the engine ([`network_mode`]): a runsc whose
//! netstack starts here runs inside it (the Pod IP is the sandbox's own, and checkpoints keep
//! working); Debian's runsc, whose netstack does not start on recent kernels, runs with only
//! its loopback, and the agent makes each container port reachable at `PodIP:port` through a
//! relay that listens inside the namespace.
//!
//! Every Pod network is recorded under `STATE/network/pods/` before anything is created, so
//! an agent that crashed half-way finds and removes what it left ([`PodNetworks::cleanup`]).

pub mod cni;
pub mod netns;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use cni::{BridgeNetwork, CniError, Subnet};

/// How Pods are networked, as the agent is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkSetting {
    /// Pod networks when the CNI plugins are installed and the agent runs as root; otherwise
    /// every Pod gets only its loopback (with a warning).
    #[default]
    Auto,
    /// Pod networks, or the agent does not start.
    Cni,
    /// No Pod networks: every Pod gets only its loopback; ports through hostPort relays.
    None,
}

/// The agent's Pod network settings.
#[derive(Clone, Debug)]
pub struct NetworkSettings {
    /// Whether Pods get networks.
    pub setting: NetworkSetting,
    /// The Pods' subnet.
    pub subnet: String,
    /// The bridge device.
    pub bridge: String,
    /// The CNI plugin directory; found among [`cni::PLUGIN_DIRS`] when `None`.
    pub plugin_dir: Option<PathBuf>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            setting: NetworkSetting::Auto,
            subnet: DEFAULT_SUBNET.into(),
            bridge: DEFAULT_BRIDGE.into(),
            plugin_dir: None,
        }
    }
}

/// The default Pod subnet.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// The default bridge device.
pub const DEFAULT_BRIDGE: &str = "podsnap0";
/// The CNI network name (and the directory of its leases).
pub const NETWORK_NAME: &str = "podsnap";

/// How one Pod is networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodNetworkMode {
    /// The host's network (`hostNetwork: true`).
    Host,
    /// Its own namespace and IP, used by the engine's own network stack (no relay).
    Netstack,
    /// Its own namespace and IP; the sandbox has only its loopback and the agent relays each
    /// container port from `PodIP:port` into it.
    Relay,
    /// Only its loopback: no Pod networks on this node.
    Loopback,
}

/// How a Pod is networked: the host's network when it asks for it; otherwise its own
/// namespace when Pod networks are on — through the engine's netstack when that works here,
/// through a relay when not; otherwise only its loopback.
pub fn network_mode(host_network: bool, pod_networks: bool, netstack: bool) -> PodNetworkMode {
    match (host_network, pod_networks, netstack) {
        (true, _, _) => PodNetworkMode::Host,
        (false, false, _) => PodNetworkMode::Loopback,
        (false, true, true) => PodNetworkMode::Netstack,
        (false, true, false) => PodNetworkMode::Relay,
    }
}

/// Errors of Pod networks.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A CNI plugin or the configuration failed.
    #[error("{0}")]
    Cni(#[from] CniError),
    /// A namespace or a record could not be made or removed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Io { context, source }
}

/// A Pod's network: recorded on disk so that a restarted agent finds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The sandbox id (also the CNI container id).
    pub sandbox_id: String,
    /// The kept network namespace.
    pub netns: PathBuf,
    /// The Pod's address; `None` while being set up.
    pub ip: Option<Ipv4Addr>,
    /// Its prefix length.
    #[serde(default)]
    pub prefix: u8,
    /// The gateway.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Relay or netstack.
    pub mode: PodNetworkMode,
    /// The ADD results (loopback, bridge network), passed back as `prevResult` on DEL.
    #[serde(default)]
    pub results: Vec<Value>,
}

impl PodNetwork {
    /// The Pod's IP as text (`status.podIP`), or `127.0.0.1` while it has none.
    pub fn pod_ip(&self) -> String {
        self.ip
            .map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string())
    }
}

/// The agent's Pod networks.
#[derive(Clone, Debug)]
pub struct PodNetworks {
    network: BridgeNetwork,
    plugin_dir: PathBuf,
    dir: PathBuf,
    netstack: bool,
}

impl PodNetworks {
    /// Sets Pod networks up under `state_dir/network` as `settings` say: `Ok(None)` when they
    /// are off (or unavailable with [`NetworkSetting::Auto`], which is logged).
    pub fn open(
        state_dir: &Path,
        settings: &NetworkSettings,
    ) -> Result<Option<Self>, NetworkError> {
        if settings.setting == NetworkSetting::None {
            tracing::info!("Pod networks are off: Pods get only their loopback");
            return Ok(None);
        }
        let dir = state_dir.join("network");
        let network = BridgeNetwork {
            name: NETWORK_NAME.into(),
            bridge: settings.bridge.clone(),
            subnet: settings.subnet.parse()?,
            data_dir: dir.join("ipam"),
            masquerade: false,
        };
        network.validate()?;
        let candidates: Vec<PathBuf> = match &settings.plugin_dir {
            Some(d) => vec![d.clone()],
            None => cni::PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
        };
        let found = cni::find_plugin_dir(
            candidates.iter().map(PathBuf::as_path),
            cni::REQUIRED_PLUGINS,
        );
        let unavailable = match &found {
            None => Some(
                CniError::MissingPlugin {
                    plugin: cni::REQUIRED_PLUGINS.join(", "),
                    dir: candidates
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                }
                .to_string(),
            ),
            Some(_) if !nix::unistd::geteuid().is_root() => Some(
                "Pod networks need root (network namespaces, a bridge): run the agent as root"
                    .to_owned(),
            ),
            Some(_) => None,
        };
        if let Some(why) = unavailable {
            if settings.setting == NetworkSetting::Cni {
                return Err(NetworkError::Io {
                    context: why,
                    source: std::io::Error::from(std::io::ErrorKind::Unsupported),
                });
            }
            tracing::warn!("{why}; Pods get only their loopback (hostPort relays still work)");
            return Ok(None);
        }
        let plugin_dir = found.expect("checked above");
        for sub in ["pods", "netns", "ipam"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("creating {}", dir.join(sub).display())))?;
        }
        // The configuration, where a person looks for it (the agent passes it itself).
        let conflist = dir.join(format!("{NETWORK_NAME}.conflist"));
        std::fs::write(
            &conflist,
            serde_json::to_vec_pretty(&network.conflist()).expect("a config serialises"),
        )
        .map_err(io_err(format!("writing {}", conflist.display())))?;
        tracing::info!(
            subnet = %network.subnet,
            bridge = network.bridge,
            plugins = %plugin_dir.display(),
            "Pod networks on"
        );
        Ok(Some(Self {
            network,
            plugin_dir,
            dir,
            netstack: false,
        }))
    }

    /// Records whether the engine's netstack works here (from [`PodNetworks::probe_netstack`]).
    pub fn set_netstack(&mut self, works: bool) {
        self.netstack = works;
    }

    /// Whether sandboxes use the engine's netstack in their namespaces (else relays).
    pub fn netstack(&self) -> bool {
        self.netstack
    }

    /// The bridge network.
    pub fn network(&self) -> &BridgeNetwork {
        &self.network
    }

    /// Asks `engine` whether its netstack starts in a fresh namespace, with the static
    /// busybox root file system `rootfs` for the trial.
    pub async fn probe_netstack(&self, engine: &dyn podsnap_engine::Engine, rootfs: &Path) -> bool {
        let path = self
            .dir
            .join("netns")
            .join(format!("probe-{}", std::process::id()));
        let _ = netns::remove(&path);
        if let Err(e) = netns::create(&path) {
            tracing::warn!(error = %e, "cannot create a network namespace to probe the netstack");
            return false;
        }
        let works = engine.probe_netstack(&path, rootfs).await;
        let _ = netns::remove(&path);
        works
    }

    fn record_path(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{sandbox_id}.json"))
    }

    fn write_record(&self, net: &PodNetwork) -> Result<(), NetworkError> {
        let path = self.record_path(&net.sandbox_id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(net).expect("a record serialises"))
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("writing {}", path.display())))
    }

    /// The recorded network of sandbox `sandbox_id`.
    pub fn load(&self, sandbox_id: &str) -> Option<PodNetwork> {
        let bytes = std::fs::read(self.record_path(sandbox_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Gives sandbox `sandbox_id` its namespace and address. On failure nothing is left.
    pub async fn setup(&self, sandbox_id: &str) -> Result<PodNetwork, NetworkError> {
        let mode = if self.netstack {
            PodNetworkMode::Netstack
        } else {
            PodNetworkMode::Relay
        };
        let mut net = PodNetwork {
            sandbox_id: sandbox_id.to_owned(),
            netns: self.dir.join("netns").join(sandbox_id),
            ip: None,
            prefix: 0,
            gateway: None,
            mode,
            results: Vec::new(),
        };
        if self.load(sandbox_id).is_some() {
            // Left from an earlier try of this very Pod.
            self.teardown(sandbox_id).await;
        }
        // Recorded first: a crash from here on leaves a record the next start cleans up.
        self.write_record(&net)?;
        let result = async {
            netns::create(&net.netns).map_err(io_err(format!(
                "creating the network namespace {}",
                net.netns.display()
            )))?;
            for list in [cni::loopback_conflist(), self.network.conflist()] {
                for index in 0..cni::plugin_types(&list).len() {
                    let prev = net.results.last().filter(|_| index > 0);
                    let out = cni::call(
                        &self.plugin_dir,
                        &list,
                        index,
                        cni::Command::Add,
                        sandbox_id,
                        Some(&net.netns),
                        prev,
                    )
                    .await?;
                    let result: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
                    if index == 0 {
                        net.results.push(result);
                    } else if let Some(last) = net.results.last_mut() {
                        *last = result;
                    }
                }
            }
            let bridge_result = serde_json::to_vec(net.results.last().unwrap_or(&Value::Null))
                .expect("a result serialises");
            let attachment = cni::parse_result("bridge", &bridge_result, cni::IFNAME)?;
            net.ip = Some(attachment.ip);
            net.prefix = attachment.prefix;
            net.gateway = attachment.gateway;
            self.write_record(&net)
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(sandbox_id, ip = %net.pod_ip(), "Pod network ready");
                Ok(net)
            }
            Err(e) => {
                self.teardown(sandbox_id).await;
                Err(e)
            }
        }
    }

    /// Detaches sandbox `sandbox_id` from the network (CNI DEL, which releases its address),
    /// removes its namespace and its record. Does nothing for a sandbox without one; problems
    /// are logged, and the record stays when the address could not be released, so the next
    /// start of the agent tries again.
    pub async fn teardown(&self, sandbox_id: &str) {
        let Some(net) = self.load(sandbox_id) else {
            return;
        };
        let netns = net.netns.exists().then_some(net.netns.as_path());
        let mut released = true;
        let lists = [cni::loopback_conflist(), self.network.conflist()];
        for (i, list) in lists.iter().enumerate().rev() {
            let prev = net.results.get(i).filter(|r| !r.is_null());
            for index in (0..cni::plugin_types(list).len()).rev() {
                if let Err(e) = cni::call(
                    &self.plugin_dir,
                    list,
                    index,
                    cni::Command::Del,
                    sandbox_id,
                    netns,
                    prev,
                )
                .await
                {
                    tracing::warn!(sandbox_id, error = %e, "CNI DEL failed");
                    released &= i == 0;
                }
            }
        }
        if let Err(e) = netns::remove(&net.netns) {
            tracing::warn!(sandbox_id, error = %e, "removing a Pod's network namespace");
            released = false;
        }
        if released {
            let _ = std::fs::remove_file(self.record_path(sandbox_id));
            tracing::info!(sandbox_id, ip = %net.pod_ip(), "Pod network removed");
        }
    }

    /// Checks sandbox `sandbox_id`'s attachment with CNI CHECK.
    pub async fn check(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        let net = self.load(sandbox_id).ok_or_else(|| NetworkError::Io {
            context: format!("sandbox {sandbox_id} has no Pod network"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let list = self.network.conflist();
        for index in 0..cni::plugin_types(&list).len() {
            cni::call(
                &self.plugin_dir,
                &list,
                index,
                cni::Command::Check,
                sandbox_id,
                Some(&net.netns),
                net.results.last(),
            )
            .await?;
        }
        Ok(())
    }

    /// The sandboxes that have a recorded network.
    pub fn recorded(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.join("pods"))
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
        out.sort();
        out
    }

    /// Removes every Pod network whose sandbox is not in `keep`: recorded ones (CNI DEL,
    /// namespace, record), namespaces without a record, and address leases of unknown
    /// containers. The number of networks and leases removed.
    pub async fn cleanup(&self, keep: &HashSet<String>) -> usize {
        let mut removed = 0;
        for id in self.recorded() {
            if !keep.contains(&id) {
                tracing::info!(
                    sandbox_id = id,
                    "removing the network of a Pod that is gone"
                );
                self.teardown(&id).await;
                removed += 1;
            }
        }
        for path in netns::list(&self.dir.join("netns")) {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if !keep.contains(&name) && self.load(&name).is_none() {
                tracing::info!(netns = %path.display(), "removing a network namespace no Pod owns");
                let _ = netns::remove(&path);
                removed += 1;
            }
        }
        let list = self.network.conflist();
        for (ip, id) in cni::leases(&self.network.lease_dir()) {
            if keep.contains(&id) || self.load(&id).is_some() {
                continue;
            }
            tracing::info!(%ip, container = id, "releasing an address no Pod owns");
            for index in (0..cni::plugin_types(&list).len()).rev() {
                if let Err(e) = cni::call(
                    &self.plugin_dir,
                    &list,
                    index,
                    cni::Command::Del,
                    &id,
                    None,
                    None,
                )
                .await
                {
                    tracing::warn!(error = %e, "CNI DEL of a stale lease failed");
                }
            }
            removed += 1;
        }
        removed
    }
}

/// Removes every network namespace kept under agent state directory `state_dir`, without
/// CNI DEL (their interfaces go with them; the leases stay in the state directory): for tests
/// and tools cleaning up after an agent that is gone.
pub fn remove_namespaces(state_dir: &Path) {
    for path in netns::list(&state_dir.join("network").join("netns")) {
        if let Err(e) = netns::remove(&path) {
            tracing::warn!(netns = %path.display(), error = %e, "removing a network namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_pod_and_the_node() {
        use PodNetworkMode::*;
        // hostNetwork wins whatever the node can do.
        assert_eq!(network_mode(true, true, true), Host);
        assert_eq!(network_mode(true, false, false), Host);
        // No Pod networks: loopback only.
        assert_eq!(network_mode(false, false, true), Loopback);
        assert_eq!(network_mode(false, false, false), Loopback);
        // Pod networks: the netstack where it works, else the relay.
        assert_eq!(network_mode(false, true, true), Netstack);
        assert_eq!(network_mode(false, true, false), Relay);
    }

    #[test]
    fn records_round_trip_and_give_the_pod_ip() {
        let net = PodNetwork {
            sandbox_id: "default_web_1_pod".into(),
            netns: "/state/network/netns/default_web_1_pod".into(),
            ip: Some(Ipv4Addr::new(10, 88, 0, 5)),
            prefix: 16,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
            mode: PodNetworkMode::Relay,
            results: vec![serde_json::json!({"cniVersion": "1.0.0"})],
        };
        let text = serde_json::to_string(&net).unwrap();
        assert!(text.contains("\"mode\":\"relay\""), "{text}");
        assert_eq!(serde_json::from_str::<PodNetwork>(&text).unwrap(), net);
        assert_eq!(net.pod_ip(), "10.88.0.5");
        let pending = PodNetwork { ip: None, ..net };
        assert_eq!(pending.pod_ip(), "127.0.0.1");
    }

    #[test]
    fn settings_are_checked_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let off = NetworkSettings {
            setting: NetworkSetting::None,
            ..Default::default()
        };
        assert!(PodNetworks::open(dir.path(), &off).unwrap().is_none());
        let bad = NetworkSettings {
            subnet: "10.88.0.1/16".into(),
            ..Default::default()
        };
        let err = PodNetworks::open(dir.path(), &bad).unwrap_err().to_string();
        assert!(err.contains("host bits"), "{err}");
        let missing = NetworkSettings {
            setting: NetworkSetting::Cni,
            plugin_dir: Some(dir.path().join("none")),
            ..Default::default()
        };
        let err = PodNetworks::open(dir.path(), &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("containernetworking-plugins"), "{err}");
        let auto = NetworkSettings {
            plugin_dir: Some(dir.path().join("none")),
            ..Default::default()
        };
        assert!(PodNetworks::open(dir.path(), &auto).unwrap().is_none());
    }
}
