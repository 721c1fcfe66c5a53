//! `podsnap native checkpoint --repo` / `restore --repo` end to end (root, as in CI): a
//! conformance program's image stored in a local directory repository and restored from it
//! with its memory intact, a second checkpoint uploading far less than the first, damaged
//! chunks and foreign snapshots refused before anything is restored, and `podsnap bench
//! native` printing its table.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;

/// Restores are serialised: each takes a PID that another test's process must not hold.
static SERIAL: Mutex<()> = Mutex::new(());

fn compile(name: &str, out: &Path) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../native/tests/native/{name}.c"));
    let bin = out.join(name);
    let ok = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc runs")
        .success();
    assert!(ok, "compiling {}", src.display());
    bin
}

/// Starts a conformance program and waits for its "ready" line.
fn start(bin: &Path, args: &[&Path]) -> Child {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn podsnap(args: &[&str]) -> Output {
    Command::new(cargo_bin("podsnap"))
        .args(args)
        .output()
        .expect("podsnap runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeeded(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// The bytes a `native checkpoint --repo` reports it uploaded.
fn uploaded_bytes(stdout: &str) -> u64 {
    let after = stdout
        .split("uploaded ")
        .nth(1)
        .unwrap_or_else(|| panic!("no upload figure in {stdout}"));
    let bytes = after.split(" bytes)").next().unwrap();
    bytes.rsplit('(').next().unwrap().parse().unwrap()
}

fn wait_result(path: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_owned();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no verdict");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn native_image_round_trips_through_a_repository_and_a_second_checkpoint_uploads_far_less() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("memory", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[dir.path(), &result]);
    let pid = child.id().to_string();
    let repo = dir.path().join("repo");
    let stage = dir.path().join("stage");

    let first = succeeded(&podsnap(&[
        "native",
        "checkpoint",
        "--pid",
        &pid,
        "--repo",
        s(&repo),
        "--name",
        "first",
        "--leave-running",
        "--tmp-dir",
        s(&stage),
    ]));
    assert!(first.contains("stored snapshot first"), "{first}");
    let second = succeeded(&podsnap(&[
        "native",
        "checkpoint",
        "--pid",
        &pid,
        "--repo",
        s(&repo),
        "--name",
        "second",
        "--tmp-dir",
        s(&stage),
    ]));
    child.wait().unwrap();
    let (one, two) = (uploaded_bytes(&first), uploaded_bytes(&second));
    eprintln!("uploaded {one} bytes, then {two} bytes");
    assert!(
        one > 16 << 20,
        "the 64 MiB pattern was uploaded: {one} bytes"
    );
    assert!(
        two * 20 < one,
        "the second checkpoint of the same process uploads far less: {two} of {one} bytes"
    );
    assert!(empty(&stage), "the staging directories were removed");

    // The snapshot says what it is: native streams, page files in page-aligned chunks.
    let url = format!("file://{}", repo.display());
    let inspect = succeeded(&podsnap(&["repo", "inspect", "--url", &url, "second"]));
    assert!(
        inspect.contains("stream        native/manifest.json"),
        "{inspect}"
    );
    assert!(inspect.contains("page-aligned cdc"), "{inspect}");

    let restored = succeeded(&podsnap(&[
        "native",
        "restore",
        "--repo",
        &url,
        "--name",
        "second",
        "--tmp-dir",
        s(&stage),
        "--stdout",
        s(&dir.path().join("stdout")),
    ]));
    assert!(restored.contains("fetched snapshot second"), "{restored}");
    assert!(
        restored.contains(&format!("restored process {pid} from snapshot second")),
        "{restored}"
    );
    assert!(restored.contains("(fetch "), "{restored}");
    assert!(empty(&stage), "the fetched image was removed");
    Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    let verdict = wait_result(&result);
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    assert_eq!(
        verdict, "ok",
        "the restored process found its memory intact"
    );
}

/// The chunk object of the repository in `repo` with the most bytes.
fn largest_chunk(repo: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for shard in std::fs::read_dir(repo.join("chunks")).unwrap().flatten() {
        for chunk in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let len = chunk.metadata().unwrap().len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, chunk.path()));
            }
        }
    }
    best.expect("chunks were stored").1
}

