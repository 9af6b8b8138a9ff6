//! The blocked loops around the micro-kernel (see the module doc), and their split over threads.
//!
//! One *pass* is one (jc, pc) iteration: B[pc.., jc..] is packed once into a block shared by all
//! threads, then the pass's part of C is cut into rectangles, one per thread (a task). Each task
//! packs its own A blocks into a thread-local buffer and runs the macro-kernel over them.

use std::ops::Range;

use rayon::prelude::*;

use super::kernel::{Kernel, KernelSpec, MAX_TILE};
use super::pack::{with_buffer, PACK_A, PACK_B};
use super::{zero_c, MatRef};

/// L1 data cache per core: 32 KiB on the development machine (AMD EPYC Zen 2), as on most
/// x86-64 cores of the last decade.
const L1_BYTES: usize = 32 * 1024;

/// Rows of a packed A block. MC x KC x 4 B = 144 KiB with the AVX2 kernel's KC, about a quarter
/// of the 512 KiB L2 per core: the block stays in L2 while the B panels flow through, with room
/// to spare for them and for C. A multiple of every MR (4, 6, 12).
const MC: usize = 144;

/// Columns of a packed B block. KC x NC x 4 B = 4 MiB with the AVX2 kernel, a quarter of the
/// 16 MiB L3 that both cores share (and read the block from). A multiple of every NR (8, 16,
/// 32). The model's matrices have n <= 3072, so B is packed once per pass.
const NC: usize = 4096;

/// Cache block sizes of the blocked loops, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Blocking {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

impl Blocking {
    /// The block sizes for a kernel. KC, the depth of a pass along k, makes a packed B panel
    /// (KC x NR floats) fill half of L1, where it stays while the A panels (KC x MR floats)
    /// stream past it: KC = 256 for the AVX2 kernel (a 16 KiB panel), 128 for AVX-512, 512 for
    /// the scalar one. A larger KC would also mean fewer passes over C, but would push the B
    /// panel out of L1. Measured on Zen 2, KC from 192 to 512 and MC from 72 to 240 are all
    /// within a few percent of each other.
    pub fn for_kernel(kernel: Kernel) -> Blocking {
        let kc = L1_BYTES / 2 / (kernel.spec().nr * std::mem::size_of::<f32>());
        Blocking { kc, mc: MC, nc: NC }
    }

    /// MC rounded up to whole MR-row panels and NC to whole NR-column panels, so only the matrix
    /// edge (never a block edge) produces a partial tile.
    fn fitted_to(self, spec: KernelSpec) -> Blocking {
        let mc = self.mc.next_multiple_of(spec.mr);
        let nc = self.nc.next_multiple_of(spec.nr);
        Blocking { mc, nc, ..self }
    }
}

/// C = A B or C += A B through packed panels and the micro-kernel `kernel`.
///
/// Shapes: as `gemm`; the caller has checked the arguments (`assert_gemm_args`).
/// `threads > 1` splits each pass over the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_packed(
    kernel: Kernel,
    blocking: Blocking,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    let spec = kernel.spec();
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            zero_c(c, m, n, ldc);
        }
        return;
    }
    let blocking = blocking.fitted_to(spec);
    let b_len = blocking.kc.min(k) * blocking.nc.min(n.next_multiple_of(spec.nr));
    let out = COut::new(c, ldc);
    with_buffer(&PACK_B, b_len, |packed_b| {
        for jc in (0..n).step_by(blocking.nc) {
            for pc in (0..k).step_by(blocking.kc) {
                let ks = pc..k.min(pc + blocking.kc);
                let cols = jc..n.min(jc + blocking.nc);
                pack_b_block(spec, b, ks.clone(), cols.clone(), packed_b, threads);
                let pass = Pass {
                    spec,
                    mc: blocking.mc,
                    a,
                    ks,
                    cols,
                    packed_b,
                    accumulate: accumulate || pc > 0,
                };
                pass.run(out, threads);
            }
        }
    });
}

