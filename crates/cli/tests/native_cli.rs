//! `podsnap native checkpoint` / `restore` end to end on a conformance program (root, as in
//! CI): the restored process gets its PID back and passes its own check.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;

#[test]
fn native_checkpoint_and_restore_of_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../native/tests/native/signals.c");
    let bin = dir.path().join("signals");
    assert!(
        Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let result = dir.path().join("result");
    let mut child = Command::new(&bin)
        .arg(&result)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = child.id().to_string();
    let img = dir.path().join("image");
    let out = Command::new(cargo_bin("podsnap"))
        .args(["native", "checkpoint", "--pid", &pid, "--dir"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpointed process"));
    child.wait().unwrap();
    let out = Command::new(cargo_bin("podsnap"))
        .args(["native", "restore", "--dir"])
        .arg(&img)
        .arg("--stdout")
        .arg(dir.path().join("stdout"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored process {pid} ")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    let t0 = Instant::now();
    let verdict = loop {
        if let Ok(s) = std::fs::read_to_string(&result)
            && s.ends_with('\n')
        {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no verdict");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    assert_eq!(verdict.trim(), "ok");

    // Again, lazily: it runs at once, its memory comes behind it, and it passes its check.
    std::fs::remove_file(&result).unwrap();
    let out = Command::new(cargo_bin("podsnap"))
        .args(["native", "restore", "--lazy", "--dir"])
        .arg(&img)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("restored process {pid} ")) && stdout.contains("lazily"),
        "{stdout}"
    );
    assert!(stdout.contains("all memory in after"), "{stdout}");
    Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    let t0 = Instant::now();
    let verdict = loop {
        if let Ok(s) = std::fs::read_to_string(&result)
            && s.ends_with('\n')
        {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no verdict after the lazy restore"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    assert_eq!(verdict.trim(), "ok");

    // A second restore while it may still hold the PID, or a missing image: clear errors.
    let out = Command::new(cargo_bin("podsnap"))
        .args(["native", "restore", "--dir"])
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest.json"));
}
