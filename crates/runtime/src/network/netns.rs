//! Network namespaces kept as bind-mounted files (like `ip netns add`), created and entered
//! on short-lived threads of their own: a thread that switches namespaces never runs anything
//! else, and a socket opened there stays in that namespace after the thread ends.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

fn errno(context: &str) -> impl FnOnce(nix::errno::Errno) -> io::Error + '_ {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{context}: {e}"))
}

/// Runs `f` on a new thread and waits for it.
fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("podsnap-netns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// Creates a new network namespace and keeps it at `path` (a bind mount of the namespace;
/// the file is created). Fails if `path` exists.
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = path.to_path_buf();
    let made = on_own_thread(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(errno("creating a network namespace (unshare)"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno("keeping the network namespace (bind mount)"))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Removes the namespace kept at `path`: unmounts and deletes the file (the namespace ends
/// once nothing else uses it). Succeeds when it is already gone.
pub fn remove(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(errno("unmounting the network namespace")(e)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a kept network namespace (a bind mount of one), rather than a plain
/// file left behind.
pub fn is_namespace(path: &Path) -> bool {
    let Ok(stat) = nix::sys::statfs::statfs(path) else {
        return false;
    };
    stat.filesystem_type() == nix::sys::statfs::NSFS_MAGIC
}

/// Runs `f` inside the network namespace at `path`, on a thread of its own.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    on_own_thread(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(errno("entering the network namespace (setns)"))?;
        f()
    })
}

/// A non-blocking TCP listener on `addr` inside the network namespace at `path`.
pub fn bind_tcp(path: &Path, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    run_in(path, move || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// The namespace files in `dir`.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}
