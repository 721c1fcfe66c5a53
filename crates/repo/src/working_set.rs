//! A snapshot's recorded working set: which parts of its streams a lazily restored workload
//! read first, in order, so later restores on any node can fetch those first (REAP-style
//! prefetch).
//!
//! Stored next to the manifest in `snapshots/<id>/working-set.json` as JSON:
//!
//! ```json
//! {"magic": "podsnap-working-set", "version": 1, "snapshot_id": "…",
//!  "files": [{"stream": "memory/pages", "block": 4096, "offsets": [8192, 0, 40960]}],
//!  "recorded_at": "2026-11-29T07:00:00Z", "source": "node-a restore of pod x"}
//! ```
//!
//! The record is plain JSON, like the manifest: it holds only stream names and offsets, no
//! content. It is validated against the snapshot's manifest when written and when read; a
//! record that does not fit is refused with [`RepoError::CorruptWorkingSet`], which callers
//! treat as "no working set" after a warning (it only orders prefetching). Unlike the
//! manifest it may be overwritten: a later restore may record a better one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};
use crate::format::{self, Manifest};
use crate::layout;
use crate::repo::Repository;

/// The `magic` field of every working-set record.
pub const WORKING_SET_MAGIC: &str = "podsnap-working-set";
/// Version of the working-set format.
pub const WORKING_SET_VERSION: u32 = 1;
/// The largest working-set object written or read.
pub const MAX_WORKING_SET_BYTES: usize = 16 << 20;
/// The most offsets a working set holds, over all its streams.
pub const MAX_WORKING_SET_OFFSETS: usize = 1 << 20;
/// The smallest block a working set may name.
pub const MIN_WORKING_SET_BLOCK: u64 = 4 << 10;
/// The largest block a working set may name.
pub const MAX_WORKING_SET_BLOCK: u64 = 16 << 20;

/// The parts of a snapshot's streams a restored workload read first, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkingSet {
    /// One entry per stream that was read.
    pub files: Vec<WorkingSetFile>,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Who recorded it, free text (e.g. `node-a restore of pod x`).
    pub source: String,
}

/// One stream's part of a [`WorkingSet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSetFile {
    /// The stream's name in the snapshot.
    pub stream: String,
    /// Bytes read at each offset: a power of two from 4 KiB to 16 MiB.
    pub block: u64,
    /// Offsets into the stream, in the order they were first needed.
    pub offsets: Vec<u64>,
}

impl WorkingSet {
    /// The number of offsets over all streams.
    pub fn total_offsets(&self) -> usize {
        self.files.iter().map(|f| f.offsets.len()).sum()
    }

    /// Checks the working set against the snapshot's manifest; the error names the problem.
    pub fn validate(&self, manifest: &Manifest) -> std::result::Result<(), String> {
        if self.recorded_at.parse::<jiff::Timestamp>().is_err() {
            return Err(format!(
                "recorded_at `{}` is not an RFC 3339 time",
                self.recorded_at
            ));
        }
        let total = self.total_offsets();
        if total > MAX_WORKING_SET_OFFSETS {
            return Err(format!(
                "it holds {total} offsets, more than the {MAX_WORKING_SET_OFFSETS} a working set may hold"
            ));
        }
        let sizes: HashMap<&str, u64> = manifest
            .streams
            .iter()
            .map(|s| (s.name.as_str(), s.size))
            .collect();
        for file in &self.files {
            let Some(&size) = sizes.get(file.stream.as_str()) else {
                let available: Vec<&str> =
                    manifest.streams.iter().map(|s| s.name.as_str()).collect();
                return Err(format!(
                    "it names stream `{}`, which snapshot {} does not have (it has: {})",
                    file.stream,
                    manifest.snapshot_id,
                    available.join(", ")
                ));
            };
            if !file.block.is_power_of_two()
                || !(MIN_WORKING_SET_BLOCK..=MAX_WORKING_SET_BLOCK).contains(&file.block)
            {
                return Err(format!(
                    "stream `{}`: block {} is not a power of two from 4 KiB to 16 MiB",
                    file.stream, file.block
                ));
            }
            if let Some(offset) = file.offsets.iter().find(|&&o| o >= size) {
                return Err(format!(
                    "stream `{}`: offset {offset} is beyond the stream's end ({size} bytes)",
                    file.stream
                ));
            }
        }
        Ok(())
    }
}

/// The record as written.
#[derive(Serialize)]
struct RecordOut<'a> {
    magic: &'a str,
    version: u32,
    snapshot_id: &'a str,
    files: &'a [WorkingSetFile],
    recorded_at: &'a str,
    source: &'a str,
}

/// The fields read before the rest, so another version is named as such.
#[derive(Deserialize)]
struct RecordHeader {
    magic: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

/// The record as read.
#[derive(Deserialize)]
struct RecordIn {
    snapshot_id: String,
    files: Vec<WorkingSetFile>,
    recorded_at: String,
    source: String,
}

/// Serialises `set` as the record of `snapshot`.
fn encode(snapshot: &str, set: &WorkingSet) -> Vec<u8> {
    serde_json::to_vec(&RecordOut {
        magic: WORKING_SET_MAGIC,
        version: WORKING_SET_VERSION,
        snapshot_id: snapshot,
        files: &set.files,
        recorded_at: &set.recorded_at,
        source: &set.source,
    })
    .expect("a working set always serialises")
}

/// Parses and validates the record `bytes` read for `manifest`'s snapshot; the error is the
/// problem, without the object's name.
fn decode(bytes: &[u8], manifest: &Manifest) -> std::result::Result<WorkingSet, String> {
    if bytes.len() > MAX_WORKING_SET_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_WORKING_SET_BYTES} a working set may be",
            bytes.len()
        ));
    }
    let header: RecordHeader = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JSON object ({e}); the object may be truncated"))?;
    if header.magic.as_ref().and_then(|m| m.as_str()) != Some(WORKING_SET_MAGIC) {
        return Err(format!(
            "it is not a podsnap working set (`magic` is not `{WORKING_SET_MAGIC}`)"
        ));
    }
    let version = header.version.as_ref().and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(WORKING_SET_VERSION)) {
        let found = header
            .version
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        return Err(format!(
            "it was recorded by another podsnap version (working-set format version {found}, this podsnap reads version {WORKING_SET_VERSION})"
        ));
    }
    let record: RecordIn =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid field: {e}"))?;
    if record.snapshot_id != manifest.snapshot_id {
        return Err(format!(
            "it was recorded for snapshot {}, not {}",
            record.snapshot_id, manifest.snapshot_id
        ));
    }
    let set = WorkingSet {
        files: record.files,
        recorded_at: record.recorded_at,
        source: record.source,
    };
    set.validate(manifest)?;
    Ok(set)
}

