//! `podsnap serve` and the kubectl-shaped verbs that talk to it: `apply`, `get`, `describe`,
//! `delete`, `logs`, `exec`, `scale`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hyper::Method;
use podsnap_agent::client::Client;
use serde_json::{Value, json};

/// Where the agent's socket is.
pub const DEFAULT_SOCKET: &str = "/run/podsnap/agent.sock";
/// Where the agent keeps its state.
pub const DEFAULT_STATE: &str = "/var/lib/podsnap";

/// Options of `podsnap serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The agent's state directory (database, Pods, engine state).
    #[arg(long, default_value = DEFAULT_STATE)]
    state_dir: PathBuf,
    /// The image store.
    #[arg(long, default_value = crate::image_cmd::DEFAULT_STORE)]
    images: PathBuf,
    /// The API socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Pod networks: `auto` gives each Pod its own network namespace and IP when the CNI
    /// plugins are installed and the agent runs as root, `cni` requires that, `none` leaves
    /// Pods on their loopback (ports through hostPort relays only).
    #[arg(long, value_enum, default_value = "auto")]
    pod_network: PodNetworkArg,
    /// The Pods' subnet (IPv4 CIDR); the bridge takes its first address.
    #[arg(long, default_value = podsnap_runtime::network::DEFAULT_SUBNET)]
    pod_subnet: String,
    /// The bridge device Pods attach to.
    #[arg(long, default_value = podsnap_runtime::network::DEFAULT_BRIDGE)]
    pod_bridge: String,
    /// Where the CNI plugins are (default: the first of /usr/lib/cni, /opt/cni/bin and
    /// /usr/libexec/cni that has them).
    #[arg(long)]
    cni_plugin_dir: Option<PathBuf>,
    /// The engine of Pods without a `runtimeClassName`: `gvisor` (runsc) or `native` (Linux
    /// namespaces, our own checkpoint/restore with lazy memory). Pods pick the other one
    /// with `runtimeClassName: gvisor` or `runtimeClassName: native` where it is available.
    #[arg(long, value_enum, default_value = "gvisor")]
    default_runtime: RuntimeArg,
    /// The longest a native Pod's restore waits for one read of its memory (a chunk from a
    /// slow or unreachable repository), in seconds: a restore still starting fails and the
    /// Pod starts cold (the event says why); a Pod already running is killed and its
    /// `PodMemoryResident` condition says why.
    #[arg(long, default_value_t = 10.0)]
    lazy_read_timeout: f64,
}

/// Values of `--default-runtime`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RuntimeArg {
    /// gVisor's runsc.
    Gvisor,
    /// The native engine (namespaces, overlayfs, cgroups).
    Native,
}

/// Values of `--pod-network`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PodNetworkArg {
    /// Pod networks where possible.
    Auto,
    /// Pod networks, or the agent does not start.
    Cni,
    /// No Pod networks.
    None,
}

