//! GPU: the speed of whole training steps (forward with the loss, backward, AdamW) on CUDA, in
//! bf16 mixed precision, of the GPT-2-small-shaped neural ODE (D = 768, H = 12, L = 12,
//! E = 20, S = 128, T = 1024) and of GPT-2 small, in tokens/s and model FLOPs utilisation.
//! Its PyTorch peer is `bench/peers/torch_train_step.py --device cuda --bf16` (eager, bf16
//! autocast, SDPA); `bench/gpu/check.sh` runs both and prints the ratio against issue 10's
//! target (>= 1.0x).
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin gpu_train_step [-- --reps 3] [--batch 8]
//!     [--json out.json]
//! ```
//!
//! Each step is what the trainer does (`model/src/train`): a tape that casts the f32 master
//! parameters to bf16 (`Precision::Bf16`), the loss, the backward with per-step checkpointing
//! (the trainer's default `GradMode`, which the PyTorch peer also uses), and AdamW with the
//! paper's settings and global-norm clipping. The phases are separated by device
//! synchronisations (the loss is read back, as the trainer reads it); each figure is the best of
//! `--reps` steps after one warm-up step. "peak GB" is the device allocator's peak during the
//! timed steps.
//!
//! Model FLOPs per token, PaLM's count (appendix B) for a causal decoder: 6 (L 12 D^2 + D V)
//! for the matrices (forward and backward: 3 x 2 multiply-adds per weight) plus 12 L D T for
//! the attention scores and their use, with no discount for the causal mask. The neural ODE's
//! Euler steps multiply by generated weights of a GPT-2 layer's shapes, so both models count
//! the same; the hypernetworks' own products (2 N K P per weight per pass, under 0.3% here)
//! and the checkpointed steps' recomputation are not model FLOPs. MFU divides by the H200's
//! dense bf16 peak (989 TFLOP/s), whatever device runs it (its name is printed).
//! Without a GPU this prints the driver error and exits 1.

use odeflow_autodiff::Tape;
use odeflow_model::optim::{AdamW, OptimConfig};
use odeflow_model::{Config, Forward, Model, ModelKind};
use odeflow_runtime::{DType, Device, Rng, Tensor};
use serde_json::{json, Value};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CUDA: Device = Device::Cuda(0);

/// The H200's dense bf16 tensor-core peak, FLOP/s (NVIDIA's datasheet: 1979 TFLOP/s with 2:4
/// sparsity, half of it dense).
const PEAK_BF16_FLOPS: f64 = 989.4e12;

