//! Packing: copying a block of A or B into the panel layout the micro-kernel reads.
//!
//! A panel is `lanes` rows of A (or columns of B) interleaved along k, so the micro-kernel walks
//! it front to back with unit stride whatever the strides of the original matrix. Lanes past
//! the matrix edge are zero, so the kernel always computes a full tile; the driver then writes
//! back only the valid part. Packing costs O((m + n) k) copies against O(m n k) arithmetic.

use std::cell::Cell;
use std::ops::Range;
use std::thread::LocalKey;

use super::MatRef;

/// Floats in one 64-byte cache line.
const FLOATS_PER_LINE: usize = 16;

/// One cache line of floats, aligned to 64 bytes. With the buffer aligned, every B panel
/// (kc * NR floats, NR a multiple of 16) starts on a line, so the kernel's B loads never straddle
/// two lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct CacheLine([f32; FLOATS_PER_LINE]);

/// A growable f32 buffer aligned to a cache line.
#[derive(Default)]
pub(super) struct PackBuffer {
    lines: Vec<CacheLine>,
}

impl PackBuffer {
    /// The first `len` floats, grown (never shrunk) as needed. Old contents are left in place:
    /// packing overwrites every float the kernel reads.
    fn floats(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(FLOATS_PER_LINE);
        if self.lines.len() < lines {
            self.lines.resize(lines, CacheLine([0.0; FLOATS_PER_LINE]));
        }
        // SAFETY: CacheLine is repr(C) around [f32; 16] (64 bytes, no padding), so the vector
        // holds `lines * 16 >= len` contiguous, initialised floats, borrowed mutably from self.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), len) }
    }
}

thread_local! {
    /// This thread's buffer for packed blocks of A (at most MC x KC floats).
    pub(super) static PACK_A: Cell<PackBuffer> =
        const { Cell::new(PackBuffer { lines: Vec::new() }) };
    /// This thread's buffer for packed blocks of B (at most KC x NC floats).
    pub(super) static PACK_B: Cell<PackBuffer> =
        const { Cell::new(PackBuffer { lines: Vec::new() }) };
}

/// Runs `f` on `len` floats of this thread's buffer `key`, kept for the next call.
///
/// The buffer is moved out of the cell while `f` runs, so a nested gemm on the same thread (a
/// rayon worker picking up another task while it waits) finds the cell empty and allocates its
/// own instead of aliasing this one.
pub(super) fn with_buffer<R>(
    key: &'static LocalKey<Cell<PackBuffer>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buffer = key.take();
    let result = f(buffer.floats(len));
    key.set(buffer);
    result
}

/// Packs rows `rows` x columns `ks` of A into MR-row panels, the last one zero-padded.
///
/// Shapes: dst [ceil(rows.len() / MR), ks.len(), MR]; panel q holds rows rows.start + q * MR ..
/// and its element (p, i) is A[rows.start + q * MR + i, ks.start + p].
pub(super) fn pack_a_block<const MR: usize>(
    a: MatRef<'_>,
    rows: Range<usize>,
    ks: Range<usize>,
    dst: &mut [f32],
) {
    let origin = rows.start * a.row_stride + ks.start * a.col_stride;
    let (lane_stride, k_stride) = (a.row_stride, a.col_stride);
    let src = Strided {
        data: &a.data[origin..],
        lane_stride,
        k_stride,
    };
    pack_block::<MR>(src, rows.len(), ks.len(), dst);
}

/// Packs rows `ks` x columns `cols` of B into NR-column panels, the last one zero-padded.
///
/// Shapes: dst [ceil(cols.len() / NR), ks.len(), NR]; panel q holds columns cols.start + q * NR
/// .. and its element (p, j) is B[ks.start + p, cols.start + q * NR + j].
pub(super) fn pack_b_block<const NR: usize>(
    b: MatRef<'_>,
    ks: Range<usize>,
    cols: Range<usize>,
    dst: &mut [f32],
) {
    let origin = ks.start * b.row_stride + cols.start * b.col_stride;
    let (lane_stride, k_stride) = (b.col_stride, b.row_stride);
    let src = Strided {
        data: &b.data[origin..],
        lane_stride,
        k_stride,
    };
    pack_block::<NR>(src, cols.len(), ks.len(), dst);
}

/// A block's source: element (lane l, step p) is `data[l * lane_stride + p * k_stride]`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    lane_stride: usize,
    k_stride: usize,
}

/// Copies `width` lanes by `kc` steps into ceil(width / LANES) panels, zero past `width`.
///
/// Shapes: dst [ceil(width / LANES), kc, LANES]. LANES is a constant so that full-width copies
/// compile to a few vector moves. Memory is read in order for the two common layouts.
fn pack_block<const LANES: usize>(src: Strided<'_>, width: usize, kc: usize, dst: &mut [f32]) {
    if src.lane_stride == 1 {
        pack_by_steps::<LANES>(src, width, kc, dst);
        return;
    }
    for (q, panel) in dst.chunks_exact_mut(kc * LANES).enumerate() {
        let lane0 = q * LANES;
        let lanes = LANES.min(width - lane0);
        let data = &src.data[lane0 * src.lane_stride..];
        let panel_src = Strided { data, ..src };
        if lanes == LANES && src.k_stride == 1 {
            pack_panel_by_lanes::<LANES>(panel_src, kc, panel);
        } else {
            pack_panel_strided::<LANES>(panel_src, lanes, panel);
        }
    }
}

/// Lanes adjacent in memory (row-major B, column-major A): each step is one contiguous run of
/// `width` floats, dealt out to the panels LANES at a time.
fn pack_by_steps<const LANES: usize>(src: Strided<'_>, width: usize, kc: usize, dst: &mut [f32]) {
    let panel_len = kc * LANES;
    let full_panels = width / LANES;
    for p in 0..kc {
        let run = &src.data[p * src.k_stride..p * src.k_stride + width];
        let chunks = run.chunks_exact(LANES);
        let rest = chunks.remainder();
        for (q, chunk) in chunks.enumerate() {
            dst[q * panel_len + p * LANES..][..LANES].copy_from_slice(chunk);
        }
        if !rest.is_empty() {
            let last = &mut dst[full_panels * panel_len + p * LANES..][..LANES];
            last[..rest.len()].copy_from_slice(rest);
            last[rest.len()..].fill(0.0);
        }
    }
}

/// A full panel whose steps are adjacent in memory (row-major A, column-major B): read the LANES
/// lanes side by side, in order, and interleave them.
fn pack_panel_by_lanes<const LANES: usize>(src: Strided<'_>, kc: usize, dst: &mut [f32]) {
    let lanes: [&[f32]; LANES] = std::array::from_fn(|l| {
        let start = l * src.lane_stride;
        &src.data[start..start + kc]
    });
    for (p, dst_step) in dst.chunks_exact_mut(LANES).enumerate() {
        for (d, lane) in dst_step.iter_mut().zip(&lanes) {
            *d = lane[p];
        }
    }
}

/// Edge panels and unusual strides: element by element, zero past `width`.
fn pack_panel_strided<const LANES: usize>(src: Strided<'_>, width: usize, dst: &mut [f32]) {
    for (p, dst_step) in dst.chunks_exact_mut(LANES).enumerate() {
        for (l, d) in dst_step.iter_mut().enumerate() {
            *d = if l < width {
                src.data[l * src.lane_stride + p * src.k_stride]
            } else {
                0.0
            };
        }
    }
}
