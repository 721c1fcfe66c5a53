//! Page-aligned content-defined chunking, for page files (a process's saved memory: a short
//! header, then whole pages).
//!
//! Fixed chunks lose dedup as soon as one page is inserted or removed ahead of the rest (every
//! later chunk shifts); byte-level CDC (FastCDC) resynchronises, but cuts inside pages, so a
//! chunk is not a set of whole pages. This chunker does both: the header (when there is one)
//! is a chunk of its own, and after it cuts fall only between pages — at `header + k * page` —
//! chosen by each page's own content. After adding a page to the current chunk, the chunk is
//! cut when it holds at least `min` bytes and the page's [`page_hash`] is divisible by
//! `avg/page - min/page + 1`, or when it holds `max` bytes. A chunk therefore averages about
//! `avg` bytes, and an inserted, removed or changed page changes only the chunks around it:
//! cuts after it are found again at the first page-chosen cut past `min`.
//!
//! The cut rule and [`page_hash`] are part of the format (`{"kind": "pageCdc", …}` in a
//! manifest): readers do not need them (a manifest lists its chunks), but a writer that cut
//! differently would find fewer of the chunks already stored.

use std::io::{self, Read};

/// Parameters of page-aligned CDC, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCdcParams {
    /// Length of the header before the first page (its own chunk; 0 for none).
    pub header: u32,
    /// Page size: cuts fall only at `header + k * page`.
    pub page: u32,
    /// Smallest chunk (a multiple of `page`), except the last.
    pub min: u32,
    /// Average chunk (a multiple of `page`).
    pub avg: u32,
    /// Largest chunk (a multiple of `page`).
    pub max: u32,
}

impl PageCdcParams {
    /// Checks the parameters: `page` a power of two from 4 KiB to 1 MiB, `min`, `avg` and
    /// `max` multiples of it with `page <= min <= avg <= max <= max_chunk`, and a header of at
    /// most `max_chunk` bytes.
    pub fn validate(&self, max_chunk: usize) -> Result<(), String> {
        let Self {
            header,
            page,
            min,
            avg,
            max,
        } = *self;
        if !page.is_power_of_two() || !(4096..=1 << 20).contains(&page) {
            return Err(format!(
                "page CDC page size {page} must be a power of two from 4096 to 1048576"
            ));
        }
        if [min, avg, max].iter().any(|s| s % page != 0)
            || !(page <= min && min <= avg && avg <= max)
            || max as usize > max_chunk
        {
            return Err(format!(
                "page CDC sizes {min}/{avg}/{max} must be multiples of the page size {page} with \
                 page <= min <= avg <= max <= {max_chunk}"
            ));
        }
        if header as usize > max_chunk {
            return Err(format!(
                "page CDC header length {header} is more than a chunk may hold ({max_chunk})"
            ));
        }
        Ok(())
    }
}

/// The hash of one page that decides cuts: four interleaved multiply-rotate lanes over the
/// page's little-endian 64-bit words (a tail shorter than 32 bytes is folded in byte by byte),
/// combined and finished with the 64-bit MurmurHash3 mixer. Fast (several GB/s on one core)
/// and well spread in its low bits; it is no cryptographic hash and needs none.
pub fn page_hash(page: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B9_7F4A_7C15;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut lanes: [u64; 4] = [
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    ];
    let mut blocks = page.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            *lane = (*lane ^ w).wrapping_mul(P1).rotate_left(31);
        }
    }
    let mut h = lanes[0].rotate_left(1)
        ^ lanes[1].rotate_left(7)
        ^ lanes[2].rotate_left(12)
        ^ lanes[3].rotate_left(18);
    for &b in blocks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(P2);
    }
    h ^= page.len() as u64;
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Decides, page after page, where a chunk ends (the cut rule of the module docs).
#[derive(Clone, Debug)]
pub struct PageCutter {
    min_pages: u64,
    max_pages: u64,
    divisor: u64,
    pages: u64,
}

impl PageCutter {
    /// A cutter at the start of a chunk. The parameters must be valid.
    pub fn new(params: &PageCdcParams) -> Self {
        let page = u64::from(params.page);
        let min_pages = u64::from(params.min) / page;
        let avg_pages = u64::from(params.avg) / page;
        Self {
            min_pages,
            max_pages: u64::from(params.max) / page,
            divisor: avg_pages - min_pages + 1,
            pages: 0,
        }
    }

