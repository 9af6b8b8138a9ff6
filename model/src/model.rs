//! `Model`: one type for every model a config can describe, so the binaries (train, eval,
//! sample) treat them alike.

use crate::config::{Config, ModelKind};
use crate::discrete::Discrete;
use crate::gpt2::Gpt2;
use crate::lora::LoraConfig;
use crate::ode::NeuralOde;
use crate::solver::{GradMode, Solver};
use crate::stem::Stem;
use crate::{Error, Result};
use odeflow_autodiff::{Param, Tape, Var};
use odeflow_runtime::{DType, Device, Rng, Tensor};

/// How to run one forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forward {
    /// Training: the seed of this pass's dropout masks. `None`: evaluation, no dropout.
    pub dropout_seed: Option<u64>,
    /// Solver steps of an ODE model (`None`: the config's L). A discrete model or GPT-2 has a
    /// fixed depth and refuses any other.
    pub steps: Option<usize>,
    pub solver: Solver,
    pub grad: GradMode,
}

impl Forward {
    /// Evaluation at the config's depth: no dropout, Euler, per-step checkpointing.
    pub fn eval() -> Forward {
        Forward::default()
    }

    /// Training with the dropout masks of `seed`.
    pub fn train(seed: u64) -> Forward {
        Forward {
            dropout_seed: Some(seed),
            ..Forward::default()
        }
    }
}

/// The seed of the embedding dropout and of each of `n` steps, all drawn from `seed`.
pub(crate) fn dropout_seeds(seed: Option<u64>, n: usize) -> (Option<u64>, Vec<Option<u64>>) {
    match seed {
        None => (None, vec![None; n]),
        Some(s) => {
            let mut rng = Rng::new(s);
            let embed = rng.next_u64();
            (Some(embed), (0..n).map(|_| Some(rng.next_u64())).collect())
        }
    }
}

// one per process, never moved in a hot loop: the size difference costs nothing
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// `neural-ode` or `llama-ode`: one block, solved as an ODE.
    Ode(NeuralOde),
    /// An ODE model re-discretised into ordinary layers (`NeuralOde::to_discrete`).
    Discrete(Discrete),
    /// The vanilla baseline.
    Gpt2(Gpt2),
}

impl Model {
    /// A freshly initialised model of `cfg`, every parameter drawn from (seed, its name).
    pub fn new(cfg: &Config, seed: u64) -> Result<Model> {
        cfg.validate()?;
        Ok(match (cfg.model, cfg.discrete) {
            (ModelKind::Gpt2, _) => Model::Gpt2(Gpt2::new(cfg, seed)),
            (_, true) => Model::Discrete(Discrete::new(cfg, seed)),
            (_, false) => Model::Ode(NeuralOde::new(cfg, seed)),
        })
    }

    pub fn config(&self) -> &Config {
        match self {
            Model::Ode(m) => m.config(),
            Model::Discrete(m) => m.config(),
            Model::Gpt2(m) => m.config(),
        }
    }

    /// The embeddings and the head around the layers.
    pub fn stem(&self) -> &Stem {
        match self {
            Model::Ode(m) => m.stem(),
            Model::Discrete(m) => m.stem(),
            Model::Gpt2(m) => m.stem(),
        }
    }

    /// Every parameter, in a fixed order (the checkpoint's).
    pub fn params(&self) -> &[Param] {
        match self {
            Model::Ode(m) => m.params(),
            Model::Discrete(m) => m.params(),
            Model::Gpt2(m) => m.params(),
        }
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.params()[0].value().device()
    }

    /// Moves every parameter to `device` (a copy each; gradients are dropped). The forward
    /// passes then run there: the constants they make (time rows, RoPE tables, dropout masks)
    /// are made on the parameters' device, and the inputs are moved there by the trainer.
    pub fn to_device(&self, device: Device) -> Result<()> {
        for p in self.params() {
            p.zero_grad();
            p.set_value(p.value().to_device(device)?)?;
        }
        Ok(())
    }

    /// The number of numbers the model holds (equal to `Config::param_count`, as a test
    /// checks).
    pub fn param_count(&self) -> usize {
        self.params().iter().map(Param::numel).sum()
    }

    /// The number of numbers an optimiser updates: all but the frozen ones (a LoRA model's
    /// base).
    pub fn trainable_count(&self) -> usize {
        let trainable = self.params().iter().filter(|p| !p.is_frozen());
        trainable.map(Param::numel).sum()
    }

    /// This model with LoRA factors on its layers (`lora.rs`), the rest frozen but what `lora`
    /// trains. An ODE model has no fixed layers to adapt: convert it first (`to_discrete`).
    pub fn with_lora(self, lora: &LoraConfig, seed: u64) -> Result<Model> {
        let cfg = Config {
            lora: Some(lora.clone()),
            ..self.config().clone()
        };
        cfg.validate()?;
        let device = self.device();
        let model = match self {
            Model::Ode(_) => unreachable!("validate refuses LoRA on an ODE model"),
            Model::Discrete(m) => Model::Discrete(m.with_lora(lora, seed)),
            Model::Gpt2(m) => Model::Gpt2(m.with_lora(lora, seed)),
        };
        // the new factors start on the CPU; the base may be elsewhere
        for p in model.params() {
            p.set_value(p.value().to_device(device)?)?;
        }
        Ok(model)
    }

