//! Pure planning: a Kubernetes container plus its image's config become a process (argv,
//! environment, working directory, user) exactly as the kubelet would start it; volumes become
//! mounts; restart back-off follows the kubelet's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume};
use podsnap_engine::{Mount, MountKind};
use podsnap_image::ImageConfig;

/// Why a Pod cannot be run as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PlanError {
    /// The Pod field, e.g. `spec.containers[0].command`.
    pub field: String,
    /// What is wrong and what to do.
    pub problem: String,
}

fn plan_error(field: impl Into<String>, problem: impl Into<String>) -> PlanError {
    PlanError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The process a container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// uid and gid.
    pub user: (u32, u32),
}

/// Facts about the Pod that `fieldRef` environment variables may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFields {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `status.podIP`.
    pub pod_ip: String,
    /// `spec.nodeName`.
    pub node_name: String,
}

/// The process for container `c` (at `field`, e.g. `spec.containers[0]`) of a Pod.
pub fn process(
    field: &str,
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    fields: &PodFields,
) -> Result<Process, PlanError> {
    let env = environment(field, c, image, fields)?;
    let lookup: BTreeMap<&str, &str> = env.iter().filter_map(|e| e.split_once('=')).collect();
    let expand_all =
        |items: &[String]| items.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let command = c.command.as_deref().unwrap_or_default();
    let args = c.args.as_deref().unwrap_or_default();
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => [expand_all(command), expand_all(args)].concat(),
        (true, false) => [image.entrypoint.clone(), expand_all(args)].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    };
    if argv.is_empty() {
        return Err(plan_error(
            format!("{field}.command"),
            "the container has no command and its image defines neither an entrypoint nor a cmd; set `command` in the Pod",
        ));
    }
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let uid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let gid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let (image_uid, image_gid) = parse_image_user(field, &image.user)?;
    let user = (
        uid.map_or(image_uid, |u| u as u32),
        gid.map_or(image_gid, |g| g as u32),
    );
    Ok(Process {
        args: argv,
        env,
        cwd,
        user,
    })
}

fn parse_image_user(field: &str, user: &str) -> Result<(u32, u32), PlanError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().map_err(|_| {
        plan_error(
            format!("{field}.securityContext.runAsUser"),
            format!("the image runs as user `{user}`, which podsnap cannot resolve without /etc/passwd lookups; set runAsUser to a number"),
        )
    })?;
    let gid = if g.is_empty() {
        uid
    } else {
        g.parse().unwrap_or(uid)
    };
    Ok((uid, gid))
}