/// How to reach the agent.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The agent's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Namespace.
    #[arg(short, long, global = true, default_value = "default")]
    namespace: String,
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum GetFormat {
    /// A table.
    Table,
    /// A table with more columns.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Runs the agent until the process is stopped.
pub async fn serve(args: ServeArgs) -> Result<()> {
    tracing::info!(state = %args.state_dir.display(), "starting the podsnap agent");
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let store = podsnap_agent::store::Store::open(&args.state_dir.join("agent.redb"))?;
    let gvisor = podsnap_engine::GvisorEngine::new(podsnap_engine::GvisorConfig::new(
        args.state_dir.join("engine"),
    ))
    .await
    .map(|e| Arc::new(e) as Arc<dyn podsnap_engine::Engine>);
    let read_timeout = std::time::Duration::try_from_secs_f64(args.lazy_read_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--lazy-read-timeout must be a positive number of seconds")?;
    let native = podsnap_native::engine::NativeEngine::new(podsnap_native::engine::NativeConfig {
        lazy_read_timeout: read_timeout,
        ..podsnap_native::engine::NativeConfig::new(args.state_dir.join("native"))
    })
    .map(|e| Arc::new(e) as Arc<dyn podsnap_engine::Engine>);
    let images = podsnap_image::ImageStore::open(&args.images)?;
    let (default, other, other_class) = match args.default_runtime {
        RuntimeArg::Gvisor => (gvisor?, native.map_err(|e| e.to_string()), "native"),
        RuntimeArg::Native => (
            native.context("the native engine (--default-runtime native) cannot run here")?,
            gvisor.map_err(|e| e.to_string()),
            "gvisor",
        ),
    };
    if let Err(reason) = &other {
        tracing::warn!(%reason, "runtimeClassName {other_class} is not available on this node");
    }
    let mut runner = podsnap_runtime::PodRunner::new(default, images, &args.state_dir)?;
    runner.add_engine(other_class, other);
    let settings = podsnap_runtime::network::NetworkSettings {
        setting: match args.pod_network {
            PodNetworkArg::Auto => podsnap_runtime::network::NetworkSetting::Auto,
            PodNetworkArg::Cni => podsnap_runtime::network::NetworkSetting::Cni,
            PodNetworkArg::None => podsnap_runtime::network::NetworkSetting::None,
        },
        subnet: args.pod_subnet.clone(),
        bridge: args.pod_bridge.clone(),
        plugin_dir: args.cni_plugin_dir.clone(),
    };
    runner.enable_networks(&args.state_dir, &settings).await?;
    let mut controller =
        podsnap_agent::controller::Controller::new(store.clone(), runner, &args.state_dir);
    controller.fetch_timeout = read_timeout;
    let api = podsnap_agent::api::Api::new(store, controller.clone());
    tokio::spawn(controller.run());
    api.serve(&args.socket)
        .await
        .with_context(|| format!("serving on {}", args.socket.display()))
}

/// Maps what users type (`pods`, `po`, `deploy`, `podsnapshots`, …) to a kind.
pub fn kind_of(word: &str) -> Result<&'static str> {
    Ok(match word.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => "Pod",
        "deployment" | "deployments" | "deploy" => "Deployment",
        "secret" | "secrets" => "Secret",
        "podsnapshot" | "podsnapshots" => "PodSnapshot",
        "podsnapshotpolicy" | "podsnapshotpolicies" => "PodSnapshotPolicy",
        "podsnapshotstorageconfig" | "podsnapshotstorageconfigs" => "PodSnapshotStorageConfig",
        "podsnapshotmanualtrigger" | "podsnapshotmanualtriggers" => "PodSnapshotManualTrigger",
        "event" | "events" | "ev" => "Event",
        other => bail!(
            "unknown resource type `{other}`; use pods, deployments, secrets, podsnapshots, podsnapshotpolicies, podsnapshotstorageconfigs, podsnapshotmanualtriggers or events"
        ),
    })
}

fn namespace_of(kind: &str, namespace: &str) -> String {
    if kind == "PodSnapshotStorageConfig" {
        "_".to_owned()
    } else {
        namespace.to_owned()
    }
}

