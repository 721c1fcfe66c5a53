//! The repository handle: a location, an optional key, a node-local cache and the shared
//! plumbing (object reads and writes with clear errors, verified chunk fetches).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::cache::ChunkCache;
use crate::error::{RepoError, Result};
use crate::format::{self, ChunkId, Manifest};
use crate::key::EncryptionKey;
use crate::layout;
use crate::location::Location;

/// The `format` of the repository config object.
pub const REPO_FORMAT: &str = "podsnap.repository";
/// Version of the repository layout.
pub const REPO_VERSION: u32 = 1;

/// Tuning of a repository handle.
#[derive(Clone, Debug)]
pub struct RepoOptions {
    /// zstd level for new chunks (1 was fastest for the same ratio on memory images; see the
    /// repository benchmark).
    pub zstd_level: i32,
    /// Chunks uploaded or fetched at once.
    pub concurrency: usize,
    /// Node-local chunk cache directory and its size bound in bytes.
    pub cache: Option<(PathBuf, u64)>,
}

impl Default for RepoOptions {
    fn default() -> Self {
        Self {
            zstd_level: 1,
            concurrency: 16,
            cache: None,
        }
    }
}

/// The repository config object, written once when the first snapshot is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoConfig {
    /// Always [`REPO_FORMAT`].
    pub format: String,
    /// [`REPO_VERSION`].
    pub version: u32,
    /// The key every chunk is encrypted with; absent for a plain repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Counters of what a repository handle did, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct RepoStats {
    /// Chunk objects read from the store.
    pub store_gets: AtomicU64,
    /// Bytes of chunk objects read from the store.
    pub store_get_bytes: AtomicU64,
    /// Chunks served from the node-local cache.
    pub cache_hits: AtomicU64,
    /// Chunk objects written.
    pub store_puts: AtomicU64,
    /// Bytes of chunk objects written.
    pub store_put_bytes: AtomicU64,
}

impl RepoStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) struct Inner {
    pub(crate) location: Location,
    pub(crate) key: Option<EncryptionKey>,
    pub(crate) options: RepoOptions,
    pub(crate) cache: Option<ChunkCache>,
    /// Chunks known to exist in the store (seen or written by this handle).
    pub(crate) known: Mutex<HashSet<ChunkId>>,
    pub(crate) stats: RepoStats,
}

/// A snapshot repository. Cheap to clone; clones share the cache and counters.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.inner.location.url)
    }
}

