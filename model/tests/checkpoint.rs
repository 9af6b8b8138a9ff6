//! Checkpoints: a save and a load give back the very same model, a mismatch names every
//! difference, a bad file says what is wrong with it, and a failed save changes nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use odeflow_autodiff::Tape;
use odeflow_model::checkpoint::{self, Loaded};
use odeflow_model::{Config, Error, Forward, Model, ModelKind};
use odeflow_runtime::{DType, Rng, Tensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// d_model 32, 2 heads, 2 steps, E 4, S 4, V 64, context 16.
fn tiny(kind: ModelKind) -> Config {
    let cfg = Config {
        vocab_size: 64,
        seq_len: 16,
        d_model: 32,
        n_heads: 2,
        n_steps: 2,
        time_embed_dim: 4,
        sinusoidal_dim: 4,
        ..Config::tiny()
    };
    cfg.with_model(kind)
}

/// Replaces every parameter by N(0, 0.1^2) noise: the init leaves W0, G, Bn and the biases at
/// zero, and a zero a loader forgot to fill would look the same in both models.
fn randomize(model: &Model, seed: u64) {
    let mut rng = Rng::new(seed);
    for p in model.params() {
        let value = Tensor::randn(&p.shape(), 0.0, 0.1, DType::F32, &mut rng);
        p.set_value(value).unwrap();
    }
}

/// A random model of `cfg`, or its `to_discrete(3)` copy when `discrete`.
fn random_model(cfg: &Config, discrete: bool, seed: u64) -> Model {
    let model = Model::new(cfg, seed).unwrap();
    randomize(&model, seed);
    match (&model, discrete) {
        (Model::Ode(ode), true) => Model::Discrete(ode.to_discrete(3).unwrap()),
        _ => model,
    }
}

/// The logits of two sequences of 16 tokens, as bit patterns (so equality is bitwise).
fn logit_bits(model: &Model) -> Vec<u32> {
    let mut rng = Rng::new(5);
    let v = model.config().vocab_size as u64;
    let ids: Vec<u32> = (0..32).map(|_| rng.below(v) as u32).collect();
    let ids = Tensor::from_vec(ids, &[2, 16]).unwrap();
    let tape = Tape::new();
    let logits = tape.no_grad(|| model.forward(&tape, &ids, &Forward::eval()));
    let values = logits.unwrap().value().to_vec::<f32>().unwrap();
    values.into_iter().map(f32::to_bits).collect()
}

/// A tensor's dtype, shape and values as bit patterns.
fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u32>) {
    let values = match t.dtype() {
        DType::F32 => t
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect(),
        DType::BF16 => t
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        DType::F16 => t
            .to_vec::<f16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
        DType::U32 => t.to_vec::<u32>().unwrap(),
    };
    (t.dtype(), t.shape().to_vec(), values)
}

/// Extra tensors of every dtype a checkpoint stores, as a trainer would name them.
fn extras(model: &Model) -> Vec<(String, Tensor)> {
    let wte = &model.params()[0];
    assert_eq!(wte.name(), "wte.weight");
    let mut rng = Rng::new(9);
    let moment = |dtype| Tensor::randn(&wte.shape(), 0.0, 1e-3, dtype, &mut Rng::new(3));
    vec![
        ("optim.m.wte.weight".into(), moment(DType::F32)),
        ("optim.v.wte.weight".into(), moment(DType::BF16)),
        (
            "scratch.half".into(),
            Tensor::randn(&[3, 2], 0.0, 1.0, DType::F16, &mut rng),
        ),
        (
            "loader.state".into(),
            Tensor::from_vec(vec![7u32, 0, 12, 1], &[4]).unwrap(),
        ),
    ]
}

