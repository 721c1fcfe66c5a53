//! Engine checkpoint images as repository streams, and back.
//!
//! A file of a gvisor checkpoint that is a runsc state file (`checkpoint.img`) is stored as
//! two streams, `gvisor/<file>/header` (its header, byte for byte) and `gvisor/<file>/state`
//! (the state decompressed, in content-defined chunks), so that a second snapshot of an
//! unchanged workload finds nearly all its chunks stored already; any other file is stored
//! as it is under `gvisor/<file>`. A native engine checkpoint (a directory with
//! `sandbox.json`, the process tree's image and the root file system's changes) is stored
//! file by file under `native/<path>`, page files in page-aligned content-defined chunks. On
//! restore the files are assembled again — state files with stored DEFLATE blocks, see
//! [`podsnap_engine::gvisor_image`] — into the node's [`ImageCache`], from which a later
//! restore of the same snapshot links them at once.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use podsnap_engine::gvisor_image::{ImageEncoder, ImageHeader, MAGIC, StateDecoder};
use podsnap_repo::{Chunking, Progress, Snapshot};

/// Prefix of the streams of a gvisor checkpoint.
pub const GVISOR_PREFIX: &str = "gvisor/";
/// Prefix of the streams of a native engine checkpoint.
pub const NATIVE_PREFIX: &str = "native/";
/// The file that marks a native engine checkpoint directory.
const NATIVE_MARKER: &str = "sandbox.json";
const HEADER: &str = "header";
const STATE: &str = "state";

/// How a file's bytes become a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The file as it is.
    Plain,
    /// The header of a runsc state file.
    StateHeader,
    /// The decompressed state of a runsc state file.
    State,
}

/// One stream to store: its name, the file it comes from, how to cut it and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The stream's name in the snapshot.
    pub stream: String,
    /// The file on this node.
    pub path: PathBuf,
    /// How the stream is cut into chunks.
    pub chunking: Chunking,
    /// How the file is read.
    pub encoding: Encoding,
}

impl Upload {
    /// A file stored as it is.
    pub fn plain(stream: String, path: PathBuf, chunking: Chunking) -> Self {
        Self {
            stream,
            path,
            chunking,
            encoding: Encoding::Plain,
        }
    }

    /// The stream's bytes, and their number when known in advance.
    pub fn open(&self) -> std::io::Result<(Box<dyn Read + Send>, Option<u64>)> {
        let file = std::fs::File::open(&self.path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
        })?;
        let size = file.metadata().ok().map(|m| m.len());
        let mut reader = BufReader::with_capacity(1 << 20, file);
        Ok(match self.encoding {
            Encoding::Plain => (Box::new(reader), size),
            Encoding::StateHeader => {
                let header = ImageHeader::read_from(&mut reader)?;
                let bytes = header.as_bytes().to_vec();
                let len = bytes.len() as u64;
                (Box::new(std::io::Cursor::new(bytes)), Some(len))
            }
            // The state is larger than the file; the file's size still tells progress a
            // rough total.
            Encoding::State => (Box::new(StateDecoder::open(reader)?.1), size),
        })
    }
}

/// The streams for the files of an engine's checkpoint in `dir`: a native one (it has
/// `sandbox.json`) or a gvisor one.
pub fn checkpoint_uploads(dir: &Path, files: &[(String, u64)]) -> Vec<Upload> {
    if files.iter().any(|(f, _)| f == NATIVE_MARKER) {
        native_uploads(dir, files)
    } else {
        gvisor_uploads(dir, files)
    }
}

/// The streams for the files of a native checkpoint in `dir`.
fn native_uploads(dir: &Path, files: &[(String, u64)]) -> Vec<Upload> {
    files
        .iter()
        .map(|(file, _)| {
            let path = dir.join(file);
            let chunking = if podsnap_native::cr::image::is_pages_file(&path) {
                Chunking::pages(podsnap_native::cr::image::PAGES_HEADER as u32)
            } else {
                Chunking::FILES
            };
            Upload::plain(format!("{NATIVE_PREFIX}{file}"), path, chunking)
        })
        .collect()
}