fn main() {
    let reps = odeflow_bench::reps_arg(3);
    let batch = match odeflow_bench::arg_value("--batch").map(|b| b.parse::<usize>()) {
        None => 8,
        Some(Ok(b)) if b > 0 => b,
        Some(_) => {
            eprintln!("--batch needs a positive integer, e.g. --batch 8");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(reps, batch, odeflow_bench::arg_value("--json")) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The `small` preset at T = 1024, as a neural ODE or as GPT-2.
fn small(kind: ModelKind) -> Config {
    let cfg = Config {
        seq_len: 1024,
        ..Config::preset("small").expect("a preset")
    };
    cfg.with_model(kind)
}

/// Model FLOPs of one token's training step (see the module doc).
fn flops_per_token(cfg: &Config) -> f64 {
    let (l, d, v, t) = (
        cfg.n_steps as f64,
        cfg.d_model as f64,
        cfg.vocab_size as f64,
        cfg.seq_len as f64,
    );
    6.0 * (l * 12.0 * d * d + d * v) + 12.0 * l * d * t
}

fn run(reps: usize, batch: usize, json_path: Option<String>) -> Result<()> {
    let gpu = odeflow_runtime::cuda::gpu(0)?;
    println!("{} (bf16, B {batch}, best of {reps} steps)\n", gpu.name()?);
    println!(
        "| model | B x T | params | forward ms | backward ms | AdamW ms | step ms | tokens/s \
         | MFU | peak GB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (label, kind) in [
        ("neural-ode small", ModelKind::NeuralOde),
        ("gpt2 small", ModelKind::Gpt2),
    ] {
        let cfg = small(kind);
        match time_steps(&cfg, batch, reps) {
            Ok((best, peak)) => {
                let step: f64 = best.iter().sum();
                let tokens_per_s = (batch * cfg.seq_len) as f64 / step;
                let mfu = tokens_per_s * flops_per_token(&cfg) / PEAK_BF16_FLOPS;
                let peak_gb = peak as f64 / 1e9;
                println!(
                    "| {label} | {batch} x {} | {:.2} M | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} \
                     | {:.1}% | {peak_gb:.1} |",
                    cfg.seq_len,
                    cfg.param_count() as f64 / 1e6,
                    best[0] * 1e3,
                    best[1] * 1e3,
                    best[2] * 1e3,
                    step * 1e3,
                    tokens_per_s,
                    mfu * 100.0
                );
                rows.push(json!({
                    "model": label, "batch": batch, "seq_len": cfg.seq_len,
                    "params": cfg.param_count(), "forward_ms": best[0] * 1e3,
                    "backward_ms": best[1] * 1e3, "adamw_ms": best[2] * 1e3, "step_ms": step * 1e3,
                    "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_bytes": peak,
                    "flops_per_token": flops_per_token(&cfg),
                }));
            }
            Err(e) => {
                println!(
                    "| {label} | {batch} x {} | error: {e} | | | | | | | |",
                    cfg.seq_len
                );
                rows.push(json!({"model": label, "error": e.to_string()}));
            }
        }
    }
    if let Some(path) = json_path {
        let body = serde_json::to_string_pretty(&Value::Array(rows))?;
        std::fs::write(&path, body + "\n").map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// The best seconds of each phase (forward with the loss, backward, AdamW) over `reps` steps
/// after a warm-up, and the allocator's peak bytes during them.
fn time_steps(cfg: &Config, batch: usize, reps: usize) -> Result<([f64; 3], usize)> {
    let gpu = odeflow_runtime::cuda::gpu(0)?;
    let model = Model::new(cfg, 0)?;
    model.to_device(CUDA)?;
    let mut opt = AdamW::new(&model, OptimConfig::paper(cfg, 1000))?;
    let mut rng = Rng::new(1);
    let (t, v) = (cfg.seq_len, cfg.vocab_size as u64);
    let mut ids = || -> Result<Tensor> {
        let ids: Vec<u32> = (0..batch * t).map(|_| rng.below(v) as u32).collect();
        Ok(Tensor::from_vec(ids, &[batch, t])?.to_device(CUDA)?)
    };
    let mut best = [f64::INFINITY; 3];
    for rep in 0..=reps {
        if rep == 1 {
            gpu.reset_peak();
        }
        let (x, y) = (ids()?, ids()?);
        gpu.synchronize()?;
        let tape = Tape::with_compute(Some(DType::BF16));
        let start = Instant::now();
        let loss = model.loss(&tape, &x, &y, &Forward::train(rep as u64))?;
        let value = loss.value().to_f32_vec()?[0]; // waits for the forward, as the trainer does
        let forward = start.elapsed().as_secs_f64();
        if !value.is_finite() {
            return Err(format!("the loss is {value} at step {rep}").into());
        }
        tape.backward(&loss)?;
        gpu.synchronize()?;
        let backward = start.elapsed().as_secs_f64() - forward;
        opt.step()?;
        gpu.synchronize()?;
        let all = start.elapsed().as_secs_f64();
        if rep > 0 {
            let phases = [forward, backward, all - forward - backward];
            best.iter_mut().zip(phases).for_each(|(b, p)| *b = b.min(p));
        }
    }
    Ok((best, gpu.memory().peak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flop_count_is_palms_at_gpt2_small() {
        // 6 x (12 layers x 12 x 768^2 + 768 x 50257) + 12 x 12 x 768 x 1024 per token
        let cfg = small(ModelKind::Gpt2);
        let want = 6.0 * (12.0 * 12.0 * 589_824.0 + 38_597_376.0) + 113_246_208.0;
        assert_eq!(flops_per_token(&cfg), want);
        assert!((flops_per_token(&cfg) / 1e6 - 854.4).abs() < 0.05);
        // the neural ODE's steps are a GPT-2 layer's products
        assert_eq!(flops_per_token(&small(ModelKind::NeuralOde)), want);
    }
}
