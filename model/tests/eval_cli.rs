//! The `eval` binary: one line and a JSON report on success, one `error:` line and exit code 1
//! on bad input.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use odeflow_data::write_shard;
use odeflow_model::{checkpoint, Config, Model, ModelKind};

/// T of every run here: the context of `tiny`.
const SEQ: usize = 16;

/// d_model 32, 2 heads, 2 steps, E 4, S 4, context 16, and V 256 so byte text fits.
fn tiny(vocab_size: usize) -> Config {
    Config {
        vocab_size,
        seq_len: SEQ,
        d_model: 32,
        n_heads: 2,
        n_steps: 2,
        time_embed_dim: 4,
        sinusoidal_dim: 4,
        ..Config::tiny()
    }
}

/// A freshly initialised (untrained) `kind` model saved under `dir`.
fn save_model(dir: &Path, name: &str, cfg: &Config) -> PathBuf {
    let path = dir.join(name);
    let model = Model::new(cfg, 1).unwrap();
    checkpoint::save(&path, &model, &[], &BTreeMap::new()).unwrap();
    path
}

fn eval(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_eval")).args(args).output();
    output.expect("the eval binary runs")
}

fn text(output: &[u8]) -> String {
    String::from_utf8(output.to_vec()).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An English paragraph of 1000 bytes, in the byte range of the byte tokeniser.
fn paragraph() -> String {
    let sentence =
        "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. ";
    sentence.repeat(20)[..1000].to_string()
}

/// The JSON report of a successful run.
fn report(output: &Output, json: &Path) -> serde_json::Value {
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("eval | "), "{stdout}");
    assert!(stdout.contains(" | loss "), "{stdout}");
    serde_json::from_str(&fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn an_untrained_model_scores_about_ln_v_on_text() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), "tiny.safetensors", &tiny(256));
    let txt = dir.path().join("moby.txt");
    fs::write(&txt, paragraph()).unwrap();
    let json = dir.path().join("eval.json");
    let args = ["--checkpoint", path_str(&ckpt), "--text", path_str(&txt)];
    let output = eval(&[&args[..], &["--batch", "4", "--json", path_str(&json)]].concat());
    let r = report(&output, &json);

    // 1 end-of-text token + 1000 bytes: (1001 - 1) / 16 = 62 windows of 16 predictions
    assert_eq!(r["tokens"], 62 * SEQ);
    assert_eq!(r["steps"], 2);
    assert_eq!(r["checkpoint"], path_str(&ckpt));
    let loss = r["loss"].as_f64().unwrap();
    // an untrained model's logits are near zero, so its loss is near ln V
    let ln_v = 256f64.ln();
    assert!(
        loss.is_finite() && (loss - ln_v).abs() < 0.5,
        "loss {loss}, ln V {ln_v}"
    );
    let ppl = r["perplexity"].as_f64().unwrap();
    assert!(
        (ppl - loss.exp()).abs() < 1e-9 * ppl,
        "{ppl} vs exp({loss})"
    );
}

#[test]
fn steps_and_max_batches_change_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), "tiny.safetensors", &tiny(256));
    let txt = dir.path().join("moby.txt");
    fs::write(&txt, paragraph()).unwrap();
    let json = dir.path().join("eval.json");
    let args = [
        "--checkpoint",
        path_str(&ckpt),
        "--text",
        path_str(&txt),
        "--batch",
        "4",
        "--max-batches",
        "2",
        "--steps",
        "5",
        "--seq-len",
        "8",
        "--json",
        path_str(&json),
    ];
    let r = report(&eval(&args), &json);
    assert_eq!(r["steps"], 5);
    assert_eq!(r["tokens"], 2 * 4 * 8);
    assert_eq!(
        (r["solver"].as_str(), r["nfe"].as_u64()),
        (Some("euler"), Some(5))
    );
    assert!(r["loss"].as_f64().unwrap().is_finite());
    // another solver changes the pass, and counts its stages
    let rk4 = [&args[..], &["--solver", "rk4"]].concat();
    let r4 = report(&eval(&rk4), &json);
    assert_eq!(
        (r4["solver"].as_str(), r4["nfe"].as_u64()),
        (Some("rk4"), Some(20))
    );
    assert_ne!(r4["loss"], r["loss"]);
}

