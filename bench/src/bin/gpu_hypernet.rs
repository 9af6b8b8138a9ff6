//! GPU: the fused hypernetwork kernels (`kernels/cuda/hypernet.cu`, issue 10) at the
//! GPT-2-small-shaped ODE model's sizes, in GB/s counting the bytes they must move, beside a
//! device-to-device copy of the same bytes measured in the same run (the issue's target: at
//! least 80% of the copy's bandwidth), and beside the composed path the runtime had before
//! them (the GEMM, and in the backward a join of the steps' gradients first) for the ratio.
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin gpu_hypernet [-- --reps 20] [--json out.json]
//! ```
//!
//! Shapes: N = 12 evaluation times, K = E + 1 = 21 stacked rows, and the three weights of a
//! block, P = 768 x 2304 (attention's QKV), 768 x 768 (its projection), 768 x 3072 (the MLP's
//! first); f and the gradients in bf16 (h in f32, as under mixed precision) and in f32.
//! Bytes counted: the forward reads F and writes W, (K + N) P elements; the backward reads the
//! N gradients and F and writes dF, (N + 2K) P elements (H, dH and the kernel's 1 KB per block
//! of partial sums are left out); the backward into a gradient gathered so far ("bwd+acc",
//! `generate_bwd_acc`) also reads acc, (N + 3K) P elements, acc and the sum in f32 (an f32
//! gradient over the bf16 f of mixed precision, or over the f32 f). Its composed path is the
//! plain backward and then acc + df (with df cast to f32 first for a bf16 f), which moves
//! (N + 5K) P and more. The copy moves the same bytes: half of them read, half written.
//! Times: through the runtime's ops on CUDA tensors (what the model calls), the mean of
//! `--reps` back-to-back calls between two CUDA events, after two warm-ups; "host us" is the
//! host's time to enqueue one call, which bounds the measurement when it exceeds the device's.
//! Before timing, each case's fused results are held against the CPU op at the element-wise
//! bar of `tests/tests/gpu_hypernet.rs`; a case that fails prints FAIL and is not timed.
//! Without a GPU this prints the driver error and exits 1.

use odeflow_kernels::Gpu;
use odeflow_runtime::ops::hypernet::{generate, generate_bwd, generate_bwd_acc};
use odeflow_runtime::{DType, Device, Rng, Tensor};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CUDA: Device = Device::Cuda(0);

/// Evaluation times and stacked rows of the GPT-2-small-shaped ODE model (L = 12, E = 20).
const N: usize = 12;
const K: usize = 21;

/// The block's weights, [d_in, d_out] at D = 768.
const WEIGHTS: [(usize, usize); 3] = [(768, 2304), (768, 768), (768, 3072)];

/// The issue's target: this fraction of the copy's bandwidth.
const TARGET: f64 = 0.8;

fn main() {
    let reps = odeflow_bench::reps_arg(20);
    if let Err(e) = run(reps, odeflow_bench::arg_value("--json")) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The three passes timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Fwd,
    Bwd,
    /// the backward into a gradient gathered so far
    BwdAcc,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::Bwd => "bwd",
            Pass::BwdAcc => "bwd+acc",
        }
    }
}

