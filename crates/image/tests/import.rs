//! Importing images: Docker archives, OCI layouts and archives, root file system directories;
//! layers with whiteouts; damaged and hostile input.

use std::fs;
use std::io::Write;
use std::path::Path;

use podsnap_image::{ImageConfig, ImageError, ImageStore};
use sha2::{Digest, Sha256};

/// A layer tar from (path, content) entries; content `None` is a directory.
fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        match content {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Unmounts the store's root file systems when a test ends, even by a panic.
struct Unmount<'a>(&'a ImageStore);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        self.0.unmount_all().unwrap();
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/app"],"Cmd":["--port","8080"],"Env":["PATH=/bin"],"WorkingDir":"/srv","ExposedPorts":{"8080/tcp":{}}}}"#;

fn base_layer() -> Vec<u8> {
    layer(&[
        ("bin", None),
        ("bin/app", Some(b"#!/bin/sh\necho app\n")),
        ("etc", None),
        ("etc/old.conf", Some(b"old")),
        ("data", None),
        ("data/a", Some(b"a")),
        ("data/b", Some(b"b")),
    ])
}

fn top_layer() -> Vec<u8> {
    layer(&[
        ("etc/.wh.old.conf", Some(b"")),
        ("data/.wh..wh..opq", Some(b"")),
        ("data/c", Some(b"c")),
        ("bin/app", Some(b"#!/bin/sh\necho app v2\n")),
    ])
}

fn check_rootfs(root: &Path) {
    assert_eq!(
        fs::read_to_string(root.join("bin/app")).unwrap(),
        "#!/bin/sh\necho app v2\n"
    );
    assert!(
        !root.join("etc/old.conf").exists(),
        "a whiteout removes the file"
    );
    assert!(root.join("etc").is_dir());
    assert!(
        !root.join("data/a").exists() && !root.join("data/b").exists(),
        "an opaque directory hides the lower layer"
    );
    assert_eq!(fs::read_to_string(root.join("data/c")).unwrap(), "c");
}

fn docker_archive(dir: &Path) -> std::path::PathBuf {
    let staging = dir.join("docker");
    fs::create_dir_all(staging.join("l1")).unwrap();
    fs::create_dir_all(staging.join("l2")).unwrap();
    fs::write(staging.join("l1/layer.tar"), base_layer()).unwrap();
    fs::write(staging.join("l2/layer.tar"), gzip(&top_layer())).unwrap();
    fs::write(staging.join("config.json"), CONFIG).unwrap();
    fs::write(
        staging.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["localhost/app:v1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    )
    .unwrap();
    let archive = dir.join("app.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &staging).unwrap();
    builder.finish().unwrap();
    archive
}

fn oci_layout(dir: &Path, ref_name: &str) -> std::path::PathBuf {
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let digest = sha(data);
        fs::write(blobs.join(&digest), data).unwrap();
        (format!("sha256:{digest}"), data.len())
    };
    let (l1, s1) = put(&gzip(&base_layer()));
    let (l2, s2) = put(&top_layer());
    let (config, sc) = put(CONFIG.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{sc}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l1}","size":{s1}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l2}","size":{s2}}}]}}"#
    );
    let (m, sm) = put(manifest.as_bytes());
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{sm},"annotations":{{"org.opencontainers.image.ref.name":"{ref_name}"}}}}]}}"#
        ),
    )
    .unwrap();
    layout
}

#[test]
fn docker_archives_import_with_their_tags_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let _unmount = Unmount(&store);
    let records = store
        .import(&docker_archive(dir.path()), None, None)
        .unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.name, "localhost/app:v1");
    assert_eq!(record.config.entrypoint, ["/bin/app"]);
    assert_eq!(record.config.cmd, ["--port", "8080"]);
    assert_eq!(record.config.working_dir, "/srv");
    assert_eq!(record.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(record.id, format!("sha256:{}", sha(CONFIG.as_bytes())));
    check_rootfs(&store.rootfs(record).unwrap());
    assert_eq!(store.get("localhost/app:v1").unwrap(), *record);
}

#[test]
fn oci_layouts_and_archives_import_and_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let _unmount = Unmount(&store);
    let layout = oci_layout(dir.path(), "localhost/oci-app:1.0");
    let record = store.import(&layout, None, None).unwrap().remove(0);
    assert_eq!(record.name, "localhost/oci-app:1.0");
    check_rootfs(&store.rootfs(&record).unwrap());

    let archive = dir.path().join("oci.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.finish().unwrap();
    let renamed = store
        .import(&archive, Some("demo"), None)
        .unwrap()
        .remove(0);
    assert_eq!(renamed.name, "demo:latest");
    check_rootfs(&store.rootfs(&renamed).unwrap());

    // Damage one layer blob: the import names the blob and refuses.
    let blobs = layout.join("blobs/sha256");
    let victim = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .find(|e| fs::read(e.path()).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut bytes = fs::read(victim.path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(victim.path(), bytes).unwrap();
    let err = store.import(&layout, Some("broken"), None).unwrap_err();
    assert!(matches!(err, ImageError::Digest { .. }), "{err}");
    assert!(store.get("broken").is_err(), "nothing half-imported");
}

#[test]
fn root_file_system_directories_import_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let _unmount = Unmount(&store);
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("bin/tool"), b"x").unwrap();
    std::os::unix::fs::symlink("tool", src.join("bin/alias")).unwrap();
    let config = ImageConfig {
        cmd: vec!["/bin/tool".into()],
        ..Default::default()
    };
    let err = store.import(&src, None, None).unwrap_err();
    assert!(err.to_string().contains("needs --name"), "{err}");
    let record = store
        .import(&src, Some("localhost/tool"), Some(config))
        .unwrap()
        .remove(0);
    assert_eq!(record.name, "localhost/tool:latest");
    let root = store.rootfs(&record).unwrap();
    assert_eq!(
        fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.remove("localhost/tool").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!root.exists());
    let err = store.get("localhost/tool").unwrap_err();
    assert!(err.to_string().contains("podsnap image import"), "{err}");
}

#[test]
fn hostile_and_unknown_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    let _unmount = Unmount(&store);
    let not_image = dir.path().join("plain.tar");
    fs::write(&not_image, layer(&[("hello.txt", Some(b"hi"))])).unwrap();
    let err = store.import(&not_image, Some("x"), None).unwrap_err();
    assert!(err.to_string().contains("neither index.json"), "{err}");
    let garbage = dir.path().join("garbage.tar");
    fs::write(
        &garbage,
        b"this is not a tar archive at all, not even close........",
    )
    .unwrap();
    assert!(store.import(&garbage, Some("x"), None).is_err());

    // A layer whose entry climbs out of the root file system.
    let mut header = tar::Header::new_old();
    let name = b"../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut evil = header.as_bytes().to_vec();
    evil.extend_from_slice(&[b'x'; 512]);
    evil.extend_from_slice(&[0; 1024]);
    let evil_path = dir.path().join("evil.tar");
    fs::write(&evil_path, evil).unwrap();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let err = podsnap_image::apply_layer(&evil_path, &rootfs).unwrap_err();
    assert!(
        err.to_string().contains("outside the root file system"),
        "{err}"
    );
    assert!(!dir.path().join("escaped").exists());
}
