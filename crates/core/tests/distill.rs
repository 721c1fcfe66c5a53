//! Golden tests of the distilled Pod spec: one pair of Pods per field of
//! docs/distilled-pod-spec.md that must hash differently, pairs that differ only in ignored
//! fields or in defaulted values that must hash equal, pinned hashes (a change is a breaking
//! change for every stored snapshot), and property tests.

use k8s_openapi::api::core::v1::Pod;
use podsnap_core::DistilledSpec;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A Pod that sets every field of the distilled list.
fn base() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "base",
            "namespace": "default",
            "labels": {"app": "web", "batch.kubernetes.io/job-completion-index": "3"},
            "annotations": {"dev.gvisor.internal.checkpoint.enable": "true", "note": "x"}
        },
        "spec": {
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "host", "hostPath": {"path": "/srv"}},
                {"name": "blk", "persistentVolumeClaim": {"claimName": "blk"}},
                {"name": "scratch", "emptyDir": {}}
            ],
            "initContainers": [
                {"name": "init", "image": "busybox:1", "command": ["sh", "-c", "true"]}
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/app:1.0",
                    "command": ["python3", "server.py"],
                    "args": ["--port", "8080", "--verbose"],
                    "workingDir": "/app",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data", "subPath": "sub", "readOnly": true},
                        {"name": "cfg", "mountPath": "/etc/app"}
                    ],
                    "volumeDevices": [{"name": "blk", "devicePath": "/dev/xvda"}],
                    "lifecycle": {
                        "postStart": {"exec": {"command": ["echo", "hi"]}},
                        "preStop": {"httpGet": {"path": "/quit", "port": 8080}}
                    },
                    "terminationMessagePath": "/tmp/term",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
                    "stdin": true,
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"requests": {"cpu": "1"}}
                },
                {"name": "sidecar", "image": "registry.example/sidecar:2"}
            ],
            "dnsPolicy": "Default",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["svc.local"]},
            "runtimeClassName": "gvisor",
            "os": {"name": "linux"},
            "nodeName": "node-a"
        }
    })
}