fn metadata() -> BTreeMap<String, String> {
    let pairs = [("train.step", "120"), ("train.note", "tiny run, seed 3")];
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The names of the entries of `dir`, hidden ones included, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn load_error(path: &Path) -> String {
    match checkpoint::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_saved_model_loads_back_bitwise_for_every_kind() {
    let cases = [
        ("neural-ode", tiny(ModelKind::NeuralOde), false),
        ("llama-ode", tiny(ModelKind::LlamaOde), false),
        ("gpt2", tiny(ModelKind::Gpt2), false),
        (
            "neural-ode, to_discrete(3)",
            tiny(ModelKind::NeuralOde),
            true,
        ),
        ("llama-ode, to_discrete(3)", tiny(ModelKind::LlamaOde), true),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (label, cfg, discrete) in cases {
        let model = random_model(&cfg, discrete, 1);
        let path = dir.path().join("model.safetensors");
        checkpoint::save(&path, &model, &extras(&model), &metadata()).unwrap();
        let Loaded {
            model: loaded,
            extra,
            metadata: meta,
        } = checkpoint::load(&path).unwrap();

        assert_eq!(loaded.config(), model.config(), "{label}");
        assert_eq!(loaded.config().discrete, discrete, "{label}");
        let names = |m: &Model| {
            m.params()
                .iter()
                .map(|p| p.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&loaded), names(&model), "{label}");
        assert_eq!(logit_bits(&loaded), logit_bits(&model), "{label}");
        let want: BTreeMap<String, _> = extras(&model)
            .iter()
            .map(|(n, t)| (n.clone(), bits(t)))
            .collect();
        let got: BTreeMap<String, _> = extra.iter().map(|(n, t)| (n.clone(), bits(t))).collect();
        assert_eq!(got, want, "{label}");
        assert_eq!(meta, metadata(), "{label}");
    }
}

#[test]
fn the_file_is_plain_safetensors_with_odeflow_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = random_model(&tiny(ModelKind::NeuralOde), false, 2);
    checkpoint::save(&path, &model, &extras(&model), &metadata()).unwrap();
    let bytes = fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["odeflow.format"], "1");
    assert_eq!(
        Config::from_toml(&meta["odeflow.config"]).unwrap(),
        *model.config()
    );
    let listed: Vec<String> = serde_json::from_str(&meta["odeflow.extra"]).unwrap();
    let mut want: Vec<String> = extras(&model).into_iter().map(|(n, _)| n).collect();
    want.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, want);
    assert_eq!(meta["train.step"], "120");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), model.params().len() + want.len());
    let view = file.tensor("block.attn.c_attn.weight").unwrap();
    assert_eq!(view.dtype(), Dtype::F32);
    assert_eq!(view.shape(), &[5, 32, 96]); // [E+1, D, 3D]
    assert_eq!(
        file.tensor("optim.v.wte.weight").unwrap().dtype(),
        Dtype::BF16
    );
}

#[test]
fn loading_into_another_config_names_every_difference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.safetensors");
    // saved: 3 layers, d_ff 64, tied; loaded into: 2 layers, d_ff 128, untied
    let saved = Config {
        n_steps: 3,
        d_ff: 64,
        ..tiny(ModelKind::Gpt2)
    };
    checkpoint::save(
        &path,
        &random_model(&saved, false, 3),
        &[],
        &BTreeMap::new(),
    )
    .unwrap();
    let other = Config {
        d_ff: 128,
        tie_embeddings: false,
        ..tiny(ModelKind::Gpt2)
    };
    let model = Model::new(&other, 0).unwrap();
    let before = logit_bits(&model);

    let contents = checkpoint::read(&path).unwrap();
    assert_eq!(contents.config, saved);
    let err = checkpoint::load_params(&model, &contents.params).unwrap_err();
    let Error::ParamMismatch(m) = &err else {
        panic!("not a mismatch: {err}");
    };
    assert_eq!(m.missing, ["lm_head.weight"]);
    assert_eq!(m.unexpected.len(), 12, "{err}"); // every tensor of layer h.2
    assert!(m.unexpected.iter().all(|n| n.starts_with("h.2.")), "{err}");
    let misfit: Vec<&str> = m.misfit.iter().map(|d| d.name.as_str()).collect();
    let want = [
        "h.0.mlp.c_fc.weight",
        "h.0.mlp.c_fc.bias",
        "h.0.mlp.c_proj.weight",
        "h.1.mlp.c_fc.weight",
        "h.1.mlp.c_fc.bias",
        "h.1.mlp.c_proj.weight",
    ];
    assert_eq!(misfit, want, "{err}");

    let msg = err.to_string();
    assert!(msg.contains("1 missing: lm_head.weight"), "{msg}");
    assert!(
        msg.contains("12 unexpected: h.2.attn.c_attn.bias, "),
        "{msg}"
    );
    let shape = "h.0.mlp.c_fc.weight is [32, 64] f32 where the model has [32, 128] f32";
    assert!(msg.contains(shape), "{msg}");
    assert!(
        msg.contains("build the model from the config they were saved with"),
        "{msg}"
    );
    assert_eq!(
        logit_bits(&model),
        before,
        "a failed load changed the model"
    );
}

