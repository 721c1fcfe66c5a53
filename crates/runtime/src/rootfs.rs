//! Root-file-system changes of a container (the `rootfs-only` snapshot scope): what differs
//! between a running container's root file system and its image.
//!
//! The container is listed from the inside (`find` and `stat` of the helper busybox, one line
//! per entry) and each entry is compared with the image's root file system on the host, the
//! way rsync's quick check does: an entry changed when its type, permissions, owner, or — for
//! files and links — size or modification time differ. A rewrite that keeps both size and
//! modification time is not seen. Image entries missing from the listing were deleted. Mount
//! points (volumes, `/proc`, gVisor's `/tmp`, podsnap's own directories) and everything below
//! them are not the root file system and are left out on both sides.
//!
//! The changes travel as a cpio archive (newc) of the changed entries and a NUL-separated list
//! of deleted paths; both are made and applied inside the container by the helper busybox, as
//! root, so that owners, permissions and times come out as they were.
//!
//! Everything here is pure over its inputs (a listing text, a mount table text, a directory),
//! so it is tested without a sandbox; [`crate::runner::PodRunner`] runs the commands.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// In a container's status directory: written by the agent once the changes are in place.
pub const READY_MARKER: &str = "rootfs-ready";
/// In a container's status directory: the archive of changed entries (captured or to apply).
pub const ARCHIVE: &str = "rootfs.cpio";
/// In a container's status directory: the deleted paths (captured or to apply).
pub const DELETED: &str = "rootfs.deleted";
/// In a container's status directory: the paths to archive, NUL-separated.
pub const ARCHIVE_LIST: &str = "rootfs.list";

/// Makes `spec`'s process wait until the agent has applied its root-file-system changes
/// (until [`READY_MARKER`] appears in its status directory).
pub fn wait_for_changes(spec: &mut podsnap_engine::ContainerSpec) {
    let status = crate::runner::STATUS_DIR;
    let busybox = format!("{}/busybox", crate::runner::HELPER_DIR);
    let mut args = busybox_sh(format!(
        "while [ ! -e {status}/{READY_MARKER} ]; do {busybox} sleep 0.05; done; exec \"$0\" \"$@\""
    ));
    args.append(&mut spec.args);
    spec.args = args;
}

/// The command that lists a container's root file system for [`parse_listing`].
pub fn listing_command() -> Vec<String> {
    let busybox = format!("{}/busybox", crate::runner::HELPER_DIR);
    [
        &busybox,
        "find",
        "/",
        "-xdev",
        "-exec",
        &busybox,
        "stat",
        "-c",
        STAT_FORMAT,
        "{}",
        "+",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `script` run by the helper busybox's shell.
fn busybox_sh(script: String) -> Vec<String> {
    let busybox = format!("{}/busybox", crate::runner::HELPER_DIR);
    vec![busybox, "sh".into(), "-c".into(), script]
}

/// The command that archives the entries named in [`ARCHIVE_LIST`] into [`ARCHIVE`].
pub fn archive_command() -> Vec<String> {
    let status = crate::runner::STATUS_DIR;
    let busybox = format!("{}/busybox", crate::runner::HELPER_DIR);
    busybox_sh(format!(
        "cd / && {busybox} cpio -o -H newc -0 -F {status}/{ARCHIVE} < {status}/{ARCHIVE_LIST}"
    ))
}

/// The command that removes the paths in [`DELETED`] and unpacks [`ARCHIVE`] (if not empty).
pub fn apply_command() -> Vec<String> {
    let status = crate::runner::STATUS_DIR;
    let busybox = format!("{}/busybox", crate::runner::HELPER_DIR);
    busybox_sh(format!(
        "set -e; {busybox} xargs -0 -r -a {status}/{DELETED} {busybox} rm -rf --; \
         if [ -s {status}/{ARCHIVE} ]; then cd / && {busybox} cpio -i -d -m -u -F {status}/{ARCHIVE}; fi"
    ))
}

/// `paths` NUL-separated, each relative to `/` when `relative`.
pub fn nul_separated(paths: &[String], relative: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(
            if relative {
                p.trim_start_matches('/')
            } else {
                p
            }
            .as_bytes(),
        );
        out.push(0);
    }
    out
}

/// The `stat` format that [`parse_listing`] reads: raw mode (hex), uid, gid, size,
/// modification time (`2026-11-29 09:16:38.391829603 +0000`, to the nanosecond), path.
pub const STAT_FORMAT: &str = "%f %u %g %s %y %n";

const TYPE_MASK: u32 = 0o170_000;
const DIRECTORY: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;
const SYMLINK: u32 = 0o120_000;

/// One entry of a container's root file system, as listed from the inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path.
    pub path: String,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut fields = line.splitn(8, ' ');
    let mode = u32::from_str_radix(fields.next()?, 16).ok()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let size = fields.next()?.parse().ok()?;
    let mtime_ns = parse_time(fields.next()?, fields.next()?, fields.next()?)?;
    let path = fields.next()?;
    path.starts_with('/').then(|| Entry {
        path: path.to_owned(),
        mode,
        uid,
        gid,
        size,
        mtime_ns,
    })
}