fn hash(pod: &Value) -> String {
    let pod: Pod = serde_json::from_value(pod.clone()).expect("a valid Pod");
    DistilledSpec::from_pod(&pod).unwrap().hash().to_string()
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set(mut pod: Value, pointer: &str, value: Value) -> Value {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let mut here = &mut pod;
    for part in &parts[..parts.len() - 1] {
        let part = part.replace("~1", "/");
        here = match here {
            Value::Array(items) => &mut items[part.parse::<usize>().unwrap()],
            other => {
                if !other.is_object() {
                    *other = json!({});
                }
                other
                    .as_object_mut()
                    .unwrap()
                    .entry(part)
                    .or_insert(json!({}))
            }
        };
    }
    let last = parts[parts.len() - 1].replace("~1", "/");
    match here {
        Value::Array(items) => {
            let index = last.parse::<usize>().unwrap();
            if index == items.len() {
                items.push(value);
            } else {
                items[index] = value;
            }
        }
        other => {
            other.as_object_mut().unwrap().insert(last, value);
        }
    }
    pod
}

fn remove(mut pod: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/");
    if let Some(Value::Object(map)) = pod.pointer_mut(parent) {
        map.remove(&key);
    }
    pod
}

const C0: &str = "/spec/containers/0";
const SC: &str = "/spec/containers/0/securityContext";
const PSC: &str = "/spec/securityContext";

/// One mutation per field of the distilled list (and more): each must change the hash.
fn must_differ() -> Vec<(&'static str, Value)> {
    let b = base;
    vec![
        (
            "gVisor annotation value",
            set(
                b(),
                "/metadata/annotations/dev.gvisor.internal.checkpoint.enable",
                json!("false"),
            ),
        ),
        (
            "gVisor annotation added",
            set(
                b(),
                "/metadata/annotations/dev.gvisor.spec.rootfs.overlay",
                json!("memory"),
            ),
        ),
        (
            "job-completion-index label",
            set(
                b(),
                "/metadata/labels/batch.kubernetes.io~1job-completion-index",
                json!("4"),
            ),
        ),
        (
            "volume name",
            set(b(), "/spec/volumes/0/name", json!("data2")),
        ),
        (
            "volume source type",
            set(
                b(),
                "/spec/volumes/0",
                json!({"name": "data", "emptyDir": {}}),
            ),
        ),
        (
            "persistentVolumeClaim claimName",
            set(
                b(),
                "/spec/volumes/0/persistentVolumeClaim/claimName",
                json!("other"),
            ),
        ),
        (
            "hostPath path",
            set(b(), "/spec/volumes/2/hostPath/path", json!("/srv2")),
        ),
        (
            "hostPath type",
            set(b(), "/spec/volumes/2/hostPath/type", json!("Directory")),
        ),
        (
            "configMap name",
            set(b(), "/spec/volumes/1/configMap/name", json!("cfg2")),
        ),
        (
            "configMap defaultMode",
            set(b(), "/spec/volumes/1/configMap/defaultMode", json!(256)),
        ),
        (
            "emptyDir medium",
            set(b(), "/spec/volumes/4/emptyDir/medium", json!("Memory")),
        ),
        (
            "volume added",
            set(
                b(),
                "/spec/volumes/5",
                json!({"name": "more", "emptyDir": {}}),
            ),
        ),
        (
            "container name",
            set(b(), &format!("{C0}/name"), json!("app2")),
        ),
        (
            "image",
            set(
                b(),
                &format!("{C0}/image"),
                json!("registry.example/app:1.1"),
            ),
        ),
        (
            "command",
            set(b(), &format!("{C0}/command"), json!(["python3", "main.py"])),
        ),
        (
            "args order",
            set(
                b(),
                &format!("{C0}/args"),
                json!(["--verbose", "--port", "8080"]),
            ),
        ),
        (
            "args value",
            set(b(), &format!("{C0}/args/1"), json!("9090")),
        ),
        (
            "workingDir",
            set(b(), &format!("{C0}/workingDir"), json!("/srv")),
        ),
        (
            "port name",
            set(b(), &format!("{C0}/ports/0/name"), json!("web")),
        ),
        (
            "containerPort",
            set(b(), &format!("{C0}/ports/0/containerPort"), json!(8081)),
        ),
        (
            "port protocol",
            set(b(), &format!("{C0}/ports/0/protocol"), json!("UDP")),
        ),
        (
            "port added",
            set(
                b(),
                &format!("{C0}/ports/1"),
                json!({"containerPort": 9090}),
            ),
        ),
        (
            "volumeMount name",
            set(b(), &format!("{C0}/volumeMounts/1/name"), json!("host")),
        ),
        (
            "volumeMount readOnly",
            set(b(), &format!("{C0}/volumeMounts/0/readOnly"), json!(false)),
        ),
        (
            "volumeMount recursiveReadOnly",
            set(
                b(),
                &format!("{C0}/volumeMounts/0/recursiveReadOnly"),
                json!("Enabled"),
            ),
        ),
        (
            "volumeMount mountPath",
            set(
                b(),
                &format!("{C0}/volumeMounts/0/mountPath"),
                json!("/data2"),
            ),
        ),
        (
            "volumeMount subPath",
            set(b(), &format!("{C0}/volumeMounts/0/subPath"), json!("other")),
        ),
        (
            "volumeMount mountPropagation",
            set(
                b(),
                &format!("{C0}/volumeMounts/0/mountPropagation"),
                json!("HostToContainer"),
            ),
        ),
        (
            "volumeMount subPathExpr",
            set(
                b(),
                &format!("{C0}/volumeMounts/1/subPathExpr"),
                json!("$(POD_NAME)"),
            ),
        ),
        (
            "volumeMounts order",
            set(
                b(),
                &format!("{C0}/volumeMounts"),
                json!([{"name": "cfg", "mountPath": "/etc/app"}, {"name": "data", "mountPath": "/data", "subPath": "sub", "readOnly": true}]),
            ),
        ),
        (
            "volumeDevice name",
            set(b(), &format!("{C0}/volumeDevices/0/name"), json!("data")),
        ),
        (
            "lifecycle postStart",
            set(
                b(),
                &format!("{C0}/lifecycle/postStart/exec/command"),
                json!(["echo", "bye"]),
            ),
        ),
        (
            "lifecycle preStop",
            set(
                b(),
                &format!("{C0}/lifecycle/preStop/httpGet/path"),
                json!("/stop"),
            ),
        ),
        (
            "terminationMessagePath",
            set(
                b(),
                &format!("{C0}/terminationMessagePath"),
                json!("/dev/termination-log"),
            ),
        ),
        (
            "terminationMessagePolicy",
            set(
                b(),
                &format!("{C0}/terminationMessagePolicy"),
                json!("File"),
            ),
        ),
        ("stdin", set(b(), &format!("{C0}/stdin"), json!(false))),
        (
            "stdinOnce",
            set(b(), &format!("{C0}/stdinOnce"), json!(true)),
        ),
        ("tty", set(b(), &format!("{C0}/tty"), json!(true))),
        (
            "securityContext.allowPrivilegeEscalation",
            set(b(), &format!("{SC}/allowPrivilegeEscalation"), json!(false)),
        ),
        (
            "securityContext.appArmorProfile",
            set(
                b(),
                &format!("{SC}/appArmorProfile"),
                json!({"type": "RuntimeDefault"}),
            ),
        ),
        (
            "securityContext.capabilities.add",
            set(b(), &format!("{SC}/capabilities/add"), json!(["NET_ADMIN"])),
        ),
        (
            "securityContext.capabilities.drop",
            set(b(), &format!("{SC}/capabilities/drop"), json!(["NET_RAW"])),
        ),
        (
            "securityContext.privileged",
            set(b(), &format!("{SC}/privileged"), json!(true)),
        ),
        (
            "securityContext.procMount",
            set(b(), &format!("{SC}/procMount"), json!("Unmasked")),
        ),
        (
            "securityContext.readOnlyRootFilesystem",
            set(b(), &format!("{SC}/readOnlyRootFilesystem"), json!(true)),
        ),
        (
            "securityContext.runAsGroup",
            set(b(), &format!("{SC}/runAsGroup"), json!(3000)),
        ),
        (
            "securityContext.runAsNonRoot",
            set(b(), &format!("{SC}/runAsNonRoot"), json!(true)),
        ),
        (
            "securityContext.runAsUser",
            set(b(), &format!("{SC}/runAsUser"), json!(0)),
        ),
        (
            "securityContext.seLinuxOptions",
            set(
                b(),
                &format!("{SC}/seLinuxOptions"),
                json!({"level": "s0:c1"}),
            ),
        ),
        (
            "securityContext.seccompProfile",
            set(
                b(),
                &format!("{SC}/seccompProfile"),
                json!({"type": "RuntimeDefault"}),
            ),
        ),
        (
            "securityContext.windowsOptions",
            set(
                b(),
                &format!("{SC}/windowsOptions"),
                json!({"runAsUserName": "u"}),
            ),
        ),
        (
            "init container image",
            set(b(), "/spec/initContainers/0/image", json!("busybox:2")),
        ),
        (
            "init container command",
            set(b(), "/spec/initContainers/0/command/2", json!("false")),
        ),
        (
            "init container securityContext",
            set(
                b(),
                "/spec/initContainers/0/securityContext",
                json!({"privileged": true}),
            ),
        ),
        (
            "init container added",
            set(
                b(),
                "/spec/initContainers/1",
                json!({"name": "init2", "image": "busybox:1"}),
            ),
        ),
        ("containers order", {
            let mut pod = base();
            pod["spec"]["containers"].as_array_mut().unwrap().reverse();
            pod
        }),
        (
            "container added",
            set(
                b(),
                "/spec/containers/2",
                json!({"name": "third", "image": "x"}),
            ),
        ),
        ("dnsPolicy", set(b(), "/spec/dnsPolicy", json!("None"))),
        (
            "automountServiceAccountToken",
            set(b(), "/spec/automountServiceAccountToken", json!(true)),
        ),
        ("hostNetwork", set(b(), "/spec/hostNetwork", json!(true))),
        ("hostPID", set(b(), "/spec/hostPID", json!(true))),
        ("hostIPC", set(b(), "/spec/hostIPC", json!(true))),
        (
            "shareProcessNamespace",
            set(b(), "/spec/shareProcessNamespace", json!(true)),
        ),
        (
            "pod securityContext.appArmorProfile",
            set(
                b(),
                &format!("{PSC}/appArmorProfile"),
                json!({"type": "Unconfined"}),
            ),
        ),
        (
            "pod securityContext.fsGroup",
            set(b(), &format!("{PSC}/fsGroup"), json!(2001)),
        ),
        (
            "pod securityContext.fsGroupChangePolicy",
            set(
                b(),
                &format!("{PSC}/fsGroupChangePolicy"),
                json!("OnRootMismatch"),
            ),
        ),
        (
            "pod securityContext.runAsGroup",
            set(b(), &format!("{PSC}/runAsGroup"), json!(5)),
        ),
        (
            "pod securityContext.runAsNonRoot",
            set(b(), &format!("{PSC}/runAsNonRoot"), json!(true)),
        ),
        (
            "pod securityContext.runAsUser",
            set(b(), &format!("{PSC}/runAsUser"), json!(1001)),
        ),
        (
            "pod securityContext.seLinuxChangePolicy",
            set(
                b(),
                &format!("{PSC}/seLinuxChangePolicy"),
                json!("Recursive"),
            ),
        ),
        (
            "pod securityContext.seLinuxOptions",
            set(b(), &format!("{PSC}/seLinuxOptions"), json!({"user": "u"})),
        ),
        (
            "pod securityContext.seccompProfile",
            set(
                b(),
                &format!("{PSC}/seccompProfile"),
                json!({"type": "Localhost", "localhostProfile": "p.json"}),
            ),
        ),
        (
            "pod securityContext.supplementalGroups",
            set(b(), &format!("{PSC}/supplementalGroups"), json!([10, 20])),
        ),
        (
            "pod securityContext.supplementalGroupsPolicy",
            set(
                b(),
                &format!("{PSC}/supplementalGroupsPolicy"),
                json!("Strict"),
            ),
        ),
        (
            "pod securityContext.sysctls",
            set(
                b(),
                &format!("{PSC}/sysctls"),
                json!([{"name": "net.core.somaxconn", "value": "1024"}]),
            ),
        ),
        (
            "pod securityContext.windowsOptions",
            set(
                b(),
                &format!("{PSC}/windowsOptions"),
                json!({"hostProcess": false}),
            ),
        ),
        (
            "dnsConfig nameservers",
            set(b(), "/spec/dnsConfig/nameservers/0", json!("10.0.0.11")),
        ),
        (
            "dnsConfig searches",
            set(b(), "/spec/dnsConfig/searches", json!(["other.local"])),
        ),
        (
            "dnsConfig options",
            set(
                b(),
                "/spec/dnsConfig/options",
                json!([{"name": "ndots", "value": "2"}]),
            ),
        ),
        (
            "runtimeClassName",
            set(b(), "/spec/runtimeClassName", json!("runc")),
        ),
        ("os", set(b(), "/spec/os/name", json!("windows"))),
        ("hostUsers", set(b(), "/spec/hostUsers", json!(false))),
    ]
}

/// Mutations of ignored fields, and of values only written out that Kubernetes would default:
/// each must keep the hash.
fn must_equal() -> Vec<(&'static str, Value)> {
    let b = base;
    vec![
        ("Pod name", set(b(), "/metadata/name", json!("replica-7"))),
        ("namespace", set(b(), "/metadata/namespace", json!("prod"))),
        ("nodeName", set(b(), "/spec/nodeName", json!("node-b"))),
        (
            "nodeSelector",
            set(b(), "/spec/nodeSelector", json!({"pool": "gpu"})),
        ),
        (
            "resources",
            set(
                b(),
                &format!("{C0}/resources"),
                json!({"limits": {"memory": "8Gi"}}),
            ),
        ),
        (
            "env value",
            set(b(), &format!("{C0}/env/0/value"), json!("2")),
        ),
        (
            "env added",
            set(
                b(),
                &format!("{C0}/env/1"),
                json!({"name": "B", "value": "x"}),
            ),
        ),
        (
            "envFrom",
            set(
                b(),
                &format!("{C0}/envFrom"),
                json!([{"configMapRef": {"name": "c"}}]),
            ),
        ),
        (
            "unrelated label",
            set(b(), "/metadata/labels/pod-template-hash", json!("abc123")),
        ),
        (
            "unrelated annotation",
            set(b(), "/metadata/annotations/note", json!("y")),
        ),
        (
            "podsnap pin annotation",
            set(
                b(),
                "/metadata/annotations/podsnap.dev~1ps-name",
                json!("s1"),
            ),
        ),
        (
            "tolerations",
            set(
                b(),
                "/spec/tolerations",
                json!([{"key": "gpu", "operator": "Exists"}]),
            ),
        ),
        (
            "affinity",
            set(
                b(),
                "/spec/affinity",
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "In", "values": ["a"]}]}]}}}),
            ),
        ),
        (
            "topologySpreadConstraints",
            set(
                b(),
                "/spec/topologySpreadConstraints",
                json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]),
            ),
        ),
        (
            "priorityClassName",
            set(b(), "/spec/priorityClassName", json!("high")),
        ),
        (
            "schedulerName",
            set(b(), "/spec/schedulerName", json!("custom")),
        ),
        (
            "serviceAccountName",
            set(b(), "/spec/serviceAccountName", json!("sa")),
        ),
        (
            "restartPolicy",
            set(b(), "/spec/restartPolicy", json!("Never")),
        ),
        (
            "terminationGracePeriodSeconds",
            set(b(), "/spec/terminationGracePeriodSeconds", json!(5)),
        ),
        (
            "imagePullPolicy",
            set(b(), &format!("{C0}/imagePullPolicy"), json!("Always")),
        ),
        (
            "imagePullSecrets",
            set(b(), "/spec/imagePullSecrets", json!([{"name": "reg"}])),
        ),
        (
            "readinessProbe",
            set(
                b(),
                &format!("{C0}/readinessProbe"),
                json!({"tcpSocket": {"port": 8080}}),
            ),
        ),
        (
            "livenessProbe",
            set(
                b(),
                &format!("{C0}/livenessProbe"),
                json!({"exec": {"command": ["true"]}}),
            ),
        ),
        (
            "hostPort",
            set(b(), &format!("{C0}/ports/0/hostPort"), json!(80)),
        ),
        (
            "volumeDevice devicePath",
            set(
                b(),
                &format!("{C0}/volumeDevices/0/devicePath"),
                json!("/dev/xvdb"),
            ),
        ),
        (
            "lifecycle stopSignal",
            set(b(), &format!("{C0}/lifecycle/stopSignal"), json!("SIGUSR1")),
        ),
        ("hostname", set(b(), "/spec/hostname", json!("h"))),
        (
            "activeDeadlineSeconds",
            set(b(), "/spec/activeDeadlineSeconds", json!(60)),
        ),
        (
            "status",
            set(
                b(),
                "/status",
                json!({"phase": "Running", "podIP": "10.1.2.3"}),
            ),
        ),
        // Values Kubernetes defaults, written out or left out.
        (
            "explicit protocol TCP",
            remove(b(), &format!("{C0}/ports/0/protocol")),
        ),
        (
            "explicit default terminationMessagePath",
            set(
                b(),
                "/spec/containers/1/terminationMessagePath",
                json!("/dev/termination-log"),
            ),
        ),
        (
            "explicit default terminationMessagePolicy",
            set(
                b(),
                "/spec/containers/1/terminationMessagePolicy",
                json!("File"),
            ),
        ),
        (
            "explicit configMap defaultMode 420",
            set(b(), "/spec/volumes/1/configMap/defaultMode", json!(420)),
        ),
        (
            "empty hostPath type",
            set(b(), "/spec/volumes/2/hostPath/type", json!("")),
        ),
        (
            "volume without source is emptyDir",
            set(b(), "/spec/volumes/4", json!({"name": "scratch"})),
        ),
        (
            "explicit hostNetwork false",
            set(b(), "/spec/hostNetwork", json!(false)),
        ),
        (
            "explicit stdinOnce false",
            set(b(), &format!("{C0}/stdinOnce"), json!(false)),
        ),
        (
            "explicit readOnly false",
            set(b(), &format!("{C0}/volumeMounts/1/readOnly"), json!(false)),
        ),
        (
            "empty sidecar command",
            set(b(), "/spec/containers/1/command", json!([])),
        ),
        (
            "empty workingDir",
            set(b(), "/spec/containers/1/workingDir", json!("")),
        ),
        (
            "empty sidecar securityContext",
            set(b(), "/spec/containers/1/securityContext", json!({})),
        ),
        (
            "explicit httpGet scheme HTTP",
            set(
                b(),
                &format!("{C0}/lifecycle/preStop/httpGet/scheme"),
                json!("HTTP"),
            ),
        ),
        ("volumes reordered", {
            let mut pod = base();
            pod["spec"]["volumes"].as_array_mut().unwrap().reverse();
            pod
        }),
        ("empty init list vs absent", {
            let mut pod = base();
            pod["spec"]["containers"][1]["ports"] = json!([]);
            pod
        }),
    ]
}

