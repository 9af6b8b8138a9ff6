//! A re-discretised ODE model: N' ordinary parallel-block layers, layer i holding the block's
//! weights at t_i = (i + 1) / N' (MODEL.md section 10). Its forward is the Euler solve of the ODE
//! with the weights frozen per layer, so it runs the very same field and step code.

use crate::block::{BlockKind, BlockWeights, FixedBlock};
use crate::config::Config;
use crate::init::Init;
use crate::model::{dropout_seeds, Forward};
use crate::ode::field_fn;
use crate::solver::{Field, Solver};
use crate::stem::Stem;
use crate::temporal::INIT_STD;
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::Tensor;

pub struct Discrete {
    cfg: Config,
    params: Vec<Param>,
    stem: Stem,
    layers: Vec<FixedBlock>,
}

impl Discrete {
    /// A freshly initialised discrete model (norms 1 and 0, matrices N(0, 0.02^2)): the shape a
    /// checkpoint of a converted model is loaded into.
    pub fn new(cfg: &Config, seed: u64) -> Discrete {
        let mut init = Init::new(seed);
        let stem = Stem::new(&mut init, cfg);
        let kind = BlockKind::of(cfg);
        let layers = (0..cfg.n_steps)
            .map(|i| {
                FixedBlock::new(
                    &mut init,
                    &format!("layers.{i}"),
                    kind,
                    kind.slots(),
                    cfg,
                    INIT_STD,
                )
            })
            .collect();
        Discrete::from_parts(cfg.clone(), init.finish(), stem, layers)
    }

    pub(crate) fn from_parts(
        cfg: Config,
        params: Vec<Param>,
        stem: Stem,
        layers: Vec<FixedBlock>,
    ) -> Discrete {
        Discrete {
            cfg,
            params,
            stem,
            layers,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Its layers are Euler steps by construction, so `fwd.solver` is not consulted (only
    /// Euler exists today; when other solvers land, asking a discrete model for one should be
    /// refused like another step count is, in `Model::check_input`).
    ///
    /// Shapes: ids [B, T] (u32) -> logits [B, T, V]
    pub fn forward(&self, tape: &Tape, ids: &Tensor, fwd: &Forward) -> Result<Var> {
        let n = self.layers.len();
        let (embed_seed, seeds) = dropout_seeds(fwd.dropout_seed, n);
        let x0 = self.stem.embed(tape, ids, embed_seed)?;
        let weights = self
            .layers
            .iter()
            .map(|l| BlockWeights::vars(&l.lift(tape)));
        let field = Field {
            f: field_fn(&self.cfg),
            weights: weights.collect(),
            seeds,
        };
        let x = Solver::Euler.solve(&x0, &field, n, fwd.grad)?;
        self.stem.logits(tape, &x)
    }
}
