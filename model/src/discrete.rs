//! A re-discretised ODE model: N' ordinary parallel-block layers, layer i holding the block's
//! weights at t_i = (i + 1) / N' (MODEL.md section 10). Its forward is the Euler solve of the ODE
//! with the weights frozen per layer, so it runs the very same field and step code.

use crate::block::{BlockKind, BlockWeights, FixedBlock};
use crate::config::Config;
use crate::init::Init;
use crate::lora::{self, LoraConfig};
use crate::model::{dropout_seeds, Forward};
use crate::ode::field_fn;
use crate::solver::{Field, Solver};
use crate::stem::Stem;
use crate::temporal::INIT_STD;
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::{Error as RuntimeError, Tensor};
use std::rc::Rc;

pub struct Discrete {
    cfg: Config,
    params: Vec<Param>,
    stem: Stem,
    /// Shared with the solver's weight generator (`Field::weights`).
    layers: Rc<Vec<FixedBlock>>,
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
        let discrete = Discrete::from_parts(cfg.clone(), init.finish(), stem, layers);
        match &cfg.lora {
            Some(lora) => discrete.with_lora(lora, seed),
            None => discrete,
        }
    }

    /// This model with LoRA factors on its layers' linear maps and its base frozen
    /// (`lora.rs`); its config records `lora`, so a checkpoint rebuilds the same model.
    pub fn with_lora(self, lora: &LoraConfig, seed: u64) -> Discrete {
        let Discrete {
            cfg,
            mut params,
            stem,
            layers,
        } = self;
        // only a running forward pass shares the layers (its solver's weight generator)
        let mut layers = Rc::try_unwrap(layers).unwrap_or_else(|_| unreachable!("layers shared"));
        let factors = lora::attach(&mut layers, &params, lora, seed);
        params.extend(factors);
        let cfg = Config {
            lora: Some(lora.clone()),
            ..cfg
        };
        Discrete::from_parts(cfg, params, stem, layers)
    }

    /// The model with its LoRA factors merged into the weights (W + s A B): an ordinary
    /// discrete model with the same outputs, every parameter trainable.
    pub fn merge_lora(&self) -> Result<Discrete> {
        let mut init = Init::new(0);
        let stem = self.stem.copy_into(&mut init);
        let layers = self.layers.iter().map(|layer| layer.merged(&mut init));
        let layers = layers.collect::<Result<Vec<_>>>()?;
        let cfg = Config {
            lora: None,
            ..self.cfg.clone()
        };
        Ok(Discrete::from_parts(cfg, init.finish(), stem, layers))
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
            layers: Rc::new(layers),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The embeddings and the head (a decoder runs them itself, `decode.rs`).
    pub fn stem(&self) -> &Stem {
        &self.stem
    }

    /// X_0: the embeddings the layers start from, without dropout.
    ///
    /// Shapes: ids [B, T] (u32) -> [B, T, D]
    pub fn embed(&self, tape: &Tape, ids: &Tensor) -> Result<Var> {
        self.stem.embed(tape, ids, None)
    }

    /// Every layer's weights lifted onto `tape`, the first layer first (the analysis reads
    /// them).
    pub fn layer_weights(&self, tape: &Tape) -> Result<Vec<BlockWeights>> {
        self.layers.iter().map(|layer| layer.lift(tape)).collect()
    }

    /// Its layers are Euler steps by construction: `Model::check_input` refuses any other
    /// solver, and the adjoint modes (there is no continuous time to solve backwards in).
    ///
    /// Shapes: ids [B, T] (u32) -> logits [B, T, V]
    pub fn forward(&self, tape: &Tape, ids: &Tensor, fwd: &Forward) -> Result<Var> {
        let (embed_seed, field_seed) = dropout_seeds(fwd.dropout_seed, 1);
        let x0 = self.stem.embed(tape, ids, embed_seed)?;
        let layers = self.layers.clone();
        let field = Field {
            f: field_fn(&self.cfg),
            weights: Rc::new(move |tape: &Tape, ts: &[f64]| {
                let lift = |&t: &f64| Ok(BlockWeights::vars(&layer_at(&layers, t)?.lift(tape)?));
                ts.iter().map(lift).collect()
            }),
            dropout_seed: field_seed[0],
        };
        let x = Solver::Euler.solve(&x0, &field, self.layers.len(), fwd.grad)?;
        self.stem.logits(tape, &x)
    }
}

/// The layer that holds the weights of time t: layer i for t = (i + 1) / N'.
fn layer_at(layers: &[FixedBlock], t: f64) -> Result<&FixedBlock> {
    let n = layers.len() as f64;
    let i = (t * n).round();
    if i >= 1.0 && i <= n && (i / n - t).abs() < 1e-12 {
        return Ok(&layers[i as usize - 1]);
    }
    let msg = format!("a {n}-layer discrete model has no layer at t = {t}");
    Err(RuntimeError::InvalidArgument {
        op: "discrete",
        msg,
    }
    .into())
}
