//! Native checkpoint images in a snapshot repository.
//!
//! An image directory becomes one snapshot: every file a stream `native/<path>` (the prefix
//! says which format the snapshot holds). Page files — those starting with `PSNPAGES`, a 16-byte
//! header and whole 4 KiB pages — are cut with page-aligned content-defined chunks
//! ([`Chunking::pages`]), so a second checkpoint of the same process finds its unchanged memory
//! stored even where pages moved; other files (`manifest.json`) are small plain streams. A
//! fetch writes every stream back as its file, each chunk verified by the repository.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podsnap_api::EngineInfo;
use podsnap_native::cr::image;
use podsnap_repo::{
    Chunking, EncryptionKey, Progress, RepoError, RepoOptions, Repository, SnapshotMetadata,
    StoreOptions, format,
};

/// Prefix of the streams of a native image.
pub const NATIVE_PREFIX: &str = "native/";
/// The stream every native image has (its manifest, written last by a checkpoint).
pub const MANIFEST_STREAM: &str = "native/manifest.json";
/// Label naming the format of a snapshot's content.
pub const FORMAT_LABEL: &str = "podsnap.io/image-format";
/// [`FORMAT_LABEL`]'s value for native images (version 1 of this mapping).
pub const FORMAT_NATIVE: &str = "native-v1";

/// Opens `repo`: a URL (`file:///DIR`, `s3://…`, see `podsnap repo`) or a local directory.
pub fn open_repo(
    repo: &str,
    key_file: Option<&Path>,
    cache_dir: Option<&Path>,
    concurrency: usize,
) -> Result<Repository> {
    let url = if repo.contains("://") {
        repo.to_owned()
    } else {
        let dir = std::path::absolute(repo)
            .with_context(|| format!("--repo {repo}: cannot resolve the directory"))?;
        format!("file://{}", dir.display())
    };
    let location = podsnap_repo::open_url(&url, &StoreOptions::default())?;
    let key = key_file.map(EncryptionKey::from_file).transpose()?;
    let options = RepoOptions {
        concurrency: concurrency.max(1),
        cache: cache_dir.map(|d| (d.to_path_buf(), 10 << 30)),
        ..RepoOptions::default()
    };
    Ok(Repository::new(location, key, options)?)
}

