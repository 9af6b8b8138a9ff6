//! Adaptive depth (issue 12; the paper's figure 6 at CPU size): pretrain a neural ODE once,
//! re-discretise it into models of other depths, and fine-tune each on a new corpus.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin adaptive_depth [-- --out runs/adaptive-depth]
//!     [--pretrain-steps 2000] [--finetune-steps 600] [--eval-every 50] [--eval-batches 40]
//!     [--lora-rank 32] [--seed 1337] [--quick]
//! ```
//!
//! The phases, each announced by a line on the terminal:
//!
//! 1. **Pretraining** on Shakespeare (`data/corpus/shakespeare`, byte tokens): the `tiny` neural
//!    ODE with L = 6 Euler steps, and a GPT-2 of matching depth (6 layers, same width, heads and
//!    context), with the same steps, batches and seed. Both are scored on the Shakespeare
//!    validation split.
//! 2. **Conversion**: the ODE becomes an ordinary N'-layer model for each N' in
//!    {L/2, 2L/3, L, 4L/3} = {3, 4, 6, 8} (`NeuralOde::to_discrete`, MODEL.md section 10: layer
//!    i holds W(t_i) at t_i = (i + 1)/N' and computes x + (1/N') (attn + mlp)).
//! 3. **Fine-tuning** on Moby-Dick (`data/corpus/moby-dick`) of every converted model and of the
//!    GPT, twice: fully (every parameter trains) and with LoRA (the base frozen; low-rank factors
//!    on every linear map, and the embeddings, train). Every run sees the same training windows
//!    in the same order, and is scored every `--eval-every` steps on the same first
//!    `--eval-batches` batches of the Moby-Dick validation split; the score at step 0, before
//!    any training, is the zero-shot perplexity of the converted model.
//!
//! Perplexities are per byte: exp(mean cross-entropy in nats per byte).
//!
//! Where this run differs from the paper's recipe (MODEL.md sections 9 and 10), and why:
//!
//! - **Size.** The paper pretrains with L = 18 on OpenWebText (GPT-2 BPE, D = 1024) and converts
//!   to N' in {9, 12, 18, 24}; here L = 6 on 5 MB of Shakespeare (bytes, D = 128), converted to
//!   the same fractions of L, so that the whole experiment runs on two CPU cores in well under an
//!   hour.
//! - **LoRA rank.** The paper's rank 200 exceeds the width D = 128 here (a rank-128 change of a
//!   [128, 128] map is already a full one), so the rank is scaled down (32 by default) and alpha
//!   with it, keeping the paper's scale alpha/r = 8/200 = 0.04. Both factors start at the paper's
//!   1e-6 N(0, 1) and the embeddings train, as in the paper.
//! - **Learning rates.** The tiny model pretrains at the train binary's 2e-3 with beta2 0.99
//!   (bench/RESULTS.md has the runs that chose them), not the paper's 6e-4. Fine-tuning keeps the
//!   paper's ratio of fine-tuning to pretraining peak rate, 3e-4 / 6e-4 = 1/2: 1e-3, with the
//!   tiny recipe's beta2 0.99, weight decay 0.1, 1% warmup and cosine decay to 0.1x.
//! - **The GPT.** The paper's baseline is a 24-layer GPT, the depth of its largest converted
//!   model; here the GPT matches the pretraining depth L = 6 (so it has the same number of layers
//!   as the N' = L model and fewer than N' = 4L/3).
//!
//! Writes into `--out`: `curves-full.png` and `curves-lora.png` (the two panels of figure 6:
//! validation perplexity against the fine-tuning step, one line per model); the same from a
//! quarter of the way in, `curves-full-tail.png` and `curves-lora-tail.png` (the zero-shot
//! scores of converted models can be tens of times the final ones, which squashes the ends of
//! the whole curves together); `results.md` (the final table and the settings); `results.json`
//! (everything, curves included); and the two pretrained models
//! (`pretrained-neural-ode.safetensors`, `pretrained-gpt2.safetensors`, which
//! `eval` and `sample` load). The table is printed last.
//!
//! Known limits: one seed per run, and each score is the mean over the first `--eval-batches`
//! validation batches (40 by default: 30,720 bytes, about a quarter of Moby-Dick's validation
//! split), so differences of a percent or two in perplexity are within the noise of the
//! experiment. Every run is deterministic: the same flags give the same numbers, bit for bit.

