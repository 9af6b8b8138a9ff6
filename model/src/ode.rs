//! The neural ODE transformer (MODEL.md sections 1-6): embeddings, one time-dependent block
//! solved as an ODE over t in [0, 1], the final norm and the head.
//!
//! ```text
//! X_0 = embed(ids)
//! dX/dt = F(X, t),   F's weights generated from t by the hypernetworks
//! logits = head(X(1))
//! ```

use crate::block::{self, BlockKind, BlockWeights, FixedBlock, TemporalBlock};
use crate::config::Config;
use crate::discrete::Discrete;
use crate::init::Init;
use crate::layers::Dropout;
use crate::model::{dropout_seeds, Forward};
use crate::solver::{Field, FieldFn, Solver};
use crate::stem::Stem;
use crate::time::phi_rows;
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::{Device, Tensor};
use std::rc::Rc;

pub struct NeuralOde {
    cfg: Config,
    params: Vec<Param>,
    stem: Stem,
    /// Shared with the solver's weight generator (`Field::weights`).
    block: Rc<TemporalBlock>,
}

impl NeuralOde {
    /// A freshly initialised model (`cfg` already validated, `cfg.model` an ODE kind).
    pub fn new(cfg: &Config, seed: u64) -> NeuralOde {
        let mut init = Init::new(seed);
        let stem = Stem::new(&mut init, cfg);
        let block = TemporalBlock::new(&mut init, cfg);
        NeuralOde {
            cfg: cfg.clone(),
            params: init.finish(),
            stem,
            block: Rc::new(block),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Where the parameters live (the constants of a forward pass are made there too).
    pub fn device(&self) -> Device {
        self.params[0].value().device()
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The block's weights at each time in `ts`, from one batched product per module.
    ///
    /// Shapes: ts [N] -> N x BlockWeights
    pub fn weights_at(&self, tape: &Tape, ts: &[f64]) -> Result<Vec<BlockWeights>> {
        let phi = phi_rows(ts, self.cfg.sinusoidal_dim).to_device(self.device())?;
        let phi = tape.constant_cast(phi)?;
        self.block.at(tape, &phi)
    }

    /// Logits of every position, after solving with `fwd.solver` in `fwd.steps` steps (the
    /// config's L by default).
    ///
    /// Shapes: ids [B, T] (u32) -> logits [B, T, V]
    pub fn forward(&self, tape: &Tape, ids: &Tensor, fwd: &Forward) -> Result<Var> {
        let n = fwd.steps.unwrap_or(self.cfg.n_steps);
        let (embed_seed, field_seed) = dropout_seeds(fwd.dropout_seed, 1);
        let x0 = self.stem.embed(tape, ids, embed_seed)?;
        let x1 = fwd
            .solver
            .solve(&x0, &self.field(field_seed[0]), n, fwd.grad)?;
        self.stem.logits(tape, &x1)
    }

    /// The embeddings and the head (a decoder runs them itself, `decode.rs`).
    pub fn stem(&self) -> &Stem {
        &self.stem
    }

    /// X_0: the embeddings the solve starts from, without dropout.
    ///
    /// Shapes: ids [B, T] (u32) -> [B, T, D]
    pub fn embed(&self, tape: &Tape, ids: &Tensor) -> Result<Var> {
        self.stem.embed(tape, ids, None)
    }

    /// The block as the solver sees it: F, and W(t) from the hypernetworks at any times.
    pub fn field(&self, dropout_seed: Option<u64>) -> Field {
        let (block, s, device) = (self.block.clone(), self.cfg.sinusoidal_dim, self.device());
        Field {
            f: field_fn(&self.cfg),
            weights: Rc::new(move |tape: &Tape, ts: &[f64]| {
                let phi = tape.constant_cast(phi_rows(ts, s).to_device(device)?)?;
                Ok(block
                    .at(tape, &phi)?
                    .iter()
                    .map(BlockWeights::vars)
                    .collect())
            }),
            dropout_seed,
        }
    }

    /// The ordinary `n_steps`-layer parallel-block transformer whose layer i holds the weights
    /// at t_i = (i + 1) / n_steps and computes x + (1/n_steps) F_i(x) (MODEL.md section 10).
    /// With n_steps = L its logits are the ODE model's. The copy owns new parameters, so
    /// fine-tuning it leaves this model unchanged.
    pub fn to_discrete(&self, n_steps: usize) -> Result<Discrete> {
        let tape = Tape::new();
        let ts = Solver::Euler.eval_times(n_steps);
        let weights = tape.no_grad(|| self.weights_at(&tape, &ts))?;
        let cfg = Config {
            n_steps,
            discrete: true,
            ..self.cfg.clone()
        };
        let kind = BlockKind::of(&cfg);
        let mut init = Init::new(0);
        let stem = self.stem.copy_into(&mut init);
        let layers = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let values: Vec<Tensor> = w
                    .vars()
                    .iter()
                    .map(|v| v.value().contiguous())
                    .collect::<std::result::Result<_, _>>()?;
                Ok(FixedBlock::from_values(
                    &mut init,
                    &format!("layers.{i}"),
                    kind,
                    values,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Discrete::from_parts(cfg, init.finish(), stem, layers))
    }
}

/// F(x; w) of a `cfg` block, as the pure function the solver wants.
pub fn field_fn(cfg: &Config) -> Rc<FieldFn> {
    let (kind, n_heads, p) = (BlockKind::of(cfg), cfg.n_heads, cfg.dropout);
    Rc::new(move |x: &Var, w: &[Var], seed: Option<u64>| {
        let w = BlockWeights::from_vars(kind, w);
        block::field(x, &w, n_heads, &mut Dropout::new(p, seed))
    })
}
