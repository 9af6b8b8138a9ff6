//! Every op against the f64 reference (`odeflow_runtime::reference`), on random shapes (size-1
//! dims included), random values, random layouts (contiguous, permuted, narrowed views) and all
//! three float dtypes. Backward ops are checked against central finite differences of the f64
//! forward, which needs no hand-written reference gradient at all.

mod common;

use common::{arr, assert_close, make, DTYPES, LAYOUTS};
use odeflow_runtime::ops::{
    attention, elementwise as ew, embedding, loss, matmul, norm, reduce, shape, softmax,
};
use odeflow_runtime::ops::{BinaryOp, UnaryOp};
use odeflow_runtime::reference::{self as r, Array64};
use odeflow_runtime::{DType, Tensor};
use proptest::prelude::*;

/// 48 cases per property keeps the suite fast; `PROPTEST_CASES=2000` runs a deeper sweep.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_shape(min_rank: usize, max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=5, min_rank..=max_rank)
}

fn arb_layout() -> impl Strategy<Value = common::Layout> {
    prop::sample::select(LAYOUTS.to_vec())
}

fn arb_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DTYPES.to_vec())
}

const UNARY: [UnaryOp; 9] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Tanh,
    UnaryOp::Silu,
    UnaryOp::Gelu,
    UnaryOp::Powf(1.7),
];

