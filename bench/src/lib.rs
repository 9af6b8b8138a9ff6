//! # odeflow-bench: benchmarks and experiments
//!
//! `cargo bench` runs the criterion benchmarks in `benches/` (kernel throughput: GFLOP/s for the
//! matmul, tokens/s for the loader). The binaries in `src/bin/` are the experiments that print a
//! table comparing odeflow with a reference measured in the same run (for example the matmul
//! against OpenBLAS through numpy, or `adjoint_memory`: the memory, time and gradient error of
//! each way of differentiating the ODE solve as L grows); their results are recorded in
//! `bench/RESULTS.md`.

/// The value of `--reps N` on the command line, or `default` when absent. A value that is not a
/// positive integer ends the program with a usage line (exit code 2) rather than a panic.
pub fn reps_arg(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--reps") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(reps) if reps > 0 => reps,
            _ => {
                eprintln!("--reps needs a positive integer, e.g. --reps 10");
                std::process::exit(2);
            }
        },
        None => default,
    }
}

/// The value after `flag` on the command line (`--json out.json`), if the flag is there.
pub fn arg_value(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}
