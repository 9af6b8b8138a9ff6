//! `finetune`: adapts a trained checkpoint to another corpus, at another depth, fully or with
//! LoRA (MODEL.md section 10). With no arguments it takes the default `train` run's neural ODE
//! (`runs/neural-ode/checkpoint.safetensors`) and fine-tunes it on the shipped Moby-Dick:
//!
//! ```text
//! cargo run --release --bin train                                  # the model to adapt
//! cargo run --release --bin finetune                               # full fine-tune, L layers
//! cargo run --release --bin finetune -- --layers 8 --lora          # 8 layers, LoRA
//! cargo run --release --bin finetune -- --checkpoint runs/gpt2/checkpoint.safetensors --lora
//! cargo run --release --bin finetune -- --resume --out-dir runs/finetune-neural-ode-8-lora
//! ```
//!
//! What happens to the model:
//!
//! 1. An ODE checkpoint is converted to an ordinary N'-layer model (`--layers`, default its L):
//!    layer i holds the block's weights at t_i = (i + 1) / N' (`NeuralOde::to_discrete`). A
//!    GPT-2 or an already discrete checkpoint keeps its layers.
//! 2. With `--lora`, every linear map of every layer (or the `--lora-targets`) gets factors
//!    A, B of rank r, W' = W + (alpha / r) A B, and the rest is frozen but the embeddings
//!    (`--freeze-embeddings` freezes those too). Without it every parameter trains.
//! 3. It trains like `train` (the same loop, log lines, checkpoints, Ctrl-C and `--resume`),
//!    after a validation pass at step 0: the converted model before any fine-tuning, the start of
//!    its curve.
//! 4. With LoRA, the factors are merged into the weights at the end and the plain model is
//!    written to `merged.safetensors` (`--export` for another path): a checkpoint `eval` and
//!    `sample` read like any other, with no LoRA left.
//!
//! The defaults are the paper's fine-tuning recipe: AdamW at lr 3e-4 with weight decay 0.1 (on
//! the layers' matrices, the LoRA factors and the embeddings), LoRA rank 200, alpha 8, both
//! factors from 1e-6 N(0, 1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use odeflow_data::Tokenizer;
use odeflow_model::lora::{LoraConfig, LoraInit};
use odeflow_model::optim::OptimConfig;
use odeflow_model::train::{self, Precision, Record, TrainOptions};
use odeflow_model::{checkpoint, GradMode, Model, Solver};
use odeflow_runtime::Device;

#[path = "shared/run.rs"]
mod run;

use run::{Ending, Result, RunFiles};

/// Fine-tune a trained checkpoint on another corpus: an ODE model converted to N' layers, or a
/// GPT-2, fully or with LoRA.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The checkpoint to adapt (written by `train` or `finetune`).
    #[arg(long, default_value = "runs/neural-ode/checkpoint.safetensors")]
    checkpoint: PathBuf,

    /// Layers N' of the converted model (an ODE checkpoint only) [default: its L].
    #[arg(long)]
    layers: Option<usize>,

    /// Fine-tune with LoRA instead of every parameter.
    #[arg(long)]
    lora: bool,

    /// LoRA's rank r.
    #[arg(long, default_value_t = 200, requires = "lora")]
    lora_rank: usize,

    /// LoRA's alpha: the change is scaled by alpha / r.
    #[arg(long, default_value_t = 8.0, requires = "lora")]
    lora_alpha: f32,

    /// The linear maps that get LoRA factors, comma-separated (attn.c_attn, attn.c_proj,
    /// mlp.c_fc, mlp.c_proj; for Llama attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up,
    /// mlp.down) [default: all of them].
    #[arg(long, value_delimiter = ',', requires = "lora")]
    lora_targets: Vec<String>,

    /// How the factors start: paper (both from 1e-6 N(0, 1)) or zero-b (B = 0: the model starts
    /// exactly at the checkpoint's).
    #[arg(long, default_value = "paper", requires = "lora")]
    lora_init: LoraInit,

    /// With LoRA, freeze the embeddings too (the paper trains them).
    #[arg(long, requires = "lora")]
    freeze_embeddings: bool,

    /// Text files or folders of .txt files to fine-tune on, tokenised on the first run.
    #[arg(long, default_value = "data/corpus/moby-dick")]
    corpus: Vec<PathBuf>,

    /// Where the corpus's token shards are [default: data/shards/<corpus>-<tokenizer>].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Where the checkpoint, metrics.jsonl, loss.png and the merged model go [default:
    /// runs/finetune-<model>-<layers>[-lora]].
    #[arg(long)]
    out_dir: Option<PathBuf>,

    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,

    /// Windows per batch.
    #[arg(long, default_value_t = 12)]
    batch: usize,

    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f32,

    /// AdamW's weight decay.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,

    /// Linear warmup steps [default: 1% of the steps].
    #[arg(long)]
    warmup: Option<usize>,

    /// Seeds the LoRA factors, the window order and the dropout masks.
    #[arg(long, default_value_t = 1337)]
    seed: u64,

    /// Validate every N steps (and at step 0) (0: only at the start and the end).
    #[arg(long, default_value_t = 100)]
    eval_every: usize,

    /// Validation batches per periodic pass (0: the whole split).
    #[arg(long, default_value_t = 20)]
    eval_batches: usize,

    /// Validation batches of the final pass (0: the whole split).
    #[arg(long, default_value_t = 200)]
    final_eval_batches: usize,

    /// Write a checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,

    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,

    /// f32, or bf16 [default: f32 on the CPU, bf16 on CUDA].
    #[arg(long)]
    precision: Option<Precision>,

    /// Where the merged model goes after a LoRA fine-tune [default: <out-dir>/merged.safetensors].
    #[arg(long)]
    export: Option<PathBuf>,

    /// Continue the fine-tune saved in --out-dir. Its model and options come from its
    /// checkpoint: beside --resume only --corpus, --data-dir, --device and --export may be
    /// given.
    #[arg(long)]
    resume: bool,

    /// Start a new fine-tune in an --out-dir that already holds one.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let command = Args::command();
    let matches = command.clone().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // the flags typed on the command line (a default is not a choice --resume could clash with;
    // the ids also name clap's group of all the flags, which is not one)
    let given: Vec<String> = command
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(String::from)
        .collect();
    run::exit_code(run(&args, &given))
}

