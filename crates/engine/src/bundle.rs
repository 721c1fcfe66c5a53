//! OCI runtime bundles (`config.json` beside a root file system path) for runsc.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{ContainerSpec, EngineError, MountKind, Network, Result};

/// Annotation runsc (like containerd's CRI) uses to tell a sandbox's root container from the
/// containers inside it.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation naming the sandbox a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Whether a container is the sandbox's root or a container inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The root (pause) container that creates the sandbox.
    Root,
    /// A container joining an existing sandbox.
    Member,
}

/// The OCI runtime config for `spec`.
pub fn config_json(spec: &ContainerSpec, sandbox_id: &str, role: Role, network: &Network) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &spec.mounts {
        let mut options = vec![if m.read_only { "ro" } else { "rw" }];
        let value = match m.kind {
            MountKind::Bind => {
                options.insert(0, "rbind");
                json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options})
            }
            MountKind::Tmpfs => {
                json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": options})
            }
        };
        mounts.push(value);
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match network {
        Network::Loopback => namespaces.push(json!({"type": "network"})),
        Network::Namespace(path) | Network::Netstack(path) => {
            namespaces.push(json!({"type": "network", "path": path}))
        }
        Network::Host => {}
    }
    let mut annotations: serde_json::Map<String, Value> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    annotations.insert(
        CONTAINER_TYPE.into(),
        json!(match role {
            Role::Root => "sandbox",
            Role::Member => "container",
        }),
    );
    annotations.insert(SANDBOX_ID.into(), json!(sandbox_id));
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.0, "gid": spec.user.1},
            "args": spec.args,
            "env": spec.env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES, "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
            "noNewPrivileges": true
        },
        "root": {"path": spec.rootfs, "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// The capabilities a Kubernetes container gets by default (containerd's list).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Writes a bundle directory for `spec` under `bundles`; returns its path.
pub fn write_bundle(
    bundles: &Path,
    spec: &ContainerSpec,
    sandbox_id: &str,
    role: Role,
    network: &Network,
) -> Result<PathBuf> {
    let dir = bundles.join(&spec.id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| EngineError::io(format!("creating the bundle {}", dir.display()), e))?;
    let config = config_json(spec, sandbox_id, role, network);
    let text = serde_json::to_vec_pretty(&config).expect("a config serialises");
    std::fs::write(dir.join("config.json"), text)
        .map_err(|e| EngineError::io(format!("writing {}/config.json", dir.display()), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mount;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            rootfs: "/var/lib/podsnap/rootfs/c1".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            user: (0, 0),
            hostname: "pod-a".into(),
            mounts: vec![Mount {
                destination: "/data".into(),
                source: "/srv/data".into(),
                kind: MountKind::Bind,
                read_only: true,
            }],
            log_file: "/tmp/log".into(),
            annotations: [("dev.gvisor.x".to_string(), "1".to_string())].into(),
        }
    }

    #[test]
    fn roots_and_members_are_annotated() {
        let root = config_json(&spec(), "sb", Role::Root, &Network::Loopback);
        assert_eq!(root["annotations"][CONTAINER_TYPE], "sandbox");
        assert_eq!(root["annotations"][SANDBOX_ID], "sb");
        assert_eq!(root["annotations"]["dev.gvisor.x"], "1");
        let member = config_json(&spec(), "sb", Role::Member, &Network::Loopback);
        assert_eq!(member["annotations"][CONTAINER_TYPE], "container");
        assert_eq!(member["process"]["cwd"], "/");
        assert_eq!(member["hostname"], "pod-a");
    }

    #[test]
    fn networks_and_mounts_map_to_oci() {
        let has_netns = |v: &Value| {
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        };
        assert!(has_netns(&config_json(
            &spec(),
            "sb",
            Role::Root,
            &Network::Loopback
        )));
        assert!(!has_netns(&config_json(
            &spec(),
            "sb",
            Role::Root,
            &Network::Host
        )));
        let joined = config_json(
            &spec(),
            "sb",
            Role::Root,
            &Network::Namespace("/var/run/netns/p".into()),
        );
        let netns = joined["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(netns["path"], "/var/run/netns/p");
        // The netstack joins the Pod's namespace the same way.
        let netstack = config_json(
            &spec(),
            "sb",
            Role::Root,
            &Network::Netstack("/state/network/netns/p".into()),
        );
        assert!(
            netstack["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network" && n["path"] == "/state/network/netns/p")
        );
        let bind = &joined["mounts"][3];
        assert_eq!(bind["destination"], "/data");
        assert_eq!(bind["options"], json!(["rbind", "ro"]));
    }
}