#[test]
fn a_shard_evaluates_like_text() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = tiny(256).with_model(ModelKind::Gpt2);
    let ckpt = save_model(dir.path(), "gpt2.safetensors", &gpt2);
    let tokens: Vec<u32> = paragraph().bytes().map(u32::from).collect();
    let shard = write_shard(&dir.path().join("val_000000.bin"), &tokens, 256).unwrap();
    let json = dir.path().join("eval.json");
    let args = ["--checkpoint", path_str(&ckpt), "--shard", path_str(&shard)];
    let r = report(
        &eval(&[&args[..], &["--json", path_str(&json)]].concat()),
        &json,
    );
    // 1000 tokens: (1000 - 1) / 16 = 62 windows
    assert_eq!(r["tokens"], 62 * SEQ);
    assert!((r["loss"].as_f64().unwrap() - 256f64.ln()).abs() < 0.5);
}

/// Runs `eval` expecting failure, and returns its stderr.
fn eval_error(args: &[&str]) -> String {
    let output = eval(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());
    stderr
}

#[test]
fn bad_input_exits_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), "tiny.safetensors", &tiny(256));
    let ck = path_str(&ckpt);
    let txt = dir.path().join("moby.txt");
    fs::write(&txt, paragraph()).unwrap();
    let tx = path_str(&txt);

    let missing = dir.path().join("never-trained.safetensors");
    let err = eval_error(&["--checkpoint", path_str(&missing), "--text", tx]);
    assert!(err.contains(path_str(&missing)), "{err}");
    assert!(err.contains("check the path"), "{err}");

    let err = eval_error(&["--checkpoint", ck, "--text", tx, "--seq-len", "17"]);
    assert!(
        err.contains("--seq-len 17 is not in 1..=16, the model's context"),
        "{err}"
    );

    let short = dir.path().join("short.txt");
    fs::write(&short, "too short").unwrap();
    let err = eval_error(&["--checkpoint", ck, "--text", path_str(&short)]);
    // the end-of-text token and 9 bytes
    assert!(
        err.contains("holds 10 tokens, but one window needs --seq-len + 1 = 17"),
        "{err}"
    );

    let gpt2_tokens: Vec<u32> = (0..100).map(|i| i * 97).collect();
    let shard = write_shard(&dir.path().join("gpt2.bin"), &gpt2_tokens, 50257).unwrap();
    let err = eval_error(&["--checkpoint", ck, "--shard", path_str(&shard)]);
    assert!(err.contains("prepared for a vocabulary of 50257 tokens, but the model has 256"));

    let small = save_model(dir.path(), "v64.safetensors", &tiny(64));
    let err = eval_error(&["--checkpoint", path_str(&small), "--text", tx]);
    assert!(err.contains("the byte tokeniser gives token 67, but the model's vocabulary has 64"));

    let gpt2 = save_model(
        dir.path(),
        "gpt2.safetensors",
        &tiny(256).with_model(ModelKind::Gpt2),
    );
    let err = eval_error(&[
        "--checkpoint",
        path_str(&gpt2),
        "--text",
        tx,
        "--steps",
        "3",
    ]);
    assert!(err.contains("fixed depth of 2 layers"), "{err}");
}

#[test]
fn a_list_of_steps_evaluates_each_depth_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), "tiny.safetensors", &tiny(256));
    let txt = dir.path().join("moby.txt");
    fs::write(&txt, paragraph()).unwrap();
    let json = dir.path().join("depths.json");
    let args = [
        "--checkpoint",
        path_str(&ckpt),
        "--text",
        path_str(&txt),
        "--max-batches",
        "1",
        "--steps",
        "1,2,4",
        "--solver",
        "rk4",
        "--json",
        path_str(&json),
    ];
    let out = eval(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // one line per depth, then the table, the trained depth (2) marked
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("eval |")).count(),
        3
    );
    assert!(stdout.contains("| 2 (trained) | rk4 | 8 |"), "{stdout}");
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let steps: Vec<u64> = all.iter().map(|r| r["steps"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 4]);
    let nfe: Vec<u64> = all.iter().map(|r| r["nfe"].as_u64().unwrap()).collect();
    assert_eq!(nfe, vec![4, 8, 16]);
    // a different depth is a different pass (an untrained model still depends on it)
    let losses: Vec<f64> = all.iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    assert!(losses[0] != losses[2], "{losses:?}");
}
