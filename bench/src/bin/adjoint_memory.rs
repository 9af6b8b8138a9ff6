//! Adjoint vs discretise: what each gradient mode costs in memory and time, and how far its
//! gradient is from the exact one, as the number of solver steps L grows.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin adjoint_memory [-- --out-dir runs/adjoint-memory]
//!     [--widths 64,128] [--steps 4,8,16,32,64,128] [--batch 8] [--seq-len 64] [--reps 2]
//!     [--solver euler] [--segments 1,8] [--checkpoint runs/neural-ode/checkpoint.safetensors]
//! ```
//!
//! For each width D and step count L, one training step (forward and backward, no optimiser)
//! of the neural ODE (`tiny` with that D and L; D/32 heads) on the same random batch, in every
//! mode: `backprop`, `checkpoint`, `adjoint`, and `adjoint:K` for each K of `--segments`.
//! Per step:
//!
//! - **peak memory**: the runtime's storage meter (`memory::measure`), tensor bytes held at
//!   the peak beyond what was live before the step (parameters and data are already live);
//! - **time**: the best of `--reps` steps, after one warm-up step;
//! - **gradient error**: |g - g_backprop| / |g_backprop| over every parameter's gradient;
//! - **state drift** (the adjoint's rows): |X~(0) - X(0)| / |X(0)|, where X~(0) is the state the
//!   backward solve re-integrates from X(1) (`Solver::reintegrate`).
//!
//! `--device cuda` runs the same on the GPU: the peak is then the device allocator's (the bytes
//! it lent at the peak of the step, beyond those lent before it), and each time waits for the
//! device to finish.
//!
//! The fresh models are at their initialisation; `--checkpoint` adds the rows of a trained ODE
//! checkpoint at its own width (its gradients are those of a model that has learnt something).
//! Writes `table.md`, `results.json`, `memory.png`, `error.png` and `time.png` into --out-dir.

