//! The tiled (flash) causal attention on the CPU against the materialised reference, in the same
//! run: time of the forward and of the backward, and the tensor memory each holds.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin attention [-- --reps 5 --json out.json]
//! ```
//!
//! Shapes: B = 2, H = 4 (b_h = 8 heads, a few per core), hd 32 (the tiny preset) and 64 (GPT-2's),
//! T from 128 to 2048; then the tiny preset's training shape (B 12, H 4, T 64). Each time is the
//! best of `--reps` calls. Memory is the tensor storage meter (`odeflow_runtime::memory`): "saved"
//! is what the forward leaves for the backward besides its output (the [B, H, T, T] probabilities,
//! or the [B, H, T] log-sum-exp), "peak" the most held at once over forward and backward. The meter
//! does not see an op's scratch buffers, which for the tiled kernel are a few [64, 64] tiles per
//! thread (about 50 KiB in all here).
//!
//! A second table times the tiled backward's two schedules (`BwdSchedule`) against each other at
//! b_h = 32 heads (B = 8, H = 4), where `flash_bwd` switches from two passes to one per head.
//!
//! Ratios are reference / tiled: above 1 the tiled kernel is faster or smaller. GFLOP/s counts
//! the causal work that is needed, the convention of FlashAttention's benchmarks: the forward's
//! two products over the lower triangle, 4 B H T^2 hd / 2 FLOPs, and the backward's five, 2.5x
//! that; the reference computes the whole [T, T] square and masks half of it away.

use odeflow_runtime::cpu::flash;
use odeflow_runtime::memory;
use odeflow_runtime::ops::attention::{
    attention_bwd, attention_fwd, flash_attention_bwd, flash_attention_fwd,
};
use odeflow_runtime::{DType, Rng, Tensor};
use std::time::Instant;

const B: usize = 2;
const H: usize = 4;
const HEAD_DIMS: [usize; 2] = [32, 64];
const LENGTHS: [usize; 5] = [128, 256, 512, 1024, 2048];

/// The best wall time of `reps` calls of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// One implementation's figures at one shape.
struct Figures {
    fwd_s: f64,
    bwd_s: f64,
    saved_bytes: usize,
    peak_bytes: usize,
}

/// Times and meters one implementation: `fwd` returns (out, saved), `bwd` consumes them.
fn measure<S>(
    reps: usize,
    fwd: impl Fn() -> (Tensor, S),
    bwd: impl Fn(&Tensor, &S) -> (Tensor, Tensor, Tensor),
    out_bytes: usize,
) -> Figures {
    let ((out, saved), usage) = memory::measure(&fwd);
    let saved_bytes = usage.retained - out_bytes;
    let (_, grads) = memory::measure(|| bwd(&out, &saved));
    let peak_bytes = usage.peak.max(usage.retained + grads.peak);
    drop((out, saved));
    let fwd_s = best_of(reps, || drop(fwd()));
    let (out, saved) = fwd();
    let bwd_s = best_of(reps, || drop(bwd(&out, &saved)));
    Figures {
        fwd_s,
        bwd_s,
        saved_bytes,
        peak_bytes,
    }
}

/// The forward's useful FLOPs: q k^T and p v over the lower triangle, 2 x 2 b_h T^2 hd / 2.
fn causal_fwd_flops(b_h: usize, t: usize, hd: usize) -> f64 {
    2.0 * (b_h * t * t * hd) as f64
}

