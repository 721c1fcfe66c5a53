//! The repository on a local directory: round trips, dedup, atomicity, verification, faults,
//! encryption, the node cache, prioritised fetches and garbage collection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use podsnap_repo::{
    Chunking, EncryptionKey, GcOptions, NoProgress, RepoError, RepoOptions, RepoStats,
    SnapshotMetadata,
};

fn root(e: &RepoError) -> &RepoError {
    match e {
        RepoError::Shared(inner) => root(inner),
        other => other,
    }
}

#[tokio::test]
async fn streams_round_trip_through_files_writers_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let memory = memory_image(300, 1);
    let file = random_bytes(200_000, 2);
    let (manifest, stats) = write_snapshot(
        &repo,
        "snap-1",
        &[
            ("memory/pages", SMALL_FIXED, memory.clone()),
            ("rootfs/upper.tar", SMALL_CDC, file.clone()),
        ],
    )
    .await;
    assert_eq!(manifest.streams.len(), 2);
    assert_eq!(manifest.total_size(), (memory.len() + file.len()) as u64);
    assert!(stats.zero_chunks > 0, "zero pages are stored as holes");
    assert_eq!(read_back(&repo, "snap-1", "memory/pages").await, memory);
    assert_eq!(read_back(&repo, "snap-1", "rootfs/upper.tar").await, file);

    let snapshot = repo.open_snapshot("snap-1").await.unwrap();
    let out = dir.path().join("restored");
    let read = snapshot
        .read_stream_to_file("memory/pages", &out, &NoProgress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), memory);
    assert_eq!(
        read.zero_chunks + read.fetched_chunks,
        manifest.streams[0].chunks.len() as u64
    );
    for (offset, len) in [
        (0u64, 10u64),
        (16_380, 10),
        (4096 * 299, 4096),
        (100_000, 70_000),
        (memory.len() as u64 - 5, 100),
    ] {
        let got = snapshot
            .read_range("memory/pages", offset, len)
            .await
            .unwrap();
        let end = (offset + len).min(memory.len() as u64) as usize;
        assert_eq!(got, &memory[offset as usize..end], "range {offset}+{len}");
    }
    let err = snapshot.read_range("nope", 0, 1).await.unwrap_err();
    assert!(
        err.to_string().contains("memory/pages, rootfs/upper.tar"),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_stream_and_a_one_byte_stream_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    write_snapshot(
        &repo,
        "tiny",
        &[("a", SMALL_FIXED, Vec::new()), ("b", SMALL_CDC, vec![7])],
    )
    .await;
    assert!(read_back(&repo, "tiny", "a").await.is_empty());
    assert_eq!(read_back(&repo, "tiny", "b").await, vec![7]);
}

#[tokio::test]
async fn a_second_snapshot_of_the_same_data_stores_almost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let memory = memory_image(1024, 3);
    let (_, first) = write_snapshot(
        &repo,
        "first",
        &[("memory/pages", Chunking::MEMORY, memory.clone())],
    )
    .await;
    // A fresh handle knows nothing in memory: dedup must come from the store.
    let repo = local_repo(dir.path(), None);
    let (_, second) = write_snapshot(
        &repo,
        "second",
        &[("memory/pages", Chunking::MEMORY, memory)],
    )
    .await;
    assert!(first.new_bytes > 0);
    assert_eq!(second.new_chunks, 0);
    assert_eq!(second.new_bytes, 0);
    assert_eq!(second.reused_chunks, first.new_chunks);
}

#[tokio::test]
async fn cdc_dedups_files_that_shifted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let file = random_bytes(400_000, 4);
    let (_, first) = write_snapshot(&repo, "a", &[("f", SMALL_CDC, file.clone())]).await;
    let mut shifted = b"a few inserted bytes".to_vec();
    shifted.extend_from_slice(&file);
    let (_, second) = write_snapshot(&repo, "b", &[("f", SMALL_CDC, shifted)]).await;
    assert!(
        second.reused_chunks >= first.new_chunks - 2,
        "{second:?} vs {first:?}"
    );
}

