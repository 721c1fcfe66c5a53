//! A snapshot's recorded working set on a local directory: round trips, absence, refused
//! records, deletion with the snapshot, orphans in listings and gc, encrypted repositories.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use podsnap_repo::{EncryptionKey, GcOptions, RepoError, Repository, WorkingSet, WorkingSetFile};

/// A snapshot `id` with a 256 KiB memory stream and a 10-byte file.
async fn snapshot(repo: &Repository, id: &str) {
    write_snapshot(
        repo,
        id,
        &[
            ("memory/pages", SMALL_FIXED, memory_image(64, 1)),
            ("files/small", SMALL_CDC, vec![5; 10]),
        ],
    )
    .await;
}

fn sample() -> WorkingSet {
    WorkingSet {
        files: vec![
            WorkingSetFile {
                stream: "memory/pages".into(),
                block: 4096,
                offsets: vec![40960, 0, 4096, (256 << 10) - 4096],
            },
            WorkingSetFile {
                stream: "files/small".into(),
                block: 1 << 20,
                offsets: vec![0],
            },
        ],
        recorded_at: "2026-11-29T07:00:00Z".into(),
        source: "node-a restore of pod x".into(),
    }
}

#[tokio::test]
async fn a_working_set_round_trips_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    repo.put_working_set("snap", &sample()).await.unwrap();
    assert_eq!(repo.working_set("snap").await.unwrap(), Some(sample()));
    // Another handle (another node) reads the same.
    let other = local_repo(dir.path(), None);
    assert_eq!(other.working_set("snap").await.unwrap(), Some(sample()));
    let stored: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("snapshots/snap/working-set.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stored["magic"], "podsnap-working-set");
    assert_eq!(stored["version"], 1);
    assert_eq!(stored["snapshot_id"], "snap");
    assert_eq!(stored["source"], "node-a restore of pod x");
    // A later restore may record a better one.
    let mut second = sample();
    second.files.truncate(1);
    second.files[0].offsets.reverse();
    repo.put_working_set("snap", &second).await.unwrap();
    assert_eq!(repo.working_set("snap").await.unwrap(), Some(second));
    // Recording one changes nothing about the snapshot.
    let list = repo.list_snapshots().await.unwrap();
    assert_eq!(list.len(), 1);
    repo.verify_snapshot("snap", true).await.unwrap();
}

#[tokio::test]
async fn no_working_set_is_none_and_a_missing_snapshot_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    assert_eq!(repo.working_set("snap").await.unwrap(), None);
    let err = repo.working_set("gone").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");
    let err = repo.working_set("../snap").await.unwrap_err();
    assert!(err.to_string().contains("not a valid snapshot id"), "{err}");
}

#[tokio::test]
async fn a_working_set_for_a_missing_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    let err = repo.put_working_set("gone", &sample()).await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");
    assert!(!dir.path().join("snapshots/gone").exists());
}

#[tokio::test]
async fn sets_that_do_not_fit_the_snapshot_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    type Edit = fn(&mut WorkingSet);
    let cases: [(&str, Edit, &str); 6] = [
        (
            "unknown stream",
            |s| s.files[0].stream = "memory/other".into(),
            "names stream `memory/other`, which snapshot snap does not have (it has: memory/pages, files/small)",
        ),
        (
            "offset beyond the stream",
            |s| s.files[1].offsets.push(10),
            "stream `files/small`: offset 10 is beyond the stream's end (10 bytes)",
        ),
        (
            "block not a power of two",
            |s| s.files[0].block = 12288,
            "block 12288 is not a power of two from 4 KiB to 16 MiB",
        ),
        (
            "block too small",
            |s| s.files[0].block = 512,
            "block 512 is not a power of two",
        ),
        (
            "block too large",
            |s| s.files[0].block = 32 << 20,
            "is not a power of two from 4 KiB to 16 MiB",
        ),
        (
            "too many offsets",
            |s| s.files[0].offsets = vec![0; (1 << 20) + 1],
            "it holds 1048578 offsets, more than the 1048576 a working set may hold",
        ),
    ];
    for (what, edit, expect) in cases {
        let mut set = sample();
        edit(&mut set);
        let err = repo.put_working_set("snap", &set).await.unwrap_err();
        assert!(matches!(err, RepoError::Invalid(_)), "{what}: {err}");
        let text = err.to_string();
        assert!(text.contains(expect), "{what}: {text}");
        assert!(
            text.contains("working set for snapshot snap was not stored"),
            "{what}: {text}"
        );
        assert_eq!(repo.working_set("snap").await.unwrap(), None, "{what}");
    }
}

