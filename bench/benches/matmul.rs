//! Criterion benchmarks of the CPU gemm: 1024^3 and the model's big products (B*T = 4096
//! tokens, D = 768), on one thread and on every core, plus one small attention-sized product.
//!
//! Each benchmark declares `Throughput::Elements(2 m n k)`, the number of floating-point
//! operations of one product, so criterion's "elem/s" is FLOP/s and "Gelem/s" is GFLOP/s.
//! Run with `cargo bench -p odeflow-bench --bench matmul`; for the comparison with OpenBLAS, see
//! the `matmul_vs_openblas` binary.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use odeflow_runtime::cpu::gemm::{gemm, MatRef, Parallelism};

/// (label, m, k, n, A stored transposed).
const SHAPES: [(&str, usize, usize, usize, bool); 6] = [
    ("square_1024", 1024, 1024, 1024, false),
    ("qkv_4096x768x2304", 4096, 768, 2304, false),
    ("mlp_up_4096x768x3072", 4096, 768, 3072, false),
    ("mlp_down_4096x3072x768", 4096, 3072, 768, false),
    ("weight_grad_AtB_768x4096x2304", 768, 4096, 2304, true),
    ("attention_scores_256x64x256", 256, 64, 256, false),
];

/// Criterion's smallest sample count: the big products take 0.1 to 0.2 s each on one core, so
/// this keeps the whole run to about a minute.
const SAMPLE_SIZE: usize = 10;
const MEASUREMENT_TIME: Duration = Duration::from_secs(2);
const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// `len` deterministic values in [-0.5, 0.5).
fn fill(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn bench_gemm(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1, cores];
    thread_counts.dedup();
    for threads in thread_counts {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        let pool = pool.expect("building the benchmark thread pool");
        let mut group = c.benchmark_group(format!("gemm_f32_{threads}_threads"));
        group.sample_size(SAMPLE_SIZE);
        group.measurement_time(MEASUREMENT_TIME);
        group.warm_up_time(WARM_UP_TIME);
        for (label, m, k, n, transpose_a) in SHAPES {
            let (a_data, b_data) = (fill(m * k, 1), fill(k * n, 2));
            let a = if transpose_a {
                MatRef::row_major(&a_data, k, m).t()
            } else {
                MatRef::row_major(&a_data, m, k)
            };
            let b = MatRef::row_major(&b_data, k, n);
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_function(BenchmarkId::from_parameter(label), |bencher| {
                let product = || gemm(a, b, &mut out, n, false, Parallelism::Rayon);
                pool.install(|| bencher.iter(product));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
