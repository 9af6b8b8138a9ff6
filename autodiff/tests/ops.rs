//! Every differentiable op on the tape against f64 finite differences, on random shapes,
//! values and input layouts (see `common::check_grads`).

mod common;

use common::{check_grads, config, input, layouts, shapes, F32_TOL};
use odeflow_autodiff::Var;
use odeflow_runtime::ops::{BinaryOp, UnaryOp};
use odeflow_runtime::reference::{self as r, Array64};
use odeflow_runtime::testing::Layout;
use odeflow_runtime::{DType, Tensor};
use proptest::prelude::*;

const UNARY: [UnaryOp; 10] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Tanh,
    UnaryOp::Silu,
    UnaryOp::Gelu,
    UnaryOp::Powf(1.7),
    UnaryOp::Powf(-0.5),
];

fn apply_unary(op: UnaryOp, x: &Var) -> odeflow_autodiff::Result<Var> {
    match op {
        UnaryOp::Neg => x.neg(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => x.rsqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Silu => x.silu(),
        UnaryOp::Gelu => x.gelu(),
        UnaryOp::Powf(p) => x.powf(p),
    }
}

fn apply_binary(op: BinaryOp, a: &Var, b: &Var) -> odeflow_autodiff::Result<Var> {
    match op {
        BinaryOp::Add => a.add(b),
        BinaryOp::Sub => a.sub(b),
        BinaryOp::Mul => a.mul(b),
        BinaryOp::Div => a.div(b),
        BinaryOp::Maximum => a.maximum(b),
    }
}

/// `shape` with the dims flagged in `ones` set to 1 and the first `drop` dims removed: a shape
/// that broadcasts against `shape`.
fn broadcastable(shape: &[usize], ones: &[bool], drop: usize) -> Vec<usize> {
    let kept: Vec<usize> = shape
        .iter()
        .zip(ones)
        .map(|(&d, &one)| if one { 1 } else { d })
        .collect();
    kept[drop.min(kept.len())..].to_vec()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unary_ops(shape in shapes(0, 3), layout in layouts(), seed in any::<u64>(),
                 op in prop::sample::select(UNARY.to_vec())) {
        let positive =
            matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_));
        let (lo, hi) = if positive { (0.5, 2.5) } else { (-3.0, 3.0) };
        let x = input(&shape, layout, seed, lo, hi);
        check_grads(op.name(), &[x], |v| apply_unary(op, &v[0]), |a| r::unary(op, &a[0]), F32_TOL);
    }

    #[test]
    fn binary_ops_broadcast(shape in shapes(1, 3), ones in prop::collection::vec(any::<bool>(), 3),
                            drop in 0usize..2, swap in any::<bool>(), layout in layouts(),
                            seed in any::<u64>(),
                            op in prop::sample::select(vec![BinaryOp::Add, BinaryOp::Sub,
                                BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum])) {
        let small = broadcastable(&shape, &ones, drop);
        let (sa, sb) = if swap { (small, shape) } else { (shape, small) };
        let a = input(&sa, layout, seed, -2.0, 2.0);
        // division needs a denominator away from 0
        let b = input(&sb, Layout::Contiguous, seed ^ 1, 0.5, 2.0);
        check_grads(op.name(), &[a, b], |v| apply_binary(op, &v[0], &v[1]),
                    |x| r::binary(op, &x[0], &x[1]), F32_TOL);
    }

    #[test]
    fn same_value_used_twice_gets_the_sum(shape in shapes(1, 3), seed in any::<u64>()) {
        // y = x * exp(x) + x  ->  dy/dx = exp(x) (1 + x) + 1: three paths meet at x
        let x = input(&shape, Layout::Contiguous, seed, -1.0, 1.0);
        check_grads("x*exp(x)+x", &[x],
            |v| v[0].mul(&v[0].exp()?)?.add(&v[0]),
            |a| {
                let e = r::unary(UnaryOp::Exp, &a[0]);
                r::binary(BinaryOp::Add, &r::binary(BinaryOp::Mul, &a[0], &e), &a[0])
            }, F32_TOL);
    }

    #[test]
    fn affine_scale_add_scalar(shape in shapes(0, 3), layout in layouts(), seed in any::<u64>(),
                               mul in -3.0f32..3.0, add in -3.0f32..3.0) {
        let x = input(&shape, layout, seed, -2.0, 2.0);
        check_grads("affine", &[x],
            |v| v[0].affine(mul, add)?.scale(0.5)?.add_scalar(1.0),
            |a| Array64::new(&a[0].shape,
                a[0].data.iter().map(|x| (x * mul as f64 + add as f64) * 0.5 + 1.0).collect()),
            F32_TOL);
    }

    #[test]
    fn matmul_with_transposes_and_batches(m in 1usize..5, k in 1usize..5, n in 1usize..5,
                                          batch in 1usize..3, case in 0usize..4,
                                          layout in layouts(), seed in any::<u64>()) {
        // case 0: a b; 1: aᵀ stored [K, M] then a.t(); 2: b stored [N, K] then b.t();
        // 3: batched a [batch, M, K] against a shared b (broadcast over the batch)
        let (sa, sb): (Vec<usize>, Vec<usize>) = match case {
            0 => (vec![m, k], vec![k, n]),
            1 => (vec![k, m], vec![k, n]),
            2 => (vec![m, k], vec![n, k]),
            _ => (vec![batch, m, k], vec![k, n]),
        };
        let a = input(&sa, layout, seed, -1.0, 1.0);
        let b = input(&sb, Layout::Contiguous, seed ^ 3, -1.0, 1.0);
        check_grads("matmul", &[a, b],
            |v| match case {
                1 => v[0].t()?.matmul(&v[1]),
                2 => v[0].matmul(&v[1].t()?),
                _ => v[0].matmul(&v[1]),
            },
            |x| match case {
                1 => r::matmul(&r::transpose_last(&x[0]), &x[1]),
                2 => r::matmul(&x[0], &r::transpose_last(&x[1])),
                _ => r::matmul(&x[0], &x[1]),
            }, F32_TOL);
    }

    #[test]
    fn lincomb_is_x_plus_the_scaled_terms(shape in shapes(1, 3), terms in 0usize..4,
                                          layout in layouts(), seed in any::<u64>()) {
        let inputs: Vec<Tensor> = (0..=terms)
            .map(|i| input(&shape, if i == 0 { layout } else { Layout::Contiguous },
                           seed ^ i as u64, -1.0, 1.0))
            .collect();
        let alphas = [0.5f32, -1.25, 2.0];
        check_grads("lincomb", &inputs,
            |v| {
                let terms: Vec<(f32, &Var)> = alphas.iter().copied().zip(&v[1..]).collect();
                v[0].lincomb(&terms)
            },
            |x| {
                let mut y = x[0].clone();
                for (alpha, k) in alphas.iter().zip(&x[1..]) {
                    y.data.iter_mut().zip(&k.data).for_each(|(y, k)| *y += *alpha as f64 * k);
                }
                y
            }, F32_TOL);
    }

    #[test]
    fn generate_matches_the_product_of_h_and_the_stack(n in 1usize..5, k in 1usize..5,
                                                      d_in in 1usize..4, d_out in 1usize..4,
                                                      skip in 0usize..6, seed in any::<u64>()) {
        // step `skip` (when < n) is left out of the loss: its gradient never arrives and the
        // backward must read it as zeros
        let h = input(&[n, k], Layout::Contiguous, seed, -1.0, 1.0);
        let f = input(&[k, d_in, d_out], Layout::Contiguous, seed ^ 5, -1.0, 1.0);
        let p = d_in * d_out;
        let kept: Vec<usize> = (0..n).filter(|&i| i != skip).collect();
        if kept.is_empty() {
            return Ok(());
        }
        check_grads("generate", &[h, f],
            |v| {
                let steps = Var::generate(&v[0], &v[1])?;
                let rows: Vec<Var> =
                    kept.iter().map(|&i| steps[i].reshape(&[1, p])).collect::<Result<_, _>>()?;
                Var::cat(&rows.iter().collect::<Vec<_>>(), 0)
            },
            |x| {
                let w = r::matmul(&x[0], &Array64::new(&[k, p], x[1].data.clone()));
                let data = kept.iter().flat_map(|&i| w.data[i * p..(i + 1) * p].to_vec());
                Array64::new(&[kept.len(), p], data.collect())
            }, F32_TOL);
    }

    #[test]
    fn reductions(shape in shapes(1, 3), dim_seed in any::<usize>(), keepdim in any::<bool>(),
                  which in 0usize..5, layout in layouts(), seed in any::<u64>()) {
        let dim = dim_seed % shape.len();
        let x = input(&shape, layout, seed, -2.0, 2.0);
        let keep = |y: Array64| {
            // the references drop the reduced dim; keepdim puts it back as 1
            let mut s = shape.clone();
            if keepdim { s[dim] = 1 } else { s.remove(dim); }
            Array64::new(&s, y.data)
        };
        check_grads("reduction", &[x],
            |v| match which {
                0 => v[0].sum(dim, keepdim),
                1 => v[0].mean(dim, keepdim),
                2 => v[0].max(dim, keepdim),
                3 => v[0].sum_all(),
                _ => v[0].mean_all(),
            },
            |a| match which {
                0 => keep(r::sum(&a[0], dim)),
                1 => keep(r::mean(&a[0], dim)),
                2 => keep(r::max(&a[0], dim)),
                3 => r::sum_all(&a[0]),
                _ => {
                    let s = r::sum_all(&a[0]);
                    Array64::new(&[], vec![s.data[0] / a[0].numel() as f64])
                }
            }, F32_TOL);
    }

    #[test]
    fn softmax_and_log_softmax(shape in shapes(1, 3), log in any::<bool>(), layout in layouts(),
                               seed in any::<u64>()) {
        let x = input(&shape, layout, seed, -3.0, 3.0);
        check_grads("softmax", &[x],
            |v| if log { v[0].log_softmax() } else { v[0].softmax() },
            |a| if log { r::log_softmax(&a[0]) } else { r::softmax(&a[0]) }, F32_TOL);
    }

    #[test]
    fn layer_norm_and_rms_norm(rows in shapes(0, 2), d in 2usize..7, with_w in any::<bool>(),
                               with_b in any::<bool>(), rms in any::<bool>(),
                               layout in layouts(), seed in any::<u64>()) {
        let mut shape = rows.clone();
        shape.push(d);
        // a wide spread keeps each row's variance well away from 0 (eps-dominated rows make
        // the finite differences ill-conditioned, not the rule wrong)
        let x = input(&shape, layout, seed, -3.0, 3.0);
        let mut inputs = vec![x];
        if with_w { inputs.push(input(&[d], Layout::Contiguous, seed ^ 5, 0.5, 1.5)); }
        let with_b = with_b && !rms;
        if with_b { inputs.push(input(&[d], Layout::Contiguous, seed ^ 6, -1.0, 1.0)); }
        let spread = {
            let v = inputs[0].to_f32_vec().unwrap();
            v.chunks(d).map(|row| {
                let hi = row.iter().cloned().fold(f32::MIN, f32::max);
                hi - row.iter().cloned().fold(f32::MAX, f32::min)
            }).fold(f32::MAX, f32::min)
        };
        prop_assume!(spread > 0.3);
        check_grads("norm", &inputs,
            |v| {
                let w = with_w.then(|| &v[1]);
                let b = with_b.then(|| &v[if with_w { 2 } else { 1 }]);
                if rms { v[0].rms_norm(w, 1e-6) } else { v[0].layer_norm(w, b, 1e-5) }
            },
            |a| {
                let w = with_w.then(|| &a[1]);
                let b = with_b.then(|| &a[if with_w { 2 } else { 1 }]);
                if rms { r::rms_norm(&a[0], w, 1e-6) } else { r::layer_norm(&a[0], w, b, 1e-5) }
            }, 1e-3);
    }

    #[test]
    fn embedding_sums_repeated_rows(vocab in 1usize..6, d in 1usize..5, n in 1usize..8,
                                    seed in any::<u64>()) {
        let table = input(&[vocab, d], Layout::Contiguous, seed, -1.0, 1.0);
        // ids drawn from a small vocabulary repeat, so rows receive several gradients
        let ids: Vec<u32> = (0..n).map(|i| ((seed as usize + i * 7) % vocab) as u32).collect();
        let ids_t = Tensor::from_vec(ids.clone(), &[n]).unwrap();
        check_grads("embedding", &[table], |v| v[0].embedding(&ids_t),
            |a| r::embedding(&a[0], &ids), F32_TOL);
    }

    #[test]
    fn cross_entropy_with_ignored_rows(n in 1usize..6, vocab in 2usize..7, seed in any::<u64>(),
                                       ignore_first in any::<bool>()) {
        let logits = input(&[n, vocab], Layout::Contiguous, seed, -3.0, 3.0);
        let mut targets: Vec<u32> =
            (0..n).map(|i| ((seed as usize + i * 5) % vocab) as u32).collect();
        const IGNORE: u32 = u32::MAX;
        if ignore_first { targets[0] = IGNORE; }
        let t = Tensor::from_vec(targets.clone(), &[n]).unwrap();
        check_grads("cross_entropy", &[logits], |v| v[0].cross_entropy(&t, Some(IGNORE)),
            |a| Array64::new(&[], vec![r::cross_entropy(&a[0], &targets, Some(IGNORE))]),
            F32_TOL);
    }

    #[test]
    fn attention_tiled_materialised_and_composed(b in 1usize..3, h in 1usize..3, t in 1usize..5,
                                    hd in 1usize..5, which in 0usize..3,
                                    seed in any::<u64>()) {
        let shape = [b, h, t, hd];
        let qkv: Vec<Tensor> = (0..3)
            .map(|i| input(&shape, Layout::Contiguous, seed ^ i, -1.0, 1.0)).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        check_grads("attention", &qkv,
            |v| match which {
                0 => Var::attention(&v[0], &v[1], &v[2]),
                1 => Var::attention_materialised(&v[0], &v[1], &v[2]),
                _ => {
                    // the same attention from smaller ops: exercises t(), the mask and softmax
                    let scores = v[0].matmul(&v[1].t()?)?.scale(scale)?;
                    scores.causal_mask_fill(f32::NEG_INFINITY)?.softmax()?.matmul(&v[2])
                }
            },
            |a| r::attention(&a[0], &a[1], &a[2]), F32_TOL);
    }

    #[test]
    fn views_route_gradients(shape in shapes(2, 3), which in 0usize..7, layout in layouts(),
                             seed in any::<u64>()) {
        let x = input(&shape, layout, seed, -1.0, 1.0);
        let rank = shape.len();
        let reversed: Vec<usize> = (0..rank).rev().collect();
        let n0 = shape[0];
        let mut wide = shape.clone();
        wide.insert(0, 2);
        // every view is followed by exp(), so the loss is non-linear through it
        check_grads("view", &[x],
            |v| {
                let y = match which {
                    0 => v[0].reshape(&[v[0].value().numel()])?,
                    1 => v[0].permute(&reversed)?,
                    2 => v[0].transpose(0, rank - 1)?.contiguous()?,
                    3 => v[0].narrow(0, n0 / 2, n0 - n0 / 2)?,
                    4 => v[0].broadcast_to(&wide)?,
                    5 => v[0].unsqueeze(1)?,
                    _ => v[0].t()?,
                };
                y.exp()
            },
            |a| {
                let y = match which {
                    0 => Array64::new(&[a[0].numel()], a[0].data.clone()),
                    1 => r::permute(&a[0], &reversed),
                    2 => {
                        let mut perm: Vec<usize> = (0..rank).collect();
                        perm.swap(0, rank - 1);
                        r::permute(&a[0], &perm)
                    }
                    3 => r::narrow(&a[0], 0, n0 / 2, n0 - n0 / 2),
                    4 => r::broadcast_to(&a[0], &wide),
                    5 => {
                        let mut s = shape.clone();
                        s.insert(1, 1);
                        Array64::new(&s, a[0].data.clone())
                    }
                    _ => r::transpose_last(&a[0]),
                };
                r::unary(UnaryOp::Exp, &y)
            }, F32_TOL);
    }

    #[test]
    fn cat_and_split(rows in 1usize..4, a in 1usize..4, b in 1usize..4, c in 1usize..4,
                     seed in any::<u64>()) {
        // split x [rows, a+b+c] into three, drop the middle piece, scale one, re-join them
        // in the other order: the unused piece must get zeros, the others their slices
        let x = input(&[rows, a + b + c], Layout::Contiguous, seed, -1.0, 1.0);
        let y = input(&[rows, 2], Layout::Contiguous, seed ^ 9, -1.0, 1.0);
        check_grads("cat/split", &[x, y],
            |v| {
                let p = v[0].split(&[a, b, c], 1)?;
                Var::cat(&[&p[2].scale(2.0)?, &v[1], &p[0]], 1)?.tanh()
            },
            |x| {
                let p2 = r::narrow(&x[0], 1, a + b, c);
                let p2 = Array64::new(&p2.shape, p2.data.iter().map(|v| 2.0 * v).collect());
                let joined = r::cat(&[p2, x[1].clone(), r::narrow(&x[0], 1, 0, a)], 1);
                r::unary(UnaryOp::Tanh, &joined)
            }, F32_TOL);
    }
}

#[test]
fn to_dtype_casts_the_gradient_back() {
    // an f32 leaf computed in bf16: y = exp(bf16(x)); dx = exp(x) * r, in f32, to bf16 accuracy
    let x = input(&[3, 5], Layout::Contiguous, 4, -1.0, 1.0);
    let tol = 4.0 * DType::BF16.epsilon() as f64;
    check_grads(
        "to_dtype",
        &[x],
        |v| v[0].to_dtype(DType::BF16)?.exp()?.to_dtype(DType::F32),
        |a| r::unary(UnaryOp::Exp, &a[0]),
        tol,
    );
}
