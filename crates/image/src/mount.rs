//! Read-only overlayfs mounts of an image's layers, and the mount table.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::{ImageError, Result};

/// The `source` podsnap gives its overlay mounts (seen in `/proc/self/mountinfo`).
pub(crate) const SOURCE: &str = "podsnap-image";

/// A mount in `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// File system type.
    pub(crate) fs_type: String,
    /// Mount source.
    pub(crate) source: String,
}

/// Undoes the octal escapes of mountinfo (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of `/proc/self/mountinfo`.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

/// This process's mounts.
pub(crate) fn mounts() -> Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| ImageError::Io {
        context: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// The mounts at `path` (several when stacked).
pub(crate) fn mounts_at(path: &Path) -> Result<Vec<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect())
}

/// Detaches every mount at `path` (lazily: a container still using it keeps its view).
pub(crate) fn unmount_all_at(path: &Path) -> Result<()> {
    for _ in mounts_at(path)? {
        match rustix::mount::unmount(path, UnmountFlags::DETACH) {
            Ok(()) => tracing::debug!(path = %path.display(), "unmounted"),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => break,
            Err(e) => {
                return Err(ImageError::Mount {
                    path: path.display().to_string(),
                    problem: format!("cannot unmount it ({e})"),
                });
            }
        }
    }
    Ok(())
}

/// Mounts a read-only overlay of `lowers` (top first) at `target`.
pub(crate) fn mount_overlay(lowers: &[PathBuf], target: &Path) -> Result<()> {
    match mount_new_api(lowers, target) {
        Ok(()) => Ok(()),
        Err(NewApi::Unsupported(why)) => {
            tracing::debug!(%why, "the new mount API cannot stack layers here, using mount(2)");
            mount_classic(lowers, target)
        }
        Err(NewApi::Failed(problem)) => Err(mount_error(target, problem)),
    }
}

fn mount_error(target: &Path, problem: String) -> ImageError {
    ImageError::Mount {
        path: target.display().to_string(),
        problem: format!(
            "cannot mount the image's layers ({problem}); podsnap needs root and overlayfs (`modprobe overlay`)"
        ),
    }
}

enum NewApi {
    /// This kernel lacks `fsopen` or overlayfs's `lowerdir+` (before Linux 6.8).
    Unsupported(String),
    Failed(String),
}

/// The kernel's own words about a failed `fsconfig`, from the file system context's log.
fn context_log(fs: &rustix::fd::OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        out.push(line.trim().trim_start_matches("e ").to_owned());
    }
    out.join("; ")
}

fn mount_new_api(lowers: &[PathBuf], target: &Path) -> Result<(), NewApi> {
    use rustix::io::Errno;
    let fs =
        rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| match e {
            Errno::NOSYS => NewApi::Unsupported(format!("fsopen: {e}")),
            e => NewApi::Failed(format!("fsopen overlay: {e}")),
        })?;
    rustix::mount::fsconfig_set_string(&fs, "source", SOURCE)
        .map_err(|e| NewApi::Failed(format!("source: {e}")))?;
    // Each layer is its own parameter: no limit on the number of layers, and each path only
    // has to fit in the 256 bytes of one fsconfig string.
    let mut keep_open = Vec::new();
    for (i, lower) in lowers.iter().enumerate() {
        let text = lower.to_string_lossy();
        let value = if text.len() < 250 {
            text.into_owned()
        } else {
            let fd = rustix::fs::open(
                lower,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| NewApi::Failed(format!("opening {}: {e}", lower.display())))?;
            let value = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
            keep_open.push(fd);
            value
        };
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", &value) {
            let log = context_log(&fs);
            return Err(
                if i == 0 && e == Errno::INVAL && log.contains("Unknown parameter") {
                    NewApi::Unsupported(log)
                } else {
                    NewApi::Failed(format!("layer {}: {e} {log}", lower.display()))
                },
            );
        }
    }
    rustix::mount::fsconfig_set_flag(&fs, "ro").map_err(|e| NewApi::Failed(format!("ro: {e}")))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| {
        let log = context_log(&fs);
        NewApi::Failed(format!("{e} {log}").trim().to_owned())
    })?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(|e| NewApi::Failed(format!("fsmount: {e}")))?;
    drop(keep_open);
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| NewApi::Failed(format!("move_mount to {}: {e}", target.display())))
}

/// `mount(2)` with one `lowerdir=` option, for kernels without `lowerdir+`: the options have
/// to fit in one page.
fn mount_classic(lowers: &[PathBuf], target: &Path) -> Result<()> {
    let joined: Vec<String> = lowers
        .iter()
        .map(|l| {
            l.to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect();
    let data = format!("lowerdir={}", joined.join(":"));
    if data.len() >= 4096 {
        return Err(mount_error(
            target,
            format!(
                "{} layers make mount options longer than a page; Linux 6.8 or later mounts any number",
                lowers.len()
            ),
        ));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| mount_error(target, "a layer path holds a NUL byte".into()))?;
    rustix::mount::mount(
        SOURCE,
        target,
        "overlay",
        MountFlags::RDONLY,
        Some(data.as_c_str()),
    )
    .map_err(|e| mount_error(target, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - overlay podsnap-image ro,lowerdir=/a\n\
                    22 27 0:21 / /proc rw,relatime - proc proc rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my dir"));
        assert_eq!(mounts[0].fs_type, "overlay");
        assert_eq!(mounts[0].source, SOURCE);
        assert_eq!(mounts[1].mount_point, Path::new("/proc"));
    }
}