    /// Adds one whole page to the current chunk; `true` when the chunk ends after it (the
    /// cutter then starts the next chunk).
    pub fn push(&mut self, page: &[u8]) -> bool {
        self.pages += 1;
        let cut = self.pages >= self.max_pages
            || (self.pages >= self.min_pages && page_hash(page).is_multiple_of(self.divisor));
        if cut {
            self.pages = 0;
        }
        cut
    }
}

/// Where page-aligned CDC cuts `data`: the end offset of each chunk, in order (the last is
/// `data.len()`; none for empty data). The reference for [`cut_stream`].
pub fn page_cdc_cuts(data: &[u8], params: &PageCdcParams) -> Vec<usize> {
    let mut cuts = Vec::new();
    let header = (params.header as usize).min(data.len());
    if header > 0 {
        cuts.push(header);
    }
    let page = params.page as usize;
    let mut cutter = PageCutter::new(params);
    let mut at = header;
    while at < data.len() {
        let end = (at + page).min(data.len());
        if end - at < page {
            // A partial page at the end: it ends the last chunk.
            break;
        }
        if cutter.push(&data[at..end]) {
            cuts.push(end);
        }
        at = end;
    }
    if cuts.last().copied().unwrap_or(0) < data.len() {
        cuts.push(data.len());
    }
    cuts
}

/// Reads `source` to its end and hands its chunks, in order, to `emit` (which returns `false`
/// to stop early). Cuts exactly where [`page_cdc_cuts`] would on the whole data, whatever
/// sizes the reads return.
pub fn cut_stream<R: Read>(
    source: R,
    params: &PageCdcParams,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> io::Result<()> {
    let mut source = io::BufReader::with_capacity(1 << 20, source);
    let header = params.header as usize;
    if header > 0 {
        let mut buf = vec![0u8; header];
        let n = fill(&mut source, &mut buf)?;
        buf.truncate(n);
        if n == 0 || !emit(buf) || n < header {
            return Ok(());
        }
    }
    let page = params.page as usize;
    let max = params.max as usize;
    let mut cutter = PageCutter::new(params);
    let mut chunk: Vec<u8> = Vec::with_capacity(max);
    loop {
        let start = chunk.len();
        chunk.resize(start + page, 0);
        let n = fill(&mut source, &mut chunk[start..])?;
        chunk.truncate(start + n);
        if n < page {
            // The end (a partial page, if any, ends the last chunk).
            if !chunk.is_empty() {
                emit(chunk);
            }
            return Ok(());
        }
        if cutter.push(&chunk[start..]) {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(max));
            if !emit(full) {
                return Ok(());
            }
        }
    }
}

