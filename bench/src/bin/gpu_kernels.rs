//! GPU: the core kernels against the yardsticks issue 8 sets, measured in one run on one
//! device: the GEMM in TFLOP/s (bf16 tensor cores and f32), and the memory-bound kernels
//! (GELU, add, LayerNorm, softmax, cross-entropy, AdamW) in GB/s as a fraction of a
//! device-to-device copy.
//! `bench/peers/torch_kernels.py` measures PyTorch on the same shapes; `bench/gpu/check.sh`
//! prints the two side by side.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin gpu_kernels [-- --reps 20] [--json out.json]
//! ```
//!
//! Shapes (GPT-2-small-like): elementwise ops over 2^26 elements; GEMM 4096^3; LayerNorm and
//! softmax over [16384, 768] and
//! [16384, 1024]; cross-entropy [8192, 50257] bf16 logits; AdamW over 124M f32 parameters.
//! Bytes counted: what the kernel must read and write once (inputs, outputs, statistics).
//! Times: one warm-up, then the mean of `--reps` launches between two synchronisations.
//! Without a GPU this prints the driver error and exits 1.

use odeflow_kernels::elementwise::{self, Activation, Binary, ElemType};
use odeflow_kernels::gemm::{self, GemmKernel, GemmShape};
use odeflow_kernels::optim::{self, AdamWStep};
use odeflow_kernels::{norm, softmax, DeviceBuffer, Gpu};
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One row of the table: what ran, its mean time, and its rate (TFLOP/s or GB/s).
struct Row {
    op: String,
    seconds: f64,
    rate: f64,
    unit: &'static str,
}

