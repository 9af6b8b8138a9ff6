//! The reductions against the runtime: the sum over the last dim against `ops::reduce::reduce_fwd`
//! with `ReduceOp::Sum`, and the sum of squares against `ops::optim::sum_squares` (in f64), at
//! every launch configuration: one row, rows shorter and longer than a block (threads that loop
//! over a row), an empty row (its sum is 0), and more rows than the 1024-block grid; the sum of
//! squares over no elements, one, partial and full blocks, and more elements than the capped
//! grid's threads. Outputs are poisoned with NaN before each launch, and each reduction is run
//! twice to check that it gives the same bits.
//!
//! Tolerances. Sum of a row of D: the CPU adds left to right and the device in a tree, both in
//! f32, so each is off the exact sum by about sqrt(D) epsilons of the sum of the magnitudes for
//! random data (D epsilons at worst, for the CPU); the test allows 2 sqrt(D) f32 epsilons times
//! the sum of |x| (plus one epsilon for D = 1). A bf16 input is widened to f32 exactly and both
//! sides sum the same widened values. Sum of squares: every term is positive, so the device's
//! relative error is at most (the longest chain of additions any term goes through) x 2^-24,
//! with the chain = the elements one thread adds, plus 5 + 3 (warp, block) and 4 + 5 + 3 in
//! the second pass, plus one rounding of the square; against the f64 reference.

use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::reduce::{self, REDUCE_BLOCK, REDUCE_MAX_BLOCKS};
use odeflow_runtime::ops::optim::sum_squares;
use odeflow_runtime::ops::reduce::{reduce_fwd, ReduceOp};
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{device, normals, poisoned, upload};

/// (rows, D): every configuration `sum_config` can pick, and rows that loop or are empty.
fn sum_shapes() -> Vec<(usize, usize)> {
    let block = REDUCE_BLOCK as usize;
    let max_blocks = REDUCE_MAX_BLOCKS as usize;
    vec![
        (1, 1),
        (3, block - 1),
        (2, block),
        (2, block + 1),
        (1, 10_000),
        (4, 0),
        (max_blocks, 5),
        (max_blocks + 6, 3),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_row_sum_matches_the_cpu() {
    let gpu = device();
    let mut rng = Rng::new(31);
    for (rows, d) in sum_shapes() {
        for ty in ElemType::ALL {
            let (x, held) = upload(&gpu, &normals(rows * d, 3.0, &mut rng), ty);
            let label = format!("{ty:?} [{rows}, {d}]");
            let mut y = poisoned(&gpu, rows, ElemType::F32);
            reduce::sum_fwd_into(&mut y, ty, &x, rows, d).unwrap();
            let got = gpu.download::<f32>(&y).unwrap();
            // the CPU sums the same f32 values the device holds
            let t = Tensor::from_vec(held.clone(), &[rows, d]).unwrap();
            let want = reduce_fwd(ReduceOp::Sum, &t, 1, false).unwrap();
            let want = want.to_vec::<f32>().unwrap();
            let eps = f32::EPSILON as f64;
            for r in 0..rows {
                let row = &held[r * d..(r + 1) * d];
                let magnitude: f64 = row.iter().map(|&v| v.abs() as f64).sum();
                let tol = (2.0 * (d as f64).sqrt() + 1.0) * eps * magnitude;
                let err = (got[r] as f64 - want[r] as f64).abs();
                assert!(
                    err <= tol,
                    "{label} row {r}: got {}, want {}",
                    got[r],
                    want[r]
                );
            }
            // the same bits on a second run
            let mut again = poisoned(&gpu, rows, ElemType::F32);
            reduce::sum_fwd_into(&mut again, ty, &x, rows, d).unwrap();
            assert_eq!(
                gpu.download::<u32>(&again).unwrap(),
                gpu.download::<u32>(&y).unwrap()
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_sum_of_squares_matches_the_f64_reference() {
    let gpu = device();
    let mut rng = Rng::new(32);
    let block = REDUCE_BLOCK as usize;
    let one_pass = block * REDUCE_MAX_BLOCKS as usize;
    for n in [
        0,
        1,
        block - 1,
        block,
        block + 1,
        one_pass,
        one_pass + 3,
        3 * one_pass + 7,
    ] {
        let xs = normals(n, 3.0, &mut rng);
        let x = gpu.upload(&xs).unwrap();
        let mut out = poisoned(&gpu, 1, ElemType::F32);
        reduce::sum_squares_into(&mut out, &x, n).unwrap();
        let got = gpu.download::<f32>(&out).unwrap()[0] as f64;
        let want = sum_squares(&Tensor::from_vec(xs, &[n]).unwrap()).unwrap();
        // the longest chain of roundings a term goes through (see the module docs)
        let threads = reduce::sumsq_config(n).grid_dim.0 as usize * block;
        let chain = n.div_ceil(threads) + (5 + 3) + (4 + 5 + 3) + 1;
        let tol = chain as f64 * 2f64.powi(-24) * want;
        assert!((got - want).abs() <= tol, "n={n}: got {got}, want {want}");
        // the same bits on a second run, through the allocating form
        let again = reduce::sum_squares(&x, n).unwrap();
        assert_eq!(
            gpu.download::<f32>(&again).unwrap()[0].to_bits(),
            (got as f32).to_bits()
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_sum_with_a_short_input_is_refused() {
    let gpu = device();
    let x = gpu.upload(&[1.0f32; 12]).unwrap();
    let msg = reduce::sum_fwd(ElemType::F32, &x, 4, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("sum_fwd_f32") && msg.contains("x holds 48 bytes"),
        "{msg}"
    );
}
