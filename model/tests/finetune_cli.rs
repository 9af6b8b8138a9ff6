//! The `finetune` binary end to end on a small corpus: an ODE checkpoint converted to another
//! depth and fine-tuned with LoRA, its merged export readable as a plain model with the same
//! outputs, a full fine-tune of a GPT-2, and the refusals.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use odeflow_autodiff::Tape;
use odeflow_model::train::{metrics, Record};
use odeflow_model::{checkpoint, Config, Forward, Model, ModelKind};
use odeflow_runtime::Tensor;

mod common;

/// The tests' small model (`common::tiny`: D 16, 3 steps or layers) with a byte vocabulary
/// and a context of 16, so the corpus's text fits.
fn config(kind: ModelKind) -> Config {
    Config {
        vocab_size: 256,
        seq_len: 16,
        ..common::tiny(kind)
    }
}

/// A corpus folder of a few thousand varied bytes, and a saved `kind` checkpoint.
fn scratch(kind: ModelKind) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    fs::create_dir(&corpus).unwrap();
    let text: String = (0..300)
        .map(|i| format!("Call me Ishmael, said line {i} to {} whales.\n", i * 5 % 11))
        .collect();
    fs::write(corpus.join("moby.txt"), text).unwrap();
    let ckpt = dir.path().join("base.safetensors");
    let model = Model::new(&config(kind), 1).unwrap();
    checkpoint::save(&ckpt, &model, &[], &BTreeMap::new()).unwrap();
    (dir, ckpt)
}

fn finetune(dir: &Path, ckpt: &Path, out: &str, extra: &[&str]) -> Output {
    let root = dir.to_str().unwrap();
    let mut args = vec![
        "--checkpoint".to_string(),
        ckpt.to_str().unwrap().into(),
        "--corpus".into(),
        format!("{root}/corpus"),
        "--data-dir".into(),
        format!("{root}/shards"),
        "--out-dir".into(),
        format!("{root}/{out}"),
        "--steps".into(),
        "4".into(),
        "--batch".into(),
        "2".into(),
        "--eval-every".into(),
        "2".into(),
        "--eval-batches".into(),
        "2".into(),
        "--final-eval-batches".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args(&args)
        .output();
    out.expect("the finetune binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn logits(model: &Model, ids: &Tensor) -> Vec<f32> {
    let tape = Tape::new();
    let y = tape
        .no_grad(|| model.forward(&tape, ids, &Forward::eval()))
        .unwrap();
    y.value().to_vec::<f32>().unwrap()
}

#[test]
fn an_ode_checkpoint_converted_and_fine_tuned_with_lora_exports_a_plain_model() {
    let (dir, ckpt) = scratch(ModelKind::NeuralOde);
    let lora = [
        "--layers",
        "5",
        "--lora",
        "--lora-rank",
        "2",
        "--lora-init",
        "zero-b",
    ];
    let out = finetune(dir.path(), &ckpt, "lora", &lora);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("5 layers") && stdout.contains("LoRA r 2"),
        "{stdout}"
    );

    // the run: a LoRA discrete model of 5 layers, validated at step 0 (the converted model
    // before any step), 2 and at the end
    let run = dir.path().join("lora");
    let trained = checkpoint::load(&run.join("checkpoint.safetensors"))
        .unwrap()
        .model;
    let cfg = trained.config();
    assert!(cfg.discrete && cfg.n_steps == 5 && cfg.lora.is_some());
    let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let val_steps: Vec<usize> = records
        .iter()
        .filter_map(|r| match r {
            Record::Val(e) => Some(e.step),
            Record::Train(_) => None,
        })
        .collect();
    assert_eq!(val_steps, vec![0, 2, 4]);

    // the export: no LoRA left, the same outputs as the trained LoRA model
    let merged = checkpoint::load(&run.join("merged.safetensors"))
        .unwrap()
        .model;
    assert!(merged.config().lora.is_none() && merged.config().n_steps == 5);
    let ids = Tensor::from_vec((0..16u32).map(|i| i * 13 % 256).collect(), &[1, 16]).unwrap();
    let (want, got) = (logits(&trained, &ids), logits(&merged, &ids));
    let diff = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "merged differs by {diff}");
    // and the fine-tune moved the model off the base (B started at zero)
    let Model::Ode(ode) = checkpoint::load(&ckpt).unwrap().model else {
        unreachable!("an ODE checkpoint")
    };
    let converted = Model::Discrete(ode.to_discrete(5).unwrap());
    assert_ne!(logits(&converted, &ids), got);
}

#[test]
fn a_gpt2_checkpoint_fine_tunes_fully_and_keeps_its_depth() {
    let (dir, ckpt) = scratch(ModelKind::Gpt2);
    let out = finetune(dir.path(), &ckpt, "full", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = dir.path().join("full");
    assert!(run.join("checkpoint.safetensors").exists() && run.join("loss.png").exists());
    assert!(
        !run.join("merged.safetensors").exists(),
        "no LoRA, nothing to merge"
    );

    // a GPT-2 has a fixed depth
    let out = finetune(dir.path(), &ckpt, "deeper", &["--layers", "4"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--layers 4") && err.contains("fixed depth"),
        "{err}"
    );
    // an existing run is not replaced by accident
    let out = finetune(dir.path(), &ckpt, "full", &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("--resume"));

    // --resume takes the run's settings from its checkpoint: a flag that would change them is
    // refused by name; without one, the finished run resumes at its last step
    let root = dir.path().to_str().unwrap();
    let resume = |extra: &[&str]| {
        let (run, corpus, shards) = (
            format!("{root}/full"),
            format!("{root}/corpus"),
            format!("{root}/shards"),
        );
        let mut args = vec!["--resume", "--out-dir", &run, "--corpus", &corpus];
        args.extend(["--data-dir", shards.as_str()]);
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_finetune"))
            .args(&args)
            .output();
        out.expect("the finetune binary runs")
    };
    let out = resume(&["--steps", "8", "--lr", "1e-3"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("drop --steps, --lr"), "{err}");
    let out = resume(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("resuming") && stdout.contains("at step 4/4"),
        "{stdout}"
    );
}

#[test]
fn bad_flags_and_missing_checkpoints_are_one_line_errors() {
    let (dir, _) = scratch(ModelKind::NeuralOde);
    let missing = dir.path().join("none.safetensors");
    let out = finetune(dir.path(), &missing, "x", &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no checkpoint at"),
        "{err}"
    );
    let (dir, ckpt) = scratch(ModelKind::NeuralOde);
    let out = finetune(
        dir.path(),
        &ckpt,
        "x",
        &["--lora", "--lora-targets", "attn.q"],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("attn.q"), "{err}");
}