/// The backward's two schedules on the same inputs, at b_h = 32: prints a table, returns JSON.
fn schedules(reps: usize, rng: &mut Rng) -> Vec<serde_json::Value> {
    let b_h = flash::PER_HEAD_MIN_HEADS;
    let (block_q, block_k) = (flash::BLOCK_Q, flash::BLOCK_K);
    let mut json = Vec::new();
    println!();
    println!("backward schedules, b_h = {b_h}");
    println!("| hd | T | two passes ms | per head ms | two passes / per head |");
    println!("|---:|---:|---:|---:|---:|");
    for hd in HEAD_DIMS {
        for t in [64, 256, 1024] {
            let n = b_h * t * hd;
            let mut randn = || (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (q, k, v, dout) = (randn(), randn(), randn(), randn());
            let (out, lse) = flash::flash_fwd(&q, &k, &v, b_h, t, hd, block_q, block_k);
            let time = |schedule| {
                best_of(reps, || {
                    let inputs = flash::BwdInputs {
                        dout: &dout,
                        q: &q,
                        k: &k,
                        v: &v,
                        out: &out,
                        lse: &lse,
                    };
                    let sizes = (b_h, t, hd, block_q, block_k);
                    let (b_h, t, hd, bq, bk) = sizes;
                    drop(flash::flash_bwd_scheduled(
                        schedule, inputs, b_h, t, hd, bq, bk,
                    ))
                })
            };
            let two = time(flash::BwdSchedule::TwoPass);
            let per_head = time(flash::BwdSchedule::PerHead);
            println!(
                "| {hd} | {t} | {:.2} | {:.2} | {:.2} |",
                two * 1e3,
                per_head * 1e3,
                two / per_head
            );
            json.push(serde_json::json!({
                "schedules": {"hd": hd, "t": t, "b_h": b_h,
                              "two_pass_s": two, "per_head_s": per_head},
            }));
        }
    }
    json
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// One row of the main table: reference and tiled at [b, h, t, hd].
fn compare(shape: [usize; 4], reps: usize, rng: &mut Rng) -> serde_json::Value {
    let [b, h, t, hd] = shape;
    let randn = |rng: &mut Rng| Tensor::randn(&shape, 0.0, 1.0, DType::F32, rng);
    let (q, k, v, dout) = (randn(rng), randn(rng), randn(rng), randn(rng));
    let out_bytes = q.numel() * 4;
    let reference = measure(
        reps,
        || attention_fwd(&q, &k, &v).expect("reference forward"),
        |_, probs| attention_bwd(&dout, &q, &k, &v, probs).expect("reference backward"),
        out_bytes,
    );
    let tiled = measure(
        reps,
        || flash_attention_fwd(&q, &k, &v).expect("tiled forward"),
        |out, lse| flash_attention_bwd(&dout, &q, &k, &v, out, lse).expect("tiled backward"),
        out_bytes,
    );
    let (r, f) = (&reference, &tiled);
    let fwd_gflop = causal_fwd_flops(b * h, t, hd) / 1e9;
    println!(
        "| {b} | {h} | {hd} | {t} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}, {:.0} \
         | {:.2} | {:.3} | {:.2} | {:.2} |",
        r.fwd_s * 1e3,
        f.fwd_s * 1e3,
        r.fwd_s / f.fwd_s,
        r.bwd_s * 1e3,
        f.bwd_s * 1e3,
        r.bwd_s / f.bwd_s,
        fwd_gflop / f.fwd_s,
        2.5 * fwd_gflop / f.bwd_s,
        mib(r.saved_bytes),
        mib(f.saved_bytes),
        mib(r.peak_bytes),
        mib(f.peak_bytes),
    );
    serde_json::json!({
        "hd": hd, "t": t, "b": b, "h": h,
        "reference": {"fwd_s": r.fwd_s, "bwd_s": r.bwd_s,
                      "saved_bytes": r.saved_bytes, "peak_bytes": r.peak_bytes},
        "tiled": {"fwd_s": f.fwd_s, "bwd_s": f.bwd_s,
                  "saved_bytes": f.saved_bytes, "peak_bytes": f.peak_bytes},
    })
}

fn main() {
    memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    let reps = odeflow_bench::reps_arg(5);
    let mut rng = Rng::new(1);
    let mut json = Vec::new();
    println!("f32, {} threads", rayon::current_num_threads());
    println!(
        "| B | H | hd | T | fwd ms ref | fwd ms tiled | fwd ratio | bwd ms ref | bwd ms tiled \
         | bwd ratio | tiled GFLOP/s fwd, bwd | saved MiB ref | saved MiB tiled \
         | peak MiB ref | peak MiB tiled |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for hd in HEAD_DIMS {
        for t in LENGTHS {
            json.push(compare([B, H, t, hd], reps, &mut rng));
        }
    }
    // the tiny preset's training step: B 12, H 4, T 64, hd 32 (48 heads: the per-head backward)
    json.push(compare([12, 4, 64, 32], reps, &mut rng));
    json.extend(schedules(reps, &mut rng));
    if let Some(path) = odeflow_bench::arg_value("--json") {
        let text = serde_json::to_string_pretty(&json).expect("json");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