#[test]
fn every_distilled_field_changes_the_hash() {
    let original = hash(&base());
    let mut unchanged = Vec::new();
    for (field, pod) in must_differ() {
        if hash(&pod) == original {
            unchanged.push(field);
        }
    }
    assert!(
        unchanged.is_empty(),
        "these changes did not change the hash: {unchanged:?}"
    );
}

#[test]
fn ignored_fields_and_defaults_keep_the_hash() {
    let original = hash(&base());
    let mut changed = Vec::new();
    for (field, pod) in must_equal() {
        if hash(&pod) != original {
            changed.push(field);
        }
    }
    assert!(
        changed.is_empty(),
        "these changes altered the hash: {changed:?}"
    );
}

#[test]
fn distinct_mutations_give_distinct_hashes() {
    let mut seen = std::collections::HashMap::new();
    seen.insert(hash(&base()), "base");
    for (field, pod) in must_differ() {
        if let Some(other) = seen.insert(hash(&pod), field) {
            panic!("{field} and {other} hash alike");
        }
    }
}

#[test]
fn pod_defaults_apply() {
    let minimal = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}
    });
    let explicit = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
        "spec": {
            "dnsPolicy": "ClusterFirst",
            "hostNetwork": false, "hostPID": false, "hostIPC": false,
            "securityContext": {},
            "containers": [{
                "name": "c", "image": "i",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "stdin": false, "tty": false
            }]
        }
    });
    assert_eq!(hash(&minimal), hash(&explicit));
}

