//! The training loop: one optimiser step at a time, evaluation, and checkpoints that resume
//! exactly.
//!
//! A step (`Trainer::step`) draws `accum` micro-batches of B windows from the train loader, runs
//! forward and backward on each with the loss scaled by 1/accum (so the summed gradient is the
//! gradient of the mean loss over all accum x B windows: gradient accumulation reaches a batch
//! that does not fit at once), then takes one AdamW step (clipping, weight-decay masks and the
//! warmup + cosine schedule live in `optim.rs`).
//!
//! Resuming as if never stopped. Everything a step's numbers depend on is either saved or a pure
//! function of what is saved:
//!
//! - the parameters and both AdamW moments, bit for bit (f32 in the safetensors file), and the
//!   optimiser's step count, which fixes the learning rate and the bias corrections;
//! - the train loader's position: its seed and the number of windows drawn (each window is a
//!   pure function of the two, see `odeflow_data::loader`);
//! - the dropout masks: the seed of micro-batch k of step s is `dropout_seed(seed, s, k)`, a hash,
//!   so there is no random stream whose position could be lost;
//! - the options of the run (`TrainOptions`) and the model config, so a resume cannot silently
//!   continue with another batch size or schedule.
//!
//! Every CPU kernel splits its work at fixed boundaries (`odeflow_runtime::cpu`), so the same
//! inputs give the same bits whatever the scheduling. The test `tests/train_cli.rs` kills a
//! run with SIGKILL and checks the resumed loss curve against an uninterrupted one, bit for bit.
//!
//! The library never prints: `step` and `evaluate` return records, and the `train` binary
//! logs them.

pub mod metrics;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use odeflow_autodiff::Tape;
use odeflow_data::{Batch, LoaderState, TrainLoader, ValLoader};
use odeflow_runtime::rng::{mix64, GOLDEN_GAMMA};
use odeflow_runtime::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::optim::{AdamW, OptimConfig};
use crate::{Error, Forward, GradMode, Model, Result, Solver};

pub use metrics::{EvalRecord, MetricsLog, Record, StepRecord};

/// The metadata key under which a checkpoint records the trainer's state (`RunState`, JSON).
pub const STATE_KEY: &str = "train.state";

/// What a run is asked to do; saved in every checkpoint and checked on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Optimiser steps in the whole run.
    pub steps: usize,
    /// Windows per micro-batch (B).
    pub batch: usize,
    /// Micro-batches per optimiser step: the effective batch is accum x B windows.
    pub accum: usize,
    /// Seeds the loader's window order, the dropout masks and the initial weights.
    pub seed: u64,
    /// Evaluate on the validation split every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Batches of the validation split per periodic evaluation (the first ones, always the
    /// same, so that the numbers compare across evaluations); 0 means the whole split.
    pub eval_batches: usize,
    /// Batches of the evaluation at the end of the run (0: the whole split).
    pub final_eval_batches: usize,
    /// Write a checkpoint every this many steps (0: only at the end and on interrupt).
    pub checkpoint_every: usize,
    /// How the ODE solve is differentiated (backprop, per-step recomputation, the adjoint).
    pub grad: GradMode,
    /// The ODE solver, for training and evaluation (absent from the run states of older
    /// checkpoints, which all trained with Euler).
    #[serde(default)]
    pub solver: Solver,
    /// What each pass computes in: f32, or bf16 with the f32 parameters as masters (older run
    /// states have none: f32).
    #[serde(default)]
    pub precision: Precision,
    pub optim: OptimConfig,
}

impl TrainOptions {
    /// Checks what would otherwise fail late or mean nothing.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { msg });
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if self.batch == 0 || self.accum == 0 {
            return bad(format!(
                "batch and accum must be at least 1, got batch {} and accum {}",
                self.batch, self.accum
            ));
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!(
                "the learning rate must be a positive number, got {}",
                o.lr
            ));
        }
        if o.warmup_steps > self.steps {
            return bad(format!(
                "warmup ({} steps) is longer than the run ({} steps)",
                o.warmup_steps, self.steps
            ));
        }
        Ok(())
    }

    /// Tokens per optimiser step: accum x B x T.
    pub fn tokens_per_step(&self, seq_len: usize) -> usize {
        self.accum * self.batch * seq_len
    }
}

