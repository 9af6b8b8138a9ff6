//! odeflow's CPU gemm against OpenBLAS (through numpy), measured the same way in one run.
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo run --release -p odeflow-bench --bin matmul_vs_openblas [-- --rounds 3 --reps 10]
//! ```
//!
//! For each shape and thread count, each side's number is the best of `--reps` timed calls
//! (after a warm-up call), and the best again over `--rounds` alternating rounds (odeflow, then
//! numpy, then odeflow...), so that a burst of background load on a shared machine hurts both
//! sides alike and is then discarded. numpy runs as a subprocess (`bench/peers/numpy_matmul.py`)
//! pinned to the same thread counts with threadpoolctl. The output is a markdown table for
//! `bench/RESULTS.md`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use odeflow_runtime::cpu::gemm::{gemm, gemm_reference, MatRef, Parallelism};

/// One benchmarked product: C[m, n] = A[m, k] B[k, n]; with `transpose_a`, A is stored as the
/// transpose of a row-major [k, m] array (a strided view, not a copy).
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    transpose_a: bool,
}

impl Shape {
    const fn new(name: &'static str, m: usize, k: usize, n: usize, transpose_a: bool) -> Shape {
        Shape {
            name,
            m,
            k,
            n,
            transpose_a,
        }
    }
}

/// 1024^3, and the model's big products with B*T = 4096 tokens and D = 768.
const SHAPES: [Shape; 5] = [
    Shape::new("square", 1024, 1024, 1024, false),
    Shape::new("QKV projection", 4096, 768, 2304, false),
    Shape::new("MLP up", 4096, 768, 3072, false),
    Shape::new("MLP down", 4096, 3072, 768, false),
    Shape::new("QKV weight grad (A^T B)", 768, 4096, 2304, true),
];

/// A measurement's key: (index into SHAPES, thread count).
type Key = (usize, usize);

/// numpy_matmul.py's exit status when numpy or threadpoolctl cannot be imported.
const PEER_MISSING_MODULE: i32 = 3;

/// Elements of each product compared with `gemm_reference` before it is timed.
const CHECKED_ELEMENTS: usize = 64;

/// Environment variables that change which kernel or how many threads OpenBLAS uses; removed
/// for the numpy subprocess so that it runs its default (auto-detected) setup.
const OPENBLAS_OVERRIDES: [&str; 4] = [
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
];

/// What one run of the numpy peer reported.
struct PeerRun {
    /// Which BLAS numpy used, and which of its kernels (threadpoolctl's `architecture`).
    blas: String,
    gflops: Vec<(Key, f64)>,
}

/// Command-line options.
struct Options {
    rounds: usize,
    reps: usize,
}

fn main() {
    let options = parse_options();
    let threads = thread_counts();
    let mut ours = HashMap::new();
    let mut theirs = HashMap::new();
    let mut peer_note = String::new();
    for round in 1..=options.rounds {
        eprintln!("round {round}/{}: odeflow", options.rounds);
        keep_best(&mut ours, time_odeflow(&threads, options.reps));
        eprintln!("round {round}/{}: numpy", options.rounds);
        match time_numpy(&threads, options.reps) {
            Ok(run) => {
                peer_note = run.blas;
                keep_best(&mut theirs, run.gflops);
            }
            Err(why) => {
                peer_note = why;
                break;
            }
        }
    }
    print_table(&threads, &ours, &theirs);
    println!();
    println!("{peer_note}");
    print_overrides();
}

/// Reads `--rounds N` and `--reps N`; anything else is an error with a usage line.
fn parse_options() -> Options {
    let mut options = Options {
        rounds: 3,
        reps: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair
            .get(1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0);
        match (pair[0].as_str(), value) {
            ("--rounds", Some(v)) => options.rounds = v,
            ("--reps", Some(v)) => options.reps = v,
            _ => {
                eprintln!("usage: matmul_vs_openblas [--rounds N] [--reps N] (N >= 1)");
                std::process::exit(2);
            }
        }
    }
    options
}

/// One thread, and every core of the machine (when it has more than one).
fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, cores];
    counts.dedup();
    counts
}

/// Folds new measurements into the best seen so far.
fn keep_best(best: &mut HashMap<Key, f64>, measured: Vec<(Key, f64)>) {
    for (key, gflops) in measured {
        let entry = best.entry(key).or_insert(0.0);
        *entry = entry.max(gflops);
    }
}

/// GFLOP/s of odeflow's gemm for every shape and thread count.
fn time_odeflow(threads: &[usize], reps: usize) -> Vec<(Key, f64)> {
    let mut results = Vec::new();
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build();
        let pool = pool.expect("building the benchmark thread pool");
        for (index, shape) in SHAPES.iter().enumerate() {
            let gflops = pool.install(|| time_one(shape, reps));
            results.push(((index, t), gflops));
        }
    }
    results
}

