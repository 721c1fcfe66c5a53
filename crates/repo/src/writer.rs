//! Writing a snapshot: streams are cut into chunks on a reader thread, hashed and compressed
//! on the blocking pool, and uploaded with bounded concurrency — only chunks the repository
//! lacks. The manifest is written last and create-only, so a crash at any moment leaves either
//! the whole snapshot or no manifest (unreferenced chunks are collected later by `gc`).

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{RepoError, Result};
use crate::format::{
    self, ChunkId, ChunkRef, Chunking, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest,
    SnapshotMetadata, Stream,
};
use crate::layout;
use crate::progress::Progress;
use crate::repo::{Inner, Repository};

/// How far a writer trusts clocks when deciding whether a sweep overlapped its write.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// The marker of a snapshot being written, read by `gc`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PendingMarker {
    pub(crate) snapshot_id: String,
    pub(crate) started_at: String,
}

/// The record of the last sweep, read by writers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SweepRecord {
    pub(crate) started_at: String,
    #[serde(default)]
    pub(crate) finished_at: Option<String>,
}

/// What writing one stream did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Plain bytes read.
    pub bytes: u64,
    /// Chunks in the stream.
    pub chunks: u64,
    /// All-zero chunks (not stored).
    pub zero_chunks: u64,
    /// Chunks uploaded by this write.
    pub new_chunks: u64,
    /// Bytes uploaded by this write (compressed, encrypted).
    pub new_bytes: u64,
    /// Chunks the repository already had.
    pub reused_chunks: u64,
}

impl WriteStats {
    fn add(&mut self, other: &WriteStats) {
        self.bytes += other.bytes;
        self.chunks += other.chunks;
        self.zero_chunks += other.zero_chunks;
        self.new_chunks += other.new_chunks;
        self.new_bytes += other.new_bytes;
        self.reused_chunks += other.reused_chunks;
    }
}

/// A snapshot being written. Add streams, then [`SnapshotWriter::commit`]; dropping it without
/// committing leaves no snapshot.
pub struct SnapshotWriter {
    repo: Repository,
    id: String,
    metadata: SnapshotMetadata,
    streams: Vec<Stream>,
    reused: HashSet<ChunkId>,
    started: jiff::Timestamp,
    stats: WriteStats,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotWriter({} in {})", self.id, self.repo.url())
    }
}

enum Outcome {
    Zero(u32),
    New(ChunkId, u32, u64),
    Reused(ChunkId, u32),
}

impl Repository {
    /// Starts writing snapshot `id`. Fails if it exists already.
    pub async fn begin_snapshot(
        &self,
        id: &str,
        metadata: SnapshotMetadata,
    ) -> Result<SnapshotWriter> {
        format::validate_snapshot_id(id).map_err(RepoError::Invalid)?;
        self.ensure_config().await?;
        if self
            .inner
            .head(&layout::manifest(id), "checking for the snapshot")
            .await?
            .is_some()
        {
            return Err(RepoError::SnapshotExists(id.to_owned()));
        }
        let started = jiff::Timestamp::now();
        let marker = PendingMarker {
            snapshot_id: id.to_owned(),
            started_at: started.to_string(),
        };
        let body = serde_json::to_vec(&marker).expect("marker serialises");
        self.inner
            .put(&layout::pending(id), body.into(), "registering the write")
            .await?;
        Ok(SnapshotWriter {
            repo: self.clone(),
            id: id.to_owned(),
            metadata,
            streams: Vec::new(),
            reused: HashSet::new(),
            started,
            stats: WriteStats::default(),
        })
    }
}

