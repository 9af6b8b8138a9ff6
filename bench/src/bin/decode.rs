//! Text generation with the KV-cache decoder against the reference that reruns the whole forward
//! pass for every token, in the same run: tokens/s of each, their ratio, and the napkin FLOP
//! ratio beside it (`docs/12-generation.md`).
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin decode [-- --lengths 64,256] [--reps 2]
//!     [--seq-len 512] [--device cuda] [--json out.json]
//! ```
//!
//! Models: the `tiny` preset's shapes (D 128, H 4, V 256, 4 steps or layers) with the context
//! set to --seq-len, freshly initialised (the speed does not depend on the weights): the neural
//! ODE with Euler and with RK4 (4 stages a step, so 16 evaluations and 16 caches), the Llama
//! variant, and the vanilla GPT-2. Each row generates `tokens` new tokens greedily after a
//! prompt of 8, so the context grows from 8 to 8 + tokens (below --seq-len: no window jumps),
//! and times the whole generation (prefill included), the best of --reps runs, the two paths
//! taking turns so that a slow spell of the machine touches both. "same" says
//! whether the two paths chose the same tokens; an untrained model's logits are close, so a
//! "no" there would be a near-tie flipped by rounding, not necessarily a bug (the tests check
//! exactness on spread-out logits).
//!
//! FLOPs per token (napkin, multiply-adds x 2), with P_e the weights of one evaluation
//! (GPT: 4 D^2 + 2 D F; Llama: 4 D^2 + 3 D F), E the evaluations, n the context:
//!
//! ```text
//! cached:     2 E P_e + 4 E n D + 2 D V        (one position; attention over n keys)
//! full pass:  n (2 E P_e + 2 D V) + 2 E n^2 D  (every position again; causal attention)
//! ```
//!
//! `--device cuda` runs the models on the GPU; each token's logits are read back to choose it,
//! which waits for the device, so the wall times are whole. (Not yet run: no GPU so far.)

use clap::Parser;
use odeflow_model::sample::{generate, Decoding, SampleOptions};
use odeflow_model::{Config, Forward, Model, ModelKind, Solver};
use odeflow_runtime::Device;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Tokens of every row's prompt.
const PROMPT_LEN: usize = 8;

#[derive(Parser, Debug)]
struct Args {
    /// New tokens per generation (one row each).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    lengths: Vec<usize>,
    /// Timed generations per cell (the best is kept).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// The models' context; must exceed 8 + the longest length.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Also write the rows here as JSON.
    #[arg(long)]
    json: Option<String>,
}

/// One model and the way it runs.
struct Case {
    name: &'static str,
    model: Model,
    fwd: Forward,
}