/// The dtype of a pass's arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision, as the paper trains: the parameters stay f32 (the optimiser updates
    /// them), each pass casts them and its constants to bf16 and computes in bf16 (norm
    /// statistics, softmax sums and the loss in f32 inside their kernels), and the gradients
    /// are cast back to f32 on their way to the parameters.
    Bf16,
}

impl Precision {
    /// The tape's compute dtype (`Tape::with_compute`).
    pub fn compute(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {s:?}; choose f32 or bf16")),
        }
    }
}

/// The trainer's position, as a checkpoint records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimiser steps completed.
    pub step: usize,
    pub loader_seed: u64,
    pub windows_drawn: u64,
    pub options: TrainOptions,
    /// Wall-clock seconds spent in steps so far (over every resume), for the log.
    pub train_seconds: f64,
}

/// The seed of the dropout masks of micro-batch `micro` of step `step` (0-based): SplitMix64's
/// finaliser over a counter, so every (step, micro) pair gets an independent stream and resuming
/// needs no saved generator.
pub fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let counter = (step as u64) << 16 | micro as u64;
    mix64(seed ^ counter.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA))
}

/// A model, its optimiser and its data, advanced one step at a time.
pub struct Trainer {
    model: Model,
    optim: AdamW,
    loader: TrainLoader,
    options: TrainOptions,
    step: usize,
    train_seconds: f64,
    batch: Batch,
}

impl Trainer {
    /// A fresh run. `loader` must draw windows of `options.batch` x the model's seq_len.
    pub fn new(model: Model, loader: TrainLoader, options: TrainOptions) -> Result<Trainer> {
        options.validate()?;
        model.check_forward(&Forward {
            grad: options.grad,
            solver: options.solver,
            ..Forward::eval()
        })?;
        let optim = AdamW::new(&model, options.optim)?;
        Ok(Trainer {
            model,
            optim,
            loader,
            options,
            step: 0,
            train_seconds: 0.0,
            batch: Batch::zeros(0, 0),
        })
    }

