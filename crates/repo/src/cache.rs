//! The node-local chunk cache: chunk objects as fetched (compressed, encrypted), in a
//! directory, bounded in size, least-recently-used out first.
//!
//! Concurrent restores on one node share it: however many ask for a chunk at once, it is
//! fetched once (single flight). Files are written to a temporary name and renamed, so another
//! process sharing the directory never reads half a chunk; every read is verified against the
//! chunk id by the caller anyway, and a bad cached copy is dropped and fetched again.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::{RepoError, Result};
use crate::format::ChunkId;

type Flight = Shared<BoxFuture<'static, Result<Bytes, Arc<RepoError>>>>;

struct Entry {
    size: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<ChunkId, Entry>,
    total: u64,
    clock: u64,
}

/// A size-bounded LRU cache of chunk objects in a directory.
pub struct ChunkCache {
    dir: PathBuf,
    capacity: u64,
    state: Arc<Mutex<State>>,
    in_flight: Arc<Mutex<HashMap<ChunkId, Flight>>>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChunkCache({}, {} bytes)",
            self.dir.display(),
            self.capacity
        )
    }
}

impl ChunkCache {
    /// Opens (creating) a cache in `dir` holding at most `capacity` bytes; chunks already there
    /// are kept, oldest-modified first out.
    pub fn open(dir: PathBuf, capacity: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            RepoError::io(
                format!("cannot create the chunk cache {}", dir.display()),
                e,
            )
        })?;
        let mut found = Vec::new();
        for shard in std::fs::read_dir(&dir)
            .map_err(|e| RepoError::io(format!("cannot read {}", dir.display()), e))?
        {
            let Ok(shard) = shard else { continue };
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(id) = name.to_str().and_then(ChunkId::from_hex) else {
                    // Leftover temporary files of an interrupted write.
                    let _ = std::fs::remove_file(file.path());
                    continue;
                };
                if let Ok(meta) = file.metadata() {
                    found.push((meta.modified().ok(), id, meta.len()));
                }
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, id, size) in found {
            state.clock += 1;
            state.total += size;
            state.entries.insert(
                id,
                Entry {
                    size,
                    last_used: state.clock,
                },
            );
        }
        let cache = Self {
            dir,
            capacity,
            state: Arc::new(Mutex::new(state)),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        };
        cache.evict();
        Ok(cache)
    }

    /// Bytes held now.
    pub fn size(&self) -> u64 {
        self.state.lock().expect("cache lock").total
    }

    /// Chunks held now.
    pub fn len(&self) -> usize {
        self.state.lock().expect("cache lock").entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the cache holds `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.state
            .lock()
            .expect("cache lock")
            .entries
            .contains_key(id)
    }

    fn path_of(dir: &Path, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        dir.join(&hex[..2]).join(hex)
    }

    /// The chunk object for `id`: from the cache (`true`), or from `fetch` (`false`), which
    /// runs once however many callers ask at the same time.
    pub async fn get_or_fetch<F, Fut>(&self, id: ChunkId, fetch: F) -> Result<(Bytes, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>> + Send + 'static,
    {
        if let Some(bytes) = self.read(&id).await {
            return Ok((bytes, true));
        }
        let flight = {
            let mut in_flight = self.in_flight.lock().expect("cache lock");
            match in_flight.get(&id) {
                Some(flight) => flight.clone(),
                None => {
                    let dir = self.dir.clone();
                    let state = Arc::clone(&self.state);
                    let flights = Arc::clone(&self.in_flight);
                    let capacity = self.capacity;
                    let fut = fetch();
                    let flight = async move {
                        let result = fut.await.map_err(Arc::new);
                        if let Ok(bytes) = &result {
                            store(&dir, &state, capacity, id, bytes).await;
                        }
                        flights.lock().expect("cache lock").remove(&id);
                        result
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(id, flight.clone());
                    flight
                }
            }
        };
        flight.await.map(|b| (b, false)).map_err(RepoError::Shared)
    }

    async fn read(&self, id: &ChunkId) -> Option<Bytes> {
        if !self.contains(id) {
            return None;
        }
        match tokio::fs::read(Self::path_of(&self.dir, id)).await {
            Ok(bytes) => {
                let mut state = self.state.lock().expect("cache lock");
                state.clock += 1;
                let clock = state.clock;
                if let Some(entry) = state.entries.get_mut(id) {
                    entry.last_used = clock;
                }
                Some(Bytes::from(bytes))
            }
            Err(_) => {
                self.remove(id);
                None
            }
        }
    }

    /// Drops `id` from the cache (e.g. after it failed verification).
    pub fn remove(&self, id: &ChunkId) {
        let mut state = self.state.lock().expect("cache lock");
        if let Some(entry) = state.entries.remove(id) {
            state.total -= entry.size;
        }
        let _ = std::fs::remove_file(Self::path_of(&self.dir, id));
    }

    fn evict(&self) {
        evict(&self.dir, &self.state, self.capacity);
    }
}

async fn store(dir: &Path, state: &Mutex<State>, capacity: u64, id: ChunkId, bytes: &Bytes) {
    let size = bytes.len() as u64;
    if size > capacity {
        return;
    }
    let path = ChunkCache::path_of(dir, &id);
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let written = async {
        tokio::fs::create_dir_all(path.parent().expect("a shard directory")).await?;
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "could not cache a chunk; going on without");
        let _ = tokio::fs::remove_file(&tmp).await;
        return;
    }
    {
        let mut state = state.lock().expect("cache lock");
        state.clock += 1;
        let clock = state.clock;
        if let Some(old) = state.entries.insert(
            id,
            Entry {
                size,
                last_used: clock,
            },
        ) {
            state.total -= old.size;
        }
        state.total += size;
    }
    evict(dir, state, capacity);
}

/// Removes least-recently-used chunks until the cache is within its bound.
fn evict(dir: &Path, state: &Mutex<State>, capacity: u64) {
    let victims: Vec<ChunkId> = {
        let mut state = state.lock().expect("cache lock");
        if state.total <= capacity {
            return;
        }
        let mut by_age: Vec<(u64, ChunkId, u64)> = state
            .entries
            .iter()
            .map(|(id, e)| (e.last_used, *id, e.size))
            .collect();
        by_age.sort();
        let mut victims = Vec::new();
        for (_, id, size) in by_age {
            if state.total <= capacity {
                break;
            }
            state.entries.remove(&id);
            state.total -= size;
            victims.push(id);
        }
        victims
    };
    for id in victims {
        let _ = std::fs::remove_file(ChunkCache::path_of(dir, &id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n], None)
    }

    #[tokio::test]
    async fn concurrent_requests_fetch_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path().join("c"), 1 << 20).unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let fetches = Arc::clone(&fetches);
            tasks.push(cache.get_or_fetch(id(1), move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok(Bytes::from_static(b"chunk"))
            }));
        }
        let results = futures::future::join_all(tasks).await;
        assert!(results.iter().all(|r| r.as_ref().unwrap().0 == "chunk"));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let (again, hit) = cache
            .get_or_fetch(id(1), || async { panic!("must come from the cache") })
            .await
            .unwrap();
        assert!(hit);
        assert_eq!(again, "chunk");
    }

    #[tokio::test]
    async fn least_recently_used_goes_first_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path().to_path_buf(), 30).unwrap();
        for n in 0..3 {
            cache
                .get_or_fetch(id(n), || async { Ok(Bytes::from(vec![0u8; 10])) })
                .await
                .unwrap();
        }
        // Touch chunk 0, then add a fourth: chunk 1 is the least recently used.
        cache
            .get_or_fetch(id(0), || async { panic!("cached") })
            .await
            .unwrap();
        cache
            .get_or_fetch(id(3), || async { Ok(Bytes::from(vec![0u8; 10])) })
            .await
            .unwrap();
        assert!(cache.size() <= 30);
        assert!(cache.contains(&id(0)) && !cache.contains(&id(1)) && cache.contains(&id(3)));
        // Reopening finds what is on disk.
        drop(cache);
        let reopened = ChunkCache::open(dir.path().to_path_buf(), 30).unwrap();
        assert_eq!(reopened.len(), 3);
        assert_eq!(reopened.size(), 30);
    }

    #[tokio::test]
    async fn failed_fetches_are_not_cached_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path().to_path_buf(), 100).unwrap();
        let err = cache
            .get_or_fetch(id(5), || async { Err(RepoError::Invalid("boom".into())) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(!cache.contains(&id(5)));
        let (bytes, hit) = cache
            .get_or_fetch(id(5), || async { Ok(Bytes::from_static(b"ok")) })
            .await
            .unwrap();
        assert_eq!((bytes.as_ref(), hit), (&b"ok"[..], false));
    }
}
