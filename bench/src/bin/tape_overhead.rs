//! What the autodiff tape costs: a stack of pre-LN MLP blocks trained three ways, in one run.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin tape_overhead [-- --reps 10]
//! ```
//!
//! 1. `by hand`: the runtime's forward and backward functions called directly, llm.c style,
//!    with every activation kept in local variables. This is the reference: no tape at all.
//! 2. `tape`: the same model written with `Var`s; the tape records and walks it.
//! 3. `tape + checkpoint`: each block under `Tape::checkpoint` (its forward runs twice).
//!
//! Before timing, the binary checks that the tape's gradients match the hand-written ones. Each
//! time is the best of `--reps` forward + backward passes (after a warm-up), and the best again
//! over 3 rounds that alternate the three passes; peak memory is
//! the storage meter's peak above what was live before the pass (parameters and inputs
//! excluded, gradients included). Times are printed as ratios to the hand-written pass (absolute
//! CPU times depend on the machine's load).

use odeflow_autodiff::{memory, Param, Result, Tape, Var};
use odeflow_runtime::ops::{elementwise, matmul, norm, UnaryOp};
use odeflow_runtime::{DType, Rng, Tensor};
use std::time::Instant;

/// Tokens, width and depth: one GPT-2-small-like MLP block is [T, D] -> [T, 4D] -> [T, D].
const T: usize = 256;
const D: usize = 256;
const BLOCKS: usize = 4;
const LN_EPS: f32 = 1e-5;

struct Block {
    w1: Param, // [D, 4D]
    w2: Param, // [4D, D]
}

fn main() {
    let reps = odeflow_bench::reps_arg(10);
    let mut rng = Rng::new(1);
    let blocks: Vec<Block> = (0..BLOCKS)
        .map(|i| Block {
            w1: Param::new(format!("w1.{i}"), randn(&[D, 4 * D], 0.02, &mut rng)),
            w2: Param::new(format!("w2.{i}"), randn(&[4 * D, D], 0.02, &mut rng)),
        })
        .collect();
    let x0 = randn(&[T, D], 1.0, &mut rng);
    let r = randn(&[T, D], 1.0, &mut rng);

    check_tape_matches_hand(&blocks, &x0, &r);
    let passes = [Pass::ByHand, Pass::Tape, Pass::Checkpoint];
    let mut best = [(f64::INFINITY, 0); 3];
    // alternate the passes over the rounds, so background load hurts all of them alike
    for _round in 0..ROUNDS {
        for (pass, best) in passes.iter().zip(&mut best) {
            let (seconds, peak) = time(reps, || pass.run(&blocks, &x0, &r));
            *best = (best.0.min(seconds), best.1.max(peak));
        }
    }
    print_table(&passes, &best);
}

/// Rounds of alternating measurements; each pass keeps its best time.
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
enum Pass {
    ByHand,
    Tape,
    Checkpoint,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::ByHand => "by hand",
            Pass::Tape => "tape",
            Pass::Checkpoint => "tape + checkpoint",
        }
    }

    /// One forward + backward. Every pass drops its gradients before returning, so the peak
    /// memory of each counts them the same way.
    fn run(self, blocks: &[Block], x0: &Tensor, r: &Tensor) {
        match self {
            Pass::ByHand => drop(by_hand(blocks, x0, r).expect("hand-written pass")),
            Pass::Tape | Pass::Checkpoint => {
                let checkpoint = matches!(self, Pass::Checkpoint);
                with_tape(blocks, x0, r, checkpoint).expect("tape pass");
                zero_grads(blocks);
            }
        }
    }
}

/// The fastest of `reps` runs of `f` (after a warm-up run), and the highest peak memory.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, usize) {
    f();
    let mut fastest = f64::INFINITY;
    let mut peak = 0;
    for _ in 0..reps {
        let start = Instant::now();
        let ((), usage) = memory::measure(&mut f);
        fastest = fastest.min(start.elapsed().as_secs_f64());
        peak = peak.max(usage.peak);
    }
    (fastest, peak)
}