#[tokio::test]
async fn ids_are_unique_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    write_snapshot(&repo, "s", &[("a", SMALL_FIXED, vec![1; 10])]).await;
    let err = repo
        .begin_snapshot("s", SnapshotMetadata::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::SnapshotExists(_)), "{err}");
    let err = repo
        .begin_snapshot("../etc", SnapshotMetadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a valid snapshot id"), "{err}");
    let mut writer = repo
        .begin_snapshot("t", SnapshotMetadata::default())
        .await
        .unwrap();
    let err = writer
        .add_stream(
            "Bad Name",
            SMALL_FIXED,
            std::io::Cursor::new(vec![1]),
            None,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a valid stream name"), "{err}");
}

#[tokio::test]
async fn an_unfinished_write_leaves_no_snapshot_and_gc_collects_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let mut writer = repo
        .begin_snapshot("crashed", SnapshotMetadata::default())
        .await
        .unwrap();
    writer
        .add_stream(
            "memory/pages",
            SMALL_FIXED,
            std::io::Cursor::new(random_bytes(100_000, 5)),
            None,
            &NoProgress,
        )
        .await
        .unwrap();
    drop(writer); // the writer dies before its manifest
    assert!(repo.list_snapshots().await.unwrap().is_empty());
    let err = repo.open_snapshot("crashed").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");
    // Its marker keeps gc away until it is stale.
    let report = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.writes_in_progress, vec!["crashed".to_string()]);
    assert_eq!(report.deleted_chunks, 0);
    let stale = GcOptions {
        grace: Duration::ZERO,
        stale_write_after: Duration::ZERO,
        dry_run: false,
    };
    std::thread::sleep(Duration::from_millis(1100));
    let report = repo.gc(&stale).await.unwrap();
    assert_eq!(report.stale_writes_removed, vec!["crashed".to_string()]);
    assert!(report.deleted_chunks >= 6, "{report:?}");
}

#[tokio::test]
async fn gc_keeps_referenced_and_young_chunks_and_deletes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let shared = random_bytes(64 << 10, 6);
    let mut only_b = shared.clone();
    only_b.extend(random_bytes(64 << 10, 7));
    write_snapshot(&repo, "a", &[("m", SMALL_FIXED, shared.clone())]).await;
    write_snapshot(&repo, "b", &[("m", SMALL_FIXED, only_b.clone())]).await;
    repo.delete_snapshot("b").await.unwrap();
    let young = repo.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(
        (young.deleted_chunks, young.young_chunks),
        (0, 4),
        "{young:?}"
    );
    let dry = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((dry.unreferenced_chunks, dry.deleted_chunks), (4, 0));
    let report = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.deleted_chunks, 4);
    assert_eq!(report.referenced_chunks, 4);
    assert_eq!(read_back(&repo, "a", "m").await, shared);
    repo.verify_snapshot("a", true).await.unwrap();
}

#[tokio::test]
async fn a_write_that_overlaps_a_sweep_fails_cleanly_when_a_reused_chunk_went() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let data = random_bytes(32 << 10, 8);
    write_snapshot(&repo, "old", &[("m", SMALL_FIXED, data.clone())]).await;
    repo.delete_snapshot("old").await.unwrap();
    // A new write reuses the now unreferenced chunks...
    let fresh = local_repo(dir.path(), None);
    let mut writer = fresh
        .begin_snapshot("new", SnapshotMetadata::default())
        .await
        .unwrap();
    writer
        .add_stream(
            "m",
            SMALL_FIXED,
            std::io::Cursor::new(data.clone()),
            None,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(writer.stats().reused_chunks, 2);
    // ...while a sweep that ignored its marker (the race the check exists for) deletes them.
    std::fs::remove_dir_all(dir.path().join("pending")).unwrap();
    let report = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.deleted_chunks, 2);
    let err = writer.commit().await.unwrap_err();
    assert!(matches!(err, RepoError::ChunkCollected { .. }), "{err}");
    assert!(
        err.to_string().contains("write the snapshot again"),
        "{err}"
    );
    assert!(
        fresh.list_snapshots().await.unwrap().is_empty(),
        "nothing was committed"
    );
}

fn corrupt_one_chunk(dir: &std::path::Path, how: impl Fn(&mut Vec<u8>)) -> String {
    let shard = std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let file = std::fs::read_dir(shard.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut bytes = std::fs::read(file.path()).unwrap();
    how(&mut bytes);
    std::fs::write(file.path(), bytes).unwrap();
    file.file_name().to_string_lossy().into_owned()
}

#[tokio::test]
async fn damaged_chunks_are_errors_that_name_the_snapshot_and_object() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("flipped bit", |b| {
            let last = b.len() - 1;
            b[last] ^= 0x40;
        }),
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("emptied", |b| b.clear()),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let repo = local_repo(dir.path(), None);
        let data = random_bytes(16 << 10, 9);
        write_snapshot(&repo, "snap", &[("m", SMALL_FIXED, data)]).await;
        let chunk = corrupt_one_chunk(dir.path(), damage);
        let snapshot = repo.open_snapshot("snap").await.unwrap();
        let err = snapshot.chunk("m", 0).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(root(&err), RepoError::CorruptChunk { .. }),
            "{what}: {text}"
        );
        assert!(
            text.contains("snapshot snap") && text.contains(&chunk),
            "{what}: {text}"
        );
        let err = repo.verify_snapshot("snap", true).await.unwrap_err();
        assert!(err.to_string().contains(&chunk), "{what}: {err}");
    }
}

