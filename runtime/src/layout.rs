//! Shapes, strides and views.
//!
//! A tensor's elements live in a flat buffer. The `Layout` says where: element `[i0, i1, ..]`
//! sits at `offset + i0 * strides[0] + i1 * strides[1] + ..`. A *contiguous* (row-major) layout
//! has `strides[d] = shape[d+1] * shape[d+2] * ..`, so the last index moves fastest.
//!
//! Views change only the layout, never the buffer:
//! - `permute` reorders shape and strides together (a transpose swaps two of them);
//! - `narrow` keeps a range of one dim by moving the offset and shrinking the size;
//! - `broadcast_to` repeats a size-1 dim by giving it stride 0;
//! - `reshape` is a view only when the layout is contiguous; otherwise the tensor is copied first.
//!
//! Strides are unsigned: odeflow has no negative-stride views (no flips), which keeps the index
//! arithmetic free of signed casts.

use crate::{Error, Result};

/// Shape, strides (in elements) and offset (in elements) of a tensor view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a shape: the stride of each dim is the product of the sizes after it.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// The broadcast of two shapes (numpy rules): align from the right; sizes must be equal or 1.
pub fn broadcast_shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>> {
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        // read both shapes from the right; a missing dim counts as size 1
        let l = if i < lhs.len() {
            lhs[lhs.len() - 1 - i]
        } else {
            1
        };
        let r = if i < rhs.len() {
            rhs[rhs.len() - 1 - i]
        } else {
            1
        };
        out[rank - 1 - i] = match (l, r) {
            _ if l == r => l,
            (1, _) => r,
            (_, 1) => l,
            _ => {
                return Err(Error::BroadcastIncompatible {
                    op,
                    lhs: lhs.to_vec(),
                    rhs: rhs.to_vec(),
                })
            }
        };
    }
    Ok(out)
}

impl Layout {
    /// A fresh row-major layout starting at element 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (1 for a scalar of rank 0).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are in row-major order with no gaps (the offset may be non-zero).
    /// Dims of size 1 may carry any stride: they are never stepped over.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }

