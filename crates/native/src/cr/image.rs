//! The image on disk: a directory with
//!
//! - `manifest.json`: `{"magic": "podsnap-native-image", "version": 3, ...}` — the kernel
//!   release it was taken on and the process tree: every process's state ([`ProcessImage`],
//!   parents before children), with the name and index of its page file;
//! - `pages-<pid>.img`, one per process: a 16-byte header (`PSNPAGES`, page-file format
//!   version, page size, little-endian) and then the saved pages, run after run; the manifest
//!   holds its data length, the index (address, page count, offset of each run) and a CRC-32
//!   of every block of [`PAGES_CHECK_BLOCK`] bytes of the data (the last one may be shorter).
//!
//! The manifest is written last, by rename, so a directory without one holds no image.
//! [`read_image`] validates the manifest (magic, version, tree, indexes, block counts) and
//! each page file's length and header before a restore touches anything, without reading
//! the page data: [`PagesFile::read_at`] verifies the checksum of every block it reads, so
//! page data is checked as it is restored, and a corrupt block is an
//! [`std::io::ErrorKind::InvalidData`] error naming the file and the block. The page files
//! are read through an [`ImageFile`] (the engine interface's) — local files by default, or any other source of their
//! bytes ([`read_image_with`]).

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::ProcessImage;
use super::{CrError, Result};

/// The manifest's magic string.
pub const MAGIC: &str = "podsnap-native-image";
/// The manifest format version this code writes and reads.
pub const VERSION: u32 = 3;
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
/// The size of the blocks of page data whose checksums the manifest holds (64 KiB), as
/// written; a reader takes [`PagesInfo::block_size`].
pub const PAGES_CHECK_BLOCK: u64 = 64 << 10;
/// The largest block size a reader accepts (16 MiB): every read covers whole blocks.
pub const MAX_CHECK_BLOCK: u64 = 16 << 20;

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
    /// Bytes per checksummed block of the page data: a power of two, a multiple of
    /// [`PAGE`], at most [`MAX_CHECK_BLOCK`] ([`PAGES_CHECK_BLOCK`] when written).
    pub block_size: u64,
    /// CRC-32 (IEEE) of each consecutive `block_size` bytes of the page data (the last block
    /// may be shorter): `ceil(data_len / block_size)` of them.
    pub block_crc32: Vec<u32>,
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
    /// The checksum of the block being written, and its bytes so far.
    block: crc32fast::Hasher,
    block_fill: u64,
    block_crc32: Vec<u32>,
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
            block: crc32fast::Hasher::new(),
            block_fill: 0,
            block_crc32: Vec::new(),
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
        self.checksum(data);
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

    /// Adds `data` to the block checksums, closing each block as it fills.
    fn checksum(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (PAGES_CHECK_BLOCK - self.block_fill).min(data.len() as u64) as usize;
            let (now, rest) = data.split_at(room);
            self.block.update(now);
            self.block_fill += room as u64;
            if self.block_fill == PAGES_CHECK_BLOCK {
                let full = std::mem::replace(&mut self.block, crc32fast::Hasher::new());
                self.block_crc32.push(full.finalize());
                self.block_fill = 0;
            }
            data = rest;
        }
    }

    /// Flushes and syncs the file; its description for the manifest.
    pub fn finish(mut self) -> Result<PagesInfo> {
        if self.block_fill > 0 {
            let last = std::mem::replace(&mut self.block, crc32fast::Hasher::new());
            self.block_crc32.push(last.finalize());
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.path, "writing")(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.path, "syncing"))?;
        Ok(PagesInfo {
            file: self.name,
            data_len: self.len,
            block_size: PAGES_CHECK_BLOCK,
            block_crc32: self.block_crc32,
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

/// The bytes of one file of an image, by offset: a local file, or one still arriving from a
/// repository — the engine interface's image file, so that what an engine is given is read
/// here as it is.
pub use podsnap_engine::ImageFile;

/// Opens a page file of an image by its full path.
pub type PagesOpener = dyn Fn(&Path) -> std::io::Result<Arc<dyn ImageFile>> + Send + Sync;

/// A local file as an [`ImageFile`], its length taken when opened.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    len: u64,
}

impl LocalFile {
    /// Opens the file at `path` for reading.
    pub fn open(path: &Path) -> std::io::Result<LocalFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(LocalFile { file, len })
    }
}

impl ImageFile for LocalFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// The [`PagesOpener`] of local files: the page files in the image directory.
pub fn open_local(path: &Path) -> std::io::Result<Arc<dyn ImageFile>> {
    Ok(Arc::new(LocalFile::open(path)?))
}

