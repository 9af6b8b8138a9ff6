//! LoRA (Hu et al., 2021): fine-tuning a layer through a low-rank change of its weights.
//!
//! A linear map x W with W [d_in, d_out] is fine-tuned as x W', where
//!
//! ```text
//! W' = W + s A B,    A [d_in, r],  B [r, d_out],  s = alpha / r
//! ```
//!
//! W stays frozen (`Param::set_frozen`: the tape lifts it as a constant, so no gradient is
//! computed for it) and only A and B train: r (d_in + d_out) numbers per map instead of
//! d_in d_out. The scale s = alpha / r keeps the size of the change about the same when r
//! changes, so alpha needs no retuning with the rank.
//!
//! MODEL.md section 10 gives the paper's recipe, the defaults here: rank 200 on every linear map
//! of every layer, alpha 8 (s = 8/200), both factors drawn from 1e-6 N(0, 1), and the token and
//! position embeddings trained alongside. The usual LoRA initialisation (`LoraInit::ZeroB`:
//! A from N(0, 0.02^2), B = 0) starts W' at exactly W, which is what makes "a fresh LoRA model
//! is the base model" testable to the bit.
//!
//! How W' is computed. Each forward pass forms W' = W + s A B once per layer (one [d_in, r] x
//! [r, d_out] product) and then runs the layer as usual. The alternative, x W + s (x A) B,
//! costs 2 r (d_in + d_out) FLOPs per token instead of 2 r d_in d_out per pass: forming W'
//! is cheaper whenever a pass has more than d_in d_out / (d_in + d_out) tokens (96 for the
//! tiny model's [128, 384] c_attn, against the 768 tokens of its batch), and it lets the
//! decoder, the analysis and the export read W' like any other weight.
//!
//! Merging (`merge`) writes W + s A B into an ordinary weight: the exported model has no LoRA
//! left and computes the same numbers (the same ops on the same values).

use crate::block::{BlockKind, FixedBlock};
use crate::init::Init;
use crate::{Error, Result};
use odeflow_autodiff::{Param, Result as TapeResult, Tape, Var};
use odeflow_runtime::Tensor;
use serde::{Deserialize, Serialize};

/// Which LoRA a model carries; part of its `Config` (so a checkpoint rebuilds the same factors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// r, the rank of the change.
    pub rank: usize,
    /// s = alpha / r scales the change.
    pub alpha: f32,
    /// The linear maps that get factors, by slot (`linear_slots`: "attn.c_attn",
    /// "mlp.c_fc", ...); empty means every linear map.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub init: LoraInit,
    /// Whether the token and position embeddings (and an untied head) train too; every other
    /// base parameter is frozen.
    pub train_embeddings: bool,
}

impl Default for LoraConfig {
    /// The paper's recipe (MODEL.md section 10).
    fn default() -> LoraConfig {
        LoraConfig {
            rank: 200,
            alpha: 8.0,
            targets: Vec::new(),
            init: LoraInit::Paper,
            train_embeddings: true,
        }
    }
}

/// How A and B start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// The paper's: both factors from 1e-6 N(0, 1), so W' starts within about 1e-12 of W.
    #[default]
    Paper,
    /// Hu et al.'s: A from N(0, 0.02^2), B = 0, so W' starts at exactly W.
    ZeroB,
}

impl std::str::FromStr for LoraInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<LoraInit, String> {
        match s {
            "paper" => Ok(LoraInit::Paper),
            "zero-b" => Ok(LoraInit::ZeroB),
            _ => Err(format!("unknown LoRA init {s:?}: paper or zero-b")),
        }
    }
}

