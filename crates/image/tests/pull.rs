//! `ImageStore::pull` against a small OCI distribution registry served by the test on
//! 127.0.0.1: manifests, an image index, blobs, basic authentication, a blob that does not
//! match its digest, images that do not exist, a registry that is not there.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use podsnap_image::{ImageError, ImageStore, PullAuth, PullOptions};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `user:secret`, as HTTP basic authentication sends it.
const CREDENTIALS: &str = "Basic dXNlcjpzZWNyZXQ=";

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(if path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// What the registry serves.
#[derive(Default)]
struct Registry {
    blobs: HashMap<String, Vec<u8>>,
    /// (repository, tag or digest) → (media type, body).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// Blob requests seen, by digest.
    blob_requests: Vec<String>,
}

impl Registry {
    fn blob(&mut self, data: Vec<u8>) -> serde_json::Value {
        let digest = sha(&data);
        let size = data.len();
        self.blobs.insert(digest.clone(), data);
        serde_json::json!({"digest": digest, "size": size})
    }

    /// Adds an image (layers bottom first, gzipped) and returns its manifest's descriptor.
    fn image(&mut self, repo: &str, tag: Option<&str>, layers: &[Vec<u8>]) -> serde_json::Value {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for plain in layers {
            diff_ids.push(sha(plain));
            let mut d = self.blob(gzip(plain));
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
            descriptors.push(d);
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/app"], "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let mut config = self.blob(config);
        config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": config, "layers": descriptors,
        }))
        .unwrap();
        self.manifest(repo, tag, MANIFEST, manifest)
    }

    fn manifest(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: Vec<u8>,
    ) -> serde_json::Value {
        let digest = sha(&body);
        let size = body.len();
        for reference in [Some(digest.as_str()), tag].into_iter().flatten() {
            self.manifests.insert(
                (repo.to_owned(), reference.to_owned()),
                (media_type.to_owned(), body.clone()),
            );
        }
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
    }
}

type Shared = Arc<Mutex<Registry>>;

fn error(status: StatusCode, code: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#
        )))
        .unwrap()
}

fn challenge() -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, r#"Basic realm="test""#)
        .body(Body::from(
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"log in"}]}"#,
        ))
        .unwrap()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(CREDENTIALS)
}

async fn version(headers: HeaderMap) -> Response {
    // Like registries that take basic authentication: the version check asks for it; public
    // repositories still answer anonymous requests.
    if authorized(&headers) {
        Response::new(Body::from("{}"))
    } else {
        challenge()
    }
}

async fn serve(
    State(registry): State<Shared>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if rest.starts_with("private/") && !authorized(&headers) {
        return challenge();
    }
    let mut registry = registry.lock().unwrap();
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        return match registry
            .manifests
            .get(&(repo.to_owned(), reference.to_owned()))
        {
            Some((media_type, body)) => Response::builder()
                .header(header::CONTENT_TYPE, media_type.as_str())
                .header("Docker-Content-Digest", sha(body))
                .body(Body::from(body.clone()))
                .unwrap(),
            None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        };
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        registry.blob_requests.push(digest.to_owned());
        return match registry.blobs.get(digest) {
            Some(body) => Response::new(Body::from(body.clone())),
            None => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        };
    }
    error(StatusCode::NOT_FOUND, "NAME_UNKNOWN")
}

/// Starts the registry on a free port of 127.0.0.1; returns its address.
async fn start(registry: Shared) -> String {
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(version))
        .route("/v2/{*rest}", axum::routing::get(serve))
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

fn insecure() -> PullOptions {
    PullOptions {
        insecure: true,
        ..PullOptions::default()
    }
}

