//! The repository on S3: against a real S3 server (s3s-fs) started on loopback by the test,
//! and against endpoints that do not answer or buckets that do not exist.

mod common;

use std::time::Duration;

use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use podsnap_repo::{Chunking, GcOptions, RepoError, RepoOptions, Repository, StoreOptions};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

const ACCESS_KEY: &str = "podsnap-test";
const SECRET_KEY: &str = "podsnap-test-secret";

/// Starts an S3 server over a temporary directory; returns its endpoint and the directory.
async fn s3_server(buckets: &[&str]) -> (String, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    for bucket in buckets {
        std::fs::create_dir(root.path().join(bucket)).unwrap();
    }
    let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    (endpoint, root)
}

fn options() -> StoreOptions {
    StoreOptions {
        max_retries: 1,
        retry_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        settings: vec![
            ("aws_access_key_id".into(), ACCESS_KEY.into()),
            ("aws_secret_access_key".into(), SECRET_KEY.into()),
        ],
    }
}

fn s3_repo(url: &str) -> Repository {
    let location = podsnap_repo::open_url(url, &options()).unwrap();
    Repository::new(location, None, RepoOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_round_trip_and_dedup_on_s3() {
    let (endpoint, root) = s3_server(&["snapshots"]).await;
    let url = format!("s3://snapshots/prod/node-a?endpoint={endpoint}&region=us-east-1");
    let repo = s3_repo(&url);
    let memory = memory_image(2048, 21);
    let file = random_bytes(3 << 20, 22);
    let (manifest, first) = write_snapshot(
        &repo,
        "s3-snap",
        &[
            ("memory/pages", Chunking::MEMORY, memory.clone()),
            ("rootfs/upper.tar", Chunking::FILES, file.clone()),
        ],
    )
    .await;
    assert_eq!(manifest.total_size(), (memory.len() + file.len()) as u64);
    assert!(
        root.path()
            .join("snapshots/prod/node-a/snapshots/s3-snap/manifest.json")
            .exists()
    );
    assert_eq!(read_back(&repo, "s3-snap", "memory/pages").await, memory);
    assert_eq!(
        read_back(&s3_repo(&url), "s3-snap", "rootfs/upper.tar").await,
        file
    );

    let (_, second) = write_snapshot(
        &s3_repo(&url),
        "s3-snap-2",
        &[("memory/pages", Chunking::MEMORY, memory)],
    )
    .await;
    assert_eq!(
        second.new_bytes, 0,
        "the second snapshot of the same memory uploads nothing"
    );
    assert!(first.new_bytes > 0);

    // Create-only manifests: the id cannot be taken twice.
    let err = repo
        .begin_snapshot("s3-snap", Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::SnapshotExists(_)), "{err}");
    let ids = snapshot_ids(&repo).await;
    assert_eq!(ids, ["s3-snap", "s3-snap-2"]);
    repo.verify_snapshot("s3-snap", true).await.unwrap();
    repo.delete_snapshot("s3-snap").await.unwrap();
    let report = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(report.deleted_chunks > 0, "{report:?}");
    repo.verify_snapshot("s3-snap-2", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_a_clear_error() {
    let (endpoint, _root) = s3_server(&[]).await;
    let repo = s3_repo(&format!("s3://no-such-bucket/p?endpoint={endpoint}"));
    let err = repo.list_snapshots().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RepoError::NoRepository(_)), "{text}");
    assert!(
        text.contains("s3://no-such-bucket/p") && text.contains("check the URL"),
        "{text}"
    );
    let err = repo.open_snapshot("x").await.unwrap_err();
    assert!(matches!(err, RepoError::NoRepository(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_clear_error() {
    // Nothing listens on this port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let repo = s3_repo(&format!("s3://bucket?endpoint=http://127.0.0.1:{port}"));
    let err = repo.list_snapshots().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RepoError::Storage { .. }), "{text}");
    assert!(
        text.contains("s3://bucket") && text.contains("endpoint is reachable"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused() {
    let (endpoint, _root) = s3_server(&["b"]).await;
    let mut bad = options();
    bad.settings[1].1 = "wrong".into();
    let location = podsnap_repo::open_url(&format!("s3://b?endpoint={endpoint}"), &bad).unwrap();
    let repo = Repository::new(location, None, RepoOptions::default()).unwrap();
    let err = repo
        .begin_snapshot("x", Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");
}

/// Gated: needs a real GCS bucket. Run with
/// `PODSNAP_TEST_GCS_URL=gs://BUCKET/PREFIX GOOGLE_APPLICATION_CREDENTIALS=key.json cargo test -p podsnap-repo --test s3 gcs_real_bucket`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_real_bucket_round_trip_gated_on_credentials() {
    let Ok(url) = std::env::var("PODSNAP_TEST_GCS_URL") else {
        eprintln!(
            "skipped: set PODSNAP_TEST_GCS_URL=gs://BUCKET/PREFIX (and GCS credentials) to run"
        );
        return;
    };
    let location = podsnap_repo::open_url(&url, &StoreOptions::default()).unwrap();
    let repo = Repository::new(location, None, RepoOptions::default()).unwrap();
    let id = format!("gated-{}", uuid::Uuid::new_v4());
    let data = memory_image(512, 23);
    write_snapshot(
        &repo,
        &id,
        &[("memory/pages", Chunking::MEMORY, data.clone())],
    )
    .await;
    assert_eq!(read_back(&repo, &id, "memory/pages").await, data);
    repo.delete_snapshot(&id).await.unwrap();
}
