//! # odeflow-bench: benchmarks and experiments
//!
//! `cargo bench` runs the criterion benchmarks in `benches/` (kernel throughput: GFLOP/s for the
//! matmul, tokens/s for the loader). The binaries in `src/bin/` are the experiments that print a
//! table comparing odeflow with a reference measured in the same run (for example the matmul
//! against OpenBLAS through numpy); their results are recorded in `bench/RESULTS.md`.
