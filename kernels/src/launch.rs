//! Launch configurations: how each launcher splits its work into blocks and threads. Pure
//! arithmetic, so the CPU tests can check every configuration a launcher may pick.

use cudarc::driver::LaunchConfig;

/// Threads per block of the elementwise kernels: 8 warps, enough to hide the latency of one
/// load per thread, few enough that a small tensor still spreads over many SMs.
pub const ELEMENTWISE_BLOCK: u32 = 256;

/// The most blocks an elementwise launch uses: 132 SMs (H200) x 16 resident blocks of 256
/// threads (2048 threads per SM), rounded up. Past that, each thread's grid-stride loop takes
/// more than one element, which costs nothing and keeps the grid small for huge tensors.
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 2304;

/// CUDA's grid limits: x below 2^31, y and z at most 65535.
pub const MAX_GRID_X: usize = i32::MAX as usize;
pub const MAX_GRID_YZ: usize = 65_535;

/// The most threads a block may have.
pub const MAX_BLOCK_THREADS: u32 = 1024;

/// The most shared memory a kernel may declare statically (more needs the dynamic opt-in).
pub const MAX_STATIC_SHARED_BYTES: usize = 48 * 1024;

/// The configuration of an elementwise kernel over `n` elements, `None` when there is nothing
/// to do (a launch with an empty grid is an error in CUDA).
///
/// Grid: min(ceil(n / 256), 2304) blocks of 256 threads, no shared memory.
pub fn elementwise_config(n: usize) -> Option<LaunchConfig> {
    if n == 0 {
        return None;
    }
    let blocks = n.div_ceil(ELEMENTWISE_BLOCK as usize);
    let blocks = blocks.min(ELEMENTWISE_MAX_BLOCKS as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elementwise_grid_covers_n_or_strides_over_it() {
        assert!(elementwise_config(0).is_none());
        for n in [1, 255, 256, 257, 10_000, 589_824, 589_825, 1 << 30] {
            let cfg = elementwise_config(n).unwrap();
            let (blocks, threads) = (cfg.grid_dim.0 as usize, cfg.block_dim.0 as usize);
            assert_eq!(threads, 256);
            assert!(blocks >= 1 && blocks <= ELEMENTWISE_MAX_BLOCKS as usize);
            if n <= 589_824 {
                // one element per thread: the last block is the only partial one
                assert!(blocks * threads >= n && (blocks - 1) * threads < n, "{n}");
            } else {
                // capped: every thread loops
                assert_eq!(blocks, ELEMENTWISE_MAX_BLOCKS as usize, "{n}");
            }
        }
    }
}