impl SnapshotWriter {
    /// The snapshot's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Totals over the streams written so far.
    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Reads `source` to its end as stream `name`, cut by `chunking`. `size_hint` (when known)
    /// lets progress show a total and an ETA.
    pub async fn add_stream<R: Read + Send + 'static>(
        &mut self,
        name: &str,
        chunking: Chunking,
        source: R,
        size_hint: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<WriteStats> {
        format::validate_stream_name(name).map_err(RepoError::Invalid)?;
        chunking.validate().map_err(RepoError::Invalid)?;
        if self.streams.iter().any(|s| s.name == name) {
            return Err(RepoError::Invalid(format!(
                "snapshot {} already has a stream named {name}",
                self.id
            )));
        }
        let inner = Arc::clone(&self.repo.inner);
        let concurrency = inner.options.concurrency.max(1);
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(concurrency);
        let reader = std::thread::Builder::new()
            .name("podsnap-chunker".into())
            .spawn(move || cut_into_chunks(source, chunking, tx))
            .map_err(|e| RepoError::io("cannot start the chunker thread", e))?;
        progress.start(&format!("writing {name}"), size_hint);
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let snapshot = self.id.clone();
        let outcomes: Vec<Outcome> = chunks
            .map(|item| {
                let inner = Arc::clone(&inner);
                let snapshot = snapshot.clone();
                async move {
                    let data = item.map_err(|e| {
                        RepoError::io(format!("reading the data of snapshot {snapshot}"), e)
                    })?;
                    store_chunk(&inner, data).await
                }
            })
            .buffered(concurrency)
            .inspect_ok(|o| {
                progress.advance(match o {
                    Outcome::Zero(len) | Outcome::New(_, len, _) | Outcome::Reused(_, len) => {
                        u64::from(*len)
                    }
                })
            })
            .try_collect()
            .await?;
        progress.finish();
        let _ = reader.join();
        let mut stats = WriteStats::default();
        let mut refs = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            stats.chunks += 1;
            match outcome {
                Outcome::Zero(len) => {
                    stats.zero_chunks += 1;
                    stats.bytes += u64::from(len);
                    refs.push(ChunkRef { id: None, len });
                }
                Outcome::New(id, len, stored) => {
                    stats.new_chunks += 1;
                    stats.new_bytes += stored;
                    stats.bytes += u64::from(len);
                    refs.push(ChunkRef { id: Some(id), len });
                }
                Outcome::Reused(id, len) => {
                    stats.reused_chunks += 1;
                    stats.bytes += u64::from(len);
                    self.reused.insert(id);
                    refs.push(ChunkRef { id: Some(id), len });
                }
            }
        }
        self.streams.push(Stream {
            name: name.to_owned(),
            chunking,
            size: stats.bytes,
            chunks: refs,
        });
        self.stats.add(&stats);
        Ok(stats)
    }

    /// Writes the manifest, making the snapshot visible. Before that, when a garbage
    /// collection swept while this snapshot was written, checks that every chunk it reused is
    /// still there.
    pub async fn commit(self) -> Result<Manifest> {
        let inner = &self.repo.inner;
        if self.sweep_overlapped().await? {
            let checks: Vec<(ChunkId, bool)> = futures::stream::iter(self.reused.iter().copied())
                .map(|id| async move {
                    let found = inner
                        .head(&layout::chunk(&id), "checking a reused chunk")
                        .await?;
                    Ok::<_, RepoError>((id, found.is_some()))
                })
                .buffer_unordered(32)
                .try_collect()
                .await?;
            let missing = checks
                .into_iter()
                .find(|(_, found)| !found)
                .map(|(id, _)| id);
            if let Some(id) = missing {
                self.abort().await?;
                return Err(RepoError::ChunkCollected {
                    snapshot: self.id.clone(),
                    chunk: layout::chunk(&id).to_string(),
                });
            }
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            snapshot_id: self.id.clone(),
            created_at: jiff::Timestamp::now().to_string(),
            metadata: self.metadata.clone(),
            key_id: inner.key.as_ref().map(|k| k.key_id().to_owned()),
            streams: self.streams.clone(),
            digest: String::new(),
        };
        let bytes = manifest.to_bytes();
        match inner
            .put_create(
                &layout::manifest(&self.id),
                PutPayload::from(bytes.clone()),
                "writing the manifest",
            )
            .await
        {
            Ok(()) => {}
            Err(RepoError::Storage {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                return Err(RepoError::SnapshotExists(self.id.clone()));
            }
            Err(e) => return Err(e),
        }
        inner
            .delete(&layout::pending(&self.id), "removing the write marker")
            .await?;
        Manifest::from_bytes(&self.id, &bytes)
    }

    /// Gives up: removes the write marker; uploaded chunks are left for `gc`.
    pub async fn abort(&self) -> Result<()> {
        self.repo
            .inner
            .delete(&layout::pending(&self.id), "removing the write marker")
            .await
    }

    async fn sweep_overlapped(&self) -> Result<bool> {
        let inner = &self.repo.inner;
        let record = match inner
            .get(&layout::last_sweep(), "reading the sweep record")
            .await
        {
            Ok(bytes) => serde_json::from_slice::<SweepRecord>(&bytes).ok(),
            Err(RepoError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(record) = record else {
            return Ok(true);
        };
        let since = self.started - jiff::SignedDuration::try_from(CLOCK_MARGIN).unwrap_or_default();
        Ok(
            match record
                .finished_at
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                None => true,
                Some(finished) => finished >= since,
            },
        )
    }
}

/// Hashes, compresses and uploads one chunk unless the repository has it.
async fn store_chunk(inner: &Arc<Inner>, data: Vec<u8>) -> Result<Outcome> {
    let key = inner.key.clone();
    let (data, id) = tokio::task::spawn_blocking(move || {
        if is_zero(&data) {
            (data, None)
        } else {
            let id = ChunkId::of(&data, key.as_ref());
            (data, Some(id))
        }
    })
    .await
    .map_err(|e| RepoError::Task(e.to_string()))?;
    let len = data.len() as u32;
    let Some(id) = id else {
        return Ok(Outcome::Zero(len));
    };
    if inner.known.lock().expect("known lock").contains(&id) {
        return Ok(Outcome::Reused(id, len));
    }
    let path = layout::chunk(&id);
    if inner.head(&path, "checking for a chunk").await?.is_some() {
        inner.known.lock().expect("known lock").insert(id);
        return Ok(Outcome::Reused(id, len));
    }
    let key = inner.key.clone();
    let level = inner.options.zstd_level;
    let object =
        tokio::task::spawn_blocking(move || format::encode_chunk(&id, &data, level, key.as_ref()))
            .await
            .map_err(|e| RepoError::Task(e.to_string()))?;
    let stored = object.len() as u64;
    let outcome = match inner
        .put_create(&path, PutPayload::from(object), "uploading a chunk")
        .await
    {
        Ok(()) => {
            inner.stats.store_puts.fetch_add(1, Ordering::Relaxed);
            inner
                .stats
                .store_put_bytes
                .fetch_add(stored, Ordering::Relaxed);
            Outcome::New(id, len, stored)
        }
        Err(RepoError::Storage {
            source: object_store::Error::AlreadyExists { .. },
            ..
        }) => Outcome::Reused(id, len),
        Err(e) => return Err(e),
    };
    inner.known.lock().expect("known lock").insert(id);
    Ok(outcome)
}

fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

/// Runs on a thread: reads `source` and sends its chunks in order.
fn cut_into_chunks<R: Read>(
    mut source: R,
    chunking: Chunking,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    match chunking {
        Chunking::Fixed { size } => loop {
            let mut buf = vec![0u8; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match source.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
            if filled < size as usize {
                return;
            }
        },
        Chunking::Cdc { min, avg, max } => {
            for chunk in
                fastcdc::v2020::StreamCDC::new(source, min as usize, avg as usize, max as usize)
            {
                let item = chunk.map(|c| c.data).map_err(std::io::Error::other);
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        }
        Chunking::PageCdc { .. } => {
            let params = chunking.page_cdc_params().expect("page CDC parameters");
            let result = crate::pagecdc::cut_stream(source, &params, |chunk| {
                tx.blocking_send(Ok(chunk)).is_ok()
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        }
    }
}