/// `2026-11-29`, `09:16:38.391829603`, `+0000` → nanoseconds since the epoch.
fn parse_time(date: &str, time: &str, zone: &str) -> Option<i128> {
    let mut d = date.splitn(3, '-');
    let (year, month, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = clock.splitn(3, ':');
    let (hour, minute, second): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if fraction.is_empty() || fraction.len() > 9 || zone.len() != 5 {
        return None;
    }
    let nanos: i128 = format!("{fraction:0<9}").parse().ok()?;
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let offset: i64 = zone[1..3].parse::<i64>().ok()? * 3600 + zone[3..5].parse::<i64>().ok()? * 60;
    // Days from the civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - sign * offset;
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

fn mtime_ns(metadata: &std::fs::Metadata) -> i128 {
    i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec())
}

/// Reads the output of `find / -xdev -exec stat -c STAT_FORMAT {} +`. A line that is not an
/// entry continues the previous entry's path (a file name with a line break in it).
pub fn parse_listing(text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in text.split('\n') {
        match (parse_line(line), out.last_mut()) {
            (Some(entry), _) => out.push(entry),
            (None, Some(previous)) if !line.is_empty() => {
                previous.path.push('\n');
                previous.path.push_str(line);
            }
            _ => {}
        }
    }
    out
}

/// The mount points in a `/proc/mounts` text (octal escapes such as `\040` decoded), except
/// the root.
pub fn parse_mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_field)
        .filter(|p| p != "/")
        .collect()
}

fn unescape_mount_field(field: &str) -> String {
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
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What changed in a container's root file system against its image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootfsDiff {
    /// Entries to copy into a new container (added or changed), absolute paths, parents
    /// before children.
    pub changed: Vec<String>,
    /// Image entries to remove from a new container first (deleted, or replaced by an entry
    /// of another type), absolute paths; a deleted directory is listed alone, not its content.
    pub deleted: Vec<String>,
}

impl RootfsDiff {
    /// Whether the container's root file system equals its image.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty()
    }
}

