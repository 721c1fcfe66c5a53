//! `podsnap repo …` as a user runs it, against a local directory repository.

use std::process::Output;

use assert_cmd::Command;

fn podsnap(args: &[&str]) -> Output {
    Command::cargo_bin("podsnap")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = podsnap(args);
    assert!(
        out.status.success(),
        "podsnap {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = podsnap(args);
    assert_eq!(out.status.code(), Some(1), "podsnap {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn data(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

#[test]
fn put_get_ls_inspect_verify_rm_gc() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    let input = dir.path().join("input.bin");
    let bytes = data(3 << 20);
    std::fs::write(&input, &bytes).unwrap();

    let id = ok(&[
        "repo",
        "put",
        "--url",
        &url,
        input.to_str().unwrap(),
        "--id",
        "snap-a",
        "--chunking",
        "memory",
    ]);
    assert_eq!(id.trim(), "snap-a");
    let generated = ok(&["repo", "put", "--url", &url, input.to_str().unwrap()]);
    assert_eq!(generated.trim().len(), 36, "a UUID: {generated}");

    let list = ok(&["repo", "ls", "--url", &url]);
    assert!(
        list.contains("snap-a") && list.contains(generated.trim()),
        "{list}"
    );
    let inspect = ok(&["repo", "inspect", "--url", &url, "snap-a"]);
    assert!(
        inspect.contains("stream        data: 3.0 MiB in 3 chunks"),
        "{inspect}"
    );
    let json = ok(&["repo", "inspect", "--url", &url, "snap-a", "--json"]);
    assert!(json.contains("\"format\": \"podsnap.snapshot\""), "{json}");
    let verify = ok(&["repo", "verify", "--url", &url, "snap-a"]);
    assert!(verify.contains("all 3 chunks verified"), "{verify}");

    let output = dir.path().join("out.bin");
    ok(&[
        "repo",
        "get",
        "--url",
        &url,
        "snap-a",
        "-o",
        output.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&output).unwrap(), bytes);
    let to_stdout = podsnap(&["repo", "get", "--url", &url, "snap-a", "-o", "-"]);
    assert_eq!(to_stdout.stdout, bytes);

    ok(&["repo", "rm", "--url", &url, "snap-a", generated.trim()]);
    // A working set left by a snapshot whose manifest is gone (a delete that stopped half-way).
    let orphan = dir.path().join("repo/snapshots/ghost/working-set.json");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, "{}").unwrap();
    let gc = ok(&["repo", "gc", "--url", &url, "--grace", "0"]);
    assert!(
        gc.contains("0 snapshots reference 0 chunks")
            && gc.contains("deleted")
            && gc.contains("removed the recorded working set of deleted snapshot ghost"),
        "{gc}"
    );
    assert!(!orphan.exists());
    let err = fails(&["repo", "get", "--url", &url, "snap-a", "-o", "-"]);
    assert!(err.contains("snapshot snap-a does not exist"), "{err}");
}

#[test]
fn encrypted_repositories_through_a_storage_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.hex");
    ok(&["repo", "keygen", "-o", key.to_str().unwrap()]);
    let err = fails(&["repo", "keygen", "-o", key.to_str().unwrap()]);
    assert!(err.contains("must not exist yet"), "{err}");
    let storage = dir.path().join("storage.yaml");
    std::fs::write(
        &storage,
        format!(
            "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotStorageConfig\nmetadata: {{name: s}}\nspec:\n  snapshotStorageConfig:\n    local: {{directory: {}}}\n  encryption:\n    keyFile: {}\n",
            dir.path().join("repo").display(),
            key.display()
        ),
    )
    .unwrap();
    let input = dir.path().join("secret.txt");
    std::fs::write(&input, b"token=abc\n".repeat(1000)).unwrap();
    ok(&[
        "repo",
        "put",
        "--storage",
        storage.to_str().unwrap(),
        input.to_str().unwrap(),
        "--id",
        "enc",
    ]);
    let inspect = ok(&[
        "repo",
        "inspect",
        "--storage",
        storage.to_str().unwrap(),
        "enc",
    ]);
    assert!(inspect.contains("encrypted     yes"), "{inspect}");
    let url = format!("file://{}", dir.path().join("repo").display());
    let err = fails(&["repo", "get", "--url", &url, "enc", "-o", "-"]);
    assert!(
        err.contains("is encrypted") && err.contains("--key-file"),
        "{err}"
    );
    let out = podsnap(&[
        "repo",
        "get",
        "--url",
        &url,
        "--key-file",
        key.to_str().unwrap(),
        "enc",
        "-o",
        "-",
    ]);
    assert_eq!(out.stdout, b"token=abc\n".repeat(1000));
}

#[test]
fn bad_targets_are_clear_errors() {
    let err = fails(&["repo", "ls"]);
    assert!(err.contains("--url URL or --storage FILE"), "{err}");
    let err = fails(&["repo", "ls", "--url", "ftp://x"]);
    assert!(err.contains("unknown scheme `ftp`"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&[
        "repo",
        "ls",
        "--url",
        &format!("file://{}", dir.path().display()),
    ]);
    assert!(err.contains("no podsnap repository"), "{err}");
    let err = fails(&[
        "repo",
        "gc",
        "--url",
        &format!("file://{}", dir.path().display()),
        "--grace",
        "soon",
    ]);
    assert!(err.contains("--grace soon"), "{err}");
}

#[test]
fn a_put_killed_mid_upload_leaves_no_snapshot() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("podsnap"))
        .args([
            "repo",
            "put",
            "--url",
            &url,
            "-",
            "--id",
            "killed",
            "--chunking",
            "memory",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data(6 << 20)).unwrap();
    stdin.flush().unwrap();
    let chunks = dir.path().join("repo/chunks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&chunks).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no chunk was uploaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let list = ok(&["repo", "ls", "--url", &url]);
    assert!(!list.contains("killed"), "{list}");
    let err = fails(&["repo", "get", "--url", &url, "killed", "-o", "-"]);
    assert!(err.contains("does not exist"), "{err}");
    let gc = ok(&["repo", "gc", "--url", &url, "--grace", "0"]);
    assert!(
        gc.contains("sweep postponed: snapshot writes in progress (killed)"),
        "{gc}"
    );
}
