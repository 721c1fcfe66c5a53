//! A sandbox's working set between the two forms it takes: image addresses per process (what
//! the lazy restore server records and prefetches) and byte offsets per page file (what is
//! stored with a snapshot, and what a repository reader fetches).
//!
//! Pure functions of a process's page index; nothing here reads or writes files.

use std::collections::BTreeMap;

use podsnap_engine::WorkingSet;

use crate::cr::image::{PAGE, PAGES_HEADER, PageRun};

/// The page file of process `pid`, relative to a sandbox image directory.
pub fn page_file_of(processes_dir: &str, pid: i32) -> String {
    format!("{processes_dir}/{}", crate::cr::image::pages_file_name(pid))
}

/// The file offset (header included) of the first saved page in the `block` bytes from
/// `addr`, if any of them were saved.
pub fn offset_of(runs: &[PageRun], addr: u64, block: u64) -> Option<u64> {
    let end = addr.saturating_add(block);
    // The first run that ends after `addr`.
    let i = runs.partition_point(|r| r.addr + r.pages * PAGE <= addr);
    let r = runs.get(i)?;
    let first = addr.max(r.addr);
    (first < end).then(|| PAGES_HEADER + r.offset + (first - r.addr))
}

/// The image address of the saved page at file offset `offset` (header included), if the
/// offset falls in page data.
pub fn address_of(runs: &[PageRun], offset: u64) -> Option<u64> {
    let data = offset.checked_sub(PAGES_HEADER)?;
    // Runs are in address order and their data is laid out in the same order.
    let i = runs.partition_point(|r| r.offset + r.pages * PAGE <= data);
    let r = runs.get(i)?;
    (data >= r.offset).then(|| r.addr + (data - r.offset) / PAGE * PAGE)
}

/// The working set of a restore from the addresses each process faulted on first
/// (`recorded`: image pid → addresses, in order), as page-file offsets.
pub fn to_offsets(
    processes_dir: &str,
    runs: &BTreeMap<i32, Vec<PageRun>>,
    recorded: &BTreeMap<i32, Vec<u64>>,
    block: u64,
) -> WorkingSet {
    let mut files = BTreeMap::new();
    for (pid, addrs) in recorded {
        let Some(runs) = runs.get(pid) else { continue };
        let offsets: Vec<u64> = addrs
            .iter()
            .filter_map(|&a| offset_of(runs, a, block))
            .collect();
        if !offsets.is_empty() {
            files.insert(page_file_of(processes_dir, *pid), offsets);
        }
    }
    WorkingSet { block, files }
}

/// The addresses to prefetch for each process from a stored working set; offsets outside
/// page data, and files of processes not in the image, are left out.
pub fn to_addresses(
    processes_dir: &str,
    runs: &BTreeMap<i32, Vec<PageRun>>,
    set: &WorkingSet,
) -> BTreeMap<i32, Vec<u64>> {
    let mut out = BTreeMap::new();
    for (pid, runs) in runs {
        let Some(offsets) = set.files.get(&page_file_of(processes_dir, *pid)) else {
            continue;
        };
        let addrs: Vec<u64> = offsets
            .iter()
            .filter_map(|&o| address_of(runs, o))
            .collect();
        if !addrs.is_empty() {
            out.insert(*pid, addrs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs() -> Vec<PageRun> {
        vec![
            PageRun {
                addr: 0x10000,
                pages: 4,
                offset: 0,
            },
            PageRun {
                addr: 0x40000,
                pages: 2,
                offset: 4 * PAGE,
            },
        ]
    }

    #[test]
    fn addresses_and_offsets_map_both_ways_through_the_runs() {
        let runs = runs();
        let h = PAGES_HEADER;
        assert_eq!(offset_of(&runs, 0x10000, PAGE), Some(h));
        assert_eq!(offset_of(&runs, 0x12000, PAGE), Some(h + 2 * PAGE));
        // A block before a run starts at the run's first page; one without saved pages has
        // no offset.
        assert_eq!(offset_of(&runs, 0x3f000, 0x2000), Some(h + 4 * PAGE));
        assert_eq!(offset_of(&runs, 0x20000, 0x10000), None);
        assert_eq!(offset_of(&runs, 0x50000, PAGE), None);
        assert_eq!(address_of(&runs, h), Some(0x10000));
        assert_eq!(address_of(&runs, h + 4 * PAGE + 5), Some(0x40000));
        assert_eq!(address_of(&runs, h + 5 * PAGE), Some(0x41000));
        assert_eq!(address_of(&runs, h + 6 * PAGE), None);
        assert_eq!(address_of(&runs, 3), None);
        for r in &runs {
            for p in 0..r.pages {
                let a = r.addr + p * PAGE;
                assert_eq!(
                    address_of(&runs, offset_of(&runs, a, PAGE).unwrap()),
                    Some(a)
                );
            }
        }
    }

    #[test]
    fn a_recorded_working_set_round_trips_through_file_offsets_in_order() {
        let index: BTreeMap<i32, Vec<PageRun>> = [(1, runs()), (7, runs())].into();
        let recorded: BTreeMap<i32, Vec<u64>> = [
            (1, vec![0x41000, 0x10000, 0x20000]),
            (7, vec![0x12000]),
            (9, vec![0x10000]),
        ]
        .into();
        let set = to_offsets("processes", &index, &recorded, PAGE);
        assert_eq!(set.block, PAGE);
        assert_eq!(
            set.files.keys().collect::<Vec<_>>(),
            ["processes/pages-1.img", "processes/pages-7.img"]
        );
        let back = to_addresses("processes", &index, &set);
        assert_eq!(
            back[&1],
            vec![0x41000, 0x10000],
            "order kept, unsaved left out"
        );
        assert_eq!(back[&7], vec![0x12000]);
        assert!(!back.contains_key(&9));
    }
}
