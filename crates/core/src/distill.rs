//! The distilled Pod spec: the part of a Pod that decides whether a snapshot fits it, in a
//! canonical form, and its SHA-256 hash.
//!
//! The field list is exactly `docs/distilled-pod-spec.md`'s. Canonicalisation:
//! - Kubernetes API-server defaults are applied to both sides (`protocol: TCP`,
//!   `terminationMessagePath: /dev/termination-log`, `terminationMessagePolicy: File`,
//!   `dnsPolicy: ClusterFirst`, a volume without a source is an `emptyDir`, `defaultMode: 420`
//!   on configMap/secret/downwardAPI/projected volumes, and the other volume-source defaults);
//! - Go's plain (non-pointer) booleans count `false` as absent (`hostNetwork`, `stdin`,
//!   `readOnly`, ...); pointer booleans keep an explicit `false`, as the API server does;
//! - null, empty strings, empty lists and empty objects count as absent;
//! - maps are sorted; `volumes` (keyed by name) and `ports` (keyed by port and protocol) are
//!   sorted; every other list keeps its order (containers, args, volumeMounts, ...).
//!
//! The hash covers a format version, so a deliberate change of the rules is visible. Golden
//! tests pin hashes of known Pods: changing one is a breaking change for stored snapshots.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Version of the distillation rules; part of the hashed text.
pub const DISTILL_VERSION: u32 = 1;

/// Annotation prefix of the sandbox runtime settings that count.
pub const RUNTIME_ANNOTATION_PREFIX: &str = "dev.gvisor.";

/// The only label that counts.
pub const JOB_COMPLETION_INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";

/// A Pod reduced to the fields that decide snapshot compatibility, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistilledSpec {
    canonical: Value,
}

/// The SHA-256 of a distilled spec's canonical JSON, as lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SpecHash(String);

impl SpecHash {
    /// A hash read back from its 64 lower-case hex digits (e.g. from a PodSnapshot's status);
    /// `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self(hex.to_owned()))
    }

    /// The hash as 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpecHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a Pod could not be distilled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DistillError {
    /// The Pod has no `spec`.
    #[error("the Pod has no spec; a Pod needs a spec with at least one container")]
    MissingSpec,
}

impl DistilledSpec {
    /// Distils a Pod.
    pub fn from_pod(pod: &Pod) -> Result<Self, DistillError> {
        let spec = pod.spec.as_ref().ok_or(DistillError::MissingSpec)?;
        Ok(Self::from_parts(&pod.metadata, spec))
    }

    /// Distils a Pod given as metadata and spec (e.g. a Deployment's Pod template).
    pub fn from_parts(metadata: &ObjectMeta, spec: &PodSpec) -> Self {
        let mut root = Map::new();
        root.insert("distillVersion".into(), json!(DISTILL_VERSION));
        let annotations: BTreeMap<&String, &String> = metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(RUNTIME_ANNOTATION_PREFIX))
            .collect();
        let labels: BTreeMap<&String, &String> = metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| k.as_str() == JOB_COMPLETION_INDEX_LABEL)
            .collect();
        root.insert(
            "metadata".into(),
            json!({ "annotations": annotations, "labels": labels }),
        );
        root.insert("spec".into(), distil_pod_spec(spec));
        let mut canonical = Value::Object(root);
        prune_empty(&mut canonical);
        Self { canonical }
    }

    /// The canonical form as a JSON value.
    pub fn as_value(&self) -> &Value {
        &self.canonical
    }

    /// The canonical JSON text that is hashed: compact, keys sorted.
    pub fn canonical_json(&self) -> String {
        let mut out = String::new();
        write_canonical(&self.canonical, &mut out);
        out
    }

    /// The canonical form, indented for people.
    pub fn to_pretty_json(&self) -> String {
        let sorted: Value = serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null);
        serde_json::to_string_pretty(&sorted).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON.
    pub fn hash(&self) -> SpecHash {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        SpecHash(hex::encode(digest))
    }
}

fn distil_pod_spec(spec: &PodSpec) -> Value {
    let mut volumes: Vec<Value> = spec.volumes.iter().flatten().map(distil_volume).collect();
    volumes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "volumes": volumes,
        "initContainers": spec.init_containers.iter().flatten().map(distil_container).collect::<Vec<_>>(),
        "containers": spec.containers.iter().map(distil_container).collect::<Vec<_>>(),
        "dnsPolicy": spec.dns_policy.as_deref().filter(|s| !s.is_empty()).unwrap_or("ClusterFirst"),
        "automountServiceAccountToken": spec.automount_service_account_token,
        "hostNetwork": plain_bool(spec.host_network),
        "hostPID": plain_bool(spec.host_pid),
        "hostIPC": plain_bool(spec.host_ipc),
        "shareProcessNamespace": spec.share_process_namespace,
        "securityContext": to_value(&spec.security_context),
        "dnsConfig": to_value(&spec.dns_config),
        "runtimeClassName": spec.runtime_class_name,
        "os": to_value(&spec.os),
        "hostUsers": spec.host_users,
    })
}