    /// Checks a dim index against the rank.
    pub fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim < self.rank() {
            Ok(())
        } else {
            Err(Error::DimOutOfRange {
                op,
                dim,
                rank: self.rank(),
            })
        }
    }

    /// The same elements under a new shape; only valid for a contiguous layout
    /// (the caller copies first otherwise). Same element count required.
    pub fn reshape(&self, shape: &[usize]) -> Result<Layout> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape.to_vec(),
            });
        }
        debug_assert!(self.is_contiguous(), "reshape view of a strided layout");
        Ok(Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: self.offset,
        })
    }

    /// The same elements seen with `shape`, as a view, when the strides allow it; `None` when
    /// only a copy can give that shape (then `Tensor::reshape` copies).
    ///
    /// A reshape regroups dims. It can be a view when every group of old dims that the new shape
    /// splits or merges is itself laid out as one contiguous run ("chunk"): old dim d and d+1
    /// are in one chunk when stride[d] = stride[d+1] * shape[d+1]. Walking both shapes from the
    /// last dim, each chunk of old dims must be covered by whole new dims, whose strides are
    /// then those of a row-major block starting at the chunk's innermost stride. Example: a
    /// narrow of the last dim of [B, T, 3D] (strides [3TD, 3D, 1]) to [B, T, D] reshapes to
    /// [B, T, H, D/H] as a view (strides [3TD, 3D, D/H, 1]); its transpose does not.
    pub fn reshape_view(&self, shape: &[usize]) -> Option<Layout> {
        if shape.iter().product::<usize>() != self.numel() || self.numel() == 0 {
            return None;
        }
        // size-1 dims carry no layout information: drop them from the old shape
        let old: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n != 1)
            .map(|(&n, &s)| (n, s))
            .collect();
        let mut strides = vec![0; shape.len()];
        let mut new_d = shape.len();
        let mut d = old.len();
        while d > 0 {
            // the chunk of old dims [first, d): contiguous among themselves
            let mut first = d - 1;
            while first > 0 && old[first - 1].1 == old[first].1 * old[first].0 {
                first -= 1;
            }
            let chunk_numel: usize = old[first..d].iter().map(|&(n, _)| n).product();
            let mut stride = old[d - 1].1;
            let mut covered = 1;
            while new_d > 0 && (covered < chunk_numel || shape[new_d - 1] == 1) {
                new_d -= 1;
                strides[new_d] = stride;
                stride *= shape[new_d];
                covered *= shape[new_d];
            }
            if covered != chunk_numel {
                return None;
            }
            d = first;
        }
        // what is left of the new shape is size-1 dims
        while new_d > 0 {
            new_d -= 1;
            if shape[new_d] != 1 {
                return None;
            }
            strides[new_d] = 1;
        }
        Some(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Reorders the dims: the new dim `i` is the old dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        let valid = perm.len() == self.rank()
            && perm
                .iter()
                .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::InvalidArgument {
                op: "permute",
                msg: format!(
                    "{perm:?} is not a permutation of the dims of {:?}",
                    self.shape
                ),
            });
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Keeps indices `start .. start + len` of `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        if start + len > self.shape[dim] {
            return Err(Error::InvalidArgument {
                op: "narrow",
                msg: format!(
                    "range {start}..{} exceeds size {} of dim {dim} in {:?}",
                    start + len,
                    self.shape[dim],
                    self.shape
                ),
            });
        }
        let mut shape = self.shape.clone();
        shape[dim] = len;
        Ok(Layout {
            shape,
            strides: self.strides.clone(),
            offset: self.offset + start * self.strides[dim],
        })
    }

    /// Views this layout as `shape` by repeating size-1 dims (stride 0) and adding leading dims.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let incompatible = || Error::BroadcastIncompatible {
            op: "broadcast_to",
            lhs: self.shape.clone(),
            rhs: shape.to_vec(),
        };
        if shape.len() < self.rank() {
            return Err(incompatible());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (d, &size) in shape.iter().enumerate().skip(lead) {
            let own = self.shape[d - lead];
            if own == size {
                strides[d] = self.strides[d - lead];
            } else if own != 1 {
                return Err(incompatible());
            }
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// The buffer offset of the first element of every row, a row being a run along the last
    /// dim. Rows are listed in row-major order. A scalar has one row of length 1.
    ///
    /// This is the one strided-walk primitive of the CPU backend: an op loops over these starts
    /// (in parallel where it pays) and steps along each row with `strides[rank-1]`.
    pub fn row_starts(&self) -> Vec<usize> {
        let rank = self.rank();
        if rank == 0 {
            return vec![self.offset];
        }
        let outer = &self.shape[..rank - 1];
        let rows: usize = outer.iter().product();
        let mut starts = Vec::with_capacity(rows);
        let mut index = vec![0usize; outer.len()];
        let mut pos = self.offset;
        for _ in 0..rows {
            starts.push(pos);
            // odometer increment of the outer index, updating pos incrementally
            for d in (0..outer.len()).rev() {
                index[d] += 1;
                pos += self.strides[d];
                if index[d] < outer[d] {
                    break;
                }
                pos -= self.strides[d] * outer[d];
                index[d] = 0;
            }
        }
        starts
    }

    /// The buffer offset of each index of the first `lead` dims (row-major order): the start of
    /// every matrix in a batch of matrices, for example.
    pub fn leading_offsets(&self, lead: usize) -> Vec<usize> {
        debug_assert!(lead <= self.rank());
        // a layout of just the leading dims plus a dummy row of length 1
        let mut shape = self.shape[..lead].to_vec();
        let mut strides = self.strides[..lead].to_vec();
        shape.push(1);
        strides.push(1);
        let lead_layout = Layout {
            shape,
            strides,
            offset: self.offset,
        };
        lead_layout.row_starts()
    }

    /// Length of a row (size of the last dim; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Stride along a row (stride of the last dim; 1 for a scalar).
    pub fn row_stride(&self) -> usize {
        self.strides.last().copied().unwrap_or(1)
    }

    /// One past the largest buffer index this view can touch (0 for an empty view).
    pub fn max_extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        let last: usize = self
            .shape
            .iter()
            .zip(&self.strides)
            .map(|(s, st)| (s - 1) * st)
            .sum();
        self.offset + last + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
    }

    #[test]
    fn transpose_is_not_contiguous_but_size_one_dims_do_not_matter() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.is_contiguous());
        assert!(!l.permute(&[1, 0]).unwrap().is_contiguous());
        let l = Layout::contiguous(&[1, 3]).permute(&[1, 0]).unwrap();
        assert_eq!(l.shape(), &[3, 1]);
        assert!(l.is_contiguous());
    }

    #[test]
    fn row_starts_of_a_transpose_walk_the_columns() {
        // [[0 1 2] [3 4 5]] transposed is [[0 3] [1 4] [2 5]]: rows start at 0, 1, 2, step 3
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]).unwrap();
        assert_eq!(l.row_starts(), vec![0, 1, 2]);
        assert_eq!(l.row_stride(), 3);
    }

    #[test]
    fn reshape_view_splits_a_narrowed_last_dim_without_copying() {
        // q of a fused [2, 3, 12] projection: [2, 3, 4] with strides [36, 12, 1]
        let q = Layout::contiguous(&[2, 3, 12]).narrow(2, 4, 4).unwrap();
        let heads = q.reshape_view(&[2, 3, 2, 2]).unwrap();
        assert_eq!(heads.strides(), &[36, 12, 2, 1]);
        assert_eq!(heads.offset(), 4);
        // merging T and H of a [B, H, T, hd] transpose is not a view
        let t = Layout::contiguous(&[2, 3, 2, 2])
            .permute(&[0, 2, 1, 3])
            .unwrap();
        assert!(t.reshape_view(&[2, 2, 6]).is_none());
        // nor is merging two swapped dims (stride 4 is not 12 * 2)
        let merged = Layout::contiguous(&[2, 3, 4]).permute(&[1, 0, 2]).unwrap();
        assert!(merged.reshape_view(&[6, 4]).is_none());
        // size-1 dims anywhere are free
        let c = Layout::contiguous(&[4, 6]).narrow(1, 0, 3).unwrap();
        assert_eq!(
            c.reshape_view(&[1, 4, 1, 3]).unwrap().strides()[1..],
            [6, 3, 1][..]
        );
    }

    #[test]
    fn reshape_view_walks_the_same_elements_as_a_copy() {
        // every element of the view must sit where the row-major copy would read it from
        let base = Layout::contiguous(&[3, 4, 10]).narrow(2, 2, 6).unwrap();
        for shape in [
            vec![3, 4, 6],
            vec![3, 4, 2, 3],
            vec![12, 6],
            vec![3, 4, 3, 2],
        ] {
            let Some(view) = base.reshape_view(&shape) else {
                assert_eq!(
                    shape,
                    vec![12, 6],
                    "only the merge across the narrow copies"
                );
                continue;
            };
            let flat = |l: &Layout| -> Vec<usize> {
                let (len, st) = (l.row_len(), l.row_stride());
                l.row_starts()
                    .iter()
                    .flat_map(|&s| (0..len).map(move |j| s + j * st))
                    .collect()
            };
            assert_eq!(flat(&view), flat(&base), "{shape:?}");
        }
    }

    #[test]
    fn narrow_moves_the_offset() {
        let l = Layout::contiguous(&[4, 5]).narrow(0, 1, 2).unwrap();
        assert_eq!((l.offset(), l.shape()), (5, &[2usize, 5][..]));
        assert!(l.is_contiguous());
        let l = Layout::contiguous(&[4, 5]).narrow(1, 2, 3).unwrap();
        assert_eq!(l.row_starts(), vec![2, 7, 12, 17]);
        assert!(Layout::contiguous(&[4]).narrow(0, 3, 2).is_err());
    }

    #[test]
    fn broadcast_gives_zero_strides() {
        let l = Layout::contiguous(&[3, 1])
            .broadcast_to(&[2, 3, 4])
            .unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
        assert!(Layout::contiguous(&[3]).broadcast_to(&[4]).is_err());
        assert_eq!(
            broadcast_shape("t", &[2, 1, 4], &[3, 1]).unwrap(),
            vec![2, 3, 4]
        );
        assert!(broadcast_shape("t", &[2, 3], &[4, 3, 2]).is_err());
    }

    #[test]
    fn permute_rejects_repeats() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.permute(&[0, 0]).is_err());
        assert!(l.permute(&[0]).is_err());
        assert!(l.permute(&[0, 2]).is_err());
    }
}
