//! The `podsnap` binary, as a user runs it.

use std::io::Write;
use std::process::Output;

use assert_cmd::Command;

fn podsnap(args: &[&str]) -> Output {
    Command::cargo_bin("podsnap")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn crds_prints_four_definitions() {
    let out = podsnap(&["crds"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 4);
    for name in [
        "podsnapshotstorageconfigs.podsnap.dev",
        "podsnapshotpolicies.podsnap.dev",
        "podsnapshots.podsnap.dev",
        "podsnapshotmanualtriggers.podsnap.dev",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name}");
    }
}

#[test]
fn validate_accepts_good_files_and_reports_bad_ones() {
    let out = podsnap(&[
        "validate",
        "-f",
        &example("policy.yaml"),
        "-f",
        &example("gke-manifests.yaml"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).matches("is valid").count(), 4);

    let out = podsnap(&["validate", "-f", &example("invalid.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("5 problems found"), "{err}");
    assert!(err.contains("line 16: spec.triggerConfig.type"), "{err}");
    assert!(
        err.contains("fix: use one of `workload`, `manual`"),
        "{err}"
    );
}

#[test]
fn validate_reads_standard_input() {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("podsnap"))
        .args(["validate", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read_to_string(example("storage-local.yaml")).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("<stdin>: document 1 (line 1): PodSnapshotStorageConfig"));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = podsnap(&["validate", "-f", "/nonexistent/x.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read /nonexistent/x.yaml"));
}

#[test]
fn distill_prints_the_spec_and_a_stable_hash() {
    let out = podsnap(&["distill", "-f", &example("pod.yaml")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\"image\": \"localhost/podsnap-demo:latest\""));
    assert!(text.contains("--state-mib=256"), "args are distilled");
    assert!(!text.contains("LOG_LEVEL"), "env is not distilled");
    let hash_line = text.lines().find(|l| l.starts_with("sha256: ")).unwrap();
    let only = podsnap(&["distill", "-f", &example("pod.yaml"), "--hash-only"]);
    assert_eq!(
        stdout(&only).trim(),
        hash_line.trim_start_matches("sha256: ")
    );
    assert_eq!(stdout(&only).trim().len(), 64);
}

#[test]
fn distill_of_a_deployment_matches_its_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pod = std::fs::read_to_string(example("pod.yaml")).unwrap();
    let pod_value: serde_json::Value = serde_saphyr::from_str(&pod).unwrap();
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "slow-server"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "slow-server"}},
            "template": {"metadata": pod_value["metadata"], "spec": pod_value["spec"]}
        }
    });
    let path = dir.path().join("deployment.json");
    std::fs::write(&path, deployment.to_string()).unwrap();
    let from_deployment = podsnap(&["distill", "-f", path.to_str().unwrap(), "--hash-only"]);
    assert!(
        from_deployment.status.success(),
        "{}",
        stderr(&from_deployment)
    );
    let from_pod = podsnap(&["distill", "-f", &example("pod.yaml"), "--hash-only"]);
    assert_eq!(stdout(&from_deployment), stdout(&from_pod));
}

#[test]
fn distill_without_pods_says_so() {
    let out = podsnap(&["distill", "-f", &example("policy.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("holds no Pod or Deployment"));
}

#[test]
fn node_info_describes_this_machine() {
    let out = podsnap(&["node-info", "--engine", "native", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fp: podsnap_api::NodeFingerprint = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fp.architecture, std::env::consts::ARCH);
    assert_eq!(fp.engine.name, "native");
    assert_eq!(fp.engine.version, fp.kernel_release);
    let text = stdout(&podsnap(&["node-info", "--engine", "native"]));
    assert!(text.contains("machine series"), "{text}");
}

#[test]
fn serve_without_runsc_says_how_to_install_it_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let state = dir.path().join("state");
    let out = Command::cargo_bin("podsnap")
        .unwrap()
        .env("PATH", &empty_path)
        .args(["serve", "--pod-network", "none"])
        .arg(format!("--state-dir={}", state.display()))
        .arg(format!("--images={}", dir.path().join("images").display()))
        .arg(format!(
            "--socket={}",
            dir.path().join("agent.sock").display()
        ))
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("runsc was not found"), "{err}");
    assert!(err.contains("apt-get install -y runsc"), "{err}");
    assert!(
        !dir.path().join("agent.sock").exists(),
        "no API socket is left"
    );
}

#[test]
fn node_info_for_gvisor_uses_the_installed_runsc() {
    let out = podsnap(&["node-info", "--engine", "gvisor", "-o", "yaml"]);
    match podsnap_node::probe_runsc(None) {
        Some(runsc) => {
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(stdout(&out).contains(&runsc.version));
        }
        None => {
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("apt-get install -y runsc"));
        }
    }
}

#[test]
fn help_explains_every_command() {
    let text = stdout(&podsnap(&["--help"]));
    for command in ["crds", "validate", "distill", "node-info"] {
        assert!(text.contains(command), "{command}");
    }
}

#[test]
fn images_import_list_pull_errors_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    let rootfs = rootfs.to_str().unwrap();

    let out = podsnap(&[
        "image",
        "import",
        rootfs,
        "--name",
        "localhost/tool",
        "--cmd",
        "/bin/tool",
        "--store",
        store,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("imported localhost/tool:latest"));

    let out = podsnap(&["image", "ls", "--store", store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("LAYERS"), "{text}");
    assert!(text.contains("localhost/tool:latest"), "{text}");

    // Nothing listens on port 9 of 127.0.0.1: the error names the registry and what to check.
    let out = podsnap(&[
        "image",
        "pull",
        "127.0.0.1:9/team/app:v1",
        "--insecure",
        "--store",
        store,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the registry 127.0.0.1:9"),
        "{}",
        stderr(&out)
    );

    let out = podsnap(&["image", "rm", "localhost/tool", "--store", store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = podsnap(&["image", "ls", "--store", store]);
    assert!(!stdout(&out).contains("localhost/tool"));
    let layers = std::fs::read_dir(dir.path().join("store/layers/sha256")).unwrap();
    assert_eq!(layers.count(), 0, "its layer is gone");
}