/// The streams for the files of a gvisor checkpoint in `dir`.
pub fn gvisor_uploads(dir: &Path, files: &[(String, u64)]) -> Vec<Upload> {
    let mut uploads = Vec::new();
    for (file, _) in files {
        let path = dir.join(file);
        let name = file.to_ascii_lowercase();
        if is_state_file(&path) {
            for (part, encoding, chunking) in [
                (HEADER, Encoding::StateHeader, Chunking::FILES),
                (STATE, Encoding::State, Chunking::FILES),
            ] {
                uploads.push(Upload {
                    stream: format!("{GVISOR_PREFIX}{name}/{part}"),
                    path: path.clone(),
                    chunking,
                    encoding,
                });
            }
        } else {
            uploads.push(Upload::plain(
                format!("{GVISOR_PREFIX}{name}"),
                path,
                Chunking::MEMORY,
            ));
        }
    }
    uploads
}

fn is_state_file(path: &Path) -> bool {
    let mut magic = [0u8; MAGIC.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

/// The files a snapshot's checkpoint streams make: stream name without its suffix, file
/// name, and whether it is a decoded runsc state file.
fn image_files(snapshot: &Snapshot) -> Vec<(String, String, bool)> {
    let mut files = Vec::new();
    for stream in &snapshot.manifest().streams {
        if let Some(rest) = stream.name.strip_prefix(NATIVE_PREFIX) {
            files.push((stream.name.clone(), rest.to_owned(), false));
            continue;
        }
        let Some(rest) = stream.name.strip_prefix(GVISOR_PREFIX) else {
            continue;
        };
        match rest.split_once('/') {
            None => files.push((stream.name.clone(), rest.to_owned(), false)),
            Some((file, HEADER)) => {
                files.push((format!("{GVISOR_PREFIX}{file}"), file.to_owned(), true))
            }
            Some(_) => {}
        }
    }
    files
}

/// Writes the checkpoint files of `snapshot` into the directory `into`.
pub async fn assemble(
    snapshot: &Snapshot,
    into: &Path,
    progress: &dyn Progress,
) -> Result<u64, String> {
    assemble_where(snapshot, into, progress, |_| true).await
}

/// The file (relative to the image directory) a native checkpoint's stream `name` holds.
pub fn file_of_stream(name: &str) -> Result<String, String> {
    let file = name.strip_prefix(NATIVE_PREFIX).unwrap_or(name);
    if file.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(format!(
            "stream {name} names no plain file path; the snapshot is damaged, take a new one"
        ));
    }
    Ok(file.to_owned())
}

/// [`assemble`] for the files whose stream name `wanted` accepts.
pub async fn assemble_where(
    snapshot: &Snapshot,
    into: &Path,
    progress: &dyn Progress,
    wanted: impl Fn(&str) -> bool,
) -> Result<u64, String> {
    let mut bytes = 0;
    for (stream, file, decoded) in image_files(snapshot) {
        if !wanted(&stream) {
            continue;
        }
        file_of_stream(&file)?;
        let path = into.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        if !decoded {
            let stats = snapshot
                .read_stream_to_file(&stream, &path, progress)
                .await
                .map_err(|e| e.to_string())?;
            bytes += stats.bytes;
            continue;
        }
        let mut header = Vec::new();
        snapshot
            .read_stream_to_writer(
                &format!("{stream}/{HEADER}"),
                &mut header,
                &podsnap_repo::NoProgress,
            )
            .await
            .map_err(|e| e.to_string())?;
        let header = ImageHeader::parse(&header).map_err(|e| {
            format!("the stored header of {file} is not usable: {e}; take a new snapshot")
        })?;
        let out = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let out = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut encoder = ImageEncoder::new(out, &header)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let stats = snapshot
            .read_stream_to_writer(&format!("{stream}/{STATE}"), &mut encoder, progress)
            .await
            .map_err(|e| e.to_string())?;
        encoder
            .finish()
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        bytes += stats.bytes;
    }
    Ok(bytes)
}

/// Whether `snapshot` holds an engine checkpoint (gvisor or native).
pub fn has_engine_image(snapshot: &Snapshot) -> bool {
    !image_files(snapshot).is_empty()
}

/// Checkpoint images assembled on this node, by manifest digest, so that restoring a
/// snapshot again needs no assembly: each entry is a directory renamed into place when
/// complete, linked into a restore's image directory, and the least recently used entries
/// are removed when the total passes the capacity.
#[derive(Clone, Debug)]
pub struct ImageCache {
    dir: PathBuf,
    capacity: u64,
}

/// Where a restore's image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Linked from the node's cache.
    Hit,
    /// Assembled from the repository (and cached when it fits).
    Assembled,
    /// Small files assembled, page files read in place as they arrive from the repository
    /// (cached once complete, when it fits).
    Streamed,
}