/// A directory removed (with what is in it) when dropped, unless [`TempDir::keep`] was called.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// A fresh name `podsnap-native-<uuid>` under `parent` (created when missing); the
    /// directory itself is not created.
    pub fn new_in(parent: &Path) -> Result<Self> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        Ok(Self {
            path: parent.join(format!("podsnap-native-{}", uuid::Uuid::new_v4())),
            keep: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place; its path.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Where temporary image directories go: `explicit` when given, else beside the repository's
/// node cache (the same file system), else `/var/tmp` (on disk, unlike `/tmp` on many hosts).
pub fn temp_parent(explicit: Option<&Path>, cache_dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(parent) = cache_dir
        .and_then(|c| std::path::absolute(c).ok())
        .and_then(|c| c.parent().map(Path::to_path_buf))
    {
        return parent;
    }
    PathBuf::from("/var/tmp")
}

/// One file of an image directory: its path relative to the directory, with `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Relative path, e.g. `pages.img`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

/// Every regular file under `dir`, sorted by name; anything else (links, devices) is refused.
pub fn image_files(dir: &Path) -> Result<Vec<ImageFile>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<ImageFile>) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), &format!("{rel}/"), out)?;
            } else if kind.is_file() {
                out.push(ImageFile {
                    name: rel,
                    path: entry.path(),
                    size: entry.metadata()?.len(),
                });
            } else {
                bail!(
                    "{} is not a regular file; a native image holds only files",
                    entry.path().display()
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// How a file of a native image is chunked: page files page-aligned and content-defined,
/// anything else as a plain file.
pub fn chunking_for(path: &Path) -> Result<Chunking> {
    std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(if image::is_pages_file(path) {
        Chunking::pages(image::PAGES_HEADER as u32)
    } else {
        Chunking::FILES
    })
}

/// What storing an image did.
#[derive(Clone, Debug, Default)]
pub struct StoreReport {
    /// Files stored.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes uploaded (new chunks, compressed).
    pub new_bytes: u64,
    /// Chunks uploaded.
    pub new_chunks: u64,
    /// Chunks the repository had already.
    pub reused_chunks: u64,
    /// All-zero chunks (not stored).
    pub zero_chunks: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// From the first read to the committed manifest.
    pub elapsed: Duration,
}

/// Refuses a snapshot name that is invalid or taken, before anything is checkpointed.
pub async fn check_new_name(repo: &Repository, name: &str) -> Result<()> {
    format::validate_snapshot_id(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    match repo.manifest(name).await {
        Ok(_) => bail!(
            "snapshot {name} exists already in {}; pick another --name or delete it with `podsnap repo rm --url {} {name}`",
            repo.url(),
            repo.url()
        ),
        Err(RepoError::SnapshotNotFound { .. } | RepoError::NoRepository(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Stores every file of the image directory `dir` as a stream of the new snapshot `name`.
pub async fn store_image(
    repo: &Repository,
    name: &str,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<StoreReport> {
    let started = Instant::now();
    let files = image_files(dir)?;
    if !files.iter().any(|f| f.name == "manifest.json") {
        bail!(
            "{} holds no manifest.json: it is not a complete native image",
            dir.display()
        );
    }
    let mut metadata = SnapshotMetadata {
        engine: Some(EngineInfo {
            name: "native".into(),
            version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }),
        ..SnapshotMetadata::default()
    };
    metadata
        .labels
        .insert(FORMAT_LABEL.into(), FORMAT_NATIVE.into());
    let mut writer = repo.begin_snapshot(name, metadata).await?;
    let mut report = StoreReport::default();
    let result: Result<()> = async {
        for file in &files {
            let stream = format!("{NATIVE_PREFIX}{}", file.name);
            format::validate_stream_name(&stream).map_err(|e| {
                anyhow::anyhow!(
                    "image file {} cannot be stored: {e} (native image files have lower-case names)",
                    file.path.display()
                )
            })?;
            let chunking = chunking_for(&file.path)?;
            let source = std::fs::File::open(&file.path)
                .with_context(|| format!("cannot open {}", file.path.display()))?;
            let stats = writer
                .add_stream(&stream, chunking, source, Some(file.size), progress)
                .await?;
            report.files += 1;
            report.bytes += stats.bytes;
            report.new_bytes += stats.new_bytes;
            report.new_chunks += stats.new_chunks;
            report.reused_chunks += stats.reused_chunks;
            report.zero_chunks += stats.zero_chunks;
            report.chunks += stats.chunks;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.commit().await?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What fetching an image did.
#[derive(Clone, Debug, Default)]
pub struct FetchReport {
    /// Files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks fetched (store or cache) and verified.
    pub fetched_chunks: u64,
    /// All-zero chunks (nothing fetched).
    pub zero_chunks: u64,
    /// From opening the snapshot to the last file synced.
    pub elapsed: Duration,
}

/// The streams of a native image in `snapshot`, or an error saying what the snapshot is and
/// what to do instead.
pub fn native_streams(snapshot: &podsnap_repo::Snapshot, repo: &str) -> Result<Vec<String>> {
    let manifest = snapshot.manifest();
    let label = manifest.metadata.labels.get(FORMAT_LABEL);
    let streams: Vec<String> = manifest
        .streams
        .iter()
        .filter(|s| s.name.starts_with(NATIVE_PREFIX))
        .map(|s| s.name.clone())
        .collect();
    if let Some(found) = label
        && found != FORMAT_NATIVE
        && found.starts_with("native-")
    {
        bail!(
            "snapshot {} in {repo} holds a native image of format {found}; this podsnap reads {FORMAT_NATIVE}: restore it with the podsnap that wrote it, or take a new checkpoint",
            snapshot.id()
        );
    }
    if !streams.iter().any(|s| s == MANIFEST_STREAM) {
        let all: Vec<&str> = manifest.streams.iter().map(|s| s.name.as_str()).collect();
        let what = if all.iter().any(|s| s.starts_with("gvisor/")) {
            "a gVisor Pod snapshot (restored by `podsnap serve` when a Pod matches it)".to_owned()
        } else if all.iter().any(|s| s.starts_with("rootfs/")) {
            "a root-file-system snapshot of a Pod (restored by `podsnap serve`)".to_owned()
        } else {
            format!(
                "not a native checkpoint image (its streams: {})",
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                }
            )
        };
        bail!(
            "snapshot {} in {repo} is {what}: it has no {MANIFEST_STREAM} stream, so `podsnap native restore` cannot use it; name a snapshot written by `podsnap native checkpoint --repo`, or read its streams with `podsnap repo get`",
            snapshot.id()
        );
    }
    Ok(streams)
}

/// Writes the native image of snapshot `name` into the new directory `into`: each stream
/// fetched with verified chunks and written as its file.
pub async fn fetch_image(
    repo: &Repository,
    name: &str,
    into: &Path,
    progress: &dyn Progress,
) -> Result<FetchReport> {
    let started = Instant::now();
    let snapshot = repo.open_snapshot(name).await?;
    let streams = native_streams(&snapshot, repo.url())?;
    std::fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut report = FetchReport::default();
    for stream in streams {
        let rel = &stream[NATIVE_PREFIX.len()..];
        // Stream names are checked when written, but a manifest is data: never leave `into`.
        format::validate_stream_name(&stream)
            .map_err(|e| anyhow::anyhow!("snapshot {name}: {e}"))?;
        let path = into.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let stats = snapshot
            .read_stream_to_file(&stream, &path, progress)
            .await?;
        report.files += 1;
        report.bytes += stats.bytes;
        report.fetched_chunks += stats.fetched_chunks;
        report.zero_chunks += stats.zero_chunks;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Reads every native stream of snapshot `name` to nowhere, verifying each chunk (the
/// repository's read throughput for the image); the bytes read.
pub async fn read_image_to_sink(repo: &Repository, name: &str) -> Result<u64> {
    let snapshot = repo.open_snapshot(name).await?;
    let mut bytes = 0;
    for stream in native_streams(&snapshot, repo.url())? {
        bytes += snapshot
            .read_stream_to_writer(&stream, &mut std::io::sink(), &podsnap_repo::NoProgress)
            .await?
            .bytes;
    }
    Ok(bytes)
}

/// Mebibytes, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// MiB/s.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    mib(bytes) / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_files_get_page_aligned_chunks_and_other_files_plain_ones() {
        let dir = std::env::temp_dir().join(format!("podsnap-native-repo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut pages = b"PSNPAGES\x01\0\0\0\0\x10\0\0".to_vec();
        pages.extend(vec![1u8; 8192]);
        std::fs::write(dir.join("pages-12.img"), &pages).unwrap();
        pages[13] = 0x20; // 8 KiB pages: not this chunker's
        std::fs::write(dir.join("sub/pages.img"), &pages).unwrap();
        std::fs::write(dir.join("manifest.json"), b"{}").unwrap();
        std::fs::write(dir.join("short"), b"PSN").unwrap();
        let files = image_files(&dir).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["manifest.json", "pages-12.img", "short", "sub/pages.img"]
        );
        let chunkings: Vec<Chunking> = files
            .iter()
            .map(|f| chunking_for(&f.path).unwrap())
            .collect();
        assert_eq!(
            chunkings,
            [
                Chunking::FILES,
                Chunking::pages(16),
                Chunking::FILES,
                Chunking::FILES
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_directories_go_beside_the_cache_or_to_var_tmp() {
        assert_eq!(
            temp_parent(Some(Path::new("/x")), Some(Path::new("/c/cache"))),
            Path::new("/x")
        );
        assert_eq!(
            temp_parent(None, Some(Path::new("/var/cache/podsnap"))),
            Path::new("/var/cache")
        );
        assert_eq!(temp_parent(None, None), Path::new("/var/tmp"));
    }
}
