//! GPU: the elementwise kernels' bandwidth against a device-to-device copy of the same bytes,
//! measured in one run on one device. Prints a markdown table and, with `--json PATH`, writes
//! the figures for `bench/gpu/check.sh` to set beside PyTorch's (`bench/peers/torch_elementwise.py`).
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin gpu_elementwise [-- --reps 50] [--json out.json]
//! ```
//!
//! Each op runs over n = 2^24 elements: one warm-up launch, then `--reps` launches between two
//! stream synchronisations; the figure is bytes moved (inputs read plus output written) over
//! the mean time. A memory-bound kernel's target is 0.8x the copy's bandwidth or better.
//! Without a GPU this prints the driver error and exits 1.

use odeflow_kernels::elementwise::{self, Activation, Binary, ElemType};
use odeflow_kernels::{DeviceBuffer, Gpu, Result};
use std::sync::Arc;
use std::time::Instant;

const N: usize = 1 << 24;

fn main() {
    let reps = odeflow_bench::reps_arg(50);
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    if let Err(e) = run(reps, json) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Mean seconds of `f` over `reps` launches, after one warm-up.
fn time(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<DeviceBuffer>) -> Result<f64> {
    drop(f()?);
    gpu.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        drop(f()?);
    }
    gpu.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

fn run(reps: usize, json: Option<String>) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let gpu: Arc<Gpu> = Gpu::new(0)?;
    let values: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 / 250.0 - 2.0).collect();
    let bits: Vec<u16> = values.iter().map(|&v| (v.to_bits() >> 16) as u16).collect();
    let x32 = gpu.upload(&values)?;
    let y32 = gpu.upload(&values)?;
    let x16 = gpu.upload(&bits)?;
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let copy = time(&gpu, reps, || gpu.copy(&x32))?;
    let copy_gbs = 2.0 * (N * 4) as f64 / copy / 1e9;
    rows.push(("copy f32 (device to device)".into(), copy, copy_gbs));
    let mut add = |label: &str, bytes: usize, t: f64| {
        rows.push((label.to_string(), t, bytes as f64 / t / 1e9));
    };
    let t = time(&gpu, reps, || {
        elementwise::activation_fwd(Activation::Gelu, ElemType::F32, &x32, N)
    })?;
    add("gelu_fwd_f32", 2 * N * 4, t);
    let t = time(&gpu, reps, || {
        elementwise::activation_fwd(Activation::Gelu, ElemType::Bf16, &x16, N)
    })?;
    add("gelu_fwd_bf16", 2 * N * 2, t);
    let t = time(&gpu, reps, || {
        elementwise::activation_bwd(Activation::Gelu, ElemType::F32, &y32, &x32, N)
    })?;
    add("gelu_bwd_f32", 3 * N * 4, t);
    let t = time(&gpu, reps, || {
        elementwise::binary_fwd(Binary::Add, ElemType::F32, &x32, &y32, N)
    })?;
    add("add_fwd_f32", 3 * N * 4, t);
    println!("{} ({N} elements, mean of {reps})\n", gpu.name()?);
    println!("| op | us | GB/s | x copy |");
    println!("|---|---:|---:|---:|");
    for (label, t, gbs) in &rows {
        println!(
            "| {label} | {:.1} | {gbs:.0} | {:.2} |",
            t * 1e6,
            gbs / copy_gbs
        );
    }
    if let Some(path) = json {
        let body: Vec<String> = rows
            .iter()
            .map(|(l, t, g)| {
                format!("{{\"op\":\"{l}\",\"seconds\":{t:e},\"rate\":{g:.1},\"unit\":\"GB/s\"}}")
            })
            .collect();
        let text = format!("[{}]\n", body.join(","));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}