impl ImageCache {
    /// The cache in `dir`, holding at most `capacity` bytes (0: no caching).
    pub fn new(dir: PathBuf, capacity: u64) -> Self {
        Self { dir, capacity }
    }

    /// Removes what an interrupted assembly left (called when the agent starts).
    pub fn remove_partial(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Puts the checkpoint files of `snapshot` into the empty directory `into`: linked from
    /// the cache, or assembled from the repository.
    pub async fn provide(
        &self,
        snapshot: &Snapshot,
        into: &Path,
        progress: &dyn Progress,
    ) -> Result<CacheOutcome, String> {
        if self.link_cached(snapshot, into) {
            return Ok(CacheOutcome::Hit);
        }
        let partial = self.partial_dir()?;
        if let Err(message) = assemble(snapshot, &partial, progress).await {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(message);
        }
        // Linked before it is adopted: an entry larger than the whole cache is not kept.
        let linked = link_all(&partial, into);
        self.adopt(snapshot, &partial);
        linked.map_err(|e| format!("linking the assembled image: {e}"))?;
        Ok(CacheOutcome::Assembled)
    }

    /// Links the cached image of `snapshot` into `into`, if the cache has it.
    pub fn link_cached(&self, snapshot: &Snapshot, into: &Path) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let entry = self.entry_of(snapshot);
        let linked = link_all(&entry, into).is_ok();
        if linked {
            touch(&entry);
        }
        linked
    }

    /// A new directory to assemble an image in (removed at start-up if left unfinished).
    pub fn partial_dir(&self) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let partial = self.dir.join(format!(".partial-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        Ok(partial)
    }

    /// Makes the complete image in `partial` (from [`ImageCache::partial_dir`]) the cache's
    /// entry for `snapshot`, evicting older entries; it is removed instead when it is larger
    /// than the whole cache, or another restore placed the same entry meanwhile.
    pub fn adopt(&self, snapshot: &Snapshot, partial: &Path) {
        let entry = self.entry_of(snapshot);
        if dir_size(partial) <= self.capacity && std::fs::rename(partial, &entry).is_ok() {
            touch(&entry);
            self.evict(&entry);
            return;
        }
        let _ = std::fs::remove_dir_all(partial);
    }

    fn entry_of(&self, snapshot: &Snapshot) -> PathBuf {
        self.dir.join(snapshot.manifest().compute_digest())
    }

    /// Removes the cached image of `snapshot`, if any (after a restore from it failed).
    pub fn forget(&self, snapshot: &Snapshot) {
        let entry = self.entry_of(snapshot);
        if std::fs::remove_dir_all(&entry).is_ok() {
            tracing::info!(entry = %entry.display(), "cached checkpoint image removed after a failed restore");
        }
    }

    /// Removes the least recently used entries, except `keep`, while the total is over the
    /// capacity.
    fn evict(&self, keep: &Path) {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = read
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let used = e.metadata().ok()?.modified().ok()?;
                Some((used, dir_size(&e.path()), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.capacity {
                break;
            }
            if path != keep && std::fs::remove_dir_all(&path).is_ok() {
                tracing::debug!(entry = %path.display(), "assembled image evicted");
                total -= size;
            }
        }
    }
}

/// Hard-links (or, across file systems, copies) every file of `from` into `into`.
pub(crate) fn link_all(from: &Path, into: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = into.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            link_all(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Flushes every file under `dir` to disk.
pub(crate) fn sync_all(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_all(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_data()?;
        }
    }
    Ok(())
}

/// Marks an entry as just used.
fn touch(entry: &Path) {
    if let Ok(dir) = std::fs::File::open(entry) {
        let _ = dir.set_modified(SystemTime::now());
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some(if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    })
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cache: &Path, name: &str, bytes: usize, age_secs: u64) -> PathBuf {
        let dir = cache.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("checkpoint.img"), vec![1u8; bytes]).unwrap();
        let used = SystemTime::now() - std::time::Duration::from_secs(age_secs);
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(used)
            .unwrap();
        dir
    }

    #[test]
    fn least_recently_used_entries_go_first_and_partial_ones_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path().to_owned(), 2500);
        let oldest = entry(dir.path(), "a", 1000, 300);
        let older = entry(dir.path(), "b", 1000, 200);
        let newest = entry(dir.path(), "c", 1000, 100);
        let partial = entry(dir.path(), ".partial-x", 5000, 1000);
        // The entry just used is kept even when it is the oldest.
        cache.evict(&oldest);
        assert!(oldest.exists() && !older.exists() && newest.exists());
        assert!(
            partial.exists(),
            "evict leaves assemblies in progress alone"
        );
        cache.remove_partial();
        assert!(!partial.exists());
        assert!(oldest.exists() && newest.exists());

