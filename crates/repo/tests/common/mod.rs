//! Helpers shared by the repository tests.
#![allow(dead_code)]

use std::io::Cursor;
use std::sync::Arc;

use podsnap_repo::{
    Chunking, EncryptionKey, Location, Manifest, NoProgress, RepoOptions, Repository,
    SnapshotMetadata, WriteStats,
};

/// A repository in a local directory.
pub fn local_repo(dir: &std::path::Path, key: Option<EncryptionKey>) -> Repository {
    let url = format!("file://{}", dir.display());
    let location = podsnap_repo::open_url(&url, &Default::default()).unwrap();
    Repository::new(location, key, RepoOptions::default()).unwrap()
}

/// A repository over any store.
pub fn repo_on(store: Arc<dyn object_store::ObjectStore>, options: RepoOptions) -> Repository {
    let location = Location {
        url: "test://store".into(),
        store,
    };
    Repository::new(location, None, options).unwrap()
}

/// Bytes that look like process memory: zero pages, repeated code pages, and random heap.
pub fn memory_image(pages: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let code_page: Vec<u8> = (0..4096).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = Vec::with_capacity(pages * 4096);
    for page in 0..pages {
        match page % 16 {
            0..8 => out.extend(std::iter::repeat_n(0u8, 4096)),
            8..12 => out.extend_from_slice(&code_page),
            _ => (0..512).for_each(|_| out.extend_from_slice(&next().to_le_bytes())),
        }
    }
    out
}

/// Random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes one snapshot with the given streams.
pub async fn write_snapshot(
    repo: &Repository,
    id: &str,
    streams: &[(&str, Chunking, Vec<u8>)],
) -> (Manifest, WriteStats) {
    let mut writer = repo
        .begin_snapshot(id, SnapshotMetadata::default())
        .await
        .unwrap();
    for (name, chunking, data) in streams {
        writer
            .add_stream(
                name,
                *chunking,
                Cursor::new(data.clone()),
                Some(data.len() as u64),
                &NoProgress,
            )
            .await
            .unwrap();
    }
    let stats = writer.stats().clone();
    (writer.commit().await.unwrap(), stats)
}

/// Reads a whole stream back into memory.
pub async fn read_back(repo: &Repository, id: &str, stream: &str) -> Vec<u8> {
    let snapshot = repo.open_snapshot(id).await.unwrap();
    let mut out = Vec::new();
    snapshot
        .read_stream_to_writer(stream, &mut out, &NoProgress)
        .await
        .unwrap();
    out
}

/// Small fixed chunks, so tests have many chunks without much data.
pub const SMALL_FIXED: Chunking = Chunking::Fixed { size: 16 << 10 };
/// Small content-defined chunks.
pub const SMALL_CDC: Chunking = Chunking::Cdc {
    min: 2 << 10,
    avg: 8 << 10,
    max: 32 << 10,
};

/// The ids of the snapshots `repo` lists, in its order.
pub async fn snapshot_ids(repo: &Repository) -> Vec<String> {
    repo.list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}