use clap::Parser;
use odeflow_data::{ensure_shards, PrepareConfig, ShardSet, Tokenizer, ValLoader};
use odeflow_model::lora::{LoraConfig, LoraInit};
use odeflow_model::optim::OptimConfig;
use odeflow_model::plot::{plot_curves, Curve};
use odeflow_model::train::{self, Precision, TrainOptions, Trainer};
use odeflow_model::{checkpoint, Config, Forward, GradMode, Model, ModelKind, Solver};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The pretraining depth L (Euler steps of the ODE, layers of the GPT).
const PRETRAIN_STEPS_L: usize = 6;
/// The converted depths N' = L/2, 2L/3, L, 4L/3, the fractions of L in the paper's figure 6
/// (18 -> 9, 12, 18, 24).
const CONVERTED_DEPTHS: [usize; 4] = [3, 4, 6, 8];
/// Windows per batch, pretraining and fine-tuning alike (the train binary's default).
const BATCH: usize = 12;
/// The tiny recipe's pretraining peak rate and second-moment decay (the train binary's).
const PRETRAIN_LR: f32 = 2e-3;
const TINY_BETA2: f32 = 0.99;
/// The paper's fine-tuning / pretraining peak rates, 3e-4 / 6e-4, applied to `PRETRAIN_LR`.
const FINETUNE_LR: f32 = PRETRAIN_LR * (3e-4 / 6e-4);
/// The paper's weight decay, pretraining (MODEL.md section 9) and fine-tuning (section 10).
const PRETRAIN_WEIGHT_DECAY: f32 = 0.1;
const FINETUNE_WEIGHT_DECAY: f32 = 0.1;
/// The paper's LoRA scale alpha / r = 8 / 200, kept when the rank is scaled down.
const LORA_SCALE: f32 = 8.0 / 200.0;
/// Print the mean training loss of pretraining every this many steps.
const PRETRAIN_LOG_EVERY: usize = 100;

const SHAKESPEARE: &str = "data/corpus/shakespeare";
const SHAKESPEARE_SHARDS: &str = "data/shards/byte";
const MOBY_DICK: &str = "data/corpus/moby-dick";
const MOBY_DICK_SHARDS: &str = "data/shards/moby-dick-byte";

/// Pretrain a neural ODE and a GPT-2 on Shakespeare, convert the ODE to 3, 4, 6 and 8 layers,
/// fine-tune each (and the GPT) on Moby-Dick fully and with LoRA, and plot the validation
/// perplexity curves (the paper's figure 6).
#[derive(Parser, Debug)]
struct Args {
    /// Pretraining steps of each model on Shakespeare [default: 2000; --quick: 30].
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// Fine-tuning steps of each run on Moby-Dick [default: 600; --quick: 10].
    #[arg(long)]
    finetune_steps: Option<usize>,
    /// Score the fine-tuning runs every this many steps [default: 50; --quick: 5].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Validation batches of 12 x 64 bytes per score, the first ones of each split, always the
    /// same (0: the whole split) [default: 40; --quick: 2].
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Rank r of the LoRA factors; alpha is set to keep the paper's alpha/r = 0.04 [default: 32].
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Seeds the initial weights, the LoRA factors and the order of the training windows.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Where the plots, the table, the JSON and the pretrained models go.
    #[arg(long, default_value = "runs/adaptive-depth")]
    out: PathBuf,
    /// A smoke run of about a minute that checks the pipeline (tiny step counts); flags given
    /// beside it still apply.
    #[arg(long)]
    quick: bool,
}

/// The run's settings once the defaults and --quick are applied.
#[derive(Clone, Debug)]
struct Settings {
    pretrain_steps: usize,
    finetune_steps: usize,
    eval_every: usize,
    eval_batches: usize,
    lora_rank: usize,
    seed: u64,
    out: PathBuf,
}

