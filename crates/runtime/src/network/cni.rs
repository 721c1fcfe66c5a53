//! A small CNI driver: the one bridge network the agent configures, plugin calls made the way a
//! kubelet's CNI layer makes them (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_PATH` in the environment, the plugin's configuration on standard input), and what the
//! plugins answer.
//!
//! Everything but [`call`] is pure, so it is tested without root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value, json};

/// The CNI specification version podsnap speaks.
pub const CNI_VERSION: &str = "1.0.0";

/// The interface a Pod's network namespace gets.
pub const IFNAME: &str = "eth0";

/// Where distributions install the standard plugins, in the order they are looked for
/// (Debian's `containernetworking-plugins` uses `/usr/lib/cni`).
pub const PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];

/// The plugins the bridge network needs.
pub const REQUIRED_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

/// Errors of CNI set-up and plugin calls.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration cannot be used.
    #[error("invalid Pod network configuration: {0}")]
    Config(String),
    /// A plugin binary is missing.
    #[error(
        "the CNI plugin `{plugin}` was not found in {dir}; install the standard plugins (`apt-get install -y containernetworking-plugins`) or point --cni-plugin-dir at them"
    )]
    MissingPlugin {
        /// The plugin.
        plugin: String,
        /// Where it was looked for.
        dir: String,
    },
    /// A plugin could not be run.
    #[error("running the CNI plugin `{plugin}` failed: {source}")]
    Exec {
        /// The plugin.
        plugin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A plugin reported an error.
    #[error("CNI plugin `{plugin}` {command} failed (code {code}, {message}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The CNI error code.
        code: u32,
        /// What the code means, the plugin's message and details, and what to do.
        message: String,
    },
    /// A plugin answered something that is not a CNI result.
    #[error("CNI plugin `{plugin}` answered something podsnap cannot use: {problem}")]
    BadResult {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        problem: String,
    },
}

/// A CNI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it (and release its address).
    Del,
    /// Check that the attachment is still as ADD left it.
    Check,
}

impl Command {
    /// `ADD`, `DEL` or `CHECK`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// An IPv4 subnet in CIDR notation, e.g. `10.88.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = CniError;

    fn from_str(text: &str) -> Result<Self, CniError> {
        let bad = |why: &str| CniError::Config(format!("Pod subnet `{text}`: {why}"));
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| bad("write it as ADDRESS/PREFIX, e.g. 10.88.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("the address is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=29).contains(p))
            .ok_or_else(|| bad("the prefix must be between 8 and 29"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(bad(&format!(
                "host bits are set; the network address is {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & mask)
            )));
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Subnet {
    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

/// The agent's one Pod network: a Linux bridge with host-local address management.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The network's name (also the directory of its address leases).
    pub name: String,
    /// The bridge device on the host (at most 15 characters).
    pub bridge: String,
    /// The Pods' subnet; the bridge gets its first address as the Pods' gateway.
    pub subnet: Subnet,
    /// Where host-local keeps its leases (a directory per network name inside).
    pub data_dir: PathBuf,
    /// Masquerade traffic from Pods to outside the subnet (needs iptables).
    pub masquerade: bool,
}

impl BridgeNetwork {
    /// Checks the names: a bridge name the kernel accepts and a network name CNI accepts.
    pub fn validate(&self) -> Result<(), CniError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if self.bridge.is_empty() || self.bridge.len() > 15 || !self.bridge.chars().all(ok_char) {
            return Err(CniError::Config(format!(
                "bridge name `{}`: use 1 to 15 letters, digits, `-`, `_` or `.`",
                self.bridge
            )));
        }
        if self.name.is_empty() || !self.name.chars().all(ok_char) {
            return Err(CniError::Config(format!(
                "network name `{}`: use letters, digits, `-`, `_` or `.`",
                self.name
            )));
        }
        Ok(())
    }

    /// The network configuration list (what a kubelet reads from `/etc/cni/net.d`): the
    /// bridge plugin with host-local address management and a default route through the
    /// bridge.
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": self.masquerade,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.data_dir,
                },
            }],
        })
    }

    /// The directory holding this network's leases: one file per address, named by it.
    pub fn lease_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// The network list that brings a Pod's loopback interface up (as container runtimes do
/// before the Pod's own network).
pub fn loopback_conflist() -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": "cni-loopback",
        "plugins": [{"type": "loopback"}],
    })
}

/// The configuration plugin `index` of `list` gets on standard input, as libcni builds it:
/// the plugin's object with the list's `name` and `cniVersion`, and the previous result as
/// `prevResult` when there is one.
pub fn plugin_config(
    list: &Value,
    index: usize,
    prev_result: Option<&Value>,
) -> Result<Value, CniError> {
    let plugin = list["plugins"]
        .get(index)
        .and_then(Value::as_object)
        .ok_or_else(|| CniError::Config(format!("the network list has no plugin {index}")))?;
    let mut conf = plugin.clone();
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Ok(Value::Object(conf))
}

