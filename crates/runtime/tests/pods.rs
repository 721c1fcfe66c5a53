//! Pods from Kubernetes YAML, run under the gvisor engine with images from the local store:
//! init containers, an emptyDir shared with the main container, env expansion, exec, logs,
//! stopping; and failures that leave nothing behind.

#[path = "../../../tests/support/busybox_root.rs"]
mod busybox_root;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use busybox_root::busybox_root;
use k8s_openapi::api::core::v1::Pod;
use podsnap_engine::{Engine, GvisorConfig, GvisorEngine};
use podsnap_image::{ImageConfig, ImageStore};
use podsnap_runtime::{PodRunner, RuntimeError};

fn busybox_image(dir: &Path, store: &ImageStore) {
    let root = busybox_root(
        &dir.join("busybox-root"),
        &["sh", "httpd", "wget", "echo", "cat", "sleep", "hostname"],
    );
    let config = ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    store
        .import(&root, Some("localhost/busybox"), Some(config))
        .unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    runner: PodRunner,
    engine: Arc<GvisorEngine>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        podsnap_engine::gvisor::delete_all_sandboxes(&self.dir.path().join("state/engine"));
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::open(dir.path().join("images")).unwrap();
    busybox_image(dir.path(), &images);
    let engine = Arc::new(
        GvisorEngine::new(GvisorConfig::new(dir.path().join("state/engine")))
            .await
            .unwrap(),
    );
    let runner = PodRunner::new(engine.clone(), images, &dir.path().join("state")).unwrap();
    Setup {
        dir,
        runner,
        engine,
    }
}

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, uid: 1234}
spec:
  volumes:
  - name: site
    emptyDir: {}
  initContainers:
  - name: render
    image: localhost/busybox
    command: ["/bin/sh", "-c", "echo hello from $(POD_NAME) > /site/index.html"]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts: [{name: site, mountPath: /site}]
  containers:
  - name: server
    image: localhost/busybox
    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/site"]
    volumeMounts: [{name: site, mountPath: /site, readOnly: true}]
  - name: sidecar
    image: localhost/busybox
    args: ["-c", "echo sidecar up; exec sleep 1000"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_init_containers_and_a_shared_volume_serves() {
    let s = setup().await;
    let running = s.runner.start(&pod(WEB)).await.unwrap();
    assert_eq!(running.containers.len(), 2);
    let get = vec![
        "/bin/wget".to_string(),
        "-qO-".into(),
        "http://127.0.0.1:8080/index.html".into(),
    ];
    let mut body = String::new();
    for _ in 0..100 {
        let out = s
            .runner
            .exec(&running, Some("sidecar"), &get)
            .await
            .unwrap();
        if out.exit_code == 0 {
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        body.trim(),
        "hello from web",
        "the sidecar reaches the server over the Pod's loopback"
    );
    let hostname = s
        .runner
        .exec(&running, None, &["/bin/hostname".into()])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "web");
    let log = std::fs::read_to_string(running.log_path("sidecar")).unwrap();
    assert!(log.contains("sidecar up"), "{log}");
    s.runner
        .stop(&running, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(!s.engine.list().await.unwrap().contains(&running.sandbox_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_container_stops_the_pod_and_cleans_up() {
    let s = setup().await;
    let failing = WEB
        .replace(
            "echo hello from $(POD_NAME) > /site/index.html",
            "echo cannot render; exit 7",
        )
        .replace("uid: 1234", "uid: 2345");
    let err = s.runner.start(&pod(&failing)).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::InitFailed { exit_code: 7, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("cannot render"), "{err}");
    assert!(
        s.engine.list().await.unwrap().is_empty(),
        "nothing is left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pods_fail_before_anything_starts() {
    let s = setup().await;
    // Distinct uids: runsc's control sockets are named by sandbox id across the whole node.
    let missing_image = WEB
        .replace(
            "image: localhost/busybox\n    args",
            "image: localhost/nope\n    args",
        )
        .replace("uid: 1234", "uid: 3456");
    let err = s.runner.start(&pod(&missing_image)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("localhost/nope:latest is not in the store"),
        "{err}"
    );
    let bad_volume = WEB
        .replace(
            "mountPath: /site, readOnly: true",
            "mountPath: /site, readOnly: true}, {name: ghost, mountPath: /g",
        )
        .replace("uid: 1234", "uid: 4567");
    let err = s.runner.start(&pod(&bad_volume)).await.unwrap_err();
    assert!(err.to_string().contains("no volume named `ghost`"), "{err}");
    assert!(s.engine.list().await.unwrap().is_empty());
    let _: PathBuf = s.dir.path().to_path_buf();
}
