//! The demo workload under the gvisor engine: it builds its state, serves HTTP inside its
//! sandbox, and after a checkpoint and a restore into a new sandbox it serves at once from the
//! same memory (same checksum, same build time: it did not start over).

use podsnap_engine::gvisor::SandboxCleanup;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podsnap_engine::{ContainerSpec, Engine, GvisorConfig, GvisorEngine, Network};

fn demo_rootfs(dir: &Path) -> PathBuf {
    let out = dir.join("rootfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/demo-rootfs.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_podsnap-demo-server"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "building the demo root file system");
    out
}

fn spec(id: &str, rootfs: &Path, dir: &Path) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        rootfs: rootfs.to_path_buf(),
        args: vec![
            "/app/podsnap-demo-server".into(),
            "--state-mib=64".into(),
            "--port=8080".into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: (0, 0),
        hostname: id.into(),
        mounts: Vec::new(),
        log_file: dir.join(format!("{id}.log")),
        annotations: BTreeMap::new(),
    }
}

/// GET a path from inside the sandbox (its loopback is its only network here).
async fn get(engine: &GvisorEngine, id: &str, path: &str) -> Option<String> {
    let url = format!("http://127.0.0.1:8080{path}");
    let out = engine
        .exec(id, &["/bin/wget".into(), "-qO-".into(), url], &[])
        .await
        .ok()?;
    (out.exit_code == 0).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_ready(engine: &GvisorEngine, id: &str) -> (String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(body) = get(engine, id, "/").await {
            return (body, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"))
        + key.len()
        + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_again_after_checkpoint_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = SandboxCleanup(dir.path().join("state"));
    let rootfs = demo_rootfs(dir.path());
    let engine = GvisorEngine::new(GvisorConfig::new(dir.path().join("state")))
        .await
        .unwrap();
    let id = format!("demo-{}", std::process::id());
    engine
        .create_sandbox(&id, &spec(&id, &rootfs, dir.path()), &Network::Loopback)
        .await
        .unwrap();
    let (cold, _) = wait_ready(&engine, &id).await;
    assert_eq!(field(&cold, "stateMib"), "64");
    assert_eq!(field(&cold, "hostname"), id);
    let infer = get(&engine, &id, "/infer?x=12345").await.unwrap();

    let image = engine
        .checkpoint(&id, &dir.path().join("image"), false)
        .await
        .unwrap();
    let size: u64 = image.files.iter().map(|(_, s)| s).sum();
    assert!(
        size > 60 << 20,
        "the image holds the 64 MiB state: {size} bytes"
    );
    engine.delete(&id).await.unwrap();

    let restored = format!("{id}-restored");
    engine
        .restore(
            &restored,
            &spec(&restored, &rootfs, dir.path()),
            &Network::Loopback,
            &image.dir,
            &Default::default(),
        )
        .await
        .unwrap();
    let (warm, _) = wait_ready(&engine, &restored).await;
    assert_eq!(field(&warm, "checksum"), field(&cold, "checksum"));
    assert_eq!(
        field(&warm, "builtAtMs"),
        field(&cold, "builtAtMs"),
        "the restored server did not rebuild its state"
    );
    assert_eq!(
        get(&engine, &restored, "/infer?x=12345").await.unwrap(),
        infer
    );
    engine.delete(&restored).await.unwrap();
}
