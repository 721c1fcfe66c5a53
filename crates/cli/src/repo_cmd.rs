//! `podsnap repo …`: snapshot repositories from the command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use podsnap_api::{Object, load_documents};
use podsnap_repo::{
    Chunking, EncryptionKey, GcOptions, RepoOptions, Repository, SnapshotMetadata, StoreOptions,
};

use crate::progress::TerminalProgress;

/// Where the repository is and how to open it.
#[derive(Args, Debug, Clone)]
pub struct RepoTarget {
    /// Repository URL: file:///DIR, s3://BUCKET/PREFIX[?endpoint=URL&region=R], gs://BUCKET/PREFIX,
    /// az://ACCOUNT/CONTAINER/PREFIX.
    #[arg(long, conflicts_with = "storage")]
    url: Option<String>,
    /// A PodSnapshotStorageConfig manifest naming the storage instead of a URL.
    #[arg(long)]
    storage: Option<PathBuf>,
    /// Key file of an encrypted repository (64 hex digits; see `podsnap repo keygen`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Node-local chunk cache directory; a restore through it downloads each chunk once.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Size bound of the chunk cache, in MiB.
    #[arg(long, default_value_t = 10240)]
    cache_mib: u64,
    /// Chunks uploaded or fetched at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// A storage setting by object_store's key name (e.g. aws_access_key_id=…); repeatable.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// `podsnap repo` verbs.
#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// List the snapshots in a repository.
    Ls {
        #[command(flatten)]
        target: RepoTarget,
    },
    /// Show a snapshot's manifest: streams, chunks, sizes, metadata.
    Inspect {
        #[command(flatten)]
        target: RepoTarget,
        /// The snapshot id.
        id: String,
        /// Print the manifest itself as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a snapshot: every chunk fetched, decrypted, decompressed and hashed.
    Verify {
        #[command(flatten)]
        target: RepoTarget,
        /// The snapshot id.
        id: String,
        /// Only check that every chunk exists, without reading it.
        #[arg(long)]
        quick: bool,
    },
    /// Delete a snapshot (its unshared chunks go at the next `gc`).
    Rm {
        #[command(flatten)]
        target: RepoTarget,
        /// Snapshot ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete chunks no snapshot references.
    Gc {
        #[command(flatten)]
        target: RepoTarget,
        /// Keep unreferenced chunks younger than this (e.g. `1h`, `30min`, `0`).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Store a file as a one-stream snapshot (for testing and debugging).
    Put {
        #[command(flatten)]
        target: RepoTarget,
        /// The file; `-` reads standard input.
        file: PathBuf,
        /// Snapshot id; a new UUID when absent.
        #[arg(long)]
        id: Option<String>,
        /// Stream name.
        #[arg(long, default_value = "data")]
        stream: String,
        /// How to cut the data: fixed 1 MiB chunks (memory images) or content-defined (files).
        #[arg(long, value_enum, default_value_t = ChunkingArg::Files)]
        chunking: ChunkingArg,
    },
    /// Write a snapshot's stream to a file (for testing and debugging).
    Get {
        #[command(flatten)]
        target: RepoTarget,
        /// The snapshot id.
        id: String,
        /// Stream name; needed when the snapshot has several.
        #[arg(long)]
        stream: Option<String>,
        /// Output file; `-` writes standard output.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Make a new random encryption key file (mode 0600).
    Keygen {
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// How `repo put` chunks its input.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ChunkingArg {
    /// Fixed 1 MiB chunks, as for memory images.
    Memory,
    /// Content-defined chunks averaging 1 MiB, as for files.
    Files,
}

impl RepoTarget {
    /// Opens the repository this target names.
    pub fn open(&self) -> Result<Repository> {
        let mut store = StoreOptions::default();
        for setting in &self.settings {
            let (k, v) = setting
                .split_once('=')
                .with_context(|| format!("--setting {setting}: write it as KEY=VALUE"))?;
            store.settings.push((k.to_owned(), v.to_owned()));
        }
        let mut key_file = self.key_file.clone();
        let location = match (&self.url, &self.storage) {
            (Some(url), _) => podsnap_repo::open_url(url, &store)?,
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}; check the path", file.display()))?;
                let docs = load_documents(&file.display().to_string(), &text)?;
                let config = docs
                    .into_iter()
                    .find_map(|d| match d.object {
                        Object::StorageConfig(c) => Some(c),
                        _ => None,
                    })
                    .with_context(|| {
                        format!("{} holds no PodSnapshotStorageConfig", file.display())
                    })?;
                if let Some(encryption) = &config.spec.encryption
                    && key_file.is_none()
                {
                    match (&encryption.key_file, &encryption.secret_ref) {
                        (Some(path), _) => key_file = Some(PathBuf::from(path)),
                        (None, Some(secret)) => bail!(
                            "the storage config takes its key from Secret {}; the node agent reads Secrets, from the command line pass the key with --key-file",
                            secret.name
                        ),
                        (None, None) => {}
                    }
                }
                podsnap_repo::open(&config.spec.snapshot_storage_config, &store)?
            }
            (None, None) => bail!("name the repository with --url URL or --storage FILE"),
        };
        let key = key_file
            .as_deref()
            .map(EncryptionKey::from_file)
            .transpose()?;
        let options = RepoOptions {
            concurrency: self.concurrency.max(1),
            cache: self.cache_dir.clone().map(|d| (d, self.cache_mib << 20)),
            ..RepoOptions::default()
        };
        Ok(Repository::new(location, key, options)?)
    }
}

fn parse_grace(text: &str) -> Result<Duration> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    Ok(podsnap_api::RetentionDuration::parse(text)
        .with_context(|| format!("--grace {text}"))?
        .as_duration())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Runs a `podsnap repo` verb.
pub async fn run(command: RepoCommand) -> Result<()> {
    match command {
        RepoCommand::Ls { target } => {
            let repo = target.open()?;
            let list = repo.list_snapshots().await?;
            println!("{:<40} {:<28} {:>10}  STREAMS", "ID", "CREATED", "SIZE");
            for s in list {
                println!(
                    "{:<40} {:<28} {:>10}  {}",
                    s.id,
                    s.created_at,
                    human(s.size),
                    s.streams.join(",")
                );
            }
        }
        RepoCommand::Inspect { target, id, json } => {
            let repo = target.open()?;
            let manifest = repo.manifest(&id).await?;
            if json {
                println!("{}", String::from_utf8_lossy(&manifest.to_bytes()));
                return Ok(());
            }
            println!("snapshot      {}", manifest.snapshot_id);
            println!("created       {}", manifest.created_at);
            println!("format        {} v{}", manifest.format, manifest.version);
            println!(
                "encrypted     {}",
                manifest
                    .key_id
                    .as_deref()
                    .map_or("no".to_owned(), |k| format!("yes (key {k})"))
            );
            if let Some(policy) = &manifest.metadata.policy {
                println!("policy        {policy}");
            }
            if let Some(hash) = &manifest.metadata.distilled_spec_hash {
                println!("spec hash     {hash}");
            }
            println!("size          {}", human(manifest.total_size()));
            for stream in &manifest.streams {
                let zero = stream.chunks.iter().filter(|c| c.id.is_none()).count();
                let kind = match stream.chunking {
                    Chunking::Fixed { size } => format!("fixed {}", human(u64::from(size))),
                    Chunking::Cdc { avg, .. } => format!("cdc avg {}", human(u64::from(avg))),
                    Chunking::PageCdc { avg, .. } => {
                        format!("page-aligned cdc avg {}", human(u64::from(avg)))
                    }
                };
                println!(
                    "stream        {}: {} in {} chunks ({zero} zero), {kind}",
                    stream.name,
                    human(stream.size),
                    stream.chunks.len()
                );
            }
        }
        RepoCommand::Verify { target, id, quick } => {
            let repo = target.open()?;
            let started = Instant::now();
            let report = repo.verify_snapshot(&id, !quick).await?;
            if quick {
                println!(
                    "{id}: all {} chunks exist ({:.1?})",
                    report.chunks,
                    started.elapsed()
                );
            } else {
                println!(
                    "{id}: all {} chunks verified, {} ({:.1?})",
                    report.chunks,
                    human(report.bytes),
                    started.elapsed()
                );
            }
        }
        RepoCommand::Rm { target, ids } => {
            let repo = target.open()?;
            for id in ids {
                repo.delete_snapshot(&id).await?;
                println!("deleted {id}");
            }
        }
        RepoCommand::Gc {
            target,
            grace,
            dry_run,
        } => {
            let repo = target.open()?;
            let options = GcOptions {
                grace: parse_grace(&grace)?,
                dry_run,
                ..GcOptions::default()
            };
            let report = repo.gc(&options).await?;
            for name in &report.stale_writes_removed {
                println!("removed the marker of an abandoned write: {name}");
            }
            for id in &report.orphan_working_sets {
                println!(
                    "{} the recorded working set of deleted snapshot {id}",
                    if dry_run { "would remove" } else { "removed" }
                );
            }
            if !report.writes_in_progress.is_empty() {
                println!(
                    "sweep postponed: snapshot writes in progress ({}); run gc again later",
                    report.writes_in_progress.join(", ")
                );
            }
            println!(
                "{} snapshots reference {} chunks; {} unreferenced chunks ({} kept for the grace period); deleted {} chunks, {}{}",
                report.snapshots,
                report.referenced_chunks,
                report.unreferenced_chunks,
                report.young_chunks,
                report.deleted_chunks,
                human(report.deleted_bytes),
                if dry_run { " (dry run)" } else { "" }
            );
        }
        RepoCommand::Put {
            target,
            file,
            id,
            stream,
            chunking,
        } => {
            let repo = target.open()?;
            let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let chunking = match chunking {
                ChunkingArg::Memory => Chunking::MEMORY,
                ChunkingArg::Files => Chunking::FILES,
            };
            let (source, size): (Box<dyn std::io::Read + Send>, Option<u64>) =
                if file.as_os_str() == "-" {
                    (Box::new(std::io::stdin()), None)
                } else {
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?;
                    let size = f.metadata().ok().map(|m| m.len());
                    (Box::new(f), size)
                };
            let started = Instant::now();
            let mut writer = repo
                .begin_snapshot(&id, SnapshotMetadata::default())
                .await?;
            let stats = writer
                .add_stream(&stream, chunking, source, size, &TerminalProgress::new())
                .await?;
            writer.commit().await?;
            let secs = started.elapsed().as_secs_f64();
            println!("{id}");
            eprintln!(
                "stored {} in {} chunks ({} new, {} already in the repository, {} zero); uploaded {}; {:.0} MiB/s",
                human(stats.bytes),
                stats.chunks,
                stats.new_chunks,
                stats.reused_chunks,
                stats.zero_chunks,
                human(stats.new_bytes),
                stats.bytes as f64 / 1048576.0 / secs.max(1e-9)
            );
        }
        RepoCommand::Get {
            target,
            id,
            stream,
            output,
        } => {
            let repo = target.open()?;
            let snapshot = repo.open_snapshot(&id).await?;
            let stream = match stream {
                Some(s) => s,
                None => match snapshot.manifest().streams.as_slice() {
                    [one] => one.name.clone(),
                    many => bail!(
                        "snapshot {id} has {} streams ({}); choose one with --stream",
                        many.len(),
                        many.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            };
            let progress = TerminalProgress::new();
            let started = Instant::now();
            let stats = if output.as_os_str() == "-" {
                let stdout = std::io::stdout();
                let mut lock = stdout.lock();
                let stats = snapshot
                    .read_stream_to_writer(&stream, &mut lock, &progress)
                    .await?;
                lock.flush().context("writing standard output")?;
                stats
            } else {
                snapshot
                    .read_stream_to_file(&stream, &output, &progress)
                    .await?
            };
            eprintln!(
                "restored {} ({} chunks fetched, {} zero) in {:.2?}",
                human(stats.bytes),
                stats.fetched_chunks,
                stats.zero_chunks,
                started.elapsed()
            );
        }
        RepoCommand::Keygen { output } => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&output)
                .with_context(|| {
                    format!("cannot create {} (it must not exist yet)", output.display())
                })?;
            writeln!(file, "{}", EncryptionKey::generate_hex())?;
            let key = EncryptionKey::from_file(&output)?;
            eprintln!(
                "wrote a new key to {} (key id {}); keep it safe: without it the snapshots cannot be read",
                output.display(),
                key.key_id()
            );
        }
    }
    Ok(())
}
