//! Tensors on a CUDA device through the runtime's API: transfers in every dtype, views, the ops
//! that have kernels against their CPU results, and the error of an op that has none yet.
//! Tolerances: f32 within 4 ulps plus 1e-6, bf16 within one bf16 rounding (2^-8 relative).

use odeflow_runtime::ops::elementwise::UnaryOp;
use odeflow_runtime::{DType, Device, Error, Rng, Tensor};

const GPU: Device = Device::Cuda(0);

/// A view of a tensor (permuted, narrowed, broadcast).
type View = fn(&Tensor) -> Tensor;

fn random(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 2.0, dtype, &mut Rng::new(seed))
}

fn assert_close(label: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.device(), Device::Cpu);
    assert_eq!(got.shape(), want.shape(), "{label}");
    let rel = match want.dtype() {
        DType::BF16 => 1.0 / 256.0,
        _ => 4.0 * f32::EPSILON,
    };
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= rel * b.abs() + 1e-6,
            "{label} [{i}]: {a} vs {b}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tensors_go_to_the_device_and_back_unchanged() {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let t = random(&[3, 5, 7], dtype, 1);
        let back = t.to_device(GPU).unwrap().to_device(Device::Cpu).unwrap();
        assert_eq!(
            back.to_f32_vec().unwrap(),
            t.to_f32_vec().unwrap(),
            "{dtype}"
        );
    }
    let ids = Tensor::from_vec(vec![0u32, 7, 4_000_000_000], &[3]).unwrap();
    let back = ids.to_device(GPU).unwrap().to_device(Device::Cpu).unwrap();
    assert_eq!(back.to_vec::<u32>().unwrap(), vec![0, 7, 4_000_000_000]);
    // a strided view comes back in its own element order
    let t = random(&[4, 6], DType::F32, 2);
    let view = t.to_device(GPU).unwrap().transpose(0, 1).unwrap();
    let back = view.to_device(Device::Cpu).unwrap();
    let want = t.transpose(0, 1).unwrap().contiguous().unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_ops_with_kernels_match_the_cpu() {
    for dtype in [DType::F32, DType::BF16] {
        let (a, b) = (random(&[5, 33], dtype, 3), random(&[5, 33], dtype, 4));
        let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
        let cpu = |t: Tensor| t.to_device(Device::Cpu).unwrap();
        assert_close("gelu", &cpu(ga.gelu().unwrap()), &a.gelu().unwrap());
        assert_close("silu", &cpu(ga.silu().unwrap()), &a.silu().unwrap());
        assert_close("add", &cpu(ga.add(&gb).unwrap()), &a.add(&b).unwrap());
        assert_close("sub", &cpu(ga.sub(&gb).unwrap()), &a.sub(&b).unwrap());
        assert_close("mul", &cpu(ga.mul(&gb).unwrap()), &a.mul(&b).unwrap());
        assert_close(
            "scale",
            &cpu(ga.scale(0.5).unwrap()),
            &a.scale(0.5).unwrap(),
        );
        let op = UnaryOp::Gelu;
        let y = a.gelu().unwrap();
        let want = odeflow_runtime::ops::elementwise::unary_bwd(op, &b, &a, &y).unwrap();
        let gy = ga.gelu().unwrap();
        let got = odeflow_runtime::ops::elementwise::unary_bwd(op, &gb, &ga, &gy).unwrap();
        assert_close("gelu backward", &cpu(got), &want);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn views_broadcasts_and_casts_become_the_cpu_s_values() {
    let cpu = |t: Tensor| t.to_device(Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let t = random(&[2, 3, 4, 5], dtype, 7);
        let g = t.to_device(GPU).unwrap();
        // permuted, narrowed and broadcast views, copied dense by the strided-copy kernel
        let views: [(&str, View); 3] = [
            ("permute", |x| x.permute(&[3, 1, 0, 2]).unwrap()),
            ("narrow", |x| x.narrow(2, 1, 2).unwrap()),
            ("broadcast", |x| {
                x.narrow(0, 0, 1)
                    .unwrap()
                    .broadcast_to(&[4, 3, 4, 5])
                    .unwrap()
            }),
        ];
        for (label, view) in views {
            let got = cpu(view(&g).contiguous().unwrap());
            let want = view(&t).contiguous().unwrap();
            assert_eq!(
                got.to_f32_vec().unwrap(),
                want.to_f32_vec().unwrap(),
                "{label} {dtype}"
            );
        }
        // a broadcast operand of a binary op
        let row = random(&[5], dtype, 8);
        let got = cpu(g.add(&row.to_device(GPU).unwrap()).unwrap());
        assert_close("broadcast add", &got, &t.add(&row).unwrap());
    }
    let t = random(&[3, 7], DType::F32, 9);
    let g = t.to_device(GPU).unwrap();
    let down = g.to_dtype(DType::BF16).unwrap();
    assert_eq!(
        cpu(down.clone()).to_f32_vec().unwrap(),
        t.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap()
    );
    let up = cpu(down.to_dtype(DType::F32).unwrap());
    assert_eq!(
        up.to_f32_vec().unwrap(),
        t.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_matches_the_cpu_with_transposed_and_broadcast_operands() {
    let cpu = |t: Tensor| t.to_device(Device::Cpu).unwrap();
    // tolerance: sqrt(K) f32 epsilons of the products' scale (bf16: the output's rounding)
    let check = |label: &str, got: &Tensor, want: &Tensor, k: usize| {
        let rel = match want.dtype() {
            DType::BF16 => 1.0 / 128.0,
            _ => 4.0 * (k as f32).sqrt() * f32::EPSILON,
        };
        let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!((a - b).abs() <= rel * scale, "{label} [{i}]: {a} vs {b}");
        }
    };
    for dtype in [DType::F32, DType::BF16] {
        let (m, k, n) = (33, 70, 129);
        let x = random(&[3, m, k], dtype, 10);
        let w = random(&[k, n], dtype, 11);
        let wt = random(&[n, k], dtype, 12);
        let (gx, gw, gwt) = (
            x.to_device(GPU).unwrap(),
            w.to_device(GPU).unwrap(),
            wt.to_device(GPU).unwrap(),
        );
        // a weight broadcast over the batch (stride 0)
        let want = x.matmul(&w).unwrap();
        check("x w", &cpu(gx.matmul(&gw).unwrap()), &want, k);
        // a transposed view, read in place by the kernel
        let want = x.matmul(&wt.t().unwrap()).unwrap();
        check(
            "x wt^T",
            &cpu(gx.matmul(&gwt.t().unwrap()).unwrap()),
            &want,
            k,
        );
        // the weight gradient's shape: x^T dy summed over the batch
        let dy = random(&[3, m, n], dtype, 13);
        let want = x.t().unwrap().matmul(&dy).unwrap();
        let got = gx.t().unwrap().matmul(&dy.to_device(GPU).unwrap()).unwrap();
        check("x^T dy", &cpu(got), &want, m);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_cat_and_the_binary_backwards_match_the_cpu() {
    use odeflow_runtime::ops::{attention, elementwise::binary_bwd, elementwise::BinaryOp, shape};
    let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
    let gpu = |t: &Tensor| t.to_device(GPU).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        // the materialised causal attention, forward and backward, [B, H, T, hd] = [2, 3, 37, 16]
        let (q, k, v) = (
            random(&[2, 3, 37, 16], dtype, 20),
            random(&[2, 3, 37, 16], dtype, 21),
            random(&[2, 3, 37, 16], dtype, 22),
        );
        let (out, probs) = attention::attention_fwd(&q, &k, &v).unwrap();
        let (gout, gprobs) = attention::attention_fwd(&gpu(&q), &gpu(&k), &gpu(&v)).unwrap();
        assert_close_loose("attention out", &cpu(&gout), &out);
        assert_close_loose("attention probs", &cpu(&gprobs), &probs);
        let dout = random(&[2, 3, 37, 16], dtype, 23);
        let (dq, dk, dv) = attention::attention_bwd(&dout, &q, &k, &v, &probs).unwrap();
        let (gq, gk, gv) = (gpu(&q), gpu(&k), gpu(&v));
        let got = attention::attention_bwd(&gpu(&dout), &gq, &gk, &gv, &gprobs).unwrap();
        assert_close_loose("dq", &cpu(&got.0), &dq);
        assert_close_loose("dk", &cpu(&got.1), &dk);
        assert_close_loose("dv", &cpu(&got.2), &dv);
        // cat along a middle dim, of a view and a dense tensor
        let (a, b) = (random(&[4, 3, 5], dtype, 24), random(&[5, 2, 4], dtype, 25));
        let bt = b.permute(&[2, 1, 0]).unwrap();
        let want = shape::cat(&[a.clone(), bt.clone()], 1).unwrap();
        let got = shape::cat(&[gpu(&a), gpu(&b).permute(&[2, 1, 0]).unwrap()], 1).unwrap();
        assert_eq!(cpu(&got).to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        // add, sub and mul backwards with a broadcast operand
        let (x, row) = (random(&[6, 9], dtype, 26), random(&[9], dtype, 27));
        let dc = random(&[6, 9], dtype, 28);
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
            let (da, db) = binary_bwd(op, &dc, &x, &row).unwrap();
            let (gda, gdb) = binary_bwd(op, &gpu(&dc), &gpu(&x), &gpu(&row)).unwrap();
            assert_close_loose(&format!("{op:?} da"), &cpu(&gda), &da);
            assert_close_loose(&format!("{op:?} db"), &cpu(&gdb), &db);
        }
    }
}

/// Sums and products of many terms: within 1e-3 relative (f32) or 2^-6 (bf16) of the largest
/// value, since the GPU adds in another order.
fn assert_close_loose(label: &str, got: &Tensor, want: &Tensor) {
    let rel = match want.dtype() {
        DType::BF16 => 1.0 / 64.0,
        _ => 1e-3,
    };
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= rel * scale, "{label} [{i}]: {a} vs {b}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_op_without_a_kernel_says_so_and_mixing_devices_is_refused() {
    let a = random(&[4], DType::F32, 5).to_device(GPU).unwrap();
    match a.exp() {
        Err(Error::Unsupported { op, device }) => assert_eq!((op, device), ("exp", GPU)),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let cpu = random(&[4], DType::F32, 6);
    assert!(matches!(a.add(&cpu), Err(Error::DeviceMismatch { .. })));
}
