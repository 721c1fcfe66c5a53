//! The image on disk: a directory with
//!
//! - `manifest.json`: `{"magic": "podsnap-native-image", "version": 2, ...}` — the kernel
//!   release it was taken on and the process tree: every process's state ([`ProcessImage`],
//!   parents before children), with the name and index of its page file;
//! - `pages-<pid>.img`, one per process: a 16-byte header (`PSNPAGES`, page-file format
//!   version, page size, little-endian) and then the saved pages, run after run; the manifest
//!   holds its data length, its CRC-32 and the index (address, page count, offset of each run).
//!
//! The manifest is written last, by rename, so a directory without one holds no image.
//! [`read_image`] validates everything (magic, version, lengths, index, checksum) before a
//! restore touches anything.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::ProcessImage;
use super::{CrError, Result};

/// The manifest's magic string.
pub const MAGIC: &str = "podsnap-native-image";
/// The manifest format version this code writes and reads.
pub const VERSION: u32 = 2;
/// The page-file format version this code writes and reads.
pub const PAGES_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// Whether the file at `path` is a page file of this format (by its header): page data that
/// is best stored page-aligned.
pub fn is_pages_file(path: &Path) -> bool {
    let mut header = [0u8; PAGES_HEADER as usize];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header[..8] == PAGES_MAGIC
        && header[12..16] == (PAGE as u32).to_le_bytes()
}

/// The page file of process `pid`.
pub fn pages_file_name(pid: i32) -> String {
    format!("pages-{pid}.img")
}
/// The page file's magic.
pub const PAGES_MAGIC: &[u8; 8] = b"PSNPAGES";
/// Length of the page file's header.
pub const PAGES_HEADER: u64 = 16;
/// The page size this format assumes.
pub const PAGE: u64 = 4096;

/// The manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Always [`MAGIC`].
    pub magic: String,
    /// [`VERSION`].
    pub version: u32,
    /// `uname -r` of the kernel it was taken on (the vDSO must be the same).
    pub kernel_release: String,
    /// The processes, the root first, every parent before its children.
    pub processes: Vec<ProcessImage>,
    /// Children that had exited and were not reaped yet.
    #[serde(default)]
    pub zombies: Vec<super::model::Zombie>,
}

/// The page file's description.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PagesInfo {
    /// The file's name in the image directory.
    pub file: String,
    /// Bytes of page data after the header.
    pub data_len: u64,
    /// CRC-32 (IEEE) of the page data.
    pub crc32: u32,
    /// The runs, in address order.
    pub runs: Vec<PageRun>,
}

/// Contiguous saved pages.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// Address of the first page.
    pub addr: u64,
    /// Number of pages.
    pub pages: u64,
    /// Offset of its data in the page data.
    pub offset: u64,
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> CrError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| CrError::ImageIo { path, what, source }
}

fn bad(path: &Path, reason: impl Into<String>) -> CrError {
    CrError::BadImage {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes the page file run by run.
pub struct PagesWriter {
    name: String,
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    len: u64,
    runs: Vec<PageRun>,
}

impl PagesWriter {
    /// Creates the page file `dir/name` (the directory is created if needed).
    pub fn create(dir: &Path, name: &str) -> Result<PagesWriter> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "creating the directory"))?;
        let path = dir.join(name);
        let file = File::create(&path).map_err(io_err(&path, "creating"))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = PAGES_MAGIC.to_vec();
        header.extend(PAGES_VERSION.to_le_bytes());
        header.extend((PAGE as u32).to_le_bytes());
        out.write_all(&header).map_err(io_err(&path, "writing"))?;
        Ok(PagesWriter {
            name: name.to_string(),
            path,
            out,
            crc: crc32fast::Hasher::new(),
            len: 0,
            runs: Vec::new(),
        })
    }

    /// Appends pages starting at `addr` (`data` is whole pages), merging with the previous
    /// run when contiguous.
    pub fn add(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        debug_assert!((data.len() as u64).is_multiple_of(PAGE) && addr.is_multiple_of(PAGE));
        self.out
            .write_all(data)
            .map_err(io_err(&self.path, "writing"))?;
        self.crc.update(data);
        let pages = data.len() as u64 / PAGE;
        match self.runs.last_mut() {
            Some(r) if r.addr + r.pages * PAGE == addr && r.offset + r.pages * PAGE == self.len => {
                r.pages += pages
            }
            _ => self.runs.push(PageRun {
                addr,
                pages,
                offset: self.len,
            }),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Flushes and syncs the file; its description for the manifest.
    pub fn finish(self) -> Result<PagesInfo> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.path, "writing")(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.path, "syncing"))?;
        Ok(PagesInfo {
            file: self.name,
            data_len: self.len,
            crc32: self.crc.finalize(),
            runs: self.runs,
        })
    }
}

