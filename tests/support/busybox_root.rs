//! Shared by the tests of several crates, each of which includes this file with `#[path]`: a
//! root file system holding Debian's static busybox (busybox-static, installed by
//! scripts/setup.sh).

use std::path::{Path, PathBuf};

/// Makes `root` a root file system with `/bin/busybox`, a link to it per applet in `/bin`, and
/// an empty `/tmp`; returns `root`.
pub fn busybox_root(root: &Path, applets: &[&str]) -> PathBuf {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed by scripts/setup.sh");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root.to_path_buf()
}
