//! What a container's first process does between `fork` and `exec`, planned in the agent.
//!
//! Everything the child needs is made here — C strings, file descriptors opened on the host
//! (bind sources, namespaces), the mount steps in order — so that the child only makes
//! system calls ([`super::child`]). Planning needs no privileges and is unit-tested.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use podsnap_engine::{Mount, MountKind};

/// A container that cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A path that cannot be used.
    #[error("{what} `{path}` {problem}")]
    Path {
        /// Which path.
        what: String,
        /// The path.
        path: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A host file could not be opened.
    #[error("opening {path} for the container: {source}")]
    Open {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// One step of the root file system set-up.
#[derive(Debug)]
pub enum Op {
    /// `mount(2)`.
    Mount {
        /// Source (`overlay`, `proc`, `tmpfs`, ...).
        source: Option<CString>,
        /// Target.
        target: CString,
        /// File system type.
        fstype: Option<CString>,
        /// Flags.
        flags: MsFlags,
        /// Options.
        data: Option<CString>,
    },
    /// Opens a host path (`O_PATH`) into `plan.sources[slot]`, in the container's new mount
    /// namespace before `pivot_root` (a bind source must be a mount of that namespace).
    OpenSource {
        /// The host path.
        path: CString,
        /// Where the descriptor goes.
        slot: usize,
    },
    /// Bind-mounts what [`Op::OpenSource`] opened (through `/proc/self/fd/N`, so that host
    /// paths were resolved on the host and targets are resolved inside the container's root).
    BindSource {
        /// The opened source.
        slot: usize,
        /// Target inside the container.
        target: CString,
    },
    /// Makes a bind mount read-only.
    RemountReadOnly {
        /// The mount point.
        target: CString,
    },
    /// `mkdir`, where missing.
    Mkdir(CString),
    /// An empty file, where missing (a target for a file bind).
    Touch(CString),
    /// A symbolic link, where missing.
    Symlink {
        /// What it points to.
        target: CString,
        /// The link.
        link: CString,
    },
    /// `chdir`.
    Chdir(CString),
    /// `pivot_root(".", OLD_ROOT)` and `chdir("/")`: the old root stays reachable (bind
    /// sources must be in the mount namespace) until [`Op::DetachOldRoot`].
    PivotRoot,
    /// Detaches the old root and removes its mount point.
    DetachOldRoot,
}

/// `CLONE_NEWTIME`, which nix does not name.
pub const CLONE_NEWTIME: CloneFlags = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);

/// A namespace to enter, opened from `/proc/PID/ns/*` or a kept namespace file.
#[derive(Debug)]
pub struct JoinNs {
    /// The namespace file.
    pub fd: OwnedFd,
    /// Its type.
    pub kind: CloneFlags,
}

/// Everything the forked child does, in order. See [`super::child::run`].
#[derive(Debug, Default)]
pub struct ChildPlan {
    /// Where the child reports its pid and failures (the write end of a pipe).
    pub info: Option<OwnedFd>,
    /// Supervise: `setsid`, wait for the container's process and write its exit code to
    /// `exit_tmp`, renamed to `exit_file`. Without it (exec), the forked parent passes the
    /// command's exit status on, and the command dies with it.
    pub exit_file: Option<(CString, CString)>,
    /// Unshare the pid and time namespaces before forking the container's process.
    pub new_pid_and_time: bool,
    /// What to write to `/proc/self/timens_offsets` after unsharing the time namespace.
    pub timens_offsets: Option<CString>,
    /// Namespaces the supervisor enters before forking (pid, time: they apply to children).
    pub join_before_fork: Vec<JoinNs>,
    /// `cgroup.procs` to write `0` to before the namespaces below.
    pub cgroup_outer: Option<CString>,
    /// Namespaces the container's process enters, in order.
    pub join: Vec<JoinNs>,
    /// Namespaces it creates after joining.
    pub unshare: Option<CloneFlags>,
    /// `cgroup.procs` to write `0` to after the namespaces (the container's own cgroup).
    pub cgroup_inner: Option<CString>,
    /// Host name to set.
    pub hostname: Option<String>,
    /// Bring the loopback device up (a fresh network namespace).
    pub loopback_up: bool,
    /// Root file system steps.
    pub ops: Vec<Op>,
    /// Descriptors opened by [`Op::OpenSource`] (as many `None`s as sources, made before the
    /// fork so that the child does not allocate).
    pub sources: Vec<Option<OwnedFd>>,
    /// `fchdir` to it and `chroot(".")` (entering a running container's root).
    pub chroot: Option<OwnedFd>,
    /// Capabilities kept in the bounding set (bit per capability); the rest are dropped.
    pub keep_caps: u64,
    /// User and group to run as.
    pub user: (u32, u32),
    /// Working directory in the end.
    pub cwd: Option<CString>,
    /// Instead of becoming the program: keep every privilege, close every fd but 0–2 and wait
    /// (`pause`) as a seed for a restore, which replaces this process with a saved one.
    pub seed: bool,
}

impl ChildPlan {
    /// Makes the slots [`Op::OpenSource`] fills (so that the child does not allocate).
    pub fn make_source_slots(&mut self) {
        let n = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::OpenSource { .. }))
            .count();
        self.sources = (0..n).map(|_| None).collect();
    }
}