/// The flags that still count beside --resume; every other one is fixed by the checkpoint.
const RESUME_FLAGS: [&str; 6] = [
    "resume", "out_dir", "corpus", "data_dir", "device", "export",
];

fn run(args: &Args, given: &[String]) -> Result<ExitCode> {
    let fixed: Vec<String> = given
        .iter()
        .filter(|id| !RESUME_FLAGS.contains(&id.as_str()))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if args.resume && !fixed.is_empty() {
        return Err(format!(
            "--resume continues the fine-tune as it was started (its model and options are in \
             its checkpoint); drop {}",
            fixed.join(", ")
        )
        .into());
    }
    odeflow_runtime::memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    if let Device::Cuda(i) = args.device {
        odeflow_runtime::cuda::gpu(i)?;
    }
    // the model: the checkpoint's, converted (or, resumed, the run's own from its checkpoint)
    let model = if args.resume {
        None
    } else {
        Some(adapted_model(args)?)
    };
    let out_dir = match (&args.out_dir, &model) {
        (Some(dir), _) => dir.clone(),
        (None, Some(model)) => default_out_dir(model.config(), args.lora),
        (None, None) => return Err("--resume needs the --out-dir of the fine-tune".into()),
    };
    let files = RunFiles::new(&out_dir);
    if !args.resume && files.checkpoint.exists() && !args.force {
        return Err(format!(
            "{} already holds a fine-tune; pass --resume to continue it, --force to replace it, \
             or --out-dir to start one elsewhere",
            out_dir.display()
        )
        .into());
    }
    let (cfg, options) = match &model {
        Some(model) => (model.config().clone(), options(args, model)?),
        None => {
            let contents = checkpoint::read(&files.checkpoint).map_err(|e| {
                format!("--resume: {e}; start the fine-tune without --resume first")
            })?;
            let state = train::run_state(&files.checkpoint, &contents.metadata)?;
            (contents.config, state.options)
        }
    };
    run::preflight(&files, &cfg)?;

    let tokenizer = Tokenizer::for_vocab_size(cfg.vocab_size);
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir(args, tokenizer));
    let shards = run::shards(&args.corpus, tokenizer, &data_dir)?;
    let loader = shards.train_loader(options.batch, cfg.seq_len, options.seed)?;
    let mut val = shards.val_loader(options.batch, cfg.seq_len)?;

    let (mut trainer, mut log) = run::open_run(&files, model, loader, &options, args.device)?;
    let model = trainer.model();
    println!(
        "finetune {} | {} layers | {} | {:.2} M of {:.2} M parameters trained | {} steps x {} \
         tokens | lr {:.1e} | out {}",
        cfg.model.name(),
        cfg.n_steps,
        match &cfg.lora {
            Some(l) => format!("LoRA r {} alpha {}", l.rank, l.alpha),
            None => "full".into(),
        },
        model.trainable_count() as f64 / 1e6,
        model.param_count() as f64 / 1e6,
        options.steps,
        options.tokens_per_step(cfg.seq_len),
        options.optim.lr,
        out_dir.display()
    );
    if !args.resume {
        // step 0: the converted model before any fine-tuning
        let eval = trainer.evaluate(&mut val, options.eval_batches)?;
        println!("{}", run::eval_line(&eval, "val"));
        log.append(&Record::Val(eval))?;
    }

    let eval = match run::train_to_end(&mut trainer, &mut val, &mut log, &files)? {
        Ending::Done(eval) => eval,
        Ending::Interrupted => return Ok(ExitCode::from(130)),
    };
    if cfg.lora.is_some() {
        let path = args
            .export
            .clone()
            .unwrap_or_else(|| out_dir.join("merged.safetensors"));
        let merged = trainer.model().merge_lora()?;
        checkpoint::save(&path, &merged, &[], &BTreeMap::new())?;
        println!("merged LoRA into the weights -> {}", path.display());
    }
    println!("{}", run::done_line(&trainer, &eval, &files));
    Ok(ExitCode::SUCCESS)
}

