//! The hypernetwork's weight generation as one op: every step's weights from the coefficient
//! rows and the stacked parameter, forward and backward (MODEL.md section 3).
//!
//! ```text
//! generate       w[i] = sum_k h[i, k] f[k]          h [N, K], f [K, ..] -> w [N, ..]
//! generate_bwd   df[k] = sum_i h[i, k] dw[i],  dh[i, k] = dw[i] . f[k]
//! ```
//!
//! It is `h.matmul(f as [K, P])` and its backward, with two differences that matter because
//! the op is memory-bound (K and N are tiny, P is the size of a weight matrix): the forward reads
//! f once and writes w once, and the backward takes the N steps' gradients as N separate
//! tensors (what the tape holds: each step used its own view of w), so they are never joined
//! into one [N, P] copy, and it reads them once for both dh and df. The kernels and their
//! byte counts are in `cpu/hypernet.rs`.
//!
//! On CUDA the op runs the fused kernels of `kernels/cuda/hypernet.cu` (`cuda::hypernet`), which
//! move the same bytes once, and likewise read the steps' gradients where they lie.

use crate::cpu::hypernet as kernel;
use crate::{Device, Error, Result, Tensor};

/// [K, ..] seen as (K, P).
fn stacked_dims(f: &Tensor) -> (usize, usize) {
    let k = f.shape()[0];
    (k, f.numel() / k.max(1))
}

fn check(op: &'static str, h: &Tensor, f: &Tensor) -> Result<()> {
    h.check_float(op)?;
    f.check_float(op)?;
    if h.device() != f.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: h.device(),
            rhs: f.device(),
        });
    }
    if h.rank() != 2 || f.rank() < 2 || h.shape()[1] != f.shape()[0] {
        return Err(Error::InvalidArgument {
            op,
            msg: format!(
                "needs h [N, K] and f [K, ..], got h {:?} and f {:?}",
                h.shape(),
                f.shape()
            ),
        });
    }
    Ok(())
}

/// Every step's weights: w[i] = sum_k h[i, k] f[k], in f's dtype (the CPU computes in f32).
///
/// Shapes: h [N, K], f [K, ..] -> w [N, ..]
pub fn generate(h: &Tensor, f: &Tensor) -> Result<Tensor> {
    check("generate", h, f)?;
    let n = h.shape()[0];
    let (k, p) = stacked_dims(f);
    let mut shape = f.shape().to_vec();
    shape[0] = n;
    match h.device() {
        Device::Cpu => {
            let w = kernel::generate(&h.f32_data(), &f.f32_data(), n, k, p);
            Ok(Tensor::from_f32_values(w, &shape, f.dtype()))
        }
        Device::Cuda(_) => crate::cuda::hypernet::generate(h, f),
    }
}

/// The backward of `generate`, from the N steps' gradients (each of f's trailing shape).
/// Returns (dh, df) in h's and f's dtypes.
///
/// Shapes: dws N x [..], h [N, K], f [K, ..] -> dh [N, K], df [K, ..]
pub fn generate_bwd(dws: &[Tensor], h: &Tensor, f: &Tensor) -> Result<(Tensor, Tensor)> {
    generate_bwd_acc(dws, h, f, None)
}