impl Settings {
    fn from_args(args: &Args) -> Result<Settings> {
        let pick = |given: Option<usize>, quick: usize, full: usize| {
            given.unwrap_or(if args.quick { quick } else { full })
        };
        let settings = Settings {
            pretrain_steps: pick(args.pretrain_steps, 30, 2000),
            finetune_steps: pick(args.finetune_steps, 10, 600),
            eval_every: pick(args.eval_every, 5, 50),
            eval_batches: pick(args.eval_batches, 2, 40),
            lora_rank: args.lora_rank.unwrap_or(32),
            seed: args.seed,
            out: args.out.clone(),
        };
        let positive = [
            ("--pretrain-steps", settings.pretrain_steps),
            ("--finetune-steps", settings.finetune_steps),
            ("--eval-every", settings.eval_every),
            ("--lora-rank", settings.lora_rank),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{flag} must be at least 1").into());
        }
        Ok(settings)
    }

    /// The LoRA of the fine-tuning runs: the paper's, at the rank asked for (see the module doc).
    fn lora(&self) -> LoraConfig {
        LoraConfig {
            rank: self.lora_rank,
            alpha: LORA_SCALE * self.lora_rank as f32,
            targets: Vec::new(),
            init: LoraInit::Paper,
            train_embeddings: true,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "pretrain_steps": self.pretrain_steps,
            "finetune_steps": self.finetune_steps,
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "batch": BATCH,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora().alpha,
            "pretrain_lr": PRETRAIN_LR,
            "finetune_lr": FINETUNE_LR,
            "beta2": TINY_BETA2,
            "finetune_weight_decay": FINETUNE_WEIGHT_DECAY,
            "seed": self.seed,
        })
    }
}

/// A pretrained model and its score on the pretraining corpus.
struct Pretrained {
    trainer: Trainer,
    shakespeare_ppl: f64,
    seconds: f64,
}

/// One fine-tuning run: its curve of (step, Moby-Dick validation perplexity), from step 0.
struct FineTune {
    curve: Vec<(f64, f64)>,
    trainable: usize,
    seconds: f64,
}

impl FineTune {
    fn zero_shot(&self) -> f64 {
        self.curve[0].1
    }

    fn final_ppl(&self) -> f64 {
        self.curve.last().expect("a curve starts with step 0").1
    }

    fn to_json(&self) -> Value {
        json!({
            "final_ppl": self.final_ppl(),
            "trainable_params": self.trainable,
            "seconds": self.seconds,
            "curve": self.curve,
        })
    }
}

/// A row of the table: one starting model, fine-tuned both ways.
struct Row {
    label: String,
    layers: usize,
    /// The starting model's perplexity on the Shakespeare validation split.
    shakespeare_ppl: f64,
    full: FineTune,
    lora: FineTune,
}

