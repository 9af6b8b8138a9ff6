//! The embedding kernels against the runtime's CPU ops (`ops::embedding::embedding_fwd` and
//! `embedding_bwd`), at every launch configuration their launcher picks: one warp for a row of
//! 1, a partial warp, several warps, the 256-thread cap with rows that loop, and more positions
//! than the 4224-block grid (blocks that loop over positions). Small vocabularies make ids
//! repeat, so many positions add into the same row of dweight at once. Outputs of the forward
//! are poisoned with NaN before each launch.
//!
//! Tolerances: the forward copies bits, so it must be exact for f32 and bf16. The backward adds
//! in f32 in an order the atomics choose, where the CPU adds in position order: an element that
//! k positions add into may differ by k f32 epsilons times the sum of the magnitudes of its
//! terms (the bound on reordering a sum of k terms, for each side), for f32 and bf16 gradients
//! alike (a bf16 gradient widens to f32 exactly).

use half::bf16;
use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::embedding::{self, EMBEDDING_MAX_BLOCKS, EMBEDDING_MAX_THREADS};
use odeflow_kernels::{DeviceBuffer, Gpu};
use odeflow_runtime::ops::embedding as cpu;
use odeflow_runtime::{Rng, Tensor};
use odeflow_tests::gpu::{device, normals, poisoned, upload_with_tensor};

/// (positions n, vocab V, width D): every configuration `embedding_config` can pick.
fn launch_shapes() -> Vec<(usize, usize, usize)> {
    let threads = EMBEDDING_MAX_THREADS as usize;
    let blocks = EMBEDDING_MAX_BLOCKS as usize;
    vec![
        (1, 1, 1),
        (3, 5, 33),
        (7, 4, threads),
        (5, 3, threads + 44),
        (blocks + 777, 50, 8),
    ]
}

fn ids(n: usize, vocab: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// A device buffer as the bits of its elements (f32 or bf16), for exact comparisons.
fn download_bits(gpu: &Gpu, buf: &DeviceBuffer, ty: ElemType) -> Vec<u32> {
    match ty {
        ElemType::F32 => gpu.download::<u32>(buf).unwrap(),
        ElemType::Bf16 => gpu
            .download::<u16>(buf)
            .unwrap()
            .into_iter()
            .map(u32::from)
            .collect(),
    }
}

fn tensor_bits(t: &Tensor, ty: ElemType) -> Vec<u32> {
    match ty {
        ElemType::F32 => t
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        ElemType::Bf16 => t
            .to_vec::<bf16>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u32)
            .collect(),
    }
}

/// The reorder bound of the backward for each element of dweight [V, D], started from `base`:
/// (terms added into it, the base and one more rounding counted) x eps x (the sum of the
/// magnitudes of its terms and the base), from the f32 values of dout.
fn bwd_tolerance(dout: &[f32], ids: &[u32], vocab: usize, d: usize, base: f32) -> Vec<f64> {
    let mut count = vec![0usize; vocab];
    let mut magnitude = vec![base.abs() as f64; vocab * d];
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        count[id] += 1;
        for c in 0..d {
            magnitude[id * d + c] += dout[i * d + c].abs() as f64;
        }
    }
    let extra = if base == 0.0 { 0 } else { 2 };
    let eps = f32::EPSILON as f64;
    (0..vocab * d)
        .map(|j| (count[j / d] + extra) as f64 * eps * magnitude[j])
        .collect()
}

