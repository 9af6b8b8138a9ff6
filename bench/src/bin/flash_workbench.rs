//! GPU: the flash-attention workbench (`bench/flash/README.md`). Each numbered kernel version
//! (`bench/flash/vN.cu`, its PTX committed in `bench/flash/ptx/`) is checked against the CPU's
//! tiled attention at small ragged shapes, forward and backward, at every head dim; a version
//! that fails prints FAIL and is not timed. The others are timed at B = 8, H = 12, hd = 64,
//! T = 1024 and 2048, causal, bf16, forward (out, lse) and backward (D, dk and dv, dq).
//! `bench/peers/torch_sdpa.py` times PyTorch's flash backend on the same shapes, and
//! `bench/gpu/check.sh` prints the two side by side.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin flash_workbench [-- --reps 20] [--out flash.json]
//! ```
//!
//! FLOPs counted, causal (half of the T x T products): the forward's two products (S = Q K^T,
//! O = P V) are 2 x 2 B H T^2 hd / 2; the backward is 2.5 times that (its five products dV, dP,
//! S, dS K and dS^T Q, as FlashAttention counts it, though ours recomputes S and dP once more
//! for the dq pass). Times: CUDA events around each call, 3 warm-ups, the median of `--reps`.
//! Without a GPU this prints the driver error and exits 1.

use odeflow_kernels::flash::{self, FlashPtx, FlashShape};
use odeflow_kernels::{DeviceBuffer, Gpu};
use odeflow_runtime::ops::attention::{flash_attention_bwd, flash_attention_fwd};
use odeflow_runtime::{DType, Rng, Tensor};
use serde_json::{json, Value};
use std::sync::Arc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The numbered versions, oldest first; `stages` is each one's `KV_STAGES` (a test checks).
const VERSIONS: [FlashPtx; 2] = [
    FlashPtx::Version {
        name: "v1",
        ptx: include_str!("../../flash/ptx/v1.ptx"),
        stages: 1,
    },
    FlashPtx::Version {
        name: "v2",
        ptx: include_str!("../../flash/ptx/v2.ptx"),
        stages: 2,
    },
];

/// The timed shapes: GPT-2-small's heads (B = 8, H = 12, hd = 64) at two lengths.
const TIMED: [FlashShape; 2] = [
    FlashShape {
        b_h: 96,
        t: 1024,
        hd: 64,
    },
    FlashShape {
        b_h: 96,
        t: 2048,
        hd: 64,
    },
];

/// The check's bar: 2^-5 of the largest |want| of each output. Loose enough for bf16 rounding
/// of sums over a few hundred keys, tight enough for any indexing slip, whose errors are of the
/// order of the output itself; `tests/tests/gpu_flash.rs` holds the element-wise bar.
const CHECK_REL: f32 = 1.0 / 32.0;

fn main() {
    let reps = odeflow_bench::reps_arg(20);
    if let Err(e) = run(reps, odeflow_bench::arg_value("--out")) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn version_name(ptx: FlashPtx) -> &'static str {
    match ptx {
        FlashPtx::Promoted => "flash.cu",
        FlashPtx::Version { name, .. } => name,
    }
}

/// Causal FLOPs of the forward: two products of 2 B H T^2 hd, halved by the mask.
fn fwd_flops(s: &FlashShape) -> f64 {
    2.0 * 2.0 * s.b_h as f64 * (s.t as f64).powi(2) * s.hd as f64 / 2.0
}

/// Causal FLOPs of the backward, by the usual count: 2.5 forwards.
fn bwd_flops(s: &FlashShape) -> f64 {
    2.5 * fwd_flops(s)
}

