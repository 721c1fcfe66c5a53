//! `podsnap image …`: the node's local image store.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use podsnap_image::{ImageConfig, ImageStore, PullAuth, PullOptions};

/// Where the image store lives unless `--store` says otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/podsnap/images";

/// `podsnap image` verbs.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an image: an OCI layout directory, an OCI or Docker archive (`docker save`,
    /// tar or tar.gz), or a root file system directory (with --name and optionally --cmd).
    Import {
        /// The image file or directory.
        source: PathBuf,
        /// Name to give it (required for a directory; overrides the archive's tags).
        #[arg(long)]
        name: Option<String>,
        /// For a directory: the command to run, e.g. `--cmd /app/server --cmd --port=8080`.
        #[arg(long)]
        cmd: Vec<String>,
        /// For a directory: environment, `KEY=VALUE`; repeatable.
        #[arg(long)]
        env: Vec<String>,
        /// The store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// Pull an image from a registry (`registry/repository:tag` or `…@sha256:…`; Docker Hub
    /// when no registry is given): the linux image for this machine's architecture, layers
    /// checked against their digests and shared with the images already here. Credentials
    /// come from --username/--password or from `docker login` (~/.docker/config.json).
    Pull {
        /// The image reference, e.g. `registry.example.com/team/app:1.0`.
        reference: String,
        /// Name to store it as (default: the reference).
        #[arg(long)]
        name: Option<String>,
        /// Plain HTTP, for a registry without TLS (e.g. `localhost:5000`).
        #[arg(long)]
        insecure: bool,
        /// User name for the registry (with --password; default: ~/.docker/config.json).
        #[arg(long, requires = "password")]
        username: Option<String>,
        /// Password or token for the registry.
        #[arg(long, env = "PODSNAP_REGISTRY_PASSWORD", requires = "username")]
        password: Option<String>,
        /// The store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// List the images.
    Ls {
        /// The store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// Remove images: their root file systems are unmounted and the layers no other image uses
    /// deleted.
    Rm {
        /// Image names.
        #[arg(required = true)]
        names: Vec<String>,
        /// The store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
}

/// Runs a `podsnap image` verb.
pub fn run(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import {
            source,
            name,
            cmd,
            env,
            store,
        } => {
            let store = ImageStore::open(store)?;
            let config = (!cmd.is_empty() || !env.is_empty()).then(|| ImageConfig {
                cmd,
                env,
                ..ImageConfig::default()
            });
            for record in store.import(&source, name.as_deref(), config)? {
                println!(
                    "imported {} ({}, {:.1} MiB)",
                    record.name,
                    short(&record.id),
                    record.size as f64 / 1048576.0
                );
            }
        }
        ImageCommand::Pull {
            reference,
            name,
            insecure,
            username,
            password,
            store,
        } => {
            let store = ImageStore::open(store)?;
            let auth = match (username, password) {
                (Some(username), Some(password)) => PullAuth::Basic { username, password },
                _ => PullAuth::DockerConfig,
            };
            let options = PullOptions {
                insecure,
                auth,
                name,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let record = runtime.block_on(store.pull(&reference, &options))?;
            println!(
                "pulled {} ({}, {} layers, {:.1} MiB)",
                record.name,
                short(&record.id),
                record.layers.len(),
                record.size as f64 / 1048576.0
            );
        }
        ImageCommand::Ls { store } => {
            let store = ImageStore::open(store)?;
            println!("{:<50} {:<14} {:>6} {:>10}", "NAME", "ID", "LAYERS", "SIZE");
            for record in store.list()? {
                println!(
                    "{:<50} {:<14} {:>6} {:>9.1}M",
                    record.name,
                    short(&record.id),
                    record.layers.len(),
                    record.size as f64 / 1048576.0
                );
            }
        }
        ImageCommand::Rm { names, store } => {
            let store = ImageStore::open(store)?;
            for name in names {
                store.remove(&name)?;
                println!("removed {name}");
            }
        }
    }
    Ok(())
}

fn short(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}