fn main() {
    let reps = odeflow_bench::reps_arg(20);
    if let Err(e) = run(reps, odeflow_bench::arg_value("--json")) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Mean seconds of `f` over `reps` calls, after one warm-up.
fn time(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    gpu.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

/// n values in [-2, 2) as f32, or as bf16 bits.
fn values(gpu: &Arc<Gpu>, n: usize, ty: ElemType) -> Result<DeviceBuffer> {
    let f: Vec<f32> = (0..n).map(|i| (i % 997) as f32 / 249.25 - 2.0).collect();
    Ok(match ty {
        ElemType::F32 => gpu.upload(&f)?,
        ElemType::Bf16 => {
            let bits: Vec<u16> = f.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            gpu.upload(&bits)?
        }
    })
}

fn run(reps: usize, json: Option<String>) -> Result<()> {
    let gpu: Arc<Gpu> = Gpu::new(0)?;
    let mut rows = Vec::new();
    let bandwidth = |rows: &mut Vec<Row>, op: &str, bytes: usize, t: f64| {
        rows.push(Row {
            op: op.into(),
            seconds: t,
            rate: bytes as f64 / t / 1e9,
            unit: "GB/s",
        })
    };

    // the yardstick: a device-to-device copy of 256 MiB
    let big = values(&gpu, 1 << 26, ElemType::F32)?;
    let t = time(&gpu, reps, || {
        drop(gpu.copy(&big)?);
        Ok(())
    })?;
    bandwidth(&mut rows, "copy (device to device)", 2 * (4 << 26), t);

    // elementwise, over the same 2^26 elements: GELU forward (f32, bf16) and backward, add
    let n = 1 << 26;
    let y = values(&gpu, n, ElemType::F32)?;
    let big16 = values(&gpu, n, ElemType::Bf16)?;
    let gelu = |ty, x: &DeviceBuffer| elementwise::activation_fwd(Activation::Gelu, ty, x, n);
    let t = time(&gpu, reps, || {
        gelu(ElemType::F32, &big).map(drop).map_err(Into::into)
    })?;
    bandwidth(&mut rows, "gelu fwd f32", 2 * n * 4, t);
    let t = time(&gpu, reps, || {
        gelu(ElemType::Bf16, &big16).map(drop).map_err(Into::into)
    })?;
    bandwidth(&mut rows, "gelu fwd bf16", 2 * n * 2, t);
    let t = time(&gpu, reps, || {
        elementwise::activation_bwd(Activation::Gelu, ElemType::F32, &y, &big, n)?;
        Ok(())
    })?;
    bandwidth(&mut rows, "gelu bwd f32", 3 * n * 4, t);
    let t = time(&gpu, reps, || {
        elementwise::binary_fwd(Binary::Add, ElemType::F32, &big, &y, n)?;
        Ok(())
    })?;
    bandwidth(&mut rows, "add f32", 3 * n * 4, t);
    drop((big, big16, y));

    // GEMM 4096^3, bf16 in and out on tensor cores, then f32
    let s = 4096;
    let shape = GemmShape::new(s, s, s);
    for (kernel, ty, label) in [
        (GemmKernel::Bf16, ElemType::Bf16, "gemm bf16 4096^3"),
        (GemmKernel::F32, ElemType::F32, "gemm f32 4096^3"),
    ] {
        let (a, b) = (values(&gpu, s * s, ty)?, values(&gpu, s * s, ty)?);
        let mut c = gpu.alloc(s * s * ty.size())?;
        let t = time(&gpu, reps, || {
            gemm::gemm_into(&mut c, kernel, &a, &b, 1.0, 0.0, &shape)?;
            Ok(())
        })?;
        let flops = 2.0 * (s as f64).powi(3);
        rows.push(Row {
            op: label.into(),
            seconds: t,
            rate: flops / t / 1e12,
            unit: "TFLOP/s",
        });
    }

    // LayerNorm forward, bf16 [16384, 768] with weight and bias: x in, y out, 2 f32 stats
    let (r, d) = (16384, 768);
    let x = values(&gpu, r * d, ElemType::Bf16)?;
    let (w, b) = (
        values(&gpu, d, ElemType::Bf16)?,
        values(&gpu, d, ElemType::Bf16)?,
    );
    let t = time(&gpu, reps, || {
        drop(norm::layer_norm_fwd(
            ElemType::Bf16,
            &x,
            Some(&w),
            Some(&b),
            r,
            d,
            1e-5,
        )?);
        Ok(())
    })?;
    bandwidth(
        &mut rows,
        "layernorm fwd bf16 [16384, 768]",
        2 * r * d * 2 + 8 * r,
        t,
    );

    // softmax forward, f32 [16384, 1024]
    let (r, n) = (16384, 1024);
    let x = values(&gpu, r * n, ElemType::F32)?;
    let t = time(&gpu, reps, || {
        drop(softmax::softmax_fwd(ElemType::F32, &x, r, n)?);
        Ok(())
    })?;
    bandwidth(&mut rows, "softmax fwd f32 [16384, 1024]", 2 * r * n * 4, t);

    // cross-entropy forward, bf16 logits [8192, 50257]: the logits read once, 2 f32 per row
    let (r, v) = (8192, 50257);
    let logits = values(&gpu, r * v, ElemType::Bf16)?;
    let targets: Vec<u32> = (0..r as u32).map(|i| (i * 7919) % v as u32).collect();
    let targets = gpu.upload(&targets)?;
    let t = time(&gpu, reps, || {
        drop(softmax::cross_entropy_fwd(
            ElemType::Bf16,
            &logits,
            &targets,
            None,
            r,
            v,
        )?);
        Ok(())
    })?;
    bandwidth(
        &mut rows,
        "cross-entropy fwd bf16 [8192, 50257]",
        r * v * 2 + 12 * r,
        t,
    );

    // AdamW over 124M f32 parameters: reads param, grad, m, v; writes param, m, v
    let n = 124_000_000;
    let (mut p, mut m, mut vv) = (gpu.alloc(n * 4)?, gpu.alloc(n * 4)?, gpu.alloc(n * 4)?);
    let g = values(&gpu, n, ElemType::F32)?;
    for buf in [&mut p, &mut m, &mut vv] {
        *buf = gpu.copy(&g)?;
    }
    let mut step = 0;
    let t = time(&gpu, reps, || {
        step += 1;
        let h = AdamWStep {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_scale: 1.0,
        };
        optim::adamw_update(&mut p, &mut m, &mut vv, &g, ElemType::F32, &h, n)?;
        Ok(())
    })?;
    bandwidth(&mut rows, "adamw f32 124M", 7 * n * 4, t);

    print_table(&gpu, reps, &rows)?;
    if let Some(path) = json {
        let body: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"op\":\"{}\",\"seconds\":{:e},\"rate\":{:.2},\"unit\":\"{}\"}}",
                    r.op, r.seconds, r.rate, r.unit
                )
            })
            .collect();
        std::fs::write(&path, format!("[{}]\n", body.join(",")))
            .map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

fn print_table(gpu: &Gpu, reps: usize, rows: &[Row]) -> Result<()> {
    let copy = rows[0].rate;
    println!("{} (mean of {reps})\n", gpu.name()?);
    println!("| op | us | rate | x copy |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        let vs_copy = match r.unit {
            "GB/s" => format!("{:.2}", r.rate / copy),
            _ => String::new(),
        };
        println!(
            "| {} | {:.1} | {:.1} {} | {vs_copy} |",
            r.op,
            r.seconds * 1e6,
            r.rate,
            r.unit
        );
    }
    Ok(())
}
