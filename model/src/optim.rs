//! Training's optimiser (MODEL.md section 9): AdamW with global-norm clipping, the paper's
//! weight-decay masks, and linear warmup then cosine decay to a tenth of the peak rate.
//!
//! The update itself is the runtime's fused `adamw_update`; this file decides *what* it is given:
//! which parameters decay, the clipping scale, the rate at each step, and the state a checkpoint
//! must carry to resume exactly (the two moments of every parameter and the step count).

use crate::config::{Config, ModelKind};
use crate::{Error, Model, Result};
use odeflow_autodiff::Param;
use odeflow_runtime::ops::optim::{adamw_update, sum_squares, AdamWStep};
use odeflow_runtime::{DType, Tensor};
use std::collections::BTreeMap;

/// The optimiser's settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    /// The peak learning rate, reached at the end of warmup.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Applied only to the parameters `decays` selects.
    pub weight_decay: f32,
    /// The largest global gradient norm; larger gradients are scaled down to it (0: no clipping).
    pub clip: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The rate at the last step, as a fraction of the peak.
    pub final_lr_ratio: f32,
}

impl OptimConfig {
    /// The paper's recipe for `cfg` over `total_steps`: peak 6e-4 (3e-4 from D = 1024 up),
    /// betas (0.9, 0.999), eps 1e-8 (1e-6 for large), weight decay 0.1, clipping at 1.0, 1%
    /// warmup, cosine to 0.1x.
    pub fn paper(cfg: &Config, total_steps: usize) -> OptimConfig {
        OptimConfig {
            lr: if cfg.d_model >= 1024 { 3e-4 } else { 6e-4 },
            beta1: 0.9,
            beta2: 0.999,
            eps: if cfg.d_model >= 1280 { 1e-6 } else { 1e-8 },
            weight_decay: 0.1,
            clip: 1.0,
            warmup_steps: total_steps.div_ceil(100),
            total_steps,
            final_lr_ratio: 0.1,
        }
    }

