//! LoRA (`lora.rs`): a fresh zero-B adapter is the base model to the bit, merging changes no
//! output, a training step moves only the factors (and the embeddings when asked), and a LoRA
//! model survives a checkpoint.

mod common;

use common::{logits, max_abs_diff, randomize, tiny, tokens};
use odeflow_autodiff::Tape;
use odeflow_model::lora::{LoraConfig, LoraInit};
use odeflow_model::optim::{AdamW, OptimConfig};
use odeflow_model::{checkpoint, Config, Forward, Model, ModelKind};
use odeflow_runtime::{DType, Rng, Tensor};
use std::collections::BTreeMap;

/// A 2-layer discrete model converted from a random tiny ODE model, and a random tiny GPT-2.
fn bases() -> Vec<(&'static str, Model)> {
    let ode = Model::new(&tiny(ModelKind::NeuralOde), 1).unwrap();
    randomize(&ode, 0.1, 2);
    let Model::Ode(ode) = ode else { unreachable!() };
    let discrete = Model::Discrete(ode.to_discrete(2).unwrap());
    let gpt2 = Model::new(&tiny(ModelKind::Gpt2), 3).unwrap();
    randomize(&gpt2, 0.1, 4);
    let llama = Model::new(&tiny(ModelKind::LlamaOde), 5).unwrap();
    randomize(&llama, 0.1, 6);
    let Model::Ode(llama) = llama else {
        unreachable!()
    };
    let llama = Model::Discrete(llama.to_discrete(3).unwrap());
    vec![
        ("discrete", discrete),
        ("gpt2", gpt2),
        ("llama discrete", llama),
    ]
}

fn lora(rank: usize, init: LoraInit) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        init,
        ..LoraConfig::default()
    }
}

fn is_factor(name: &str) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b")
}

#[test]
fn a_zero_b_adapter_is_exactly_the_base_model() {
    let ids = tokens(2, 8, 32, 7);
    for (name, base) in bases() {
        let want = logits(&base, &ids, &Forward::eval());
        let adapted = base.with_lora(&lora(4, LoraInit::ZeroB), 9).unwrap();
        assert_eq!(logits(&adapted, &ids, &Forward::eval()), want, "{name}");
        // the paper's init is not zero, only tiny: the outputs move, by far less than 1e-6
        let (_, base) = bases().into_iter().find(|(n, _)| *n == name).unwrap();
        let paper = base.with_lora(&lora(4, LoraInit::Paper), 9).unwrap();
        let got = logits(&paper, &ids, &Forward::eval());
        assert!(max_abs_diff(&got, &want) < 1e-6, "{name}");
    }
}

#[test]
fn merged_factors_give_the_outputs_of_the_unmerged_model() {
    let ids = tokens(2, 8, 32, 8);
    for (name, base) in bases() {
        let plain = logits(&base, &ids, &Forward::eval());
        let base_count = base.param_count();
        let adapted = base.with_lora(&lora(3, LoraInit::ZeroB), 10).unwrap();
        // factors of a trained size, so the change is visible
        let mut rng = Rng::new(11);
        for p in adapted.params().iter().filter(|p| is_factor(p.name())) {
            p.set_value(Tensor::randn(&p.shape(), 0.0, 0.3, DType::F32, &mut rng))
                .unwrap();
        }
        let unmerged = logits(&adapted, &ids, &Forward::eval());
        let merged = adapted.merge_lora().unwrap();
        assert!(merged.config().lora.is_none(), "{name}");
        assert!(merged
            .params()
            .iter()
            .all(|p| !is_factor(p.name()) && !p.is_frozen()));
        assert_eq!(merged.param_count(), base_count, "{name}");
        // the same ops on the same values: equal to the bit
        assert_eq!(logits(&merged, &ids, &Forward::eval()), unmerged, "{name}");
        // and the factors did change the model
        assert!(max_abs_diff(&plain, &unmerged) > 1e-3, "{name}");
    }
}

/// One AdamW step on a LoRA model: (name, changed) for every parameter.
fn one_step(model: &Model) -> Vec<(String, bool)> {
    let before: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|p| p.value().to_vec::<f32>().unwrap())
        .collect();
    let mut opt = AdamW::new(model, OptimConfig::paper(model.config(), 10)).unwrap();
    let ids = tokens(2, 8, 32, 12);
    let targets = tokens(2, 8, 32, 13);
    let tape = Tape::new();
    let loss = model
        .loss(&tape, &ids, &targets, &Forward::train(5))
        .unwrap();
    tape.backward(&loss).unwrap();
    opt.step().unwrap();
    model
        .params()
        .iter()
        .zip(before)
        .map(|(p, b)| {
            (
                p.name().to_string(),
                p.value().to_vec::<f32>().unwrap() != b,
            )
        })
        .collect()
}