fn run(reps: usize, out_path: Option<String>) -> Result<()> {
    let gpu: Arc<Gpu> = Gpu::new(0)?;
    println!("{} (median of {reps})\n", gpu.name()?);
    println!("| version | check | T | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for ptx in VERSIONS {
        let name = version_name(ptx);
        if let Err(why) = check(&gpu, ptx) {
            println!("| {name} | FAIL: {why} | | | | | |");
            rows.push(json!({"version": name, "check": format!("FAIL: {why}")}));
            continue;
        }
        for shape in TIMED {
            let (fwd, bwd) = time_version(&gpu, ptx, &shape, reps)?;
            let (tf, tb) = (fwd_flops(&shape) / fwd / 1e9, bwd_flops(&shape) / bwd / 1e9);
            let t = shape.t;
            println!("| {name} | ok | {t} | {fwd:.3} | {tf:.1} | {bwd:.3} | {tb:.1} |");
            rows.push(json!({
                "version": name, "check": "ok", "b_h": shape.b_h, "t": t, "hd": shape.hd,
                "fwd_ms": fwd, "fwd_tflops": tf, "bwd_ms": bwd, "bwd_tflops": tb,
            }));
        }
    }
    if let Some(path) = out_path {
        let body = serde_json::to_string_pretty(&Value::Array(rows))?;
        std::fs::write(&path, body + "\n").map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

// ---- the check ----

/// A bf16-valued f32 CPU tensor of N(0, std^2) draws.
fn bf16_values(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
    let t = Tensor::randn(shape, 0.0, std, DType::BF16, rng);
    t.to_dtype(DType::F32).expect("a cast on the CPU")
}

/// bf16-valued f32s as bf16 bits: the upper half of each f32, exactly.
fn bf16_bits(values: &[f32]) -> Vec<u16> {
    values.iter().map(|x| (x.to_bits() >> 16) as u16).collect()
}

/// The tensor's (bf16-valued) values as bf16 bits in a device buffer.
fn upload_bf16(gpu: &Arc<Gpu>, t: &Tensor) -> Result<DeviceBuffer> {
    Ok(gpu.upload(&bf16_bits(&t.to_f32_vec()?))?)
}

/// A buffer of bf16 as f32 values (a bf16 is the upper half of the f32 it widens to).
fn download_bf16(gpu: &Gpu, buf: &DeviceBuffer) -> Result<Vec<f32>> {
    let bits: Vec<u16> = gpu.download(buf)?;
    Ok(bits
        .iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect())
}

/// max |got - want| <= CHECK_REL max |want| (a NaN fails), or why not.
fn close(label: &str, got: &[f32], want: &[f32]) -> std::result::Result<(), String> {
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let mut err = 0.0f32;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs();
        err = if e.is_nan() {
            f32::INFINITY
        } else {
            err.max(e)
        };
    }
    if err <= CHECK_REL * scale {
        Ok(())
    } else {
        Err(format!(
            "{label} off by {err:.3e} (largest |value| {scale:.3e})"
        ))
    }
}

/// The version against the CPU at b_h = 3 (B = 1, H = 3), T = 200 (a ragged fourth tile), at
/// every head dim; its backward runs from its own forward's out and lse, and so does the
/// CPU's.
fn check(gpu: &Arc<Gpu>, ptx: FlashPtx) -> std::result::Result<(), String> {
    for hd in flash::FLASH_HEAD_DIMS {
        check_at(gpu, ptx, &FlashShape::new(3, 200, hd)).map_err(|e| format!("hd {hd}: {e}"))?;
    }
    Ok(())
}

fn check_at(gpu: &Arc<Gpu>, ptx: FlashPtx, s: &FlashShape) -> Result<()> {
    let dims = [1, s.b_h, s.t, s.hd];
    let mut rng = Rng::new(s.hd as u64);
    let (q, k) = (
        bf16_values(&dims, 1.5, &mut rng),
        bf16_values(&dims, 1.5, &mut rng),
    );
    let (v, dout) = (
        bf16_values(&dims, 1.0, &mut rng),
        bf16_values(&dims, 1.0, &mut rng),
    );
    let (qd, kd, vd, gd) = (
        upload_bf16(gpu, &q)?,
        upload_bf16(gpu, &k)?,
        upload_bf16(gpu, &v)?,
        upload_bf16(gpu, &dout)?,
    );
    let rows = s.b_h * s.t * s.hd;
    let (mut out, mut lse) = (gpu.alloc(rows * 2)?, gpu.alloc(s.b_h * s.t * 4)?);
    flash::flash_fwd_into(&mut out, &mut lse, ptx, &qd, &kd, &vd, s)?;
    let (want_out, want_lse) = flash_attention_fwd(&q, &k, &v)?;
    let (got_out, got_lse) = (download_bf16(gpu, &out)?, gpu.download::<f32>(&lse)?);
    close("out", &got_out, &want_out.to_f32_vec()?)?;
    close("lse", &got_lse, &want_lse.to_f32_vec()?)?;

    // the backward, both sides from the device's out and lse
    let [mut dq, mut dk, mut dv] = [
        gpu.alloc(rows * 2)?,
        gpu.alloc(rows * 2)?,
        gpu.alloc(rows * 2)?,
    ];
    let grads = [&mut dq, &mut dk, &mut dv];
    flash::flash_bwd_into(grads, ptx, &gd, &qd, &kd, &vd, &out, &lse, s)?;
    let out_t = Tensor::from_vec(got_out, &dims)?;
    let lse_t = Tensor::from_vec(got_lse, &dims[..3])?;
    let want = flash_attention_bwd(&dout, &q, &k, &v, &out_t, &lse_t)?;
    for (label, got, want) in [
        ("dq", &dq, want.0),
        ("dk", &dk, want.1),
        ("dv", &dv, want.2),
    ] {
        close(label, &download_bf16(gpu, got)?, &want.to_f32_vec()?)?;
    }
    Ok(())
}

// ---- the timing ----

/// Median milliseconds of the version's forward and backward at `shape`, by CUDA events.
fn time_version(
    gpu: &Arc<Gpu>,
    ptx: FlashPtx,
    shape: &FlashShape,
    reps: usize,
) -> Result<(f64, f64)> {
    let rows = shape.b_h * shape.t * shape.hd;
    // values k / 128 in [-1, 1), exact in bf16; a different stride for each input
    let pattern = |stride: usize| {
        let v: Vec<f32> = (0..rows)
            .map(|i| ((i * stride) % 256) as f32 / 128.0 - 1.0)
            .collect();
        gpu.upload(&bf16_bits(&v))
    };
    let (q, k, v, dout) = (pattern(7919)?, pattern(104729)?, pattern(31)?, pattern(17)?);
    let (mut out, mut lse) = (gpu.alloc(rows * 2)?, gpu.alloc(shape.b_h * shape.t * 4)?);
    let fwd = median_ms(gpu, reps, || {
        flash::flash_fwd_into(&mut out, &mut lse, ptx, &q, &k, &v, shape)?;
        Ok(())
    })?;
    let [mut dq, mut dk, mut dv] = [
        gpu.alloc(rows * 2)?,
        gpu.alloc(rows * 2)?,
        gpu.alloc(rows * 2)?,
    ];
    let bwd = median_ms(gpu, reps, || {
        let grads = [&mut dq, &mut dk, &mut dv];
        flash::flash_bwd_into(grads, ptx, &dout, &q, &k, &v, &out, &lse, shape)?;
        Ok(())
    })?;
    Ok((fwd, bwd))
}

/// The median device time of `f` over `reps` calls, each between two events, after 3 warm-ups.
fn median_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = gpu.mark()?;
        f()?;
        times.push(gpu.mark()?.ms_since(&start)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use odeflow_kernels::Module;

    #[test]
    fn the_promoted_kernel_is_the_last_version_byte_for_byte() {
        let promoted = include_str!("../../../kernels/cuda/flash.cu");
        assert!(
            promoted == include_str!("../../flash/v2.cu"),
            "flash.cu is not v2.cu"
        );
    }

    #[test]
    fn every_version_defines_the_promoted_kernels_and_states_its_stages() {
        let sources = [
            include_str!("../../flash/v1.cu"),
            include_str!("../../flash/v2.cu"),
        ];
        let mut promoted = Module::Flash.entries();
        promoted.sort();
        for (ptx, source) in VERSIONS.iter().zip(sources) {
            let mut entries: Vec<&str> = ptx
                .ptx()
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
                .map(|rest| rest.split('(').next().unwrap_or(rest).trim())
                .collect();
            entries.sort();
            assert_eq!(entries, promoted, "{}", version_name(*ptx));
            let stages = format!("constexpr int KV_STAGES = {};", ptx.stages());
            assert!(
                source.contains(&stages),
                "{} lacks {stages:?}",
                version_name(*ptx)
            );
        }
    }

    #[test]
    fn the_check_passes_bf16_noise_and_fails_a_slip_or_a_nan() {
        let want = [1.0, -2.0, 0.5, 4.0];
        let noisy = [1.0 + 1.0 / 128.0, -2.0, 0.5, 4.0 - 1.0 / 32.0];
        assert!(close("x", &noisy, &want).is_ok());
        let slipped = [1.0, -2.0, 4.0, 0.5];
        let msg = close("dq", &slipped, &want).unwrap_err();
        assert!(msg.starts_with("dq off by 3.5"), "{msg}");
        assert!(close("x", &[1.0, f32::NAN, 0.5, 4.0], &want).is_err());
    }

    #[test]
    fn the_flop_counts_are_the_causal_halves() {
        // B = 1, H = 1, T = 2, hd = 1: S and P V are 2 x 4 flops each, causally 4 + 4
        let s = FlashShape::new(1, 2, 1);
        assert_eq!(fwd_flops(&s), 8.0);
        assert_eq!(bwd_flops(&s), 20.0);
        // the timed shape: 4 x 96 x 2048^2 x 64 / 2 = 51.5 GFLOP
        assert_eq!(fwd_flops(&TIMED[1]), 51_539_607_552.0);
    }
}