/// Writes `dir/manifest.json` durably (temporary file, sync, rename).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serialises");
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
    f.write_all(&json).map_err(io_err(&tmp, "writing"))?;
    f.sync_all().map_err(io_err(&tmp, "syncing"))?;
    let path = dir.join(MANIFEST);
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "renaming into place"))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A validated page file, read by offset.
#[derive(Debug)]
pub struct PagesFile {
    file: File,
}

impl PagesFile {
    /// Reads `buf.len()` bytes at `offset` of the page data.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, PAGES_HEADER + offset)
    }
}

/// Reads and validates an image: the manifest (magic, version, tree, indexes) and every page
/// file (header, length, checksum); the page files in the order of the processes.
pub fn read_image(dir: &Path) -> Result<(Manifest, Vec<PagesFile>)> {
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read(&mpath).map_err(io_err(
        &mpath,
        "reading (is this a checkpoint directory? the manifest is written last)",
    ))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| bad(&mpath, format!("not JSON (truncated or corrupt?): {e}")))?;
    if value.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return Err(bad(&mpath, format!("no \"magic\": \"{MAGIC}\"")));
    }
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(VERSION as u64) {
        return Err(bad(
            &mpath,
            format!(
                "format version {version:?}, this podsnap reads version {VERSION}: take the \
                 checkpoint again with this podsnap"
            ),
        ));
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| {
        bad(
            &mpath,
            format!("does not match format version {VERSION}: {e}"),
        )
    })?;
    check_tree(&mpath, &manifest.processes)?;
    check_shmem(&mpath, &manifest.processes)?;
    for z in &manifest.zombies {
        let clash = manifest
            .processes
            .iter()
            .any(|p| p.threads.iter().any(|t| t.tid == z.pid));
        if z.pid <= 0 || clash || !manifest.processes.iter().any(|p| p.pid == z.ppid) {
            return Err(bad(
                &mpath,
                format!("zombie {} has no parent in the image or a taken PID", z.pid),
            ));
        }
    }
    let mut files = Vec::new();
    for p in &manifest.processes {
        check_index(&mpath, &p.pages)?;
        files.push(open_pages(dir, &p.pages)?);
    }
    Ok((manifest, files))
}

/// The tree must be non-empty, its PIDs and TIDs unique and positive, every parent before its
/// children, every process with a main thread whose TID is its PID.
fn check_tree(path: &Path, processes: &[ProcessImage]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    if processes.is_empty() {
        return Err(bad(path, "no processes"));
    }
    for (i, p) in processes.iter().enumerate() {
        let parent_ok = if i == 0 {
            p.ppid == 0
        } else {
            processes[..i].iter().any(|q| q.pid == p.ppid)
        };
        if !parent_ok {
            return Err(bad(
                path,
                format!("process {} comes before its parent {}", p.pid, p.ppid),
            ));
        }
        if p.threads.first().is_none_or(|t| t.tid != p.pid) {
            return Err(bad(path, format!("process {} has no main thread", p.pid)));
        }
        for t in &p.threads {
            if t.tid <= 0 || !seen.insert(t.tid) {
                return Err(bad(path, format!("TID {} is invalid or repeated", t.tid)));
            }
        }
        if p.pages.file != pages_file_name(p.pid) {
            return Err(bad(
                path,
                format!("process {}'s page file is named {:?}", p.pid, p.pages.file),
            ));
        }
    }
    Ok(())
}