/// Packs B[ks, cols] into NR-column panels; with `threads > 1` each thread packs a contiguous
/// group of panels.
///
/// Shapes: packed_b starts with [ceil(cols.len() / NR), ks.len(), NR].
fn pack_b_block(
    spec: KernelSpec,
    b: MatRef<'_>,
    ks: Range<usize>,
    cols: Range<usize>,
    packed_b: &mut [f32],
    threads: usize,
) {
    let nr = spec.nr;
    let panel_len = ks.len() * nr;
    let panels = cols.len().div_ceil(nr);
    let dst = &mut packed_b[..panels * panel_len];
    if threads == 1 {
        (spec.pack_b)(b, ks, cols, dst);
        return;
    }
    let group_panels = panels.div_ceil(threads);
    let groups = dst.par_chunks_mut(group_panels * panel_len).enumerate();
    groups.for_each(|(g, group)| {
        let col0 = cols.start + g * group_panels * nr;
        let group_cols = col0..cols.end.min(col0 + group_panels * nr);
        (spec.pack_b)(b, ks.clone(), group_cols, group);
    });
}

/// One (jc, pc) iteration of the blocked loops: C[:, cols] (+)= A[:, ks] B[ks, cols].
struct Pass<'a> {
    spec: KernelSpec,
    mc: usize,
    a: MatRef<'a>,
    ks: Range<usize>,
    cols: Range<usize>,
    /// Shapes: [ceil(cols.len() / NR), ks.len(), NR], packed by `pack_b_block`.
    packed_b: &'a [f32],
    /// False only in the first pass along k of a C = A B product.
    accumulate: bool,
}

impl Pass<'_> {
    /// Runs the pass, cut into at most `threads` tasks that run on the rayon pool.
    fn run(&self, out: COut, threads: usize) {
        let m_panels = self.a.rows.div_ceil(self.spec.mr);
        let n_panels = self.cols.len().div_ceil(self.spec.nr);
        let tasks = split_tasks(m_panels, n_panels, threads);
        if tasks.len() == 1 {
            self.run_task(&tasks[0], out);
        } else {
            tasks.par_iter().for_each(|task| self.run_task(task, out));
        }
    }

    /// One task: for each MC-row block of the task's rows, pack A, then sweep the task's columns.
    fn run_task(&self, task: &Task, out: COut) {
        let (mr, kc) = (self.spec.mr, self.ks.len());
        let rows = task.row_panels.start * mr..self.a.rows.min(task.row_panels.end * mr);
        with_buffer(&PACK_A, self.mc * kc, |packed_a| {
            for ic in rows.clone().step_by(self.mc) {
                let block = ic..rows.end.min(ic + self.mc);
                let packed_a = &mut packed_a[..block.len().div_ceil(mr) * mr * kc];
                (self.spec.pack_a)(self.a, block.clone(), self.ks.clone(), packed_a);
                self.macro_kernel(packed_a, block, task.col_panels.clone(), out);
            }
        });
    }

    /// C[rows, column panels] (+)= packed A block x packed B panels: the jr and ir loops. The
    /// B panel is the outer loop so it stays in L1 while every A panel of the block meets it.
    ///
    /// Shapes: packed_a [ceil(rows.len() / MR), kc, MR].
    fn macro_kernel(
        &self,
        packed_a: &[f32],
        rows: Range<usize>,
        col_panels: Range<usize>,
        out: COut,
    ) {
        let (mr, nr, kc) = (self.spec.mr, self.spec.nr, self.ks.len());
        for q in col_panels {
            let b_panel = &self.packed_b[q * kc * nr..(q + 1) * kc * nr];
            let col = self.cols.start + q * nr;
            let width = nr.min(self.cols.end - col);
            for (r, a_panel) in packed_a.chunks_exact(kc * mr).enumerate() {
                let row = rows.start + r * mr;
                let tile = Tile {
                    row,
                    col,
                    height: mr.min(rows.end - row),
                    width,
                };
                // SAFETY: the tile lies inside C (rows < m, columns < n) and inside this task's
                // rectangle, which no other task touches (split_tasks); spec came from
                // Kernel::spec, which checked the CPU; the panels have kc * MR and kc * NR floats.
                unsafe { out.run_tile(self.spec, a_panel, b_panel, tile, self.accumulate) };
            }
        }
    }
}

/// Where one micro-kernel call lands in C: rows row..row + height, columns col..col + width.
#[derive(Clone, Copy)]
struct Tile {
    row: usize,
    col: usize,
    height: usize,
    width: usize,
}

/// C as a raw pointer with its leading dimension, so that tasks on different threads can each
/// write their own tiles.
#[derive(Clone, Copy)]
struct COut {
    ptr: *mut f32,
    ldc: usize,
}

