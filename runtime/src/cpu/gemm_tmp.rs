//! TEMPORARY naive stand-in with the gemm interface, replaced by gemm/ at integration.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    Sequential,
    Rayon,
}
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, acc: bool, _p: Parallelism) {
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0f32;
            for p in 0..a.cols {
                s += a.data[i * a.row_stride + p * a.col_stride]
                    * b.data[p * b.row_stride + j * b.col_stride];
            }
            if acc {
                c[i * ldc + j] += s
            } else {
                c[i * ldc + j] = s
            }
        }
    }
}
