//! Restoring from a snapshot before its image has arrived: the page files of a native
//! checkpoint are read in place from the repository while the rest of the image (small) is
//! assembled first.
//!
//! Each page file becomes a [`StreamedFile`]: a file of the image's size on this node that a
//! [`PriorityFetcher`] fills chunk by chunk in the background; a read waits only for the
//! chunks it covers, which are fetched ahead of the fill. So a lazy restore resumes the
//! processes as soon as the small files are there, whatever the size of the memory, and a
//! page fault costs at most one chunk fetch. A recorded working set's chunks are fetched
//! first, in its order. When every chunk is in, the directory becomes an entry of the node's
//! image cache, so that the next restore of the snapshot on this node links it at once.
//!
//! A failed fetch (a missing or corrupt chunk, an unreachable store) fails every read that
//! needs that chunk, with the repository's message; a read waits for its chunks for at most
//! the fetch timeout, so a stalled store fails a restore instead of hanging it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podsnap_engine::{ImageFile, ImageFiles, WorkingSet};
use podsnap_repo::{Chunking, PriorityFetcher, Snapshot, Stream};

use crate::images::{self, CacheOutcome, ImageCache, NATIVE_PREFIX};

/// Concurrent chunk fetches per page file.
const FETCH_WORKERS: usize = 8;

/// A page file read in place: fetched from the repository into a local file as it is read,
/// and completely in the background.
pub struct StreamedFile {
    stream: String,
    file: File,
    size: u64,
    starts: Vec<u64>,
    fetcher: PriorityFetcher,
    runtime: tokio::runtime::Handle,
    fetch_timeout: Duration,
    write_error: Arc<Mutex<Option<String>>>,
}

impl ImageFile for StreamedFile {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read(offset, buf, false)
    }

    fn read_for_fault(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read(offset, buf, true)
    }
}

impl StreamedFile {
    /// Fetches the chunks holding the `block` bytes at each of `offsets` (a recorded working
    /// set) ahead of the background order, in this order, without waiting for them.
    pub fn prefetch(&self, offsets: &[u64], block: u64) {
        self.fetcher
            .prioritize(&first_chunks(&self.starts, offsets, block));
    }