/// Bytes each pass must move (see the module doc), f and the gradients of `f_size` bytes, acc
/// and the sum of `acc_size`: (K + N) P, (N + 2K) P, and (N + K) P + 2 K P elements.
fn bytes_moved(
    pass: Pass,
    (n, k, p): (usize, usize, usize),
    f_size: usize,
    acc_size: usize,
) -> usize {
    match pass {
        Pass::Fwd => (k + n) * p * f_size,
        Pass::Bwd => (n + 2 * k) * p * f_size,
        Pass::BwdAcc => (n + k) * p * f_size + 2 * k * p * acc_size,
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

fn run(reps: usize, json_path: Option<String>) -> Result<()> {
    let gpu = odeflow_runtime::cuda::gpu(0)?;
    println!("{} (mean of {reps} back-to-back calls)\n", gpu.name()?);
    println!(
        "| op | P | fused us | GB/s | copy GB/s | x copy (>= {TARGET}) | composed us | \
         fused / composed | host us |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for dtype in [DType::BF16, DType::F32] {
        for (d_in, d_out) in WEIGHTS {
            let case = Case::new(d_in, d_out, dtype)?;
            rows.extend(case.measure(&gpu, reps)?);
        }
    }
    if let Some(path) = json_path {
        let body = serde_json::to_string_pretty(&Value::Array(rows))?;
        std::fs::write(&path, body + "\n").map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// One weight's inputs, on the CPU (the check's reference) and on the device.
struct Case {
    label: String,
    dtype: DType,
    p: usize,
    /// h, f, and the gradient gathered so far (acc, f32)
    cpu: [Tensor; 3],
    cpu_dws: Vec<Tensor>,
    dev: [Tensor; 3],
    dev_dws: Vec<Tensor>,
}

impl Case {
    /// h [N, K] f32, f [K, d_in, d_out] and N gradients [d_in, d_out] in `dtype`, acc
    /// [K, d_in, d_out] f32, N(0, 1).
    fn new(d_in: usize, d_out: usize, dtype: DType) -> Result<Case> {
        let mut rng = Rng::new((d_in * d_out) as u64);
        let h = Tensor::randn(&[N, K], 0.0, 1.0, DType::F32, &mut rng);
        let f = Tensor::randn(&[K, d_in, d_out], 0.0, 1.0, dtype, &mut rng);
        let acc = Tensor::randn(&[K, d_in, d_out], 0.0, 1.0, DType::F32, &mut rng);
        let cpu_dws: Vec<Tensor> = (0..N)
            .map(|_| Tensor::randn(&[d_in, d_out], 0.0, 1.0, dtype, &mut rng))
            .collect();
        let dev_dws = cpu_dws
            .iter()
            .map(|d| d.to_device(CUDA))
            .collect::<odeflow_runtime::Result<_>>()?;
        Ok(Case {
            label: format!("{d_in}x{d_out}"),
            dtype,
            p: d_in * d_out,
            dev: [h.to_device(CUDA)?, f.to_device(CUDA)?, acc.to_device(CUDA)?],
            cpu: [h, f, acc],
            cpu_dws,
            dev_dws,
        })
    }

    /// The check, then the forward, backward and backward-into-acc rows (fused, composed,
    /// copy).
    fn measure(&self, gpu: &Arc<Gpu>, reps: usize) -> Result<Vec<Value>> {
        let name = dtype_name(self.dtype);
        if let Err(why) = self.check() {
            println!(
                "| hypernet {name} | {} | FAIL: {why} | | | | | | |",
                self.label
            );
            return Ok(vec![json!({
                "op": format!("hypernet {name}"), "p": self.label, "check": format!("FAIL: {why}"),
            })]);
        }
        let [h, f, acc] = &self.dev;
        let dws = &self.dev_dws;
        let fwd = time_us(gpu, reps, || generate(h, f))?;
        let fwd_composed = time_us(gpu, reps, || composed_fwd(h, f))?;
        let bwd = time_us(gpu, reps, || generate_bwd(dws, h, f))?;
        let bwd_composed = time_us(gpu, reps, || composed_bwd(dws, h, f))?;
        let into = time_us(gpu, reps, || generate_bwd_acc(dws, h, f, Some(acc)))?;
        let into_composed = time_us(gpu, reps, || bwd_then_add(dws, h, f, acc))?;
        let passes = [
            (Pass::Fwd, fwd, fwd_composed),
            (Pass::Bwd, bwd, bwd_composed),
            (Pass::BwdAcc, into, into_composed),
        ];
        let mut rows = Vec::new();
        for (pass, fused, composed) in passes {
            let dir = pass.name();
            let sizes = (self.dtype.size_in_bytes(), acc.dtype().size_in_bytes());
            let bytes = bytes_moved(pass, (N, K, self.p), sizes.0, sizes.1);
            let copy = copy_us(gpu, reps, bytes)?;
            let (rate, copy_rate) = (bytes as f64 / fused.0 / 1e3, bytes as f64 / copy / 1e3);
            let (fraction, speedup) = (rate / copy_rate, composed.0 / fused.0);
            println!(
                "| hypernet {dir} {name} | {} | {:.1} | {rate:.0} | {copy_rate:.0} | \
                 {fraction:.2} | {:.1} | {speedup:.2} | {:.1} |",
                self.label, fused.0, composed.0, fused.1
            );
            rows.push(json!({
                "op": format!("hypernet {dir} {name}"), "p": self.label, "n": N, "k": K,
                "columns": self.p, "bytes": bytes, "check": "ok",
                "fused_us": fused.0, "gbps": rate, "copy_us": copy, "copy_gbps": copy_rate,
                "fraction_of_copy": fraction, "composed_us": composed.0, "speedup": speedup,
                "host_us": fused.1,
            }));
        }
        Ok(rows)
    }

    /// The fused results on the device against the CPU op, element by element.
    fn check(&self) -> std::result::Result<(), String> {
        let [h, f, acc] = &self.cpu;
        let [hd, fd, accd] = &self.dev;
        let why = |e: odeflow_runtime::Error| e.to_string();
        let want_w = generate(h, f).map_err(why)?;
        let (ah, af) = (abs(h), abs(f));
        let mag_w = generate(&ah, &af).map_err(why)?;
        let w = generate(hd, fd).map_err(why)?;
        within("w", &w, &want_w, &mag_w)?;
        let (want_dh, want_df) = generate_bwd(&self.cpu_dws, h, f).map_err(why)?;
        let adws: Vec<Tensor> = self.cpu_dws.iter().map(abs).collect();
        let (mag_dh, mag_df) = generate_bwd(&adws, &ah, &af).map_err(why)?;
        let (dh, df) = generate_bwd(&self.dev_dws, hd, fd).map_err(why)?;
        within("dh", &dh, &want_dh, &mag_dh)?;
        within("df", &df, &want_df, &mag_df)?;
        // into acc: the same bar with |acc| in the magnitudes
        let (_, want_sum) = generate_bwd_acc(&self.cpu_dws, h, f, Some(acc)).map_err(why)?;
        let (_, mag_sum) = generate_bwd_acc(&adws, &ah, &af, Some(&abs(acc))).map_err(why)?;
        let (_, sum) = generate_bwd_acc(&self.dev_dws, hd, fd, Some(accd)).map_err(why)?;
        within("acc + df", &sum, &want_sum, &mag_sum)
    }
}

/// |x| as an f32 CPU tensor.
fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t
        .to_f32_vec()
        .expect("a CPU tensor")
        .iter()
        .map(|x| x.abs())
        .collect();
    Tensor::from_vec(v, t.shape()).expect("the same shape")
}

/// |got - want| <= 2 u |want| + 2^-16 mag everywhere (the bar of tests/tests/gpu_hypernet.rs,
/// whose doc derives it), or the first element that is not.
fn within(
    label: &str,
    got: &Tensor,
    want: &Tensor,
    mag: &Tensor,
) -> std::result::Result<(), String> {
    let u = match want.dtype() {
        DType::BF16 => 1.0 / 256.0,
        _ => f32::EPSILON as f64 / 2.0,
    };
    let vals = |t: &Tensor| t.to_f32_vec().map_err(|e| e.to_string());
    let (g, w, m) = (vals(got)?, vals(want)?, vals(mag)?);
    for (i, ((&g, &w), &m)) in g.iter().zip(&w).zip(&m).enumerate() {
        let tol = 2.0 * u * w.abs() as f64 + m as f64 / 65536.0;
        if (g as f64 - w as f64).abs() > tol || g.is_nan() {
            return Err(format!(
                "{label}[{i}] is {g}, the CPU's {w} (tolerance {tol:e})"
            ));
        }
    }
    Ok(())
}

/// The forward as the runtime composed it before the fused kernel: h cast to f's dtype, then
/// the GEMM of [N, K] and f seen as [K, P].
fn composed_fwd(h: &Tensor, f: &Tensor) -> odeflow_runtime::Result<Tensor> {
    let k = f.shape()[0];
    h.to_dtype(f.dtype())?
        .matmul(&f.reshape(&[k, f.numel() / k])?)
}

/// The backward as the runtime composed it: the gradients joined into one [N, P] copy, then
/// dh = dw f^T and df = h^T dw.
fn composed_bwd(
    dws: &[Tensor],
    h: &Tensor,
    f: &Tensor,
) -> odeflow_runtime::Result<(Tensor, Tensor)> {
    let (k, p) = (f.shape()[0], f.numel() / f.shape()[0]);
    let rows: Vec<Tensor> = dws
        .iter()
        .map(|d| d.reshape(&[1, p]))
        .collect::<odeflow_runtime::Result<_>>()?;
    let dw = Tensor::cat(&rows, 0)?;
    let f2 = f.reshape(&[k, p])?;
    let dh = dw.matmul(&f2.t()?)?.to_dtype(h.dtype())?;
    let df = h.to_dtype(f.dtype())?.t()?.matmul(&dw)?;
    Ok((dh, df))
}

/// The backward into acc as the runtime composed it before the fused store: the plain
/// backward, then df cast to acc's dtype and added (the cast a pass of its own for a bf16 f).
fn bwd_then_add(
    dws: &[Tensor],
    h: &Tensor,
    f: &Tensor,
    acc: &Tensor,
) -> odeflow_runtime::Result<(Tensor, Tensor)> {
    let (dh, df) = generate_bwd(dws, h, f)?;
    Ok((dh, acc.add(&df.to_dtype(acc.dtype())?)?))
}

/// Mean device microseconds of `f` over `reps` back-to-back calls between two CUDA events,
/// after two warm-ups, and the host's microseconds per call to enqueue them. Each call's
/// outputs are dropped at once, so their buffers go back to the device's cache for the next.
fn time_us<T, E>(
    gpu: &Gpu,
    reps: usize,
    mut f: impl FnMut() -> std::result::Result<T, E>,
) -> Result<(f64, f64)>
where
    E: std::error::Error + 'static,
{
    for _ in 0..2 {
        f()?;
    }
    gpu.synchronize()?;
    let start = gpu.mark()?;
    let host = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    let host_us = host.elapsed().as_secs_f64() * 1e6 / reps as f64;
    let end = gpu.mark()?;
    let device_us = end.ms_since(&start)? as f64 * 1e3 / reps as f64;
    Ok((device_us, host_us))
}

/// Mean microseconds of a device-to-device copy that moves `bytes` (reads half, writes half).
fn copy_us(gpu: &Arc<Gpu>, reps: usize, bytes: usize) -> Result<f64> {
    let src = gpu.upload(&vec![0u8; bytes / 2])?;
    Ok(time_us(gpu, reps, || gpu.copy(&src))?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_counts_are_the_least_each_pass_moves() {
        // forward: F read (21 rows) and W written (12); backward: 12 gradients and F read,
        // dF written (21); into acc: acc read too (21 more), in f32 over a bf16 f
        let shape = (12, 21, 768 * 768);
        assert_eq!(bytes_moved(Pass::Fwd, shape, 2, 4), 33 * 589_824 * 2);
        assert_eq!(bytes_moved(Pass::Bwd, shape, 4, 4), 54 * 589_824 * 4);
        assert_eq!(bytes_moved(Pass::BwdAcc, shape, 4, 4), 75 * 589_824 * 4);
        assert_eq!(
            bytes_moved(Pass::BwdAcc, shape, 2, 4),
            (33 * 2 + 42 * 4) * 589_824
        );
    }

    #[test]
    fn the_check_passes_the_cpus_own_result_and_fails_a_slip() {
        let mut rng = Rng::new(3);
        let h = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F32, &mut rng);
        let f = Tensor::randn(&[4, 50], 0.0, 1.0, DType::BF16, &mut rng);
        let want = generate(&h, &f).unwrap();
        let mag = generate(&abs(&h), &abs(&f)).unwrap();
        // `within` asks nothing of the device: the CPU's result passes against itself
        assert!(within("w", &want, &want, &mag).is_ok());
        let mut v = want.to_f32_vec().unwrap();
        v[17] += 0.5;
        let slipped = Tensor::from_vec(v, want.shape()).unwrap();
        let msg = within("w", &slipped, &want.to_dtype(DType::F32).unwrap(), &mag).unwrap_err();
        assert!(msg.starts_with("w[17] is"), "{msg}");
    }

    #[test]
    fn the_composed_path_is_the_same_math() {
        let mut rng = Rng::new(4);
        let h = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F32, &mut rng);
        let f = Tensor::randn(&[4, 5, 6], 0.0, 1.0, DType::F32, &mut rng);
        let dws: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(&[5, 6], 0.0, 1.0, DType::F32, &mut rng))
            .collect();
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
            assert_eq!(a.len(), b.len());
            a.iter()
                .zip(&b)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
        };
        let w = composed_fwd(&h, &f).unwrap().reshape(&[3, 5, 6]).unwrap();
        assert!(close(&w, &generate(&h, &f).unwrap()));
        let (dh, df) = composed_bwd(&dws, &h, &f).unwrap();
        let (want_dh, want_df) = generate_bwd(&dws, &h, &f).unwrap();
        assert!(close(&dh, &want_dh) && close(&df.reshape(&[4, 5, 6]).unwrap(), &want_df));
        let acc = Tensor::randn(&[4, 5, 6], 0.0, 1.0, DType::F32, &mut rng);
        let (_, sum) = bwd_then_add(&dws, &h, &f, &acc).unwrap();
        let (_, want_sum) = generate_bwd_acc(&dws, &h, &f, Some(&acc)).unwrap();
        assert!(close(&sum, &want_sum));
    }
}
