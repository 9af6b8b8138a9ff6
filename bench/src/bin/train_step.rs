//! The speed of one training step (forward, backward, AdamW) of each model kind, on the CPU.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin train_step [-- --reps 10] [--small] [--checkpoint]
//! ```
//!
//! Default: the `tiny` preset of each kind at nanoGPT's CPU batch (B = 12, T = 64), with GPT-2
//! at the same width and depth (4 layers). `--small` adds one GPT-2-small-shaped step (D = 768,
//! H = 12, L = 12, E = 20, S = 128, V = 50257) of 1024 tokens for the neural ODE and GPT-2.
//! Gradients are by plain backprop through every step, as the trainer computes them by default;
//! `--checkpoint` recomputes each step in backward instead (`GradMode::Checkpoint`: less memory,
//! one more forward). Each figure is the best of `--reps` steps after one warm-up step; the
//! phases are timed separately so the table shows where a step's time goes. Its PyTorch peer is
//! `bench/peers/torch_train_step.py`.

use odeflow_autodiff::Tape;
use odeflow_model::optim::{AdamW, OptimConfig};
use odeflow_model::{Config, Forward, GradMode, Model, ModelKind};
use odeflow_runtime::{Rng, Tensor};
use std::time::Instant;

struct Case {
    label: &'static str,
    cfg: Config,
    batch: usize,
}

fn main() {
    // as the trainer does: keep freed activations for the next step (see the function's doc)
    odeflow_runtime::memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    let args: Vec<String> = std::env::args().collect();
    let reps = odeflow_bench::reps_arg(5);
    let grad = if args.iter().any(|a| a == "--checkpoint") {
        GradMode::Checkpoint
    } else {
        GradMode::Backprop
    };
    let mut cases = vec![
        case("neural-ode tiny", Config::tiny(), 12),
        case(
            "llama-ode tiny",
            Config::tiny().with_model(ModelKind::LlamaOde),
            12,
        ),
        case(
            "gpt2 tiny (4 layers)",
            Config::tiny().with_model(ModelKind::Gpt2),
            12,
        ),
    ];
    if args.iter().any(|a| a == "--small") {
        let small = Config {
            seq_len: 1024,
            ..Config::preset("small").expect("a preset")
        };
        cases.push(case("neural-ode small", small.clone(), 1));
        cases.push(case("gpt2 small", small.with_model(ModelKind::Gpt2), 1));
    }
    println!(
        "| model | B x T | params | forward ms | backward ms | AdamW ms | step ms | tokens/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for c in &cases {
        let best = time_steps(c, reps, grad);
        let tokens = (c.batch * c.cfg.seq_len) as f64;
        let step = best.iter().sum::<f64>();
        println!(
            "| {} | {} x {} | {:.2} M | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            c.label,
            c.batch,
            c.cfg.seq_len,
            c.cfg.param_count() as f64 / 1e6,
            best[0] * 1e3,
            best[1] * 1e3,
            best[2] * 1e3,
            step * 1e3,
            tokens / step
        );
    }
}

fn case(label: &'static str, cfg: Config, batch: usize) -> Case {
    Case { label, cfg, batch }
}

/// The best time of each phase (forward, backward, optimiser) over `reps` steps, in seconds.
fn time_steps(c: &Case, reps: usize, grad: GradMode) -> [f64; 3] {
    let model = Model::new(&c.cfg, 0).expect("a valid config");
    let mut opt = AdamW::new(&model, OptimConfig::paper(&c.cfg, 1000)).expect("CPU moments");
    let mut rng = Rng::new(1);
    let (b, t, v) = (c.batch, c.cfg.seq_len, c.cfg.vocab_size as u64);
    let mut ids = || {
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
        Tensor::from_vec(ids, &[b, t]).expect("sizes agree")
    };
    let mut best = [f64::INFINITY; 3];
    for rep in 0..=reps {
        let (x, y) = (ids(), ids());
        let tape = Tape::new();
        let start = Instant::now();
        let loss = model
            .loss(
                &tape,
                &x,
                &y,
                &Forward {
                    grad,
                    ..Forward::train(rep as u64)
                },
            )
            .expect("forward");
        let forward = start.elapsed().as_secs_f64();
        tape.backward(&loss).expect("backward");
        let backward = start.elapsed().as_secs_f64() - forward;
        opt.step().expect("a finite gradient");
        let all = start.elapsed().as_secs_f64();
        if rep > 0 {
            let phases = [forward, backward, all - forward - backward];
            best.iter_mut().zip(phases).for_each(|(b, p)| *b = b.min(p));
        }
    }
    best
}
