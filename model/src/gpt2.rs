//! The vanilla GPT-2 baseline (MODEL.md section 7): L separate pre-LN sequential blocks,
//! x += attn(ln_1(x)); x += mlp(ln_2(x)), tied embeddings. It shares the stem, the attention and
//! MLP branches and the per-step checkpointing with the ODE models; its parameters carry Hugging
//! Face's GPT-2 names.

use crate::block::{self, BlockKind, BlockWeights, FixedBlock, GPT2_SEQUENTIAL_SLOTS};
use crate::config::Config;
use crate::init::Init;
use crate::layers::Dropout;
use crate::lora::{self, LoraConfig};
use crate::model::{dropout_seeds, Forward};
use crate::solver::{run_step, GradMode};
use crate::stem::Stem;
use crate::temporal::INIT_STD;
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::Tensor;

pub struct Gpt2 {
    cfg: Config,
    params: Vec<Param>,
    stem: Stem,
    layers: Vec<FixedBlock>,
}

impl Gpt2 {
    /// GPT-2's initialisation: N(0, 0.02^2) matrices, the two residual projections scaled by
    /// 1/sqrt(2L) so the residual stream's variance does not grow with depth.
    pub fn new(cfg: &Config, seed: u64) -> Gpt2 {
        let mut init = Init::new(seed);
        let stem = Stem::new(&mut init, cfg);
        let proj_std = INIT_STD / (2.0 * cfg.n_steps as f32).sqrt();
        let layers = (0..cfg.n_steps)
            .map(|i| {
                let prefix = format!("h.{i}");
                FixedBlock::new(
                    &mut init,
                    &prefix,
                    BlockKind::Gpt,
                    &GPT2_SEQUENTIAL_SLOTS,
                    cfg,
                    proj_std,
                )
            })
            .collect();
        let gpt2 = Gpt2 {
            cfg: cfg.clone(),
            params: init.finish(),
            stem,
            layers,
        };
        match &cfg.lora {
            Some(lora) => gpt2.with_lora(lora, seed),
            None => gpt2,
        }
    }

    /// This model with LoRA factors on its layers' linear maps and its base frozen
    /// (`lora.rs`); its config records `lora`, so a checkpoint rebuilds the same model.
    pub fn with_lora(mut self, lora: &LoraConfig, seed: u64) -> Gpt2 {
        let factors = lora::attach(&mut self.layers, &self.params, lora, seed);
        self.params.extend(factors);
        self.cfg.lora = Some(lora.clone());
        self
    }

    /// The model with its LoRA factors merged into the weights (W + s A B): an ordinary GPT-2
    /// with the same outputs, every parameter trainable.
    pub fn merge_lora(&self) -> Result<Gpt2> {
        let mut init = Init::new(0);
        let stem = self.stem.copy_into(&mut init);
        let layers = self.layers.iter().map(|layer| layer.merged(&mut init));
        let layers = layers.collect::<Result<Vec<_>>>()?;
        let mut cfg = self.cfg.clone();
        cfg.lora = None;
        Ok(Gpt2 {
            cfg,
            params: init.finish(),
            stem,
            layers,
        })
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

    /// Shapes: ids [B, T] (u32) -> logits [B, T, V]
    pub fn forward(&self, tape: &Tape, ids: &Tensor, fwd: &Forward) -> Result<Var> {
        let (embed_seed, seeds) = dropout_seeds(fwd.dropout_seed, self.layers.len());
        let mut x = self.stem.embed(tape, ids, embed_seed)?;
        let (n_heads, p) = (self.cfg.n_heads, self.cfg.dropout);
        for (layer, seed) in self.layers.iter().zip(seeds) {
            let inputs: Vec<Var> = std::iter::once(x).chain(layer.lift(tape)?.vars()).collect();
            let step = move |args: &[Var]| {
                let w = BlockWeights::from_vars(BlockKind::Gpt, &args[1..]);
                block::sequential_block(&args[0], &w, n_heads, &mut Dropout::new(p, seed))
            };
            x = run_step(fwd.grad == GradMode::Checkpoint, &inputs, step)?;
        }
        self.stem.logits(tape, &x)
    }
}