/// The capabilities a Kubernetes container gets by default (containerd's list), as bits.
pub fn default_capabilities() -> u64 {
    const CAPS: &[u32] = &[
        0,  // CHOWN
        1,  // DAC_OVERRIDE
        4,  // FSETID
        3,  // FOWNER
        27, // MKNOD
        13, // NET_RAW
        6,  // SETGID
        7,  // SETUID
        31, // SETFCAP
        8,  // SETPCAP
        10, // NET_BIND_SERVICE
        18, // SYS_CHROOT
        5,  // KILL
        29, // AUDIT_WRITE
    ];
    CAPS.iter().fold(0, |bits, c| bits | (1u64 << c))
}

/// Where a container's overlay lives on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayDirs {
    /// The image's root (read-only, shared).
    pub lower: PathBuf,
    /// The container's changes.
    pub upper: PathBuf,
    /// overlayfs's work directory (same file system as `upper`).
    pub work: PathBuf,
    /// Where the overlay is mounted (inside the container's mount namespace only).
    pub merged: PathBuf,
}

impl OverlayDirs {
    /// The overlay mount options.
    pub fn options(&self) -> Result<String, PlanError> {
        for (what, p) in [
            ("the root file system", &self.lower),
            ("the upper directory", &self.upper),
            ("the work directory", &self.work),
        ] {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) || !p.is_absolute() {
                return Err(PlanError::Path {
                    what: what.into(),
                    path: s.into_owned(),
                    problem:
                        "cannot be used by overlayfs: use an absolute path without `,`, `:` or `\\`"
                            .into(),
                });
            }
        }
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        ))
    }
}

fn cstr(s: impl AsRef<[u8]>) -> Result<CString, PlanError> {
    CString::new(s.as_ref().to_vec()).map_err(|_| PlanError::Path {
        what: "a path".into(),
        path: String::from_utf8_lossy(s.as_ref()).into_owned(),
        problem: "contains a NUL byte".into(),
    })
}

fn path_cstr(p: &Path) -> Result<CString, PlanError> {
    cstr(p.as_os_str().as_encoded_bytes())
}

/// A path inside the container: absolute, without `..`; its normal components.
fn container_path(what: &str, dest: &str) -> Result<Vec<String>, PlanError> {
    let path = Path::new(dest);
    let bad = |problem: &str| PlanError::Path {
        what: what.into(),
        path: dest.into(),
        problem: problem.into(),
    };
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => return Err(bad("must not contain `..`")),
        }
    }
    if parts.is_empty() {
        return Err(bad("cannot be `/`"));
    }
    Ok(parts)
}

/// Steps that make every directory of `parts` and, for the last, a directory or (for a file
/// bind) an empty file; the full path.
fn make_path(ops: &mut Vec<Op>, parts: &[String], file: bool) -> Result<CString, PlanError> {
    let mut path = String::new();
    for (i, p) in parts.iter().enumerate() {
        path.push('/');
        path.push_str(p);
        let c = cstr(&path)?;
        if i + 1 == parts.len() && file {
            ops.push(Op::Touch(c));
        } else {
            ops.push(Op::Mkdir(c));
        }
    }
    cstr(&path)
}

/// Bind sources, opened before `pivot_root`.
#[derive(Default)]
struct Sources(Vec<Op>);