/// The environment: the image's, then the container's (later entries win), with `$(VAR)`
/// references to earlier variables expanded as the kubelet does.
fn environment(
    field: &str,
    c: &Container,
    image: &ImageConfig,
    fields: &PodFields,
) -> Result<Vec<String>, PlanError> {
    let mut ordered: Vec<(String, String)> = image
        .env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    if !ordered.iter().any(|(k, _)| k == "PATH") {
        ordered.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    if !c.env_from.as_deref().unwrap_or_default().is_empty() {
        return Err(plan_error(
            format!("{field}.envFrom"),
            "envFrom (ConfigMaps and Secrets) is not supported by the embedded node yet; list the variables in env",
        ));
    }
    for (i, var) in c.env.iter().flatten().enumerate() {
        let value = env_value(&format!("{field}.env[{i}]"), var, fields, &ordered)?;
        match ordered.iter_mut().find(|(k, _)| *k == var.name) {
            Some(slot) => slot.1 = value,
            None => ordered.push((var.name.clone(), value)),
        }
    }
    Ok(ordered
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

fn env_value(
    field: &str,
    var: &EnvVar,
    fields: &PodFields,
    earlier: &[(String, String)],
) -> Result<String, PlanError> {
    if let Some(from) = &var.value_from {
        let Some(field_ref) = &from.field_ref else {
            return Err(plan_error(
                format!("{field}.valueFrom"),
                "only fieldRef is supported by the embedded node; secretKeyRef, configMapKeyRef and resourceFieldRef are not yet",
            ));
        };
        return match field_ref.field_path.as_str() {
            "metadata.name" => Ok(fields.name.clone()),
            "metadata.namespace" => Ok(fields.namespace.clone()),
            "metadata.uid" => Ok(fields.uid.clone()),
            "status.podIP" => Ok(fields.pod_ip.clone()),
            "spec.nodeName" => Ok(fields.node_name.clone()),
            other => Err(plan_error(
                format!("{field}.valueFrom.fieldRef.fieldPath"),
                format!(
                    "`{other}` is not supported; use metadata.name, metadata.namespace, metadata.uid, status.podIP or spec.nodeName"
                ),
            )),
        };
    }
    let lookup: BTreeMap<&str, &str> = earlier
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok(expand(var.value.as_deref().unwrap_or_default(), &lookup))
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, and `$$` escapes a dollar.
pub fn expand(input: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Mounts for container `c`: each volumeMount resolved against the Pod's volumes. `emptyDir`
/// volumes live under `pod_dir/volumes/NAME`.
pub fn mounts(
    field: &str,
    c: &Container,
    volumes: &[Volume],
    pod_dir: &Path,
) -> Result<Vec<Mount>, PlanError> {
    let mut out = Vec::new();
    for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let here = format!("{field}.volumeMounts[{i}]");
        let volume = volumes.iter().find(|v| v.name == vm.name).ok_or_else(|| {
            plan_error(
                format!("{here}.name"),
                format!(
                    "no volume named `{}` in the Pod; add it to spec.volumes",
                    vm.name
                ),
            )
        })?;
        if vm.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(plan_error(
                format!("{here}.subPath"),
                "subPath is not supported by the embedded node yet",
            ));
        }
        let read_only = vm.read_only.unwrap_or(false);
        let (source, kind): (PathBuf, MountKind) = if let Some(host) = &volume.host_path {
            (PathBuf::from(&host.path), MountKind::Bind)
        } else if let Some(empty) = &volume.empty_dir {
            if empty.medium.as_deref() == Some("Memory") {
                (PathBuf::new(), MountKind::Tmpfs)
            } else {
                (pod_dir.join("volumes").join(&volume.name), MountKind::Bind)
            }
        } else if volume_has_no_source(volume) {
            (pod_dir.join("volumes").join(&volume.name), MountKind::Bind)
        } else {
            return Err(plan_error(
                format!(
                    "spec.volumes[{}]",
                    volumes
                        .iter()
                        .position(|v| v.name == volume.name)
                        .unwrap_or(0)
                ),
                format!(
                    "volume `{}`: only emptyDir and hostPath volumes are supported by the embedded node yet",
                    volume.name
                ),
            ));
        };
        out.push(Mount {
            destination: vm.mount_path.clone(),
            source,
            kind,
            read_only,
        });
    }
    Ok(out)
}

fn volume_has_no_source(v: &Volume) -> bool {
    let mut copy = v.clone();
    copy.name.clear();
    copy == Volume::default()
}

/// When and how often a probe runs, with the kubelet's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Wait before the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// A probe taking longer fails.
    pub timeout: Duration,
    /// Successes in a row that make a failing probe succeed.
    pub success_threshold: u32,
    /// Failures in a row that make a succeeding probe fail.
    pub failure_threshold: u32,
}

/// The timing of `probe`: initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1,
/// successThreshold 1, failureThreshold 3 unless set.
pub fn probe_timing(probe: &k8s_openapi::api::core::v1::Probe) -> ProbeTiming {
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0) as u64));
    ProbeTiming {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
        failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
    }
}

/// The command that runs `probe` inside container `c`: exec probes as written; httpGet and
/// tcpSocket through the helper busybox at `helper` (the sandbox's network is reachable only
/// from inside it). Named ports are looked up in the container's ports.
pub fn probe_command(
    field: &str,
    probe: &k8s_openapi::api::core::v1::Probe,
    c: &Container,
    helper: &str,
) -> Result<Vec<String>, PlanError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port_of = |port: &IntOrString, at: &str| -> Result<i32, PlanError> {
        match port {
            IntOrString::Int(p) => Ok(*p),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| plan_error(at, format!("the container has no port named `{name}`"))),
        }
    };
    let timeout = probe.timeout_seconds.unwrap_or(1).max(1).to_string();
    let busybox = format!("{helper}/busybox");
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(plan_error(
                format!("{field}.exec.command"),
                "the exec probe has no command",
            ));
        }
        return Ok(command);
    }
    if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err(plan_error(
                format!("{field}.httpGet.scheme"),
                "HTTPS probes are not supported by the embedded node yet; use HTTP or an exec probe",
            ));
        }
        let port = port_of(&http.port, &format!("{field}.httpGet.port"))?;
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        // No `-T`: busybox wget's timeout crashes under gVisor; the caller bounds the probe.
        let mut cmd = vec![
            busybox,
            "wget".into(),
            "-q".into(),
            "-O".into(),
            "/dev/null".into(),
        ];
        for header in http.http_headers.iter().flatten() {
            cmd.push("--header".into());
            cmd.push(format!("{}: {}", header.name, header.value));
        }
        cmd.push(format!("http://{host}:{port}{path}"));
        return Ok(cmd);
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(&tcp.port, &format!("{field}.tcpSocket.port"))?;
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        return Ok(vec![
            busybox.clone(),
            "nc".into(),
            "-w".into(),
            timeout,
            host,
            port.to_string(),
            "-e".into(),
            busybox,
            "true".into(),
        ]);
    }
    Err(plan_error(
        field,
        "the probe has no handler the embedded node supports (exec, httpGet, tcpSocket)",
    ))
}