/// The hand-written pass: forward through every block keeping what backward needs, then the
/// backward in reverse. Returns dW1, dW2 per block.
///
/// Shapes: x [T, D] -> n [T, D] -> u [T, 4D] -> a = gelu(u) -> v [T, D]; x' = x + v
fn by_hand(blocks: &[Block], x0: &Tensor, r: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
    struct Saved {
        x: Tensor,
        n: Tensor,
        mean: Tensor,
        rstd: Tensor,
        u: Tensor,
        a: Tensor,
    }
    let mut saved = Vec::with_capacity(blocks.len());
    let mut x = x0.clone();
    for b in blocks {
        let (n, mean, rstd) = norm::layer_norm_fwd(&x, None, None, LN_EPS)?;
        let u = matmul::matmul(&n, &b.w1.value())?;
        let a = elementwise::unary_fwd(UnaryOp::Gelu, &u)?;
        let v = matmul::matmul(&a, &b.w2.value())?;
        let next = x.add(&v)?;
        saved.push(Saved {
            x,
            n,
            mean,
            rstd,
            u,
            a,
        });
        x = next;
    }
    // loss = sum(x * r)  ->  dx = r
    let mut dx = r.clone();
    let mut grads = Vec::with_capacity(blocks.len());
    for (b, s) in blocks.iter().zip(saved).rev() {
        let (da, dw2) = matmul::matmul_bwd(&dx, &s.a, &b.w2.value())?;
        let du = elementwise::unary_bwd(UnaryOp::Gelu, &da, &s.u, &s.a)?;
        let (dn, dw1) = matmul::matmul_bwd(&du, &s.n, &b.w1.value())?;
        let (dx_norm, _, _) = norm::layer_norm_bwd(&dn, &s.x, None, false, &s.mean, &s.rstd)?;
        dx = dx.add(&dx_norm)?; // the residual path plus the block's path
        grads.push((dw1, dw2));
    }
    grads.reverse();
    Ok(grads)
}

/// One block on the tape: x + gelu(LN(x) W1) W2.
fn block(tape: &Tape, x: &Var, w1: &Param, w2: &Param) -> Result<Var> {
    let n = x.layer_norm(None, None, LN_EPS)?;
    let a = n.matmul(&tape.param(w1))?.gelu()?;
    x.add(&a.matmul(&tape.param(w2))?)
}

fn with_tape(blocks: &[Block], x0: &Tensor, r: &Tensor, checkpoint: bool) -> Result<()> {
    let tape = Tape::new();
    let mut x = tape.constant(x0.clone());
    for b in blocks {
        x = if checkpoint {
            let (w1, w2) = (b.w1.clone(), b.w2.clone());
            tape.checkpoint(&[&x], move |tape, v| block(tape, &v[0], &w1, &w2))?
        } else {
            block(&tape, &x, &b.w1, &b.w2)?
        };
    }
    let loss = x.mul(&tape.constant(r.clone()))?.sum_all()?;
    tape.backward(&loss)?;
    Ok(())
}

/// The tape (with and without checkpointing) must agree with the hand-written gradients.
fn check_tape_matches_hand(blocks: &[Block], x0: &Tensor, r: &Tensor) {
    let hand = by_hand(blocks, x0, r).expect("hand-written pass");
    for checkpoint in [false, true] {
        zero_grads(blocks);
        with_tape(blocks, x0, r, checkpoint).expect("tape pass");
        for (b, (dw1, dw2)) in blocks.iter().zip(&hand) {
            assert_close(&b.w1.grad().expect("dw1"), dw1, b.w1.name());
            assert_close(&b.w2.grad().expect("dw2"), dw2, b.w2.name());
        }
    }
}

/// Equal to f32 rounding: the two paths run the same ops but may sum in another order.
fn assert_close(got: &Tensor, want: &Tensor, name: &str) {
    let (got, want) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let scale = want.iter().fold(1e-30f32, |m, w| m.max(w.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "{name}: the tape differs from the hand-written gradient"
    );
}

fn zero_grads(blocks: &[Block]) {
    for b in blocks {
        b.w1.zero_grad();
        b.w2.zero_grad();
    }
}

fn randn(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, 0.0, std, DType::F32, rng)
}

fn print_table(passes: &[Pass], best: &[(f64, usize)]) {
    let (hand_seconds, _) = best[0];
    println!("{BLOCKS} pre-LN MLP blocks, T = {T}, D = {D}, f32, forward + backward");
    println!();
    println!("| pass | time / by hand | peak MiB |");
    println!("|---|---:|---:|");
    for (pass, (seconds, peak)) in passes.iter().zip(best) {
        let ratio = seconds / hand_seconds;
        let mib = *peak as f64 / (1024.0 * 1024.0);
        println!("| {} | {ratio:.2} | {mib:.1} |", pass.name());
    }
}
