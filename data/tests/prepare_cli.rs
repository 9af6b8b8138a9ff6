//! The `prepare` binary: its lines on success, and one `error:` line and exit code 1 on failure.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `prepare INPUT --out OUT` with the default (byte) tokeniser.
fn run_prepare(input: &Path, out: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prepare"));
    command.arg(input).arg("--out").arg(out);
    command.output().expect("the prepare binary runs")
}

#[test]
fn prints_plan_shards_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    fs::create_dir(&docs).unwrap();
    fs::write(docs.join("a.txt"), "x".repeat(1000)).unwrap();
    fs::write(docs.join("b.txt"), "y".repeat(500)).unwrap();
    let output = run_prepare(&docs, &dir.path().join("shards"));
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("prepare | 2 documents | 1,500 bytes | tokenizer byte"));
    // train: 2 EOT + 900 + 450 bytes; val: 2 EOT + 100 + 50
    let (train, val) = (lines[1], lines[2]);
    assert!(
        train.ends_with("train_000000.bin | 1,352 tokens | u16"),
        "{train}"
    );
    assert!(val.ends_with("val_000000.bin | 152 tokens | u16"), "{val}");
    let summary =
        "done | 2 documents | train 1,350 text tokens | val 150 text tokens | 1.000 bytes/token";
    assert!(lines[3].starts_with(summary), "{}", lines[3]);
}

#[test]
fn bad_input_exits_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    fs::write(&latin1, b"na\xefve").unwrap();
    let out = dir.path().join("shards");
    let output = run_prepare(&latin1, &out);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("not valid UTF-8 at byte 2"), "{stderr}");
    assert_eq!(fs::read_dir(&out).map(|d| d.count()).unwrap_or(0), 0);
}
