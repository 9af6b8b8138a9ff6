//! Embedding lookup (a gather of rows) and its backward (a scatter-add of rows).

use crate::cpu;
use crate::{Device, Error, Result, Tensor};

/// Checks every id against the table size, naming the first bad one.
fn check_ids(op: &'static str, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(&id) => Err(Error::IndexOutOfRange {
            op,
            index: id as usize,
            size: vocab,
        }),
        None => Ok(()),
    }
}

fn check_table(op: &'static str, weight: &Tensor, ids: &Tensor) -> Result<()> {
    weight.check_float(op)?;
    ids.check_u32(op)?;
    if weight.rank() != 2 {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("the table must be [V, D], got {:?}", weight.shape()),
        });
    }
    Ok(())
}

/// out[i, :] = weight[ids[i], :]
///
/// Shapes: weight [V, D], ids [..] (u32) -> out [.., D]
pub fn embedding_fwd(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    check_table("embedding", weight, ids)?;
    let (v, d) = (weight.shape()[0], weight.shape()[1]);
    let idx = ids.to_vec::<u32>()?;
    check_ids("embedding", &idx, v)?;
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    match weight.device() {
        Device::Cpu => {
            let w = weight.contiguous()?;
            let table = w.f32_data();
            let mut out = vec![0.0; idx.len() * d];
            cpu::for_each_row(&mut out, d, |i, row| {
                let id = idx[i] as usize;
                row.copy_from_slice(&table[id * d..(id + 1) * d]);
            });
            Ok(Tensor::from_f32_values(out, &shape, weight.dtype()))
        }
        // the ids were checked on the host above (downloaded when they live on the device)
        Device::Cuda(_) => crate::cuda::embedding::embedding_fwd(weight, ids),
    }
}

/// dweight[v, :] = sum of dout[i, :] over the positions i with ids[i] = v (a token seen twice
/// gets both gradients). Positions are added in order, so the result is deterministic.
///
/// Shapes: dout [.., D], ids [..] (u32), vocab V -> dweight [V, D]
pub fn embedding_bwd(dout: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    dout.check_float("embedding_bwd")?;
    ids.check_u32("embedding_bwd")?;
    let d = dout.layout().row_len();
    let mut expected = ids.shape().to_vec();
    expected.push(d);
    dout.check_shape("embedding_bwd", &expected)?;
    let idx = ids.to_vec::<u32>()?;
    check_ids("embedding_bwd", &idx, vocab)?;
    match dout.device() {
        Device::Cpu => {
            let dout = dout.contiguous()?;
            let g = dout.f32_data();
            let mut dweight = vec![0.0f32; vocab * d];
            for (i, &id) in idx.iter().enumerate() {
                let row = &mut dweight[id as usize * d..(id as usize + 1) * d];
                row.iter_mut()
                    .zip(&g[i * d..(i + 1) * d])
                    .for_each(|(a, x)| *a += x);
            }
            Ok(Tensor::from_f32_values(dweight, &[vocab, d], dout.dtype()))
        }
        Device::Cuda(_) => crate::cuda::embedding::embedding_bwd(dout, ids, vocab),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn repeated_ids_accumulate_and_bad_ids_are_named() {
        let ids = Tensor::from_vec(vec![1u32, 0, 1], &[3]).unwrap();
        let dout = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
        let dw = embedding_bwd(&dout, &ids, 3)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        // row 1 gets rows 0 and 2 of dout: [1+5, 2+6]; row 0 gets [3, 4]; row 2 nothing
        assert_eq!(dw, vec![3.0, 4.0, 6.0, 8.0, 0.0, 0.0]);
        let table = Tensor::zeros(&[3, 2], DType::F32);
        let bad = Tensor::from_vec(vec![3u32], &[1]).unwrap();
        let err = embedding_fwd(&table, &bad).unwrap_err();
        assert_eq!(
            err,
            Error::IndexOutOfRange {
                op: "embedding",
                index: 3,
                size: 3
            }
        );
    }
}