fn distil_container(c: &Container) -> Value {
    let mut ports: Vec<Value> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            json!({
                "name": p.name,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().filter(|s| !s.is_empty()).unwrap_or("TCP"),
            })
        })
        .collect();
    ports.sort_by_key(|p| {
        (
            p["containerPort"].as_i64(),
            p["protocol"].as_str().map(str::to_owned),
            p["name"].as_str().map(str::to_owned),
        )
    });
    let mounts: Vec<Value> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            json!({
                "name": m.name,
                "readOnly": plain_bool(m.read_only),
                "recursiveReadOnly": m.recursive_read_only,
                "mountPath": m.mount_path,
                "subPath": m.sub_path,
                "mountPropagation": m.mount_propagation,
                "subPathExpr": m.sub_path_expr,
            })
        })
        .collect();
    let devices: Vec<Value> = c
        .volume_devices
        .iter()
        .flatten()
        .map(|d| json!({ "name": d.name }))
        .collect();
    let lifecycle = c.lifecycle.as_ref().map(|l| {
        let mut handlers = json!({
            "postStart": to_value(&l.post_start),
            "preStop": to_value(&l.pre_stop),
        });
        for handler in ["postStart", "preStop"] {
            if let Some(http) = handlers[handler].get_mut("httpGet")
                && http.get("scheme").is_none_or(|s| s.as_str() == Some(""))
            {
                http["scheme"] = json!("HTTP");
            }
        }
        handlers
    });
    json!({
        "name": c.name,
        "image": c.image,
        "command": c.command,
        "args": c.args,
        "workingDir": c.working_dir,
        "ports": ports,
        "volumeMounts": mounts,
        "volumeDevices": devices,
        "lifecycle": lifecycle,
        "terminationMessagePath": c.termination_message_path.as_deref().filter(|s| !s.is_empty()).unwrap_or("/dev/termination-log"),
        "terminationMessagePolicy": c.termination_message_policy.as_deref().filter(|s| !s.is_empty()).unwrap_or("File"),
        "securityContext": to_value(&c.security_context),
        "stdin": plain_bool(c.stdin),
        "stdinOnce": plain_bool(c.stdin_once),
        "tty": plain_bool(c.tty),
    })
}

/// A volume as `{name, source, config}`; `source` names the volume type, so an `emptyDir`
/// with no settings stays distinct from other sources after empty objects are pruned.
fn distil_volume(volume: &Volume) -> Value {
    let mut all = match serde_json::to_value(volume) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    all.remove("name");
    let mut sources: Vec<(String, Value)> = all.into_iter().filter(|(_, v)| !v.is_null()).collect();
    if sources.is_empty() {
        sources.push(("emptyDir".into(), json!({})));
    }
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    for (kind, config) in &mut sources {
        apply_volume_defaults(kind, config);
    }
    let source = sources
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let config: Map<String, Value> = sources.into_iter().collect();
    json!({ "name": volume.name, "source": source, "config": config })
}

/// The API server's defaults for volume sources (SetDefaults_* in Kubernetes' core/v1).
fn apply_volume_defaults(kind: &str, config: &mut Value) {
    let Value::Object(map) = config else { return };
    let mut default = |key: &str, value: Value| {
        map.entry(key.to_owned()).or_insert(value);
    };
    match kind {
        "configMap" | "secret" | "downwardAPI" | "projected" => default("defaultMode", json!(420)),
        "iscsi" => default("iscsiInterface", json!("default")),
        "rbd" => {
            default("pool", json!("rbd"));
            default("user", json!("admin"));
            default("keyring", json!("/etc/ceph/keyring"));
        }
        "azureDisk" => {
            default("cachingMode", json!("ReadWrite"));
            default("fsType", json!("ext4"));
            default("readOnly", json!(false));
            default("kind", json!("Shared"));
        }
        "scaleIO" => {
            default("storageMode", json!("ThinProvisioned"));
            default("fsType", json!("xfs"));
        }
        _ => {}
    }
    if kind == "downwardAPI" {
        default_field_ref_api_version(map.get_mut("items"));
    }
    if kind == "projected"
        && let Some(Value::Array(sources)) = map.get_mut("sources")
    {
        for source in sources {
            default_field_ref_api_version(source.pointer_mut("/downwardAPI/items"));
            if let Some(token) = source.get_mut("serviceAccountToken")
                && let Value::Object(token) = token
            {
                token.entry("expirationSeconds").or_insert(json!(3600));
            }
        }
    }
    // Go plain booleans: `readOnly: false` is the same as no readOnly.
    if map.get("readOnly") == Some(&Value::Bool(false)) && kind != "csi" {
        map.remove("readOnly");
    }
}

fn default_field_ref_api_version(items: Option<&mut Value>) {
    if let Some(Value::Array(items)) = items {
        for item in items {
            if let Some(Value::Object(field_ref)) = item.get_mut("fieldRef") {
                field_ref.entry("apiVersion").or_insert(json!("v1"));
            }
        }
    }
}

fn plain_bool(value: Option<bool>) -> Option<bool> {
    value.filter(|b| *b)
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Removes nulls, empty strings, empty lists and empty objects, bottom-up.
fn prune_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                prune_empty(v);
            }
            map.retain(|_, v| !is_empty(v));
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                prune_empty(v);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Compact JSON with object keys sorted, whatever map type serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