fn main() {
    odeflow_runtime::memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version print and exit 0; a bad flag prints its error and exits 1
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(1);
        }
    };
    if let Err(e) = Settings::from_args(&args).and_then(|s| run(&s)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(s: &Settings) -> Result<()> {
    let start = Instant::now();
    fs::create_dir_all(&s.out).map_err(|e| format!("cannot create {}: {e}", s.out.display()))?;
    let shakespeare = shards(SHAKESPEARE, SHAKESPEARE_SHARDS)?;
    let moby = shards(MOBY_DICK, MOBY_DICK_SHARDS)?;
    let cfg = Config {
        n_steps: PRETRAIN_STEPS_L,
        ..Config::tiny()
    };
    let mut shakespeare_val = shakespeare.val_loader(BATCH, cfg.seq_len)?;
    let mut moby_val = moby.val_loader(BATCH, cfg.seq_len)?;
    println!(
        "adaptive depth | L {PRETRAIN_STEPS_L} -> N' {CONVERTED_DEPTHS:?} | pretrain {} steps, \
         fine-tune {} steps x {BATCH} x {} bytes | LoRA r {} | out {}",
        s.pretrain_steps,
        s.finetune_steps,
        cfg.seq_len,
        s.lora_rank,
        s.out.display()
    );

    // 1. pretraining on Shakespeare
    let ode = pretrain("neural-ode", &cfg, &shakespeare, &mut shakespeare_val, s)?;
    let gpt_cfg = cfg.clone().with_model(ModelKind::Gpt2);
    let gpt = pretrain("gpt2", &gpt_cfg, &shakespeare, &mut shakespeare_val, s)?;

    // 2 and 3. conversion, zero-shot scores and fine-tuning on Moby-Dick
    let mut rows = Vec::new();
    for &n in &CONVERTED_DEPTHS {
        let label = format!("ODE {PRETRAIN_STEPS_L} -> {n}");
        let make = || convert(ode.trainer.model(), n);
        let shakespeare_ppl = score(&make()?, &mut shakespeare_val, s.eval_batches)?;
        println!("{label}: Shakespeare val ppl {shakespeare_ppl:.3} after conversion");
        rows.push(fine_tune_both(
            &label,
            n,
            shakespeare_ppl,
            &make,
            &moby,
            &mut moby_val,
            s,
        )?);
    }
    let label = format!("GPT-2, {PRETRAIN_STEPS_L} layers");
    // merging a model without LoRA factors gives a plain copy of it
    let make = || Ok(gpt.trainer.model().merge_lora()?);
    rows.push(fine_tune_both(
        &label,
        PRETRAIN_STEPS_L,
        gpt.shakespeare_ppl,
        &make,
        &moby,
        &mut moby_val,
        s,
    )?);

    // 4. the files
    let wall = start.elapsed().as_secs_f64();
    write_outputs(s, &ode, &gpt, &rows, wall)?;
    println!("\n{}", table(&rows));
    println!("done in {wall:.0} s; files in {}", s.out.display());
    Ok(())
}

/// The byte-token shards of `corpus` in `dir`, prepared on the first run.
fn shards(corpus: &str, dir: &str) -> Result<ShardSet> {
    let config = PrepareConfig::new(Tokenizer::Byte);
    ensure_shards(&[PathBuf::from(corpus)], Path::new(dir), &config).map_err(|e| {
        format!(
            "cannot prepare the shards of {corpus} in {dir}: {e} (run from the repository root)"
        )
        .into()
    })
}

/// The options of a run of `steps` steps at peak rate `lr` (AdamW, 1% warmup, cosine to 0.1x).
fn options(cfg: &Config, steps: usize, lr: f32, weight_decay: f32, seed: u64) -> TrainOptions {
    let mut optim = OptimConfig::paper(cfg, steps);
    optim.lr = lr;
    optim.beta2 = TINY_BETA2;
    optim.weight_decay = weight_decay;
    TrainOptions {
        steps,
        batch: BATCH,
        accum: 1,
        seed,
        eval_every: 0,
        eval_batches: 0,
        final_eval_batches: 0,
        checkpoint_every: 0,
        grad: GradMode::Backprop,
        solver: Solver::Euler,
        precision: Precision::F32,
        optim,
    }
}

/// Pretrains a fresh model of `cfg` on `data` and scores it on `val`.
fn pretrain(
    name: &str,
    cfg: &Config,
    data: &ShardSet,
    val: &mut ValLoader,
    s: &Settings,
) -> Result<Pretrained> {
    let start = Instant::now();
    let model = Model::new(cfg, s.seed)?;
    println!(
        "pretrain {name}: {:.3} M parameters, {} steps on Shakespeare",
        model.param_count() as f64 / 1e6,
        s.pretrain_steps
    );
    let loader = data.train_loader(BATCH, cfg.seq_len, s.seed)?;
    let opts = options(
        cfg,
        s.pretrain_steps,
        PRETRAIN_LR,
        PRETRAIN_WEIGHT_DECAY,
        s.seed,
    );
    let mut trainer = Trainer::new(model, loader, opts)?;
    let (mut loss_sum, mut ms_sum, mut count) = (0.0, 0.0, 0);
    while !trainer.is_done() {
        let record = trainer.step()?;
        (loss_sum, ms_sum, count) = (loss_sum + record.loss, ms_sum + record.ms, count + 1);
        if record.step % PRETRAIN_LOG_EVERY == 0 || trainer.is_done() {
            println!(
                "pretrain {name} | step {}/{} | loss {:.4} | {:.1} ms/step",
                record.step,
                s.pretrain_steps,
                loss_sum / count as f64,
                ms_sum / count as f64
            );
            (loss_sum, ms_sum, count) = (0.0, 0.0, 0);
        }
    }
    let shakespeare_ppl = trainer.evaluate(val, s.eval_batches)?.perplexity;
    let seconds = start.elapsed().as_secs_f64();
    println!("pretrain {name}: Shakespeare val ppl {shakespeare_ppl:.3} ({seconds:.0} s)");
    let path = s.out.join(format!("pretrained-{name}.safetensors"));
    checkpoint::save(&path, trainer.model(), &[], &BTreeMap::new())?;
    Ok(Pretrained {
        trainer,
        shakespeare_ppl,
        seconds,
    })
}

/// The pretrained ODE `model` as an ordinary model of `n` layers (MODEL.md section 10).
fn convert(model: &Model, n: usize) -> Result<Model> {
    match model {
        Model::Ode(ode) => Ok(Model::Discrete(ode.to_discrete(n)?)),
        _ => Err("only an ODE model can be re-discretised".into()),
    }
}

/// The perplexity of `model` on the first `batches` batches of `val`, without dropout.
fn score(model: &Model, val: &mut ValLoader, batches: usize) -> Result<f64> {
    let record = train::evaluate(model, val, batches, 0, &Forward::eval(), None)?;
    Ok(record.perplexity)
}

/// The row of one starting model: `make` builds a fresh copy of it for each of the two runs.
fn fine_tune_both(
    label: &str,
    layers: usize,
    shakespeare_ppl: f64,
    make: &dyn Fn() -> Result<Model>,
    data: &ShardSet,
    val: &mut ValLoader,
    s: &Settings,
) -> Result<Row> {
    let full = fine_tune(&format!("{label} full"), make()?, data, val, s)?;
    let lora_model = make()?.with_lora(&s.lora(), s.seed)?;
    let lora = fine_tune(&format!("{label} LoRA"), lora_model, data, val, s)?;
    Ok(Row {
        label: label.to_string(),
        layers,
        shakespeare_ppl,
        full,
        lora,
    })
}

/// Fine-tunes `model` on `data`, scoring it on `val` at step 0 and every `eval_every` steps.
fn fine_tune(
    name: &str,
    model: Model,
    data: &ShardSet,
    val: &mut ValLoader,
    s: &Settings,
) -> Result<FineTune> {
    let start = Instant::now();
    let trainable = model.trainable_count();
    let cfg = model.config().clone();
    // the same seed for every run: the same windows in the same order
    let loader = data.train_loader(BATCH, cfg.seq_len, s.seed)?;
    let opts = options(
        &cfg,
        s.finetune_steps,
        FINETUNE_LR,
        FINETUNE_WEIGHT_DECAY,
        s.seed,
    );
    let mut trainer = Trainer::new(model, loader, opts)?;
    let zero_shot = trainer.evaluate(val, s.eval_batches)?.perplexity;
    println!(
        "fine-tune {name}: {trainable} trainable parameters | step 0 | val ppl {zero_shot:.3}"
    );
    let mut curve = vec![(0.0, zero_shot)];
    let (mut loss_sum, mut ms_sum, mut count) = (0.0, 0.0, 0);
    while !trainer.is_done() {
        let record = trainer.step()?;
        (loss_sum, ms_sum, count) = (loss_sum + record.loss, ms_sum + record.ms, count + 1);
        if record.step % s.eval_every == 0 || trainer.is_done() {
            let ppl = trainer.evaluate(val, s.eval_batches)?.perplexity;
            curve.push((record.step as f64, ppl));
            println!(
                "fine-tune {name} | step {}/{} | loss {:.4} | val ppl {ppl:.3} | {:.1} ms/step",
                record.step,
                s.finetune_steps,
                loss_sum / count as f64,
                ms_sum / count as f64
            );
            (loss_sum, ms_sum, count) = (0.0, 0.0, 0);
        }
    }
    Ok(FineTune {
        curve,
        trainable,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The plots, the table with its settings, and the JSON, into `--out`.
fn write_outputs(
    s: &Settings,
    ode: &Pretrained,
    gpt: &Pretrained,
    rows: &[Row],
    wall: f64,
) -> Result<()> {
    // the whole curves, from the zero-shot score; then their last three quarters, where the
    // zero-shot scores (up to tens of times the final ones) no longer squash the axis
    let tail = (s.finetune_steps / 4) as f64;
    for (name, what, pick) in PANELS {
        plot(
            rows,
            &s.out.join(format!("curves-{name}.png")),
            what,
            0.0,
            pick,
        )?;
        let path = s.out.join(format!("curves-{name}-tail.png"));
        plot(rows, &path, what, tail, pick)?;
    }
    let markdown = format!("{}\n{}", table(rows), settings_note(s, ode, gpt, wall));
    fs::write(s.out.join("results.md"), markdown)?;
    let json = json!({
        "settings": s.to_json(),
        "pretrain": {
            "depth": PRETRAIN_STEPS_L,
            "ode": { "shakespeare_val_ppl": ode.shakespeare_ppl, "seconds": ode.seconds },
            "gpt2": { "shakespeare_val_ppl": gpt.shakespeare_ppl, "seconds": gpt.seconds },
        },
        "rows": rows.iter().map(|r| json!({
            "model": r.label,
            "layers": r.layers,
            "shakespeare_val_ppl": r.shakespeare_ppl,
            "zero_shot_ppl": r.full.zero_shot(),
            "full": r.full.to_json(),
            "lora": r.lora.to_json(),
        })).collect::<Vec<_>>(),
        "wall_seconds": wall,
    });
    fs::write(
        s.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

/// Which of a row's two runs a panel shows.
type Pick = fn(&Row) -> &FineTune;

/// The panels of figure 6: file name, title, and which run of a row each shows.
const PANELS: [(&str, &str, Pick); 2] = [
    ("full", "full fine-tuning", |r| &r.full),
    ("lora", "LoRA fine-tuning", |r| &r.lora),
];

/// One panel of figure 6: a line per model of `rows`, the run `pick` chooses, from the first
/// point at or after step `from`.
fn plot(rows: &[Row], path: &Path, what: &str, from: f64, pick: Pick) -> Result<()> {
    let points: Vec<Vec<(f64, f64)>> = rows
        .iter()
        .map(|r| {
            pick(r)
                .curve
                .iter()
                .filter(|p| p.0 >= from)
                .copied()
                .collect()
        })
        .collect();
    let curves: Vec<Curve> = rows
        .iter()
        .zip(&points)
        .map(|(r, points)| Curve {
            label: &r.label,
            points,
        })
        .collect();
    let title = if from > 0.0 {
        format!("Moby-Dick validation perplexity, {what}, from step {from}")
    } else {
        format!("Moby-Dick validation perplexity, {what}")
    };
    let y_label = "perplexity (per byte)";
    plot_curves(path, &title, "fine-tuning step", y_label, &curves)?;
    Ok(())
}

/// The final table, in markdown.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| model | layers | Shakespeare ppl | Moby-Dick zero-shot ppl | full fine-tune ppl | \
         LoRA ppl | trainable full | trainable LoRA |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.label,
            r.layers,
            r.shakespeare_ppl,
            r.full.zero_shot(),
            r.full.final_ppl(),
            r.lora.final_ppl(),
            r.full.trainable,
            r.lora.trainable
        );
    }
    out
}

/// What the table's numbers mean and how they were made.
fn settings_note(s: &Settings, ode: &Pretrained, gpt: &Pretrained, wall: f64) -> String {
    let batches = match s.eval_batches {
        0 => "the whole validation split".to_string(),
        n => format!("the first {n} validation batches of {BATCH} x 64 bytes"),
    };
    let lora = s.lora();
    format!(
        "Perplexity per byte, on {batches} of each corpus. Pretrained on Shakespeare for {} steps \
         (ODE L = {PRETRAIN_STEPS_L}: val ppl {:.3}, {:.0} s; GPT-2 {PRETRAIN_STEPS_L} layers: \
         val ppl {:.3}, {:.0} s) at lr {PRETRAIN_LR:.0e}, beta2 {TINY_BETA2}; \"Shakespeare ppl\" \
         is each starting model's after conversion, before fine-tuning. Fine-tuned on Moby-Dick \
         for {} steps of {BATCH} x 64 bytes, the same windows for every run, at lr \
         {FINETUNE_LR:.0e} (the paper's 3e-4 : 6e-4 ratio to the pretraining rate), beta2 \
         {TINY_BETA2}, weight decay {FINETUNE_WEIGHT_DECAY}, 1% warmup, cosine to 0.1x. LoRA: \
         rank {} with alpha {:.2} (the paper's rank 200 is above the width D = 128; its scale \
         alpha/r = 0.04 is kept), both factors from 1e-6 N(0, 1), embeddings trained. Seed {}; \
         whole run {wall:.0} s.\n",
        s.pretrain_steps,
        ode.shakespeare_ppl,
        ode.seconds,
        gpt.shakespeare_ppl,
        gpt.seconds,
        s.finetune_steps,
        lora.rank,
        lora.alpha,
        s.seed,
    )
}