#[tokio::test]
async fn a_missing_chunk_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    write_snapshot(
        &repo,
        "snap",
        &[("m", SMALL_FIXED, random_bytes(16 << 10, 10))],
    )
    .await;
    std::fs::remove_dir_all(dir.path().join("chunks")).unwrap();
    let err = repo.verify_snapshot("snap", false).await.unwrap_err();
    assert!(matches!(err, RepoError::MissingChunk { .. }), "{err}");
    assert!(err.to_string().contains("is missing"), "{err}");
    let snapshot = repo.open_snapshot("snap").await.unwrap();
    let err = snapshot.chunk("m", 0).await.unwrap_err();
    assert!(
        matches!(root(&err), RepoError::MissingChunk { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn damaged_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    write_snapshot(&repo, "snap", &[("m", SMALL_FIXED, vec![1; 100])]).await;
    let path = dir.path().join("snapshots/snap/manifest.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let cases = [
        (
            "newer version",
            original.replace("\"version\": 1", "\"version\": 7"),
            "format version 7 is not supported",
        ),
        (
            "truncated",
            original[..original.len() / 2].to_string(),
            "truncated",
        ),
        (
            "edited",
            original.replace("\"size\": 100", "\"size\": 99"),
            "corrupt",
        ),
    ];
    for (what, text, expect) in cases {
        std::fs::write(&path, text).unwrap();
        let err = repo.open_snapshot("snap").await.unwrap_err();
        assert!(err.to_string().contains(expect), "{what}: {err}");
        assert!(
            err.to_string().contains("snapshots/snap/manifest.json"),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn a_missing_repository_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(&dir.path().join("empty"), None);
    let err = repo.list_snapshots().await.unwrap_err();
    assert!(matches!(err, RepoError::NoRepository(_)), "{err}");
    assert!(
        err.to_string().contains("no podsnap repository at file://"),
        "{err}"
    );
}

#[tokio::test]
async fn encrypted_repositories_need_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::from_bytes(&[42; 32]);
    let repo = local_repo(dir.path(), Some(key.clone()));
    let secret = b"password=hunter2 ".repeat(2000);
    write_snapshot(&repo, "enc", &[("m", SMALL_FIXED, secret.clone())]).await;
    assert_eq!(read_back(&repo, "enc", "m").await, secret);
    // Nothing readable is stored.
    for shard in std::fs::read_dir(dir.path().join("chunks")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            assert!(!bytes.windows(8).any(|w| w == b"password"));
        }
    }
    let wrong = local_repo(dir.path(), Some(EncryptionKey::from_bytes(&[1; 32])));
    let err = wrong.open_snapshot("enc").await.unwrap_err();
    assert!(err.to_string().contains("is encrypted with key"), "{err}");
    let none = local_repo(dir.path(), None);
    let err = none.list_snapshots().await.unwrap_err();
    assert!(err.to_string().contains("--key-file"), "{err}");
    // Dedup holds within one key.
    let (_, again) = write_snapshot(
        &local_repo(dir.path(), Some(key)),
        "enc2",
        &[("m", SMALL_FIXED, secret)],
    )
    .await;
    assert_eq!(again.new_chunks, 0);
}

#[tokio::test]
async fn a_second_restore_through_the_node_cache_downloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let writer = local_repo(&dir.path().join("repo"), None);
    let memory = memory_image(512, 11);
    write_snapshot(
        &writer,
        "snap",
        &[("memory/pages", SMALL_FIXED, memory.clone())],
    )
    .await;
    let location = podsnap_repo::open_url(
        &format!("file://{}", dir.path().join("repo").display()),
        &Default::default(),
    )
    .unwrap();
    let options = RepoOptions {
        cache: Some((dir.path().join("cache"), 64 << 20)),
        ..Default::default()
    };
    let repo = podsnap_repo::Repository::new(location, None, options).unwrap();
    // Two restores at once: each chunk is fetched once.
    let (a, b) = tokio::join!(
        read_back(&repo, "snap", "memory/pages"),
        read_back(&repo, "snap", "memory/pages")
    );
    assert_eq!(a, memory);
    assert_eq!(b, memory);
    let stored_chunks = writer
        .stats()
        .store_puts
        .load(std::sync::atomic::Ordering::Relaxed);
    let gets_after_first = RepoStats::get(&repo.stats().store_gets);
    assert_eq!(gets_after_first, stored_chunks);
    assert_eq!(read_back(&repo, "snap", "memory/pages").await, memory);
    assert_eq!(
        RepoStats::get(&repo.stats().store_gets),
        gets_after_first,
        "the second restore came from the cache"
    );
    assert!(RepoStats::get(&repo.stats().cache_hits) >= stored_chunks);
    // A damaged cached copy is dropped and fetched again.
    let cache_dir = dir.path().join("cache");
    let shard = std::fs::read_dir(&cache_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let file = std::fs::read_dir(shard.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    std::fs::write(file.path(), b"garbage").unwrap();
    assert_eq!(read_back(&repo, "snap", "memory/pages").await, memory);
    assert_eq!(
        RepoStats::get(&repo.stats().store_gets),
        gets_after_first + 1
    );
}

#[tokio::test]
async fn requested_chunks_overtake_the_background_fill() {
    let memory = InMemory::new();
    let plain = repo_on(Arc::new(memory.clone()), RepoOptions::default());
    let data = random_bytes(60 * (16 << 10), 12);
    write_snapshot(
        &plain,
        "snap",
        &[("memory/pages", SMALL_FIXED, data.clone())],
    )
    .await;
    let slow = ThrottledStore::new(
        memory,
        ThrottleConfig {
            wait_get_per_call: Duration::from_millis(20),
            ..Default::default()
        },
    );
    let repo = repo_on(Arc::new(slow), RepoOptions::default());
    let snapshot = repo.open_snapshot("snap").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let restored = Arc::new(Mutex::new(vec![0u8; data.len()]));
    let sink = {
        let order = Arc::clone(&order);
        let restored = Arc::clone(&restored);
        Arc::new(move |index: usize, bytes: Vec<u8>| {
            let at = index * (16 << 10);
            restored.lock().unwrap()[at..at + bytes.len()].copy_from_slice(&bytes);
            order.lock().unwrap().push(index);
        })
    };
    let fetcher = snapshot.fetcher("memory/pages", 2, sink).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    fetcher.request(55).await.unwrap();
    let position = order.lock().unwrap().iter().position(|&i| i == 55).unwrap();
    assert!(
        position < 10,
        "chunk 55 arrived {position}th; it should overtake the fill"
    );
    fetcher.wait_all().await.unwrap();
    assert_eq!(order.lock().unwrap().len(), 60);
    assert_eq!(*restored.lock().unwrap(), data);
    fetcher.request(3).await.unwrap();
}

#[tokio::test]
async fn prioritized_chunks_come_first_in_their_order() {
    let memory = InMemory::new();
    let plain = repo_on(Arc::new(memory.clone()), RepoOptions::default());
    let data = random_bytes(40 * (16 << 10), 13);
    write_snapshot(&plain, "snap", &[("memory/pages", SMALL_FIXED, data)]).await;
    let slow = ThrottledStore::new(
        memory,
        ThrottleConfig {
            wait_get_per_call: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let repo = repo_on(Arc::new(slow), RepoOptions::default());
    let snapshot = repo.open_snapshot("snap").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let order = Arc::clone(&order);
        Arc::new(move |index: usize, _: Vec<u8>| order.lock().unwrap().push(index))
    };
    let fetcher = snapshot.fetcher("memory/pages", 1, sink).unwrap();
    fetcher.prioritize(&[30, 20, 39, 30]);
    fetcher.wait_all().await.unwrap();
    let order = order.lock().unwrap().clone();
    let at = |i| order.iter().position(|&o| o == i).unwrap();
    assert!(at(30) < at(20) && at(20) < at(39), "{order:?}");
    assert!(at(39) <= 2, "the working set overtakes the fill: {order:?}");
    assert_eq!(order.len(), 40, "every chunk once");
}

#[tokio::test]
async fn snapshots_are_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    write_snapshot(&repo, "one", &[("m", SMALL_FIXED, vec![1; 10])]).await;
    write_snapshot(
        &repo,
        "two",
        &[
            ("m", SMALL_FIXED, vec![2; 20]),
            ("f", SMALL_CDC, vec![3; 5]),
        ],
    )
    .await;
    let list = repo.list_snapshots().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["one", "two"]);
    assert_eq!(list[1].size, 25);
    repo.delete_snapshot("one").await.unwrap();
    assert_eq!(repo.list_snapshots().await.unwrap().len(), 1);
    let err = repo.delete_snapshot("one").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }));
}