thread_local! {
    /// The buffer a thread reads whole blocks into, kept between reads up to
    /// [`SCRATCH_KEEP`] bytes.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}
/// The largest scratch buffer a thread keeps after a read (larger ones are freed).
const SCRATCH_KEEP: usize = 9 << 20;

/// A page file whose header and length are valid, read by offset through its
/// [`ImageFile`]; every block read is checked against its checksum.
pub struct PagesFile {
    source: Arc<dyn ImageFile>,
    path: PathBuf,
    data_len: u64,
    block_size: u64,
    block_crc32: Vec<u32>,
}

impl std::fmt::Debug for PagesFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagesFile")
            .field("path", &self.path)
            .field("data_len", &self.data_len)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl PagesFile {
    /// Reads `buf.len()` bytes at `offset` of the page data: the whole blocks that cover
    /// them, in one read of the source, each checked against its checksum. A block that
    /// does not match is an [`std::io::ErrorKind::InvalidData`] error naming the file and
    /// the block; a range past the data an [`std::io::ErrorKind::UnexpectedEof`] one.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_checked(offset, buf, false)
    }

    /// [`PagesFile::read_at`] for a page fault a process is blocked on (see
    /// [`ImageFile::read_for_fault`]).
    pub fn read_for_fault(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_checked(offset, buf, true)
    }

    fn read_checked(&self, offset: u64, buf: &mut [u8], fault: bool) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.data_len)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "page file {}: {} bytes at offset {offset:#x} go past the end of its \
                         {} bytes of page data",
                        self.path.display(),
                        buf.len(),
                        self.data_len
                    ),
                )
            })?;
        let first = offset / self.block_size;
        let span_start = first * self.block_size;
        let span_end = end
            .div_ceil(self.block_size)
            .saturating_mul(self.block_size)
            .min(self.data_len);
        if span_start == offset && span_end == end {
            self.read_source(PAGES_HEADER + offset, buf, fault)?;
            return self.verify(first, buf);
        }
        let span = (span_start, span_end);
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                let r = self.read_span(span, offset, buf, &mut scratch, fault);
                if scratch.len() > SCRATCH_KEEP {
                    *scratch = Vec::new();
                }
                r
            }
            // A source that reads page files itself: a buffer of its own.
            Err(_) => self.read_span(span, offset, buf, &mut Vec::new(), fault),
        })
    }

    fn read_source(&self, offset: u64, buf: &mut [u8], fault: bool) -> std::io::Result<()> {
        if fault {
            self.source.read_for_fault(offset, buf)
        } else {
            self.source.read_at(offset, buf)
        }
    }

    /// Reads the whole blocks `span` (start, end) into `scratch`, checks them, and copies
    /// the bytes at `offset` into `buf`.
    fn read_span(
        &self,
        (start, end): (u64, u64),
        offset: u64,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
        fault: bool,
    ) -> std::io::Result<()> {
        let len = (end - start) as usize;
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let data = &mut scratch[..len];
        self.read_source(PAGES_HEADER + start, data, fault)?;
        self.verify(start / self.block_size, data)?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }

    /// Checks `data`, whole blocks from block `first` on, against their checksums.
    fn verify(&self, first: u64, data: &[u8]) -> std::io::Result<()> {
        for (i, block) in data.chunks(self.block_size as usize).enumerate() {
            let n = first + i as u64;
            let want = self.block_crc32.get(n as usize).copied();
            if want != Some(crc32fast::hash(block)) {
                let start = n * self.block_size;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "page file {}: block {n} (page data {start:#x}..{:#x}, file offset \
                         {:#x}) does not match its checksum: the image is corrupt; take the \
                         checkpoint again, or check the storage it is on",
                        self.path.display(),
                        start + block.len() as u64,
                        PAGES_HEADER + start,
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads and validates an image from its directory: [`read_image_with`] of the page files
/// there.
pub fn read_image(dir: &Path) -> Result<(Manifest, Vec<PagesFile>)> {
    read_image_with(dir, &open_local)
}

/// Reads and validates an image: the manifest in `dir` (magic, version, tree, indexes,
/// block checksum counts) and every page file, opened by `open` with its path in `dir`
/// (length and header; its data is checked as it is read, by [`PagesFile::read_at`]); the
/// page files in the order of the processes.
pub fn read_image_with(dir: &Path, open: &PagesOpener) -> Result<(Manifest, Vec<PagesFile>)> {
    let manifest = read_manifest(dir)?;
    let mut files = Vec::new();
    for p in &manifest.processes {
        files.push(open_pages(dir, &p.pages, open)?);
    }
    Ok((manifest, files))
}

/// Reads and validates the manifest of the image in `dir` (magic, version, tree, shared
/// memory, zombies, page indexes and block checksums' shape), without opening page files.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
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
        let found = version.map_or("no format version".to_string(), |v| {
            format!("format version {v}")
        });
        return Err(bad(
            &mpath,
            format!(
                "{found}, this podsnap reads version {VERSION} only: take the checkpoint \
                 again with this podsnap"
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
    for p in &manifest.processes {
        check_index(&mpath, &p.pages)?;
        check_blocks(&mpath, &p.pages)?;
    }
    Ok(manifest)
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

/// Opens one page file and validates its length and header against its description.
fn open_pages(dir: &Path, info: &PagesInfo, open: &PagesOpener) -> Result<PagesFile> {
    let ppath = dir.join(&info.file);
    let source = open(&ppath).map_err(io_err(&ppath, "opening"))?;
    let len = source.len();
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
    source
        .read_at(0, &mut header)
        .map_err(io_err(&ppath, "reading"))?;
    if &header[..8] != PAGES_MAGIC
        || header[8..12] != PAGES_VERSION.to_le_bytes()
        || header[12..16] != (PAGE as u32).to_le_bytes()
    {
        return Err(bad(&ppath, "bad header (not a page file of this version)"));
    }
    Ok(PagesFile {
        source,
        path: ppath,
        data_len: info.data_len,
        block_size: info.block_size,
        block_crc32: info.block_crc32.clone(),
    })
}

/// The block size must be a power of two, a multiple of the page and at most
/// [`MAX_CHECK_BLOCK`], with one checksum per block of the data.
fn check_blocks(path: &Path, pages: &PagesInfo) -> Result<()> {
    let size = pages.block_size;
    if !size.is_power_of_two() || !size.is_multiple_of(PAGE) || size > MAX_CHECK_BLOCK {
        return Err(bad(
            path,
            format!(
                "page file {}: checksum block size {size} is not a power of two from {PAGE} \
                 to {MAX_CHECK_BLOCK}",
                pages.file
            ),
        ));
    }
    let want = pages.data_len.div_ceil(size);
    if pages.block_crc32.len() as u64 != want {
        return Err(bad(
            path,
            format!(
                "page file {}: {} block checksums for {} bytes of page data in blocks of \
                 {size} (want {want}; truncated or corrupt manifest?)",
                pages.file,
                pages.block_crc32.len(),
                pages.data_len
            ),
        ));
    }
    Ok(())
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

    /// Pages with content that differs in every page.
    fn pattern(pages: usize, salt: u8) -> Vec<u8> {
        (0..pages * PAGE as usize)
            .map(|i| (i / 7) as u8 ^ (i / PAGE as usize) as u8 ^ salt)
            .collect()
    }

    /// A page file of `pages` pattern pages added in pieces of `pieces` pages (repeated);
    /// its data and description.
    fn write_pages(dir: &Path, pages: usize, pieces: &[usize]) -> (Vec<u8>, PagesInfo) {
        let data = pattern(pages, 0x5a);
        let mut w = PagesWriter::create(dir, "pages-1.img").unwrap();
        let (mut at, mut i) = (0, 0);
        while at < pages {
            let n = pieces[i % pieces.len()].min(pages - at);
            let bytes = &data[at * PAGE as usize..(at + n) * PAGE as usize];
            w.add(0x10_0000 + at as u64 * PAGE, bytes).unwrap();
            at += n;
            i += 1;
        }
        (data, w.finish().unwrap())
    }

    #[test]
    fn block_checksums_are_cut_at_block_boundaries_across_adds_of_odd_lengths() {
        let dir = tempfile::tempdir().unwrap();
        // 7 blocks of 16 pages and 5 pages more, in pieces of 1, 17, 3, 40 and 2 pages.
        let pages = 7 * 16 + 5;
        let (data, info) = write_pages(dir.path(), pages, &[1, 17, 3, 40, 2]);
        assert_eq!(info.block_size, PAGES_CHECK_BLOCK);
        assert_eq!(info.data_len, data.len() as u64);
        let want: Vec<u32> = data
            .chunks(PAGES_CHECK_BLOCK as usize)
            .map(crc32fast::hash)
            .collect();
        assert_eq!(want.len(), 8);
        assert_eq!(info.block_crc32, want);
        assert_eq!(info.runs.len(), 1, "one contiguous run");
        let on_disk = std::fs::read(dir.path().join("pages-1.img")).unwrap();
        assert_eq!(&on_disk[PAGES_HEADER as usize..], &data[..]);
        assert!(check_blocks(Path::new("m"), &info).is_ok());

        // Exactly whole blocks: no empty last block; no data: no blocks.
        let (_, info) = write_pages(dir.path(), 32, &[5]);
        assert_eq!(info.block_crc32.len(), 2);
        let info = PagesWriter::create(dir.path(), "pages-2.img")
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!((info.data_len, info.block_crc32.len()), (0, 0));
        assert!(check_blocks(Path::new("m"), &info).is_ok());
    }

    #[test]
    fn block_sizes_and_counts_that_do_not_fit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, info) = write_pages(dir.path(), 40, &[40]);
        for size in [0, 1000, 2048, 3 * PAGE, 2 * MAX_CHECK_BLOCK] {
            let mut bad_info = info.clone();
            bad_info.block_size = size;
            let err = check_blocks(Path::new("m"), &bad_info).unwrap_err();
            assert!(err.to_string().contains("pages-1.img"), "{err}");
        }
        let mut bad_info = info.clone();
        bad_info.block_crc32.pop();
        let err = check_blocks(Path::new("m"), &bad_info).unwrap_err();
        assert!(
            matches!(err, CrError::BadImage { .. }) && err.to_string().contains("pages-1.img"),
            "{err}"
        );
        bad_info.block_crc32.extend([0, 0]);
        assert!(check_blocks(Path::new("m"), &bad_info).is_err());
    }

    #[test]
    fn reads_check_only_the_blocks_they_cover_and_name_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let pages = 6 * 16 + 3; // 6 whole blocks and a short one
        let (data, info) = write_pages(dir.path(), pages, &[3, 16, 1]);
        let path = dir.path().join("pages-1.img");
        let block = PAGES_CHECK_BLOCK as usize;
        let read = |f: &PagesFile, offset: usize, len: usize| {
            let mut buf = vec![0u8; len];
            f.read_at(offset as u64, &mut buf).map(|()| buf)
        };

        let f = open_pages(dir.path(), &info, &open_local).unwrap();
        // Aligned, unaligned, across blocks, the short last block, all of it.
        for (offset, len) in [
            (0, block),
            (4096, 4096),
            (block - 4096, 3 * 4096),
            (block + 8192, 2 * block),
            (6 * block, 3 * 4096),
            (5 * block + 4096, block + 4096),
            (0, data.len()),
        ] {
            assert_eq!(
                read(&f, offset, len).unwrap(),
                &data[offset..offset + len],
                "{offset:#x}+{len:#x}"
            );
        }
        let past = read(&f, data.len() - 4096, 8192).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);

        // One byte flipped in block 2.
        let mut bytes = std::fs::read(&path).unwrap();
        let flip = PAGES_HEADER as usize + 2 * block + 5000;
        bytes[flip] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let f = open_pages(dir.path(), &info, &open_local).unwrap();
        for (offset, len) in [
            (2 * block, block),
            (2 * block + 4096, 4096),
            (block + 4096, block),
            (0, data.len()),
        ] {
            let err = read(&f, offset, len).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains("block 2 ")
                    && msg.contains("checksum")
                    && msg.contains("corrupt"),
                "{msg}"
            );
        }
        // The other blocks still read, even right next to the corrupt one.
        for (offset, len) in [
            (0, 2 * block),
            (block + 4096, block - 4096),
            (3 * block, 4096),
        ] {
            assert_eq!(read(&f, offset, len).unwrap(), &data[offset..offset + len]);
        }
    }

    #[test]
    fn pages_are_read_through_the_opener_given() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Bytes in memory, counting the reads.
        struct Mem(Vec<u8>, AtomicUsize);
        impl ImageFile for Mem {
            fn len(&self) -> u64 {
                self.0.len() as u64
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
                self.1.fetch_add(1, Ordering::Relaxed);
                let at = offset as usize;
                buf.copy_from_slice(&self.0[at..at + buf.len()]);
                Ok(())
            }
        }
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PagesFile>();

        let dir = tempfile::tempdir().unwrap();
        let (data, info) = write_pages(dir.path(), 40, &[7]);
        let bytes = std::fs::read(dir.path().join("pages-1.img")).unwrap();
        std::fs::remove_file(dir.path().join("pages-1.img")).unwrap();
        let mem = Arc::new(Mem(bytes, Default::default()));
        let opened = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = {
            let (mem, opened) = (mem.clone(), opened.clone());
            move |p: &Path| -> std::io::Result<Arc<dyn ImageFile>> {
                opened.lock().unwrap().push(p.to_path_buf());
                Ok(mem.clone())
            }
        };
        let f = open_pages(dir.path(), &info, &open).unwrap();
        assert_eq!(*opened.lock().unwrap(), [dir.path().join("pages-1.img")]);
        assert_eq!(mem.1.load(Ordering::Relaxed), 1, "the header only");
        let mut buf = vec![0u8; 3 * 4096];
        f.read_at(20 * 4096, &mut buf).unwrap();
        assert_eq!(buf, &data[20 * 4096..23 * 4096]);
        assert_eq!(mem.1.load(Ordering::Relaxed), 2, "one read");
        assert!(
            open_pages(dir.path(), &info, &open_local).is_err(),
            "not local"
        );
    }
}
