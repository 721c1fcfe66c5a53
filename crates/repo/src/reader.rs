//! Reading a snapshot back: whole streams into files with parallel, verified fetches, byte
//! ranges on demand, and a prioritised fetcher for lazy restores.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Notify, oneshot};

use crate::error::{RepoError, Result};
use crate::format::{ChunkRef, Manifest, Stream};
use crate::progress::Progress;
use crate::repo::Repository;

/// An opened snapshot: its verified manifest and the repository to fetch chunks from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    repo: Repository,
    manifest: Arc<Manifest>,
}

/// What reading a stream did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Plain bytes delivered.
    pub bytes: u64,
    /// Chunks fetched (from store or cache).
    pub fetched_chunks: u64,
    /// All-zero chunks (nothing fetched).
    pub zero_chunks: u64,
}

impl Repository {
    /// Opens snapshot `id`, reading and verifying its manifest.
    pub async fn open_snapshot(&self, id: &str) -> Result<Snapshot> {
        let manifest = self.manifest(id).await?;
        Ok(Snapshot {
            repo: self.clone(),
            manifest: Arc::new(manifest),
        })
    }
}

impl Snapshot {
    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The snapshot's id.
    pub fn id(&self) -> &str {
        &self.manifest.snapshot_id
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Result<&Stream> {
        self.manifest
            .stream(name)
            .ok_or_else(|| RepoError::StreamNotFound {
                snapshot: self.id().to_owned(),
                stream: name.to_owned(),
                available: self
                    .manifest
                    .streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The plain bytes of chunk `index` of stream `name`, verified.
    pub async fn chunk(&self, name: &str, index: usize) -> Result<Vec<u8>> {
        let stream = self.stream(name)?;
        let chunk = stream.chunks.get(index).ok_or_else(|| {
            RepoError::Invalid(format!(
                "stream {name} has {} chunks, not {}",
                stream.chunks.len(),
                index + 1
            ))
        })?;
        self.fetch(chunk).await
    }

    async fn fetch(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        match chunk.id {
            None => Ok(vec![0; chunk.len as usize]),
            Some(id) => self.repo.inner.fetch_chunk(self.id(), id).await,
        }
    }

    /// Writes stream `name` into the file at `path` (created or truncated), fetching chunks in
    /// parallel and writing each at its offset; zero chunks stay holes.
    pub async fn read_stream_to_file(
        &self,
        name: &str,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<ReadStats> {
        let stream = self.stream(name)?.clone();
        let file = File::create(path)
            .map_err(|e| RepoError::io(format!("cannot create {}", path.display()), e))?;
        file.set_len(stream.size)
            .map_err(|e| RepoError::io(format!("cannot size {}", path.display()), e))?;
        let file = Arc::new(file);
        progress.start(&format!("reading {name}"), Some(stream.size));
        let offsets = stream.offsets();
        let concurrency = self.repo.inner.options.concurrency.max(1);
        let chunks: Vec<(ChunkRef, u64)> = stream.chunks.iter().cloned().zip(offsets).collect();
        let stats: Vec<bool> = futures::stream::iter(chunks)
            .map(|(chunk, offset): (ChunkRef, u64)| {
                let file = Arc::clone(&file);
                let snapshot = self.clone();
                async move {
                    if chunk.id.is_none() {
                        return Ok((false, u64::from(chunk.len)));
                    }
                    let data = snapshot.fetch(&chunk).await?;
                    let len = data.len() as u64;
                    tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                        .await
                        .map_err(|e| RepoError::Task(e.to_string()))?
                        .map_err(|e| RepoError::io("writing the restored stream", e))?;
                    Ok::<_, RepoError>((true, len))
                }
            })
            .buffer_unordered(concurrency)
            .inspect_ok(|(_, len)| progress.advance(*len))
            .map_ok(|(fetched, _)| fetched)
            .try_collect()
            .await?;
        progress.finish();
        file.sync_data()
            .map_err(|e| RepoError::io(format!("flushing {}", path.display()), e))?;
        let fetched = stats.iter().filter(|f| **f).count() as u64;
        Ok(ReadStats {
            bytes: stream.size,
            fetched_chunks: fetched,
            zero_chunks: stats.len() as u64 - fetched,
        })
    }

    /// Writes stream `name` in order to `out` (e.g. standard output), fetching ahead in
    /// parallel.
    pub async fn read_stream_to_writer<W: std::io::Write>(
        &self,
        name: &str,
        out: &mut W,
        progress: &dyn Progress,
    ) -> Result<ReadStats> {
        let stream = self.stream(name)?.clone();
        progress.start(&format!("reading {name}"), Some(stream.size));
        let concurrency = self.repo.inner.options.concurrency.max(1);
        // Owned chunk references and snapshot handles keep this future `Send` for any
        // caller (a closure borrowing its argument would not be, for every lifetime).
        let mut chunks = futures::stream::iter(stream.chunks.clone())
            .map(|c| {
                let snapshot = self.clone();
                async move { snapshot.fetch(&c).await }
            })
            .buffered(concurrency);
        let mut stats = ReadStats::default();
        let mut index = 0;
        while let Some(data) = chunks.next().await {
            let data = data?;
            out.write_all(&data)
                .map_err(|e| RepoError::io("writing the stream", e))?;
            progress.advance(data.len() as u64);
            stats.bytes += data.len() as u64;
            if stream.chunks[index].id.is_some() {
                stats.fetched_chunks += 1;
            } else {
                stats.zero_chunks += 1;
            }
            index += 1;
        }
        progress.finish();
        Ok(stats)
    }

    /// `len` bytes of stream `name` from `offset` (fewer at the end of the stream).
    pub async fn read_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let stream = self.stream(name)?;
        let end = offset.saturating_add(len).min(stream.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let offsets = stream.offsets();
        let first = stream.chunk_index_of(offset).unwrap_or(0);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, chunk) in stream.chunks.iter().enumerate().skip(first) {
            let start = offsets[index];
            if start >= end {
                break;
            }
            let data = self.fetch(chunk).await?;
            let from = offset.saturating_sub(start) as usize;
            let to = ((end - start) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
        }
        Ok(out)
    }

    /// Starts fetching every chunk of stream `name` in the background with `workers`
    /// concurrent fetches, handing each to `sink` as it arrives. [`PriorityFetcher::request`]
    /// moves a chunk ahead of the background order.
    pub fn fetcher(&self, name: &str, workers: usize, sink: Sink) -> Result<PriorityFetcher> {
        let stream = self.stream(name)?;
        Ok(PriorityFetcher::start(
            self.clone(),
            stream.chunks.clone(),
            workers.max(1),
            sink,
        ))
    }
}

/// Receives each fetched chunk: its index and plain bytes.
pub type Sink = Arc<dyn Fn(usize, Vec<u8>) + Send + Sync>;

enum Slot {
    Waiting(Vec<oneshot::Sender<Result<(), Arc<RepoError>>>>),
    InFlight(Vec<oneshot::Sender<Result<(), Arc<RepoError>>>>),
    Delivered,
    Failed(Arc<RepoError>),
}

struct FetchState {
    urgent: VecDeque<usize>,
    background: VecDeque<usize>,
    slots: Vec<Slot>,
    remaining: usize,
}

struct FetchShared {
    snapshot: Snapshot,
    chunks: Vec<ChunkRef>,
    sink: Sink,
    state: Mutex<FetchState>,
    done: Notify,
}

/// Fetches all chunks of a stream in the background; requested chunks overtake the rest.
///
/// Workers always take an urgent request before the next background chunk, so a page fault
/// waits for at most the fetches already in flight, not for the fill ahead of it.
#[derive(Clone)]
pub struct PriorityFetcher {
    shared: Arc<FetchShared>,
}

impl PriorityFetcher {
    fn start(snapshot: Snapshot, chunks: Vec<ChunkRef>, workers: usize, sink: Sink) -> Self {
        let count = chunks.len();
        let shared = Arc::new(FetchShared {
            snapshot,
            chunks,
            sink,
            state: Mutex::new(FetchState {
                urgent: VecDeque::new(),
                background: (0..count).collect(),
                slots: (0..count).map(|_| Slot::Waiting(Vec::new())).collect(),
                remaining: count,
            }),
            done: Notify::new(),
        });
        for _ in 0..workers {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { worker(shared).await });
        }
        Self { shared }
    }

    /// Fetches chunk `index` ahead of the background order; returns once the sink has it.
    pub async fn request(&self, index: usize) -> Result<()> {
        self.request_at(index, false).await
    }

    /// [`PriorityFetcher::request`] ahead of the requests already waiting too (a page fault
    /// overtakes a read-ahead).
    pub async fn request_first(&self, index: usize) -> Result<()> {
        self.request_at(index, true).await
    }

    async fn request_at(&self, index: usize, first: bool) -> Result<()> {
        let rx = {
            let mut state = self.shared.state.lock().expect("fetch lock");
            let Some(slot) = state.slots.get_mut(index) else {
                return Err(RepoError::Invalid(format!("chunk {index} does not exist")));
            };
            let (tx, rx) = oneshot::channel();
            match slot {
                Slot::Delivered => return Ok(()),
                Slot::Failed(e) => return Err(RepoError::Shared(Arc::clone(e))),
                Slot::InFlight(waiters) => waiters.push(tx),
                Slot::Waiting(waiters) => {
                    waiters.push(tx);
                    if first {
                        state.urgent.push_front(index);
                    } else {
                        state.urgent.push_back(index);
                    }
                }
            }
            rx
        };
        match rx.await {
            Ok(result) => result.map_err(RepoError::Shared),
            Err(_) => Err(RepoError::Task("the fetcher stopped".into())),
        }
    }

    /// Moves chunks `indices` ahead of the background order, in this order, without waiting
    /// for them (e.g. a recorded working set, fetched first).
    pub fn prioritize(&self, indices: &[usize]) {
        let mut state = self.shared.state.lock().expect("fetch lock");
        for &i in indices {
            if matches!(state.slots.get(i), Some(Slot::Waiting(_))) && !state.urgent.contains(&i) {
                state.urgent.push_back(i);
            }
        }
    }

    /// Waits until every chunk was delivered; the first failure, if any.
    pub async fn wait_all(&self) -> Result<()> {
        loop {
            let notified = self.shared.done.notified();
            {
                let state = self.shared.state.lock().expect("fetch lock");
                if let Some(Slot::Failed(e)) =
                    state.slots.iter().find(|s| matches!(s, Slot::Failed(_)))
                {
                    return Err(RepoError::Shared(Arc::clone(e)));
                }
                if state.remaining == 0 {
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

async fn worker(shared: Arc<FetchShared>) {
    loop {
        let next = {
            let mut state = shared.state.lock().expect("fetch lock");
            let mut pick = None;
            while let Some(i) = state
                .urgent
                .pop_front()
                .or_else(|| state.background.pop_front())
            {
                if let Slot::Waiting(waiters) = &mut state.slots[i] {
                    let waiters = std::mem::take(waiters);
                    state.slots[i] = Slot::InFlight(waiters);
                    pick = Some(i);
                    break;
                }
            }
            pick
        };
        let Some(index) = next else {
            return;
        };
        let result = shared.snapshot.fetch(&shared.chunks[index]).await;
        let result = match result {
            Ok(data) => {
                (shared.sink)(index, data);
                Ok(())
            }
            Err(e) => Err(Arc::new(e)),
        };
        let waiters = {
            let mut state = shared.state.lock().expect("fetch lock");
            let slot = std::mem::replace(
                &mut state.slots[index],
                match &result {
                    Ok(()) => Slot::Delivered,
                    Err(e) => Slot::Failed(Arc::clone(e)),
                },
            );
            state.remaining -= 1;
            match slot {
                Slot::InFlight(waiters) => waiters,
                _ => Vec::new(),
            }
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        shared.done.notify_waiters();
    }
}
