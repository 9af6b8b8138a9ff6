//! What every model has around its layers: the embeddings in, the final norm and the
//! unembedding out (MODEL.md sections 1, 6 and 7).
//!
//! ```text
//! X_0    = wte[ids] + wpe[0 .. T]       (no wpe in the Llama variant: RoPE instead)
//! logits = norm_f(X) W_teᵀ              (tied)   or   norm_f(X) W_head   (untied)
//! ```

use crate::config::{Config, ModelKind};
use crate::init::Init;
use crate::layers::{Dropout, Linear, Norm, NormKind, FINAL_RMS_EPS, LAYER_NORM_EPS};
use crate::temporal::INIT_STD;
use odeflow_autodiff::{Param, Result, Tape, Var};
use odeflow_runtime::Tensor;

/// The position embeddings of the neural ODE start smaller than GPT-2's (MODEL.md section 3).
const ODE_POSITION_STD: f32 = 0.01;
/// The Llama variant's token embeddings start at N(0, 1) (MODEL.md section 6).
const LLAMA_TOKEN_STD: f32 = 1.0;

pub struct Stem {
    /// [V, D]
    wte: Param,
    /// [P, D]
    wpe: Option<Param>,
    norm_kind: NormKind,
    /// [D], [D] (the Llama variant's RMSNorm has no bias)
    norm_f: (Param, Option<Param>),
    /// [D, V], when the head is untied
    lm_head: Option<Param>,
    dropout: f32,
}

impl Stem {
    /// `wte.weight`, `wpe.weight`, `ln_f.weight`, `ln_f.bias`, `lm_head.weight`, each where the
    /// model has it, initialised as MODEL.md says for `cfg.model`.
    pub fn new(init: &mut Init, cfg: &Config) -> Stem {
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let llama = cfg.model == ModelKind::LlamaOde;
        let token_std = if llama { LLAMA_TOKEN_STD } else { INIT_STD };
        let wte = init.normal("wte.weight", &[v, d], token_std);
        let wpe = match cfg.model {
            ModelKind::NeuralOde => Some(ODE_POSITION_STD),
            ModelKind::Gpt2 => Some(INIT_STD),
            ModelKind::LlamaOde => None,
        };
        let wpe = wpe.map(|std| init.normal("wpe.weight", &[cfg.seq_len, d], std));
        let norm_f = (
            init.ones("ln_f.weight", &[d]),
            (!llama).then(|| init.zeros("ln_f.bias", &[d])),
        );
        let lm_head =
            (!cfg.tie_embeddings).then(|| init.normal("lm_head.weight", &[d, v], INIT_STD));
        Stem {
            wte,
            wpe,
            norm_kind: if llama {
                NormKind::Rms
            } else {
                NormKind::Layer
            },
            norm_f,
            lm_head,
            dropout: cfg.dropout,
        }
    }

    /// The same stem under new parameters (same names and values) registered with `init`, so
    /// that training the copy leaves this one unchanged.
    pub fn copy_into(&self, init: &mut Init) -> Stem {
        let mut copy = |p: &Param| init.value(p.name(), p.value());
        Stem {
            wte: copy(&self.wte),
            wpe: self.wpe.as_ref().map(&mut copy),
            norm_kind: self.norm_kind,
            norm_f: (copy(&self.norm_f.0), self.norm_f.1.as_ref().map(&mut copy)),
            lm_head: self.lm_head.as_ref().map(&mut copy),
            dropout: self.dropout,
        }
    }

    /// X_0, with dropout when `seed` is given.
    ///
    /// Shapes: ids [B, T] (u32) -> [B, T, D]
    pub fn embed(&self, tape: &Tape, ids: &Tensor, seed: Option<u64>) -> Result<Var> {
        Dropout::new(self.dropout, seed).forward(&self.embed_from(tape, ids, 0)?)
    }

    /// X_0 of tokens that sit at positions start..start + T, without dropout: what a decoder
    /// needs for the tokens after `start` cached ones (start + T <= seq_len).
    ///
    /// Shapes: ids [B, T] (u32) -> [B, T, D]
    pub fn embed_from(&self, tape: &Tape, ids: &Tensor, start: usize) -> Result<Var> {
        let x = tape.param_cast(&self.wte)?.embedding(ids)?;
        match &self.wpe {
            Some(wpe) => x.add(&tape.param_cast(wpe)?.narrow(0, start, ids.shape()[1])?),
            None => Ok(x),
        }
    }

    /// Shapes: x [B, T, D] -> logits [B, T, V]
    pub fn logits(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let norm = Norm {
            kind: self.norm_kind,
            eps: match self.norm_kind {
                NormKind::Layer => LAYER_NORM_EPS,
                NormKind::Rms => FINAL_RMS_EPS,
            },
            weight: Some(tape.param_cast(&self.norm_f.0)?),
            bias: self
                .norm_f
                .1
                .as_ref()
                .map(|b| tape.param_cast(b))
                .transpose()?,
        };
        let head = match &self.lm_head {
            Some(h) => tape.param_cast(h)?,
            None => tape.param_cast(&self.wte)?.t()?, // a view of the table (or of its bf16 cast)
        };
        Linear { w: head, b: None }.forward(&norm.forward(x)?)
    }
}