impl Sources {
    fn bind(&mut self, ops: &mut Vec<Op>, source: &Path, target: CString) -> Result<(), PlanError> {
        if let Err(e) = std::fs::metadata(source) {
            return Err(PlanError::Open {
                path: source.to_path_buf(),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)),
            });
        }
        let slot = self.0.len();
        self.0.push(Op::OpenSource {
            path: path_cstr(source)?,
            slot,
        });
        ops.push(Op::BindSource { slot, target });
        Ok(())
    }
}

fn mount_op(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Op, PlanError> {
    Ok(Op::Mount {
        source: Some(cstr(source)?),
        target: cstr(target)?,
        fstype: Some(cstr(fstype)?),
        flags,
        data: data.map(cstr).transpose()?,
    })
}

/// Where the host's root stays during the set-up (relative to the new root).
pub const OLD_ROOT: &str = ".podsnap-old-root";

/// The devices every container gets (bound from the host's).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The root file system steps of a container: the overlay, `pivot_root`, `/proc`, a small
/// `/dev`, `/sys` read-only, then `mounts` in order, and the working directory `cwd` where it
/// is missing.
pub fn rootfs_ops(
    overlay: &OverlayDirs,
    mounts: &[Mount],
    cwd: &str,
) -> Result<Vec<Op>, PlanError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut sources = Sources::default();
    let pre = vec![
        // Nothing mounted in the container propagates back to the host.
        Op::Mount {
            source: None,
            target: cstr("/")?,
            fstype: None,
            flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            data: None,
        },
        Op::Mount {
            source: Some(cstr("overlay")?),
            target: path_cstr(&overlay.merged)?,
            fstype: Some(cstr("overlay")?),
            flags: MsFlags::empty(),
            data: Some(cstr(overlay.options()?)?),
        },
    ];
    let mut ops = vec![
        Op::Mkdir(cstr("/proc")?),
        mount_op("proc", "/proc", "proc", nosuid_nodev_noexec, None)?,
        Op::Mkdir(cstr("/dev")?),
        mount_op(
            "tmpfs",
            "/dev",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?,
    ];
    for dev in DEVICES {
        let target = cstr(format!("/dev/{dev}"))?;
        ops.push(Op::Touch(target.clone()));
        sources.bind(&mut ops, &Path::new("/dev").join(dev), target)?;
    }
    ops.push(Op::Mkdir(cstr("/dev/pts")?));
    ops.push(mount_op(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?);
    ops.push(Op::Symlink {
        target: cstr("pts/ptmx")?,
        link: cstr("/dev/ptmx")?,
    });
    ops.push(Op::Mkdir(cstr("/dev/shm")?));
    ops.push(mount_op(
        "shm",
        "/dev/shm",
        "tmpfs",
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )?);
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink {
            target: cstr(target)?,
            link: cstr(link)?,
        });
    }
    ops.push(Op::Mkdir(cstr("/sys")?));
    ops.push(mount_op(
        "sysfs",
        "/sys",
        "sysfs",
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    )?);
    for m in mounts {
        let parts = container_path("mount destination", &m.destination)?;
        match m.kind {
            MountKind::Bind => {
                let is_file = std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
                let target = make_path(&mut ops, &parts, is_file)?;
                sources.bind(&mut ops, &m.source, target.clone())?;
                if m.read_only {
                    ops.push(Op::RemountReadOnly { target });
                }
            }
            MountKind::Tmpfs => {
                let target = make_path(&mut ops, &parts, false)?;
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if m.read_only {
                    flags |= MsFlags::MS_RDONLY;
                }
                ops.push(Op::Mount {
                    source: Some(cstr("tmpfs")?),
                    target,
                    fstype: Some(cstr("tmpfs")?),
                    flags,
                    data: Some(cstr("mode=1777")?),
                });
            }
        }
    }
    if cwd != "/" {
        let parts = container_path("workingDir", cwd)?;
        make_path(&mut ops, &parts, false)?;
    }
    ops.push(Op::DetachOldRoot);
    // The overlay, the sources opened, pivot_root, then the rest.
    let mut all = pre;
    all.extend(sources.0);
    all.push(Op::Chdir(path_cstr(&overlay.merged)?));
    all.push(Op::Mkdir(cstr(OLD_ROOT)?));
    all.push(Op::PivotRoot);
    all.extend(ops);
    Ok(all)
}