fn is_under(path: &str, mount_points: &[String]) -> bool {
    mount_points.iter().any(|m| {
        path == m
            || path
                .strip_prefix(m.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Whether `entry` differs from the image's `image` entry.
fn differs(entry: &Entry, image: &std::fs::Metadata) -> bool {
    let kind = entry.mode & TYPE_MASK;
    if kind != image.mode() & TYPE_MASK
        || entry.mode & 0o7777 != image.mode() & 0o7777
        || entry.uid != image.uid()
        || entry.gid != image.gid()
    {
        return true;
    }
    // A directory's own time changes with every entry added or removed; its content is
    // compared entry by entry instead.
    matches!(kind, REGULAR | SYMLINK)
        && (entry.size != image.size() || entry.mtime_ns != mtime_ns(image))
}

/// Compares a container's `listing` with the image's root file system at `image_root`,
/// leaving out `mount_points` and everything below them.
pub fn diff(listing: &[Entry], image_root: &Path, mount_points: &[String]) -> RootfsDiff {
    let mut out = RootfsDiff::default();
    let mut listed: HashMap<&str, u32> = HashMap::new();
    for entry in listing {
        if entry.path == "/" || is_under(&entry.path, mount_points) {
            continue;
        }
        listed.insert(&entry.path, entry.mode);
        let on_image = std::fs::symlink_metadata(image_root.join(&entry.path[1..]));
        match on_image {
            Err(_) => out.changed.push(entry.path.clone()),
            Ok(image) if differs(entry, &image) => {
                if entry.mode & TYPE_MASK != image.mode() & TYPE_MASK {
                    out.deleted.push(entry.path.clone());
                }
                out.changed.push(entry.path.clone());
            }
            Ok(_) => {}
        }
    }
    deleted_below(image_root, "", &listed, mount_points, &mut out.deleted);
    out.changed.sort();
    out.deleted.sort();
    out
}

/// Adds to `deleted` the topmost entries below `image_root/relative` that the listing lacks.
fn deleted_below(
    image_root: &Path,
    relative: &str,
    listed: &HashMap<&str, u32>,
    mount_points: &[String],
    deleted: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(image_root.join(relative.trim_start_matches('/'))) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{relative}/{name}");
        if is_under(&path, mount_points) {
            continue;
        }
        match listed.get(path.as_str()) {
            None => deleted.push(path),
            // Still a directory in the container: look inside. (One replaced by another type
            // was deleted whole.)
            Some(mode)
                if mode & TYPE_MASK == DIRECTORY && entry.file_type().is_ok_and(|t| t.is_dir()) =>
            {
                deleted_below(image_root, &path, listed, mount_points, deleted);
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The listing line of `path` as busybox's `stat` prints it (the image seen from inside).
    fn line_of(root: &Path, path: &str) -> String {
        let out = std::process::Command::new("busybox")
            .args(["stat", "-c", STAT_FORMAT])
            .arg(root.join(path.trim_start_matches('/')))
            .output()
            .expect("busybox is installed (apt-get install -y busybox-static)");
        let text = String::from_utf8(out.stdout).unwrap();
        let host_path = root.join(path.trim_start_matches('/'));
        text.trim_end().replace(host_path.to_str().unwrap(), path)
    }

    /// An image with a few entries, and the listing of an unchanged container of it.
    fn image() -> (tempfile::TempDir, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["bin", "etc/app", "tmp", "podsnap"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("bin/tool"), "tool").unwrap();
        std::fs::write(root.join("etc/config"), "a=1").unwrap();
        std::fs::write(root.join("etc/app/one"), "1").unwrap();
        std::fs::write(root.join("etc/app/two"), "2").unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
        let paths = [
            "/",
            "/bin",
            "/bin/tool",
            "/bin/alias",
            "/etc",
            "/etc/config",
            "/etc/app",
            "/etc/app/one",
            "/etc/app/two",
            "/tmp",
            "/podsnap",
        ];
        let text: Vec<String> = paths.iter().map(|p| line_of(root, p)).collect();
        let listing = parse_listing(&text.join("\n"));
        assert_eq!(listing.len(), paths.len(), "{text:?}");
        (dir, listing)
    }

    fn run(listing: &[Entry], root: &Path) -> RootfsDiff {
        diff(listing, root, &["/tmp".into(), "/podsnap".into()])
    }

    fn entry<'a>(listing: &'a mut [Entry], path: &str) -> &'a mut Entry {
        listing.iter_mut().find(|e| e.path == path).unwrap()
    }

    fn added(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            size: 5,
            mtime_ns: 1,
        }
    }

    #[test]
    fn an_unchanged_container_has_no_changes() {
        let (dir, listing) = image();
        assert!(run(&listing, dir.path()).is_empty());
    }

    #[test]
    fn added_changed_and_deleted_entries_are_found() {
        let (dir, mut listing) = image();
        // Changed content (other size), changed permissions, a new file in a new directory,
        // a deleted link and a deleted directory.
        entry(&mut listing, "/etc/config").size = 9;
        entry(&mut listing, "/bin/tool").mode |= 0o111;
        listing.push(added("/var", DIRECTORY | 0o755));
        listing.push(added("/var/new file", REGULAR | 0o644));
        listing.retain(|e| e.path != "/bin/alias" && !e.path.starts_with("/etc/app"));
        let diff = run(&listing, dir.path());
        assert_eq!(
            diff.changed,
            ["/bin/tool", "/etc/config", "/var", "/var/new file"]
        );
        assert_eq!(diff.deleted, ["/bin/alias", "/etc/app"]);
    }

    #[test]
    fn a_replaced_type_is_deleted_then_added_and_a_rewrite_in_the_same_second_counts() {
        let (dir, mut listing) = image();
        let app = entry(&mut listing, "/etc/app");
        app.mode = REGULAR | (app.mode & 0o7777);
        listing.retain(|e| !e.path.starts_with("/etc/app/"));
        // Same size, one nanosecond later.
        entry(&mut listing, "/bin/tool").mtime_ns += 1;
        let diff = run(&listing, dir.path());
        assert_eq!(diff.changed, ["/bin/tool", "/etc/app"]);
        assert_eq!(diff.deleted, ["/etc/app"]);
    }

    #[test]
    fn directory_times_do_not_count_but_their_permissions_do() {
        let (dir, mut listing) = image();
        entry(&mut listing, "/etc").mtime_ns += 100_000_000_000;
        assert!(run(&listing, dir.path()).is_empty());
        std::fs::set_permissions(
            dir.path().join("etc"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert_eq!(run(&listing, dir.path()).changed, ["/etc"]);
    }

    #[test]
    fn mount_points_are_left_out_on_both_sides() {
        let (dir, mut listing) = image();
        listing.push(added("/tmp/scratch", REGULAR | 0o644));
        listing.retain(|e| e.path != "/podsnap");
        assert!(run(&listing, dir.path()).is_empty());
    }

    #[test]
    fn names_with_line_breaks_and_spaces_survive_parsing() {
        let listing = parse_listing(
            "81a4 0 0 1 2026-11-29 09:16:38.5 +0000 /a b\nc\n41ed 0 0 0 1970-01-01 00:00:01.000000000 +0100 /d\n",
        );
        assert_eq!(listing.len(), 2);
        assert_eq!(listing[0].path, "/a b\nc");
        assert_eq!(listing[0].mtime_ns, 1_795_943_798_500_000_000);
        assert_eq!(listing[1].mode & TYPE_MASK, DIRECTORY);
        assert_eq!(listing[1].mtime_ns, -3_599_000_000_000);
    }

    #[test]
    fn mount_tables_are_decoded() {
        let mounts = parse_mount_points(
            "none / rootfs rw 0 0\nnone /proc proc rw 0 0\nnone /data\\040dir 9p rw 0 0\n",
        );
        assert_eq!(mounts, ["/proc", "/data dir"]);
    }
}