use clap::Parser;
use odeflow_autodiff::{memory, Param, Tape};
use odeflow_model::plot::{plot_curves, Curve};
use odeflow_model::{checkpoint, Config, Forward, GradMode, Model, ModelKind, Solver};
use odeflow_runtime::{Device, Rng, Tensor};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
struct Args {
    /// Where the table, the JSON and the plots go.
    #[arg(long, default_value = "runs/adjoint-memory")]
    out_dir: PathBuf,
    /// Model widths D of the fresh models (each with D/32 heads).
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    widths: Vec<usize>,
    /// Solver step counts L.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64,128")]
    steps: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Timed steps per cell (the best is kept), after one warm-up.
    #[arg(long, default_value_t = 2)]
    reps: usize,
    #[arg(long, default_value = "euler")]
    solver: Solver,
    /// K of each checkpointed adjoint `adjoint:K` measured (the state saved every K steps).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    segments: Vec<usize>,
    /// A trained ODE checkpoint to measure as well, at its own width.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// cpu, or cuda[:N]: where the models and the batch live.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// One cell of the table.
struct Row {
    model: String,
    d: usize,
    l: usize,
    mode: GradMode,
    peak_bytes: usize,
    seconds: f64,
    grad_error: f64,
    /// The adjoint's state drift at t = 0 (its row only).
    drift: Option<f64>,
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
    if args.reps == 0 || args.segments.contains(&0) || args.steps.contains(&0) {
        return Err("--reps and every --segments and --steps value must be at least 1".into());
    }
    fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;
    let mut models: Vec<(String, Model)> = Vec::new();
    for &d in &args.widths {
        models.push((format!("fresh D={d}"), fresh_model(d, args.seq_len)?));
    }
    if let Some(path) = &args.checkpoint {
        let model = checkpoint::load(path)?.model;
        if !matches!(model, Model::Ode(_)) {
            return Err(format!("{} is not an ODE model", path.display()).into());
        }
        let d = model.config().d_model;
        models.push((format!("trained D={d}"), model));
    }
    let mut modes = vec![GradMode::Backprop, GradMode::Checkpoint, GradMode::Adjoint];
    modes.extend(
        args.segments
            .iter()
            .map(|&k| GradMode::CheckpointedAdjoint(k)),
    );
    let mut rows = Vec::new();
    let device = args.device;
    for (label, model) in &models {
        model.to_device(device)?;
        let cfg = model.config();
        let t = args.seq_len.min(cfg.seq_len);
        let (ids, targets) = batch(args.batch, t, cfg.vocab_size);
        let (ids, targets) = (ids.to_device(device)?, targets.to_device(device)?);
        for &l in &args.steps {
            let mut exact = Vec::new();
            let drift = state_drift(model, &ids, args.solver, l)?;
            for &mode in &modes {
                let fwd = Forward {
                    grad: mode,
                    solver: args.solver,
                    steps: Some(l),
                    ..Forward::eval()
                };
                let (peak_bytes, seconds, grads) = measure(model, &ids, &targets, &fwd, args.reps)?;
                if mode == GradMode::Backprop {
                    exact = grads.clone();
                }
                let row = Row {
                    model: label.clone(),
                    d: cfg.d_model,
                    l,
                    mode,
                    peak_bytes,
                    seconds,
                    grad_error: relative_error(&grads, &exact),
                    drift: (mode == GradMode::Adjoint).then_some(drift),
                };
                eprintln!("{}", table_line(&row));
                rows.push(row);
            }
        }
    }
    write_outputs(args, &rows)
}

/// The tiny neural ODE at width d (d/32 heads of 32), context `t`.
fn fresh_model(d: usize, t: usize) -> Result<Model> {
    let cfg = Config {
        d_model: d,
        n_heads: (d / 32).max(1),
        seq_len: t,
        ..Config::tiny().with_model(ModelKind::NeuralOde)
    };
    Ok(Model::new(&cfg, 0)?)
}

/// |X~(0) - X(0)| / |X(0)|: how far the backward re-integration from X(1) lands from the
/// forward's starting state.
fn state_drift(model: &Model, ids: &Tensor, solver: Solver, l: usize) -> Result<f64> {
    let Model::Ode(ode) = model else {
        return Err("the state drift needs an ODE model".into());
    };
    let tape = Tape::new();
    let x0 = tape
        .no_grad(|| ode.embed(&tape, ids))?
        .value()
        .to_vec::<f32>()?;
    let x0 = Tensor::from_vec(x0, &[ids.shape()[0], ids.shape()[1], ode.config().d_model])?
        .to_device(ids.device())?;
    let field = ode.field(None);
    let x1 = solver.integrate(&x0, &field, l)?;
    let back = solver.reintegrate(&x1, &field, l)?;
    Ok(relative_error(&back.to_vec::<f32>()?, &x0.to_vec::<f32>()?))
}

/// A fixed random batch of byte tokens.
///
/// Shapes: -> ids, targets [b, t] (u32)
fn batch(b: usize, t: usize, vocab: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(7);
    let mut draw = || {
        let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
        Tensor::from_vec(ids, &[b, t]).expect("sizes agree")
    };
    (draw(), draw())
}

/// One step's peak bytes and best time over `reps` (after a warm-up), and its gradient.
fn measure(
    model: &Model,
    ids: &Tensor,
    targets: &Tensor,
    fwd: &Forward,
    reps: usize,
) -> Result<(usize, f64, Vec<f32>)> {
    let step = || -> Result<()> {
        model.params().iter().for_each(Param::zero_grad);
        let tape = Tape::new();
        let loss = model.loss(&tape, ids, targets, fwd)?;
        tape.backward(&loss)?;
        Ok(())
    };
    let device = ids.device();
    let peak = match device {
        Device::Cuda(n) => {
            // the device allocator's count: what it lent at the step's peak beyond the start
            let gpu = odeflow_runtime::cuda::gpu(n)?;
            gpu.synchronize()?;
            let before = gpu.memory().lent;
            gpu.reset_peak();
            step()?;
            gpu.synchronize()?;
            gpu.memory().peak.saturating_sub(before)
        }
        _ => {
            let (warm, usage) = memory::measure(step);
            warm?;
            usage.peak
        }
    };
    let wait = || -> Result<()> {
        if let Device::Cuda(n) = device {
            odeflow_runtime::cuda::gpu(n)?.synchronize()?;
        }
        Ok(())
    };
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        step()?;
        wait()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let mut grads = Vec::new();
    for p in model.params() {
        match p.grad() {
            Some(g) => grads.extend(g.to_vec::<f32>()?),
            None => grads.extend(std::iter::repeat_n(0.0, p.numel())),
        }
    }
    model.params().iter().for_each(Param::zero_grad);
    Ok((peak, best, grads))
}

fn relative_error(g: &[f32], exact: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&a, &b) in g.iter().zip(exact) {
        diff += (a as f64 - b as f64).powi(2);
        norm += (b as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

const TABLE_HEAD: &str =
    "| model | L | mode | peak MiB | step ms | grad rel. error | X(0) drift |\n\
     |---|---:|---|---:|---:|---:|---:|";

fn table_line(r: &Row) -> String {
    let error = match r.mode {
        GradMode::Backprop => "(reference)".to_string(),
        _ => format!("{:.1e}", r.grad_error),
    };
    let drift = r.drift.map(|d| format!("{d:.1e}")).unwrap_or_default();
    format!(
        "| {} | {} | {} | {:.1} | {:.0} | {error} | {drift} |",
        r.model,
        r.l,
        r.mode,
        r.peak_bytes as f64 / (1 << 20) as f64,
        r.seconds * 1e3,
    )
}

fn write_outputs(args: &Args, rows: &[Row]) -> Result<()> {
    let dir = &args.out_dir;
    let mut table = format!(
        "Solver {}, B = {}, T = {}; peak = tensor bytes at the step's peak beyond those live \
         before it.\n\n{TABLE_HEAD}\n",
        args.solver, args.batch, args.seq_len
    );
    for r in rows {
        writeln!(table, "{}", table_line(r))?;
    }
    write(&dir.join("table.md"), &table)?;
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "model": r.model, "d_model": r.d, "steps": r.l, "mode": r.mode.to_string(),
                "solver": args.solver.name(), "batch": args.batch, "seq_len": args.seq_len,
                "peak_bytes": r.peak_bytes, "seconds": r.seconds, "grad_rel_error": r.grad_error,
                "state_drift": r.drift,
            })
        })
        .collect();
    write(
        &dir.join("results.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    // memory and time do not depend on the weights: the fresh models' curves are enough
    let fresh: Vec<&Row> = rows
        .iter()
        .filter(|r| r.model.starts_with("fresh"))
        .collect();
    let all: Vec<&Row> = rows.iter().collect();
    plot(dir, &fresh, "memory.png", "peak MiB", |r| {
        Some(r.peak_bytes as f64 / (1 << 20) as f64)
    })?;
    plot(dir, &fresh, "time.png", "step ms", |r| {
        Some(r.seconds * 1e3)
    })?;
    // log10 of the error: the adjoint modes (backprop is the reference, checkpoint's is 0)
    plot(
        dir,
        &all,
        "error.png",
        "log10 gradient relative error",
        |r| (r.grad_error > 0.0).then(|| r.grad_error.log10()),
    )?;
    println!("{table}");
    println!(
        "wrote table.md, results.json, memory.png, time.png, error.png to {}",
        dir.display()
    );
    Ok(())
}

/// One curve per (model, mode) of `y` against log2 L.
fn plot(
    dir: &Path,
    rows: &[&Row],
    file: &str,
    y_label: &str,
    y: fn(&Row) -> Option<f64>,
) -> Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let label = format!("{} {}", r.model, r.mode);
        let Some(v) = y(r) else { continue };
        let point = ((r.l as f64).log2(), v);
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(point),
            None => series.push((label, vec![point])),
        }
    }
    let curves: Vec<Curve> = series
        .iter()
        .map(|(label, points)| Curve { label, points })
        .collect();
    let title = format!("{y_label} against the solver steps L");
    plot_curves(&dir.join(file), &title, "log2 L", y_label, &curves)?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}
