//! The `analyze` binary: every file on a tiny checkpoint of each model kind, and one `error:`
//! line with exit code 1 on a missing or corrupt checkpoint and on bad options.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use odeflow_model::analysis::report::{sensitivity_files, spectra_files};
use odeflow_model::{checkpoint, Config, Model, ModelKind};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// D 32, 2 heads, 2 steps, E 4, S 4, context 24, V 256 (byte prompts fit).
fn tiny(kind: ModelKind) -> Config {
    Config {
        vocab_size: 256,
        seq_len: 24,
        d_model: 32,
        n_heads: 2,
        n_steps: 2,
        time_embed_dim: 4,
        sinusoidal_dim: 4,
        ..Config::tiny()
    }
    .with_model(kind)
}

fn save_model(dir: &Path, kind: ModelKind) -> PathBuf {
    let path = dir.join(format!("{}.safetensors", kind.name()));
    let model = Model::new(&tiny(kind), 1).unwrap();
    checkpoint::save(&path, &model, &[], &BTreeMap::new()).unwrap();
    path
}

fn analyze(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_analyze"))
        .args(args)
        .output();
    output.expect("the analyze binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_file_is_written_for_every_model_kind() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ModelKind::ALL {
        let ckpt = save_model(dir.path(), kind);
        let out = dir.path().join(format!("out-{}", kind.name()));
        let args = [
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
        ];
        let output = analyze(&[&args[..], &["--prompt", "To be, or not"]].concat());
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{kind:?}\n{stdout}\n{stderr}");
        assert!(stdout.starts_with("analyze | "), "{stdout}");
        // one line per point (2 Euler steps, or 2 layers) and per step, then the summary
        assert_eq!(stdout.matches("\nspectra ").count(), 2, "{stdout}");
        assert!(stdout.contains("\nstep 2/2 | t 1.0000 | "), "{stdout}");
        assert!(stdout.contains("\nmost sensitive: #"), "{stdout}");
        assert!(stdout.contains("wrote 11 files to "), "{stdout}");

        for name in spectra_files().iter().chain(&sensitivity_files()) {
            let bytes = fs::read(out.join(name)).unwrap_or_else(|_| panic!("{name} missing"));
            if name.ends_with(".png") {
                assert_eq!(bytes[..8], PNG_SIGNATURE, "{name}");
            }
        }
        let spectra = json(&out.join("spectra.json"));
        let axis = if kind == ModelKind::Gpt2 {
            "layer"
        } else {
            "time"
        };
        assert_eq!(spectra["axis"], axis);
        let points = spectra["points"].as_array().unwrap();
        assert_eq!(points.len(), 2);
        // 2 heads of QK, 2 of OV, the MLP: hd = 16 eigenvalues per head, D = 32 for the MLP
        let per_point = points[0]["spectra"].as_array().unwrap();
        let lens: Vec<usize> = per_point
            .iter()
            .map(|s| s["eigenvalues"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [16, 16, 16, 16, 32]);
        let mlp = if kind == ModelKind::LlamaOde {
            "W_up W_down"
        } else {
            "W_fc W_proj"
        };
        assert_eq!(spectra["mlp_matrix"], mlp);
        let csv = fs::read_to_string(out.join("spectra.csv")).unwrap();
        assert_eq!(
            csv.lines().count(),
            1 + 2 * (4 * 16 + 32),
            "a header and one row each"
        );

        let s = json(&out.join("sensitivity.json"));
        // "To be, or not" is 13 bytes: the output token is the last, "t"
        assert_eq!(s["output"], 12);
        let tokens = s["per_token"].as_array().unwrap();
        assert_eq!(tokens.len(), 13);
        assert_eq!(tokens[12]["text"], "t");
        assert_eq!(tokens[0]["exponents"].as_array().unwrap().len(), 32);
        assert!(s["prompt"]["prediction"]["probability"].as_f64().unwrap() > 0.0);
        let html = fs::read_to_string(out.join("sensitivity.html")).unwrap();
        assert_eq!(html.matches("<span class=\"out\"").count(), 1);
        assert!(
            html.contains("title=\"#2 ·: max exponent"),
            "the space, made visible"
        );
    }
}

#[test]
fn the_grid_and_the_parts_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = save_model(dir.path(), ModelKind::NeuralOde);
    let out = dir.path().join("out");
    let ck = ckpt.to_str().unwrap();
    let args = [
        "--checkpoint",
        ck,
        "--out-dir",
        out.to_str().unwrap(),
        "--only",
        "spectra",
    ];
    let output = analyze(&[&args[..], &["--grid", "5"]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ts: Vec<f64> = json(&out.join("spectra.json"))["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["t"].as_f64().unwrap())
        .collect();
    assert_eq!(ts, [0.2, 0.4, 0.6, 0.8, 1.0]);
    assert!(!out.join("sensitivity.json").exists(), "--only spectra");

    let output = analyze(&[&args[..], &["--times", "0,0.5", "--solver", "rk4"]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        json(&out.join("spectra.json"))["points"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // the default folder: analysis/ beside the checkpoint
    let args = [
        "--checkpoint",
        ck,
        "--only",
        "sensitivity",
        "--exponents",
        "4",
    ];
    let output = analyze(&[&args[..], &["--solver", "heun", "--prompt", "abc"]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let s = json(&dir.path().join("analysis").join("sensitivity.json"));
    // Heun on 2 steps evaluates at 0, 1/2 (twice) and 1
    assert_eq!(s["stage_times"], serde_json::json!([0.0, 0.5, 0.5, 1.0]));
    assert_eq!(s["per_token"][0]["exponents"].as_array().unwrap().len(), 4);
}

/// Runs `analyze` expecting failure, and returns its one stderr line.
fn analyze_error(args: &[&str]) -> String {
    let output = analyze(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty());
    stderr
}

#[test]
fn a_missing_or_corrupt_checkpoint_and_bad_options_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    let missing = dir.path().join("never-trained.safetensors");
    let err = analyze_error(&["--checkpoint", missing.to_str().unwrap(), "--out-dir", out]);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("no such file: check the path"), "{err}");

    let corrupt = dir.path().join("corrupt.safetensors");
    let good = fs::read(save_model(dir.path(), ModelKind::NeuralOde)).unwrap();
    fs::write(&corrupt, &good[..good.len() / 2]).unwrap();
    let err = analyze_error(&["--checkpoint", corrupt.to_str().unwrap(), "--out-dir", out]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    fs::write(&corrupt, b"this is not a checkpoint at all").unwrap();
    let err = analyze_error(&["--checkpoint", corrupt.to_str().unwrap(), "--out-dir", out]);
    assert!(err.contains("not a valid safetensors file"), "{err}");
    assert!(
        !Path::new(out).exists(),
        "nothing is written for a bad checkpoint"
    );

    let ck = save_model(dir.path(), ModelKind::NeuralOde);
    let ck = ck.to_str().unwrap();
    let err = analyze_error(&["--checkpoint", ck, "--out-dir", out, "--times", "0.5,2"]);
    assert!(err.contains("t = 2 is outside [0, 1]"), "{err}");
    let long = "x".repeat(25);
    let err = analyze_error(&["--checkpoint", ck, "--out-dir", out, "--prompt", &long]);
    assert!(
        err.contains("the prompt is 25 byte tokens long; the model takes 1 to 24"),
        "{err}"
    );
    let err = analyze_error(&["--checkpoint", ck, "--out-dir", out, "--exponents", "33"]);
    assert!(err.contains("in 1..=32"), "{err}");
    let gpt2 = save_model(dir.path(), ModelKind::Gpt2);
    let err = analyze_error(&["--checkpoint", gpt2.to_str().unwrap(), "--grid", "4"]);
    assert!(err.contains("its spectra are per layer"), "{err}");
}
