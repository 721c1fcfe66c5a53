//! podsnap's snapshot repository: content-addressed, deduplicated, verified snapshot storage
//! on object stores (a local directory, S3 and compatibles, GCS, Azure).
//!
//! A snapshot is a versioned manifest plus named streams cut into chunks. Chunks are addressed
//! by the BLAKE3 hash of their plain content, compressed with zstd (kept raw when that does not
//! pay), optionally encrypted, and stored once per repository; memory images use fixed,
//! page-aligned chunks (an address maps to a chunk directly), page files page-aligned
//! content-defined chunks ([`pagecdc`]: memory dedups when pages shift), files use FastCDC.
//! Writes stream with bounded memory and upload only missing chunks, manifest last; reads
//! verify every chunk and can serve single chunks ahead of a background fill. A snapshot may
//! also carry a [`WorkingSet`] (`snapshots/<id>/working-set.json`, see [`working_set`]): what
//! its first lazy restore read first, in order, so later restores on any node fetch that first.
//! The format is in `docs/repository-format.md`, the object layout in [`layout`].
//!
//! This crate stores and fetches bytes. It must not know about Pods, engines or Kubernetes:
//! callers pass streams and metadata in and get them back.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod error;
pub mod format;
pub mod key;
pub mod layout;
pub mod location;
pub mod pagecdc;
pub mod progress;
pub mod reader;
pub mod repo;
pub mod working_set;
pub mod writer;

pub use admin::{GcOptions, GcReport, SnapshotSummary, VerifyReport};
pub use cache::ChunkCache;
pub use error::{RepoError, Result};
pub use format::{ChunkId, ChunkRef, Chunking, Manifest, SnapshotMetadata, Stream};
pub use key::EncryptionKey;
pub use location::{Location, StoreOptions, open, open_url, parse_url};
pub use progress::{NoProgress, Progress};
pub use reader::{PriorityFetcher, ReadStats, Sink, Snapshot};
pub use repo::{RepoConfig, RepoOptions, RepoStats, Repository};
pub use working_set::{WorkingSet, WorkingSetFile};
pub use writer::{SnapshotWriter, WriteStats};