/// How long the kubelet waits before restarting a container that exited `restarts` times:
/// 10 s doubling up to 5 minutes.
pub fn restart_backoff(restarts: u32) -> Duration {
    let secs = 10u64.saturating_mul(1u64 << restarts.min(10));
    Duration::from_secs(secs.min(300))
}

/// Whether a container that exited with `exit_code` is restarted under `policy`
/// (`Always` when absent).
pub fn should_restart(policy: Option<&str>, exit_code: i32) -> bool {
    match policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

fn short_hash(text: &str) -> String {
    let digest = sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), text));
    hex::encode(digest)[..8].to_owned()
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A sandbox id for a Pod: readable, unique per Pod object, valid for runsc.
///
/// runsc also finds containers by a unique id *prefix*, and calls an id that prefixes another
/// ambiguous, so no engine id may be a prefix of another: sandbox ids end in `_pod`, container
/// ids in a hash of their own name.
pub fn sandbox_id(namespace: &str, name: &str, uid: &str) -> String {
    format!(
        "{}_{}_{}_pod",
        clean(namespace),
        clean(name),
        short_hash(&format!("{namespace}/{name}/{uid}"))
    )
}

/// The engine id of container `name` in sandbox `sandbox_id`.
pub fn container_id(sandbox_id: &str, name: &str) -> String {
    let base = sandbox_id.strip_suffix("_pod").unwrap_or(sandbox_id);
    format!("{base}_c_{}_{}", clean(name), &short_hash(name)[..4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector, PodSpec, SecurityContext};

    fn container() -> Container {
        Container {
            name: "app".into(),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["--default".into()],
            env: vec!["PATH=/img/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            user: "1000:2000".into(),
            exposed_ports: vec![],
        }
    }

    fn plan(c: &Container) -> Result<Process, PlanError> {
        let pod = Pod {
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        let fields = PodFields {
            name: "web-1".into(),
            namespace: "prod".into(),
            ..Default::default()
        };
        process("spec.containers[0]", &pod, c, &image(), &fields)
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        assert_eq!(plan(&container()).unwrap().args, ["/entry", "--default"]);
        let args_only = Container {
            args: Some(vec!["--x".into()]),
            ..container()
        };
        assert_eq!(plan(&args_only).unwrap().args, ["/entry", "--x"]);
        let command_only = Container {
            command: Some(vec!["/bin/app".into()]),
            ..container()
        };
        assert_eq!(plan(&command_only).unwrap().args, ["/bin/app"]);
        let both = Container {
            command: Some(vec!["/bin/app".into()]),
            args: Some(vec!["--y".into()]),
            ..container()
        };
        assert_eq!(plan(&both).unwrap().args, ["/bin/app", "--y"]);
    }

    #[test]
    fn a_container_without_any_command_is_refused() {
        let pod = Pod::default();
        let err = process(
            "spec.containers[0]",
            &pod,
            &container(),
            &ImageConfig::default(),
            &PodFields::default(),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.containers[0].command");
    }

    #[test]
    fn environment_merges_expands_and_reads_fields() {
        let c = Container {
            env: Some(vec![
                EnvVar {
                    name: "MODE".into(),
                    value: Some("pod".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "GREETING".into(),
                    value: Some("mode=$(MODE) $$(MODE) $(UNDEFINED)".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "POD".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            args: Some(vec!["--pod=$(POD)".into()]),
            ..container()
        };
        let p = plan(&c).unwrap();
        assert_eq!(
            p.env,
            [
                "PATH=/img/bin",
                "MODE=pod",
                "GREETING=mode=pod $(MODE) $(UNDEFINED)",
                "POD=web-1"
            ]
        );
        assert_eq!(p.args, ["/entry", "--pod=web-1"]);
        let unsupported = Container {
            env: Some(vec![EnvVar {
                name: "S".into(),
                value_from: Some(EnvVarSource::default()),
                ..Default::default()
            }]),
            ..container()
        };
        assert_eq!(
            plan(&unsupported).unwrap_err().field,
            "spec.containers[0].env[0].valueFrom"
        );
    }

    #[test]
    fn working_dir_and_user_come_from_the_pod_then_the_image() {
        let p = plan(&container()).unwrap();
        assert_eq!((p.cwd.as_str(), p.user), ("/srv", (1000, 2000)));
        let c = Container {
            working_dir: Some("/work".into()),
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                ..Default::default()
            }),
            ..container()
        };
        let p = plan(&c).unwrap();
        assert_eq!((p.cwd.as_str(), p.user), ("/work", (0, 2000)));
    }

    #[test]
    fn expansion_edge_cases() {
        let vars: BTreeMap<&str, &str> = [("A", "1")].into();
        assert_eq!(expand("$(A)$(A)", &vars), "11");
        assert_eq!(expand("$", &vars), "$");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("cost: $$5", &vars), "cost: $5");
    }

    #[test]
    fn probes_become_commands_with_defaults() {
        use k8s_openapi::api::core::v1::{
            ContainerPort, ExecAction, HTTPGetAction, Probe, TCPSocketAction,
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..container()
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            probe_command("p", &http, &c, "/.podsnap").unwrap(),
            [
                "/.podsnap/busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                "http://127.0.0.1:8080/healthz"
            ]
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(5432),
                ..Default::default()
            }),
            timeout_seconds: Some(3),
            ..Default::default()
        };
        assert_eq!(
            probe_command("p", &tcp, &c, "/h").unwrap()[..6],
            ["/h/busybox", "nc", "-w", "3", "127.0.0.1", "5432"]
        );
        let exec = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["cat".into(), "/ready".into()]),
            }),
            ..Default::default()
        };
        assert_eq!(
            probe_command("p", &exec, &c, "/h").unwrap(),
            ["cat", "/ready"]
        );
        let unnamed = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("admin".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            probe_command("p", &unnamed, &c, "/h").unwrap_err().field,
            "p.httpGet.port"
        );
        assert!(probe_command("p", &Probe::default(), &c, "/h").is_err());
        let t = probe_timing(&Probe::default());
        assert_eq!(
            (
                t.period,
                t.timeout,
                t.success_threshold,
                t.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let t = probe_timing(&Probe {
            period_seconds: Some(2),
            initial_delay_seconds: Some(5),
            ..Default::default()
        });
        assert_eq!(
            (t.period, t.initial_delay),
            (Duration::from_secs(2), Duration::from_secs(5))
        );
    }

    #[test]
    fn restart_rules() {
        assert_eq!(restart_backoff(0), Duration::from_secs(10));
        assert_eq!(restart_backoff(1), Duration::from_secs(20));
        assert_eq!(restart_backoff(5), Duration::from_secs(300));
        assert_eq!(restart_backoff(60), Duration::from_secs(300));
        assert!(should_restart(None, 0));
        assert!(should_restart(Some("OnFailure"), 1) && !should_restart(Some("OnFailure"), 0));
        assert!(!should_restart(Some("Never"), 1));
    }

    #[test]
    fn engine_ids_are_valid_distinct_and_never_prefixes_of_each_other() {
        let a = sandbox_id("default", "web.v1", "uid-1");
        assert!(
            a.starts_with("default_web-v1_") && a.ends_with("_pod"),
            "{a}"
        );
        assert_ne!(a, sandbox_id("default", "web.v1", "uid-2"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        let ids = [
            a.clone(),
            container_id(&a, "app"),
            container_id(&a, "app2"),
            container_id(&a, "ap"),
            sandbox_id("default", "web.v10", "uid-1"),
        ];
        for x in &ids {
            for y in &ids {
                assert!(
                    x == y || !y.starts_with(x.as_str()),
                    "{x} is a prefix of {y}"
                );
            }
        }
    }
}
