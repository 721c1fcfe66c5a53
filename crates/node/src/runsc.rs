//! Finding the installed runsc and its version.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The installed runsc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunscInfo {
    /// Path of the binary.
    pub path: PathBuf,
    /// Its release, e.g. `release-20221219.0`.
    pub version: String,
}

/// Looks for `runsc` (the given path, or on `PATH`) and asks it for its version.
/// `None` when it is not installed or does not answer.
pub fn probe_runsc(binary: Option<&Path>) -> Option<RunscInfo> {
    let path = match binary {
        Some(p) => p.to_path_buf(),
        None => find_on_path("runsc")?,
    };
    let output = Command::new(&path).arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_runsc_version(&text)?;
    Some(RunscInfo { path, version })
}

/// Reads the version from `runsc --version` output (`runsc version release-20221219.0`).
pub fn parse_runsc_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("runsc version "))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_line() {
        let out = "runsc version release-20221219.0\nspec: 1.0.2-dev\n";
        assert_eq!(
            parse_runsc_version(out).as_deref(),
            Some("release-20221219.0")
        );
        assert_eq!(parse_runsc_version("something else\n"), None);
        assert_eq!(parse_runsc_version("runsc version \n"), None);
    }

    #[test]
    fn a_missing_binary_is_none() {
        assert_eq!(probe_runsc(Some(Path::new("/nonexistent/runsc"))), None);
    }
}
