//! Model configurations: the presets of MODEL.md section 8, a TOML file format for any other, and
//! the parameter count of a config computed by arithmetic (no weights allocated).
//!
//! A config file names every field; anything left out takes the value of `Config::default()`
//! (the `tiny` preset), and an unknown field is an error, so a typo never passes silently:
//!
//! ```toml
//! model = "neural-ode"      # neural-ode | llama-ode | gpt2
//! vocab_size = 256
//! seq_len = 64              # context length P (also the number of position embeddings)
//! d_model = 128             # D
//! n_heads = 4               # H
//! n_steps = 4               # L: solver steps of an ODE model, layers of gpt2
//! time_embed_dim = 8        # E: width of each hypernetwork
//! sinusoidal_dim = 16       # S: sinusoids in phi(t), which has 2S+1 entries
//! d_ff = 512                # MLP hidden width (0 = the model's default: 4D, or SwiGLU's 8D/3)
//! dropout = 0.0
//! tie_embeddings = true     # the head reuses the token embedding (gpt2 / neural-ode)
//! llama_norm = "parallel"   # parallel: MLP(N2(x)); reference: MLP(N2(N1(x)))
//! w0_init_std = 0.02        # std of W0 at init (0: the reference's; see the field's doc)
//! ```

use crate::block::{slot_shapes, BlockKind};
use crate::lora::LoraConfig;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which model of MODEL.md a config builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// The paper's main model: one parallel GPT-2 block whose weights are functions of t.
    NeuralOde,
    /// The Llama variant: RoPE, SwiGLU, time-dependent RMSNorm (MODEL.md section 6).
    LlamaOde,
    /// The vanilla baseline: L separate sequential pre-LN blocks (MODEL.md section 7).
    Gpt2,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::NeuralOde => "neural-ode",
            ModelKind::LlamaOde => "llama-ode",
            ModelKind::Gpt2 => "gpt2",
        }
    }

    pub fn is_ode(self) -> bool {
        self != ModelKind::Gpt2
    }

    /// Every kind, in the order the docs list them.
    pub const ALL: [ModelKind; 3] = [ModelKind::NeuralOde, ModelKind::LlamaOde, ModelKind::Gpt2];
}

impl std::str::FromStr for ModelKind {
    type Err = Error;

    /// The kebab-case names of `name` (the spelling of config files and `--model`).
    fn from_str(s: &str) -> Result<ModelKind> {
        let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::Config {
                msg: format!("unknown model {s:?}; the models are {names:?}"),
            })
    }
}

/// Where the Llama field's MLP norm reads from (MODEL.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LlamaNorm {
    /// F(x) = Attn(N1(x)) + MLP(N2(x)): both branches read x, as the paper describes.
    Parallel,
    /// F(x) = Attn(N1(x)) + MLP(N2(N1(x))): the reference code's double norm.
    Reference,
}

/// Everything that fixes a model's shapes and behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelKind,
    /// V
    pub vocab_size: usize,
    /// P: the longest sequence the model takes, and its number of position embeddings.
    pub seq_len: usize,
    /// D
    pub d_model: usize,
    /// H
    pub n_heads: usize,
    /// L: Euler steps of an ODE model (its default depth), or the layers of `gpt2`.
    pub n_steps: usize,
    /// E: the width of every hypernetwork (ODE models only).
    pub time_embed_dim: usize,
    /// S: the sinusoid count of phi(t) (ODE models only).
    pub sinusoidal_dim: usize,
    /// The MLP's hidden width; 0 picks the model's default (`Config::ff_width`).
    pub d_ff: usize,
    /// Dropout on the embeddings and on each branch output, in training.
    pub dropout: f32,
    /// Whether logits use the token embedding (true for the GPT-2 variants).
    pub tie_embeddings: bool,
    pub llama_norm: LlamaNorm,
    /// The std of W0, the t-independent part of every temporal linear, at initialisation (ODE
    /// models only). 0 is the reference's init (MODEL.md section 3): W(t) = sum_k h_k(t) W_k
    /// starts about 1e-4 in size, a product of three small factors that takes thousands of steps
    /// to grow. The `tiny` preset starts W0 at 0.02 like a GPT-2 layer's weights instead, so the
    /// model begins as a weight-tied transformer and learns its time dependence from there: it is
    /// what lets the CPU default reach its quality bar in minutes (bench/RESULTS.md).
    pub w0_init_std: f32,
    /// An ODE model re-discretised into `n_steps` ordinary layers (`to_discrete`): set by the
    /// converter, not by hand.
    pub discrete: bool,
    /// LoRA factors on the layers' linear maps, the base frozen (`lora.rs`): a discrete or GPT-2
    /// model being fine-tuned. Absent from older configs: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config::tiny()
    }
}