/// A store in a temporary directory whose mounts go when the test ends.
struct Store {
    store: ImageStore,
    _dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.store.unmount_all().unwrap();
    }
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    Store { store, _dir: dir }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn base() -> Vec<u8> {
    layer(&[
        ("bin/", b""),
        ("bin/app", b"app"),
        ("etc/", b""),
        ("etc/gone", b"x"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_indexes_pull_into_shared_layers() {
    let registry = Shared::default();
    {
        let mut r = registry.lock().unwrap();
        r.image(
            "team/app",
            Some("v1"),
            &[base(), layer(&[("srv/", b""), ("srv/v", b"1")])],
        );
        // An index: the entry for this machine has a layer with its architecture's name,
        // the other one a different file; both sit on the same base.
        let this = r.image(
            "team/app",
            None,
            &[
                base(),
                layer(&[("etc/.wh.gone", b""), ("arch", arch().as_bytes())]),
            ],
        );
        let other = r.image("team/app", None, &[base(), layer(&[("arch", b"other")])]);
        let other_arch = if arch() == "arm64" { "amd64" } else { "arm64" };
        let entry = |d: serde_json::Value, a: &str| {
            let mut d = d;
            d["platform"] = serde_json::json!({"architecture": a, "os": "linux"});
            d
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [entry(other, other_arch), entry(this, arch())],
        }))
        .unwrap();
        r.manifest("team/app", Some("multi"), INDEX, index);
    }
    let address = start(registry.clone()).await;
    let s = store();

    let v1 = s
        .store
        .pull(&format!("{address}/team/app:v1"), &insecure())
        .await
        .unwrap();
    assert_eq!(v1.name, format!("{address}/team/app:v1"));
    assert_eq!(v1.config.cmd, ["/bin/app"]);
    assert_eq!(v1.config.working_dir, "/srv");
    assert_eq!(v1.layers.len(), 2);
    let root = s.store.rootfs(&v1).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("srv/v")).unwrap(), "1");
    assert_eq!(
        std::fs::read_to_string(root.join("bin/app")).unwrap(),
        "app"
    );

    let requests_before = registry.lock().unwrap().blob_requests.len();
    let multi = s
        .store
        .pull(&format!("{address}/team/app:multi"), &insecure())
        .await
        .unwrap();
    let base_digest = &v1.layers[0].digest;
    assert_eq!(
        &multi.layers[0].digest, base_digest,
        "the base layer is shared"
    );
    let fetched: Vec<String> = registry.lock().unwrap().blob_requests[requests_before..].to_vec();
    assert!(
        !fetched.contains(base_digest),
        "a layer already in the store is not downloaded again: {fetched:?}"
    );
    let root = s.store.rootfs(&multi).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("arch")).unwrap(),
        arch(),
        "the index entry of this machine's platform"
    );
    assert!(!root.join("etc/gone").exists(), "whiteouts apply");
    assert_eq!(
        s.store.get(&format!("{address}/team/app:multi")).unwrap(),
        multi
    );

    // Pulling again changes nothing.
    let again = s
        .store
        .pull(&format!("{address}/team/app:v1"), &insecure())
        .await
        .unwrap();
    assert_eq!(again.id, v1.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_images_need_credentials() {
    let registry = Shared::default();
    registry
        .lock()
        .unwrap()
        .image("private/app", Some("v1"), &[base()]);
    let address = start(registry).await;
    let s = store();
    let reference = format!("{address}/private/app:v1");
    let anonymous = PullOptions {
        auth: PullAuth::Anonymous,
        ..insecure()
    };
    let err = s.store.pull(&reference, &anonymous).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImageError::Registry { .. }), "{text}");
    assert!(
        text.contains("unauthorized") && text.contains("docker login"),
        "{text}"
    );

    let with_password = PullOptions {
        auth: PullAuth::Basic {
            username: "user".into(),
            password: "secret".into(),
        },
        ..insecure()
    };
    let record = s.store.pull(&reference, &with_password).await.unwrap();
    assert_eq!(record.layers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_damaged_blobs_and_absent_registries_are_named() {
    let registry = Shared::default();
    let damaged_layer = {
        let mut r = registry.lock().unwrap();
        r.image("team/broken", Some("v1"), &[base()]);
        // Serve other bytes under the layer's digest.
        let digest = sha(&gzip(&base()));
        r.blobs.insert(digest.clone(), gzip(b"not the layer"));
        digest
    };
    let address = start(registry).await;
    let s = store();

    let err = s
        .store
        .pull(&format!("{address}/team/missing:v1"), &insecure())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no image"), "{err}");
    assert!(
        err.to_string()
            .contains("check the repository name and tag"),
        "{err}"
    );

    let err = s
        .store
        .pull(&format!("{address}/team/broken:v1"), &insecure())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert!(s.store.get(&format!("{address}/team/broken:v1")).is_err());
    assert!(
        s.store.layer_info(&damaged_layer).is_none(),
        "nothing stored"
    );
    let tmp = s.store.root().join("tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "no leftovers");
    assert_eq!(
        std::fs::read_dir(s.store.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );

    // A port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = s
        .store
        .pull(&format!("127.0.0.1:{port}/team/app:v1"), &insecure())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot reach the registry"),
        "{err}"
    );

    let err = s
        .store
        .pull("UPPER/Case:bad tag", &insecure())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an image reference"), "{err}");
}