    /// Reads `buf.len()` bytes at `offset` once the chunks that hold them are in; `fault`:
    /// their fetches go ahead of every other waiting one.
    fn read(&self, offset: u64, buf: &mut [u8], fault: bool) -> std::io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} has {} bytes; {} asked for at {offset}",
                    self.stream,
                    self.size,
                    buf.len()
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let chunks = chunks_covering(&self.starts, offset, end);
        if !fault {
            // All of them queued at once, fetched side by side.
            self.fetcher.prioritize(&chunks.clone().collect::<Vec<_>>());
        }
        for index in chunks {
            // The timer is made inside the runtime's context (this thread has none).
            let fetched = self.runtime.block_on(async {
                let request = async {
                    match fault {
                        true => self.fetcher.request_first(index).await,
                        false => self.fetcher.request(index).await,
                    }
                };
                tokio::time::timeout(self.fetch_timeout, request).await
            });
            match fetched {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "chunk {index} of {} could not be fetched from the repository: {e}",
                        self.stream
                    )));
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "chunk {index} of {} did not arrive from the repository within \
                             {:?}; check that the storage is reachable",
                            self.stream, self.fetch_timeout
                        ),
                    ));
                }
            }
        }
        if let Some(message) = self.write_error.lock().expect("write error lock").clone() {
            return Err(std::io::Error::other(message));
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// The chunks (by index, given where each starts) that hold bytes `offset..end`.
fn chunks_covering(starts: &[u64], offset: u64, end: u64) -> std::ops::Range<usize> {
    let first = starts.partition_point(|&s| s <= offset).saturating_sub(1);
    let last = starts.partition_point(|&s| s < end);
    first..last.max(first + 1)
}

/// Whether a snapshot's stream is a native page file (read in place).
pub fn is_page_stream(stream: &Stream) -> bool {
    stream.name.starts_with(NATIVE_PREFIX) && matches!(stream.chunking, Chunking::PageCdc { .. })
}

/// Whether `snapshot` holds a native checkpoint whose page files can be read in place.
pub fn can_read_in_place(snapshot: &Snapshot) -> bool {
    snapshot.manifest().streams.iter().any(is_page_stream)
}

/// Puts the native checkpoint of `snapshot` into the empty directory `into`: linked from the
/// node's cache when it is there (no files to read in place), or with every file but the
/// page files assembled and the page files returned to be read in place while they arrive
/// (a read waits at most `fetch_timeout` for its chunks). `working_set` (from an earlier
/// restore) is fetched first.
pub async fn provide(
    cache: &ImageCache,
    snapshot: &Snapshot,
    into: &Path,
    working_set: Option<&WorkingSet>,
    fetch_timeout: Duration,
    progress: &dyn podsnap_repo::Progress,
) -> Result<(CacheOutcome, ImageFiles), String> {
    if cache.link_cached(snapshot, into) {
        return Ok((CacheOutcome::Hit, ImageFiles::new()));
    }
    let partial = cache.partial_dir()?;
    let result = provide_into(
        cache,
        snapshot,
        (&partial, into),
        working_set,
        fetch_timeout,
        progress,
    )
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result.map(|files| (CacheOutcome::Streamed, files))
}

async fn provide_into(
    cache: &ImageCache,
    snapshot: &Snapshot,
    (partial, into): (&Path, &Path),
    working_set: Option<&WorkingSet>,
    fetch_timeout: Duration,
    progress: &dyn podsnap_repo::Progress,
) -> Result<ImageFiles, String> {
    images::assemble_where(snapshot, partial, progress, |name| {
        !snapshot.stream(name).is_ok_and(is_page_stream)
    })
    .await?;
    let mut files = ImageFiles::new();
    let mut fetchers = Vec::new();
    for stream in &snapshot.manifest().streams {
        if !is_page_stream(stream) {
            continue;
        }
        let relative = images::file_of_stream(&stream.name)?;
        let path = partial.join(&relative);
        let file = streamed_file(snapshot, &stream.name, &path, fetch_timeout)?;
        if let Some(set) = working_set
            && let Some(offsets) = set.files.get(&relative)
        {
            file.prefetch(offsets, set.block);
        }
        fetchers.push((
            stream.name.clone(),
            file.fetcher.clone(),
            file.write_error.clone(),
        ));
        files.insert(relative, Arc::new(file) as Arc<dyn ImageFile>);
    }
    images::link_all(partial, into).map_err(|e| format!("linking the image files: {e}"))?;
    // Once every chunk is in, the directory is a complete image: cache it.
    let (cache, partial, snapshot) = (cache.clone(), partial.to_path_buf(), snapshot.clone());
    tokio::spawn(async move {
        for (stream, fetcher, write_error) in fetchers {
            let failed = match fetcher.wait_all().await {
                Err(e) => Some(e.to_string()),
                Ok(()) => write_error.lock().expect("write error lock").clone(),
            };
            if let Some(error) = failed {
                tracing::warn!(%stream, %error, "a page file did not arrive completely; it is not cached");
                let _ = std::fs::remove_dir_all(&partial);
                return;
            }
        }
        // On disk before it is an entry: a cached image is trusted (its blocks still checked).
        let synced = tokio::task::spawn_blocking({
            let partial = partial.clone();
            move || images::sync_all(&partial)
        })
        .await;
        match synced {
            Ok(Ok(())) => cache.adopt(&snapshot, &partial),
            _ => {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
    });
    Ok(files)
}

/// A new file at `path`, of stream `name`'s size, filled from the repository by a fetcher
/// started now, and read in place through the returned [`StreamedFile`] (whose reads wait
/// at most `fetch_timeout` for their chunks).
pub fn streamed_file(
    snapshot: &Snapshot,
    name: &str,
    path: &Path,
    fetch_timeout: Duration,
) -> Result<StreamedFile, String> {
    let stream = snapshot.stream(name).map_err(|e| e.to_string())?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.set_len(stream.size)
        .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
    let starts = stream.offsets();
    let write_error = Arc::new(Mutex::new(None));
    let sink: podsnap_repo::Sink = {
        let file = file
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let starts = starts.clone();
        let write_error = write_error.clone();
        let path = PathBuf::from(path);
        Arc::new(move |index: usize, data: Vec<u8>| {
            if let Err(e) = file.write_all_at(&data, starts[index]) {
                write_error
                    .lock()
                    .expect("write error lock")
                    .get_or_insert(format!(
                        "writing a fetched chunk into {}: {e}; free space on the node",
                        path.display()
                    ));
            }
        })
    };
    let fetcher = snapshot
        .fetcher(name, FETCH_WORKERS, sink)
        .map_err(|e| e.to_string())?;
    Ok(StreamedFile {
        stream: name.to_owned(),
        file,
        size: stream.size,
        starts,
        fetcher,
        runtime: tokio::runtime::Handle::current(),
        fetch_timeout,
        write_error,
    })
}

/// The chunks holding the blocks at `offsets`, in the order first needed, each once.
fn first_chunks(starts: &[u64], offsets: &[u64], block: u64) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    offsets
        .iter()
        .flat_map(|&o| chunks_covering(starts, o, o.saturating_add(block.max(1))))
        .filter(|i| *i < starts.len() && seen.insert(*i))
        .collect()
}

/// A working set as the repository stores it, from the engine's form (file paths relative
/// to the image directory become stream names).
pub fn to_stored(set: &WorkingSet, source: &str) -> podsnap_repo::WorkingSet {
    podsnap_repo::WorkingSet {
        files: set
            .files
            .iter()
            .map(|(file, offsets)| podsnap_repo::WorkingSetFile {
                stream: format!("{NATIVE_PREFIX}{file}"),
                block: set.block,
                offsets: offsets.clone(),
            })
            .collect(),
        recorded_at: jiff::Timestamp::now().to_string(),
        source: source.to_owned(),
    }
}

/// The engine's form of a stored working set (streams of other engines left out).
pub fn from_stored(stored: &podsnap_repo::WorkingSet) -> WorkingSet {
    let files: BTreeMap<String, Vec<u64>> = stored
        .files
        .iter()
        .filter_map(|f| {
            let file = f.stream.strip_prefix(NATIVE_PREFIX)?;
            Some((file.to_owned(), f.offsets.clone()))
        })
        .collect();
    let block = stored.files.iter().map(|f| f.block).max().unwrap_or(0);
    WorkingSet { block, files }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_exactly_the_chunks_that_hold_their_bytes() {
        let starts = [0, 100, 250, 400];
        assert_eq!(chunks_covering(&starts, 0, 1), 0..1);
        assert_eq!(chunks_covering(&starts, 99, 101), 0..2);
        assert_eq!(chunks_covering(&starts, 100, 250), 1..2);
        assert_eq!(chunks_covering(&starts, 120, 500), 1..4);
        assert_eq!(chunks_covering(&starts, 450, 460), 3..4);
        assert_eq!(first_chunks(&starts, &[300, 0, 260, 90], 16), vec![2, 0, 1]);
    }

    #[test]
    fn working_sets_convert_between_the_engine_and_the_repository() {
        let set = WorkingSet {
            block: 65536,
            files: [("processes/pages-1.img".to_owned(), vec![16, 65552])].into(),
        };
        let stored = to_stored(&set, "test");
        assert_eq!(stored.files[0].stream, "native/processes/pages-1.img");
        assert_eq!(from_stored(&stored), set);
    }
}