    /// The learning rate of `step` (0-based): linear warmup from lr / warmup to lr, then a
    /// half cosine from lr down to final_lr_ratio * lr at the last step.
    pub fn lr_at(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let decay_steps = self
            .total_steps
            .saturating_sub(self.warmup_steps + 1)
            .max(1);
        let progress = ((step - self.warmup_steps) as f32 / decay_steps as f32).min(1.0);
        let floor = self.final_lr_ratio * self.lr;
        floor + 0.5 * (self.lr - floor) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// Whether a parameter gets weight decay (MODEL.md section 9). For the ODE models only the
/// embeddings (token, position, and an untied head) decay: the hypernetworks do not. For
/// GPT-2 the attention and MLP weight matrices and the embeddings decay; biases and norms never.
///
/// The layers of a re-discretised model are ordinary weights, so their matrices decay as
/// GPT-2's do, and so do LoRA factors (the fine-tuning recipe of MODEL.md section 10).
pub fn decays(model: ModelKind, name: &str) -> bool {
    let embedding = matches!(name, "wte.weight" | "wpe.weight" | "lm_head.weight");
    let layer_matrix = |prefix: &str| {
        name.starts_with(prefix)
            && (name.contains(".attn.") || name.contains(".mlp."))
            && (name.ends_with(".weight") || name.ends_with(".lora_a") || name.ends_with(".lora_b"))
    };
    match model {
        ModelKind::Gpt2 => embedding || layer_matrix("h."),
        ModelKind::NeuralOde | ModelKind::LlamaOde => embedding || layer_matrix("layers."),
    }
}

/// What one step did, for the log line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub lr: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
}

/// AdamW over a model's parameters; holds the moments.
pub struct AdamW {
    cfg: OptimConfig,
    params: Vec<Param>,
    decay: Vec<bool>,
    /// Per parameter: the first and second moments (f32, the parameter's shape).
    moments: Vec<(Tensor, Tensor)>,
    /// Steps taken so far.
    step: u64,
}

impl AdamW {
    /// AdamW over the parameters of `model` that are not frozen (`Param::is_frozen`).
    pub fn new(model: &Model, cfg: OptimConfig) -> Result<AdamW> {
        let params: Vec<Param> = model
            .params()
            .iter()
            .filter(|p| !p.is_frozen())
            .cloned()
            .collect();
        let kind = model.config().model;
        let decay = params.iter().map(|p| decays(kind, p.name())).collect();
        // the moments live beside their parameter (on the GPU for a CUDA model)
        let zeros = |p: &Param| Tensor::zeros(&p.shape(), DType::F32).to_device(p.value().device());
        let moments = params
            .iter()
            .map(|p| Ok((zeros(p)?, zeros(p)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            params,
            decay,
            moments,
            step: 0,
        })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Steps taken so far (the next step is number `steps_taken()`, 0-based).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The norm of all accumulated gradients together, sqrt(sum over every entry of g^2).
    pub fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for p in &self.params {
            if let Some(g) = p.grad() {
                total += sum_squares(&g)?;
            }
        }
        Ok(total.sqrt())
    }

    /// Clips the accumulated gradients, updates every parameter that has one, and clears the
    /// gradients. A non-finite gradient norm changes nothing and is an error: the parameters
    /// and moments stay as they were, so the last good state can still be saved.
    pub fn step(&mut self) -> Result<StepStats> {
        let norm = self.grad_norm()?;
        if !norm.is_finite() {
            return Err(Error::NonFinite {
                what: format!("gradient norm at step {} is {norm}", self.step),
            });
        }
        let clip = self.cfg.clip as f64;
        let grad_scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let lr = self.cfg.lr_at(self.step as usize);
        for ((p, &decay), (m, v)) in self.params.iter().zip(&self.decay).zip(&mut self.moments) {
            let Some(g) = p.grad() else { continue };
            let h = AdamWStep {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: if decay { self.cfg.weight_decay } else { 0.0 },
                step: self.step + 1,
                grad_scale: grad_scale as f32,
            };
            let (p2, m2, v2) = adamw_update(&p.value(), &g, m, v, &h)?;
            p.set_value(p2)?;
            (*m, *v) = (m2, v2);
            p.zero_grad();
        }
        self.step += 1;
        Ok(StepStats {
            lr,
            grad_norm: norm as f32,
        })
    }

    /// The moments, named `optim.m.<param>` and `optim.v.<param>`, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let named = self.params.iter().zip(&self.moments);
        named
            .flat_map(|(p, (m, v))| {
                [
                    (format!("optim.m.{}", p.name()), m.clone()),
                    (format!("optim.v.{}", p.name()), v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments of `state` (as `state()` names them) and the step count.
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps_taken: u64,
    ) -> Result<()> {
        let mut moments = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let get = |which: &str| {
                let key = format!("optim.{which}.{}", p.name());
                match tensors.get(&key) {
                    Some(t) if t.shape() == p.shape().as_slice() && t.dtype() == DType::F32 => {
                        Ok(t.to_device(p.value().device())?)
                    }
                    Some(t) => Err(Error::Input {
                        msg: format!(
                            "optimiser state {key} is {:?} {}, expected {:?} f32",
                            t.shape(),
                            t.dtype(),
                            p.shape()
                        ),
                    }),
                    None => Err(Error::Input {
                        msg: format!("optimiser state {key} is missing"),
                    }),
                }
            };
            moments.push((get("m")?, get("v")?));
        }
        self.moments = moments;
        self.step = steps_taken;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odeflow_autodiff::Tape;

    #[test]
    fn the_schedule_warms_up_then_decays_to_a_tenth() {
        let cfg = OptimConfig::paper(&Config::tiny(), 1000);
        assert_eq!(cfg.warmup_steps, 10);
        assert!((cfg.lr_at(0) - 6e-5).abs() < 1e-9);
        assert!((cfg.lr_at(9) - 6e-4).abs() < 1e-9);
        assert!((cfg.lr_at(10) - 6e-4).abs() < 1e-9); // the cosine starts at the peak
        let mid = cfg.lr_at(10 + 989 / 2);
        assert!((mid - 3.3e-4).abs() < 2e-6, "halfway: {mid}"); // (peak + floor) / 2
        assert!((cfg.lr_at(999) - 6e-5).abs() < 1e-9);
        assert!((cfg.lr_at(5000) - 6e-5).abs() < 1e-9);
        let w: Vec<f32> = (0..1000).map(|s| cfg.lr_at(s)).collect();
        assert!(
            w[10..].windows(2).all(|p| p[1] <= p[0]),
            "monotone after warmup"
        );
    }

    #[test]
    fn decay_masks_follow_the_paper() {
        for name in ["wte.weight", "wpe.weight"] {
            assert!(decays(ModelKind::NeuralOde, name) && decays(ModelKind::Gpt2, name));
        }
        assert!(!decays(ModelKind::NeuralOde, "block.attn.c_attn.weight"));
        assert!(!decays(
            ModelKind::NeuralOde,
            "block.ln_a.hyper.lin1.weight"
        ));
        assert!(decays(ModelKind::LlamaOde, "lm_head.weight"));
        assert!(decays(ModelKind::Gpt2, "h.3.attn.c_attn.weight"));
        assert!(decays(ModelKind::Gpt2, "h.0.mlp.c_proj.weight"));
        assert!(!decays(ModelKind::Gpt2, "h.0.mlp.c_proj.bias"));
        assert!(!decays(ModelKind::Gpt2, "h.0.ln_1.weight"));
        assert!(!decays(ModelKind::Gpt2, "ln_f.weight"));
    }

    /// One training step of a tiny model; returns the gradient norm it saw.
    fn train_step(model: &Model, opt: &mut AdamW, scale_loss: f32) -> Result<StepStats> {
        let ids = Tensor::from_vec(vec![1u32, 2, 3, 4], &[1, 4])?;
        let tape = Tape::new();
        let loss = model.loss(&tape, &ids, &ids, &crate::Forward::eval())?;
        tape.backward(&loss.scale(scale_loss)?)?;
        opt.step()
    }

    #[test]
    fn clipping_bounds_the_step_and_a_nan_gradient_changes_nothing() {
        let cfg = Config {
            d_model: 16,
            n_heads: 2,
            ..Config::tiny()
        };
        let model = Model::new(&cfg, 0).unwrap();
        let mut opt = AdamW::new(&model, OptimConfig::paper(&cfg, 100)).unwrap();
        let stats = train_step(&model, &mut opt, 1e4).unwrap();
        assert!(stats.grad_norm > 1.0, "a scaled loss gives a large norm");
        assert_eq!(opt.steps_taken(), 1);
        assert!(
            model.params().iter().all(|p| p.grad().is_none()),
            "gradients are cleared"
        );
        let before: Vec<Vec<f32>> = model
            .params()
            .iter()
            .map(|p| p.value().to_vec().unwrap())
            .collect();
        let err = train_step(&model, &mut opt, f32::NAN).unwrap_err();
        assert!(
            err.to_string().contains("gradient norm at step 1 is NaN"),
            "{err}"
        );
        let after: Vec<Vec<f32>> = model
            .params()
            .iter()
            .map(|p| p.value().to_vec().unwrap())
            .collect();
        assert_eq!(before, after);
        assert_eq!(opt.steps_taken(), 1);
    }

    #[test]
    fn state_round_trips_and_resumed_steps_are_identical() {
        let cfg = Config {
            d_model: 16,
            n_heads: 2,
            ..Config::tiny()
        };
        let (a, b) = (Model::new(&cfg, 0).unwrap(), Model::new(&cfg, 0).unwrap());
        let ocfg = OptimConfig::paper(&cfg, 100);
        let (mut oa, mut ob) = (AdamW::new(&a, ocfg).unwrap(), AdamW::new(&b, ocfg).unwrap());
        for _ in 0..2 {
            train_step(&a, &mut oa, 1.0).unwrap();
        }
        // b resumes from a's state after two steps, then both take a third
        for (pa, pb) in a.params().iter().zip(b.params()) {
            pb.set_value(pa.value()).unwrap();
        }
        let state: BTreeMap<String, Tensor> = oa.state().into_iter().collect();
        ob.load_state(&state, oa.steps_taken()).unwrap();
        train_step(&a, &mut oa, 1.0).unwrap();
        train_step(&b, &mut ob, 1.0).unwrap();
        for (pa, pb) in a.params().iter().zip(b.params()) {
            assert_eq!(
                pa.value().to_vec::<f32>().unwrap(),
                pb.value().to_vec::<f32>().unwrap()
            );
        }
        let mut missing = state.clone();
        missing.remove("optim.v.wte.weight");
        let e = ob.load_state(&missing, 2).unwrap_err().to_string();
        assert!(e.contains("optim.v.wte.weight is missing"), "{e}");
    }
}