#[test]
fn hashes_are_pinned() {
    // Changing these is a breaking change: every stored snapshot would stop matching.
    let minimal = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    });
    let pod: Pod = serde_json::from_value(minimal).unwrap();
    let spec = DistilledSpec::from_pod(&pod).unwrap();
    assert_eq!(
        spec.canonical_json(),
        r#"{"distillVersion":1,"spec":{"containers":[{"image":"i","name":"c","terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File"}],"dnsPolicy":"ClusterFirst"}}"#
    );
    assert_eq!(spec.hash().as_str(), GOLDEN_MINIMAL);
    assert_eq!(hash(&base()), GOLDEN_BASE);
}

const GOLDEN_MINIMAL: &str = "a47143c344c59d861fe7829a84838c240e00e2ccf6b9d7fde960773873069b25";
const GOLDEN_BASE: &str = "e459114059f7d5cb2a1531a34a72c969aa36f484150ad8ce0373c5ef5708c4db";

#[test]
fn a_pod_without_spec_is_an_error() {
    let pod: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
    )
    .unwrap();
    assert!(DistilledSpec::from_pod(&pod).is_err());
}

// === property tests ===

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

fn arb_container() -> impl Strategy<Value = Value> {
    (
        arb_name(),
        arb_name(),
        proptest::collection::vec("[a-z0-9-]{1,5}", 0..4),
        proptest::collection::vec(
            (
                1u16..9000,
                proptest::option::of(prop_oneof![Just("TCP"), Just("UDP")]),
            ),
            0..3,
        ),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0i64..2000),
    )
        .prop_map(|(name, image, args, ports, tty, uid)| {
            let mut ports_seen = std::collections::BTreeSet::new();
            let ports: Vec<Value> = ports
                .into_iter()
                .filter(|(p, proto)| ports_seen.insert((*p, proto.unwrap_or("TCP"))))
                .map(|(port, proto)| match proto {
                    Some(proto) => json!({"containerPort": port, "protocol": proto}),
                    None => json!({"containerPort": port}),
                })
                .collect();
            let mut c = json!({"name": name, "image": image, "args": args, "ports": ports});
            if let Some(tty) = tty {
                c["tty"] = json!(tty);
            }
            if let Some(uid) = uid {
                c["securityContext"] = json!({"runAsUser": uid});
            }
            c
        })
}

