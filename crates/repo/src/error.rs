//! Errors of the snapshot repository. Every message names the snapshot and object involved
//! and says what to do.

use std::io;

/// What went wrong in the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The storage could not be reached or refused a request.
    #[error(
        "storage {location}: {operation} failed: {source}; check that the bucket exists, the endpoint is reachable and the credentials allow it"
    )]
    Storage {
        /// The repository location (URL).
        location: String,
        /// What was being done, e.g. `reading chunks/ab/abcd…`.
        operation: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// No repository exists at the location.
    #[error(
        "no podsnap repository at {0}; write a snapshot there first (e.g. `podsnap repo put`), or check the URL or storage config"
    )]
    NoRepository(String),
    /// The snapshot does not exist.
    #[error(
        "snapshot {snapshot} does not exist in {location}; `podsnap repo ls` lists the snapshots there"
    )]
    SnapshotNotFound {
        /// The snapshot id.
        snapshot: String,
        /// The repository location.
        location: String,
    },
    /// A snapshot with this id exists already.
    #[error(
        "snapshot {0} already exists; snapshot ids are unique, pick another or delete the old one with `podsnap repo rm`"
    )]
    SnapshotExists(String),
    /// The snapshot has no stream with this name.
    #[error("snapshot {snapshot} has no stream named {stream}; it has: {available}")]
    StreamNotFound {
        /// The snapshot id.
        snapshot: String,
        /// The stream asked for.
        stream: String,
        /// The streams it has.
        available: String,
    },
    /// A format this version of podsnap does not read.
    #[error(
        "{object}: format version {found} is not supported (this podsnap reads version {supported}); upgrade podsnap to read it"
    )]
    UnsupportedVersion {
        /// The object (manifest or chunk path).
        object: String,
        /// The version found.
        found: u32,
        /// The version supported.
        supported: u32,
    },
    /// An object that does not decode.
    #[error(
        "{object} is corrupt: {problem}; the stored data was damaged or changed: delete the snapshot (`podsnap repo rm`) and take a new one"
    )]
    Corrupt {
        /// The object path.
        object: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A snapshot's stored working set (see [`crate::working_set`]) that does not decode or
    /// does not fit the snapshot. It only orders prefetching, so the snapshot itself is fine.
    #[error(
        "{object}: {problem}; a working set only orders prefetching, so restores go on without it: ignore it, and the next lazy restore records it again"
    )]
    CorruptWorkingSet {
        /// The object path.
        object: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A chunk a snapshot refers to is gone.
    #[error(
        "snapshot {snapshot}: chunk {chunk} is missing from the repository; the snapshot cannot be restored: delete it (`podsnap repo rm`) and take a new one"
    )]
    MissingChunk {
        /// The snapshot id.
        snapshot: String,
        /// The chunk object path.
        chunk: String,
    },
    /// A chunk that fails verification.
    #[error(
        "snapshot {snapshot}: chunk {chunk} is corrupt: {problem}; delete the snapshot (`podsnap repo rm`) and take a new one"
    )]
    CorruptChunk {
        /// The snapshot id.
        snapshot: String,
        /// The chunk object path.
        chunk: String,
        /// What failed.
        problem: String,
    },
    /// Encryption keys do not match.
    #[error("{0}")]
    Key(String),
    /// Invalid argument from the caller.
    #[error("{0}")]
    Invalid(String),
    /// A concurrent garbage collection removed a chunk this write reused.
    #[error(
        "snapshot {snapshot}: chunk {chunk} was removed by a concurrent garbage collection while the snapshot was written; nothing was committed, write the snapshot again"
    )]
    ChunkCollected {
        /// The snapshot id.
        snapshot: String,
        /// The chunk object path.
        chunk: String,
    },
    /// Local file input or output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An error shared by several waiters on one fetch.
    #[error("{0}")]
    Shared(std::sync::Arc<RepoError>),
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl RepoError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result type of the repository.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
