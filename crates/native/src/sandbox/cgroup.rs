//! A sandbox's cgroup: cgroup v2 where a child cgroup there has `cgroup.freeze` (also on hybrid
//! hosts, where cgroup2 sits at `/sys/fs/cgroup/unified`), else the v1 freezer hierarchy. The
//! engine needs it to freeze and thaw a sandbox as a whole (for checkpoints) and to kill every
//! process of a sandbox or container on delete.
//!
//! Layout: `<base>/<sandbox>` for the sandbox, `<base>/<sandbox>/<container>` for each of its
//! containers (the root container too), so a container can be killed alone and freezing the
//! sandbox freezes them all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Which cgroup interface a sandbox uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupKind {
    /// cgroup v2: `cgroup.freeze`, `cgroup.kill`.
    V2,
    /// The cgroup v1 freezer: `freezer.state`.
    V1Freezer,
}

impl CgroupKind {
    /// In words, for the engine's features.
    pub fn describe(self) -> &'static str {
        match self {
            CgroupKind::V2 => "cgroup v2 (cgroup.freeze, cgroup.kill)",
            CgroupKind::V1Freezer => "cgroup v1 freezer",
        }
    }
}

/// Finds where sandbox cgroups go: `<mount>/<parent>` of cgroup v2 if a cgroup made there can
/// freeze, else of the v1 freezer. `None` when neither works (not root, no cgroup mounts).
pub fn detect(cgroup_root: &Path, parent: &str) -> Option<(CgroupKind, PathBuf)> {
    let v2_mounts = [cgroup_root.to_path_buf(), cgroup_root.join("unified")];
    for mount in v2_mounts {
        // A cgroup2 mount has cgroup.procs at its root and no freezer.state anywhere.
        if !mount.join("cgroup.procs").exists() || mount.join("freezer.state").exists() {
            continue;
        }
        if !mount.join("cgroup.subtree_control").exists() {
            continue;
        }
        let base = mount.join(parent);
        if std::fs::create_dir_all(&base).is_ok() && base.join("cgroup.freeze").exists() {
            return Some((CgroupKind::V2, base));
        }
    }
    let freezer = cgroup_root.join("freezer");
    if freezer.join("cgroup.procs").exists() {
        let base = freezer.join(parent);
        if std::fs::create_dir_all(&base).is_ok() && base.join("freezer.state").exists() {
            return Some((CgroupKind::V1Freezer, base));
        }
    }
    None
}

/// One cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// The interface.
    pub kind: CgroupKind,
    /// Its directory.
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup directory (and its parents).
    pub fn create(kind: CgroupKind, path: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(Self { kind, path })
    }

    /// A child cgroup (not created).
    pub fn child(&self, name: &str) -> Self {
        Self {
            kind: self.kind,
            path: self.path.join(name),
        }
    }

    /// The file a process writes `0` to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Every process in this cgroup and the ones below it.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        collect_pids(&self.path, &mut out);
        out
    }

    /// Freezes every process in it (and below) and waits until the kernel says they are.
    pub fn freeze(&self) -> std::io::Result<()> {
        match self.kind {
            CgroupKind::V2 => std::fs::write(self.path.join("cgroup.freeze"), "1")?,
            CgroupKind::V1Freezer => std::fs::write(self.path.join("freezer.state"), "FROZEN")?,
        }
        self.wait_until(true)
    }

    /// Lets the processes run again.
    pub fn thaw(&self) -> std::io::Result<()> {
        match self.kind {
            CgroupKind::V2 => std::fs::write(self.path.join("cgroup.freeze"), "0")?,
            CgroupKind::V1Freezer => std::fs::write(self.path.join("freezer.state"), "THAWED")?,
        }
        self.wait_until(false)
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        match self.kind {
            CgroupKind::V2 => std::fs::read_to_string(self.path.join("cgroup.events"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1")),
            CgroupKind::V1Freezer => std::fs::read_to_string(self.path.join("freezer.state"))
                .is_ok_and(|t| t.trim() == "FROZEN"),
        }
    }

    fn wait_until(&self, frozen: bool) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_frozen() != frozen {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not become {} within 10 s",
                        self.path.display(),
                        if frozen { "frozen" } else { "thawed" }
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Sends `signal` to every process in it and below.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Kills every process in it and below (`cgroup.kill` where there is one, else SIGKILL to
    /// each until none is left; a frozen cgroup is thawed so the kills take effect) and waits
    /// up to `limit` for them to be gone. Whether none is left.
    pub fn kill_all(&self, limit: Duration) -> bool {
        if !self.exists() {
            return true;
        }
        let deadline = Instant::now() + limit;
        loop {
            let kill_file = self.path.join("cgroup.kill");
            if self.kind == CgroupKind::V2 && kill_file.exists() {
                let _ = std::fs::write(&kill_file, "1");
            } else {
                self.signal_all(Signal::SIGKILL);
            }
            if self.kind == CgroupKind::V1Freezer && self.is_frozen() {
                let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
            }
            if self.pids().is_empty() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the directory and the ones below it (they must hold no processes).
    pub fn remove(&self) -> std::io::Result<()> {
        remove_tree(&self.path)
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out);
        }
    }
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    // A cgroup whose last process just died can stay busy for a moment.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 100 => {
                tracing::trace!(error = %e, dir = %dir.display(), "cgroup still busy");
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_prefers_a_v2_cgroup_that_can_freeze() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Hybrid: v1 freezer plus cgroup2 at unified/ (a plain directory cannot grow
        // cgroup.freeze on mkdir, so the fake takes the freezer).
        std::fs::create_dir_all(root.join("freezer")).unwrap();
        std::fs::write(root.join("freezer/cgroup.procs"), "").unwrap();
        assert_eq!(
            detect(root, "podsnap"),
            None,
            "no freezer.state in a plain dir"
        );
        std::fs::create_dir_all(root.join("freezer/podsnap")).unwrap();
        std::fs::write(root.join("freezer/podsnap/freezer.state"), "THAWED").unwrap();
        assert_eq!(
            detect(root, "podsnap"),
            Some((CgroupKind::V1Freezer, root.join("freezer/podsnap")))
        );
        std::fs::create_dir_all(root.join("unified/podsnap")).unwrap();
        for f in [
            "cgroup.procs",
            "cgroup.subtree_control",
            "podsnap/cgroup.freeze",
        ] {
            std::fs::write(root.join("unified").join(f), "").unwrap();
        }
        assert_eq!(
            detect(root, "podsnap"),
            Some((CgroupKind::V2, root.join("unified/podsnap")))
        );
    }
}