/// Reads until `buf` is full or the source ends; the bytes read.
fn fill<R: Read>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const PAGE: usize = 4096;

    /// Small sizes so tests see many chunks: 4..16..64 pages.
    const SMALL: PageCdcParams = PageCdcParams {
        header: 16,
        page: 4096,
        min: 4 * 4096,
        avg: 16 * 4096,
        max: 64 * 4096,
    };

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn page(&mut self) -> Vec<u8> {
            (0..PAGE / 8)
                .flat_map(|_| self.next().to_le_bytes())
                .collect()
        }
    }

    /// A header and `pages` pages: random ones, with runs of zero pages and repeated pages.
    fn image(header: usize, pages: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut out: Vec<u8> = (0..header).map(|i| b"PSNPAGES"[i % 8]).collect();
        let repeated = rng.page();
        for i in 0..pages {
            match i % 40 {
                0..5 => out.extend(std::iter::repeat_n(0u8, PAGE)),
                5..8 => out.extend_from_slice(&repeated),
                _ => out.extend(rng.page()),
            }
        }
        out
    }

    fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut start = 0;
        cuts.iter()
            .map(|&end| {
                let c = &data[start..end];
                start = end;
                c
            })
            .collect()
    }

    /// Every property the format promises, for one cutting of `data`.
    fn check_invariants(data: &[u8], p: &PageCdcParams, cuts: &[usize]) {
        let header = (p.header as usize).min(data.len());
        assert_eq!(cuts.is_empty(), data.is_empty());
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "increasing");
        if let Some(&last) = cuts.last() {
            assert_eq!(last, data.len(), "the chunks cover the data");
        }
        if header > 0 {
            assert_eq!(cuts[0], header, "the header is a chunk of its own");
        }
        let body: Vec<usize> = cuts.iter().copied().filter(|&c| c > header).collect();
        let mut start = header;
        for (i, &end) in body.iter().enumerate() {
            let last = i == body.len() - 1;
            let len = end - start;
            if !last || end < data.len() || (data.len() - header).is_multiple_of(p.page as usize) {
                assert_eq!(
                    (end - header) % p.page as usize,
                    0,
                    "cut {end} is page-aligned"
                );
            }
            assert!(len <= p.max as usize, "chunk of {len} bytes > max");
            if !last {
                assert!(len >= p.min as usize, "chunk of {len} bytes < min");
            }
            start = end;
        }
    }

    fn streamed(data: &[u8], p: &PageCdcParams, read_size: usize) -> Vec<Vec<u8>> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(self.1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        cut_stream(Dribble(data, read_size), p, |c| {
            out.push(c);
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn cuts_are_page_aligned_within_min_and_max_and_cover_the_data() {
        for seed in 1..20 {
            for pages in [0, 1, 3, 4, 5, 63, 64, 65, 500, 2000] {
                let data = image(16, pages, seed);
                let cuts = page_cdc_cuts(&data, &SMALL);
                check_invariants(&data, &SMALL, &cuts);
            }
        }
    }

    #[test]
    fn chunks_average_near_avg() {
        let data = image(16, 20_000, 7);
        let cuts = page_cdc_cuts(&data, &SMALL);
        let mean = (data.len() - 16) as f64 / (cuts.len() - 1) as f64;
        let avg = f64::from(SMALL.avg);
        assert!(
            (0.75 * avg..1.25 * avg).contains(&mean),
            "mean chunk {mean} bytes, avg {avg}"
        );
    }

    #[test]
    fn max_cuts_runs_of_identical_pages() {
        // Identical pages hash alike: either every page is a cut point (chunks of min) or none
        // is (chunks of max).
        let p = SMALL;
        for fill in 0..=255u8 {
            let mut data = vec![0u8; 16];
            data.extend(std::iter::repeat_n(fill, PAGE * 300));
            let cuts = page_cdc_cuts(&data, &p);
            check_invariants(&data, &p, &cuts);
            let lens: HashSet<usize> = cuts.windows(2).map(|w| w[1] - w[0]).collect();
            let expected = if page_hash(&data[16..16 + PAGE]).is_multiple_of(13) {
                p.min as usize
            } else {
                p.max as usize
            };
            assert!(lens.contains(&expected), "{fill}: {lens:?}");
        }
    }

    #[test]
    fn streaming_cuts_exactly_like_the_reference() {
        for seed in 1..6 {
            for pages in [0, 1, 70, 700] {
                for tail in [0, 1, 100, 4095] {
                    let mut data = image(16, pages, seed);
                    data.extend(std::iter::repeat_n(7u8, tail));
                    let cuts = page_cdc_cuts(&data, &SMALL);
                    let expected: Vec<&[u8]> = chunks(&data, &cuts);
                    for read_size in [1, 7, 4096, 5000, 1 << 20] {
                        if read_size == 1 && pages > 70 {
                            continue;
                        }
                        let got = streamed(&data, &SMALL, read_size);
                        assert_eq!(got.len(), expected.len());
                        assert!(got.iter().zip(&expected).all(|(a, b)| a == b));
                    }
                }
            }
        }
        // A stream shorter than its header is one chunk.
        assert_eq!(streamed(b"PSNP", &SMALL, 4096), vec![b"PSNP".to_vec()]);
        // No header: cuts start at 0.
        let p = PageCdcParams { header: 0, ..SMALL };
        let data = image(0, 300, 3);
        let cuts = page_cdc_cuts(&data, &p);
        check_invariants(&data, &p, &cuts);
        assert_eq!(streamed(&data, &p, 3000), chunks(&data, &cuts));
    }

    #[test]
    fn emit_returning_false_stops() {
        let data = image(16, 500, 2);
        let mut n = 0;
        cut_stream(&data[..], &SMALL, |_| {
            n += 1;
            n < 3
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    /// The chunks of `data`, as a set.
    fn chunk_set<'a>(data: &'a [u8], p: &PageCdcParams) -> HashSet<&'a [u8]> {
        chunks(data, &page_cdc_cuts(data, p)).into_iter().collect()
    }

    /// Chunks of `after` that `old` does not have, and their bytes.
    fn new_chunks(old: &HashSet<&[u8]>, after: &[u8], p: &PageCdcParams) -> (usize, usize) {
        let fresh: Vec<&[u8]> = chunks(after, &page_cdc_cuts(after, p))
            .into_iter()
            .filter(|c| !old.contains(c))
            .collect();
        (fresh.len(), fresh.iter().map(|c| c.len()).sum())
    }

    #[test]
    fn one_inserted_removed_or_changed_page_changes_only_nearby_chunks() {
        let p = SMALL;
        let mut worst = 0;
        for seed in 1..6u64 {
            let data = image(16, 1500, seed);
            let old = chunk_set(&data, &p);
            let mut rng = Rng(seed * 31 + 1);
            for _ in 0..25 {
                let at = 16 + (rng.next() as usize % 1500) * PAGE;
                let page = rng.page();
                let mut inserted = data.clone();
                inserted.splice(at..at, page.iter().copied());
                let mut removed = data.clone();
                removed.drain(at..at + PAGE);
                let mut changed = data.clone();
                changed[at..at + PAGE].copy_from_slice(&page);
                for after in [&inserted, &removed, &changed] {
                    let (count, bytes) = new_chunks(&old, after, &p);
                    // The chunk with the change, and at most the next two when a cut moved.
                    assert!(count <= 3, "{count} new chunks");
                    assert!(bytes <= 3 * p.max as usize);
                    worst = worst.max(count);
                }
            }
        }
        assert!(worst >= 1);
    }

    #[test]
    fn fixed_chunks_would_not_survive_a_shift() {
        // The reason this chunker exists: one page inserted near the start.
        let data = image(16, 3000, 9);
        let mut inserted = data.clone();
        inserted.splice(16 + PAGE..16 + PAGE, vec![1u8; PAGE]);
        let (count, _) = new_chunks(&chunk_set(&data, &SMALL), &inserted, &SMALL);
        assert!(count <= 3);
        let fixed = |d: &[u8]| -> HashSet<Vec<u8>> {
            d[16..].chunks(64 * PAGE).map(<[u8]>::to_vec).collect()
        };
        let old = fixed(&data);
        let moved = fixed(&inserted)
            .iter()
            .filter(|c| !old.contains(*c))
            .count();
        assert!(moved > 40, "fixed chunking: {moved} chunks changed");
    }

    #[test]
    fn page_hash_spreads_and_depends_on_every_word() {
        let mut rng = Rng(5);
        let page = rng.page();
        let base = page_hash(&page);
        for word in 0..PAGE / 8 {
            let mut other = page.clone();
            other[word * 8] ^= 1;
            assert_ne!(page_hash(&other), base, "word {word}");
        }
        // Low bits are spread: divisibility by 13 near 1/13 over many pages.
        let hits = (0..13_000)
            .filter(|_| page_hash(&rng.page()).is_multiple_of(13))
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert_ne!(page_hash(&[0u8; PAGE]), 0);
        // Stable across versions: a change here changes where chunks are cut.
        assert_eq!(page_hash(&[0u8; PAGE]), page_hash(&vec![0u8; PAGE]));
        assert_eq!(page_hash(b""), page_hash(&[]));
    }

    #[test]
    fn parameters_are_checked() {
        assert!(SMALL.validate(64 << 20).is_ok());
        let bad = [
            PageCdcParams {
                page: 1000,
                ..SMALL
            },
            PageCdcParams {
                page: 2048,
                ..SMALL
            },
            PageCdcParams {
                min: 4096 * 3 + 1,
                ..SMALL
            },
            PageCdcParams {
                min: 32 * 4096,
                ..SMALL
            },
            PageCdcParams {
                max: 8 * 4096,
                ..SMALL
            },
            PageCdcParams { min: 0, ..SMALL },
            PageCdcParams {
                header: 65 << 20,
                ..SMALL
            },
        ];
        for p in bad {
            assert!(p.validate(64 << 20).is_err(), "{p:?}");
        }
        assert!(SMALL.validate(128 << 10).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_parameters_and_data_keep_the_invariants(
            header in 0usize..64,
            min_pages in 1u32..8,
            extra_avg in 0u32..16,
            extra_max in 0u32..32,
            pages in 0usize..400,
            tail in 0usize..4096,
            seed in 1u64..1000,
        ) {
            let p = PageCdcParams {
                header: header as u32,
                page: 4096,
                min: min_pages * 4096,
                avg: (min_pages + extra_avg) * 4096,
                max: (min_pages + extra_avg + extra_max) * 4096,
            };
            prop_assert!(p.validate(64 << 20).is_ok());
            let mut data = image(header, pages, seed);
            data.extend(std::iter::repeat_n(3u8, tail));
            let cuts = page_cdc_cuts(&data, &p);
            check_invariants(&data, &p, &cuts);
            prop_assert_eq!(streamed(&data, &p, 10_000), chunks(&data, &cuts));
        }
    }
}
