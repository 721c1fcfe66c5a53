//! podsnap's local image store: container images imported from OCI image layouts, OCI archives
//! (`oci-archive`), Docker archives (`docker save`), a plain root file system directory, or
//! pulled from a registry ([`ImageStore::pull`]), kept as content-addressed layers with a
//! record per image name.
//!
//! On disk, under the store's root:
//!
//! - `layers/sha256/<hex>/`: one unpacked layer, keyed by the digest of its blob as the image
//!   ships it (compressed or not), in overlayfs form (an OCI whiteout `.wh.NAME` is a character
//!   device 0:0, an opaque directory carries `trusted.overlay.opaque=y`); `<hex>.json` beside
//!   it records the diff id (digest of the uncompressed tar) and size. Images that share a
//!   layer share the directory; a layer goes when no image lists it any more.
//! - `images/<key>.json`: one record per image name: id, run configuration, layers bottom
//!   first.
//! - `rootfs/<image id>/`: the image's root file system, a read-only overlayfs mount of its
//!   layers made on demand by [`ImageStore::rootfs`] (an image of one layer without whiteouts
//!   uses the layer directory itself). Containers get their own writable layer on top (the
//!   gvisor engine keeps it in sandbox memory).
//! - `tmp/`: work in progress (archives being read, layers being unpacked): layers are
//!   unpacked there and renamed into place with the image record, so an interrupted import
//!   leaves nothing under a final name.
//! - `lock`: serialises changes between processes (the agent and `podsnap image`).
//!
//! [`ImageStore::open`] repairs what a crash can leave behind: temporary directories of
//! processes that are gone, layers no record lists, mounts of images that no longer exist.
//!
//! Layer contents are checked against their digests, and entries that escape the root (`..`,
//! absolute paths, paths through symbolic links) are refused.
//!
//! This crate reads image files and registries and writes the store. It must not run
//! containers.

#![forbid(unsafe_code)]

mod layer;
mod mount;
mod pull;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use layer::{LayerInfo, apply_layer};
pub use pull::{PullAuth, PullOptions};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not in the store.
    #[error(
        "image {0} is not in the store; import it with `podsnap image import FILE --name {0}` or pull it with `podsnap image pull {0}` (`podsnap image ls` lists the images)"
    )]
    NotFound(String),
    /// The source is not an image podsnap can read.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file or directory.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A blob does not match its digest.
    #[error(
        "{path}: content does not match its digest {digest}; the image is damaged, export or push it again"
    )]
    Digest {
        /// The blob.
        path: String,
        /// The expected digest.
        digest: String,
    },
    /// Mounting or unmounting an image's root file system failed.
    #[error("{path}: {problem}")]
    Mount {
        /// The mount point.
        path: String,
        /// What went wrong and what to do.
        problem: String,
    },
    /// A registry refused or could not serve an image.
    #[error("pulling {reference}: {problem}")]
    Registry {
        /// The image reference.
        reference: String,
        /// What went wrong and what to do.
        problem: String,
    },
    /// File input or output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

fn invalid(path: &Path, problem: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

/// Result type of the image store.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// How an image runs when a Pod does not say otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: String,
    /// User (`uid[:gid]` or a name).
    #[serde(default)]
    pub user: String,
    /// Exposed ports, e.g. `8080/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Name with tag, e.g. `localhost/podsnap-demo:latest`.
    pub name: String,
    /// Content id (`sha256:…` of the image config).
    pub id: String,
    /// Run configuration.
    pub config: ImageConfig,
    /// Size of the layers' file content in bytes.
    pub size: u64,
    /// What it was imported or pulled from.
    pub source: String,
    /// The layers, bottom first. Empty for an image imported by an older podsnap, kept as one
    /// flattened directory under `rootfs/`.
    #[serde(default)]
    pub layers: Vec<LayerInfo>,
}

/// Adds `:latest` to a name without a tag (and no digest).
pub fn normalize_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// The local image store.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// Layers of an image being built: unpacked into a staging directory until
/// [`Build::commit`] renames them into the store with the image's records.
struct Build<'a> {
    store: &'a ImageStore,
    staging: PathBuf,
    /// The image's layers so far and where their files are (staged or in the store).
    layers: Vec<(LayerInfo, PathBuf)>,
}