impl Repository {
    /// A handle on the repository at `location`. Nothing is read yet: readers check the
    /// repository config when they first need it, writers create it.
    pub fn new(
        location: Location,
        key: Option<EncryptionKey>,
        options: RepoOptions,
    ) -> Result<Self> {
        let cache = match &options.cache {
            Some((dir, capacity)) => Some(ChunkCache::open(dir.clone(), *capacity)?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                key,
                options,
                cache,
                known: Mutex::new(HashSet::new()),
                stats: RepoStats::default(),
            }),
        })
    }

    /// The repository's URL.
    pub fn url(&self) -> &str {
        &self.inner.location.url
    }

    /// What this handle has done so far.
    pub fn stats(&self) -> &RepoStats {
        &self.inner.stats
    }

    /// The node-local cache, if configured.
    pub fn cache(&self) -> Option<&ChunkCache> {
        self.inner.cache.as_ref()
    }

    /// Reads the repository config; [`RepoError::NoRepository`] when there is none, and a key
    /// error when the handle's key does not fit.
    pub async fn config(&self) -> Result<RepoConfig> {
        let bytes = match self
            .inner
            .get(&layout::config(), "reading the repository config")
            .await
        {
            Ok(bytes) => bytes,
            Err(RepoError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Err(RepoError::NoRepository(self.url().to_owned())),
            Err(e) => return Err(e),
        };
        let config: RepoConfig =
            serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
                object: format!("{}/{}", self.url(), layout::config()),
                problem: format!("not a repository config ({e})"),
            })?;
        if config.format != REPO_FORMAT {
            return Err(RepoError::Corrupt {
                object: format!("{}/{}", self.url(), layout::config()),
                problem: "its format is not podsnap.repository".into(),
            });
        }
        if config.version != REPO_VERSION {
            return Err(RepoError::UnsupportedVersion {
                object: format!("{}/{}", self.url(), layout::config()),
                found: config.version,
                supported: REPO_VERSION,
            });
        }
        self.check_key(&config)?;
        Ok(config)
    }

    fn check_key(&self, config: &RepoConfig) -> Result<()> {
        let have = self.inner.key.as_ref().map(EncryptionKey::key_id);
        match (config.key_id.as_deref(), have) {
            (None, None) => Ok(()),
            (Some(want), Some(have)) if want == have => Ok(()),
            (Some(want), Some(have)) => Err(RepoError::Key(format!(
                "{} is encrypted with key {want}, and the key given is {have}; pass the repository's key",
                self.url()
            ))),
            (Some(want), None) => Err(RepoError::Key(format!(
                "{} is encrypted (key {want}); pass its key with --key-file",
                self.url()
            ))),
            (None, Some(_)) => Err(RepoError::Key(format!(
                "{} is not encrypted, but a key was given; drop the key, or use another repository for encrypted snapshots",
                self.url()
            ))),
        }
    }

    /// Reads the config, creating it on first use (for writers).
    pub(crate) async fn ensure_config(&self) -> Result<RepoConfig> {
        match self.config().await {
            Err(RepoError::NoRepository(_)) => {}
            other => return other,
        }
        let config = RepoConfig {
            format: REPO_FORMAT.into(),
            version: REPO_VERSION,
            key_id: self.inner.key.as_ref().map(|k| k.key_id().to_owned()),
        };
        let body = serde_json::to_vec_pretty(&config).expect("config serialises");
        match self
            .inner
            .put_create(&layout::config(), body.into(), "creating the repository")
            .await
        {
            Ok(())
            | Err(RepoError::Storage {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.config().await
    }

    /// Reads and verifies a snapshot's manifest.
    pub async fn manifest(&self, snapshot: &str) -> Result<Manifest> {
        format::validate_snapshot_id(snapshot).map_err(RepoError::Invalid)?;
        self.config().await?;
        let path = layout::manifest(snapshot);
        let bytes = match self.inner.get(&path, "reading a manifest").await {
            Ok(bytes) => bytes,
            Err(RepoError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => {
                return Err(RepoError::SnapshotNotFound {
                    snapshot: snapshot.to_owned(),
                    location: self.url().to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 > format::MAX_MANIFEST_BYTES {
            return Err(RepoError::Corrupt {
                object: format!("{}/{path}", self.url()),
                problem: format!("it is {} bytes, more than a manifest may be", bytes.len()),
            });
        }
        let manifest = Manifest::from_bytes(&format!("{}/{path}", self.url()), &bytes)?;
        if manifest.snapshot_id != snapshot {
            return Err(RepoError::Corrupt {
                object: format!("{}/{path}", self.url()),
                problem: format!(
                    "it describes snapshot {}, not {snapshot}",
                    manifest.snapshot_id
                ),
            });
        }
        let have = self.inner.key.as_ref().map(|k| k.key_id().to_owned());
        if manifest.key_id != have {
            return Err(RepoError::Key(format!(
                "snapshot {snapshot} was written with key {:?}, the key given is {:?}",
                manifest.key_id, have
            )));
        }
        Ok(manifest)
    }
}

impl Inner {
    fn storage_error(&self, operation: String, source: object_store::Error) -> RepoError {
        RepoError::Storage {
            location: self.location.url.clone(),
            operation,
            source,
        }
    }

    pub(crate) async fn get(&self, path: &Path, what: &str) -> Result<Bytes> {
        let result = self.location.store.get(path).await;
        let result = match result {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| self.storage_error(format!("{what} ({path})"), e))
    }

    pub(crate) async fn head(
        &self,
        path: &Path,
        what: &str,
    ) -> Result<Option<object_store::ObjectMeta>> {
        match self.location.store.head(path).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.storage_error(format!("{what} ({path})"), e)),
        }
    }

    pub(crate) async fn put_create(&self, path: &Path, body: PutPayload, what: &str) -> Result<()> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.location
            .store
            .put_opts(path, body, options)
            .await
            .map(|_| ())
            .map_err(|e| self.storage_error(format!("{what} ({path})"), e))
    }

    pub(crate) async fn put(&self, path: &Path, body: PutPayload, what: &str) -> Result<()> {
        self.location
            .store
            .put(path, body)
            .await
            .map(|_| ())
            .map_err(|e| self.storage_error(format!("{what} ({path})"), e))
    }

    pub(crate) async fn delete(&self, path: &Path, what: &str) -> Result<()> {
        match self.location.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.storage_error(format!("{what} ({path})"), e)),
        }
    }

    /// Every object under `prefix`.
    pub(crate) async fn list(
        &self,
        prefix: &Path,
        what: &str,
    ) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        self.location
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.storage_error(what.to_owned(), e))
    }

    /// Fetches, verifies and decodes one chunk of `snapshot`, through the node cache.
    pub(crate) async fn fetch_chunk(
        self: &Arc<Self>,
        snapshot: &str,
        id: ChunkId,
    ) -> Result<Vec<u8>> {
        let object = match &self.cache {
            Some(cache) => {
                let me = Arc::clone(self);
                let snapshot_owned = snapshot.to_owned();
                let (object, hit) = cache
                    .get_or_fetch(id, move || async move {
                        me.fetch_object(&snapshot_owned, id).await
                    })
                    .await?;
                if hit {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                }
                match self.decode(snapshot, id, object).await {
                    Ok(plain) => return Ok(plain),
                    Err(e) if hit => {
                        tracing::warn!(chunk = %id, error = %e, "cached chunk failed verification; fetching it again");
                        cache.remove(&id);
                        self.fetch_object(snapshot, id).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.fetch_object(snapshot, id).await?,
        };
        self.decode(snapshot, id, object).await
    }

    async fn fetch_object(&self, snapshot: &str, id: ChunkId) -> Result<Bytes> {
        let path = layout::chunk(&id);
        match self
            .get(&path, &format!("reading a chunk of snapshot {snapshot}"))
            .await
        {
            Ok(bytes) => {
                self.stats.store_gets.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .store_get_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
            Err(RepoError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(RepoError::MissingChunk {
                snapshot: snapshot.to_owned(),
                chunk: format!("{}/{path}", self.location.url),
            }),
            Err(e) => Err(e),
        }
    }

    async fn decode(&self, snapshot: &str, id: ChunkId, object: Bytes) -> Result<Vec<u8>> {
        let key = self.key.clone();
        let decoded =
            tokio::task::spawn_blocking(move || format::decode_chunk(&id, &object, key.as_ref()))
                .await
                .map_err(|e| RepoError::Task(e.to_string()))?;
        decoded.map_err(|e| RepoError::CorruptChunk {
            snapshot: snapshot.to_owned(),
            chunk: format!("{}/{}", self.location.url, layout::chunk(&id)),
            problem: e.to_string(),
        })
    }
}
