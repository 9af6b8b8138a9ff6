//! The block: the vector field F(X, t) of MODEL.md sections 1, 5 and 6, and the sequential
//! GPT-2 block of section 7.
//!
//! ```text
//! GPT-2 variant:  F(X, t) = Attn_t(LN^a_t(X)) + MLP_t(LN^m_t(X))
//! Llama variant:  F(X, t) = Attn_t(N1_t(X)) + SwiGLU_t(N2_t(X))      (parallel form)
//!                 F(X, t) = Attn_t(N1_t(X)) + SwiGLU_t(N2_t(N1_t(X))) (reference form)
//! ```
//!
//! `BlockWeights` are the weights of one evaluation (one t, or one discrete layer). They flatten
//! to a fixed list of `Var`s and back (`vars`, `from_vars`), because the solver passes them into
//! checkpointed steps as plain inputs (a checkpointed closure must not capture outer `Var`s).
//! `TemporalBlock` owns the hypernetworks and produces `BlockWeights` for every t of a solve;
//! `FixedBlock` owns one ordinary layer's parameters (re-discretised models, GPT-2).

use crate::config::{Config, LlamaNorm, ModelKind};
use crate::init::Init;
use crate::layers::KvCache;
use crate::layers::{self, Dropout, Linear, Norm, NormKind, LAYER_NORM_EPS, TEMPORAL_RMS_EPS};
use crate::lora::{self, LoraConfig, LoraPair};
use crate::temporal::{TemporalLinear, TemporalNorm, INIT_STD};
use odeflow_autodiff::{Param, Result, Tape, Var};

/// Which field a block computes; it fixes the list of weights one evaluation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// The GPT-2 block: LayerNorms, fused QKV, GELU MLP, every linear with a bias.
    Gpt,
    /// The Llama block: RMSNorms, RoPE, SwiGLU, no linear biases.
    Llama(LlamaNorm),
}

impl BlockKind {
    pub fn of(cfg: &Config) -> BlockKind {
        match cfg.model {
            ModelKind::LlamaOde => BlockKind::Llama(cfg.llama_norm),
            _ => BlockKind::Gpt,
        }
    }

    /// The name of each weight of `BlockWeights::vars`, in that order, as a parallel block
    /// (ODE steps and re-discretised layers).
    pub fn slots(self) -> &'static [&'static str] {
        match self {
            BlockKind::Gpt => &GPT_PARALLEL_SLOTS,
            BlockKind::Llama(_) => &LLAMA_SLOTS,
        }
    }
}