#[test]
fn a_lora_step_changes_only_the_factors_and_the_embeddings() {
    for (name, base) in bases() {
        let frozen_embeddings = LoraConfig {
            train_embeddings: false,
            ..lora(2, LoraInit::Paper)
        };
        for cfg in [lora(2, LoraInit::Paper), frozen_embeddings] {
            let (_, base) = bases().into_iter().find(|(n, _)| *n == name).unwrap();
            let model = base.with_lora(&cfg, 14).unwrap();
            for (param, changed) in one_step(&model) {
                let should = is_factor(&param) || cfg.trains_base(&param);
                assert_eq!(changed, should, "{name}: {param}");
            }
        }
        drop(base);
    }
}

#[test]
fn only_the_targeted_maps_get_factors_and_the_count_is_known() {
    let (_, base) = bases().remove(1); // gpt2, D 16, d_ff 24, 3 layers
    let cfg = LoraConfig {
        targets: vec!["attn.c_attn".into(), "mlp.c_proj".into()],
        ..lora(5, LoraInit::Paper)
    };
    let model = base.with_lora(&cfg, 15).unwrap();
    let factors: Vec<String> = model
        .params()
        .iter()
        .filter(|p| is_factor(p.name()))
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(factors.len(), 3 * 2 * 2, "{factors:?}");
    assert!(factors
        .iter()
        .all(|n| n.contains("attn.c_attn") || n.contains("mlp.c_proj")));
    // r (d_in + d_out) per map: c_attn [16, 48], mlp.c_proj [24, 16]
    let want = 3 * 5 * ((16 + 48) + (24 + 16));
    assert_eq!(model.config().lora_param_count(), want);
    assert_eq!(model.param_count(), model.config().param_count());
    // trainable: the factors and the embeddings wte [32, 16], wpe [8, 16]
    assert_eq!(model.trainable_count(), want + 32 * 16 + 8 * 16);
}

#[test]
fn a_lora_model_round_trips_through_a_checkpoint() {
    let dir = std::env::temp_dir().join(format!("odeflow-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lora.safetensors");
    let ids = tokens(1, 8, 32, 16);
    let (_, base) = bases().remove(0);
    let model = base.with_lora(&lora(3, LoraInit::Paper), 17).unwrap();
    let mut rng = Rng::new(18);
    for p in model.params().iter().filter(|p| is_factor(p.name())) {
        p.set_value(Tensor::randn(&p.shape(), 0.0, 0.2, DType::F32, &mut rng))
            .unwrap();
    }
    checkpoint::save(&path, &model, &[], &BTreeMap::new()).unwrap();
    let loaded = checkpoint::load(&path).unwrap().model;
    assert_eq!(loaded.config(), model.config());
    let want = logits(&model, &ids, &Forward::eval());
    assert_eq!(logits(&loaded, &ids, &Forward::eval()), want);
    // the rebuilt model freezes the same base
    let frozen = |m: &Model| -> Vec<bool> { m.params().iter().map(|p| p.is_frozen()).collect() };
    assert_eq!(frozen(&loaded), frozen(&model));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_configs_that_cannot_work_are_refused_with_a_reason() {
    let ode = Model::new(&tiny(ModelKind::NeuralOde), 1).unwrap();
    let err = ode
        .with_lora(&lora(2, LoraInit::Paper), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("to_discrete"), "{err}");
    let (_, base) = bases().remove(1);
    let bad_target = LoraConfig {
        targets: vec!["attn.q".into()],
        ..lora(2, LoraInit::Paper)
    };
    let err = base.with_lora(&bad_target, 1).err().unwrap().to_string();
    assert!(
        err.contains("attn.q") && err.contains("attn.c_attn"),
        "{err}"
    );
    let cfg = Config {
        lora: Some(lora(0, LoraInit::Paper)),
        ..tiny(ModelKind::Gpt2)
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("rank"), "{err}");
}

#[test]
fn a_lora_model_decodes_with_the_kv_cache_like_its_merged_export() {
    use odeflow_model::sample::{generate, Decoding, SampleOptions};
    let (_, base) = bases().remove(0);
    let model = base.with_lora(&lora(3, LoraInit::ZeroB), 19).unwrap();
    let mut rng = Rng::new(20);
    for p in model.params().iter().filter(|p| is_factor(p.name())) {
        p.set_value(Tensor::randn(&p.shape(), 0.0, 0.3, DType::F32, &mut rng))
            .unwrap();
    }
    let greedy = |decoding| SampleOptions {
        temperature: 0.0,
        max_new_tokens: 12,
        decoding,
        ..SampleOptions::default()
    };
    let prompt = [3, 1, 4, 1, 5];
    let fwd = Forward::eval();
    let cached = generate(&model, &fwd, &prompt, &greedy(Decoding::Cached)).unwrap();
    let full = generate(&model, &fwd, &prompt, &greedy(Decoding::Recompute)).unwrap();
    assert_eq!(cached, full);
    let merged = model.merge_lora().unwrap();
    let exported = generate(&merged, &fwd, &prompt, &greedy(Decoding::Cached)).unwrap();
    assert_eq!(exported, cached);
    assert_eq!(cached.len(), 12);
}
