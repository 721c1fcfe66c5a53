//! Root-file-system changes (the `rootfs-only` snapshot scope) under the gvisor engine: what a
//! running container changed is captured, and a new Pod starts with those changes in place —
//! added, rewritten and deleted files, permissions, a replaced directory — in a multi-container
//! Pod whose containers run as another user.

#[path = "../../../tests/support/busybox_root.rs"]
mod busybox_root;

use std::path::Path;
use std::sync::Arc;

use busybox_root::busybox_root;
use k8s_openapi::api::core::v1::Pod;
use podsnap_engine::{GvisorConfig, GvisorEngine};
use podsnap_image::{ImageConfig, ImageStore};
use podsnap_runtime::PodRunner;

fn image(dir: &Path, store: &ImageStore) {
    let root = busybox_root(
        &dir.join("image-root"),
        &[
            "sh", "cat", "sleep", "ls", "stat", "echo", "rm", "mkdir", "chmod",
        ],
    );
    for d in ["etc/conf.d", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/app.conf"), "mode=cold\n").unwrap();
    std::fs::write(root.join("etc/obsolete"), "old\n").unwrap();
    std::fs::write(root.join("etc/conf.d/a"), "a\n").unwrap();
    let config = ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    store
        .import(&root, Some("localhost/app"), Some(config))
        .unwrap();
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default, uid: UID}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: app
    image: localhost/app
    command: ["/bin/sh", "-c", "echo started > /tmp/log; exec sleep 1000"]
  - name: side
    image: localhost/app
    command: ["/bin/sleep", "1000"]
"#;

fn pod(name: &str, uid: &str) -> Pod {
    serde_saphyr::from_str(&POD.replace("NAME", name).replace("UID", uid)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_captured_and_applied_before_the_new_process_runs() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = podsnap_engine::gvisor::SandboxCleanup(dir.path().join("state/engine"));
    let images = ImageStore::open(dir.path().join("images")).unwrap();
    image(dir.path(), &images);
    let engine = Arc::new(
        GvisorEngine::new(GvisorConfig::new(dir.path().join("state/engine")))
            .await
            .unwrap(),
    );
    let runner = PodRunner::new(engine.clone(), images, &dir.path().join("state")).unwrap();

    let origin_pod = pod("origin", "1");
    let origin = runner.start(&origin_pod).await.unwrap();
    let sh = |script: &str| -> Vec<String> { vec!["/bin/sh".into(), "-c".into(), script.into()] };
    let out = runner
        .exec(
            &origin,
            Some("app"),
            &sh("echo mode=warm > /etc/app.conf && rm /etc/obsolete && rm -r /etc/conf.d \
                 && echo x > /etc/conf.d 2>/dev/null; mkdir -p /data/cache/deep \
                 && echo weights > '/data/cache/deep/model file' && chmod 600 /data/cache/deep/'model file' \
                 && chown 1000 /data/cache/deep/'model file' \
                 && echo scratch > /tmp/scratch"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    let captured = runner
        .capture_rootfs(&origin_pod, &origin, "app")
        .await
        .unwrap();
    assert_eq!(
        captured.diff.changed,
        [
            "/data/cache",
            "/data/cache/deep",
            "/data/cache/deep/model file",
            "/etc/app.conf",
            "/etc/conf.d"
        ]
    );
    assert_eq!(captured.diff.deleted, ["/etc/conf.d", "/etc/obsolete"]);
    assert!(std::fs::metadata(&captured.archive).unwrap().len() > 0);
    let untouched = runner
        .capture_rootfs(&origin_pod, &origin, "side")
        .await
        .unwrap();
    assert!(untouched.diff.is_empty(), "{:?}", untouched.diff);

    // A new Pod gets the changes of `app` before its process starts; `side` stays as built.
    let copy_pod = pod("copy", "2");
    let (archive, deleted) = runner.rootfs_restore_files(&copy_pod, "app").unwrap();
    std::fs::copy(&captured.archive, archive).unwrap();
    std::fs::copy(&captured.deleted, deleted).unwrap();
    captured.remove();
    let copy = runner
        .start_with_rootfs(&copy_pod, &["app".to_owned()])
        .await
        .unwrap();
    let check = runner
        .exec(
            &copy,
            Some("app"),
            &sh(
                "cat /etc/app.conf /etc/conf.d '/data/cache/deep/model file'; \
                 ls /etc/obsolete 2>&1; stat -c '%a %u' '/data/cache/deep/model file'; \
                 ls /tmp",
            ),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("mode=warm\nx\nweights\n"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(
        text.contains("600 1000"),
        "owner and permissions kept: {text}"
    );
    assert!(
        !text.contains("scratch"),
        "/tmp is not the root file system: {text}"
    );
    // The process started after the changes were in place (its own write is there too).
    let log = runner
        .exec(&copy, Some("app"), &sh("cat /tmp/log /etc/app.conf"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout), "started\nmode=warm\n");
    let side = runner
        .exec(&copy, Some("side"), &sh("cat /etc/app.conf"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&side.stdout), "mode=cold\n");
    drop(engine);
}
