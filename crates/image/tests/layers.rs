//! The layer store: layers shared between images, whiteouts and opaque directories through
//! the mounted root file system, removal keeping shared layers, repair after a crash.
//! Mounting needs root (the tests run as root).

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use podsnap_image::{ImageConfig, ImageRecord, ImageStore};
use sha2::{Digest, Sha256};

/// A layer tar from (path, content) entries; content `None` is a directory.
fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match content {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn base_layer() -> Vec<u8> {
    gzip(&layer(&[
        ("etc", None),
        ("etc/old.conf", Some(b"old")),
        ("etc/keep.conf", Some(b"keep")),
        ("data", None),
        ("data/a", Some(b"a")),
        ("data/sub", None),
        ("data/sub/b", Some(b"b")),
        ("bin", None),
        ("bin/app", Some(b"v1")),
    ]))
}

/// Deletes etc/old.conf, makes data/ opaque with a new file, replaces bin/app.
fn whiteout_layer() -> Vec<u8> {
    gzip(&layer(&[
        ("etc/.wh.old.conf", Some(b"")),
        ("data/.wh..wh..opq", Some(b"")),
        ("data/c", Some(b"c")),
        ("bin/app", Some(b"v2")),
    ]))
}

fn other_layer() -> Vec<u8> {
    layer(&[("srv", None), ("srv/other", Some(b"other"))])
}

/// Writes an OCI layout of one image with `layers` (bottom first) and returns its directory.
fn oci_layout(dir: &Path, name: &str, layers: &[Vec<u8>]) -> PathBuf {
    let layout = dir.join(name.replace([':', '/'], "_"));
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let digest = sha(data);
        fs::write(blobs.join(digest.trim_start_matches("sha256:")), data).unwrap();
        (digest, data.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for data in layers {
        let (digest, size) = put(data);
        let mut plain = Vec::new();
        podsnap_image_test_decompress(data, &mut plain);
        diff_ids.push(sha(&plain));
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/app"], "Env": [format!("IMAGE={name}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(&manifest);
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    layout
}

fn podsnap_image_test_decompress(data: &[u8], out: &mut Vec<u8>) {
    use std::io::Read;
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data).read_to_end(out).unwrap();
    } else {
        out.extend_from_slice(data);
    }
}

/// A store in a temporary directory whose mounts go when the test ends, even by a panic.
struct Store {
    store: ImageStore,
    dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.store.unmount_all().unwrap();
    }
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("store")).unwrap();
    Store { store, dir }
}

fn import(s: &Store, name: &str, layers: &[Vec<u8>]) -> ImageRecord {
    let layout = oci_layout(s.dir.path(), name, layers);
    s.store.import(&layout, None, None).unwrap().remove(0)
}