    /// Continues the run saved at `path`, on `device`. `loader` must be built over the same
    /// shards with the batch and seq_len of the saved options (its own seed and position are
    /// replaced).
    pub fn resume(path: &Path, mut loader: TrainLoader, device: Device) -> Result<Trainer> {
        let loaded = checkpoint::load(path)?;
        let state = run_state(path, &loaded.metadata)?;
        loaded.model.to_device(device)?;
        let mut optim = AdamW::new(&loaded.model, state.options.optim)?;
        optim.load_state(&loaded.extra, state.step as u64)?;
        loader.resume(LoaderState {
            seed: state.loader_seed,
            windows_drawn: state.windows_drawn,
        });
        Ok(Trainer {
            model: loaded.model,
            optim,
            loader,
            options: state.options,
            step: state.step,
            train_seconds: state.train_seconds,
            batch: Batch::zeros(0, 0),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Optimiser steps completed.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.options.steps
    }

    /// Seconds spent inside `step` over the whole run, resumes included.
    pub fn train_seconds(&self) -> f64 {
        self.train_seconds
    }

    /// The forward settings of micro-batch `micro` of the current step.
    fn forward_options(&self, micro: usize) -> Forward {
        Forward {
            grad: self.options.grad,
            solver: self.options.solver,
            ..Forward::train(dropout_seed(self.options.seed, self.step, micro))
        }
    }

    /// One optimiser step over accum micro-batches. A NaN or infinite loss or gradient is an
    /// error and changes nothing that a checkpoint would save: the parameters, the moments and
    /// the step count stay as they were (the loader has moved on, but a resume restores it
    /// from the last checkpoint).
    pub fn step(&mut self) -> Result<StepRecord> {
        let start = Instant::now();
        let (b, t) = (self.options.batch, self.model.config().seq_len);
        let accum = self.options.accum;
        let mut loss_sum = 0.0f64;
        for micro in 0..accum {
            self.loader.next_batch_into(&mut self.batch);
            let device = self.model.device();
            let ids = Tensor::from_vec(self.batch.inputs.clone(), &[b, t])?.to_device(device)?;
            let targets = Tensor::from_vec(self.batch.targets.clone(), &[b, t])?;
            let targets = targets.to_device(device)?;
            let tape = Tape::with_compute(self.options.precision.compute());
            let fwd = self.forward_options(micro);
            let loss = self.model.loss(&tape, &ids, &targets, &fwd)?;
            let value = loss.value().to_f32_vec()?[0] as f64;
            if !value.is_finite() {
                self.clear_grads();
                return Err(Error::NonFinite {
                    what: format!("training loss at step {} is {value}", self.step + 1),
                });
            }
            loss_sum += value;
            // the mean over micro-batches: each contributes 1/accum of its gradient
            let scaled = if accum > 1 {
                loss.scale(1.0 / accum as f32)?
            } else {
                loss
            };
            tape.backward(&scaled)?;
        }
        let stats = match self.optim.step() {
            Ok(stats) => stats,
            Err(e) => {
                self.clear_grads();
                return Err(e);
            }
        };
        self.step += 1;
        let seconds = start.elapsed().as_secs_f64();
        self.train_seconds += seconds;
        Ok(StepRecord {
            step: self.step,
            loss: loss_sum / accum as f64,
            lr: stats.lr as f64,
            grad_norm: stats.grad_norm as f64,
            ms: seconds * 1e3,
            tokens_per_s: (accum * b * t) as f64 / seconds,
            nfe: self.model.nfe(&self.forward_options(0)),
        })
    }

    fn clear_grads(&self) {
        self.model.params().iter().for_each(|p| p.zero_grad());
    }

    /// The mean loss over the first `max_batches` batches of `val` (all of them if 0), and its
    /// perplexity, at the config's depth without dropout. Rewinds `val` first.
    pub fn evaluate(&self, val: &mut ValLoader, max_batches: usize) -> Result<EvalRecord> {
        let fwd = Forward {
            solver: self.options.solver,
            ..Forward::eval()
        };
        let compute = self.options.precision.compute();
        evaluate(&self.model, val, max_batches, self.step, &fwd, compute)
    }

    /// The state `save` records, for logging.
    pub fn run_state(&self) -> RunState {
        let loader = self.loader.state();
        RunState {
            step: self.step,
            loader_seed: loader.seed,
            windows_drawn: loader.windows_drawn,
            options: self.options.clone(),
            train_seconds: self.train_seconds,
        }
    }

    /// Writes the model, the optimiser moments and the run state to `path`, atomically (the
    /// previous checkpoint stays whole until the new one is complete).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = serde_json::to_string(&self.run_state()).expect("plain data serialises");
        let metadata = BTreeMap::from([(STATE_KEY.to_string(), state)]);
        checkpoint::save(path, &self.model, &self.optim.state(), &metadata)
    }
}

/// The run state recorded in a checkpoint's metadata.
pub fn run_state(path: &Path, metadata: &BTreeMap<String, String>) -> Result<RunState> {
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let json = metadata.get(STATE_KEY).ok_or_else(|| {
        bad(format!(
            "it has no training state ({STATE_KEY}): it was not written by the trainer, so it \
             cannot be resumed (it can still be evaluated or fine-tuned)"
        ))
    })?;
    serde_json::from_str(json).map_err(|e| bad(format!("its training state is unreadable: {e}")))
}

/// The solver the run saved at `path` trained with, when its metadata records a run state (a
/// checkpoint not written by the trainer has none): what eval and sample run by default.
pub fn trained_solver(path: &Path, metadata: &BTreeMap<String, String>) -> Option<Solver> {
    run_state(path, metadata)
        .ok()
        .map(|state| state.options.solver)
}

/// The mean loss of `model` run as `fwd` says, computing in `compute` (`None`: as stored),
/// over the first `max_batches` batches of `val` (all if 0).
pub fn evaluate(
    model: &Model,
    val: &mut ValLoader,
    max_batches: usize,
    step: usize,
    fwd: &Forward,
    compute: Option<DType>,
) -> Result<EvalRecord> {
    val.reset();
    let limit = if max_batches == 0 {
        usize::MAX
    } else {
        max_batches
    };
    let start = Instant::now();
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    let mut batches = 0;
    while batches < limit {
        let Some(batch) = val.next_batch() else {
            break;
        };
        let (b, t) = (batch.batch, batch.seq_len);
        let device = model.device();
        let ids = Tensor::from_vec(batch.inputs, &[b, t])?.to_device(device)?;
        let targets = Tensor::from_vec(batch.targets, &[b, t])?.to_device(device)?;
        let tape = Tape::with_compute(compute);
        let loss = tape.no_grad(|| model.loss(&tape, &ids, &targets, fwd))?;
        // the loss is a mean over the batch's tokens: weight it by their number
        sum += loss.value().to_f32_vec()?[0] as f64 * (b * t) as f64;
        tokens += b * t;
        batches += 1;
    }
    if tokens == 0 {
        return Err(Error::Input {
            msg: "the validation split holds no full batch: lower --batch or --seq-len".into(),
        });
    }
    let loss = sum / tokens as f64;
    if !loss.is_finite() {
        return Err(Error::NonFinite {
            what: format!("validation loss at step {step} is {loss}"),
        });
    }
    Ok(EvalRecord {
        step,
        loss,
        perplexity: loss.exp(),
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use odeflow_data::{write_shard, Shard};

    /// A trainer over a shard of pseudo-random bytes, for a small model without dropout.
    fn trainer(dir: &Path, batch: usize, accum: usize) -> Trainer {
        let cfg = Config {
            seq_len: 8,
            d_model: 16,
            n_heads: 2,
            n_steps: 2,
            time_embed_dim: 2,
            sinusoidal_dim: 2,
            ..Config::tiny()
        };
        let path = dir.join("train.bin");
        if !path.exists() {
            let tokens: Vec<u32> = (0..4000u32).map(|i| (i * 7919 + i / 3) % 256).collect();
            write_shard(&path, &tokens, 256).unwrap();
        }
        let shard = Shard::open(&path, 256).unwrap();
        let loader = TrainLoader::new(vec![shard], batch, cfg.seq_len, 5).unwrap();
        let options = TrainOptions {
            steps: 3,
            batch,
            accum,
            seed: 5,
            eval_every: 0,
            eval_batches: 0,
            final_eval_batches: 0,
            checkpoint_every: 0,
            grad: GradMode::Backprop,
            solver: Solver::Euler,
            precision: Precision::F32,
            optim: OptimConfig::paper(&cfg, 3),
        };
        Trainer::new(Model::new(&cfg, 5).unwrap(), loader, options).unwrap()
    }

    #[test]
    fn accumulating_two_half_batches_is_one_step_on_the_whole_batch() {
        // micro-batches take consecutive windows, so 2 x 3 windows are the same 6 windows
        let dir = tempfile::tempdir().unwrap();
        let (mut whole, mut halves) = (trainer(dir.path(), 6, 1), trainer(dir.path(), 3, 2));
        for _ in 0..3 {
            let (a, b) = (whole.step().unwrap(), halves.step().unwrap());
            assert!((a.loss - b.loss).abs() < 1e-6, "{} vs {}", a.loss, b.loss);
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm.max(1.0));
        }
        for (p, q) in whole.model().params().iter().zip(halves.model().params()) {
            let (x, y) = (
                p.value().to_f32_vec().unwrap(),
                q.value().to_f32_vec().unwrap(),
            );
            let worst = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "{}: {worst}", p.name());
        }
    }

    #[test]
    fn dropout_seeds_differ_per_step_and_micro_batch_and_repeat_exactly() {
        let mut seen = std::collections::HashSet::new();
        for step in 0..50 {
            for micro in 0..4 {
                assert!(seen.insert(dropout_seed(7, step, micro)), "{step} {micro}");
                assert_eq!(dropout_seed(7, step, micro), dropout_seed(7, step, micro));
            }
        }
        assert_ne!(dropout_seed(7, 0, 0), dropout_seed(8, 0, 0));
    }
}