#[test]
fn a_tensor_of_another_dtype_is_refused_not_cast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = random_model(&tiny(ModelKind::NeuralOde), false, 4);
    checkpoint::save(&path, &model, &[], &BTreeMap::new()).unwrap();
    let mut contents = checkpoint::read(&path).unwrap();
    let wte = contents.params["wte.weight"].to_dtype(DType::BF16).unwrap();
    contents.params.insert("wte.weight".into(), wte);
    let target = Model::new(&contents.config, 0).unwrap();
    let err = checkpoint::load_params(&target, &contents.params)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wte.weight is [64, 32] bf16 where the model has [64, 32] f32"),
        "{err}"
    );
}

/// A safetensors file holding one f32 tensor and `meta`.
fn write_foreign(path: &Path, meta: &[(&str, &str)]) {
    let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![2], &bytes).unwrap();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let file = safetensors::serialize([("x", view)], Some(meta)).unwrap();
    fs::write(path, file).unwrap();
}

#[test]
fn unreadable_files_say_what_is_wrong_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);

    let missing = at("missing.safetensors");
    let err = load_error(&missing);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(
        err.contains("no such file: check the path, or train a model first"),
        "{err}"
    );

    let good = at("good.safetensors");
    let model = random_model(&tiny(ModelKind::LlamaOde), false, 5);
    checkpoint::save(&good, &model, &[], &BTreeMap::new()).unwrap();
    let bytes = fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = |name: &str, len: usize| {
        let path = at(name);
        fs::write(&path, &bytes[..len]).unwrap();
        load_error(&path)
    };
    let err = cut("in-data.safetensors", bytes.len() / 2);
    assert!(
        err.contains("not a valid safetensors file") && err.contains("truncated"),
        "{err}"
    );
    let err = cut("in-header.safetensors", 8 + header_len / 2);
    assert!(
        err.contains("truncated: it ends inside the header"),
        "{err}"
    );
    let err = cut("empty.safetensors", 0);
    assert!(err.contains("it is 0 bytes long, too short"), "{err}");
    assert!(
        err.contains("copy it again, or use an earlier checkpoint"),
        "{err}"
    );

    let noise = at("noise.safetensors");
    let mut rng = Rng::new(6);
    let random: Vec<u8> = (0..4096).map(|_| rng.below(256) as u8).collect();
    fs::write(&noise, random).unwrap();
    let err = load_error(&noise);
    assert!(
        err.contains("noise.safetensors: not a valid safetensors file"),
        "{err}"
    );

    let foreign = at("foreign.safetensors");
    write_foreign(&foreign, &[("format", "pt")]);
    let err = load_error(&foreign);
    assert!(err.contains("not an odeflow checkpoint"), "{err}");
    assert!(err.contains("odeflow.config"), "{err}");

    let bad_config = at("bad-config.safetensors");
    let meta = [
        ("odeflow.format", "1"),
        ("odeflow.config", "d_model = 130\n"),
        ("odeflow.extra", "[]"),
    ];
    write_foreign(&bad_config, &meta);
    let err = load_error(&bad_config);
    assert!(
        err.contains("its odeflow.config is not a valid config"),
        "{err}"
    );
    assert!(err.contains("not a multiple of n_heads"), "{err}");

    let future = at("future.safetensors");
    let toml = Config::tiny().to_toml();
    let meta = [
        ("odeflow.format", "2"),
        ("odeflow.config", toml.as_str()),
        ("odeflow.extra", "[]"),
    ];
    write_foreign(&future, &meta);
    let err = load_error(&future);
    assert!(
        err.contains("checkpoint format 2, and this build reads format 1"),
        "{err}"
    );

    let folder = at("a-folder");
    fs::create_dir(&folder).unwrap();
    assert!(load_error(&folder).contains("not a regular file"));
}