#[test]
fn damaged_chunks_and_foreign_snapshots_are_refused_before_anything_is_restored() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = compile("memory", dir.path());
    let result = dir.path().join("result");
    let mut child = start(&bin, &[dir.path(), &result]);
    let pid = child.id().to_string();
    let repo = dir.path().join("repo");
    let url = format!("file://{}", repo.display());
    let stage = dir.path().join("stage");

    // A snapshot that is not a native image.
    let plain = dir.path().join("plain.bin");
    std::fs::write(&plain, b"not an image").unwrap();
    succeeded(&podsnap(&[
        "repo",
        "put",
        "--url",
        &url,
        s(&plain),
        "--id",
        "plain",
    ]));
    // Its name is taken: refused before the process is touched.
    let out = podsnap(&[
        "native",
        "checkpoint",
        "--pid",
        &pid,
        "--repo",
        &url,
        "--name",
        "plain",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("exists already"), "{}", text(&out).1);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "still running");

    succeeded(&podsnap(&[
        "native",
        "checkpoint",
        "--pid",
        &pid,
        "--repo",
        &url,
        "--name",
        "image",
        "--tmp-dir",
        s(&stage),
    ]));
    child.wait().unwrap();

    let out = podsnap(&[
        "native",
        "restore",
        "--repo",
        &url,
        "--name",
        "plain",
        "--tmp-dir",
        s(&stage),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(
        stderr.contains("snapshot plain")
            && stderr.contains("not a native checkpoint image")
            && stderr.contains("podsnap native checkpoint --repo"),
        "{stderr}"
    );
    let out = podsnap(&["native", "restore", "--repo", &url, "--name", "missing"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("does not exist"), "{}", text(&out).1);

    // A truncated chunk, then one with a flipped byte: each refused, naming the chunk.
    let chunk = largest_chunk(&repo);
    let good = std::fs::read(&chunk).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    for damaged in [good[..good.len() / 2].to_vec(), flipped] {
        std::fs::write(&chunk, &damaged).unwrap();
        let out = podsnap(&[
            "native",
            "restore",
            "--repo",
            &url,
            "--name",
            "image",
            "--tmp-dir",
            s(&stage),
        ]);
        assert!(!out.status.success());
        let (stdout, stderr) = text(&out);
        assert!(
            stderr.contains("snapshot image")
                && stderr.contains(chunk.file_name().unwrap().to_str().unwrap())
                && stderr.contains("corrupt")
                && stderr.contains("nothing was restored")
                && stderr.contains("podsnap repo rm"),
            "{stderr}"
        );
        assert!(!stdout.contains("restored process"), "{stdout}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "no restore");
        assert!(empty(&stage), "the partial image was removed");
    }
    // Repaired, it restores.
    std::fs::write(&chunk, &good).unwrap();
    succeeded(&podsnap(&[
        "native",
        "restore",
        "--repo",
        &url,
        "--name",
        "image",
        "--tmp-dir",
        s(&stage),
    ]));
    Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    let verdict = wait_result(&result);
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    assert_eq!(verdict, "ok");
}

#[test]
fn bench_native_prints_every_row_and_goal() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let stdout = succeeded(&podsnap(&[
        "bench",
        "native",
        "--sizes",
        "16",
        "--work-dir",
        s(&work),
    ]));
    let rows = [
        "size",
        "memory (page data)",
        "cold start (exec to ready)",
        "cold start to first response",
        "native checkpoint",
        "native eager restore",
        "eager restore to first response",
        "lazy restore to first response",
        "  lazy demand faults (wait p50/p99)",
        "  lazy background fill",
        "prefetch restore to first response",
        "  prefetch demand faults (wait p50/p99)",
        "  prefetch faults fewer than lazy",
        "repository read (streams to a sink)",
        "restore / repository read",
        "checkpoint through the repository",
        "  uploaded",
        "restore through the repository",
        "2nd checkpoint uploaded",
        "restored memory check",
        "runsc cold start",
        "runsc checkpoint",
        "runsc restore",
        "runsc restore to first response",
        "first responses agree (page sample sums)",
        "runsc restored memory check",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for row in rows {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{row} "))),
            "no row {row:?} in\n{stdout}"
        );
    }
    let row = |label: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap()
            .to_string()
    };
    assert!(row("size").trim_end().ends_with("16 MiB"), "{stdout}");
    assert!(row("memory (page data)").trim_end().ends_with("16 MiB"));
    assert!(row("native checkpoint").contains("GB/s"), "{stdout}");
    assert!(
        row("restored memory check").trim_end().ends_with(" ok"),
        "{stdout}"
    );
    // Every first response (cold, eager, lazy, prefetched, and runsc's where it ran) carried
    // the same page sample sum, and the lazy restores brought all memory in.
    let agree = row("first responses agree (page sample sums)");
    assert!(agree.contains(" yes ("), "{stdout}");
    assert!(
        row("  lazy background fill").contains("all in after"),
        "{stdout}"
    );
    assert!(
        row("lazy restore to first response").contains(" ms"),
        "{stdout}"
    );
    let runsc = row("runsc restored memory check");
    assert!(
        runsc.trim_end().ends_with(" ok") || runsc.contains("runsc not installed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("goal: native checkpoint >= 1 GB/s: 16 MiB "),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "goal: native eager restore >= 80% of the repository's read throughput: 16 MiB "
        ),
        "{stdout}"
    );
    for goal in [
        "goal: lazy restore first response within 100 ms of the restore starting: 16 MiB ",
        "goal: lazy background fill >= 1 GB/s from a warm node cache: 16 MiB ",
        "goal: prefetch of the recorded working set >= 90% fewer demand faults: 16 MiB ",
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(goal))
            .unwrap_or_else(|| panic!("no goal {goal:?} in\n{stdout}"));
        assert!(
            line.ends_with(" met") || line.ends_with(" not met"),
            "{stdout}"
        );
    }
    assert!(
        empty(&work),
        "the work directory was cleaned: {:?}",
        std::fs::read_dir(&work).map(|d| d.count())
    );
}