/// The names of a block's linear maps, the slots LoRA can target.
pub fn linear_slots(kind: BlockKind) -> &'static [&'static str] {
    match kind {
        BlockKind::Gpt => &["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
        BlockKind::Llama(_) => &[
            "attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down",
        ],
    }
}

impl LoraConfig {
    /// Checks the rank, the scale and that every target names a linear map of `kind`.
    pub fn validate(&self, kind: BlockKind) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { msg });
        if self.rank == 0 {
            return bad("lora rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("lora alpha must be positive, got {}", self.alpha));
        }
        let known = linear_slots(kind);
        if let Some(t) = self.targets.iter().find(|t| !known.contains(&t.as_str())) {
            return bad(format!(
                "lora target {t:?} is not a linear map of this block; the targets are {}",
                known.join(", ")
            ));
        }
        Ok(())
    }

    /// s = alpha / r
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Whether the slot (a parameter's name ends with `{slot}.weight`) gets factors.
    pub fn targets_slot(&self, kind: BlockKind, slot: &str) -> bool {
        let linear = linear_slots(kind).contains(&slot);
        linear && (self.targets.is_empty() || self.targets.iter().any(|t| t == slot))
    }

    /// Whether a base parameter trains beside the factors (the embeddings, when asked).
    pub fn trains_base(&self, name: &str) -> bool {
        self.train_embeddings && matches!(name, "wte.weight" | "wpe.weight" | "lm_head.weight")
    }
}

/// The factors of one weight: W' = W + scale A B.
pub struct LoraPair {
    pub a: Param,
    pub b: Param,
    pub scale: f32,
}

impl LoraPair {
    /// Fresh factors for the weight `w` [d_in, d_out], named `{w's name without .weight}.lora_a`
    /// and `.lora_b`.
    pub fn new(init: &mut Init, w: &Param, cfg: &LoraConfig) -> LoraPair {
        let shape = w.shape();
        let (d_in, d_out, r) = (shape[0], shape[1], cfg.rank);
        let stem = w.name().strip_suffix(".weight").unwrap_or(w.name());
        let (a_name, b_name) = (format!("{stem}.lora_a"), format!("{stem}.lora_b"));
        let (a, b) = match cfg.init {
            LoraInit::Paper => (
                init.normal(&a_name, &[d_in, r], 1e-6),
                init.normal(&b_name, &[r, d_out], 1e-6),
            ),
            LoraInit::ZeroB => (
                init.normal(&a_name, &[d_in, r], 0.02),
                init.zeros(&b_name, &[r, d_out]),
            ),
        };
        LoraPair {
            a,
            b,
            scale: cfg.scale(),
        }
    }

    /// W' = W + s A B on `tape`, from W as the pass lifted it.
    ///
    /// Shapes: w [d_in, d_out] -> [d_in, d_out]
    pub fn apply(&self, tape: &Tape, w: &Var) -> TapeResult<Var> {
        let (a, b) = (tape.param_cast(&self.a)?, tape.param_cast(&self.b)?);
        w.add(&a.matmul(&b)?.scale(self.scale)?)
    }

    /// The merged weight W + s A B, the same ops as `apply` on the stored values.
    ///
    /// Shapes: w [d_in, d_out] -> [d_in, d_out]
    pub fn merge(&self, w: &Tensor) -> TapeResult<Tensor> {
        let ab = self.a.value().matmul(&self.b.value())?;
        Ok(w.add(&ab.scale(self.scale)?)?)
    }
}

/// Gives `layers` the factors `cfg` asks for (drawn from the stream of (seed, name)) and
/// freezes the base parameters `base` but those it trains (`trains_base`). Returns the factors,
/// for the model's parameter list.
pub(crate) fn attach(
    layers: &mut [FixedBlock],
    base: &[Param],
    cfg: &LoraConfig,
    seed: u64,
) -> Vec<Param> {
    let mut init = Init::new(seed);
    for layer in layers {
        layer.add_lora(&mut init, cfg);
    }
    for p in base {
        p.set_frozen(!cfg.trains_base(p.name()));
    }
    init.finish()
}

/// The number of LoRA numbers on one [d_in, d_out] weight: r (d_in + d_out).
pub fn pair_count(rank: usize, d_in: usize, d_out: usize) -> usize {
    rank * (d_in + d_out)
}