    /// The model with its LoRA factors merged into the weights, for export: no LoRA left, the
    /// same outputs. A model without LoRA comes back as a copy of itself.
    pub fn merge_lora(&self) -> Result<Model> {
        match self {
            Model::Ode(m) => Err(Error::Config {
                msg: format!(
                    "a {} model has no LoRA factors to merge",
                    m.config().model.name()
                ),
            }),
            Model::Discrete(m) => Ok(Model::Discrete(m.merge_lora()?)),
            Model::Gpt2(m) => Ok(Model::Gpt2(m.merge_lora()?)),
        }
    }

    /// Vector-field evaluations of one forward pass (the layer count for GPT-2 and discrete
    /// models).
    pub fn nfe(&self, fwd: &Forward) -> usize {
        match self {
            Model::Ode(m) => fwd.solver.nfe(fwd.steps.unwrap_or(m.config().n_steps)),
            _ => self.config().n_steps,
        }
    }

    /// The logits of every position.
    ///
    /// Shapes: ids [B, T] (u32, T <= seq_len) -> logits [B, T, V]
    pub fn forward(&self, tape: &Tape, ids: &Tensor, fwd: &Forward) -> Result<Var> {
        self.check_input(ids, fwd)?;
        Ok(match self {
            Model::Ode(m) => m.forward(tape, ids, fwd)?,
            Model::Discrete(m) => m.forward(tape, ids, fwd)?,
            Model::Gpt2(m) => m.forward(tape, ids, fwd)?,
        })
    }

    /// The mean next-token cross-entropy of predicting `targets` from `ids`.
    ///
    /// Shapes: ids, targets [B, T] (u32) -> [] (nats per token)
    pub fn loss(&self, tape: &Tape, ids: &Tensor, targets: &Tensor, fwd: &Forward) -> Result<Var> {
        if targets.shape() != ids.shape() {
            let msg = format!(
                "targets {:?} must match ids {:?}",
                targets.shape(),
                ids.shape()
            );
            return Err(Error::Input { msg });
        }
        let logits = self.forward(tape, ids, fwd)?;
        let rows = ids.numel();
        let v = self.config().vocab_size;
        let flat = logits.reshape(&[rows, v])?;
        Ok(flat.cross_entropy(&targets.reshape(&[rows])?, None)?)
    }

    fn check_input(&self, ids: &Tensor, fwd: &Forward) -> Result<()> {
        let cfg = self.config();
        let bad = |msg: String| Err(Error::Input { msg });
        if ids.rank() != 2 || ids.dtype() != DType::U32 {
            return bad(format!(
                "ids must be a [B, T] u32 tensor, got {:?} {}",
                ids.shape(),
                ids.dtype()
            ));
        }
        if ids.shape()[1] > cfg.seq_len {
            let t = ids.shape()[1];
            return bad(format!(
                "a sequence of {t} tokens is longer than the model's context of {}; \
                 keep the last {} tokens or use a model with a longer seq_len",
                cfg.seq_len, cfg.seq_len
            ));
        }
        self.check_forward(fwd)
    }

    /// Whether this model can run as `fwd` asks: any step count, solver and gradient mode for
    /// an ODE model; its own depth, Euler and an exact gradient for the others.
    pub fn check_forward(&self, fwd: &Forward) -> Result<()> {
        let cfg = self.config();
        let bad = |msg: String| Err(Error::Input { msg });
        let fixed_depth = !matches!(self, Model::Ode(_));
        let kind = if cfg.discrete {
            "re-discretised"
        } else {
            cfg.model.name()
        };
        match fwd.steps {
            Some(0) => return bad("the step count must be at least 1".into()),
            Some(n) if fixed_depth && n != cfg.n_steps => {
                return bad(format!(
                    "this {kind} model has a fixed depth of {} layers; only an ODE model runs at \
                     another step count (convert one with to_discrete for a new depth)",
                    cfg.n_steps
                ))
            }
            _ => {}
        }
        if fixed_depth && fwd.solver != Solver::Euler {
            return bad(format!(
                "this {kind} model's layers are fixed Euler steps; only an ODE model runs with \
                 the {} solver",
                fwd.solver
            ));
        }
        if fixed_depth && !fwd.grad.is_exact() {
            return bad(format!(
                "gradient mode {} solves an ODE backwards in time, and this {kind} model has \
                 fixed layers; use backprop or checkpoint",
                fwd.grad
            ));
        }
        Ok(())
    }
}
