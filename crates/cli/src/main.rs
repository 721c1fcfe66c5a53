//! `podsnap`: the command-line tool of podsnap.
//!
//! The binary edge: it parses arguments, reads files, calls the library crates and prints.
//! Decisions live in `podsnap-core`, data types and validation in `podsnap-api`, host probing
//! in `podsnap-node`; nothing here should be worth unit-testing on its own.

#![forbid(unsafe_code)]

mod bench;
mod bench_native;
mod bench_snapshot;
mod image_cmd;
mod native_cmd;
mod native_repo;
mod node_cmd;
mod progress;
mod repo_cmd;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use podsnap_api::{Object, load_documents};
use podsnap_core::DistilledSpec;
use podsnap_node::{EngineKind, HostRoot, probe_fingerprint, probe_runsc};

/// podsnap starts Pods from snapshots: it checkpoints a warmed-up Pod into storage and
/// restores new replicas from it in about a second.
#[derive(Parser, Debug)]
#[command(name = "podsnap", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions of the four podsnap kinds as YAML, ready for
    /// `kubectl apply -f -`.
    Crds,
    /// Check manifests (podsnap kinds, GKE's podsnapshot.gke.io/v1 kinds, Pods, Deployments)
    /// and report every problem with its document, line, field and fix.
    Validate {
        /// Manifest files; `-` reads standard input. Multi-document YAML is fine.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the distilled spec of Pods (or Deployments' Pod templates): the fields that decide
    /// whether a snapshot fits, in canonical form, and its SHA-256 hash.
    Distill {
        /// A manifest with Pods or Deployments; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Print only the hash, one line per Pod.
        #[arg(long)]
        hash_only: bool,
    },
    /// Print this node's fingerprint: what a snapshot taken here requires of the node that
    /// restores it (architecture, machine series, CPU features, kernel, engine, GPUs).
    NodeInfo {
        /// The engine to describe.
        #[arg(long, value_enum, default_value_t = EngineArg::Gvisor)]
        engine: EngineArg,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Work with snapshot repositories: list, inspect, verify, delete, collect garbage, and
    /// store or fetch files for testing.
    Repo {
        #[command(subcommand)]
        command: repo_cmd::RepoCommand,
    },
    /// Run the node agent (embedded mode): it stores API objects and runs Pods under gVisor.
    /// The other verbs below talk to it over its socket.
    Serve(node_cmd::ServeArgs),
    /// Create or update objects from manifests (Pods, Deployments, the podsnap kinds).
    Apply {
        /// Manifest files; `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// List objects: pods, deployments, podsnapshots, podsnapshotpolicies,
    /// podsnapshotstorageconfigs, podsnapshotmanualtriggers, events.
    Get {
        /// The resource type.
        resource: String,
        /// One object's name.
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = node_cmd::GetFormat::Table)]
        output: node_cmd::GetFormat,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Show an object in detail, with its conditions and events.
    Describe {
        /// The resource type.
        resource: String,
        /// The object's name.
        name: String,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Delete objects (deleting a Pod stops it).
    Delete {
        /// The resource type.
        resource: String,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Print a container's log.
    Logs {
        /// The Pod.
        pod: String,
        /// The container (needed when the Pod has several).
        #[arg(short, long)]
        container: Option<String>,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Run a command in a Pod's container: `podsnap exec POD -- CMD ARGS…`.
    Exec {
        /// The Pod.
        pod: String,
        /// The container (the first one when absent).
        #[arg(short, long)]
        container: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Change a Deployment's replica count: `podsnap scale deployment/NAME --replicas N`.
    Scale {
        /// `deployment/NAME`.
        target: String,
        /// The new replica count.
        #[arg(long)]
        replicas: i32,
        #[command(flatten)]
        agent: node_cmd::AgentArgs,
    },
    /// Manage the node's local images: import OCI layouts, OCI or Docker archives, or root file
    /// system directories; pull from a registry; list; remove.
    Image {
        #[command(subcommand)]
        command: image_cmd::ImageCommand,
    },
    /// podsnap's own checkpoint/restore of a process, outside Pods (for debugging):
    /// `native checkpoint --pid PID --dir DIR`, `native restore --dir DIR`, or through a
    /// snapshot repository with `--repo REPO --name NAME` instead of `--dir`.
    Native {
        #[command(subcommand)]
        command: native_cmd::NativeCommand,
    },
    /// Measure podsnap against its baselines and print the figures side by side.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    /// gVisor, through the installed runsc.
    Gvisor,
    /// podsnap's own checkpoint/restore of Linux process trees.
    Native,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputFormat {
    /// Aligned text for people.
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Crds => {
            print!(
                "{}",
                podsnap_api::crds_yaml().context("serialising the CRDs")?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => validate(&files),
        Command::Distill { file, hash_only } => distill(&file, hash_only),
        Command::NodeInfo { engine, output } => node_info(engine, output),
        Command::Repo { command } => {
            runtime()?.block_on(repo_cmd::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            runtime()?.block_on(node_cmd::serve(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { files, agent } => {
            runtime()?.block_on(node_cmd::apply(&agent, &files))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            resource,
            name,
            output,
            agent,
        } => {
            runtime()?.block_on(node_cmd::get(&agent, &resource, name.as_deref(), output))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe {
            resource,
            name,
            agent,
        } => {
            runtime()?.block_on(node_cmd::describe(&agent, &resource, &name))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete {
            resource,
            names,
            agent,
        } => {
            runtime()?.block_on(node_cmd::delete(&agent, &resource, &names))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            pod,
            container,
            follow,
            agent,
        } => {
            runtime()?.block_on(node_cmd::logs(&agent, &pod, container.as_deref(), follow))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            pod,
            container,
            command,
            agent,
        } => {
            let code = runtime()?.block_on(node_cmd::exec(
                &agent,
                &pod,
                container.as_deref(),
                &command,
            ))?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Scale {
            target,
            replicas,
            agent,
        } => {
            runtime()?.block_on(node_cmd::scale(&agent, &target, replicas))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { command } => {
            image_cmd::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Native { command } => {
            native_cmd::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command } => {
            runtime()?.block_on(bench::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `info` for the agent (it runs as a service and logs what it does), `warn` for commands.
fn default_log_filter() -> &'static str {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        "info"
    } else {
        "warn"
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn read_source(path: &PathBuf) -> Result<(String, String)> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}; check the path", path.display()))?;
    Ok((path.display().to_string(), text))
}

fn validate(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = false;
    for path in files {
        let (name, text) = read_source(path)?;
        match load_documents(&name, &text) {
            Ok(docs) if docs.is_empty() => {
                eprintln!("{name}: no documents found");
                failed = true;
            }
            Ok(docs) => {
                for doc in docs {
                    println!(
                        "{name}: document {} (line {}): {} \"{}\" is valid",
                        doc.index,
                        doc.line,
                        doc.object.kind(),
                        doc.object.name()
                    );
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn distill(path: &PathBuf, hash_only: bool) -> Result<ExitCode> {
    let (name, text) = read_source(path)?;
    let docs = load_documents(&name, &text)?;
    let mut found = 0;
    for doc in docs {
        let (label, spec) = match &doc.object {
            Object::Pod(pod) => (
                format!("Pod {}", doc.object.name()),
                DistilledSpec::from_pod(pod)?,
            ),
            Object::Deployment(d) => {
                let template = d.spec.as_ref().map(|s| &s.template);
                let Some((meta, spec)) = template
                    .and_then(|t| Some((t.metadata.clone().unwrap_or_default(), t.spec.as_ref()?)))
                else {
                    bail!("Deployment {} has no Pod template spec", doc.object.name());
                };
                (
                    format!("Deployment {} (Pod template)", doc.object.name()),
                    DistilledSpec::from_parts(&meta, spec),
                )
            }
            _ => continue,
        };
        found += 1;
        if hash_only {
            println!("{}", spec.hash());
        } else {
            println!("# {label}, document {}", doc.index);
            println!("{}", spec.to_pretty_json());
            println!("sha256: {}", spec.hash());
        }
    }
    if found == 0 {
        bail!(
            "{name} holds no Pod or Deployment; give a manifest with `kind: Pod` or `kind: Deployment`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn node_info(engine: EngineArg, output: OutputFormat) -> Result<ExitCode> {
    let kind = match engine {
        EngineArg::Gvisor => EngineKind::Gvisor(probe_runsc(None)),
        EngineArg::Native => EngineKind::Native,
    };
    let fp = probe_fingerprint(&HostRoot::default(), &kind)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&fp)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&fp)?),
        OutputFormat::Text => {
            let features: Vec<&str> = fp.cpu_features.iter().map(String::as_str).collect();
            let gpus = if fp.gpus.is_empty() {
                "none".to_owned()
            } else {
                fp.gpus
                    .iter()
                    .map(|g| format!("{} (driver {})", g.model, g.driver_version))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("architecture     {}", fp.architecture);
            println!(
                "cpu              {} (vendor {}, family {}, model {})",
                if fp.cpu.model_name.is_empty() {
                    "-"
                } else {
                    &fp.cpu.model_name
                },
                fp.cpu.vendor,
                fp.cpu.family,
                fp.cpu.model
            );
            println!("machine series   {}", fp.cpu.machine_series);
            println!(
                "cpu features     {} ({})",
                features.len(),
                features.join(" ")
            );
            println!("kernel           {}", fp.kernel_release);
            println!("engine           {} {}", fp.engine.name, fp.engine.version);
            println!("gpus             {gpus}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