fn assert_within(label: &str, got: &[f32], want: &[f32], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (j, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (g as f64 - w as f64).abs();
        assert!(
            err <= t,
            "{label}: element {j}: got {g}, want {w} (tolerance {t:e})"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_gather_matches_the_cpu_exactly() {
    let gpu = device();
    let mut rng = Rng::new(11);
    for (n, vocab, d) in launch_shapes() {
        for ty in ElemType::ALL {
            let (table, table_d) =
                upload_with_tensor(&gpu, &normals(vocab * d, 3.0, &mut rng), &[vocab, d], ty);
            let idx = ids(n, vocab, &mut rng);
            let ids_t = Tensor::from_vec(idx.clone(), &[n]).unwrap();
            let ids_d = gpu.upload(&idx).unwrap();
            let mut out = poisoned(&gpu, n * d, ty);
            embedding::embedding_fwd_into(&mut out, ty, &table_d, &ids_d, n, vocab, d).unwrap();
            let want = cpu::embedding_fwd(&table, &ids_t).unwrap();
            let label = format!("{ty:?} n={n} V={vocab} D={d}");
            assert_eq!(
                download_bits(&gpu, &out, ty),
                tensor_bits(&want, ty),
                "{label}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_scatter_add_matches_the_cpu_and_accumulates() {
    let gpu = device();
    let mut rng = Rng::new(12);
    for (n, vocab, d) in launch_shapes() {
        for ty in ElemType::ALL {
            let (dout, dout_d) =
                upload_with_tensor(&gpu, &normals(n * d, 3.0, &mut rng), &[n, d], ty);
            let idx = ids(n, vocab, &mut rng);
            let ids_t = Tensor::from_vec(idx.clone(), &[n]).unwrap();
            let ids_d = gpu.upload(&idx).unwrap();
            // the CPU reference in f32 (a bf16 dout widens exactly), so it returns f32
            let dout32 = dout.to_dtype(odeflow_runtime::DType::F32).unwrap();
            let held = dout32.to_vec::<f32>().unwrap();
            let want = cpu::embedding_bwd(&dout32, &ids_t, vocab).unwrap();
            let want = want.to_vec::<f32>().unwrap();
            let label = format!("{ty:?} n={n} V={vocab} D={d}");
            // from zeros
            let dw = embedding::embedding_bwd(ty, &dout_d, &ids_d, n, vocab, d).unwrap();
            let tol = bwd_tolerance(&held, &idx, vocab, d, 0.0);
            assert_within(&label, &gpu.download(&dw).unwrap(), &want, &tol);
            // into a buffer of ones: the gradient is added on top
            let mut acc = gpu.upload(&vec![1.0f32; vocab * d]).unwrap();
            embedding::embedding_bwd_into(&mut acc, ty, &dout_d, &ids_d, n, vocab, d).unwrap();
            let plus_one: Vec<f32> = want.iter().map(|w| 1.0 + w).collect();
            let tol = bwd_tolerance(&held, &idx, vocab, d, 1.0);
            assert_within(
                &format!("{label} += "),
                &gpu.download(&acc).unwrap(),
                &plus_one,
                &tol,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_range_ids_are_skipped() {
    let gpu = device();
    let (vocab, d) = (4, 40);
    let mut rng = Rng::new(13);
    let table: Vec<f32> = normals(vocab * d, 3.0, &mut rng);
    let table_d = gpu.upload(&table).unwrap();
    // positions 1 and 3 hold ids past the table
    let idx = vec![2u32, vocab as u32, 0, u32::MAX, 3];
    let n = idx.len();
    let ids_d = gpu.upload(&idx).unwrap();
    let mut out = poisoned(&gpu, n * d, ElemType::F32);
    embedding::embedding_fwd_into(&mut out, ElemType::F32, &table_d, &ids_d, n, vocab, d).unwrap();
    let out = gpu.download::<f32>(&out).unwrap();
    // the good positions against the CPU on those positions alone
    let good: Vec<usize> = (0..n).filter(|&i| (idx[i] as usize) < vocab).collect();
    let good_ids: Vec<u32> = good.iter().map(|&i| idx[i]).collect();
    let good_ids = Tensor::from_vec(good_ids, &[good.len()]).unwrap();
    let table_t = Tensor::from_vec(table, &[vocab, d]).unwrap();
    let want = cpu::embedding_fwd(&table_t, &good_ids).unwrap();
    let want = want.to_vec::<f32>().unwrap();
    for (k, &i) in good.iter().enumerate() {
        assert_eq!(
            &out[i * d..(i + 1) * d],
            &want[k * d..(k + 1) * d],
            "position {i}"
        );
    }
    for i in (0..n).filter(|i| !good.contains(i)) {
        let row = &out[i * d..(i + 1) * d];
        assert!(
            row.iter().all(|x| x.is_nan()),
            "position {i}: a bad id wrote its row"
        );
    }
    // the backward adds exactly the good positions' rows
    let dout = normals(n * d, 3.0, &mut rng);
    let dout_d = gpu.upload(&dout).unwrap();
    let dw = embedding::embedding_bwd(ElemType::F32, &dout_d, &ids_d, n, vocab, d).unwrap();
    let good_rows: Vec<f32> = good
        .iter()
        .flat_map(|&i| dout[i * d..(i + 1) * d].to_vec())
        .collect();
    let good_rows = Tensor::from_vec(good_rows, &[good.len(), d]).unwrap();
    let want = cpu::embedding_bwd(&good_rows, &good_ids, vocab).unwrap();
    // each good id occurs once: every element is a single term, so the sums are exact
    assert_eq!(
        gpu.download::<f32>(&dw).unwrap(),
        want.to_vec::<f32>().unwrap()
    );
}
