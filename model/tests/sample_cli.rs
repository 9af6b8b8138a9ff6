//! The `sample` binary: the prompt from each source, streamed UTF-8 text and one stats line,
//! the cache and the reference giving the same text, and one `error:` line (exit code 1) for
//! each kind of bad input.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use odeflow_model::{checkpoint, Config, Model, ModelKind};

/// The context of every model here: short, so that 40 new tokens cross it.
const SEQ: usize = 16;

/// A small untrained byte model (V 256) of `kind`.
fn save_model(dir: &Path, kind: ModelKind) -> PathBuf {
    let cfg = Config {
        seq_len: SEQ,
        d_model: 32,
        n_heads: 2,
        n_steps: 2,
        time_embed_dim: 4,
        sinusoidal_dim: 4,
        ..Config::tiny()
    }
    .with_model(kind);
    let path = dir.join(format!("{}.safetensors", kind.name()));
    let model = Model::new(&cfg, 1).unwrap();
    checkpoint::save(&path, &model, &[], &BTreeMap::new()).unwrap();
    path
}

fn sample(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sample"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sample binary runs");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// stdout (which must be UTF-8: the binary prints only whole characters) and stderr.
fn texts(output: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8");
    (stdout, stderr)
}

/// The `error:` line of a failed run.
fn error_of(output: &Output) -> String {
    let (stdout, stderr) = texts(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout {stdout}, stderr {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn the_cache_and_the_reference_stream_the_same_text_past_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), ModelKind::NeuralOde);
    let base = [
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "40",
        "--ignore-eot",
        // a high temperature on an untrained model: random bytes, many of them not UTF-8
        "--temperature",
        "2",
        "--steps",
        "3",
        "--solver",
        "rk4",
    ];
    let cached = sample(&base, None);
    let full = sample(&[&base[..], &["--no-cache"]].concat(), None);
    let ((out_c, err_c), (out_f, err_f)) = (texts(&cached), texts(&full));
    assert!(
        cached.status.success() && full.status.success(),
        "{err_c} {err_f}"
    );
    assert_eq!(out_c, out_f);
    assert!(out_c.starts_with("ROMEO:"), "{out_c}");
    for (stderr, cache) in [(&err_c, "cache on"), (&err_f, "cache off")] {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("sample | 40 tokens in "), "{stderr}");
        for needle in [
            cache,
            "steps 3 | rk4",
            "prompt 6 tokens",
            "max tokens reached",
        ] {
            assert!(stderr.contains(needle), "{needle}: {stderr}");
        }
    }
}

#[test]
fn the_prompt_comes_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), ModelKind::Gpt2);
    let file = dir.path().join("prompt.txt");
    fs::write(&file, "JULIET:").unwrap();
    let args = [
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ];
    let from_file = sample(
        &[&args[..], &["--prompt-file", file.to_str().unwrap()]].concat(),
        None,
    );
    let from_stdin = sample(&args, Some("JULIET:"));
    for output in [from_file, from_stdin] {
        let (stdout, stderr) = texts(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(stdout.starts_with("JULIET:"), "{stdout}");
        assert!(stderr.contains("prompt 7 tokens"), "{stderr}");
    }
}

#[test]
fn an_over_long_prompt_is_refused_or_cropped_with_keep_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), ModelKind::LlamaOde);
    let long = "abcdefghij".repeat(2);
    let args = ["--checkpoint", ckpt.to_str().unwrap(), "--prompt", &long];
    let err = error_of(&sample(&args, None));
    for needle in ["20 tokens long", "context of 16", "--keep-tail"] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let tail = sample(
        &[&args[..], &["--keep-tail", "--max-new-tokens", "3"]].concat(),
        None,
    );
    let (stdout, stderr) = texts(&tail);
    assert!(tail.status.success(), "{stderr}");
    // the echo is the prompt the model saw: its last 16 bytes
    assert!(
        stdout.starts_with(&long[4..]) && !stdout.starts_with(&long),
        "{stdout}"
    );
    assert!(stderr.contains("prompt 16 tokens"), "{stderr}");
}

#[test]
fn bad_input_gives_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let ode = save_model(dir.path(), ModelKind::NeuralOde);
    let gpt2 = save_model(dir.path(), ModelKind::Gpt2);
    let corrupt = dir.path().join("corrupt.safetensors");
    fs::write(&corrupt, b"not a checkpoint at all").unwrap();
    let missing = dir.path().join("missing.safetensors");
    // a NUL cannot go through a command line, but a file can hold one
    let nul = dir.path().join("nul.txt");
    fs::write(&nul, b"a\0b").unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--checkpoint".into(), path(&missing)], "no such file"),
        (
            vec!["--checkpoint".into(), path(&corrupt)],
            "corrupt.safetensors",
        ),
        (
            vec![
                "--checkpoint".into(),
                path(&ode),
                "--prompt".into(),
                "".into(),
            ],
            "empty",
        ),
        (
            vec![
                "--checkpoint".into(),
                path(&gpt2),
                "--steps".into(),
                "3".into(),
            ],
            "fixed depth",
        ),
        (
            vec![
                "--checkpoint".into(),
                path(&ode),
                "--tokenizer".into(),
                "gpt2".into(),
            ],
            "smaller than the gpt2 tokeniser's",
        ),
        (
            vec![
                "--checkpoint".into(),
                path(&ode),
                "--top-p".into(),
                "1.5".into(),
            ],
            "top-p",
        ),
        (
            vec![
                "--checkpoint".into(),
                path(&ode),
                "--prompt-file".into(),
                path(&nul),
            ],
            "NUL",
        ),
    ];
    for (args, needle) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !args.contains(&"--prompt") && !args.contains(&"--prompt-file") {
            args.extend(["--prompt", "hi"]);
        }
        let err = error_of(&sample(&args, None));
        assert!(err.contains(needle), "{args:?}: {needle}: {err}");
    }
}
