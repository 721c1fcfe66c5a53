//! Progress of the agent's long operations (uploads and downloads of snapshots) in its log:
//! a line every few seconds with bytes, rate and time left, and one at the end.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use podsnap_repo::Progress;

/// How often a running operation logs.
const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    label: String,
    total: Option<u64>,
    done: u64,
    started: Option<Instant>,
    logged: Option<Instant>,
}

/// [`Progress`] as `tracing` lines, for `what` (e.g. "snapshot 1234 upload").
pub struct LogProgress {
    what: String,
    state: Mutex<State>,
}

impl LogProgress {
    /// Progress of `what`.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            state: Mutex::new(State::default()),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl Progress for LogProgress {
    fn start(&self, label: &str, total: Option<u64>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        *state = State {
            label: label.to_owned(),
            total,
            done: 0,
            started: Some(now),
            logged: Some(now),
        };
    }

    fn advance(&self, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done += bytes;
        let now = Instant::now();
        if state.logged.is_some_and(|t| now - t < INTERVAL) {
            return;
        }
        state.logged = Some(now);
        let elapsed = state.started.map_or(0.0, |t| (now - t).as_secs_f64());
        let rate = if elapsed > 0.0 {
            mib(state.done) / elapsed
        } else {
            0.0
        };
        match state.total {
            Some(total) if total > 0 => {
                let left = if rate > 0.0 {
                    mib(total.saturating_sub(state.done)) / rate
                } else {
                    0.0
                };
                tracing::info!(
                    "{} {}: {:.0} of {:.0} MiB ({:.0}%), {rate:.0} MiB/s, about {left:.0} s left",
                    self.what,
                    state.label,
                    mib(state.done),
                    mib(total),
                    100.0 * state.done as f64 / total as f64
                );
            }
            _ => tracing::info!(
                "{} {}: {:.0} MiB, {rate:.0} MiB/s",
                self.what,
                state.label,
                mib(state.done)
            ),
        }
    }

    fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = state.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        tracing::info!(
            "{} {}: {:.0} MiB in {elapsed:.1} s",
            self.what,
            state.label,
            mib(state.done)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_add_up_across_advances_and_restart_with_each_stream() {
        let progress = LogProgress::new("test");
        progress.start("a", Some(10));
        progress.advance(4);
        progress.advance(6);
        assert_eq!(progress.state.lock().unwrap().done, 10);
        progress.finish();
        progress.start("b", None);
        assert_eq!(progress.state.lock().unwrap().done, 0);
        assert_eq!(progress.state.lock().unwrap().label, "b");
    }
}
