//! podsnap's local image store: container images imported from OCI image layouts, OCI archives
//! (`oci-archive`), Docker archives (`docker save`) or a plain root file system directory, kept
//! as flattened root file systems with their run configuration.
//!
//! Each image's layers are applied in order (whiteouts and opaque directories honoured, paths
//! that escape the root refused, OCI blobs checked against their digests) into
//! `rootfs/<image id>/`; `images/` records name, id and config. Containers get their own
//! writable layer on top (the gvisor engine keeps it in sandbox memory).
//!
//! This crate reads image files and writes the store. It must not run containers or talk to
//! registries.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not in the store.
    #[error(
        "image {0} is not in the store; import it with `podsnap image import FILE --name {0}` (`podsnap image ls` lists the images)"
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
        "{path}: content does not match its digest {digest}; the image is damaged, export it again"
    )]
    Digest {
        /// The blob.
        path: String,
        /// The expected digest.
        digest: String,
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
    /// Size of the root file system in bytes.
    pub size: u64,
    /// What it was imported from.
    pub source: String,
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

impl ImageStore {
    /// Opens (creating) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["images", "rootfs", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        }
        // Leftovers of an import that was interrupted.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self { root })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        let key = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
        self.root.join("images").join(format!("{key}.json"))
    }

    /// The root file system of an image.
    pub fn rootfs(&self, record: &ImageRecord) -> PathBuf {
        self.root
            .join("rootfs")
            .join(record.id.trim_start_matches("sha256:"))
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
            if let Ok(bytes) = fs::read(entry.path())
                && let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes)
            {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes an image; its root file system goes when no other name uses it.
    pub fn remove(&self, name: &str) -> Result<()> {
        let record = self.get(name)?;
        fs::remove_file(self.record_path(&record.name))
            .map_err(io_err("removing the image record"))?;
        if !self.list()?.iter().any(|r| r.id == record.id) {
            let _ = fs::remove_dir_all(self.rootfs(&record));
        }
        Ok(())
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
        let staging = self.staging()?;
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

    fn staging(&self) -> Result<PathBuf> {
        let dir = self
            .root
            .join("tmp")
            .join(format!("import-{}-{}", std::process::id(), nanos()));
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// Imports a directory as a one-layer image.
    pub fn import_rootfs(
        &self,
        dir: &Path,
        name: &str,
        config: ImageConfig,
    ) -> Result<ImageRecord> {
        let name = normalize_name(name);
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update(serde_json::to_vec(&config).expect("config serialises"));
        hasher.update(nanos().to_le_bytes());
        let id = format!("sha256:{}", hex::encode(hasher.finalize()));
        let staging = self.staging()?;
        let target = staging.join("rootfs");
        copy_tree(dir, &target)?;
        self.commit(
            &name,
            &id,
            config,
            &target,
            &format!("directory {}", dir.display()),
        )
    }

    fn commit(
        &self,
        name: &str,
        id: &str,
        config: ImageConfig,
        built: &Path,
        source: &str,
    ) -> Result<ImageRecord> {
        let record = ImageRecord {
            name: name.to_owned(),
            id: id.to_owned(),
            config,
            size: tree_size(built),
            source: source.to_owned(),
        };
        let final_dir = self.rootfs(&record);
        if final_dir.exists() {
            let _ = fs::remove_dir_all(built);
        } else {
            fs::rename(built, &final_dir).map_err(io_err(format!(
                "moving the root file system to {}",
                final_dir.display()
            )))?;
        }
        let path = self.record_path(name);
        let tmp = path.with_extension("tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&record).expect("record serialises"),
        )
        .map_err(io_err("writing the image record"))?;
        fs::rename(&tmp, &path).map_err(io_err("writing the image record"))?;
        Ok(record)
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
            let staging = self.staging()?;
            let rootfs = staging.join("rootfs");
            fs::create_dir_all(&rootfs).map_err(io_err("creating the root file system"))?;
            for layer in &manifest.layers {
                apply_layer(&verified_blob(dir, &layer.digest)?, &rootfs)?;
            }
            out.push(self.commit(
                &image_name,
                &manifest.config.digest,
                config.config.into(),
                &rootfs,
                &source.display().to_string(),
            )?);
            let _ = fs::remove_dir_all(&staging);
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
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
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
            let staging = self.staging()?;
            let rootfs = staging.join("rootfs");
            fs::create_dir_all(&rootfs).map_err(io_err("creating the root file system"))?;
            for layer in &manifest.layers {
                apply_layer(&safe_join(dir, layer)?, &rootfs)?;
            }
            for (i, n) in names.iter().enumerate() {
                if i + 1 < names.len() {
                    let copy = staging.join(format!("copy{i}"));
                    copy_tree(&rootfs, &copy)?;
                    out.push(self.commit(
                        n,
                        &id,
                        config.config.clone().into(),
                        &copy,
                        &source.display().to_string(),
                    )?);
                } else {
                    out.push(self.commit(
                        n,
                        &id,
                        config.config.clone().into(),
                        &rootfs,
                        &source.display().to_string(),
                    )?);
                }
            }
            let _ = fs::remove_dir_all(&staging);
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
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(dir, format!("unsupported digest `{digest}` (only sha256)")))?;
    let path = dir.join("blobs/sha256").join(hex);
    let mut file = File::open(&path).map_err(io_err(format!(
        "blob {digest} is missing ({})",
        path.display()
    )))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_err(format!("reading {}", path.display())))?;
    if hex::encode(hasher.finalize()) != hex {
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
    let reader = open_maybe_gzip(source)?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(target)
        .map_err(|e| invalid(source, format!("not a readable tar archive ({e})")))
}

fn open_maybe_gzip(path: &Path) -> Result<Box<dyn Read>> {
    let mut file =
        BufReader::new(File::open(path).map_err(io_err(format!("opening {}", path.display())))?);
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(head)))
    } else {
        Ok(Box::new(head))
    }
}