// presets
impl Config {
    /// The names `Config::preset` accepts.
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "medium", "large"];

    /// A CPU-sized neural ODE for the shipped byte-level corpus: the width, heads and context of
    /// nanoGPT's CPU recipe (128, 4, 64), 4 Euler steps, and small hypernetworks.
    pub fn tiny() -> Config {
        Config {
            model: ModelKind::NeuralOde,
            vocab_size: 256,
            seq_len: 64,
            d_model: 128,
            n_heads: 4,
            n_steps: 4,
            time_embed_dim: 8,
            sinusoidal_dim: 16,
            d_ff: 0,
            dropout: 0.0,
            tie_embeddings: true,
            llama_norm: LlamaNorm::Parallel,
            w0_init_std: 0.02,
            discrete: false,
            lora: None,
        }
    }

    /// The GPT-2-sized presets of MODEL.md section 8 (V = 50257, P = 1024, dropout 0.1).
    fn gpt2_sized(d_model: usize, n_heads: usize, n_steps: usize, e: usize) -> Config {
        Config {
            vocab_size: 50257,
            seq_len: 1024,
            d_model,
            n_heads,
            n_steps,
            time_embed_dim: e,
            sinusoidal_dim: 128,
            dropout: 0.1,
            w0_init_std: 0.0,
            ..Config::tiny()
        }
    }

    /// A preset by name (`Config::PRESETS`), as a neural ODE; change `model` for the others.
    pub fn preset(name: &str) -> Result<Config> {
        match name {
            "tiny" => Ok(Config::tiny()),
            "small" => Ok(Config::gpt2_sized(768, 12, 12, 20)),
            "medium" => Ok(Config::gpt2_sized(1024, 16, 24, 96)),
            "large" => Ok(Config::gpt2_sized(1280, 20, 36, 96)),
            _ => Err(Error::Config {
                msg: format!(
                    "unknown preset {name:?}; the presets are {:?}",
                    Config::PRESETS
                ),
            }),
        }
    }

    /// The same config for another model kind, with that kind's conventions: the Llama
    /// variant unties its head (MODEL.md section 6).
    pub fn with_model(mut self, model: ModelKind) -> Config {
        self.model = model;
        self.tie_embeddings = model != ModelKind::LlamaOde;
        self
    }
}

// files
impl Config {
    /// Parses a TOML config (see the module docs) and validates it.
    pub fn from_toml(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Config { msg: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serialises")
    }

    /// Checks that the shapes fit together; every constructor of a model calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config { msg });
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_steps", self.n_steps),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "d_model {} is not a multiple of n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if self.model.is_ode() && (self.time_embed_dim == 0 || self.sinusoidal_dim == 0) {
            return bad("an ODE model needs time_embed_dim >= 1 and sinusoidal_dim >= 1".into());
        }
        if self.model == ModelKind::LlamaOde && !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "RoPE needs an even head dim, got {}",
                self.head_dim()
            ));
        }
        if !(self.w0_init_std.is_finite() && self.w0_init_std >= 0.0) {
            return bad(format!(
                "w0_init_std must be >= 0, got {}",
                self.w0_init_std
            ));
        }
        if self.discrete && !self.model.is_ode() {
            return bad("discrete = true describes a re-discretised ODE model, not gpt2".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(lora) = &self.lora {
            if self.model.is_ode() && !self.discrete {
                let msg =
                    "LoRA fine-tunes ordinary layers: convert an ODE model to a discrete one \
                           first (to_discrete)";
                return bad(msg.into());
            }
            lora.validate(BlockKind::of(self))?;
        }
        Ok(())
    }
}

// derived sizes
impl Config {
    /// hd = D / H
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// The MLP's hidden width: `d_ff`, or 4D (GPT-2), or SwiGLU's 8D/3 rounded up to a multiple
    /// of 64 (Llama; same parameters as a 4D GELU MLP).
    pub fn ff_width(&self) -> usize {
        match (self.d_ff, self.model) {
            (0, ModelKind::LlamaOde) => (8 * self.d_model / 3).div_ceil(64) * 64,
            (0, _) => 4 * self.d_model,
            (f, _) => f,
        }
    }

    /// The number of entries of phi(t): 2S + 1.
    pub fn phi_dim(&self) -> usize {
        2 * self.sinusoidal_dim + 1
    }

    /// How many trainable numbers the model has, by arithmetic (MODEL.md sections 3-8).
    pub fn param_count(&self) -> usize {
        let (v, d, f) = (self.vocab_size, self.d_model, self.ff_width());
        let head = if self.tie_embeddings { 0 } else { d * v };
        if self.discrete {
            return self.discrete_param_count() + head + self.lora_param_count();
        }
        match self.model {
            ModelKind::NeuralOde => {
                let linears = self.temporal_linear_count(d, 3 * d, true)
                    + self.temporal_linear_count(d, d, true)
                    + self.temporal_linear_count(d, f, true)
                    + self.temporal_linear_count(f, d, true);
                let norms = 2 * self.temporal_norm_count();
                v * d + self.seq_len * d + linears + norms + 2 * d + head
            }
            ModelKind::LlamaOde => {
                let attn = 4 * self.temporal_linear_count(d, d, false);
                let mlp = 2 * self.temporal_linear_count(d, f, false)
                    + self.temporal_linear_count(f, d, false);
                let norms = 2 * self.temporal_norm_count();
                v * d + attn + mlp + norms + d + head
            }
            ModelKind::Gpt2 => {
                let linear = |i: usize, o: usize| i * o + o;
                let layer =
                    2 * (2 * d) + linear(d, 3 * d) + linear(d, d) + linear(d, f) + linear(f, d);
                v * d
                    + self.seq_len * d
                    + self.n_steps * layer
                    + 2 * d
                    + head
                    + self.lora_param_count()
            }
        }
    }