        let into = dir.path().join("restore");
        std::fs::create_dir(&into).unwrap();
        link_all(&newest, &into).unwrap();
        assert_eq!(
            std::fs::read(into.join("checkpoint.img")).unwrap().len(),
            1000
        );
        // Linked, not copied: the restore keeps its file when the entry is evicted.
        std::fs::remove_dir_all(&newest).unwrap();
        assert!(into.join("checkpoint.img").exists());
    }

    #[test]
    fn state_files_become_header_and_state_streams_and_others_stay_plain() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = MAGIC.to_vec();
        image.extend_from_slice(&[0; 100]);
        std::fs::write(dir.path().join("checkpoint.img"), &image).unwrap();
        std::fs::write(dir.path().join("Pages.img"), b"pages").unwrap();
        let files = vec![("checkpoint.img".into(), 108), ("Pages.img".into(), 5)];
        let uploads = gvisor_uploads(dir.path(), &files);
        let summary: Vec<(&str, Encoding)> = uploads
            .iter()
            .map(|u| (u.stream.as_str(), u.encoding))
            .collect();
        assert_eq!(
            summary,
            [
                ("gvisor/checkpoint.img/header", Encoding::StateHeader),
                ("gvisor/checkpoint.img/state", Encoding::State),
                ("gvisor/pages.img", Encoding::Plain),
            ]
        );
        for u in &uploads {
            podsnap_repo::format::validate_stream_name(&u.stream).unwrap();
        }
    }

    #[test]
    fn a_native_checkpoint_is_stored_file_by_file_with_page_files_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NATIVE_MARKER), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("processes")).unwrap();
        let mut pages = b"PSNPAGES".to_vec();
        pages.extend(1u32.to_le_bytes());
        pages.extend(4096u32.to_le_bytes());
        pages.extend([7u8; 4096]);
        std::fs::write(dir.path().join("processes/pages-1.img"), &pages).unwrap();
        std::fs::write(dir.path().join("processes/manifest.json"), b"{}").unwrap();
        let files = vec![
            ("processes/manifest.json".into(), 2),
            ("processes/pages-1.img".into(), pages.len() as u64),
            (NATIVE_MARKER.into(), 2),
        ];
        let uploads = checkpoint_uploads(dir.path(), &files);
        let summary: Vec<(&str, Chunking)> = uploads
            .iter()
            .map(|u| (u.stream.as_str(), u.chunking))
            .collect();
        assert_eq!(
            summary,
            [
                ("native/processes/manifest.json", Chunking::FILES),
                ("native/processes/pages-1.img", Chunking::pages(16)),
                ("native/sandbox.json", Chunking::FILES),
            ]
        );
        for u in &uploads {
            podsnap_repo::format::validate_stream_name(&u.stream).unwrap();
            assert_eq!(u.encoding, Encoding::Plain);
        }
        // An image with directories is linked whole.
        let into = tempfile::tempdir().unwrap();
        link_all(dir.path(), into.path()).unwrap();
        assert_eq!(
            std::fs::read(into.path().join("processes/pages-1.img")).unwrap(),
            pages
        );
        assert_eq!(dir_size(dir.path()), dir_size(into.path()));
        assert!(dir_size(into.path()) > pages.len() as u64);
    }
}