impl Drop for Build<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.staging);
    }
}

impl Build<'_> {
    /// Adds layer blob `blob` on top. `digest` is the digest the image gives for the blob (the
    /// blob is checked against it; computed when `None`), `diff_id` the config's digest of its
    /// uncompressed tar (checked when given). A layer already in the store is not unpacked
    /// again; its blob may then be absent (a pull does not download it).
    fn add(&mut self, blob: &Path, digest: Option<&str>, diff_id: Option<&str>) -> Result<()> {
        if let Some(digest) = digest {
            if layer::digest_hex(digest).is_none() {
                return Err(invalid(
                    blob,
                    format!("unsupported digest `{digest}` (only sha256)"),
                ));
            }
            if !blob.exists()
                && let Some(info) = self.store.layer_info(digest)
            {
                let dir = self.store.layer_dir(digest);
                self.layers.push((info, dir));
                return Ok(());
            }
        }
        let actual = layer::file_digest(blob)?;
        if let Some(expected) = digest
            && expected != actual
        {
            return Err(ImageError::Digest {
                path: blob.display().to_string(),
                digest: expected.to_owned(),
            });
        }
        if let Some(info) = self.store.layer_info(&actual) {
            let dir = self.store.layer_dir(&actual);
            self.layers.push((info, dir));
            return Ok(());
        }
        if let Some((info, dir)) = self.layers.iter().find(|(l, _)| l.digest == actual) {
            let entry = (info.clone(), dir.clone());
            self.layers.push(entry);
            return Ok(());
        }
        let dir = self.staging.join(format!("layer-{}", self.layers.len()));
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lowers: Vec<PathBuf> = self.layers.iter().map(|(_, d)| d.clone()).collect();
        let (computed, size, whiteouts) = layer::unpack_layer(blob, &dir, &lowers)?;
        if let Some(expected) = diff_id
            && expected != computed
        {
            return Err(ImageError::Digest {
                path: format!("{} (uncompressed)", blob.display()),
                digest: expected.to_owned(),
            });
        }
        tracing::debug!(digest = %actual, diff_id = %computed, size, "layer unpacked");
        self.layers.push((
            LayerInfo {
                digest: actual,
                diff_id: computed,
                size,
                whiteouts,
            },
            dir,
        ));
        Ok(())
    }

    /// Moves the new layers into the store and writes a record per name.
    fn commit(
        &self,
        names: &[String],
        id: &str,
        config: ImageConfig,
        source: &str,
    ) -> Result<Vec<ImageRecord>> {
        let _lock = self.store.lock()?;
        for (info, dir) in &self.layers {
            let target = self.store.layer_dir(&info.digest);
            if !dir.starts_with(&self.staging) || self.store.layer_info(&info.digest).is_some() {
                continue;
            }
            // A directory without its `.json` is the rest of an interrupted commit.
            let _ = layer::remove_any(&target);
            fs::rename(dir, &target).map_err(io_err(format!(
                "moving layer {} into {}",
                info.digest,
                target.display()
            )))?;
            write_json_atomically(&self.store.layer_meta(&info.digest), info)?;
        }
        let layers: Vec<LayerInfo> = self.layers.iter().map(|(l, _)| l.clone()).collect();
        let mut out = Vec::new();
        for name in names {
            let record = ImageRecord {
                name: name.clone(),
                id: id.to_owned(),
                config: config.clone(),
                size: layers.iter().map(|l| l.size).sum(),
                source: source.to_owned(),
                layers: layers.clone(),
            };
            write_json_atomically(&self.store.record_path(name), &record)?;
            tracing::info!(image = %name, id = %id, layers = layers.len(), "image stored");
            out.push(record);
        }
        // A name that pointed at another image may have left layers nobody uses.
        self.store.collect_garbage_locked()?;
        Ok(out)
    }
}

fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).expect("records serialise"),
    )
    .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