/// `podsnap apply -f FILE`.
pub async fn apply(agent: &AgentArgs, files: &[PathBuf]) -> Result<()> {
    let client = Client::new(&agent.socket);
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?
        };
        let answer = client.apply(&text).await?;
        for r in answer["results"].as_array().into_iter().flatten() {
            println!(
                "{}/{} {}",
                r["kind"].as_str().unwrap_or_default().to_lowercase(),
                r["name"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn age(timestamp: &Value) -> String {
    let Some(t) = timestamp
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn row(kind: &str, o: &Value, wide: bool) -> Vec<String> {
    let name = o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let created = age(&o["metadata"]["creationTimestamp"]);
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match kind {
        "Pod" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let phase = o["status"]["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_owned();
            let status = match o["status"]["reason"].as_str() {
                Some(reason) if phase == "Failed" => reason.to_owned(),
                _ => phase,
            };
            let mut r = vec![
                name,
                format!("{ready}/{total}"),
                status,
                restarts.to_string(),
                created,
            ];
            if wide {
                r.push(s(&o["status"]["podIP"]));
                r.push(
                    if o["metadata"]["annotations"]["podsnap.dev/restored-from"].is_string() {
                        "restored".into()
                    } else {
                        "cold".into()
                    },
                );
            }
            r
        }
        "Deployment" => {
            let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = o["status"]["readyReplicas"].as_i64().unwrap_or(0);
            vec![
                name,
                format!("{ready}/{replicas}"),
                replicas.to_string(),
                ready.to_string(),
                created,
            ]
        }
        "PodSnapshot" => {
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Deleting".to_owned()
            } else {
                condition(o, "Ready")
                    .map(|c| s(&c["reason"]))
                    .unwrap_or_default()
            };
            vec![name, status, s(&o["spec"]["policyName"]), created]
        }
        "Secret" => {
            let keys = o["data"].as_object().map_or(0, |d| d.len())
                + o["stringData"].as_object().map_or(0, |d| d.len());
            vec![
                name,
                o["type"].as_str().unwrap_or("Opaque").to_owned(),
                keys.to_string(),
                created,
            ]
        }
        "PodSnapshotPolicy" => vec![
            name,
            s(&o["spec"]["storageConfigName"]),
            s(&o["spec"]["triggerConfig"]["type"]),
            created,
        ],
        "PodSnapshotManualTrigger" => vec![
            name,
            s(&o["spec"]["targetPod"]),
            condition(o, "Triggered")
                .map(|c| s(&c["reason"]))
                .unwrap_or_default(),
            s(&o["status"]["snapshotCreated"]["name"]),
            created,
        ],
        _ => vec![name, created],
    }
}

fn header(kind: &str, wide: bool) -> Vec<&'static str> {
    match kind {
        "Pod" if wide => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "START"],
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "PodSnapshot" => vec!["NAME", "STATUS", "POLICY", "AGE"],
        "Secret" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "PodSnapshotPolicy" => vec!["NAME", "STORAGE", "TRIGGER", "AGE"],
        "PodSnapshotManualTrigger" => vec!["NAME", "TARGET", "STATUS", "SNAPSHOT", "AGE"],
        _ => vec!["NAME", "AGE"],
    }
}

fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `podsnap get KIND [NAME]`.
pub async fn get(
    agent: &AgentArgs,
    what: &str,
    name: Option<&str>,
    format: GetFormat,
) -> Result<()> {
    let client = Client::new(&agent.socket);
    let kind = kind_of(what)?;
    if kind == "Event" {
        let answer = client
            .json(
                Method::GET,
                &format!("/events?namespace={}", agent.namespace),
                None,
            )
            .await?;
        let rows: Vec<Vec<String>> = answer["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                vec![
                    age(&e["time"]),
                    s("type"),
                    s("reason"),
                    format!("{}/{}", s("kind").to_lowercase(), s("name")),
                    s("message"),
                ]
            })
            .collect();
        print_table(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], &rows);
        return Ok(());
    }
    let items: Vec<Value> = match name {
        Some(n) => vec![
            client
                .json(
                    Method::GET,
                    &format!(
                        "/objects/{kind}/{}/{n}",
                        namespace_of(kind, &agent.namespace)
                    ),
                    None,
                )
                .await?,
        ],
        None => {
            let path = if kind == "PodSnapshotStorageConfig" {
                format!("/objects/{kind}")
            } else {
                format!("/objects/{kind}?namespace={}", agent.namespace)
            };
            client.json(Method::GET, &path, None).await?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    match format {
        GetFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&if name.is_some() {
                items[0].clone()
            } else {
                json!({"items": items})
            })?
        ),
        GetFormat::Yaml => {
            let value = if name.is_some() {
                items[0].clone()
            } else {
                json!({"items": items})
            };
            print!("{}", serde_saphyr::to_string(&value)?);
        }
        GetFormat::Table | GetFormat::Wide => {
            if items.is_empty() {
                eprintln!("No resources found in {} namespace.", agent.namespace);
                return Ok(());
            }
            let wide = format == GetFormat::Wide;
            let rows: Vec<Vec<String>> = items.iter().map(|o| row(kind, o, wide)).collect();
            print_table(&header(kind, wide), &rows);
        }
    }
    Ok(())
}