fn arb_volume(name: String) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"name": name.clone()})),
        Just(json!({"name": name.clone(), "emptyDir": {}})),
        arb_name().prop_map({
            let name = name.clone();
            move |claim| json!({"name": name.clone(), "persistentVolumeClaim": {"claimName": claim}})
        }),
        arb_name().prop_map(move |cm| json!({"name": name.clone(), "configMap": {"name": cm}})),
    ]
}

fn arb_pod() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(arb_container(), 1..3),
        proptest::collection::btree_set(arb_name(), 0..4),
        proptest::option::of(prop_oneof![Just("ClusterFirst"), Just("Default"), Just("None")]),
        any::<bool>(),
    )
        .prop_flat_map(|(containers, volume_names, dns, host_network)| {
            let volumes: Vec<_> = volume_names.into_iter().map(arb_volume).collect();
            (Just(containers), volumes, Just(dns), Just(host_network))
        })
        .prop_map(|(mut containers, volumes, dns, host_network)| {
            for (i, c) in containers.iter_mut().enumerate() {
                c["name"] = json!(format!("c{i}"));
            }
            let mut spec = json!({"containers": containers, "volumes": volumes});
            if let Some(dns) = dns {
                spec["dnsPolicy"] = json!(dns);
            }
            if host_network {
                spec["hostNetwork"] = json!(true);
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "a"}}, "spec": spec})
        })
}

