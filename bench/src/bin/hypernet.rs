//! The hypernetwork's weight generation on the CPU: the fused op (`ops::hypernet`) against the
//! plain path it replaced (the matmul, and for the backward the join of the steps' gradients
//! and the matmul's two products), and against a copy of the same bytes, in the same run.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin hypernet [-- --reps 7 --json out.json]
//! ```
//!
//! Shapes: the tiny preset's c_attn (N 4 steps, K = E + 1 = 9, P = 128 x 384) and the
//! GPT-2-small-shaped ODE model's (N 12, K 21; P = 768 x 2304 for c_attn, 768 x 3072 for
//! c_fc). GB/s counts the bytes each direction must move at the least, in f32: (K + N) P
//! forward (read F, write W), (N + 2K) P backward (read the steps' dW and F, write dF). The copy
//! column is `copy_from_slice` of a buffer of the forward's byte count (read it, write it): the
//! bandwidth a pass over memory gets on this machine. Each figure is the best of `--reps`.
//!
//! A second table times the backward into a gradient gathered so far (`generate_bwd_acc`, what
//! the tape does for a stacked parameter) against the backward followed by the add it replaces.
//! N 1 is the adjoint's case: each stage of its backward solve generates one time's weights and
//! adds their gradient into the parameters, L x stages times per step. GB/s counts (N + 3K) P
//! (read dW, F and the old sum, write the new one).

use odeflow_runtime::ops::hypernet::{generate, generate_bwd, generate_bwd_acc};
use odeflow_runtime::ops::matmul::matmul_bwd;
use odeflow_runtime::{DType, Rng, Tensor};
use std::time::Instant;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    odeflow_runtime::memory::keep_freed_memory();
    odeflow_runtime::cpu::join_thread_pool();
    let reps = odeflow_bench::reps_arg(7);
    let mut rng = Rng::new(3);
    let mut json = Vec::new();
    println!("f32, {} threads", rayon::current_num_threads());
    println!(
        "| case | N | K | P | fwd ms fused / plain | fwd GB/s fused | bwd ms fused / plain \
         | bwd GB/s fused | copy GB/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cases = [
        ("tiny c_attn", 4, 9, 128 * 384),
        ("gpt2-small c_attn", 12, 21, 768 * 2304),
        ("gpt2-small c_fc", 12, 21, 768 * 3072),
    ];
    for (name, n, k, p) in cases {
        let h = Tensor::randn(&[n, k], 0.0, 1.0, DType::F32, &mut rng);
        let f = Tensor::randn(&[k, p], 0.0, 0.02, DType::F32, &mut rng);
        let dws: Vec<Tensor> = (0..n)
            .map(|_| Tensor::randn(&[p], 0.0, 1.0, DType::F32, &mut rng))
            .collect();
        let fwd_fused = best_of(reps, || drop(generate(&h, &f).expect("generate")));
        let fwd_plain = best_of(reps, || drop(h.matmul(&f).expect("matmul")));
        let bwd_fused = best_of(reps, || drop(generate_bwd(&dws, &h, &f).expect("bwd")));
        let bwd_plain = best_of(reps, || {
            // the tape's old path: join the steps' gradients, then the matmul's backward
            let rows: Vec<Tensor> = dws.iter().map(|d| d.reshape(&[1, p]).unwrap()).collect();
            let dw = Tensor::cat(&rows, 0).expect("join");
            drop(matmul_bwd(&dw, &h, &f).expect("matmul_bwd"))
        });
        let fwd_bytes = ((k + n) * p * 4) as f64;
        let bwd_bytes = ((n + 2 * k) * p * 4) as f64;
        let src = vec![1.0f32; (k + n) * p / 2];
        let mut dst = vec![0.0f32; src.len()];
        let copy = best_of(reps, || dst.copy_from_slice(&src));
        println!(
            "| {name} | {n} | {k} | {p} | {:.2} / {:.2} | {:.1} | {:.2} / {:.2} | {:.1} | {:.1} |",
            fwd_fused * 1e3,
            fwd_plain * 1e3,
            fwd_bytes / fwd_fused / 1e9,
            bwd_fused * 1e3,
            bwd_plain * 1e3,
            bwd_bytes / bwd_fused / 1e9,
            fwd_bytes / copy / 1e9,
        );
        json.push(serde_json::json!({
            "case": name, "n": n, "k": k, "p": p,
            "fwd_fused_s": fwd_fused, "fwd_plain_s": fwd_plain,
            "bwd_fused_s": bwd_fused, "bwd_plain_s": bwd_plain,
            "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes, "copy_s": copy,
        }));
    }
    into_a_gradient(reps, &mut rng, &mut json);
    if let Some(path) = odeflow_bench::arg_value("--json") {
        let text = serde_json::to_string_pretty(&json).expect("json");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}

/// The backward into a running gradient, fused against the backward and then the add.
fn into_a_gradient(reps: usize, rng: &mut Rng, json: &mut Vec<serde_json::Value>) {
    println!();
    println!("| into a gradient | N | K | P | ms fused / bwd + add | ratio | GB/s fused |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let cases = [
        ("adjoint stage, c_attn", 1, 21, 768 * 2304),
        ("adjoint stage, c_fc", 1, 21, 768 * 3072),
        ("micro-batch, c_attn", 12, 21, 768 * 2304),
    ];
    for (name, n, k, p) in cases {
        let h = Tensor::randn(&[n, k], 0.0, 1.0, DType::F32, rng);
        let f = Tensor::randn(&[k, p], 0.0, 0.02, DType::F32, rng);
        let acc = Tensor::randn(&[k, p], 0.0, 1.0, DType::F32, rng);
        let dws: Vec<Tensor> = (0..n)
            .map(|_| Tensor::randn(&[p], 0.0, 1.0, DType::F32, rng))
            .collect();
        let fused = best_of(reps, || {
            drop(generate_bwd_acc(&dws, &h, &f, Some(&acc)).expect("bwd into acc"))
        });
        let composed = best_of(reps, || {
            let (dh, df) = generate_bwd(&dws, &h, &f).expect("bwd");
            drop((dh, acc.add(&df).expect("add")))
        });
        let bytes = ((n + 3 * k) * p * 4) as f64;
        println!(
            "| {name} | {n} | {k} | {p} | {:.2} / {:.2} | {:.2} | {:.1} |",
            fused * 1e3,
            composed * 1e3,
            composed / fused,
            bytes / fused / 1e9,
        );
        json.push(serde_json::json!({
            "case": name, "n": n, "k": k, "p": p,
            "acc_fused_s": fused, "acc_composed_s": composed, "acc_bytes": bytes,
        }));
    }
}