/// The OCI image configuration podsnap writes for an image made from a directory.
fn synthetic_config(config: &ImageConfig, diff_ids: &[String]) -> Vec<u8> {
    let ports: BTreeMap<&str, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (p.as_str(), serde_json::json!({})))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": config.env,
            "WorkingDir": config.working_dir,
            "User": config.user,
            "ExposedPorts": ports,
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config serialises")
}

/// This machine's architecture in OCI words.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ImageStore {
    /// Opens (creating) a store at `root` and repairs what an interrupted run left behind:
    /// temporary directories of processes that are gone, half-committed or unused layers,
    /// mounts of removed images. The agent calls this when it starts.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["images", "rootfs", "tmp", "layers/sha256", "layers/empty"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        }
        let root =
            fs::canonicalize(&root).map_err(io_err(format!("opening {}", root.display())))?;
        let store = Self { root };
        store.clean_tmp();
        store.collect_garbage()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds the store's lock (between processes and threads) until dropped.
    fn lock(&self) -> Result<File> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(io_err(format!("locking {}", path.display())))?;
        Ok(file)
    }

    /// Removes the temporary directories of processes that no longer run.
    fn clean_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !alive {
                tracing::info!(path = %entry.path().display(), "removing an interrupted import");
                let _ = layer::remove_any(&entry.path());
            }
        }
    }

    /// Under the lock: removes layers that are half-committed or listed by no image, and
    /// unmounts and removes root file systems of images that are gone.
    fn collect_garbage(&self) -> Result<()> {
        let _lock = self.lock()?;
        self.collect_garbage_locked()
    }

    fn collect_garbage_locked(&self) -> Result<()> {
        let records = self.list()?;
        let used: BTreeSet<&str> = records
            .iter()
            .flat_map(|r| r.layers.iter())
            .filter_map(|l| layer::digest_hex(&l.digest))
            .collect();
        let layers = self.root.join("layers/sha256");
        for entry in fs::read_dir(&layers)
            .map_err(io_err(format!("reading {}", layers.display())))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.trim_end_matches(".json").trim_end_matches(".json.tmp");
            let complete = layers.join(format!("{hex}.json")).exists() && layers.join(hex).is_dir();
            if !used.contains(hex) || !complete {
                tracing::info!(layer = %hex, "removing a layer no image uses");
                layer::remove_any(&entry.path())?;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs)
            .map_err(io_err(format!("reading {}", rootfs.display())))?
            .flatten()
        {
            let hex = entry.file_name().to_string_lossy().into_owned();
            let needed = records.iter().any(|r| {
                r.id.trim_start_matches("sha256:") == hex
                    && (r.layers.is_empty() || self.needs_mount(r))
            });
            let path = entry.path();
            let mounted = mount::mounts_at(&path)?;
            if needed {
                if mounted.len() > 1 {
                    tracing::warn!(path = %path.display(), "mounted more than once, unmounting");
                    mount::unmount_all_at(&path)?;
                }
                continue;
            }
            if !mounted.is_empty() {
                tracing::info!(path = %path.display(), "unmounting the root file system of a removed image");
                mount::unmount_all_at(&path)?;
            }
            layer::remove_any(&path)?;
        }
        Ok(())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        let key = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
        self.root.join("images").join(format!("{key}.json"))
    }

    fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn layer_meta(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers/sha256")
            .join(format!("{}.json", digest.trim_start_matches("sha256:")))
    }

    /// The layer with blob digest `digest`, when the store has it.
    pub fn layer_info(&self, digest: &str) -> Option<LayerInfo> {
        layer::digest_hex(digest)?;
        let bytes = fs::read(self.layer_meta(digest)).ok()?;
        self.layer_dir(digest).is_dir().then_some(())?;
        serde_json::from_slice(&bytes).ok()
    }

    fn needs_mount(&self, record: &ImageRecord) -> bool {
        record.layers.len() > 1 || record.layers.iter().any(|l| l.whiteouts)
    }

    /// The directories of an image's layers, bottom first.
    pub fn layer_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.digest))
            .collect()
    }

    /// Where the root file system of an image is, once [`ImageStore::rootfs`] has made it.
    pub fn rootfs_path(&self, record: &ImageRecord) -> PathBuf {
        match record.layers.as_slice() {
            [only] if !only.whiteouts => self.layer_dir(&only.digest),
            _ => self
                .root
                .join("rootfs")
                .join(record.id.trim_start_matches("sha256:")),
        }
    }

    /// The root file system of an image: a read-only overlayfs mount of its layers at
    /// `rootfs/<id>/`, made now unless it is there (an image of one layer without whiteouts is
    /// the layer's directory). Mounting needs root.
    pub fn rootfs(&self, record: &ImageRecord) -> Result<PathBuf> {
        let target = self.rootfs_path(record);
        if !self.needs_mount(record) {
            if !target.is_dir() {
                return Err(invalid(
                    &target,
                    format!(
                        "the files of image {} are missing; remove it and import it again",
                        record.name
                    ),
                ));
            }
            return Ok(target);
        }
        let _lock = self.lock()?;
        let mounted = mount::mounts_at(&target)?;
        if let [only] = mounted.as_slice()
            && only.fs_type == "overlay"
            && only.source == mount::SOURCE
        {
            return Ok(target);
        }
        if !mounted.is_empty() {
            tracing::warn!(path = %target.display(), "replacing an unexpected mount");
            mount::unmount_all_at(&target)?;
        }
        let mut lowers: Vec<PathBuf> = self.layer_dirs(record).into_iter().rev().collect();
        if let Some(missing) = lowers.iter().find(|l| !l.is_dir()) {
            return Err(invalid(
                missing,
                format!(
                    "a layer of image {} is missing; remove the image and import or pull it again",
                    record.name
                ),
            ));
        }
        if lowers.len() == 1 {
            // overlayfs wants two lower layers when there is no upper one.
            lowers.push(self.root.join("layers/empty"));
        }
        fs::create_dir_all(&target).map_err(io_err(format!("creating {}", target.display())))?;
        mount::mount_overlay(&lowers, &target)?;
        tracing::info!(image = %record.name, path = %target.display(), layers = record.layers.len(), "root file system mounted");
        Ok(target)
    }

    /// Unmounts every image root file system of this store (containers still using one keep
    /// their view until they end). They are mounted again on demand.
    pub fn unmount_all(&self) -> Result<()> {
        let _lock = self.lock()?;
        let rootfs = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs)
            .map_err(io_err(format!("reading {}", rootfs.display())))?
            .flatten()
        {
            mount::unmount_all_at(&entry.path())?;
        }
        Ok(())
    }

    /// The image called `name` (`:latest` assumed without a tag).
    pub fn get(&self, name: &str) -> Result<ImageRecord> {
        let name = normalize_name(name);
        let path = self.record_path(&name);
        let bytes = fs::read(&path).map_err(|_| ImageError::NotFound(name.clone()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&path, format!("unreadable image record ({e})")))
    }

    /// Every image, by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io_err("reading the image list"))?;
            if entry.path().extension().is_some_and(|e| e == "json")
                && let Ok(bytes) = fs::read(entry.path())
                && let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes)
            {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes an image; its root file system is unmounted and its layers removed when no
    /// other image uses them.
    pub fn remove(&self, name: &str) -> Result<()> {
        let record = self.get(name)?;
        {
            let _lock = self.lock()?;
            fs::remove_file(self.record_path(&record.name))
                .map_err(io_err("removing the image record"))?;
        }
        tracing::info!(image = %record.name, "image removed");
        self.collect_garbage()
    }

    /// Imports an image from an OCI layout directory, an OCI or Docker archive (tar, optionally
    /// gzipped), or a plain root file system directory (then `name` is required and
    /// `config` applies). Returns the records created (an archive may hold several tags).
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        config: Option<ImageConfig>,
    ) -> Result<Vec<ImageRecord>> {
        let meta =
            fs::metadata(source).map_err(io_err(format!("cannot read {}", source.display())))?;
        if meta.is_dir() {
            if source.join("oci-layout").exists() {
                return self.import_layout(source, source, name);
            }
            if source.join("manifest.json").exists() {
                return self.import_docker(source, source, name);
            }
            let name =
                name.ok_or_else(|| invalid(source, "a root file system directory needs --name"))?;
            return self
                .import_rootfs(source, name, config.unwrap_or_default())
                .map(|r| vec![r]);
        }
        let staging = self.staging("import")?;
        let result = (|| {
            unpack_plain_tar(source, &staging)?;
            if staging.join("oci-layout").exists() || staging.join("index.json").exists() {
                self.import_layout(&staging, source, name)
            } else if staging.join("manifest.json").exists() {
                self.import_docker(&staging, source, name)
            } else {
                Err(invalid(
                    source,
                    "not an image archive: it has neither index.json (OCI) nor manifest.json (Docker)",
                ))
            }
        })();
        let _ = fs::remove_dir_all(&staging);
        result
    }

    /// A new directory under `tmp/`, named so that [`ImageStore::open`] knows whether its
    /// process still runs.
    fn staging(&self, kind: &str) -> Result<PathBuf> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("{kind}-{}-{}", std::process::id(), nanos()));
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    fn build(&self) -> Result<Build<'_>> {
        Ok(Build {
            store: self,
            staging: self.staging("build")?,
            layers: Vec::new(),
        })
    }

    /// Imports a directory as a one-layer image (its id is the digest of a configuration
    /// naming the layer, so the same directory and configuration give the same image).
    pub fn import_rootfs(
        &self,
        dir: &Path,
        name: &str,
        config: ImageConfig,
    ) -> Result<ImageRecord> {
        let name = normalize_name(name);
        let mut build = self.build()?;
        let tar = build.staging.join("layer.tar");
        let digest = layer::tar_directory(dir, &tar)?;
        build.add(&tar, Some(&digest), Some(&digest))?;
        let diff_ids: Vec<String> = build
            .layers
            .iter()
            .map(|(l, _)| l.diff_id.clone())
            .collect();
        let id = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(synthetic_config(&config, &diff_ids)))
        );
        let _ = fs::remove_file(&tar);
        build
            .commit(
                std::slice::from_ref(&name),
                &id,
                config,
                &format!("directory {}", dir.display()),
            )
            .map(|mut r| r.remove(0))
    }

    fn import_layout(
        &self,
        dir: &Path,
        source: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>> {
        let index: OciIndex = read_json(&dir.join("index.json"))?;
        let mut out = Vec::new();
        for descriptor in &index.manifests {
            let manifest_desc = self.resolve_platform(dir, descriptor)?;
            let manifest: OciManifest = read_json(&verified_blob(dir, &manifest_desc.digest)?)?;
            let config_path = verified_blob(dir, &manifest.config.digest)?;
            let config: ImageConfigFile = read_json(&config_path)?;
            let tag = descriptor
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    descriptor
                        .annotations
                        .get("org.opencontainers.image.ref.name")
                })
                .cloned();
            let image_name = match (name, tag) {
                (Some(n), _) => normalize_name(n),
                (None, Some(t)) if t.contains('/') || t.contains(':') => normalize_name(&t),
                (None, Some(t)) => format!("localhost/imported:{t}"),
                (None, None) => {
                    return Err(invalid(
                        source,
                        "the image has no name annotation; give one with --name",
                    ));
                }
            };
            let mut build = self.build()?;
            let diff_ids = config.diff_ids(manifest.layers.len());
            for (i, layer) in manifest.layers.iter().enumerate() {
                let hex = layer::digest_hex(&layer.digest).ok_or_else(|| {
                    invalid(
                        dir,
                        format!("unsupported digest `{}` (only sha256)", layer.digest),
                    )
                })?;
                let blob = dir.join("blobs/sha256").join(hex);
                build.add(
                    &blob,
                    Some(&layer.digest),
                    diff_ids.get(i).map(String::as_str),
                )?;
            }
            out.extend(build.commit(
                &[image_name],
                &manifest.config.digest,
                config.config.into(),
                &source.display().to_string(),
            )?);
        }
        if out.is_empty() {
            return Err(invalid(source, "the OCI index lists no image"));
        }
        Ok(out)
    }

    /// Follows an image index to the manifest of this machine's architecture.
    fn resolve_platform(&self, dir: &Path, descriptor: &Descriptor) -> Result<Descriptor> {
        if !descriptor.media_type.contains("index")
            && !descriptor.media_type.contains("manifest.list")
        {
            return Ok(descriptor.clone());
        }
        let nested: OciIndex = read_json(&verified_blob(dir, &descriptor.digest)?)?;
        let arch = oci_arch();
        nested
            .manifests
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_none_or(|p| p.architecture == arch && p.os == "linux")
            })
            .ok_or_else(|| invalid(dir, format!("the image has no linux/{arch} variant")))
    }

    fn import_docker(
        &self,
        dir: &Path,
        source: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>> {
        let manifests: Vec<DockerManifest> = read_json(&dir.join("manifest.json"))?;
        let mut out = Vec::new();
        for manifest in manifests {
            let config_path = safe_join(dir, &manifest.config)?;
            let bytes = fs::read(&config_path)
                .map_err(io_err(format!("reading {}", config_path.display())))?;
            let id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            let config: ImageConfigFile = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(&config_path, format!("not an image config ({e})")))?;
            let names: Vec<String> = match name {
                Some(n) => vec![normalize_name(n)],
                None if !manifest.repo_tags.is_empty() => manifest
                    .repo_tags
                    .iter()
                    .map(|t| normalize_name(t))
                    .collect(),
                None => {
                    return Err(invalid(
                        source,
                        "the archive has no tag; give a name with --name",
                    ));
                }
            };
            let mut build = self.build()?;
            let diff_ids = config.diff_ids(manifest.layers.len());
            for (i, layer) in manifest.layers.iter().enumerate() {
                build.add(
                    &safe_join(dir, layer)?,
                    None,
                    diff_ids.get(i).map(String::as_str),
                )?;
            }
            out.extend(build.commit(
                &names,
                &id,
                config.config.into(),
                &source.display().to_string(),
            )?);
        }
        Ok(out)
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: RawConfig,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageConfigFile {
    /// The diff ids of the layers, when the config lists as many as the manifest (otherwise
    /// the layers are checked against their blob digests only).
    fn diff_ids(&self, layers: usize) -> Vec<String> {
        match &self.rootfs {
            Some(r) if r.diff_ids.len() == layers => r.diff_ids.clone(),
            Some(r) => {
                tracing::warn!(
                    listed = r.diff_ids.len(),
                    layers,
                    "the image config lists a different number of layers than the manifest"
                );
                Vec::new()
            }
            None => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

impl From<RawConfig> for ImageConfig {
    fn from(raw: RawConfig) -> Self {
        Self {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            working_dir: raw.working_dir.unwrap_or_default(),
            user: raw.user.unwrap_or_default(),
            exposed_ports: raw
                .exposed_ports
                .map(|p| p.into_keys().collect())
                .unwrap_or_default(),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, format!("unexpected content ({e})")))
}

/// The path of a blob, after checking its content against its digest.
fn verified_blob(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = layer::digest_hex(digest)
        .ok_or_else(|| invalid(dir, format!("unsupported digest `{digest}` (only sha256)")))?;
    let path = dir.join("blobs/sha256").join(hex);
    if !path.exists() {
        return Err(invalid(
            &path,
            format!("blob {digest} is missing; the image is incomplete"),
        ));
    }
    if layer::file_digest(&path)? != digest {
        return Err(ImageError::Digest {
            path: path.display().to_string(),
            digest: digest.to_owned(),
        });
    }
    Ok(path)
}

fn safe_join(dir: &Path, relative: &str) -> Result<PathBuf> {
    let rel = Path::new(relative);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(
            dir,
            format!("`{relative}` points outside the archive"),
        ));
    }
    Ok(dir.join(rel))
}

fn unpack_plain_tar(source: &Path, target: &Path) -> Result<()> {
    let reader = layer::open_decompressed(source)?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(target)
        .map_err(|e| invalid(source, format!("not a readable tar archive ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(normalize_name("busybox"), "busybox:latest");
        assert_eq!(
            normalize_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize_name("localhost/app:v1"), "localhost/app:v1");
        assert_eq!(normalize_name("app@sha256:abc"), "app@sha256:abc");
    }
}