/// Shared memory objects: ids unique in the image, each with exactly one staging mapping in
/// its owner's mappings and as large as the object; every mapping of one names the owner,
/// which comes no later in the image.
fn check_shmem(path: &Path, processes: &[ProcessImage]) -> Result<()> {
    use super::model::Backing;
    let mut owners = std::collections::BTreeMap::new();
    for p in processes {
        for o in &p.shmem {
            let stages: Vec<_> = p
                .vmas
                .iter()
                .filter(|v| v.backing == Backing::ShmemStage { id: o.id })
                .collect();
            let fits = stages.len() == 1 && stages[0].len() >= o.size;
            if !fits || owners.insert(o.id, p.pid).is_some() {
                return Err(bad(
                    path,
                    format!(
                        "shared memory object {} of process {} is repeated or not staged",
                        o.id, p.pid
                    ),
                ));
            }
        }
        for v in &p.vmas {
            let ok = match v.backing {
                Backing::Shmem { id, owner, .. } => owners.get(&id) == Some(&owner),
                Backing::ShmemStage { id } => owners.get(&id) == Some(&p.pid),
                _ => true,
            };
            if !ok {
                return Err(bad(
                    path,
                    format!(
                        "mapping {:#x}-{:#x} of process {} names a shared memory object its \
                         owner does not make first",
                        v.start, v.end, p.pid
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Opens and validates one page file against its description.
fn open_pages(dir: &Path, info: &PagesInfo) -> Result<PagesFile> {
    let ppath = dir.join(&info.file);
    let mut file = File::open(&ppath).map_err(io_err(&ppath, "opening"))?;
    let len = file.metadata().map_err(io_err(&ppath, "stat"))?.len();
    if len != PAGES_HEADER + info.data_len {
        return Err(bad(
            &ppath,
            format!(
                "{len} bytes, the manifest says {} (truncated or not this image's)",
                PAGES_HEADER + info.data_len
            ),
        ));
    }
    let mut header = [0u8; PAGES_HEADER as usize];
    file.read_exact(&mut header)
        .map_err(io_err(&ppath, "reading"))?;
    if &header[..8] != PAGES_MAGIC
        || header[8..12] != PAGES_VERSION.to_le_bytes()
        || header[12..16] != (PAGE as u32).to_le_bytes()
    {
        return Err(bad(&ppath, "bad header (not a page file of this version)"));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(&ppath, "reading"))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    if crc.finalize() != info.crc32 {
        return Err(bad(&ppath, "checksum mismatch: the page data is corrupt"));
    }
    Ok(PagesFile { file })
}

/// The index must be page-aligned, in address order, without overlaps, inside the data.
fn check_index(path: &Path, pages: &PagesInfo) -> Result<()> {
    let mut prev_end = 0u64;
    for r in &pages.runs {
        let bytes = r.pages.checked_mul(PAGE);
        let end = bytes.and_then(|b| r.addr.checked_add(b));
        let data_end = bytes.and_then(|b| r.offset.checked_add(b));
        match (end, data_end) {
            (Some(end), Some(data_end))
                if r.addr.is_multiple_of(PAGE)
                    && r.offset.is_multiple_of(PAGE)
                    && r.addr >= prev_end
                    && r.pages > 0
                    && data_end <= pages.data_len =>
            {
                prev_end = end
            }
            _ => return Err(bad(path, format!("page index entry {r:?} is invalid"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_when_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PagesWriter::create(dir.path(), "pages-1.img").unwrap();
        w.add(0x1000, &[1u8; 4096]).unwrap();
        w.add(0x2000, &[2u8; 8192]).unwrap();
        w.add(0x8000, &[3u8; 4096]).unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.data_len, 16384);
        assert_eq!(
            info.runs,
            vec![
                PageRun {
                    addr: 0x1000,
                    pages: 3,
                    offset: 0
                },
                PageRun {
                    addr: 0x8000,
                    pages: 1,
                    offset: 12288
                }
            ]
        );
        assert!(check_index(Path::new("x"), &info).is_ok());
        let mut bad_info = info.clone();
        bad_info.runs[1].addr = 0x2000; // overlaps
        assert!(check_index(Path::new("x"), &bad_info).is_err());
        bad_info.runs[1].addr = 0x8000;
        bad_info.runs[1].offset = 16384; // beyond the data
        assert!(check_index(Path::new("x"), &bad_info).is_err());
    }
}
