//! Shared by the engine tests of `podsnap-engine` and `podsnap-native` (included with
//! `#[path]`): the spec of a container that runs a shell script.

use std::collections::BTreeMap;
use std::path::Path;

use podsnap_engine::ContainerSpec;

/// Container `id` running `/bin/sh -c script` as root in `rootfs`, logging to `dir/ID.log`.
pub fn shell_spec(id: &str, rootfs: &Path, dir: &Path, script: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        rootfs: rootfs.to_path_buf(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: (0, 0),
        hostname: "test-pod".into(),
        mounts: Vec::new(),
        log_file: dir.join(format!("{id}.log")),
        annotations: BTreeMap::new(),
    }
}
