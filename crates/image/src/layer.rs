//! Layer blobs (tar, optionally gzip- or zstd-compressed) unpacked into overlayfs lower
//! directories, and the flattening [`apply_layer`].
//!
//! An unpacked layer keeps the OCI whiteouts in the form overlayfs reads them: `.wh.NAME`
//! becomes a character device 0:0 called `NAME`, `.wh..wh..opq` in a directory becomes the
//! `trusted.overlay.opaque=y` extended attribute on that directory. Entries are never written
//! through a symbolic link, so a layer cannot reach outside its directory.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Result, invalid, io_err};

/// A layer in the store, as an image record lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    /// Digest of the layer blob as stored in the image (compressed, if it was): the key of
    /// `layers/sha256/<hex>/`.
    pub digest: String,
    /// Digest of the uncompressed tar (the image config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Bytes of file content in the layer.
    pub size: u64,
    /// Whether the layer holds whiteouts or opaque directories (then it only makes sense under
    /// overlayfs, never as a root file system on its own).
    #[serde(default)]
    pub whiteouts: bool,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>` of a file.
pub(crate) fn file_digest(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_err(format!("reading {}", path.display())))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The hex part of a `sha256:` digest, checked.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Opens a layer blob, undoing gzip or zstd compression when its magic bytes say so.
pub(crate) fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut reader = BufReader::new(file);
    let head = reader
        .fill_buf()
        .map_err(io_err(format!("reading {}", path.display())))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(io_err(format!("reading {} (zstd)", path.display())))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// The relative path of a tar entry, refused when it climbs out of the root.
fn entry_path(layer: &Path, path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(invalid(
                    layer,
                    format!(
                        "entry `{}` points outside the root file system",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Makes sure directory `rel` exists under `root` without following any symbolic link, creating
/// missing directories with the attributes the same directory has in the nearest of `lowers`
/// (top last) or 0755 root. Returns its path.
fn ensure_dir(root: &Path, rel: &Path, lowers: &[PathBuf], layer: &Path) -> Result<PathBuf> {
    let mut current = root.to_path_buf();
    let mut relative = PathBuf::new();
    for part in rel.components() {
        current.push(part);
        relative.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid(
                    layer,
                    format!(
                        "entries under `{}` go through a link or a file; the layer is malformed or hostile",
                        relative.display()
                    ),
                ));
            }
            Err(_) => {
                fs::create_dir(&current)
                    .map_err(io_err(format!("creating {}", current.display())))?;
                let like = lowers
                    .iter()
                    .rev()
                    .find_map(|lower| fs::symlink_metadata(lower.join(&relative)).ok())
                    .filter(|meta| meta.is_dir());
                let (mode, uid, gid) = like
                    .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
                    .unwrap_or((0o755, 0, 0));
                fs::set_permissions(&current, fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("setting the mode of {}", current.display())))?;
                if is_root() {
                    std::os::unix::fs::lchown(&current, Some(uid), Some(gid)).map_err(io_err(
                        format!("setting the owner of {}", current.display()),
                    ))?;
                }
            }
        }
    }
    Ok(current)
}

/// An error with its causes.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(io_err(format!("removing {}", path.display())))
}

/// How entries are written: overlayfs whiteouts in a layer directory, or applied onto a
/// flattened tree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Overlay,
    Flatten,
}

/// Unpacks layer blob `blob` into the (existing, empty) directory `dest` in overlayfs form.
/// `lowers` are the directories of the layers below (bottom first): missing parent
/// directories take their attributes from there. Returns the layer's diff id, content size and
/// whether it holds whiteouts.
pub(crate) fn unpack_layer(
    blob: &Path,
    dest: &Path,
    lowers: &[PathBuf],
) -> Result<(String, u64, bool)> {
    unpack(blob, dest, lowers, Mode::Overlay)
}

/// Applies one layer (a tar, optionally gzip- or zstd-compressed) onto a flattened root file
/// system `rootfs`, honouring whiteouts and opaque directories by deleting what they hide.
pub fn apply_layer(layer: &Path, rootfs: &Path) -> Result<()> {
    unpack(layer, rootfs, &[], Mode::Flatten).map(|_| ())
}

fn unpack(blob: &Path, dest: &Path, lowers: &[PathBuf], mode: Mode) -> Result<(String, u64, bool)> {
    let reader = Hashing {
        inner: open_decompressed(blob)?,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    let owners = is_root();
    archive.set_unpack_xattrs(false);
    let mut size = 0u64;
    let mut whiteouts = false;
    let entries = archive
        .entries()
        .map_err(|e| invalid(blob, format!("not a tar layer ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(blob, format!("damaged tar entry ({e})")))?;
        let raw = entry
            .path()
            .map_err(|e| invalid(blob, format!("bad path ({e})")))?
            .into_owned();
        let path = entry_path(blob, &raw)?;
        let Some(file_name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root directory itself
        };
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = ensure_dir(dest, &parent, lowers, blob)?;
        if file_name == ".wh..wh..opq" {
            whiteouts = true;
            match mode {
                Mode::Overlay => {
                    rustix::fs::lsetxattr(
                        &dir,
                        "trusted.overlay.opaque",
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(|e| {
                        invalid(
                            blob,
                            format!(
                                "cannot mark `{}` opaque ({e}); unpacking layers needs root",
                                parent.display()
                            ),
                        )
                    })?;
                }
                Mode::Flatten => {
                    for child in fs::read_dir(&dir)
                        .map_err(io_err(format!("reading {}", dir.display())))?
                        .flatten()
                    {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            if hidden.starts_with(".wh.") {
                continue; // other AUFS metadata (hard-link directories): not content
            }
            whiteouts = true;
            let target = dir.join(hidden);
            remove_any(&target)?;
            if mode == Mode::Overlay {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| {
                    invalid(
                        blob,
                        format!(
                            "cannot create the whiteout of `{}` ({e}); unpacking layers needs root",
                            parent.join(hidden).display()
                        ),
                    )
                })?;
            }
            continue;
        }
        let target = dir.join(&file_name);
        if let Ok(existing) = fs::symlink_metadata(&target) {
            let dir_over_dir = existing.is_dir() && entry.header().entry_type().is_dir();
            if !dir_over_dir {
                remove_any(&target)?;
            }
        }
        if entry.header().entry_type().is_file() {
            size += entry.header().size().unwrap_or(0);
        }
        entry.unpack_in(dest).map_err(|e| {
            invalid(
                blob,
                format!("cannot unpack `{}` ({})", raw.display(), chain(&e)),
            )
        })?;
        if owners && !entry.header().entry_type().is_hard_link() {
            set_owner(&target, entry.header())?;
        }
    }
    // The tar's end (padding, trailing blocks) belongs to the diff id too.
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| invalid(blob, format!("damaged layer ({e})")))?;
    let diff_id = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
    Ok((diff_id, size, whiteouts))
}

/// Gives an unpacked entry the owner its header names (an unreadable field counts as root),
/// keeping set-user-id and set-group-id bits, which a change of owner clears.
fn set_owner(path: &Path, header: &tar::Header) -> Result<()> {
    let uid = header
        .uid()
        .ok()
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(0);
    let gid = header
        .gid()
        .ok()
        .and_then(|g| u32::try_from(g).ok())
        .unwrap_or(0);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_err(format!("setting the owner of {}", path.display())))?;
    let mode = header.mode().unwrap_or(0);
    if mode & 0o6000 != 0 && !header.entry_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_err(format!("setting the mode of {}", path.display())))?;
    }
    Ok(())
}

/// Writes directory `dir` as a tar (symbolic links kept, entries sorted so that the same tree
/// gives the same bytes) to `out`; returns the tar's `sha256:` digest.
pub(crate) fn tar_directory(dir: &Path, out: &Path) -> Result<String> {
    let file = File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let writer = HashingWriter {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    let meta = fs::metadata(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(invalid(dir, "not a directory"));
    }
    add_tree(&mut builder, dir, Path::new(""))?;
    let mut writer = builder
        .into_inner()
        .map_err(io_err(format!("writing {}", out.display())))?;
    writer
        .flush()
        .map_err(io_err(format!("writing {}", out.display())))?;
    Ok(format!("sha256:{}", hex::encode(writer.hasher.finalize())))
}

fn add_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .collect::<io::Result<_>>()
        .map_err(io_err(format!("reading {}", dir.display())))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let name = rel.join(child.file_name());
        let meta =
            fs::symlink_metadata(&path).map_err(io_err(format!("reading {}", path.display())))?;
        if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            tracing::debug!(path = %path.display(), "skipping a socket");
            continue;
        }
        builder
            .append_path_with_name(&path, &name)
            .map_err(io_err(format!("archiving {}", path.display())))?;
        if meta.is_dir() {
            add_tree(builder, &path, &name)?;
        }
    }
    Ok(())
}
