//! The workload side of podsnap's snapshot contract, for Rust programs (the same protocol as
//! `clients/podsnap-checkpoint.sh` and `clients/podsnap_checkpoint.py`).
//!
//! Call [`checkpoint`] once the program has warmed up, before it opens connections to the
//! outside: podsnap snapshots the Pod while the call waits, and the call returns
//! [`Outcome::Resume`] in the original Pod, [`Outcome::Restore`] in every Pod restored from the
//! snapshot (re-read the environment with [`spec_environ`], re-seed random generators, refresh
//! credentials), [`Outcome::Error`] if the snapshot failed, and [`Outcome::NotUnderPodsnap`] at
//! once when the program does not run under podsnap. It depends on nothing but the standard
//! library and must stay that way: it is linked into workloads.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory podsnap mounts into every container.
pub const CONTRACT_DIR: &str = "/podsnap";

/// How a [`checkpoint`] call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This is the original process; a snapshot was taken and it goes on.
    Resume,
    /// This is a copy restored from the snapshot.
    Restore,
    /// The snapshot failed; the process goes on.
    Error,
    /// Not running under podsnap: nothing happened.
    NotUnderPodsnap,
}

/// Asks for a snapshot of this Pod and waits for the outcome (see the crate docs).
pub fn checkpoint() -> Outcome {
    checkpoint_in(Path::new(
        &std::env::var("PODSNAP_DIR").unwrap_or_else(|_| CONTRACT_DIR.to_owned()),
    ))
}

/// [`checkpoint`] against the contract directory `dir`.
pub fn checkpoint_in(dir: &Path) -> Outcome {
    if !dir.is_dir() {
        return Outcome::NotUnderPodsnap;
    }
    let result = dir.join("result");
    let _ = std::fs::remove_file(&result);
    if std::fs::write(dir.join("trigger"), b"1\n").is_err() {
        return Outcome::Error;
    }
    loop {
        if let Ok(text) = std::fs::read_to_string(&result) {
            match text.trim() {
                "resume" => return Outcome::Resume,
                "restore" => return Outcome::Restore,
                "error" => return Outcome::Error,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Pod's current environment (after a restore: the new Pod's), from `spec_environ`.
pub fn spec_environ() -> Vec<(String, String)> {
    let path =
        PathBuf::from(std::env::var("PODSNAP_DIR").unwrap_or_else(|_| CONTRACT_DIR.to_owned()))
            .join("spec_environ");
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            text.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_podsnap_nothing_happens() {
        assert_eq!(
            checkpoint_in(Path::new("/nonexistent/podsnap")),
            Outcome::NotUnderPodsnap
        );
    }

    #[test]
    fn the_agents_answer_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let agent = std::thread::spawn(move || {
            // The agent answers once the trigger holds `1`.
            while std::fs::read_to_string(path.join("trigger"))
                .map(|t| t.trim() != "1")
                .unwrap_or(true)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(path.join("result"), "restore\n").unwrap();
        });
        assert_eq!(checkpoint_in(dir.path()), Outcome::Restore);
        agent.join().unwrap();
    }
}