/// The checkpoint's model, converted to --layers (an ODE model) and given LoRA factors when
/// asked.
fn adapted_model(args: &Args) -> Result<Model> {
    if !args.checkpoint.exists() {
        return Err(format!(
            "no checkpoint at {}; train one first (cargo run --release --bin train) or pass \
             --checkpoint",
            args.checkpoint.display()
        )
        .into());
    }
    let model = checkpoint::load(&args.checkpoint)?.model;
    let model = match (model, args.layers) {
        (Model::Ode(ode), layers) => {
            Model::Discrete(ode.to_discrete(layers.unwrap_or(ode.config().n_steps))?)
        }
        (model, Some(n)) if n != model.config().n_steps => {
            return Err(format!(
                "--layers {n}: a {} checkpoint has a fixed depth of {} layers; only an ODE \
                 checkpoint can be converted to another depth",
                model.config().model.name(),
                model.config().n_steps
            )
            .into())
        }
        (model, _) => model,
    };
    if !args.lora {
        return Ok(model);
    }
    let lora = LoraConfig {
        rank: args.lora_rank,
        alpha: args.lora_alpha,
        targets: args.lora_targets.clone(),
        init: args.lora_init,
        train_embeddings: !args.freeze_embeddings,
    };
    Ok(model.with_lora(&lora, args.seed)?)
}

/// The run's options from the flags: the paper's fine-tuning recipe by default.
fn options(args: &Args, model: &Model) -> Result<TrainOptions> {
    let cfg = model.config();
    let mut optim = OptimConfig::paper(cfg, args.steps);
    optim.lr = args.lr;
    optim.weight_decay = args.weight_decay;
    if let Some(w) = args.warmup {
        optim.warmup_steps = w;
    }
    let options = TrainOptions {
        steps: args.steps,
        batch: args.batch,
        accum: 1,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        final_eval_batches: args.final_eval_batches,
        checkpoint_every: args.checkpoint_every,
        // ordinary layers, every activation kept (what `train` does by default)
        grad: GradMode::Backprop,
        solver: Solver::Euler,
        precision: args.precision.unwrap_or(match args.device {
            Device::Cpu => Precision::F32,
            _ => Precision::Bf16,
        }),
        optim,
    };
    options.validate()?;
    Ok(options)
}

/// runs/finetune-<model>-<layers>[-lora]
fn default_out_dir(cfg: &odeflow_model::Config, lora: bool) -> PathBuf {
    let suffix = if lora { "-lora" } else { "" };
    let name = format!("finetune-{}-{}{suffix}", cfg.model.name(), cfg.n_steps);
    Path::new("runs").join(name)
}

/// data/shards/<first corpus's name>-<tokenizer>, apart from `train`'s data/shards/<tokenizer>.
fn default_data_dir(args: &Args, tokenizer: Tokenizer) -> PathBuf {
    let corpus = args.corpus.first().and_then(|p| p.file_stem());
    let corpus = corpus.map_or("corpus".into(), |s| s.to_string_lossy().into_owned());
    Path::new("data/shards").join(format!("{corpus}-{}", tokenizer.name()))
}
