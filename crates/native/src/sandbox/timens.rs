//! Time namespace offsets: how far a sandbox's `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` are
//! shifted from the host's. A fresh sandbox runs with zero offsets; a restored one gets the
//! offsets that make its clocks continue from the snapshot (written to
//! `/proc/self/timens_offsets` after `unshare(CLONE_NEWTIME)` and before the first child).

use serde::{Deserialize, Serialize};

/// Offsets of a sandbox's clocks against the host's, in nanoseconds (may be negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeOffsets {
    /// Added to `CLOCK_MONOTONIC` (and its raw and coarse variants).
    pub monotonic_ns: i64,
    /// Added to `CLOCK_BOOTTIME`.
    pub boottime_ns: i64,
}

impl TimeOffsets {
    /// Whether both offsets are zero (then nothing needs to be written).
    pub fn is_zero(&self) -> bool {
        self.monotonic_ns == 0 && self.boottime_ns == 0
    }

    /// The text for `/proc/PID/timens_offsets`: one `<clock> <secs> <nanos>` line per clock,
    /// with `0 <= nanos < 1e9` (the seconds carry the sign).
    pub fn proc_text(&self) -> String {
        let line = |clock: &str, ns: i64| {
            let secs = ns.div_euclid(1_000_000_000);
            let nanos = ns.rem_euclid(1_000_000_000);
            format!("{clock} {secs} {nanos}\n")
        };
        format!(
            "{}{}",
            line("monotonic", self.monotonic_ns),
            line("boottime", self.boottime_ns)
        )
    }

    /// The offsets that make a clock that read `saved_ns` at the snapshot read on from there,
    /// given that the host's clock reads `now_ns` at the restore.
    pub fn continuing(
        saved_monotonic_ns: i64,
        now_monotonic_ns: i64,
        saved_boottime_ns: i64,
        now_boottime_ns: i64,
    ) -> Self {
        Self {
            monotonic_ns: saved_monotonic_ns - now_monotonic_ns,
            boottime_ns: saved_boottime_ns - now_boottime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_written_with_positive_nanoseconds() {
        let o = TimeOffsets {
            monotonic_ns: 86_400_000_000_001,
            boottime_ns: -1,
        };
        assert_eq!(o.proc_text(), "monotonic 86400 1\nboottime -1 999999999\n");
        assert!(TimeOffsets::default().is_zero());
        let c = TimeOffsets::continuing(100, 40, 10, 20);
        assert_eq!((c.monotonic_ns, c.boottime_ns), (60, -10));
    }
}