const GPT_PARALLEL_SLOTS: [&str; 12] = [
    "ln_a.weight",
    "ln_a.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_m.weight",
    "ln_m.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

/// The slots of a vanilla GPT-2 layer, named as Hugging Face's GPT-2 checkpoints name them
/// (whose Conv1D weights are also [d_in, d_out]).
pub const GPT2_SEQUENTIAL_SLOTS: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

const LLAMA_SLOTS: [&str; 11] = [
    "norm_attn.weight",
    "norm_attn.bias",
    "attn.q.weight",
    "attn.k.weight",
    "attn.v.weight",
    "attn.o.weight",
    "norm_mlp.weight",
    "norm_mlp.bias",
    "mlp.gate.weight",
    "mlp.up.weight",
    "mlp.down.weight",
];

/// The weights of one evaluation of a GPT-2 block.
#[derive(Clone, Debug)]
pub struct GptWeights {
    pub ln_a: Norm,
    pub c_attn: Linear,
    pub attn_proj: Linear,
    pub ln_m: Norm,
    pub c_fc: Linear,
    pub mlp_proj: Linear,
}

/// The weights of one evaluation of a Llama block.
#[derive(Clone, Debug)]
pub struct LlamaWeights {
    /// Where the MLP's norm reads from (not a weight: it comes with the block's kind).
    pub form: LlamaNorm,
    pub norm_attn: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub norm_mlp: Norm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

// a few per forward pass, moved rarely: boxing the larger variant would buy nothing
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BlockWeights {
    Gpt(GptWeights),
    Llama(LlamaWeights),
}

impl BlockWeights {
    /// Every weight, in the order of `BlockKind::slots`.
    pub fn vars(&self) -> Vec<Var> {
        let (norms, linears): (Vec<&Norm>, Vec<&Linear>) = match self {
            BlockWeights::Gpt(w) => (
                vec![&w.ln_a, &w.ln_m],
                vec![&w.c_attn, &w.attn_proj, &w.c_fc, &w.mlp_proj],
            ),
            BlockWeights::Llama(w) => (
                vec![&w.norm_attn, &w.norm_mlp],
                vec![&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down],
            ),
        };
        // the slot order: norm 1, the attention linears, norm 2, the MLP linears
        let split = if matches!(self, BlockWeights::Gpt(_)) {
            2
        } else {
            4
        };
        let mut out = norms[0].vars();
        linears[..split].iter().for_each(|l| out.extend(l.vars()));
        out.extend(norms[1].vars());
        linears[split..].iter().for_each(|l| out.extend(l.vars()));
        out
    }

    /// The inverse of `vars`: rebuilds the weights of a `kind` block from its slot list.
    ///
    /// Panics if `vars` does not have `kind.slots().len()` entries (a bug, not bad input).
    pub fn from_vars(kind: BlockKind, vars: &[Var]) -> BlockWeights {
        assert_eq!(vars.len(), kind.slots().len(), "one Var per slot");
        let mut it = vars.iter().cloned();
        let mut next = || it.next().expect("length checked");
        match kind {
            BlockKind::Gpt => {
                let mut norm = || layer_norm(next(), next());
                let ln_a = norm();
                let mut linear = || Linear {
                    w: next(),
                    b: Some(next()),
                };
                let (c_attn, attn_proj) = (linear(), linear());
                let ln_m = layer_norm(next(), next());
                let mut linear = || Linear {
                    w: next(),
                    b: Some(next()),
                };
                let (c_fc, mlp_proj) = (linear(), linear());
                BlockWeights::Gpt(GptWeights {
                    ln_a,
                    c_attn,
                    attn_proj,
                    ln_m,
                    c_fc,
                    mlp_proj,
                })
            }
            BlockKind::Llama(form) => {
                let norm_attn = rms_norm(next(), next());
                let mut linear = || Linear { w: next(), b: None };
                let (q, k, v, o) = (linear(), linear(), linear(), linear());
                let norm_mlp = rms_norm(next(), next());
                let mut linear = || Linear { w: next(), b: None };
                let (gate, up, down) = (linear(), linear(), linear());
                BlockWeights::Llama(LlamaWeights {
                    form,
                    norm_attn,
                    q,
                    k,
                    v,
                    o,
                    norm_mlp,
                    gate,
                    up,
                    down,
                })
            }
        }
    }
}

fn layer_norm(weight: Var, bias: Var) -> Norm {
    Norm {
        kind: NormKind::Layer,
        eps: LAYER_NORM_EPS,
        weight: Some(weight),
        bias: Some(bias),
    }
}

fn rms_norm(weight: Var, bias: Var) -> Norm {
    Norm {
        kind: NormKind::Rms,
        eps: TEMPORAL_RMS_EPS,
        weight: Some(weight),
        bias: Some(bias),
    }
}

/// F(x) of one evaluation: the two branches, each with its own dropout, summed (MODEL.md
/// sections 1, 5, 6).
///
/// Shapes: x [B, T, D] -> [B, T, D]
pub fn field(x: &Var, w: &BlockWeights, n_heads: usize, drop: &mut Dropout) -> Result<Var> {
    field_with(x, w, n_heads, drop, None)
}

/// F(x) of one evaluation for the m newest positions of a sequence, the attention reading the
/// earlier positions' keys and values from `cache` and appending the new ones (`decode.rs`).
/// No dropout: decoding is evaluation.
///
/// Shapes: x [B, m, D] -> [B, m, D]
pub fn field_cached(x: &Var, w: &BlockWeights, n_heads: usize, cache: &mut KvCache) -> Result<Var> {
    field_with(x, w, n_heads, &mut Dropout::off(), Some(cache))
}

/// `field`, its attention over this call's positions alone (`cache` None) or over a cache.
fn field_with(
    x: &Var,
    w: &BlockWeights,
    n_heads: usize,
    drop: &mut Dropout,
    cache: Option<&mut KvCache>,
) -> Result<Var> {
    let (attn, mlp) = match w {
        BlockWeights::Gpt(w) => {
            let attn = gpt_attention_of(&w.ln_a.forward(x)?, w, n_heads, cache)?;
            let mlp = layers::gpt_mlp(&w.ln_m.forward(x)?, &w.c_fc, &w.mlp_proj)?;
            (attn, mlp)
        }
        BlockWeights::Llama(w) => {
            let n1 = w.norm_attn.forward(x)?;
            let qkvo = [&w.q, &w.k, &w.v, &w.o];
            let attn = match cache {
                None => layers::llama_attention(&n1, qkvo, n_heads)?,
                Some(cache) => layers::llama_attention_cached(&n1, qkvo, n_heads, cache)?,
            };
            let mlp_in = match w.form {
                LlamaNorm::Parallel => w.norm_mlp.forward(x)?,
                LlamaNorm::Reference => w.norm_mlp.forward(&n1)?,
            };
            (attn, layers::swiglu(&mlp_in, &w.gate, &w.up, &w.down)?)
        }
    };
    drop.forward(&attn)?.add(&drop.forward(&mlp)?)
}

/// The vanilla GPT-2 layer: x += attn(ln_1(x)); x += mlp(ln_2(x)) (MODEL.md section 7).
///
/// Shapes: x [B, T, D] -> [B, T, D]
pub fn sequential_block(
    x: &Var,
    w: &BlockWeights,
    n_heads: usize,
    drop: &mut Dropout,
) -> Result<Var> {
    sequential_with(x, w, n_heads, drop, None)
}

/// The vanilla GPT-2 layer for the m newest positions, its attention over `cache` (see
/// `field_cached`).
///
/// Shapes: x [B, m, D] -> [B, m, D]
pub fn sequential_block_cached(
    x: &Var,
    w: &BlockWeights,
    n_heads: usize,
    cache: &mut KvCache,
) -> Result<Var> {
    sequential_with(x, w, n_heads, &mut Dropout::off(), Some(cache))
}

/// `sequential_block`, its attention over this call's positions alone or over a cache.
fn sequential_with(
    x: &Var,
    w: &BlockWeights,
    n_heads: usize,
    drop: &mut Dropout,
    cache: Option<&mut KvCache>,
) -> Result<Var> {
    let BlockWeights::Gpt(w) = w else {
        let msg = "a vanilla GPT-2 layer takes GPT block weights, got Llama ones".into();
        return Err(odeflow_runtime::Error::InvalidArgument {
            op: "sequential_block",
            msg,
        }
        .into());
    };
    let attn = gpt_attention_of(&w.ln_a.forward(x)?, w, n_heads, cache)?;
    let x = x.add(&drop.forward(&attn)?)?;
    let mlp = layers::gpt_mlp(&w.ln_m.forward(&x)?, &w.c_fc, &w.mlp_proj)?;
    x.add(&drop.forward(&mlp)?)
}

/// The GPT-2 attention branch of `w`, over x's positions alone or over a cache.
///
/// Shapes: x [B, T, D] (already normalised) -> [B, T, D]
fn gpt_attention_of(
    x: &Var,
    w: &GptWeights,
    n_heads: usize,
    cache: Option<&mut KvCache>,
) -> Result<Var> {
    match cache {
        None => layers::gpt_attention(x, &w.c_attn, &w.attn_proj, n_heads),
        Some(cache) => layers::gpt_attention_cached(x, &w.c_attn, &w.attn_proj, n_heads, cache),
    }
}

/// The hypernetwork-generated modules of an ODE model's one block.
pub enum TemporalBlock {
    Gpt {
        ln_a: TemporalNorm,
        c_attn: TemporalLinear,
        attn_proj: TemporalLinear,
        ln_m: TemporalNorm,
        c_fc: TemporalLinear,
        mlp_proj: TemporalLinear,
    },
    Llama {
        form: LlamaNorm,
        norm_attn: TemporalNorm,
        qkvo: [TemporalLinear; 4],
        norm_mlp: TemporalNorm,
        gate: TemporalLinear,
        up: TemporalLinear,
        down: TemporalLinear,
    },
}

impl TemporalBlock {
    /// The block's six (GPT-2) or nine (Llama) hypernetwork modules, under `block.*`.
    pub fn new(init: &mut Init, cfg: &Config) -> TemporalBlock {
        let (d, f, e, p) = (
            cfg.d_model,
            cfg.ff_width(),
            cfg.time_embed_dim,
            cfg.phi_dim(),
        );
        let w0 = cfg.w0_init_std;
        match cfg.model {
            ModelKind::LlamaOde => {
                let mut linear = |name: &str, dims| {
                    TemporalLinear::new(init, &format!("block.{name}"), dims, p, e, false, w0)
                };
                let qkvo = ["attn.q", "attn.k", "attn.v", "attn.o"].map(|n| linear(n, (d, d)));
                let (gate, up, down) = (
                    linear("mlp.gate", (d, f)),
                    linear("mlp.up", (d, f)),
                    linear("mlp.down", (f, d)),
                );
                let mut norm = |name: &str| {
                    let prefix = format!("block.{name}");
                    TemporalNorm::new(init, &prefix, NormKind::Rms, TEMPORAL_RMS_EPS, d, p, e)
                };
                TemporalBlock::Llama {
                    form: cfg.llama_norm,
                    norm_attn: norm("norm_attn"),
                    norm_mlp: norm("norm_mlp"),
                    qkvo,
                    gate,
                    up,
                    down,
                }
            }
            _ => {
                let mut norm = |name: &str| {
                    let prefix = format!("block.{name}");
                    TemporalNorm::new(init, &prefix, NormKind::Layer, LAYER_NORM_EPS, d, p, e)
                };
                let (ln_a, ln_m) = (norm("ln_a"), norm("ln_m"));
                let mut linear = |name: &str, dims| {
                    TemporalLinear::new(init, &format!("block.{name}"), dims, p, e, true, w0)
                };
                TemporalBlock::Gpt {
                    ln_a,
                    ln_m,
                    c_attn: linear("attn.c_attn", (d, 3 * d)),
                    attn_proj: linear("attn.c_proj", (d, d)),
                    c_fc: linear("mlp.c_fc", (d, f)),
                    mlp_proj: linear("mlp.c_proj", (f, d)),
                }
            }
        }
    }

    /// Every module's weights at every time of `phi`: one batched product per module.
    ///
    /// Shapes: phi [N, 2S+1] -> N x BlockWeights
    pub fn at(&self, tape: &Tape, phi: &Var) -> Result<Vec<BlockWeights>> {
        match self {
            TemporalBlock::Gpt {
                ln_a,
                c_attn,
                attn_proj,
                ln_m,
                c_fc,
                mlp_proj,
            } => {
                let mut parts = (
                    ln_a.at(tape, phi)?.into_iter(),
                    c_attn.at(tape, phi)?.into_iter(),
                    attn_proj.at(tape, phi)?.into_iter(),
                    ln_m.at(tape, phi)?.into_iter(),
                    c_fc.at(tape, phi)?.into_iter(),
                    mlp_proj.at(tape, phi)?.into_iter(),
                );
                let steps = (0..phi.shape()[0]).map(|_| {
                    BlockWeights::Gpt(GptWeights {
                        ln_a: parts.0.next().expect("one per step"),
                        c_attn: parts.1.next().expect("one per step"),
                        attn_proj: parts.2.next().expect("one per step"),
                        ln_m: parts.3.next().expect("one per step"),
                        c_fc: parts.4.next().expect("one per step"),
                        mlp_proj: parts.5.next().expect("one per step"),
                    })
                });
                Ok(steps.collect())
            }
            TemporalBlock::Llama {
                form,
                norm_attn,
                qkvo,
                norm_mlp,
                gate,
                up,
                down,
            } => {
                let mut n1 = norm_attn.at(tape, phi)?.into_iter();
                let mut n2 = norm_mlp.at(tape, phi)?.into_iter();
                let mut lin: Vec<_> = [&qkvo[0], &qkvo[1], &qkvo[2], &qkvo[3], gate, up, down]
                    .iter()
                    .map(|m| m.at(tape, phi).map(|v| v.into_iter()))
                    .collect::<Result<_>>()?;
                let mut next = |i: usize| lin[i].next().expect("one per step");
                let steps = (0..phi.shape()[0]).map(|_| {
                    BlockWeights::Llama(LlamaWeights {
                        form: *form,
                        norm_attn: n1.next().expect("one per step"),
                        q: next(0),
                        k: next(1),
                        v: next(2),
                        o: next(3),
                        norm_mlp: n2.next().expect("one per step"),
                        gate: next(4),
                        up: next(5),
                        down: next(6),
                    })
                });
                Ok(steps.collect())
            }
        }
    }
}

/// One ordinary layer's parameters, one per slot of its `BlockKind` (re-discretised layers and
/// GPT-2 layers), and the LoRA factors of the slots a fine-tune targets (`lora.rs`).
pub struct FixedBlock {
    kind: BlockKind,
    params: Vec<Param>,
    /// Per slot: its LoRA factors, or `None` (all `None` without LoRA).
    lora: Vec<Option<LoraPair>>,
}

impl FixedBlock {
    /// A fresh layer under `{prefix}.{slot}`: norms at weight 1 and bias 0, matrices N(0, std^2)
    /// (`proj_std` for the two output projections, GPT-2's residual scaling), biases 0.
    pub fn new(
        init: &mut Init,
        prefix: &str,
        kind: BlockKind,
        slots: &[&str],
        cfg: &Config,
        proj_std: f32,
    ) -> FixedBlock {
        let shapes = slot_shapes(kind, cfg);
        let params = slots
            .iter()
            .zip(shapes)
            .map(|(slot, shape)| {
                let name = format!("{prefix}.{slot}");
                let is_norm = slot.contains("ln_") || slot.contains("norm_");
                // the matrices that write into the residual stream
                let is_proj = slot.ends_with("c_proj.weight")
                    || slot.ends_with("attn.o.weight")
                    || slot.ends_with("mlp.down.weight");
                if is_norm && slot.ends_with("weight") {
                    init.ones(&name, &shape)
                } else if slot.ends_with("bias") {
                    init.zeros(&name, &shape)
                } else if is_proj {
                    init.normal(&name, &shape, proj_std)
                } else {
                    init.normal(&name, &shape, INIT_STD)
                }
            })
            .collect();
        FixedBlock::plain(kind, params)
    }

    fn plain(kind: BlockKind, params: Vec<Param>) -> FixedBlock {
        let lora = params.iter().map(|_| None).collect();
        FixedBlock { kind, params, lora }
    }

    /// A layer holding the given values (a re-discretised step), under `{prefix}.{slot}`.
    pub fn from_values(
        init: &mut Init,
        prefix: &str,
        kind: BlockKind,
        values: Vec<odeflow_runtime::Tensor>,
    ) -> FixedBlock {
        let params = kind
            .slots()
            .iter()
            .zip(values)
            .map(|(slot, v)| init.value(&format!("{prefix}.{slot}"), v))
            .collect();
        FixedBlock::plain(kind, params)
    }

    /// The layer's parameters lifted onto `tape`, as the weights of one evaluation; a slot with
    /// LoRA factors gives W + s A B.
    pub fn lift(&self, tape: &Tape) -> Result<BlockWeights> {
        let vars = self.params.iter().zip(&self.lora).map(|(p, lora)| {
            let w = tape.param_cast(p)?;
            match lora {
                Some(lora) => lora.apply(tape, &w),
                None => Ok(w),
            }
        });
        let vars: Vec<Var> = vars.collect::<Result<_>>()?;
        Ok(BlockWeights::from_vars(self.kind, &vars))
    }

    /// Gives the slots `cfg` targets their LoRA factors (drawn from `init`, which names them
    /// after their weight). The caller freezes the base (`lora::freeze_base`).
    pub fn add_lora(&mut self, init: &mut Init, cfg: &LoraConfig) {
        for (p, lora) in self.params.iter().zip(&mut self.lora) {
            let slot = p.name().strip_suffix(".weight").and_then(|n| {
                let slots = lora::linear_slots(self.kind);
                slots
                    .iter()
                    .copied()
                    .find(|s| n.ends_with(&format!(".{s}")))
            });
            if let Some(slot) = slot.filter(|s| cfg.targets_slot(self.kind, s)) {
                debug_assert!(lora.is_none(), "{slot} has LoRA factors already");
                *lora = Some(LoraPair::new(init, p, cfg));
            }
        }
    }

    /// The layer with its LoRA factors merged into its weights (W + s A B), under the same
    /// names, as ordinary parameters of `init`.
    pub fn merged(&self, init: &mut Init) -> Result<FixedBlock> {
        let params = self.params.iter().zip(&self.lora).map(|(p, lora)| {
            let value = match lora {
                Some(lora) => lora.merge(&p.value())?,
                None => p.value(),
            };
            Ok(init.value(p.name(), value))
        });
        Ok(FixedBlock::plain(self.kind, params.collect::<Result<_>>()?))
    }
}

/// The shape of each slot of a `kind` block, in slot order.
pub(crate) fn slot_shapes(kind: BlockKind, cfg: &Config) -> Vec<Vec<usize>> {
    let (d, f) = (cfg.d_model, cfg.ff_width());
    match kind {
        BlockKind::Gpt => vec![
            vec![d],
            vec![d],
            vec![d, 3 * d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d, f],
            vec![f],
            vec![f, d],
            vec![d],
        ],
        BlockKind::Llama(_) => vec![
            vec![d],
            vec![d],
            vec![d, d],
            vec![d, d],
            vec![d, d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d, f],
            vec![d, f],
            vec![f, d],
        ],
    }
}