fn main() {
    odeflow_runtime::memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let longest = args.lengths.iter().copied().max().unwrap_or(0);
    if args.reps == 0 || args.lengths.contains(&0) || PROMPT_LEN + longest > args.seq_len {
        return Err(format!(
            "--reps and every --lengths value must be at least 1, and {PROMPT_LEN} + the \
             longest length must fit --seq-len {}",
            args.seq_len
        )
        .into());
    }
    if let Device::Cuda(i) = args.device {
        odeflow_runtime::cuda::gpu(i)?;
    }
    let cases = cases(args.seq_len)?;
    println!(
        "{}, {} CPU threads",
        args.device,
        rayon::current_num_threads()
    );
    println!(
        "| model | solver x steps | evaluations | tokens | cached tok/s | full tok/s | \
         cached / full | FLOP ratio | same |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mut json = Vec::new();
    for case in &cases {
        case.model.to_device(args.device)?;
        for &n in &args.lengths {
            json.push(row(case, n, args.reps)?);
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// The models of the table (see the module doc).
fn cases(seq_len: usize) -> Result<Vec<Case>> {
    let cfg = |kind| {
        Config {
            seq_len,
            ..Config::tiny()
        }
        .with_model(kind)
    };
    let rk4 = Forward {
        solver: Solver::Rk4,
        ..Forward::eval()
    };
    Ok(vec![
        Case {
            name: "neural-ode",
            model: Model::new(&cfg(ModelKind::NeuralOde), 1)?,
            fwd: Forward::eval(),
        },
        Case {
            name: "neural-ode",
            model: Model::new(&cfg(ModelKind::NeuralOde), 1)?,
            fwd: rk4,
        },
        Case {
            name: "llama-ode",
            model: Model::new(&cfg(ModelKind::LlamaOde), 1)?,
            fwd: Forward::eval(),
        },
        Case {
            name: "gpt2",
            model: Model::new(&cfg(ModelKind::Gpt2), 1)?,
            fwd: Forward::eval(),
        },
    ])
}

/// Times both paths on one case and prints its row.
fn row(case: &Case, n: usize, reps: usize) -> Result<serde_json::Value> {
    let (model, fwd) = (&case.model, &case.fwd);
    let cfg = model.config();
    let prompt: Vec<u32> = (0..PROMPT_LEN as u32)
        .map(|i| (i * 37 + 11) % 256)
        .collect();
    let once = |decoding| -> Result<(f64, Vec<u32>)> {
        let opts = SampleOptions {
            temperature: 0.0,
            max_new_tokens: n,
            decoding,
            ..SampleOptions::default()
        };
        let start = Instant::now();
        let tokens = generate(model, fwd, &prompt, &opts)?;
        Ok((start.elapsed().as_secs_f64(), tokens))
    };
    // the two paths alternate, so a slow spell of the machine touches both
    let (mut cached_s, mut full_s) = (f64::INFINITY, f64::INFINITY);
    let (mut cached, mut full) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (s, tokens) = once(Decoding::Cached)?;
        (cached_s, cached) = (cached_s.min(s), tokens);
        let (s, tokens) = once(Decoding::Recompute)?;
        (full_s, full) = (full_s.min(s), tokens);
    }
    let evaluations = model.nfe(fwd);
    let flop_ratio = full_flops(cfg, evaluations, n) / cached_flops(cfg, evaluations, n);
    let steps = fwd.steps.unwrap_or(cfg.n_steps);
    println!(
        "| {} | {} x {steps} | {evaluations} | {n} | {:.0} | {:.1} | {:.1} | {flop_ratio:.1} \
         | {} |",
        case.name,
        fwd.solver,
        n as f64 / cached_s,
        n as f64 / full_s,
        full_s / cached_s,
        if cached == full { "yes" } else { "no" },
    );
    Ok(serde_json::json!({
        "model": case.name, "solver": fwd.solver.name(), "steps": steps,
        "evaluations": evaluations, "tokens": n, "prompt": PROMPT_LEN,
        "cached_s": cached_s, "full_s": full_s, "flop_ratio": flop_ratio,
        "same_tokens": cached == full,
    }))
}

/// P_e: the weights one evaluation multiplies each position by (norms left out).
fn weights_per_evaluation(cfg: &Config) -> f64 {
    let (d, f) = (cfg.d_model as f64, cfg.ff_width() as f64);
    match cfg.model {
        ModelKind::LlamaOde => 4.0 * d * d + 3.0 * d * f,
        _ => 4.0 * d * d + 2.0 * d * f,
    }
}

/// The cached path's FLOPs over a whole generation: the prefill of the prompt (a full pass
/// over it), then one position per token at contexts 8 + 1 .. 8 + n - 1.
fn cached_flops(cfg: &Config, e: usize, n: usize) -> f64 {
    let (e, d, v) = (e as f64, cfg.d_model as f64, cfg.vocab_size as f64);
    let pe = weights_per_evaluation(cfg);
    let p = PROMPT_LEN as f64;
    let prefill = p * 2.0 * e * pe + 2.0 * e * p * p * d + 2.0 * d * v;
    let steps: f64 = (1..n)
        .map(|i| {
            let ctx = p + i as f64;
            2.0 * e * pe + 4.0 * e * ctx * d + 2.0 * d * v
        })
        .sum();
    prefill + steps
}

/// The reference's FLOPs: a whole forward over the context for every token.
fn full_flops(cfg: &Config, e: usize, n: usize) -> f64 {
    let (e, d, v) = (e as f64, cfg.d_model as f64, cfg.vocab_size as f64);
    let pe = weights_per_evaluation(cfg);
    (0..n)
        .map(|i| {
            let ctx = (PROMPT_LEN + i) as f64;
            ctx * (2.0 * e * pe + 2.0 * d * v) + 2.0 * e * ctx * ctx * d
        })
        .sum()
}