impl Repository {
    /// Stores `set` as the working set of `snapshot`, replacing any stored before. The
    /// snapshot must exist ([`RepoError::SnapshotNotFound`] otherwise) and the set must fit
    /// its manifest ([`RepoError::Invalid`] naming the problem otherwise).
    pub async fn put_working_set(&self, snapshot: &str, set: &WorkingSet) -> Result<()> {
        let manifest = self.manifest(snapshot).await?;
        let invalid = |problem: String| {
            RepoError::Invalid(format!(
                "the working set for snapshot {snapshot} was not stored: {problem}; fix the recorder: a working set names only the snapshot's streams, offsets inside them, power-of-two blocks from 4 KiB to 16 MiB and at most {MAX_WORKING_SET_OFFSETS} offsets in all, in at most {MAX_WORKING_SET_BYTES} bytes of JSON"
            ))
        };
        set.validate(&manifest).map_err(invalid)?;
        let body = encode(snapshot, set);
        if body.len() > MAX_WORKING_SET_BYTES {
            return Err(invalid(format!(
                "it takes {} bytes, more than the {MAX_WORKING_SET_BYTES} a working set may be (record fewer offsets or larger blocks)",
                body.len()
            )));
        }
        self.inner
            .put(
                &layout::working_set(snapshot),
                body.into(),
                "writing a working set",
            )
            .await
    }

    /// The working set stored for `snapshot`: `Ok(None)` when none is stored,
    /// [`RepoError::SnapshotNotFound`] when the snapshot does not exist, and
    /// [`RepoError::CorruptWorkingSet`] when the stored one does not decode or does not fit
    /// the snapshot (callers ignore it with a warning; the next restore records a new one).
    pub async fn working_set(&self, snapshot: &str) -> Result<Option<WorkingSet>> {
        format::validate_snapshot_id(snapshot).map_err(RepoError::Invalid)?;
        let path = layout::working_set(snapshot);
        let (manifest, bytes) = futures::join!(
            self.manifest(snapshot),
            self.inner.get(&path, "reading a working set")
        );
        let manifest = manifest?;
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(RepoError::Storage {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        decode(&bytes, &manifest)
            .map(Some)
            .map_err(|problem| RepoError::CorruptWorkingSet {
                object: format!("{}/{path}", self.url()),
                problem,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ChunkRef, Chunking, MANIFEST_FORMAT, MANIFEST_VERSION, Stream};

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            snapshot_id: "s1".into(),
            created_at: "2026-11-29T00:00:00Z".into(),
            metadata: Default::default(),
            key_id: None,
            streams: vec![Stream {
                name: "memory/pages".into(),
                chunking: Chunking::MEMORY,
                size: 3 << 20,
                chunks: (0..3)
                    .map(|_| ChunkRef {
                        id: None,
                        len: 1 << 20,
                    })
                    .collect(),
            }],
            digest: String::new(),
        }
    }

    fn set() -> WorkingSet {
        WorkingSet {
            files: vec![WorkingSetFile {
                stream: "memory/pages".into(),
                block: 4096,
                offsets: vec![8192, 0, (3 << 20) - 1],
            }],
            recorded_at: "2026-11-29T07:00:00Z".into(),
            source: "test".into(),
        }
    }

    #[test]
    fn records_round_trip_and_carry_the_header() {
        let bytes = encode("s1", &set());
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["magic"], WORKING_SET_MAGIC);
        assert_eq!(value["version"], 1);
        assert_eq!(value["snapshot_id"], "s1");
        assert_eq!(value["files"][0]["block"], 4096);
        assert_eq!(decode(&bytes, &manifest()).unwrap(), set());
    }

    #[test]
    fn limits_are_checked() {
        let m = manifest();
        for block in [0, 2048, 4097, 32 << 20] {
            let mut s = set();
            s.files[0].block = block;
            assert!(s.validate(&m).unwrap_err().contains("block"), "{block}");
        }
        let mut s = set();
        s.files[0].block = 16 << 20;
        s.validate(&m).unwrap();
        s.files[0].offsets = vec![0; MAX_WORKING_SET_OFFSETS + 1];
        assert!(s.validate(&m).unwrap_err().contains("offsets"));
        let mut s = set();
        s.recorded_at = "yesterday".into();
        assert!(s.validate(&m).unwrap_err().contains("RFC 3339"));
        let big = vec![b' '; MAX_WORKING_SET_BYTES + 1];
        assert!(decode(&big, &m).unwrap_err().contains("bytes"));
        let no_version = br#"{"magic": "podsnap-working-set"}"#;
        assert!(
            decode(no_version, &m)
                .unwrap_err()
                .contains("another podsnap version")
        );
    }
}