/// `generate_bwd` with df added to `acc`, a gradient gathered so far, in the same pass (the
/// tape's path into a parameter's gradient buffer): returns (dh, acc + df), the sum in acc's
/// dtype, which may be wider than f's (an f32 gradient of a parameter the pass cast to bf16
/// takes the bf16 product without rounding it to bf16 first).
///
/// Shapes: dws N x [..], h [N, K], f [K, ..], acc [K, ..] -> dh [N, K], acc + df [K, ..]
pub fn generate_bwd_acc(
    dws: &[Tensor],
    h: &Tensor,
    f: &Tensor,
    acc: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    check("generate_bwd", h, f)?;
    if let Some(acc) = acc {
        acc.check_float("generate_bwd")?;
        acc.check_same_shape("generate_bwd", f)?;
        if acc.device() != f.device() {
            return Err(Error::DeviceMismatch {
                op: "generate_bwd",
                lhs: acc.device(),
                rhs: f.device(),
            });
        }
    }
    let n = h.shape()[0];
    let (k, p) = stacked_dims(f);
    if dws.len() != n {
        return Err(Error::InvalidArgument {
            op: "generate_bwd",
            msg: format!(
                "needs one gradient per step: {n} steps, {} gradients",
                dws.len()
            ),
        });
    }
    for dw in dws {
        f.check_same_kind("generate_bwd", dw)?;
        if dw.shape() != &f.shape()[1..] {
            return Err(Error::ShapeMismatch {
                op: "generate_bwd",
                lhs: dw.shape().to_vec(),
                rhs: f.shape()[1..].to_vec(),
            });
        }
    }
    match h.device() {
        Device::Cpu => {
            let dw_data: Vec<_> = dws.iter().map(|dw| dw.f32_data()).collect();
            let dw_slices: Vec<&[f32]> = dw_data.iter().map(|d| d.as_ref()).collect();
            let (f_data, h_data) = (f.f32_data(), h.f32_data());
            let acc_data = acc.map(|a| a.f32_data());
            let (dh, df) =
                kernel::generate_bwd(&dw_slices, &h_data, &f_data, (n, k, p), acc_data.as_deref());
            let df_dtype = acc.map_or(f.dtype(), Tensor::dtype);
            Ok((
                Tensor::from_f32_values(dh, h.shape(), h.dtype()),
                Tensor::from_f32_values(df, f.shape(), df_dtype),
            ))
        }
        Device::Cuda(_) => crate::cuda::hypernet::generate_bwd(dws, h, f, acc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::hypernet::CHUNK;
    use crate::{DType, Rng};

    /// sum over the inner index in f64: the reference both ops are held to.
    fn product_f64(a: &[f32], b: &[f32], m: usize, inner: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for p in 0..inner {
                let a_ip = a[i * inner + p] as f64;
                for j in 0..n {
                    c[i * n + j] += a_ip * b[p * n + j] as f64;
                }
            }
        }
        c
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0f32; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = x[r * cols + c];
            }
        }
        t
    }

    /// Within `tol` of the f64 reference, relative to the sum of |terms| (what f32 rounding of a
    /// sum scales with), element by element.
    fn assert_close(got: &[f32], want: &[f64], scale: &[f64], tol: f64, what: &str) {
        for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(err <= tol * s.max(1e-30), "{what}[{i}]: got {g}, want {w}");
        }
    }

    fn abs(x: &[f32]) -> Vec<f32> {
        x.iter().map(|v| v.abs()).collect()
    }

    /// Sizes not multiples of anything: P spans two chunks and a ragged third; P below one
    /// chunk; a [K, d_in, d_out] weight and a [K, D] norm parameter.
    #[test]
    fn generate_and_its_backward_match_the_products_in_f64() {
        let mut rng = Rng::new(21);
        for (n, shape) in [
            (4, vec![9, 2 * CHUNK + 37]),
            (12, vec![21, 130]),
            (1, vec![3, 7, 5]),
            (5, vec![8, 33, 19]),
        ] {
            let k = shape[0];
            let p: usize = shape[1..].iter().product();
            let h = Tensor::randn(&[n, k], 0.0, 1.0, DType::F32, &mut rng);
            let f = Tensor::randn(&shape, 0.0, 1.0, DType::F32, &mut rng);
            let w = generate(&h, &f).unwrap();
            let mut w_shape = shape.clone();
            w_shape[0] = n;
            assert_eq!(w.shape(), &w_shape[..]);
            let (hv, fv) = (h.to_f32_vec().unwrap(), f.to_f32_vec().unwrap());
            let want = product_f64(&hv, &fv, n, k, p);
            let scale = product_f64(&abs(&hv), &abs(&fv), n, k, p);
            let tol = 1e-6;
            assert_close(&w.to_f32_vec().unwrap(), &want, &scale, tol, "w");

            let dws: Vec<Tensor> = (0..n)
                .map(|_| Tensor::randn(&shape[1..], 0.0, 1.0, DType::F32, &mut rng))
                .collect();
            let dw: Vec<f32> = dws.iter().flat_map(|d| d.to_f32_vec().unwrap()).collect();
            let (dh, df) = generate_bwd(&dws, &h, &f).unwrap();
            assert_eq!((dh.shape(), df.shape()), (h.shape(), f.shape()));
            // df = h^T dw [K, P], dh = dw f^T [N, K]
            let ht = transpose(&hv, n, k);
            let want = product_f64(&ht, &dw, k, n, p);
            let scale = product_f64(&abs(&ht), &abs(&dw), k, n, p);
            assert_close(&df.to_f32_vec().unwrap(), &want, &scale, tol, "df");
            let ft = transpose(&fv, k, p);
            let want = product_f64(&dw, &ft, n, p, k);
            let scale = product_f64(&abs(&dw), &abs(&ft), n, p, k);
            assert_close(&dh.to_f32_vec().unwrap(), &want, &scale, tol, "dh");
        }
    }

    /// Into a gradient gathered so far: exactly acc + df (the same rounding as adding a finished
    /// df), at a P of several ragged chunks; an f32 sum over a bf16 f keeps its f32 dtype.
    #[test]
    fn the_backward_into_a_gradient_is_the_sum_to_the_bit() {
        let mut rng = Rng::new(22);
        let (n, k, p) = (3, 5, 2 * CHUNK + 11);
        let h = Tensor::randn(&[n, k], 0.0, 1.0, DType::F32, &mut rng);
        let f = Tensor::randn(&[k, p], 0.0, 1.0, DType::F32, &mut rng);
        let dws: Vec<Tensor> = (0..n)
            .map(|_| Tensor::randn(&[p], 0.0, 1.0, DType::F32, &mut rng))
            .collect();
        let acc = Tensor::randn(&[k, p], 0.0, 1.0, DType::F32, &mut rng);
        let (dh, df) = generate_bwd(&dws, &h, &f).unwrap();
        let (dh_acc, sum) = generate_bwd_acc(&dws, &h, &f, Some(&acc)).unwrap();
        assert_eq!(dh_acc.to_f32_vec().unwrap(), dh.to_f32_vec().unwrap());
        let want = acc.add(&df).unwrap().to_f32_vec().unwrap();
        assert_eq!(sum.to_f32_vec().unwrap(), want);

        // a bf16 f and its gradients, summed into an f32 gradient: the product is not rounded
        // to bf16 on the way (it is the f32 product of the same bf16 values)
        let fb = f.to_dtype(DType::BF16).unwrap();
        let dwb: Vec<Tensor> = dws
            .iter()
            .map(|d| d.to_dtype(DType::BF16).unwrap())
            .collect();
        let (_, sum) = generate_bwd_acc(&dwb, &h, &fb, Some(&acc)).unwrap();
        assert_eq!(sum.dtype(), DType::F32);
        let dwf: Vec<Tensor> = dwb
            .iter()
            .map(|d| d.to_dtype(DType::F32).unwrap())
            .collect();
        let (_, df_f32) = generate_bwd(&dwf, &h, &fb.to_dtype(DType::F32).unwrap()).unwrap();
        let want = acc.add(&df_f32).unwrap().to_f32_vec().unwrap();
        assert_eq!(sum.to_f32_vec().unwrap(), want);

        let wrong = Tensor::zeros(&[k, p + 1], DType::F32);
        let err = generate_bwd_acc(&dws, &h, &f, Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("generate_bwd"), "{err}");
    }

    #[test]
    fn bad_shapes_are_errors_that_name_the_op() {
        let h = Tensor::zeros(&[4, 9], DType::F32);
        let f = Tensor::zeros(&[8, 10], DType::F32);
        let err = generate(&h, &f).unwrap_err().to_string();
        assert!(err.contains("generate") && err.contains("[K, ..]"), "{err}");
        let f = Tensor::zeros(&[9, 10], DType::F32);
        let dws = vec![Tensor::zeros(&[10], DType::F32); 3];
        let err = generate_bwd(&dws, &h, &f).unwrap_err().to_string();
        assert!(err.contains("one gradient per step"), "{err}");
    }
}