/// `podsnap describe KIND NAME`: the object as YAML, then its events.
pub async fn describe(agent: &AgentArgs, what: &str, name: &str) -> Result<()> {
    let client = Client::new(&agent.socket);
    let kind = kind_of(what)?;
    let object = client
        .json(
            Method::GET,
            &format!(
                "/objects/{kind}/{}/{name}",
                namespace_of(kind, &agent.namespace)
            ),
            None,
        )
        .await?;
    println!("Name:         {name}");
    println!(
        "Namespace:    {}",
        object["metadata"]["namespace"].as_str().unwrap_or("-")
    );
    println!("Kind:         {kind}");
    println!(
        "Created:      {}",
        object["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("-")
    );
    if let Some(conditions) = object["status"]["conditions"].as_array() {
        println!("Conditions:");
        for c in conditions {
            println!(
                "  {:<18} {:<6} {:<24} {}",
                c["type"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default(),
                c["lastTransitionTime"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            );
        }
    }
    println!("Spec and status:");
    for line in
        serde_saphyr::to_string(&json!({"spec": object["spec"], "status": object["status"]}))?
            .lines()
    {
        println!("  {line}");
    }
    let events = client
        .json(
            Method::GET,
            &format!("/events?namespace={}&name={name}", agent.namespace),
            None,
        )
        .await?;
    println!("Events:");
    for e in events["items"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:<18} {:<6} {}",
            e["type"].as_str().unwrap_or_default(),
            e["reason"].as_str().unwrap_or_default(),
            age(&e["time"]),
            e["message"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `podsnap delete KIND NAME`.
pub async fn delete(agent: &AgentArgs, what: &str, names: &[String]) -> Result<()> {
    let client = Client::new(&agent.socket);
    let kind = kind_of(what)?;
    for name in names {
        client
            .json(
                Method::DELETE,
                &format!(
                    "/objects/{kind}/{}/{name}",
                    namespace_of(kind, &agent.namespace)
                ),
                None,
            )
            .await?;
        println!("{}/{name} deleted", kind.to_lowercase());
    }
    Ok(())
}

/// `podsnap logs POD [-c CONTAINER] [-f]`.
pub async fn logs(
    agent: &AgentArgs,
    pod: &str,
    container: Option<&str>,
    follow: bool,
) -> Result<()> {
    let client = Client::new(&agent.socket);
    let mut offset = 0usize;
    loop {
        let mut path = format!("/logs/{}/{pod}?offset={offset}", agent.namespace);
        if let Some(c) = container {
            path.push_str(&format!("&container={c}"));
        }
        let bytes = client
            .request(Method::GET, &path, None, "text/plain")
            .await?;
        offset += bytes.len();
        std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `podsnap exec POD [-c CONTAINER] -- CMD…`; exits with the command's code.
pub async fn exec(
    agent: &AgentArgs,
    pod: &str,
    container: Option<&str>,
    command: &[String],
) -> Result<i32> {
    let client = Client::new(&agent.socket);
    let answer = client
        .json(
            Method::POST,
            &format!("/exec/{}/{pod}", agent.namespace),
            Some(&json!({"container": container, "command": command})),
        )
        .await?;
    use std::io::Write;
    // A closed pipe (`| head`) is not an error of ours.
    let _ = std::io::stdout().write_all(answer["stdout"].as_str().unwrap_or_default().as_bytes());
    let _ = std::io::stderr().write_all(answer["stderr"].as_str().unwrap_or_default().as_bytes());
    Ok(answer["exitCode"].as_i64().unwrap_or(1) as i32)
}

/// `podsnap scale deployment/NAME --replicas N`.
pub async fn scale(agent: &AgentArgs, target: &str, replicas: i32) -> Result<()> {
    let (kind, name) = target
        .split_once('/')
        .context("name the deployment as deployment/NAME")?;
    if kind_of(kind)? != "Deployment" {
        bail!("only deployments scale");
    }
    let client = Client::new(&agent.socket);
    client
        .json(
            Method::POST,
            &format!("/scale/{}/{name}", agent.namespace),
            Some(&json!({"replicas": replicas})),
        )
        .await?;
    println!("deployment/{name} scaled");
    Ok(())
}