/// The plugin types of a network list, in order.
pub fn plugin_types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(str::to_owned))
        .collect()
}

/// The environment of a plugin call. `netns` may be absent for DEL (the namespace is gone).
pub fn plugin_env(
    command: Command,
    container_id: &str,
    netns: Option<&Path>,
    ifname: &str,
    plugin_dir: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.as_str().to_owned()),
        ("CNI_CONTAINERID", container_id.to_owned()),
        (
            "CNI_NETNS",
            netns.map(|p| p.display().to_string()).unwrap_or_default(),
        ),
        ("CNI_IFNAME", ifname.to_owned()),
        ("CNI_PATH", plugin_dir.display().to_string()),
    ]
}

/// What a Pod got from its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The Pod's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway (the bridge's address).
    pub gateway: Option<Ipv4Addr>,
}

/// Reads a CNI 1.0.0 result: the IPv4 address of interface `ifname` inside the sandbox
/// (the first IPv4 address when no interface is named so).
pub fn parse_result(plugin: &str, stdout: &[u8], ifname: &str) -> Result<Attachment, CniError> {
    let bad = |problem: String| CniError::BadResult {
        plugin: plugin.to_owned(),
        problem,
    };
    let result: Value = serde_json::from_slice(stdout).map_err(|e| {
        bad(format!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        ))
    })?;
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let ips = result["ips"]
        .as_array()
        .ok_or_else(|| bad("the result lists no IP addresses".into()))?;
    let parsed = ips.iter().filter_map(|entry| {
        let (ip, prefix) = entry["address"].as_str()?.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let gateway = entry["gateway"].as_str().and_then(|g| g.parse().ok());
        let interface = entry["interface"]
            .as_u64()
            .and_then(|i| interfaces.get(i as usize));
        let ours = interface.is_some_and(|i| i["name"] == ifname && !i["sandbox"].is_null());
        Some((
            ours,
            Attachment {
                ip,
                prefix,
                gateway,
            },
        ))
    });
    let mut first = None;
    for (ours, attachment) in parsed {
        if ours {
            return Ok(attachment);
        }
        first.get_or_insert(attachment);
    }
    first.ok_or_else(|| bad("the result holds no IPv4 address".into()))
}

/// What a CNI error code means (the specification's well-known codes).
pub fn error_meaning(code: u32) -> &'static str {
    match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in the network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network configuration",
        11 => "try again later",
        100.. => "plugin-specific error",
        _ => "error",
    }
}

/// What to do about a plugin error, from its code and message; empty when nothing useful
/// can be said.
fn error_hint(code: u32, msg: &str) -> &'static str {
    let msg = msg.to_ascii_lowercase();
    if msg.contains("no ip addresses available") {
        "the Pod subnet is full: delete Pods or give the agent a larger --pod-subnet"
    } else if msg.contains("operation not permitted") || msg.contains("permission denied") {
        "Pod networks need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run the agent as root or with --pod-network=none"
    } else if code == 1 {
        "the installed plugins are older than CNI 1.0.0: install containernetworking-plugins 1.0 or newer"
    } else if msg.contains("failed to find plugin") {
        "install the standard plugins (`apt-get install -y containernetworking-plugins`)"
    } else if msg.contains("already has an ip address different") {
        "the bridge already carries another subnet (another agent, or an earlier --pod-subnet): give this agent its own --pod-bridge, or remove the old bridge with `ip link del BRIDGE` once no Pod uses it"
    } else if msg.contains("file exists") && msg.contains("bridge") {
        "another device already uses the bridge's name: choose another --pod-bridge"
    } else {
        ""
    }
}

/// Turns a failed plugin call into an error: the CNI error object the plugin wrote to
/// standard output when there is one, otherwise its standard error.
pub fn parse_error(
    plugin: &str,
    command: Command,
    status: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> CniError {
    let object: Option<Value> = serde_json::from_slice(stdout).ok();
    let (code, msg, details) = match object.as_ref().filter(|o| o["code"].is_u64()) {
        Some(o) => (
            o["code"].as_u64().unwrap_or(0) as u32,
            o["msg"].as_str().unwrap_or_default().to_owned(),
            o["details"].as_str().unwrap_or_default().to_owned(),
        ),
        None => {
            let text = String::from_utf8_lossy(stderr).trim().to_owned();
            let text = if text.is_empty() {
                String::from_utf8_lossy(stdout).trim().to_owned()
            } else {
                text
            };
            (0, format!("exited with {status}: {text}"), String::new())
        }
    };
    let hint = error_hint(code, &format!("{msg} {details}"));
    let mut message = format!("{}): {msg}", error_meaning(code));
    if !details.is_empty() && details != msg {
        message.push_str(&format!("; {details}"));
    }
    if !hint.is_empty() {
        message.push_str(&format!(" — {hint}"));
    }
    CniError::Plugin {
        plugin: plugin.to_owned(),
        command: command.as_str(),
        code,
        message,
    }
}

/// The first of `candidates` holding every plugin in `required`.
pub fn find_plugin_dir<'a>(
    candidates: impl IntoIterator<Item = &'a Path>,
    required: &[&str],
) -> Option<PathBuf> {
    candidates
        .into_iter()
        .find(|dir| required.iter().all(|p| dir.join(p).is_file()))
        .map(Path::to_path_buf)
}

