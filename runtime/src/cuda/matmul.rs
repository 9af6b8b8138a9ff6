//! The matrix product on CUDA tensors: `kernels/cuda/gemm.cu` through `odeflow_kernels::gemm`.
//!
//! The GEMM reads each operand as a batch of dense row-major matrices, optionally transposed,
//! with one batch stride (0: the same matrix for every batch entry). Most operands the model
//! hands it already are one: a weight broadcast over the batch (stride 0), its transpose in the
//! backward (a transposed view), activations laid out [batch, rows, cols]. Anything else (a
//! view that mixes broadcast and real batch dims, or starts at an offset) is copied dense first.

use super::{dense, elem_type, flat, wrap};
use crate::{DType, Result, Tensor};
use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::gemm::{self, GemmKernel, GemmShape};

/// How the GEMM reads one operand: the tensor whose buffer it reads, whether its matrices are
/// stored transposed, and the stride between batch entries (in elements).
struct Operand {
    tensor: Tensor,
    transposed: bool,
    batch_stride: usize,
}

/// `x` as a GEMM operand of `lead` batch dims over [rows, cols] matrices, copying it dense
/// when its layout is none the kernel reads.
///
/// Shapes: x [batch.., rows, cols] (any view)
fn operand(x: &Tensor, lead: usize, rows: usize, cols: usize) -> Result<Operand> {
    if let Some((transposed, batch_stride)) = gemm_layout(x, lead, rows, cols) {
        return Ok(Operand {
            tensor: x.clone(),
            transposed,
            batch_stride,
        });
    }
    let tensor = dense(x)?;
    Ok(Operand {
        tensor,
        transposed: false,
        batch_stride: rows * cols,
    })
}

/// (transposed, batch stride) when the GEMM can read `x` in place, `None` otherwise.
fn gemm_layout(x: &Tensor, lead: usize, rows: usize, cols: usize) -> Option<(bool, usize)> {
    let (l, st) = (x.layout(), x.layout().strides());
    if l.offset() != 0 {
        return None;
    }
    let (rs, cs) = (st[lead], st[lead + 1]);
    // the matrix: row-major [rows, cols], or stored [cols, rows] and read transposed
    let transposed = if cs == 1 && (rs == cols || rows == 1) {
        false
    } else if rs == 1 && (cs == rows || cols == 1) {
        true
    } else {
        return None;
    };
    // the batch: every batch dim broadcast (stride 0), or matrices packed one after another
    let batch = &st[..lead];
    if batch.iter().all(|&s| s == 0) {
        return Some((transposed, 0));
    }
    let mut expect = rows * cols;
    for d in (0..lead).rev() {
        if st[d] != expect && x.shape()[d] != 1 {
            return None;
        }
        expect *= x.shape()[d];
    }
    Some((transposed, rows * cols))
}

/// `matmul` on CUDA: a and b already broadcast to one batch shape of `lead` dims.
///
/// Shapes: a [batch.., M, K], b [batch.., K, N] -> c [batch.., M, N]
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    lead: usize,
    dims: (usize, usize, usize),
) -> Result<Tensor> {
    let (m, k, n) = dims;
    let ty = elem_type("matmul", a.dtype())?;
    let kernel = match ty {
        ElemType::F32 => GemmKernel::F32,
        ElemType::Bf16 => GemmKernel::Bf16,
    };
    let (oa, ob) = (operand(a, lead, m, k)?, operand(b, lead, k, n)?);
    let batch: usize = a.shape()[..lead].iter().product();
    let shape = GemmShape {
        batch,
        m,
        n,
        k,
        trans_a: oa.transposed,
        trans_b: ob.transposed,
        stride_a: oa.batch_stride,
        stride_b: ob.batch_stride,
        stride_c: m * n,
    };
    let (sa, sb) = (storage(&oa.tensor)?, storage(&ob.tensor)?);
    let c = gemm::gemm(kernel, sa.buffer(), sb.buffer(), 1.0, &shape)?;
    let mut out: Vec<usize> = a.shape()[..lead].to_vec();
    out.extend([m, n]);
    Ok(wrap(c, dtype_of(ty), &out, sa.ordinal()))
}

/// The device buffer of an operand (its layout has been checked, or made dense).
fn storage(t: &Tensor) -> Result<&super::CudaStorage> {
    if t.is_contiguous() {
        return flat("matmul", t);
    }
    t.cuda_storage("matmul")
}

fn dtype_of(ty: ElemType) -> DType {
    match ty {
        ElemType::F32 => DType::F32,
        ElemType::Bf16 => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gemm_layout of a CPU tensor (it reads only the layout, so no device is needed).
    fn layout_of(t: &Tensor, lead: usize) -> Option<(bool, usize)> {
        let r = t.rank();
        gemm_layout(t, lead, t.shape()[r - 2], t.shape()[r - 1])
    }

    #[test]
    fn the_gemm_reads_packed_broadcast_and_transposed_operands_in_place() {
        let x = Tensor::zeros(&[3, 4, 5], DType::F32);
        // activations [batch, rows, cols]: packed matrices
        assert_eq!(layout_of(&x, 1), Some((false, 20)));
        // a weight broadcast over the batch: stride 0
        let w = Tensor::zeros(&[5, 6], DType::F32)
            .broadcast_to(&[3, 5, 6])
            .unwrap();
        assert_eq!(layout_of(&w, 1), Some((false, 0)));
        // its transpose, as the backward takes it: read transposed, still broadcast
        let wt = Tensor::zeros(&[6, 5], DType::F32).t().unwrap();
        let wt = wt.broadcast_to(&[3, 5, 6]).unwrap();
        assert_eq!(layout_of(&wt, 1), Some((true, 0)));
        // the transposes of packed activations
        assert_eq!(layout_of(&x.t().unwrap(), 1), Some((true, 20)));
        // two batch dims, packed
        let y = Tensor::zeros(&[2, 3, 4, 5], DType::F32);
        assert_eq!(layout_of(&y, 2), Some((false, 20)));
    }

    #[test]
    fn other_layouts_are_copied_first() {
        let y = Tensor::zeros(&[2, 3, 4, 5], DType::F32);
        // batch dims swapped: not one stride apart
        assert_eq!(layout_of(&y.permute(&[1, 0, 2, 3]).unwrap(), 2), None);
        // a view that starts inside its buffer
        assert_eq!(layout_of(&y.narrow(0, 1, 1).unwrap(), 2), None);
        // a batch that is half broadcast, half real
        let half = Tensor::zeros(&[1, 3, 4, 5], DType::F32);
        assert_eq!(
            layout_of(&half.broadcast_to(&[2, 3, 4, 5]).unwrap(), 2),
            None
        );
        // rows of a matrix that are not adjacent (a narrowed last dim)
        let z = Tensor::zeros(&[4, 8], DType::F32);
        assert_eq!(layout_of(&z.narrow(1, 0, 5).unwrap(), 0), None);
    }
}