/// Best-of-`reps` GFLOP/s of one product on the current rayon pool, after checking a sample of
/// its elements against the reference.
fn time_one(shape: &Shape, reps: usize) -> f64 {
    let Shape {
        m,
        k,
        n,
        transpose_a,
        ..
    } = *shape;
    let a_data = pseudo_random(m * k, 1);
    let b_data = pseudo_random(k * n, 2);
    let a = if transpose_a {
        MatRef::row_major(&a_data, k, m).t()
    } else {
        MatRef::row_major(&a_data, m, k)
    };
    let b = MatRef::row_major(&b_data, k, n);
    let mut c = vec![0.0f32; m * n];
    gemm(a, b, &mut c, n, false, Parallelism::Rayon);
    check_sample(a, b, &c);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        gemm(a, b, &mut c, n, false, Parallelism::Rayon);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// Compares CHECKED_ELEMENTS entries of C = A B, spread over the matrix, with the reference
/// (each entry as a [1, k] x [k, 1] product); panics on a mismatch, which would void the timing.
fn check_sample(a: MatRef<'_>, b: MatRef<'_>, c: &[f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // |a|, |b| < 1, so sum_p |a_ip| |b_pj| < k: the gemm tests' error bound, loosened.
    let tolerance = (k + 2) as f32 * f32::EPSILON * k as f32;
    for s in 0..CHECKED_ELEMENTS {
        let (i, j) = (s * 7919 % m, s * 104_729 % n);
        let a_row = MatRef {
            data: &a.data[i * a.row_stride..],
            rows: 1,
            ..a
        };
        let b_col = MatRef {
            data: &b.data[j * b.col_stride..],
            cols: 1,
            ..b
        };
        let mut want = [0.0f32];
        gemm_reference(a_row, b_col, &mut want, 1, false);
        let got = c[i * n + j];
        assert!(
            (got - want[0]).abs() <= tolerance,
            "odeflow gemm is wrong: C[{i}, {j}] = {got}, reference {}",
            want[0]
        );
    }
}

/// `len` values in [-1, 1) from a fixed-seed xorshift generator.
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    (0..len).map(|_| next()).collect()
}

/// Runs the numpy peer on every shape and thread count; on failure, says why and how to fix it.
fn time_numpy(threads: &[usize], reps: usize) -> Result<PeerRun, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/numpy_matmul.py");
    let shapes: Vec<String> = SHAPES.iter().map(shape_arg).collect();
    let thread_list: Vec<String> = threads.iter().map(|t| t.to_string()).collect();
    let mut command = Command::new("python3");
    command.arg(script).arg("--shapes").arg(shapes.join(","));
    command.arg("--threads").arg(thread_list.join(","));
    command.arg("--reps").arg(reps.to_string());
    for var in OPENBLAS_OVERRIDES {
        command.env_remove(var);
    }
    let skipped = "OpenBLAS column skipped";
    let hint = "run `pip install numpy threadpoolctl`";
    let output = command.output().map_err(|e| {
        format!("{skipped}: cannot run python3 ({e}); install Python 3, then {hint}")
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(PEER_MISSING_MODULE) {
        return Err(format!("{skipped}: {}; {hint}", stderr.trim()));
    }
    if !output.status.success() {
        return Err(format!(
            "{skipped}: numpy_matmul.py failed: {}",
            stderr.trim()
        ));
    }
    let run = parse_peer_output(&String::from_utf8_lossy(&output.stdout), threads);
    if run.gflops.is_empty() {
        return Err(format!("{skipped}: numpy_matmul.py printed no results"));
    }
    Ok(run)
}

/// The peer's spelling of a shape: MxKxN, with a trailing "t" for a transposed A.
fn shape_arg(shape: &Shape) -> String {
    let t = if shape.transpose_a { "t" } else { "" };
    format!("{}x{}x{}{t}", shape.m, shape.k, shape.n)
}

/// Reads the `blas API VERSION ARCH` and `gflops M K N t|n THREADS GFLOPS` lines of
/// numpy_matmul.py; other lines are ignored.
fn parse_peer_output(stdout: &str, threads: &[usize]) -> PeerRun {
    let mut run = PeerRun {
        blas: "BLAS: unknown".to_string(),
        gflops: Vec::new(),
    };
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["blas", api, version, arch] => {
                run.blas = format!("BLAS: {api} {version}, kernel architecture {arch}");
            }
            ["gflops", m, k, n, t, th, g] => {
                let shape = (m.parse(), k.parse(), n.parse(), *t == "t");
                let index = SHAPES
                    .iter()
                    .position(|s| (Ok(s.m), Ok(s.k), Ok(s.n), s.transpose_a) == shape);
                if let (Some(index), Ok(th), Ok(g)) = (index, th.parse(), g.parse()) {
                    if threads.contains(&th) {
                        run.gflops.push(((index, th), g));
                    }
                }
            }
            _ => {}
        }
    }
    run
}

/// Prints the markdown table: one row per (threads, shape).
fn print_table(threads: &[usize], ours: &HashMap<Key, f64>, theirs: &HashMap<Key, f64>) {
    println!("| shape: M x K x N | threads | odeflow GFLOP/s | OpenBLAS GFLOP/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for &t in threads {
        for (index, shape) in SHAPES.iter().enumerate() {
            let mine = ours[&(index, t)];
            let (peer, ratio) = match theirs.get(&(index, t)) {
                Some(g) => (format!("{g:.1}"), format!("{:.2}", mine / g)),
                None => ("n/a".to_string(), "n/a".to_string()),
            };
            let dims = format!("{} x {} x {}", shape.m, shape.k, shape.n);
            println!(
                "| {}: {dims} | {t} | {mine:.1} | {peer} | {ratio} |",
                shape.name
            );
        }
    }
}

/// Says which OpenBLAS overrides were set here (and removed for the numpy run).
fn print_overrides() {
    let set: Vec<String> = OPENBLAS_OVERRIDES
        .iter()
        .filter_map(|var| {
            std::env::var(var)
                .ok()
                .map(|value| format!("{var}={value}"))
        })
        .collect();
    if !set.is_empty() {
        println!("Removed for the numpy run: {}", set.join(", "));
    }
}
