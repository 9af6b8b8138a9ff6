//! A meter for tensor storage: how many bytes the live buffers hold now, and the most they held
//! at once since the last reset.
//!
//! Every buffer a tensor owns is charged here when it is created and refunded when the last
//! tensor sharing it is dropped (`storage::Storage` holds the `Charge`). Views cost nothing: they
//! share a buffer. The memory experiments (adjoint vs discretise, checkpointing) read their
//! figures from here instead of guessing from shapes.
//!
//! What it does not see: scratch memory inside an op (the matmul's packing buffers, the `Vec`s a
//! kernel fills before wrapping them in a tensor) and anything that is not a tensor. The meter is
//! one process-wide pair of counters, shared by every thread: a test that reads it must not run
//! beside other tests that allocate tensors (put it in its own test binary, serialised).

use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by tensor buffers alive right now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// The most bytes held at once since the last `reset_peak` (or since the process started).
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::SeqCst)
}

/// Starts a new peak window: the peak becomes what is live now.
pub fn reset_peak() {
    PEAK.store(live_bytes(), Ordering::SeqCst);
}

/// What `f` cost in memory: the bytes it held at its peak beyond what was live when it started,
/// and the bytes it left live (its result, anything it stored) beyond that starting point.
/// Resets the peak window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Peak live bytes during `f`, minus the live bytes at its start.
    pub peak: usize,
    /// Live bytes after `f`, minus the live bytes at its start (0 if it freed more than it kept).
    pub retained: usize,
}

/// Runs `f` and reports its `Usage` alongside its result.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    let start = live_bytes();
    reset_peak();
    let result = f();
    let usage = Usage {
        peak: peak_bytes().saturating_sub(start),
        retained: live_bytes().saturating_sub(start),
    };
    (result, usage)
}

/// A buffer's entry on the meter: created with the buffer, refunds its bytes when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    bytes: usize,
}

impl Charge {
    pub(crate) fn new(bytes: usize) -> Charge {
        let now = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
        PEAK.fetch_max(now, Ordering::SeqCst);
        Charge { bytes }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        LIVE.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Asks the C allocator to keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step frees and reallocates buffers of the same sizes every step. glibc's malloc
/// serves big blocks with `mmap` and trims the top of its heap on `free`, so by default each step
/// returns its activations to the kernel and page-faults them back in (zero-filled) on the next:
/// measured on the tiny preset, about a fifth of the step (`bench/RESULTS.md`). This raises the
/// mmap threshold to its maximum (32 MiB on 64-bit; bigger blocks are still mapped, as they should
/// be) and stops trimming. Call it once at the start of a binary; a library must not change
/// process-wide settings behind its caller's back, so nothing here calls it. It does nothing on
/// platforms whose C library is not glibc. Returns whether glibc accepted both settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>: int mallopt(int param, int value)
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: the declaration is glibc's prototype, letter for letter.
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // mallopt only changes the allocator's tuning parameters; glibc documents it as safe to
        // call at any time, and it returns 0 for a value it rejects.
        // SAFETY: sound for the reasons just given.
        let mmap = unsafe { mallopt(M_MMAP_THRESHOLD, 32 << 20) };
        // SAFETY: as above; a tuning parameter, nothing is freed or moved.
        let trim = unsafe { mallopt(M_TRIM_THRESHOLD, i32::MAX) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
