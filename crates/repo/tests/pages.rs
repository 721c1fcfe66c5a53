//! Page files through a repository with page-aligned content-defined chunking: they round
//! trip, and a second page file whose pages shifted finds nearly all its chunks stored.

mod common;

use common::*;
use podsnap_repo::Chunking;

const PAGE: usize = 4096;

/// A page file: a 16-byte header, then `pages` pages of which one in eight is zero and the
/// rest pseudo-random (`seed` picks them), the page at `index` being `page(index)`.
fn page_file(pages: &[u64]) -> Vec<u8> {
    let mut out = b"PSNPAGES\x01\0\0\0\0\x10\0\0".to_vec();
    for &p in pages {
        if p % 8 == 0 {
            out.extend(std::iter::repeat_n(0u8, PAGE));
        } else {
            out.extend(random_bytes(PAGE, p));
        }
    }
    out
}

#[tokio::test]
async fn shifted_pages_dedup_with_page_cdc_and_not_with_fixed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), None);
    let first: Vec<u64> = (1..=4000).collect();
    // The second checkpoint: three pages inserted near the start, one removed in the middle,
    // one changed near the end.
    let mut second = first.clone();
    second.splice(10..10, [100_001, 100_002, 100_003]);
    second.remove(2000);
    second[3500] = 100_004;
    let (a, b) = (page_file(&first), page_file(&second));
    let size = b.len() as u64;

    for (chunking, tag) in [(Chunking::pages(16), "cdc"), (Chunking::MEMORY, "fixed")] {
        let (manifest, one) = write_snapshot(
            &repo,
            &format!("{tag}-1"),
            &[("native/pages.img", chunking, a.clone())],
        )
        .await;
        let stream = &manifest.streams[0];
        assert_eq!(stream.chunking, chunking);
        if tag == "cdc" {
            assert_eq!(stream.chunks[0].len, 16, "the header is a chunk of its own");
            assert!(
                stream.chunks[1..stream.chunks.len() - 1]
                    .iter()
                    .all(|c| (c.len as usize).is_multiple_of(PAGE)),
                "page-aligned"
            );
        }
        assert_eq!(
            read_back(&repo, &format!("{tag}-1"), "native/pages.img").await,
            a
        );
        let (_, two) = write_snapshot(
            &repo,
            &format!("{tag}-2"),
            &[("native/pages.img", chunking, b.clone())],
        )
        .await;
        assert_eq!(
            read_back(&repo, &format!("{tag}-2"), "native/pages.img").await,
            b
        );
        let share = two.new_bytes as f64 / size as f64;
        eprintln!(
            "{tag}: first upload {} bytes, second {} bytes ({:.1}% of {size})",
            one.new_bytes,
            two.new_bytes,
            100.0 * share
        );
        if tag == "cdc" {
            // Three places changed: at most three chunks of at most 2 MiB each, plus the tail.
            assert!(two.new_bytes < 8 << 20, "{}", two.new_bytes);
            assert!(share < 0.6, "{share}");
        } else {
            assert!(share > 0.8, "fixed chunks all shift: {share}");
        }
    }
}