#[tokio::test]
async fn damaged_records_are_refused_naming_the_object_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    snapshot(&repo, "other").await;
    repo.put_working_set("snap", &sample()).await.unwrap();
    let path = dir.path().join("snapshots/snap/working-set.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let cases = [
        (
            "another snapshot's record",
            original.replace("\"snapshot_id\":\"snap\"", "\"snapshot_id\":\"other\""),
            "it was recorded for snapshot other, not snap",
        ),
        (
            "unknown stream",
            original.replace("files/small", "files/big"),
            "names stream `files/big`, which snapshot snap does not have",
        ),
        (
            "offset beyond the stream",
            original.replace("[0]", "[262144]"),
            "offset 262144 is beyond the stream's end (10 bytes)",
        ),
        (
            "bad block",
            original.replace("\"block\":4096", "\"block\":1000"),
            "block 1000 is not a power of two",
        ),
        (
            "bad magic",
            original.replace("podsnap-working-set", "something-else"),
            "not a podsnap working set",
        ),
        (
            "another version",
            original.replace("\"version\":1", "\"version\":2"),
            "recorded by another podsnap version (working-set format version 2, this podsnap reads version 1)",
        ),
        (
            "garbage",
            "\u{1}\u{2} not json".to_string(),
            "not a JSON object",
        ),
        (
            "truncated",
            original[..original.len() / 2].to_string(),
            "the object may be truncated",
        ),
        (
            "a field of the wrong type",
            original.replace("\"source\":\"node-a restore of pod x\"", "\"source\":7"),
            "invalid field",
        ),
    ];
    for (what, text, expect) in cases {
        assert_ne!(text, original, "{what}: the case must change the record");
        std::fs::write(&path, text).unwrap();
        let err = repo.working_set("snap").await.unwrap_err();
        assert!(
            matches!(err, RepoError::CorruptWorkingSet { .. }),
            "{what}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains(expect), "{what}: {message}");
        assert!(
            message.contains("snapshots/snap/working-set.json"),
            "{what}: {message}"
        );
        assert!(
            message.contains("the next lazy restore records it again"),
            "{what}: {message}"
        );
        // The snapshot itself is unharmed.
        assert_eq!(
            read_back(&repo, "snap", "files/small").await,
            vec![5; 10],
            "{what}"
        );
    }
    // Overwriting a damaged record repairs it.
    repo.put_working_set("snap", &sample()).await.unwrap();
    assert_eq!(repo.working_set("snap").await.unwrap(), Some(sample()));
}

#[tokio::test]
async fn deleting_a_snapshot_deletes_its_working_set() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "snap").await;
    snapshot(&repo, "kept").await;
    repo.put_working_set("snap", &sample()).await.unwrap();
    repo.put_working_set("kept", &sample()).await.unwrap();
    repo.delete_snapshot("snap").await.unwrap();
    assert!(!dir.path().join("snapshots/snap/working-set.json").exists());
    let err = repo.working_set("snap").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");
    assert_eq!(repo.working_set("kept").await.unwrap(), Some(sample()));
    // A snapshot without a working set deletes as before.
    snapshot(&repo, "bare").await;
    repo.delete_snapshot("bare").await.unwrap();
    let ids = snapshot_ids(&repo).await;
    assert_eq!(ids, ["kept"]);
}

#[tokio::test]
async fn an_orphan_working_set_is_no_snapshot_and_gc_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    snapshot(&repo, "orphan").await;
    snapshot(&repo, "kept").await;
    repo.put_working_set("orphan", &sample()).await.unwrap();
    repo.put_working_set("kept", &sample()).await.unwrap();
    // A deletion that stopped halfway: the manifest went, the working set stayed.
    std::fs::remove_file(dir.path().join("snapshots/orphan/manifest.json")).unwrap();
    let record = dir.path().join("snapshots/orphan/working-set.json");
    assert!(record.exists());

    let ids = snapshot_ids(&repo).await;
    assert_eq!(ids, ["kept"]);
    let err = repo.working_set("orphan").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");
    let err = repo.delete_snapshot("orphan").await.unwrap_err();
    assert!(matches!(err, RepoError::SnapshotNotFound { .. }), "{err}");

    // Young orphans are kept for the grace period.
    let report = repo.gc(&GcOptions::default()).await.unwrap();
    assert!(report.orphan_working_sets.is_empty(), "{report:?}");
    assert_eq!(report.snapshots, 1);
    assert!(record.exists());
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    for id in ["orphan", "kept"] {
        let path = dir.path().join(format!("snapshots/{id}/working-set.json"));
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let dry = repo
        .gc(&GcOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dry.orphan_working_sets, ["orphan"]);
    assert!(record.exists());
    let report = repo.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(report.orphan_working_sets, ["orphan"]);
    assert!(!record.exists());
    assert_eq!(repo.working_set("kept").await.unwrap(), Some(sample()));
    let again = repo.gc(&GcOptions::default()).await.unwrap();
    assert!(again.orphan_working_sets.is_empty(), "{again:?}");
}

#[tokio::test]
async fn encrypted_repositories_keep_working_sets_as_plain_json_behind_the_key_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::from_bytes(&[42; 32]);
    let repo = local_repo(dir.path(), Some(key.clone()));
    snapshot(&repo, "enc").await;
    repo.put_working_set("enc", &sample()).await.unwrap();
    assert_eq!(repo.working_set("enc").await.unwrap(), Some(sample()));
    // Like the manifest, the record is plain JSON: offsets only, no content.
    let stored = std::fs::read(dir.path().join("snapshots/enc/working-set.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["files"][0]["offsets"][0], 40960);
    // Reading it needs the repository's key, as the snapshot does.
    let wrong = local_repo(dir.path(), Some(EncryptionKey::from_bytes(&[1; 32])));
    let err = wrong.working_set("enc").await.unwrap_err();
    assert!(matches!(err, RepoError::Key(_)), "{err}");
    let err = local_repo(dir.path(), None)
        .put_working_set("enc", &sample())
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Key(_)), "{err}");
}