/// Writes every default Kubernetes would apply explicitly.
fn with_defaults(mut pod: Value) -> Value {
    let spec = &mut pod["spec"];
    if spec.get("dnsPolicy").is_none() {
        spec["dnsPolicy"] = json!("ClusterFirst");
    }
    spec["securityContext"] = spec.get("securityContext").cloned().unwrap_or(json!({}));
    for v in spec["volumes"].as_array_mut().unwrap() {
        if v.as_object().unwrap().len() == 1 {
            v["emptyDir"] = json!({});
        }
        if let Some(cm) = v.get_mut("configMap") {
            cm["defaultMode"] = json!(420);
        }
    }
    for c in spec["containers"].as_array_mut().unwrap() {
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        for p in c["ports"].as_array_mut().unwrap() {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
        }
    }
    pod
}

/// JSON text with every object's keys in reverse order.
fn reversed_text(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .rev()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), reversed_text(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(reversed_text)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

proptest! {
    #[test]
    fn stable_under_explicit_defaults(pod in arb_pod()) {
        prop_assert_eq!(hash(&pod), hash(&with_defaults(pod.clone())));
    }

    #[test]
    fn stable_under_key_order(pod in arb_pod()) {
        let reordered: Pod = serde_json::from_str(&reversed_text(&pod)).unwrap();
        let again = DistilledSpec::from_pod(&reordered).unwrap().hash().to_string();
        prop_assert_eq!(hash(&pod), again);
    }

    #[test]
    fn stable_under_volume_and_port_order(pod in arb_pod()) {
        let mut shuffled = pod.clone();
        shuffled["spec"]["volumes"].as_array_mut().unwrap().reverse();
        for c in shuffled["spec"]["containers"].as_array_mut().unwrap() {
            c["ports"].as_array_mut().unwrap().reverse();
        }
        prop_assert_eq!(hash(&pod), hash(&shuffled));
    }

    #[test]
    fn stable_under_ignored_fields(pod in arb_pod(), node in arb_name(), env in arb_name()) {
        let mut changed = pod.clone();
        changed["spec"]["nodeName"] = json!(node);
        changed["metadata"]["labels"]["app"] = json!(env.clone());
        changed["spec"]["containers"][0]["env"] = json!([{"name": "X", "value": env}]);
        changed["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "2"}});
        prop_assert_eq!(hash(&pod), hash(&changed));
    }

    #[test]
    fn sensitive_to_the_image(pod in arb_pod()) {
        let mut changed = pod.clone();
        let image = format!("{}-other", changed["spec"]["containers"][0]["image"].as_str().unwrap());
        changed["spec"]["containers"][0]["image"] = json!(image);
        prop_assert_ne!(hash(&pod), hash(&changed));
    }
}
