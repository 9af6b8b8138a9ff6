//! Every path through the gemm, checked against `gemm_reference`.
//!
//! Pass bar: entry-wise |C - C_ref| <= (k + 2) * eps * (|C0| + sum_p |a_ip| |b_pj|), with eps =
//! f32::EPSILON. A k-term dot product in f32 is off by at most k * u * sum |a||b| (u = eps / 2,
//! the unit roundoff); adding it to C0 and rounding the f64 reference cost one u each. So the bar
//! is twice the worst case, and it still catches any wrong element (a wrong element is off by
//! about its own size, not by k * 1e-7 of it).

use std::sync::OnceLock;

use proptest::prelude::*;

use super::driver::{gemm_packed, split_tasks, Blocking};
use super::*;

/// Threads in the pool the parallel tests run in (the dev machine has 2 cores).
const TEST_THREADS: usize = 2;

/// A rayon pool of TEST_THREADS threads, shared by the tests.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let builder = rayon::ThreadPoolBuilder::new().num_threads(TEST_THREADS);
        builder.build().expect("building the test thread pool")
    })
}

/// How a test operand is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum Storage {
    RowMajor,
    /// Column-major: the operand is the transpose of a row-major matrix.
    ColMajor,
    /// Row stride 2 * cols + 3 and column stride 2, with garbage in the gaps.
    Padded,
    /// Row stride 0: every row is the same (a broadcast view).
    Broadcast,
}

/// One product to check: C[m, n] (+)= A[m, k] B[k, n], C with leading dimension n + ldc_pad.
#[derive(Clone, Debug)]
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a_storage: Storage,
    b_storage: Storage,
    ldc_pad: usize,
    accumulate: bool,
    seed: u64,
}

/// A small xorshift generator: the tests need reproducible values, not statistical quality.
struct Rng(u64);