impl Op {
    /// The step in words (for errors).
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Op::Mount {
                source,
                target,
                fstype,
                data,
                ..
            } => format!(
                "mounting {} ({}) at {}{}",
                source.as_ref().map_or("-".into(), s),
                fstype.as_ref().map_or("-".into(), s),
                s(target),
                data.as_ref()
                    .map_or(String::new(), |d| format!(" with {}", s(d)))
            ),
            Op::OpenSource { path, .. } => format!("opening {} on the host", s(path)),
            Op::BindSource { target, .. } => format!("bind-mounting onto {}", s(target)),
            Op::RemountReadOnly { target } => format!("making {} read-only", s(target)),
            Op::Mkdir(p) => format!("creating the directory {}", s(p)),
            Op::Touch(p) => format!("creating the file {}", s(p)),
            Op::Symlink { link, .. } => format!("creating the link {}", s(link)),
            Op::Chdir(p) => format!("changing into {}", s(p)),
            Op::PivotRoot => "pivot_root into the container's root file system".into(),
            Op::DetachOldRoot => "detaching the host's root file system".into(),
        }
    }
}

/// Splits `KEY=VALUE` pairs for `Command::envs`.
pub fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

/// A C string of `s` (for plans built by the engine).
pub fn c(s: impl AsRef<[u8]>) -> Result<CString, PlanError> {
    cstr(s)
}

/// A C string of a host path.
pub fn c_path(p: &Path) -> Result<CString, PlanError> {
    path_cstr(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay() -> OverlayDirs {
        OverlayDirs {
            lower: "/img/root".into(),
            upper: "/state/c/upper".into(),
            work: "/state/c/work".into(),
            merged: "/state/c/merged".into(),
        }
    }

    #[test]
    fn the_root_is_an_overlay_then_pivoted_then_the_standard_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let mounts = vec![
            Mount {
                destination: "/data/sub".into(),
                source: dir.path().to_path_buf(),
                kind: MountKind::Bind,
                read_only: true,
            },
            Mount {
                destination: "/etc/hosts".into(),
                source: file,
                kind: MountKind::Bind,
                read_only: false,
            },
            Mount {
                destination: "/scratch".into(),
                source: PathBuf::new(),
                kind: MountKind::Tmpfs,
                read_only: false,
            },
        ];
        let ops = rootfs_ops(&overlay(), &mounts, "/").unwrap();
        let words: Vec<String> = ops.iter().map(Op::describe).collect();
        assert_eq!(
            words[1],
            "mounting overlay (overlay) at /state/c/merged with lowerdir=/img/root,upperdir=/state/c/upper,workdir=/state/c/work"
        );
        let pivot = words
            .iter()
            .position(|w| w.starts_with("pivot_root"))
            .unwrap();
        let proc_ = words
            .iter()
            .position(|w| w.contains("(proc) at /proc"))
            .unwrap();
        assert!(pivot < proc_, "{words:#?}");
        assert!(words.contains(&"bind-mounting onto /dev/null".to_owned()));
        assert!(words.iter().any(|w| w.contains("(sysfs) at /sys")));
        let tail: Vec<&str> = words[words.len() - 10..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "creating the directory /data",
                "creating the directory /data/sub",
                "bind-mounting onto /data/sub",
                "making /data/sub read-only",
                "creating the directory /etc",
                "creating the file /etc/hosts",
                "bind-mounting onto /etc/hosts",
                "creating the directory /scratch",
                "mounting tmpfs (tmpfs) at /scratch with mode=1777",
                "detaching the host's root file system",
            ]
        );
    }

    #[test]
    fn bad_paths_are_refused_with_the_fix() {
        let mounts = vec![Mount {
            destination: "/a/../../etc".into(),
            source: "/tmp".into(),
            kind: MountKind::Bind,
            read_only: false,
        }];
        let e = rootfs_ops(&overlay(), &mounts, "/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not contain `..`"), "{e}");
        let mut o = overlay();
        o.lower = "/img/a,b".into();
        let e = o.options().unwrap_err().to_string();
        assert!(e.contains("cannot be used by overlayfs"), "{e}");
        assert_eq!(
            env_pairs(&["A=1=2".into(), "B".into()]),
            [("A".into(), "1=2".into()), ("B".into(), String::new())]
        );
    }
}