// SAFETY: a COut is only used by `gemm_packed` while it holds the `&mut [f32]` the pointer came
// from, and only to write tiles of the task that owns them; tasks own disjoint rectangles of C.
unsafe impl Send for COut {}
// SAFETY: as for Send: threads sharing a COut write disjoint tiles.
unsafe impl Sync for COut {}

impl COut {
    /// Shapes: c [m, n] with leading dimension ldc.
    fn new(c: &mut [f32], ldc: usize) -> COut {
        COut {
            ptr: c.as_mut_ptr(),
            ldc,
        }
    }

    /// Runs the micro-kernel on one tile. A full tile is written in place; a tile cut by the edge
    /// of C is computed into a scratch tile, whose valid part is then copied (or added).
    ///
    /// # Safety
    /// The tile lies inside C and no other thread reads or writes it during the call; `spec` is
    /// available on this CPU; `a_panel` has kc * MR floats and `b_panel` kc * NR.
    unsafe fn run_tile(
        self,
        spec: KernelSpec,
        a_panel: &[f32],
        b_panel: &[f32],
        tile: Tile,
        accumulate: bool,
    ) {
        // SAFETY: (row, col) is an element of C, by the caller's contract.
        let c = unsafe { self.ptr.add(tile.row * self.ldc + tile.col) };
        if tile.height == spec.mr && tile.width == spec.nr {
            // SAFETY: a full MR x NR tile of C, ours alone; the rest is the caller's contract.
            unsafe { (spec.run)(a_panel, b_panel, c, self.ldc, accumulate) };
            return;
        }
        let mut scratch = [0.0f32; MAX_TILE];
        // SAFETY: scratch holds MAX_TILE >= MR * NR floats: an MR x NR tile with row stride NR.
        unsafe { (spec.run)(a_panel, b_panel, scratch.as_mut_ptr(), spec.nr, false) };
        for (i, s_row) in scratch.chunks_exact(spec.nr).take(tile.height).enumerate() {
            // SAFETY: row i of the tile's valid part lies in C and is ours alone (see above).
            let c_row = unsafe { std::slice::from_raw_parts_mut(c.add(i * self.ldc), tile.width) };
            for (c_ij, &s) in c_row.iter_mut().zip(s_row) {
                *c_ij = if accumulate { *c_ij + s } else { s };
            }
        }
    }
}

/// Rows of a task win over columns unless columns balance the threads this much better: with a
/// column split every thread packs the same rows of A, and reuses each A block over fewer columns.
const ROW_SPLIT_PREFERENCE: f64 = 0.05;

/// The rectangle of C that one thread computes in a pass, in whole MR x NR tiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Task {
    pub row_panels: Range<usize>,
    pub col_panels: Range<usize>,
}

/// Cuts an m_panels x n_panels grid of tiles into at most `threads` tasks along one axis: rows
/// (each thread keeps its own A rows in its own L2) unless columns balance clearly better.
pub(super) fn split_tasks(m_panels: usize, n_panels: usize, threads: usize) -> Vec<Task> {
    let by_rows = balance(m_panels, threads) + ROW_SPLIT_PREFERENCE >= balance(n_panels, threads);
    if by_rows {
        let tasks = even_parts(m_panels, threads);
        tasks
            .map(|rows| Task {
                row_panels: rows,
                col_panels: 0..n_panels,
            })
            .collect()
    } else {
        let tasks = even_parts(n_panels, threads);
        tasks
            .map(|cols| Task {
                row_panels: 0..m_panels,
                col_panels: cols,
            })
            .collect()
    }
}

/// The fraction of a perfect speed-up when `units` equal pieces of work are shared by `threads`
/// threads as evenly as possible (the busiest thread gets ceil(units / threads)).
fn balance(units: usize, threads: usize) -> f64 {
    units as f64 / (units.div_ceil(threads) * threads) as f64
}

/// 0..units cut into min(parts, units) contiguous ranges (at least one) whose lengths differ by
/// at most one.
fn even_parts(units: usize, parts: usize) -> impl Iterator<Item = Range<usize>> {
    let parts = parts.min(units).max(1);
    (0..parts).map(move |i| i * units / parts..(i + 1) * units / parts)
}
