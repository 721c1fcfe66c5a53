//! Corrupt page data against the kernel (as root): a C program (`tests/native/pattern.c`)
//! holds a few MiB of anonymous memory with a pattern and is checkpointed; the image restores
//! as taken (its page files read through an opener of the test's own), then one byte in the
//! middle of its page data is flipped: an eager restore fails naming the page file and the
//! corrupt block, before the process runs; a lazy one kills the process with the reason, at
//! the first failed read. The manifest's block checksums must match the data's length. The
//! harness is the conformance suite's.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use podsnap_native::cr::image::{self, PAGE, PAGES_HEADER};
use podsnap_native::cr::lazy::LazyError;
use podsnap_native::cr::{self, CheckpointOptions, CrError, RestoreOptions};

#[path = "support/harness.rs"]
mod harness;
use harness::*;

/// Whether process `pid` is gone (reaped), waiting up to 10 s; reaps it if it is this
/// process's child and was killed.
fn gone(pid: i32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let mut st = 0;
        // SAFETY: waitpid writes the live `st`; kill has no memory arguments.
        unsafe {
            let r = libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL);
            if r == pid {
                assert!(
                    libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
                    "{pid} ended with status {st:#x}, not killed"
                );
            }
            if libc::kill(pid, 0) == -1 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_corrupt_page_block_fails_an_eager_restore_and_kills_a_lazy_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("pattern", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[&result]);
    let pid = child.id() as i32;
    let img = dir.path().join("image");
    let cs = cr::checkpoint(pid, &img, &CheckpointOptions::default()).expect("checkpoint");
    assert!(!child.wait().unwrap().success(), "the original was killed");
    assert!(cs.page_bytes >= 4 << 20, "{} bytes saved", cs.page_bytes);

    // As taken, it restores, its page file opened by the opener given.
    let opened = Arc::new(AtomicUsize::new(0));
    let opts = RestoreOptions {
        open_pages: Some(Arc::new({
            let opened = opened.clone();
            move |p: &Path| {
                opened.fetch_add(1, Ordering::Relaxed);
                image::open_local(p)
            }
        })),
        ..Default::default()
    };
    assert!(
        format!("{opts:?}").contains("open_pages: \"custom\""),
        "{opts:?}"
    );
    let rs = cr::restore(&img, &opts).expect("restore of the image as taken");
    assert_eq!(rs.pid, pid, "same PID");
    assert_eq!(
        opened.load(Ordering::Relaxed),
        1,
        "one page file, opened once"
    );
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let verdict = wait_result(&result);
    kill_and_reap(pid);
    assert_eq!(verdict, "ok", "after the restore of the image as taken");
    std::fs::remove_file(&result).unwrap();

    let (manifest, _) = image::read_image(&img).unwrap();
    let pages = &manifest.processes[0].pages;
    assert_eq!(pages.block_size, image::PAGES_CHECK_BLOCK);
    assert_eq!(
        pages.block_crc32.len() as u64,
        pages.data_len.div_ceil(pages.block_size)
    );
    let page_file = img.join(&pages.file);

    // A manifest whose block checksums do not fit the data, or of version 2, is refused.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&page_file, other.join(&pages.file)).unwrap();
    let mut m = manifest.clone();
    m.processes[0].pages.block_crc32.pop();
    image::write_manifest(&other, &m).unwrap();
    let err = image::read_image_with(&other, &image::open_local).unwrap_err();
    assert!(matches!(err, CrError::BadImage { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&pages.file) && msg.contains("block checksums"),
        "{msg}"
    );
    let mut m = manifest.clone();
    m.version = 2;
    image::write_manifest(&other, &m).unwrap();
    let msg = image::read_image(&other).unwrap_err().to_string();
    assert!(
        msg.contains("format version 2") && msg.contains("take the checkpoint again"),
        "{msg}"
    );

    // One byte flipped in the middle of the pattern's pages.
    let run = pages.runs.iter().max_by_key(|r| r.pages).unwrap();
    assert!(
        run.pages * PAGE >= 4 << 20,
        "the pattern is one run: {run:?}"
    );
    let at = run.offset + run.pages * PAGE / 2 + 777;
    let block = at / pages.block_size;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&page_file)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, PAGES_HEADER + at).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, PAGES_HEADER + at).unwrap();
    drop(file);
    let says_corrupt = |msg: &str| {
        msg.contains(&page_file.display().to_string())
            && msg.contains(&format!("block {block} "))
            && msg.contains("checksum")
            && msg.contains("corrupt")
    };

    // (a) Eagerly: the restore fails, and what it had made is gone.
    let err = cr::restore(&img, &RestoreOptions::default()).expect_err("a corrupt image");
    let msg = err.to_string();
    eprintln!("eager: {msg}");
    assert!(says_corrupt(&msg), "{msg}");
    assert!(gone(pid), "the half-restored process {pid} is gone");
    assert!(!result.exists());

    // (b) Lazily: the process is killed when the block is read, at the first try — after it
    // runs, or, when the fill reaches the block first, while the tree is still being
    // restored (then the restore fails with the server's reason).
    let msg = match cr::restore_lazily(&img, None, &RestoreOptions::default(), Default::default()) {
        Ok((rs, lazy)) => {
            assert_eq!(rs.pid, pid, "same PID");
            let err = lazy.wait().expect_err("the lazy restore fails");
            assert!(
                matches!(err, LazyError::Source { pid: p, tries: 1, .. } if p == pid),
                "{err:?}"
            );
            err.to_string()
        }
        Err(err) => err.to_string(),
    };
    eprintln!("lazy: {msg}");
    assert!(
        says_corrupt(&msg) && msg.contains("killed") && msg.contains("after 1 tries"),
        "{msg}"
    );
    assert!(gone(pid), "the lazily restored process {pid} was killed");
    assert!(!result.exists(), "it never checked its memory");
}