/// Reads a host-local lease file: the container id on the first line (the interface name
/// follows on the second in plugins from 0.9 on).
pub fn parse_lease(text: &str) -> Option<&str> {
    text.lines()
        .next()
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

/// The leases in a host-local lease directory: address and container id.
pub fn leases(dir: &Path) -> Vec<(Ipv4Addr, String)> {
    let mut out: Vec<(Ipv4Addr, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let ip: Ipv4Addr = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            Some((ip, parse_lease(&text)?.to_owned()))
        })
        .collect();
    out.sort();
    out
}

/// Runs one plugin of `list` (its configuration built by [`plugin_config`]) and returns
/// what it wrote to standard output (the result for ADD, nothing for DEL and CHECK).
pub async fn call(
    plugin_dir: &Path,
    list: &Value,
    index: usize,
    command: Command,
    container_id: &str,
    netns: Option<&Path>,
    prev_result: Option<&Value>,
) -> Result<Vec<u8>, CniError> {
    use tokio::io::AsyncWriteExt;
    let conf = plugin_config(list, index, prev_result)?;
    let plugin = conf["type"].as_str().unwrap_or_default().to_owned();
    let binary = plugin_dir.join(&plugin);
    if plugin.is_empty() || !binary.is_file() {
        return Err(CniError::MissingPlugin {
            plugin,
            dir: plugin_dir.display().to_string(),
        });
    }
    let exec_err = |source| CniError::Exec {
        plugin: plugin.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(plugin_env(command, container_id, netns, IFNAME, plugin_dir))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec_err)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(&serde_json::to_vec(&conf).expect("a config serialises"))
        .await
        .map_err(exec_err)?;
    drop(stdin);
    let limit = std::time::Duration::from_secs(60);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| exec_err(std::io::Error::other("it ran for more than 60 s")))?
        .map_err(exec_err)?;
    tracing::debug!(
        plugin,
        command = command.as_str(),
        container_id,
        status = %out.status,
        "CNI plugin called"
    );
    if !out.status.success() {
        return Err(parse_error(
            &plugin,
            command,
            &out.status.to_string(),
            &out.stdout,
            &out.stderr,
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> BridgeNetwork {
        BridgeNetwork {
            name: "podsnap".into(),
            bridge: "podsnap0".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            data_dir: "/var/lib/podsnap/network/ipam".into(),
            masquerade: false,
        }
    }

    #[test]
    fn subnets_are_checked() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert!(s.contains("10.88.3.4".parse().unwrap()));
        assert!(!s.contains("10.89.0.1".parse().unwrap()));
        let err = "10.88.0.1/16".parse::<Subnet>().unwrap_err().to_string();
        assert!(err.contains("network address is 10.88.0.0/16"), "{err}");
        assert!("10.88.0.0".parse::<Subnet>().is_err());
        assert!("10.88.0.0/31".parse::<Subnet>().is_err());
        assert!("fd00::/64".parse::<Subnet>().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(network().validate().is_ok());
        let long = BridgeNetwork {
            bridge: "a-very-long-bridge0".into(),
            ..network()
        };
        assert!(long.validate().unwrap_err().to_string().contains("15"));
    }

    #[test]
    fn the_conflist_is_a_bridge_with_host_local() {
        let list = network().conflist();
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(plugin_types(&list), ["bridge"]);
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["bridge"], "podsnap0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/podsnap/network/ipam");
        assert_eq!(
            network().lease_dir(),
            Path::new("/var/lib/podsnap/network/ipam/podsnap")
        );
    }

    #[test]
    fn plugin_configs_carry_name_version_and_prev_result() {
        let list = network().conflist();
        let conf = plugin_config(&list, 0, None).unwrap();
        assert_eq!(conf["name"], "podsnap");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["type"], "bridge");
        assert!(conf.get("prevResult").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let conf = plugin_config(&list, 0, Some(&prev)).unwrap();
        assert_eq!(conf["prevResult"], prev);
        assert!(plugin_config(&list, 1, None).is_err());
        assert_eq!(plugin_types(&loopback_conflist()), ["loopback"]);
    }

    #[test]
    fn the_environment_is_a_kubelets() {
        let env = plugin_env(
            Command::Add,
            "default_web_1234_pod",
            Some(Path::new("/run/netns/x")),
            IFNAME,
            Path::new("/usr/lib/cni"),
        );
        let get = |k: &str| env.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(get("CNI_COMMAND"), "ADD");
        assert_eq!(get("CNI_CONTAINERID"), "default_web_1234_pod");
        assert_eq!(get("CNI_NETNS"), "/run/netns/x");
        assert_eq!(get("CNI_IFNAME"), "eth0");
        assert_eq!(get("CNI_PATH"), "/usr/lib/cni");
        let del = plugin_env(Command::Del, "x", None, IFNAME, Path::new("/p"));
        assert!(del.contains(&("CNI_NETNS", String::new())));
    }

    /// What Debian's bridge plugin (1.1.1) answered on this machine.
    const RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "podsnap0", "mac": "ba:d8:3f:f0:6e:b8"},
            {"name": "vetha5a9924a", "mac": "46:c1:62:f0:9c:a6"},
            {"name": "eth0", "mac": "06:0e:6f:da:d6:ea", "sandbox": "/run/netns/cnitest"}
        ],
        "ips": [{"interface": 2, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    #[test]
    fn results_give_the_pod_address() {
        let a = parse_result("bridge", RESULT.as_bytes(), IFNAME).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 77, 0, 1)));
        // An address on the sandbox's interface wins over others.
        let two = r#"{"interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"interface": 0, "address": "10.0.0.1/8"}, {"interface": 1, "address": "10.0.0.9/8"}]}"#;
        assert_eq!(
            parse_result("bridge", two.as_bytes(), IFNAME).unwrap().ip,
            Ipv4Addr::new(10, 0, 0, 9)
        );
        let none = parse_result("bridge", br#"{"ips": []}"#, IFNAME).unwrap_err();
        assert!(none.to_string().contains("no IPv4 address"), "{none}");
        let junk = parse_result("bridge", b"oops", IFNAME).unwrap_err();
        assert!(junk.to_string().contains("not JSON"), "{junk}");
    }

    #[test]
    fn errors_say_what_to_do() {
        let full = parse_error(
            "bridge",
            Command::Add,
            "exit status: 1",
            br#"{"code": 999, "msg": "failed to allocate for range 0: no IP addresses available in range set: 10.88.0.1-10.88.0.6"}"#,
            b"",
        );
        let text = full.to_string();
        assert!(
            text.contains("CNI plugin `bridge` ADD failed (code 999"),
            "{text}"
        );
        assert!(text.contains("--pod-subnet"), "{text}");
        let version = parse_error(
            "bridge",
            Command::Add,
            "exit status: 1",
            br#"{"code": 1, "msg": "incompatible CNI versions", "details": "config is \"1.0.0\", plugin supports [\"0.1.0\"]"}"#,
            b"",
        );
        let text = version.to_string();
        assert!(text.contains("incompatible CNI version"), "{text}");
        assert!(text.contains("plugin supports"), "{text}");
        assert!(text.contains("1.0 or newer"), "{text}");
        let raw = parse_error(
            "bridge",
            Command::Del,
            "signal: 9",
            b"",
            b"operation not permitted",
        );
        let text = raw.to_string();
        assert!(text.contains("DEL failed"), "{text}");
        assert!(text.contains("run the agent as root"), "{text}");
    }

    #[test]
    fn plugin_dirs_and_leases_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let full = dir.path().join("full");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        for p in REQUIRED_PLUGINS {
            std::fs::write(full.join(p), b"").unwrap();
        }
        assert_eq!(
            find_plugin_dir([empty.as_path(), full.as_path()], REQUIRED_PLUGINS),
            Some(full.clone())
        );
        assert_eq!(find_plugin_dir([empty.as_path()], REQUIRED_PLUGINS), None);
        let leases_dir = dir.path().join("leases");
        std::fs::create_dir_all(&leases_dir).unwrap();
        std::fs::write(leases_dir.join("10.88.0.2"), "default_a_1_pod\r\neth0").unwrap();
        std::fs::write(leases_dir.join("10.88.0.3"), "default_b_2_pod").unwrap();
        std::fs::write(leases_dir.join("last_reserved_ip.0"), "10.88.0.3").unwrap();
        std::fs::write(leases_dir.join("lock"), "").unwrap();
        assert_eq!(
            leases(&leases_dir),
            vec![
                (Ipv4Addr::new(10, 88, 0, 2), "default_a_1_pod".to_owned()),
                (Ipv4Addr::new(10, 88, 0, 3), "default_b_2_pod".to_owned()),
            ]
        );
    }
}