/// Input range per op: log, sqrt, rsqrt and powf need positive inputs.
fn unary_range(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_) => (0.5, 2.5),
        _ => (-3.0, 3.0),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unary_forward_and_backward(
        shape in arb_shape(0, 4), layout in arb_layout(), dtype in arb_dtype(),
        op in prop::sample::select(UNARY.to_vec()), seed in any::<u64>(),
    ) {
        let (lo, hi) = unary_range(op);
        let x = make(&shape, layout, dtype, seed, lo, hi);
        let y = ew::unary_fwd(op, &x).unwrap();
        assert_close(&y, &r::unary(op, &arr(&x)), 1.0, op.name());

        let dy = make(&shape, layout, dtype, seed ^ 1, -1.0, 1.0);
        let dx = ew::unary_bwd(op, &dy, &x, &y).unwrap();
        // the backward reads y, which bf16/f16 rounded: allow a few roundings
        let want = r::numerical_grad(|xs| r::unary(op, &xs[0]), &[arr(&x)], &arr(&dy), 0);
        assert_close(&dx, &want, 4.0, "unary_bwd");
    }

    #[test]
    fn binary_forward_and_backward_with_broadcasting(
        shape in arb_shape(1, 4), mask_a in any::<u8>(), mask_b in any::<u8>(),
        drop_a in 0usize..2, layout in arb_layout(), dtype in arb_dtype(),
        op in prop::sample::select(vec![
            BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum
        ]),
        seed in any::<u64>(),
    ) {
        // each operand: the full shape with some dims squashed to 1, a maybe missing its first
        let squash = |mask: u8| -> Vec<usize> {
            shape.iter().enumerate().map(|(d, &s)| if mask >> d & 1 == 1 { 1 } else { s }).collect()
        };
        let sa: Vec<usize> = squash(mask_a)[drop_a.min(shape.len() - 1)..].to_vec();
        let sb = squash(mask_b);
        let a = make(&sa, layout, dtype, seed, -2.0, 2.0);
        // keep divisors away from 0 (and the two operands of maximum apart from ties)
        let b = make(&sb, layout, dtype, seed ^ 7, 0.5, 2.0);
        let c = ew::binary_fwd(op, &a, &b).unwrap();
        assert_close(&c, &r::binary(op, &arr(&a), &arr(&b)), 1.0, op.name());

        // at a tie of maximum, finite differences see the average of the one-sided gradients;
        // bf16/f16 rounding makes ties likely, so those cases check the forward only
        let diff = r::binary(BinaryOp::Sub, &arr(&a), &arr(&b));
        if op == BinaryOp::Maximum && diff.data.contains(&0.0) {
            return Ok(());
        }
        let dc = make(c.shape(), layout, dtype, seed ^ 3, -1.0, 1.0);
        let (da, db) = ew::binary_bwd(op, &dc, &a, &b).unwrap();
        let f = |xs: &[Array64]| r::binary(op, &xs[0], &xs[1]);
        let inputs = [arr(&a), arr(&b)];
        // the gradient sums up to 5^3 products in f32 before rounding
        assert_close(&da, &r::numerical_grad(f, &inputs, &arr(&dc), 0), 4.0, "binary da");
        assert_close(&db, &r::numerical_grad(f, &inputs, &arr(&dc), 1), 4.0, "binary db");
    }

    #[test]
    fn affine_forward_and_backward(
        shape in arb_shape(0, 3), layout in arb_layout(), dtype in arb_dtype(),
        mul in -3.0f32..3.0, add in -3.0f32..3.0, seed in any::<u64>(),
    ) {
        let x = make(&shape, layout, dtype, seed, -2.0, 2.0);
        let y = ew::affine_fwd(&x, mul, add).unwrap();
        let (m, a) = (mul as f64, add as f64);
        let want = Array64::new(&shape, arr(&x).data.iter().map(|v| v * m + a).collect());
        assert_close(&y, &want, 1.0, "affine");
        let dy = make(&shape, layout, dtype, seed ^ 1, -1.0, 1.0);
        let want = Array64::new(&shape, arr(&dy).data.iter().map(|g| g * mul as f64).collect());
        assert_close(&ew::affine_bwd(&dy, mul).unwrap(), &want, 1.0, "affine_bwd");
    }

    #[test]
    fn reductions_forward_and_backward(
        shape in arb_shape(1, 4), dim_pick in 0usize..4, keepdim in any::<bool>(),
        layout in arb_layout(), dtype in arb_dtype(), seed in any::<u64>(),
    ) {
        let dim = dim_pick % shape.len();
        let x = make(&shape, layout, dtype, seed, -2.0, 2.0);
        let keep = |a: Array64| -> Array64 {
            let mut s = shape.clone();
            if keepdim { s[dim] = 1 } else { s.remove(dim); }
            Array64::new(&s, a.data)
        };
        let sum = x.sum(dim, keepdim).unwrap();
        assert_close(&sum, &keep(r::sum(&arr(&x), dim)), 1.0, "sum");
        assert_close(&x.mean(dim, keepdim).unwrap(), &keep(r::mean(&arr(&x), dim)), 1.0, "mean");
        assert_close(&x.max(dim, keepdim).unwrap(), &keep(r::max(&arr(&x), dim)), 1.0, "max");
        let idx = x.argmax(dim).unwrap();
        prop_assert_eq!(idx.dtype(), DType::U32);
        prop_assert_eq!(arr(&idx).data, r::argmax(&arr(&x), dim).data);

        let dy = make(sum.shape(), layout, dtype, seed ^ 5, -1.0, 1.0);
        let dyk = keep(arr(&dy));
        let ds = reduce::sum_mean_bwd(reduce::ReduceOp::Sum, &dy, &shape, dim).unwrap();
        let want = r::numerical_grad(|xs| r::sum(&xs[0], dim), &[arr(&x)], &dyk_flat(&dyk), 0);
        assert_close(&ds, &want, 1.0, "sum_bwd");
        let dm = reduce::sum_mean_bwd(reduce::ReduceOp::Mean, &dy, &shape, dim).unwrap();
        let want = r::numerical_grad(|xs| r::mean(&xs[0], dim), &[arr(&x)], &dyk_flat(&dyk), 0);
        assert_close(&dm, &want, 1.0, "mean_bwd");
        // bf16/f16 rounding makes exact ties likely, where finite differences see the average
        // of the one-sided gradients; with f32's 24 random bits a tie is vanishingly rare
        if dtype == DType::F32 {
            let dmax = reduce::max_bwd(&dy, &x, dim).unwrap();
            let want = r::numerical_grad(|xs| r::max(&xs[0], dim), &[arr(&x)], &dyk_flat(&dyk), 0);
            assert_close(&dmax, &want, 1.0, "max_bwd");
        }
    }

    #[test]
    fn softmax_and_log_softmax_forward_and_backward(
        shape in arb_shape(1, 3), layout in arb_layout(), dtype in arb_dtype(),
        seed in any::<u64>(),
    ) {
        let x = make(&shape, layout, dtype, seed, -4.0, 4.0);
        let dy = make(&shape, layout, dtype, seed ^ 9, -1.0, 1.0);
        let y = softmax::softmax_fwd(&x).unwrap();
        assert_close(&y, &r::softmax(&arr(&x)), 1.0, "softmax");
        let want = r::numerical_grad(|xs| r::softmax(&xs[0]), &[arr(&x)], &arr(&dy), 0);
        assert_close(&softmax::softmax_bwd(&dy, &y).unwrap(), &want, 4.0, "softmax_bwd");

        let y = softmax::log_softmax_fwd(&x).unwrap();
        assert_close(&y, &r::log_softmax(&arr(&x)), 1.0, "log_softmax");
        let want = r::numerical_grad(|xs| r::log_softmax(&xs[0]), &[arr(&x)], &arr(&dy), 0);
        assert_close(&softmax::log_softmax_bwd(&dy, &y).unwrap(), &want, 8.0, "log_softmax_bwd");
    }

    #[test]
    fn layer_norm_and_rms_norm_forward_and_backward(
        rows in 1usize..6, d in 2usize..9, layout in arb_layout(), dtype in arb_dtype(),
        affine in any::<bool>(), seed in any::<u64>(),
    ) {
        let eps = 1e-5;
        let x = make(&[rows, d], layout, dtype, seed, -2.0, 2.0);
        // a row of nearly equal values (or of tiny values, for RMSNorm) makes the norm
        // ill-conditioned: rstd is huge, and both the f32 result and the finite differences
        // lose digits in proportion. Such rows are the conditioning's fault, not the op's.
        let xa = arr(&x);
        let spread = |row: &[f64]| {
            let mean = row.iter().sum::<f64>() / row.len() as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
            let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
            var.min(ms)
        };
        prop_assume!(xa.rows().all(|row| spread(row) > 0.05));
        let w = make(&[d], layout, dtype, seed ^ 1, 0.5, 1.5);
        let b = make(&[d], layout, dtype, seed ^ 2, -0.5, 0.5);
        let dy = make(&[rows, d], layout, dtype, seed ^ 3, -1.0, 1.0);
        let (wo, bo) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
        let inputs = [arr(&x), arr(&w), arr(&b)];
        let ln = |xs: &[Array64]| {
            let (w, b) = if affine { (Some(&xs[1]), Some(&xs[2])) } else { (None, None) };
            r::layer_norm(&xs[0], w, b, eps as f64)
        };
        let (y, mean, rstd) = norm::layer_norm_fwd(&x, wo, bo, eps).unwrap();
        assert_close(&y, &ln(&inputs), 2.0, "layer_norm");
        let (dx, dw, db) = norm::layer_norm_bwd(&dy, &x, wo, affine, &mean, &rstd).unwrap();
        let g = |i| r::numerical_grad(ln, &inputs, &arr(&dy), i);
        // the normalised row amplifies the inputs' rounding by rstd, up to ~1/sqrt(eps) ~ 300
        // for rows of nearly equal values; these rows are random, so a few units suffice
        assert_close(&dx, &g(0), 16.0, "layer_norm dx");
        if affine {
            assert_close(&dw.unwrap(), &g(1), 8.0, "layer_norm dweight");
            assert_close(&db.unwrap(), &g(2), 8.0, "layer_norm dbias");
        }

        let rms = |xs: &[Array64]| r::rms_norm(&xs[0], affine.then_some(&xs[1]), eps as f64);
        let (y, rstd) = norm::rms_norm_fwd(&x, wo, eps).unwrap();
        assert_close(&y, &rms(&inputs), 2.0, "rms_norm");
        let (dx, dw) = norm::rms_norm_bwd(&dy, &x, wo, &rstd).unwrap();
        assert_close(&dx, &r::numerical_grad(rms, &inputs, &arr(&dy), 0), 16.0, "rms dx");
        if affine {
            let want = r::numerical_grad(rms, &inputs, &arr(&dy), 1);
            assert_close(&dw.unwrap(), &want, 8.0, "rms dweight");
        }
    }

    #[test]
    fn embedding_forward_and_backward(
        v in 1usize..8, d in 1usize..6, ids in prop::collection::vec(0u32..64, 1..10),
        layout in arb_layout(), dtype in arb_dtype(), seed in any::<u64>(),
    ) {
        let ids: Vec<u32> = ids.iter().map(|i| i % v as u32).collect();
        let table = make(&[v, d], layout, dtype, seed, -1.0, 1.0);
        let idt = Tensor::from_vec(ids.clone(), &[ids.len()]).unwrap();
        let out = embedding::embedding_fwd(&table, &idt).unwrap();
        assert_close(&out, &r::embedding(&arr(&table), &ids), 0.0, "embedding");
        let dout = make(&[ids.len(), d], layout, dtype, seed ^ 1, -1.0, 1.0);
        let dw = embedding::embedding_bwd(&dout, &idt, v).unwrap();
        let f = |xs: &[Array64]| r::embedding(&xs[0], &ids);
        assert_close(&dw, &r::numerical_grad(f, &[arr(&table)], &arr(&dout), 0), 4.0, "emb bwd");
    }

    #[test]
    fn cross_entropy_forward_and_backward(
        n in 1usize..6, v in 1usize..9, targets in prop::collection::vec(0u32..64, 6),
        ignore_some in any::<bool>(), layout in arb_layout(), dtype in arb_dtype(),
        seed in any::<u64>(),
    ) {
        // ignored targets use the id v, outside the vocabulary
        let ignore = v as u32;
        let targets: Vec<u32> = targets[..n]
            .iter()
            .enumerate()
            .map(|(i, t)| if ignore_some && i % 2 == 1 { ignore } else { t % v as u32 })
            .collect();
        let logits = make(&[n, v], layout, dtype, seed, -3.0, 3.0);
        let tt = Tensor::from_vec(targets.clone(), &[n]).unwrap();
        let (loss, lse) = loss::cross_entropy_fwd(&logits, &tt, Some(ignore)).unwrap();
        let want = r::cross_entropy(&arr(&logits), &targets, Some(ignore));
        // the loss is always f32: the tolerance is f32's, over the logits' values
        assert_close(&loss, &Array64::new(&[], vec![want]), 1.0, "cross_entropy");
        let dloss = Tensor::scalar(1.5);
        let dz = loss::cross_entropy_bwd(&dloss, &logits, &tt, &lse, Some(ignore)).unwrap();
        let f = |xs: &[Array64]| {
            Array64::new(&[], vec![r::cross_entropy(&xs[0], &targets, Some(ignore))])
        };
        let want = r::numerical_grad(f, &[arr(&logits)], &Array64::new(&[], vec![1.5]), 0);
        assert_close(&dz, &want, 2.0, "cross_entropy_bwd");
    }

    #[test]
    fn matmul_forward_and_backward_with_transposes_and_batch_broadcast(
        m in 1usize..7, k in 1usize..7, n in 1usize..7, batch in 1usize..4,
        a_t in any::<bool>(), b_t in any::<bool>(), b_batched in any::<bool>(),
        lay in arb_layout(), dtype in arb_dtype(), seed in any::<u64>(),
    ) {
        // an operand stored transposed and viewed back through .t(): same values, other
        // strides; `lay` adds a permuted or narrowed (offset) view underneath
        let operand = |rows: usize, cols: usize, lead: Option<usize>, transposed: bool, s: u64| {
            let mut shape: Vec<usize> = lead.into_iter().collect();
            if transposed {
                shape.extend([cols, rows]);
                make(&shape, lay, dtype, s, -1.0, 1.0).t().unwrap()
            } else {
                shape.extend([rows, cols]);
                make(&shape, lay, dtype, s, -1.0, 1.0)
            }
        };
        let a = operand(m, k, Some(batch), a_t, seed);
        let b = operand(k, n, b_batched.then_some(batch), b_t, seed ^ 1);
        let c = matmul::matmul(&a, &b).unwrap();
        // the f32 product of k terms, then one rounding to the dtype
        assert_close(&c, &r::matmul(&arr(&a), &arr(&b)), 2.0, "matmul");
        let dc = make(c.shape(), common::Layout::Contiguous, dtype, seed ^ 2, -1.0, 1.0);
        let (da, db) = matmul::matmul_bwd(&dc, &a, &b).unwrap();
        let f = |xs: &[Array64]| r::matmul(&xs[0], &xs[1]);
        let inputs = [arr(&a), arr(&b)];
        assert_close(&da, &r::numerical_grad(f, &inputs, &arr(&dc), 0), 4.0, "matmul da");
        assert_close(&db, &r::numerical_grad(f, &inputs, &arr(&dc), 1), 4.0, "matmul db");
    }

    #[test]
    fn causal_attention_forward_and_backward(
        b in 1usize..3, h in 1usize..3, t in 1usize..6, hd in 1usize..5,
        lay in arb_layout(), seed in any::<u64>(),
    ) {
        // q, k, v are views in the model (heads split out of the fused qkv projection)
        let shape = [b, h, t, hd];
        let (q, k, v) = (
            make(&shape, lay, DType::F32, seed, -1.0, 1.0),
            make(&shape, lay, DType::F32, seed ^ 1, -1.0, 1.0),
            make(&shape, lay, DType::F32, seed ^ 2, -1.0, 1.0),
        );
        let (out, probs) = attention::attention_fwd(&q, &k, &v).unwrap();
        assert_close(&out, &r::attention(&arr(&q), &arr(&k), &arr(&v)), 1.0, "attention");
        let dout = make(&shape, lay, DType::F32, seed ^ 3, -1.0, 1.0);
        let (dq, dk, dv) = attention::attention_bwd(&dout, &q, &k, &v, &probs).unwrap();
        let f = |xs: &[Array64]| r::attention(&xs[0], &xs[1], &xs[2]);
        let inputs = [arr(&q), arr(&k), arr(&v)];
        for (i, (got, name)) in [(dq, "dq"), (dk, "dk"), (dv, "dv")].iter().enumerate() {
            assert_close(got, &r::numerical_grad(f, &inputs, &arr(&dout), i), 4.0, name);
        }
    }

    #[test]
    fn cat_split_and_their_backwards(
        shape in arb_shape(1, 4), dim_pick in 0usize..4,
        sizes in prop::collection::vec(0usize..4, 1..4),
        layout in arb_layout(), dtype in arb_dtype(), seed in any::<u64>(),
    ) {
        let dim = dim_pick % shape.len();
        let parts: Vec<Tensor> = sizes.iter().enumerate().map(|(i, &s)| {
            let mut sh = shape.clone();
            sh[dim] = s;
            make(&sh, layout, dtype, seed ^ i as u64, -1.0, 1.0)
        }).collect();
        let joined = shape::cat(&parts, dim).unwrap();
        let want = r::cat(&parts.iter().map(arr).collect::<Vec<_>>(), dim);
        assert_close(&joined, &want, 0.0, "cat");
        // split undoes cat exactly, and each is the other's backward
        let pieces = shape::cat_bwd(&joined, &sizes, dim).unwrap();
        for (p, q) in pieces.iter().zip(&parts) {
            prop_assert_eq!(p.to_f32_vec().unwrap(), q.to_f32_vec().unwrap());
        }
        let again = shape::split_bwd(&pieces, dim).unwrap();
        prop_assert_eq!(again.to_f32_vec().unwrap(), joined.to_f32_vec().unwrap());
    }

    #[test]
    fn views_read_the_same_elements_as_index_arithmetic(
        shape in arb_shape(1, 4), seed in any::<u64>(),
    ) {
        // the reversed view: element [i0, .., in] of the view is element [in, .., i0] of the base
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let base = make(&reversed, common::Layout::Contiguous, DType::F32, seed, -1.0, 1.0);
        let perm: Vec<usize> = (0..shape.len()).rev().collect();
        let view = base.permute(&perm).unwrap();
        prop_assert!(view.shares_storage_with(&base));
        let base_vals = base.to_f32_vec().unwrap();
        let strides = odeflow_runtime::layout::contiguous_strides(&reversed);
        let got = view.to_f32_vec().unwrap();
        for (flat, g) in got.iter().enumerate() {
            let mut rem = flat;
            let mut pos = 0;
            for d in (0..shape.len()).rev() {
                let i = rem % shape[d];
                rem /= shape[d];
                pos += i * strides[shape.len() - 1 - d];
            }
            prop_assert_eq!(*g, base_vals[pos]);
        }
    }

    #[test]
    fn narrow_bwd_places_the_gradient_and_zeros_the_rest(
        shape in arb_shape(1, 3), dim_pick in 0usize..3, start_pick in 0usize..5,
        seed in any::<u64>(),
    ) {
        let dim = dim_pick % shape.len();
        let start = start_pick % shape[dim];
        let len = shape[dim] - start;
        let mut dshape = shape.clone();
        dshape[dim] = len;
        let dy = make(&dshape, common::Layout::Contiguous, DType::F32, seed, 0.5, 1.0);
        let dx = shape::narrow_bwd(&dy, &shape, dim, start).unwrap();
        prop_assert_eq!(dx.narrow(dim, start, len).unwrap().to_f32_vec().unwrap(),
                        dy.to_f32_vec().unwrap());
        let total: f32 = dx.to_f32_vec().unwrap().iter().sum();
        let inside: f32 = dy.to_f32_vec().unwrap().iter().sum();
        prop_assert!((total - inside).abs() <= 1e-5 * inside.abs().max(1.0));
    }

    #[test]
    fn casts_round_to_nearest(values in prop::collection::vec(-1e4f32..1e4, 1..20)) {
        let x = Tensor::from_vec(values.clone(), &[values.len()]).unwrap();
        let b = x.to_dtype(DType::BF16).unwrap().to_vec::<half::bf16>().unwrap();
        let h = x.to_dtype(DType::F16).unwrap().to_vec::<half::f16>().unwrap();
        for (i, v) in values.iter().enumerate() {
            prop_assert_eq!(b[i], half::bf16::from_f32(*v));
            prop_assert_eq!(h[i], half::f16::from_f32(*v));
        }
        let back = x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        for (g, v) in back.to_vec::<f32>().unwrap().iter().zip(&values) {
            prop_assert!((g - v).abs() <= v.abs() * DType::BF16.epsilon() / 2.0);
        }
    }
}

/// The reduced gradient as a flat array in the reference's (keepdim-free) shape.
fn dyk_flat(dy: &Array64) -> Array64 {
    Array64::new(&[dy.numel()], dy.data.clone())
}