/// Applies one layer (a tar, optionally gzipped) onto `rootfs`, honouring whiteouts.
pub fn apply_layer(layer: &Path, rootfs: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(open_maybe_gzip(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|e| invalid(layer, format!("not a tar layer ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(layer, format!("damaged tar entry ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(layer, format!("bad path ({e})")))?
            .into_owned();
        if path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err(invalid(
                layer,
                format!(
                    "entry `{}` points outside the root file system",
                    path.display()
                ),
            ));
        }
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if file_name == ".wh..wh..opq" {
            let dir = rootfs.join(&parent);
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove_any(&child.path());
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            remove_any(&rootfs.join(&parent).join(hidden));
            continue;
        }
        let target = rootfs.join(&path);
        if let Ok(existing) = fs::symlink_metadata(&target) {
            let replacing_dir_with_dir = existing.is_dir() && entry.header().entry_type().is_dir();
            if !replacing_dir_with_dir {
                remove_any(&target);
            }
        }
        entry
            .unpack_in(rootfs)
            .map_err(|e| invalid(layer, format!("cannot unpack `{}` ({e})", path.display())))?;
    }
    Ok(())
}

fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Copies a directory tree, keeping symlinks and permissions.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).map_err(io_err(format!("reading {}", from.display())))?;
    if meta.file_type().is_symlink() {
        let link = fs::read_link(from).map_err(io_err(format!("reading {}", from.display())))?;
        return std::os::unix::fs::symlink(link, to)
            .map_err(io_err(format!("creating {}", to.display())));
    }
    if meta.is_dir() {
        fs::create_dir_all(to).map_err(io_err(format!("creating {}", to.display())))?;
        for entry in fs::read_dir(from).map_err(io_err(format!("reading {}", from.display())))? {
            let entry = entry.map_err(io_err("reading a directory"))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, meta.permissions())
            .map_err(io_err(format!("setting permissions of {}", to.display())))?;
        return Ok(());
    }
    fs::copy(from, to).map_err(io_err(format!("copying {}", from.display())))?;
    Ok(())
}

fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
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