impl Rng {
    /// A value in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn fill(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

/// An operand's storage: its data and strides.
struct Operand {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Operand {
    /// A random [rows, cols] operand stored as `storage`; unused gaps hold random garbage.
    fn random(rows: usize, cols: usize, storage: Storage, rng: &mut Rng) -> Operand {
        let (row_stride, col_stride) = match storage {
            Storage::RowMajor => (cols, 1),
            Storage::ColMajor => (1, rows),
            Storage::Padded => (2 * cols + 3, 2),
            Storage::Broadcast => (0, 1),
        };
        let len = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + (cols - 1) * col_stride + 1
        };
        Operand {
            data: rng.fill(len),
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    fn view(&self) -> MatRef<'_> {
        let (rows, cols) = (self.rows, self.cols);
        let (row_stride, col_stride) = (self.row_stride, self.col_stride);
        MatRef {
            data: &self.data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The same operand with every element replaced by its absolute value.
    fn abs(&self) -> Operand {
        let data = self.data.iter().map(|x| x.abs()).collect();
        Operand { data, ..*self }
    }
}

/// Runs `gemm_under_test` on `case` and checks it against `gemm_reference` (see the module doc
/// for the bound); also checks that C's padding columns n..ldc are left untouched.
fn check(case: &Case, gemm_under_test: impl Fn(MatRef<'_>, MatRef<'_>, &mut [f32], usize, bool)) {
    let mut rng = Rng(case.seed | 1);
    let a = Operand::random(case.m, case.k, case.a_storage, &mut rng);
    let b = Operand::random(case.k, case.n, case.b_storage, &mut rng);
    let ldc = case.n + case.ldc_pad;
    let c0 = rng.fill(case.m * ldc);

    let mut c = c0.clone();
    gemm_under_test(a.view(), b.view(), &mut c, ldc, case.accumulate);
    let mut c_ref = c0.clone();
    gemm_reference(a.view(), b.view(), &mut c_ref, ldc, case.accumulate);
    let mut bound = c0.iter().map(|x| x.abs()).collect::<Vec<_>>();
    gemm_reference(
        a.abs().view(),
        b.abs().view(),
        &mut bound,
        ldc,
        case.accumulate,
    );

    let tolerance = (case.k + 2) as f32 * f32::EPSILON;
    for (index, ((&got, &want), &scale)) in c.iter().zip(&c_ref).zip(&bound).enumerate() {
        let (i, j) = (index / ldc.max(1), index % ldc.max(1));
        if j >= case.n {
            assert_eq!(
                got.to_bits(),
                c0[index].to_bits(),
                "padding C[{i}, {j}] changed, {case:?}"
            );
            continue;
        }
        let err = (got - want).abs();
        assert!(
            err <= tolerance * scale,
            "C[{i}, {j}] = {got}, reference {want}, error {err} > {} ({case:?})",
            tolerance * scale
        );
    }
}

/// A strategy for one size: edge values (0, 1) often, otherwise anything up to `max`.
fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1usize), 0..=max]
}

fn storage() -> impl Strategy<Value = Storage> {
    let all = [
        Storage::RowMajor,
        Storage::ColMajor,
        Storage::Padded,
        Storage::Broadcast,
    ];
    prop::sample::select(all.to_vec())
}

/// Random cases with sizes up to `max`.
fn cases(max: usize) -> impl Strategy<Value = Case> {
    let sizes = (size(max), size(max), size(max));
    let layout = (storage(), storage(), 0..3usize, any::<bool>(), any::<u64>());
    (sizes, layout).prop_map(
        |((m, k, n), (a_storage, b_storage, ldc_pad, accumulate, seed))| Case {
            m,
            k,
            n,
            a_storage,
            b_storage,
            ldc_pad,
            accumulate,
            seed,
        },
    )
}

/// Hand-picked cases: primes, sizes that are not multiples of any MR, NR, KC, MC or NC, an n
/// past NC = 4096, transposed and strided operands.
fn big_cases() -> Vec<Case> {
    let shapes = [
        (257, 129, 513, Storage::RowMajor, Storage::RowMajor),
        (150, 600, 40, Storage::ColMajor, Storage::RowMajor),
        (97, 263, 131, Storage::RowMajor, Storage::ColMajor),
        (61, 300, 67, Storage::Padded, Storage::Padded),
        (7, 5, 4100, Storage::RowMajor, Storage::ColMajor),
        (300, 1, 300, Storage::ColMajor, Storage::ColMajor),
        (200, 70, 90, Storage::Broadcast, Storage::Padded),
        // the dot-product path: a small C over a long k (the hypernetwork's backward)
        (4, 9001, 9, Storage::RowMajor, Storage::ColMajor),
    ];
    let mut cases = Vec::new();
    for (seed, &(m, k, n, a_storage, b_storage)) in shapes.iter().enumerate() {
        for accumulate in [false, true] {
            let seed = seed as u64 + 1;
            cases.push(Case {
                m,
                k,
                n,
                a_storage,
                b_storage,
                ldc_pad: 5,
                accumulate,
                seed,
            });
        }
    }
    cases
}

/// Checks `kernel` through the packed path on the hand-picked cases, on 1 and TEST_THREADS
/// threads. Returns early (passing) when this CPU cannot run the kernel.
fn check_kernel_on_big_cases(kernel: Kernel) {
    if !kernel.is_available() {
        return;
    }
    for case in big_cases() {
        for threads in [1, TEST_THREADS] {
            check(&case, |a, b, c, ldc, acc| {
                let run = || {
                    gemm_packed(
                        kernel,
                        Blocking::for_kernel(kernel),
                        a,
                        b,
                        c,
                        ldc,
                        acc,
                        threads,
                    )
                };
                pool().install(run);
            });
        }
    }
}

#[test]
fn scalar_kernel_matches_reference() {
    check_kernel_on_big_cases(Kernel::Scalar);
}

#[test]
fn avx2_kernel_matches_reference() {
    check_kernel_on_big_cases(Kernel::Avx2Fma);
}

/// Untested on the dev machine (AMD EPYC Zen 2 has no AVX-512): passes without checking
/// anything there. On a CPU with AVX-512F it checks the kernel like the others.
#[test]
fn avx512_kernel_matches_reference() {
    if !Kernel::Avx512.is_available() {
        return;
    }
    check_kernel_on_big_cases(Kernel::Avx512);
}

#[test]
fn public_gemm_matches_reference_on_big_cases() {
    for case in big_cases() {
        for par in [Parallelism::Sequential, Parallelism::Rayon] {
            check(&case, |a, b, c, ldc, acc| {
                pool().install(|| gemm(a, b, c, ldc, acc, par))
            });
        }
    }
}

#[test]
fn threads_do_not_change_the_result() {
    // Each element is summed by one thread in the same order whatever the split, so the
    // results must agree to the bit.
    let mut rng = Rng(7);
    let (m, k, n) = (203, 301, 171);
    let a = rng.fill(m * k);
    let b = rng.fill(k * n);
    let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    assert_threads_agree(a, b);
}

/// C = A B on one thread and on TEST_THREADS threads, equal to the bit.
fn assert_threads_agree(a: MatRef<'_>, b: MatRef<'_>) {
    let (m, n) = (a.rows, b.cols);
    let mut sequential = vec![0.0; m * n];
    gemm(a, b, &mut sequential, n, false, Parallelism::Sequential);
    let mut parallel = vec![0.0; m * n];
    pool().install(|| gemm(a, b, &mut parallel, n, false, Parallelism::Rayon));
    assert!(sequential
        .iter()
        .zip(&parallel)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn threads_do_not_change_the_dot_product_path() {
    // k is cut into fixed chunks whose partial sums are added in order, whatever ran them
    let mut rng = Rng(11);
    let (m, k, n) = (4, 20_000, 9);
    let a = rng.fill(m * k);
    let b_t = rng.fill(n * k); // B^T row-major: the columns of B are contiguous
    let a = MatRef::row_major(&a, m, k);
    let b = MatRef::row_major(&b_t, n, k).t();
    assert!(small::suits_dots(a, b));
    assert_threads_agree(a, b);
}

#[test]
fn nested_parallel_gemms_match_reference() {
    // Gemms inside rayon tasks, each parallel itself: a worker waiting on its own gemm may run
    // another one, which must not share its packing buffers.
    use rayon::prelude::*;
    let case = Case {
        m: 130,
        k: 140,
        n: 150,
        ..big_cases()[0].clone()
    };
    pool().install(|| {
        (0..8u64).into_par_iter().for_each(|seed| {
            let case = Case {
                seed: seed + 1,
                ..case.clone()
            };
            check(&case, |a, b, c, ldc, acc| {
                gemm(a, b, c, ldc, acc, Parallelism::Rayon)
            });
        });
    });
}

#[test]
fn k_zero_zeroes_or_keeps_c() {
    for accumulate in [false, true] {
        let case = Case {
            m: 70,
            k: 0,
            n: 90,
            accumulate,
            ..big_cases()[0].clone()
        };
        check(&case, |a, b, c, ldc, acc| {
            gemm(a, b, c, ldc, acc, Parallelism::Sequential)
        });
        check(&case, |a, b, c, ldc, acc| {
            gemm_packed(
                Kernel::Scalar,
                Blocking::for_kernel(Kernel::Scalar),
                a,
                b,
                c,
                ldc,
                acc,
                1,
            );
        });
    }
}

#[test]
fn transpose_swaps_sizes_and_strides() {
    let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let a = MatRef::row_major(&data, 2, 3);
    let at = a.t();
    assert_eq!(
        (at.rows, at.cols, at.row_stride, at.col_stride),
        (3, 2, 1, 3)
    );
    assert_eq!(at.at(2, 1), a.at(1, 2));
}

#[test]
fn tiny_product_by_hand() {
    // [1 2; 3 4] [5 6; 7 8] = [1*5 + 2*7, 1*6 + 2*8; 3*5 + 4*7, 3*6 + 4*8] = [19 22; 43 50]
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [5.0, 6.0, 7.0, 8.0];
    let mut c = [0.0; 4];
    let (a, b) = (MatRef::row_major(&a, 2, 2), MatRef::row_major(&b, 2, 2));
    gemm(a, b, &mut c, 2, false, Parallelism::Sequential);
    assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
    gemm(a, b, &mut c, 2, true, Parallelism::Sequential);
    assert_eq!(c, [38.0, 44.0, 86.0, 100.0]);
}

#[test]
#[should_panic(expected = "inner sizes differ")]
fn mismatched_inner_sizes_panic() {
    let data = [0.0; 6];
    let mut c = [0.0; 4];
    let (a, b) = (
        MatRef::row_major(&data, 2, 3),
        MatRef::row_major(&data, 2, 3),
    );
    gemm(a, b, &mut c, 3, false, Parallelism::Sequential);
}

#[test]
#[should_panic(expected = "reaches past")]
fn operand_out_of_bounds_panics() {
    let data = [0.0; 5];
    let mut c = [0.0; 4];
    let a = MatRef {
        data: &data,
        rows: 2,
        cols: 3,
        row_stride: 3,
        col_stride: 1,
    };
    gemm(a, a.t(), &mut c, 2, false, Parallelism::Sequential);
}

#[test]
#[should_panic(expected = "ldc 1 is smaller than n 2")]
fn small_ldc_panics() {
    let data = [0.0; 4];
    let mut c = [0.0; 4];
    let a = MatRef::row_major(&data, 2, 2);
    gemm(a, a, &mut c, 1, false, Parallelism::Sequential);
}

#[test]
#[should_panic(expected = "needs more than its 3 elements")]
fn short_c_panics() {
    let data = [0.0; 4];
    let mut c = [0.0; 3];
    let a = MatRef::row_major(&data, 2, 2);
    gemm(a, a, &mut c, 2, false, Parallelism::Sequential);
}

#[test]
fn tasks_tile_the_grid_exactly() {
    for (m_panels, n_panels, threads) in [(171, 64, 2), (5, 200, 2), (1, 1, 4), (9, 3, 3)] {
        let tasks = split_tasks(m_panels, n_panels, threads);
        assert!(tasks.len() <= threads);
        let covered: usize = tasks
            .iter()
            .map(|t| t.row_panels.len() * t.col_panels.len())
            .sum();
        assert_eq!(covered, m_panels * n_panels, "tasks overlap or leave gaps");
    }
    // A tall C splits by rows; a short, wide one by columns.
    assert_eq!(split_tasks(171, 64, 2)[1].col_panels, 0..64);
    assert_eq!(split_tasks(5, 200, 2)[1].row_panels, 0..5);
}

/// Checks one packed block against its documented layout: panel q, step p, lane l holds
/// element (lane0 + q * LANES + l, step p) of `src` (read through `at`), and 0 past `width`.
fn check_packed<const LANES: usize>(
    dst: &[f32],
    width: usize,
    kc: usize,
    at: impl Fn(usize, usize) -> f32,
) {
    for (q, panel) in dst.chunks_exact(kc * LANES).enumerate() {
        for (p, step) in panel.chunks_exact(LANES).enumerate() {
            for (l, &got) in step.iter().enumerate() {
                let lane = q * LANES + l;
                let want = if lane < width { at(lane, p) } else { 0.0 };
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "panel {q}, step {p}, lane {l}"
                );
            }
        }
    }
}

#[test]
fn packing_matches_documented_layout() {
    use super::pack::{pack_a_block, pack_b_block};
    let mut rng = Rng(11);
    let all = [
        Storage::RowMajor,
        Storage::ColMajor,
        Storage::Padded,
        Storage::Broadcast,
    ];
    for storage in all {
        let m = Operand::random(29, 37, storage, &mut rng);
        let m = m.view();
        let (rows, ks, cols) = (3..16, 4..25, 5..36);
        // Stale NaNs, so that a float packing forgot to write shows up.
        let mut dst = vec![f32::NAN; rows.len().div_ceil(6) * ks.len() * 6];
        pack_a_block::<6>(m, rows.clone(), ks.clone(), &mut dst);
        check_packed::<6>(&dst, rows.len(), ks.len(), |i, p| {
            m.at(rows.start + i, ks.start + p)
        });
        let mut dst = vec![f32::NAN; cols.len().div_ceil(16) * ks.len() * 16];
        pack_b_block::<16>(m, ks.clone(), cols.clone(), &mut dst);
        check_packed::<16>(&dst, cols.len(), ks.len(), |j, p| {
            m.at(ks.start + p, cols.start + j)
        });
    }
}

proptest! {
    /// The packed path with tiny random block sizes, so that small matrices cross every block
    /// edge (KC, MC, NC) and every tile edge, with every available kernel, on 1 to 3 threads.
    #[test]
    fn packed_path_matches_reference(
        case in cases(40),
        kernel in prop::sample::select(Kernel::ALL.to_vec()),
        (kc, mc, nc) in (1..20usize, 1..30usize, 1..40usize),
        threads in 1..=3usize,
    ) {
        let kernel = if kernel.is_available() { kernel } else { Kernel::Scalar };
        let blocking = Blocking { kc, mc, nc };
        check(&case, |a, b, c, ldc, acc| {
            pool().install(|| gemm_packed(kernel, blocking, a, b, c, ldc, acc, threads));
        });
    }

    /// The public entry point (small path or packed path) on random shapes.
    #[test]
    fn gemm_matches_reference(
        case in cases(80),
        rayon in any::<bool>(),
    ) {
        let par = if rayon { Parallelism::Rayon } else { Parallelism::Sequential };
        check(&case, |a, b, c, ldc, acc| pool().install(|| gemm(a, b, c, ldc, acc, par)));
    }
}