    /// The LoRA factors' numbers: r (d_in + d_out) per targeted map and layer (0 without LoRA).
    pub fn lora_param_count(&self) -> usize {
        let Some(lora) = &self.lora else { return 0 };
        let kind = BlockKind::of(self);
        let slots = kind.slots().iter().zip(slot_shapes(kind, self));
        let per_layer: usize = slots
            .filter(|(slot, _)| {
                let map = slot.strip_suffix(".weight").unwrap_or(slot);
                lora.targets_slot(kind, map)
            })
            .map(|(_, shape)| crate::lora::pair_count(lora.rank, shape[0], shape[1]))
            .sum();
        self.n_steps * per_layer
    }

    /// A re-discretised model: its stem plus n_steps ordinary parallel layers.
    fn discrete_param_count(&self) -> usize {
        let (v, d, f) = (self.vocab_size, self.d_model, self.ff_width());
        match self.model {
            ModelKind::LlamaOde => v * d + d + self.n_steps * (4 * d + 4 * d * d + 3 * d * f),
            _ => {
                let linears = d * 3 * d + 3 * d + d * d + d + d * f + f + f * d + d;
                v * d + self.seq_len * d + 2 * d + self.n_steps * (4 * d + linears)
            }
        }
    }

    /// One hypernetwork MLP: lin1 (2S+1 -> E) and lin2 (E -> E), both with bias.
    fn hypernet_count(&self) -> usize {
        let e = self.time_embed_dim;
        self.phi_dim() * e + e + e * e + e
    }

    /// A temporal linear: (E+1) d_in d_out, plus E d_out for b(t), plus its hypernetwork.
    fn temporal_linear_count(&self, d_in: usize, d_out: usize, bias: bool) -> usize {
        let e = self.time_embed_dim;
        let b = if bias { e * d_out } else { 0 };
        (e + 1) * d_in * d_out + b + self.hypernet_count()
    }

    /// A temporal norm: G and Bn (E x D each), plus its hypernetwork.
    fn temporal_norm_count(&self) -> usize {
        2 * self.time_embed_dim * self.d_model + self.hypernet_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_model_md_section_8() {
        let ode = |p| Config::preset(p).unwrap().param_count();
        assert_eq!(ode("small"), 188_254_152);
        assert_eq!(ode("medium"), 1_274_538_688);
        assert_eq!(ode("large"), 1_974_541_760);
        let gpt = |p| {
            let cfg = Config::preset(p).unwrap().with_model(ModelKind::Gpt2);
            cfg.param_count()
        };
        assert_eq!(gpt("small"), 124_439_808);
        assert_eq!(gpt("medium"), 354_823_168);
        assert_eq!(gpt("large"), 774_030_080);
    }

    #[test]
    fn fine_tuning_pretrain_config_counts_match_too() {
        let cfg = Config {
            n_steps: 18,
            time_embed_dim: 100,
            sinusoidal_dim: 256,
            ..Config::preset("medium").unwrap()
        };
        assert_eq!(cfg.param_count(), 1_325_088_104);
        assert_eq!(cfg.with_model(ModelKind::Gpt2).param_count(), 279_245_824);
    }

    #[test]
    fn toml_round_trips_and_fills_defaults() {
        let cfg = Config::preset("small")
            .unwrap()
            .with_model(ModelKind::LlamaOde);
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        let partial = Config::from_toml("model = \"gpt2\"\nn_steps = 6\n").unwrap();
        let want = Config {
            model: ModelKind::Gpt2,
            n_steps: 6,
            ..Config::tiny()
        };
        assert_eq!(partial, want);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err("d_modle = 64").contains("d_modle"),
            "{}",
            err("d_modle = 64")
        );
        assert!(err("d_model = 130").contains("not a multiple of n_heads"));
        assert!(err("n_steps = 0").contains("n_steps must be at least 1"));
        assert!(err("dropout = 1.5").contains("dropout"));
        assert!(err("model = \"transformer\"").contains("unknown variant"));
        let rope = "model = \"llama-ode\"\nd_model = 12\nn_heads = 4";
        assert!(err(rope).contains("even head dim"));
        assert!(Config::preset("huge")
            .unwrap_err()
            .to_string()
            .contains("tiny"));
    }

    #[test]
    fn swiglu_width_defaults_to_eight_thirds_rounded() {
        let cfg = Config::tiny().with_model(ModelKind::LlamaOde);
        assert_eq!(cfg.ff_width(), 384); // 8 * 128 / 3 = 341.3 -> 384
        assert_eq!(Config::tiny().ff_width(), 512);
        let set = Config {
            d_ff: 100,
            ..Config::tiny()
        };
        assert_eq!(set.ff_width(), 100);
    }
}
