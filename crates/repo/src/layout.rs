//! Where each object lives under the repository's prefix.
//!
//! ```text
//! podsnap-repo.json                 repository config: format version, encryption key id
//! chunks/<2 hex>/<64 hex>           chunk objects, by id
//! snapshots/<id>/manifest.json      a snapshot's manifest (written last; its presence = the snapshot)
//! snapshots/<id>/working-set.json   what a lazy restore of the snapshot read first (optional)
//! pending/<id>.json                 a snapshot being written (for garbage collection)
//! gc/last-sweep.json                when the last sweep of unreferenced chunks ran
//! ```

use object_store::path::Path;

use crate::format::ChunkId;

/// The repository config object.
pub fn config() -> Path {
    Path::from("podsnap-repo.json")
}

/// The object of a chunk.
pub fn chunk(id: &ChunkId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("chunks/{}/{}", &hex[..2], hex))
}

/// The prefix of all chunks.
pub fn chunks() -> Path {
    Path::from("chunks")
}

/// The chunk id of a chunk object's path, if it is one.
pub fn chunk_id_of(path: &Path) -> Option<ChunkId> {
    let name = path.filename()?;
    ChunkId::from_hex(name)
}

/// A snapshot's manifest.
pub fn manifest(snapshot: &str) -> Path {
    Path::from(format!("snapshots/{snapshot}/manifest.json"))
}

/// A snapshot's recorded working set (see [`crate::working_set`]).
pub fn working_set(snapshot: &str) -> Path {
    Path::from(format!("snapshots/{snapshot}/working-set.json"))
}

/// The prefix of all snapshots.
pub fn snapshots() -> Path {
    Path::from("snapshots")
}

/// The marker of a snapshot being written.
pub fn pending(snapshot: &str) -> Path {
    Path::from(format!("pending/{snapshot}.json"))
}

/// The prefix of pending markers.
pub fn pendings() -> Path {
    Path::from("pending")
}

/// The record of the last sweep.
pub fn last_sweep() -> Path {
    Path::from("gc/last-sweep.json")
}
