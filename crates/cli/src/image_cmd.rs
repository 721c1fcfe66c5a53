//! `podsnap image …`: the node's local image store.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use podsnap_image::{ImageConfig, ImageStore};

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
    /// List the images.
    Ls {
        /// The store directory.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: PathBuf,
    },
    /// Remove images.
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
        ImageCommand::Ls { store } => {
            let store = ImageStore::open(store)?;
            println!("{:<50} {:<14} {:>10}", "NAME", "ID", "SIZE");
            for record in store.list()? {
                println!(
                    "{:<50} {:<14} {:>9.1}M",
                    record.name,
                    short(&record.id),
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