/// A folder holding one saved checkpoint: (folder, its path, its bytes, the model).
fn saved_checkpoint() -> (tempfile::TempDir, PathBuf, Vec<u8>, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = random_model(&tiny(ModelKind::NeuralOde), false, 7);
    checkpoint::save(&path, &model, &extras(&model), &metadata()).unwrap();
    let bytes = fs::read(&path).unwrap();
    (dir, path, bytes, model)
}

#[test]
fn a_refused_save_leaves_the_old_checkpoint_byte_identical() {
    let (dir, path, before, _) = saved_checkpoint();
    let other = random_model(&tiny(ModelKind::NeuralOde), false, 8);
    let tensor = || other.params()[0].value();

    let collision = [("wte.weight".to_string(), tensor())];
    let err = checkpoint::save(&path, &other, &collision, &metadata())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the extra tensor wte.weight has the name of a parameter"),
        "{err}"
    );
    assert!(err.contains("optim.m.wte.weight"), "{err}");

    let twice = [
        ("optim.m.x".to_string(), tensor()),
        ("optim.m.x".to_string(), tensor()),
    ];
    let err = checkpoint::save(&path, &other, &twice, &metadata())
        .unwrap_err()
        .to_string();
    assert!(err.contains("optim.m.x is given twice"), "{err}");

    let mut reserved = metadata();
    reserved.insert("odeflow.config".into(), "mine".into());
    let err = checkpoint::save(&path, &other, &[], &reserved)
        .unwrap_err()
        .to_string();
    assert!(err.contains("odeflow.config is under odeflow."), "{err}");

    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(entries(dir.path()), ["model.safetensors"]);
}

#[test]
fn a_save_that_fails_on_disk_removes_its_temporary_file() {
    let (dir, path, before, model) = saved_checkpoint();

    // a folder that does not exist: the temporary file cannot even be created
    let nowhere = dir.path().join("no-such-folder").join("model.safetensors");
    let err = checkpoint::save(&nowhere, &model, &[], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&nowhere.display().to_string()), "{err}");
    assert!(err.contains("could not write the checkpoint"), "{err}");
    assert!(err.contains("check that the folder"), "{err}");

    // a target that is a non-empty folder: everything is written, then the rename fails
    let blocked = dir.path().join("blocked");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep.txt"), "kept").unwrap();
    let err = checkpoint::save(&blocked, &model, &[], &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could not rename the checkpoint into place"),
        "{err}"
    );
    assert!(err.contains("unchanged"), "{err}");
    assert_eq!(entries(&blocked), ["keep.txt"]);

    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(entries(dir.path()), ["blocked", "model.safetensors"]);
}

#[test]
fn saving_over_a_checkpoint_replaces_it_whole() {
    let (dir, path, _, _) = saved_checkpoint();
    let gpt2 = random_model(&tiny(ModelKind::Gpt2), false, 9);
    checkpoint::save(&path, &gpt2, &[], &BTreeMap::new()).unwrap();
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.model.config(), gpt2.config());
    assert_eq!(logit_bits(&loaded.model), logit_bits(&gpt2));
    assert!(loaded.extra.is_empty() && loaded.metadata.is_empty());
    assert_eq!(entries(dir.path()), ["model.safetensors"]);
}