/// The mounts of this process at `path`.
fn mounts_at(path: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

fn layer_dirs(store: &ImageStore) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(store.root().join("layers/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn images_share_layers_and_mount_them_read_only() {
    let s = store();
    let first = import(&s, "localhost/first:1", &[base_layer(), whiteout_layer()]);
    let second = import(&s, "localhost/second:1", &[base_layer(), other_layer()]);
    assert_eq!(first.layers.len(), 2);
    assert_eq!(
        first.layers[0], second.layers[0],
        "the base layer is shared"
    );
    assert_eq!(first.layers[0].digest, sha(&base_layer()));
    assert_ne!(first.layers[0].digest, first.layers[0].diff_id);
    assert_eq!(
        layer_dirs(&s.store).len(),
        3,
        "three distinct layers, unpacked once each"
    );
    let dirs = s.store.layer_dirs(&first);
    assert_eq!(dirs[0], s.store.layer_dirs(&second)[0]);

    let root = s.store.rootfs(&second).unwrap();
    assert_eq!(
        s.store.rootfs(&second).unwrap(),
        root,
        "mounting is idempotent"
    );
    let mounts = mounts_at(&root);
    assert_eq!(mounts.len(), 1, "mounted once: {mounts:?}");
    assert!(
        mounts[0].contains(" - overlay podsnap-image "),
        "{}",
        mounts[0]
    );
    assert_eq!(fs::read_to_string(root.join("srv/other")).unwrap(), "other");
    assert_eq!(
        fs::read_to_string(root.join("etc/old.conf")).unwrap(),
        "old"
    );
    let err = fs::write(root.join("etc/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "read-only (EROFS): {err}");
}

#[test]
fn whiteouts_and_opaque_directories_show_through_the_mount() {
    let s = store();
    let record = import(&s, "localhost/app:1", &[base_layer(), whiteout_layer()]);
    assert!(!record.layers[0].whiteouts && record.layers[1].whiteouts);

    // In the layer directory: overlayfs's own forms.
    let top = &s.store.layer_dirs(&record)[1];
    let whiteout = fs::symlink_metadata(top.join("etc/old.conf")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(std::os::unix::fs::MetadataExt::rdev(&whiteout), 0);
    let mut opaque = [0u8; 4];
    let n = rustix::fs::lgetxattr(top.join("data"), "trusted.overlay.opaque", &mut opaque).unwrap();
    assert_eq!(&opaque[..n], b"y");
    assert!(!top.join("data/.wh..wh..opq").exists());

    // Through the mount: the merged tree.
    let root = s.store.rootfs(&record).unwrap();
    assert!(
        !root.join("etc/old.conf").exists(),
        "the whiteout hides the file"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/keep.conf")).unwrap(),
        "keep"
    );
    assert!(!root.join("data/a").exists() && !root.join("data/sub").exists());
    assert_eq!(fs::read_to_string(root.join("data/c")).unwrap(), "c");
    assert_eq!(fs::read_to_string(root.join("bin/app")).unwrap(), "v2");
    let mut names: Vec<_> = fs::read_dir(root.join("data"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["c"]);
}

#[test]
fn removing_an_image_keeps_shared_layers_and_unmounts() {
    let s = store();
    let first = import(&s, "localhost/first:1", &[base_layer(), whiteout_layer()]);
    let second = import(&s, "localhost/second:1", &[base_layer(), other_layer()]);
    let first_root = s.store.rootfs(&first).unwrap();
    let second_root = s.store.rootfs(&second).unwrap();
    let first_dirs = s.store.layer_dirs(&first);

    s.store.remove("localhost/first:1").unwrap();
    assert!(mounts_at(&first_root).is_empty(), "unmounted");
    assert!(!first_root.exists(), "mount point removed");
    assert!(first_dirs[0].is_dir(), "the shared base layer stays");
    assert!(!first_dirs[1].exists(), "the layer only it used goes");
    assert_eq!(layer_dirs(&s.store).len(), 2);
    assert_eq!(
        fs::read_to_string(second_root.join("srv/other")).unwrap(),
        "other"
    );

    s.store.remove("localhost/second:1").unwrap();
    assert!(mounts_at(&second_root).is_empty());
    assert!(layer_dirs(&s.store).is_empty(), "no image, no layer");
    assert!(s.store.list().unwrap().is_empty());
}

#[test]
fn reimporting_a_name_drops_the_layers_it_no_longer_uses() {
    let s = store();
    import(&s, "localhost/app:1", &[base_layer(), whiteout_layer()]);
    let newer = import(&s, "localhost/app:1", &[base_layer(), other_layer()]);
    assert_eq!(s.store.list().unwrap(), [newer]);
    assert_eq!(layer_dirs(&s.store).len(), 2);
}

#[test]
fn directories_are_one_layer_images_used_in_place() {
    let s = store();
    let src = s.dir.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(src.join("bin/tool"), b"x").unwrap();
    std::os::unix::fs::symlink("tool", src.join("bin/alias")).unwrap();
    let config = ImageConfig {
        cmd: vec!["/bin/tool".into()],
        ..Default::default()
    };
    let a = s
        .store
        .import_rootfs(&src, "localhost/a", config.clone())
        .unwrap();
    let b = s.store.import_rootfs(&src, "localhost/b", config).unwrap();
    assert_eq!(a.id, b.id, "same tree and config, same image");
    assert_eq!(a.layers.len(), 1);
    let root = s.store.rootfs(&a).unwrap();
    assert_eq!(root, s.store.layer_dirs(&a)[0], "no mount for one layer");
    assert!(mounts_at(&root).is_empty());
    assert_eq!(
        fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    s.store.remove("localhost/a").unwrap();
    assert!(root.is_dir(), "still used by localhost/b");
    s.store.remove("localhost/b").unwrap();
    assert!(!root.exists());
}

#[test]
fn open_repairs_what_a_crash_left_behind() {
    let s = store();
    let kept = import(&s, "localhost/kept:1", &[base_layer(), other_layer()]);
    let gone = import(&s, "localhost/gone:1", &[base_layer(), whiteout_layer()]);
    let kept_root = s.store.rootfs(&kept).unwrap();
    let gone_root = s.store.rootfs(&gone).unwrap();
    let gone_top = s.store.layer_dirs(&gone)[1].clone();
    let root = s.store.root().to_path_buf();

    // A crash in the middle of `image rm`: the record is gone, its mount and layer are not.
    let record = fs::read_dir(root.join("images"))
        .unwrap()
        .flatten()
        .find(|e| {
            fs::read_to_string(e.path())
                .unwrap()
                .contains("localhost/gone:1")
        })
        .unwrap();
    fs::remove_file(record.path()).unwrap();
    // A crash in the middle of an import: its staging directory (of a process that is gone)
    // and a layer renamed into place without its metadata.
    let staging = root.join("tmp/build-4000000000-1/layer-0");
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("file"), b"half").unwrap();
    let half = root.join("layers/sha256").join("ab".repeat(32));
    fs::create_dir_all(&half).unwrap();
    // A stray directory where no image's root file system belongs.
    fs::create_dir_all(root.join("rootfs/stray")).unwrap();

    let reopened = ImageStore::open(&root).unwrap();
    assert!(mounts_at(&gone_root).is_empty(), "the stale mount is gone");
    assert!(!gone_root.exists() && !root.join("rootfs/stray").exists());
    assert!(!gone_top.exists(), "the orphaned layer is gone");
    assert!(!half.exists(), "the half-committed layer is gone");
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        mounts_at(&kept_root).len(),
        1,
        "the live image stays mounted"
    );
    assert_eq!(reopened.list().unwrap(), std::slice::from_ref(&kept));
    assert_eq!(reopened.rootfs(&kept).unwrap(), kept_root);
    assert_eq!(
        fs::read_to_string(kept_root.join("srv/other")).unwrap(),
        "other"
    );
}
