//! The elementwise and row-wise ops of a training step, each against the cheapest pass over the
//! same tensor: copying its values out into a fresh `Vec` (one read, one write, no arithmetic).
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin elementwise_ops [-- --reps 50]
//! ```
//!
//! Shape: the tiny preset's MLP hidden layer at nanoGPT's CPU batch, [768, 512] (12 x 64 tokens
//! by 4 x 128). A ratio near 1 means the op runs at the speed of memory; above that, its
//! arithmetic shows. Each figure is the best of `--reps` calls.

use odeflow_runtime::ops::elementwise::{unary_bwd, UnaryOp};
use odeflow_runtime::{DType, Rng, Tensor};
use std::time::Instant;

/// A named op to time.
type Case<'a> = (&'static str, Box<dyn Fn() + 'a>);

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
    let reps = odeflow_bench::reps_arg(50);
    let mut rng = Rng::new(1);
    let x = Tensor::randn(&[768, 512], 0.0, 1.0, DType::F32, &mut rng);
    let dy = Tensor::randn(&[768, 512], 0.0, 1.0, DType::F32, &mut rng);
    let bias = Tensor::randn(&[512], 0.0, 1.0, DType::F32, &mut rng);
    let y = x.gelu().expect("gelu");
    let pass = best_of(reps, || drop(x.to_f32_vec().expect("f32")));
    let cases: [Case; 6] = [
        (
            "x * 2 + 1",
            Box::new(|| drop(x.affine(2.0, 1.0).expect("affine"))),
        ),
        ("gelu", Box::new(|| drop(x.gelu().expect("gelu")))),
        (
            "gelu backward",
            Box::new(|| drop(unary_bwd(UnaryOp::Gelu, &dy, &x, &y).expect("bwd"))),
        ),
        (
            "bias add (broadcast row)",
            Box::new(|| drop(x.add(&bias).expect("add"))),
        ),
        (
            "softmax over rows",
            Box::new(|| drop(x.softmax().expect("softmax"))),
        ),
        ("exp", Box::new(|| drop(x.exp().expect("exp")))),
    ];
    println!("| op on [768, 512] | time / one copy |");
    println!("|---|---:|");
    for (name, f) in &cases {
        println!("| {name} | {:.2} |", best_of(reps, f) / pass);
    }
}
