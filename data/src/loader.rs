//! Batches of token windows: random ones for training, a sequential pass for validation.
//!
//! A window is T + 1 consecutive tokens of one shard; its first T are the inputs and its last T
//! the targets (each target is the token after its input). Windows never cross shards; they may
//! cross documents, whose boundaries the end-of-text token marks.
//!
//! # Training: random windows, reproducible from (seed, position)
//! The k-th window drawn is fixed by the seed and k alone: `rng::draw(seed, k)` picks one of the
//! M valid window starts of all shards together (shard i has N_i - T of them), uniformly, so a
//! shard is sampled in proportion to its size. Batch b holds windows bB .. bB + B - 1.
//!
//! The loader's whole state is therefore [`LoaderState`] `{ seed, windows_drawn }`: checkpoint
//! it, and `resume` gives exactly the batches an uninterrupted run would have seen next, with
//! no RNG state to save. Sampling is with replacement: after drawing M windows about
//! 1 - 1/e = 63% of the starts have been used, which is how "one epoch" should be read.
//!
//! # Validation: every window once, in order
//! Shard by shard, windows start at 0, T, 2T, ... (consecutive windows share one token, the last
//! target of one being the first input of the next), and are grouped B to a batch. So that
//! every batch has the same shape, the pass leaves out the last < T + 1 tokens of each shard and
//! the last < B windows of the split.

use crate::error::{DataError, Result};
use crate::rng;
use crate::shard::Shard;

/// B windows of T tokens, row-major.
///
/// Shapes: `inputs [B*T]`, `targets [B*T]`; row b is `inputs[b*T..(b+1)*T]`, and
/// `targets[i]` is the token that follows `inputs[i]` in the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    /// A batch of zeros, to fill with `next_batch_into`.
    pub fn zeros(batch: usize, seq_len: usize) -> Self {
        let (inputs, targets) = (vec![0; batch * seq_len], vec![0; batch * seq_len]);
        Batch {
            batch,
            seq_len,
            inputs,
            targets,
        }
    }

    /// Sets the shape, keeping the buffers when they already fit.
    fn reshape(&mut self, batch: usize, seq_len: usize) {
        (self.batch, self.seq_len) = (batch, seq_len);
        self.inputs.resize(batch * seq_len, 0);
        self.targets.resize(batch * seq_len, 0);
    }

    /// Fills row `row` from the window of T + 1 tokens at `start` in `shard`.
    fn fill_row(&mut self, row: usize, shard: &Shard, start: u64) {
        let t = self.seq_len;
        let rows = row * t..(row + 1) * t;
        // inputs are tokens start .. start+T, targets the same shifted by one
        shard.read_into(start as usize, &mut self.inputs[rows.clone()]);
        shard.read_into(start as usize + 1, &mut self.targets[rows]);
    }
}

/// Everything needed to resume a [`TrainLoader`]: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderState {
    pub seed: u64,
    /// Windows handed out so far (B per batch): the index of the next window to draw.
    pub windows_drawn: u64,
}

impl LoaderState {
    /// Size of `to_bytes`.
    pub const BYTES: usize = 16;

    /// Seed then windows drawn, both little-endian u64.
    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut bytes = [0; Self::BYTES];
        bytes[..8].copy_from_slice(&self.seed.to_le_bytes());
        bytes[8..].copy_from_slice(&self.windows_drawn.to_le_bytes());
        bytes
    }

    pub fn from_bytes(bytes: [u8; Self::BYTES]) -> Self {
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        LoaderState {
            seed: word(0),
            windows_drawn: word(8),
        }
    }
}

/// Random training windows from many shards; see the module doc.
pub struct TrainLoader {
    shards: Vec<Shard>,
    /// `starts_before[i]`: valid window starts in shards 0..i; the last entry is M, the total.
    starts_before: Vec<u64>,
    batch: usize,
    seq_len: usize,
    state: LoaderState,
}

impl TrainLoader {
    /// A loader of `batch` windows of `seq_len` + 1 tokens, drawn with `seed`. Every shard must
    /// hold at least `seq_len` + 1 tokens.
    pub fn new(shards: Vec<Shard>, batch: usize, seq_len: usize, seed: u64) -> Result<Self> {
        check_shape(&shards, batch, seq_len)?;
        // shard i has N_i - T window starts (checked: N_i >= T + 1)
        let starts_before = cumulative(shards.iter().map(|s| s.len() - seq_len as u64));
        let state = LoaderState {
            seed,
            windows_drawn: 0,
        };
        Ok(TrainLoader {
            shards,
            starts_before,
            batch,
            seq_len,
            state,
        })
    }

    /// The next batch. Shapes: `inputs [B*T]`, `targets [B*T]`.
    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::zeros(self.batch, self.seq_len);
        self.next_batch_into(&mut batch);
        batch
    }

    /// The next batch, written into `out` (reshaped to B x T if needed) to avoid allocating.
    pub fn next_batch_into(&mut self, out: &mut Batch) {
        out.reshape(self.batch, self.seq_len);
        for row in 0..self.batch {
            let (shard, start) = self.window(self.state.windows_drawn + row as u64);
            out.fill_row(row, &self.shards[shard], start);
        }
        self.state.windows_drawn += self.batch as u64;
    }

    /// Where window `index` starts: (shard, token offset). A pure function of seed and index.
    pub fn window(&self, index: u64) -> (usize, u64) {
        let total = *self.starts_before.last().expect("starts at [0]");
        let r = rng::below(rng::draw(self.state.seed, index), total);
        locate(&self.starts_before, r)
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from `state`, as saved by `state()` (possibly by another process). The state
    /// does not record the shards or T: resume with the same ones, or the windows differ.
    pub fn resume(&mut self, state: LoaderState) {
        self.state = state;
    }

    /// Tokens in all shards.
    pub fn total_tokens(&self) -> u64 {
        self.shards.iter().map(Shard::len).sum()
    }
}

/// A sequential pass over validation shards; see the module doc.
pub struct ValLoader {
    shards: Vec<Shard>,
    /// `windows_before[i]`: windows in shards 0..i; the last entry is the total.
    windows_before: Vec<u64>,
    batch: usize,
    seq_len: usize,
    next_window: u64,
}

impl ValLoader {
    /// A pass in batches of `batch` windows of `seq_len` + 1 tokens. Fails if a shard is shorter
    /// than one window or all shards together hold fewer than `batch` windows.
    pub fn new(shards: Vec<Shard>, batch: usize, seq_len: usize) -> Result<Self> {
        check_shape(&shards, batch, seq_len)?;
        // starts 0, T, 2T, ... while start + T + 1 <= N: (N - 1) / T of them
        let windows_before = cumulative(shards.iter().map(|s| (s.len() - 1) / seq_len as u64));
        let windows = *windows_before.last().expect("starts at [0]");
        if windows < batch as u64 {
            return Err(DataError::ValTooSmall { windows, batch });
        }
        Ok(ValLoader {
            shards,
            windows_before,
            batch,
            seq_len,
            next_window: 0,
        })
    }

    /// Batches in one pass.
    pub fn num_batches(&self) -> usize {
        (self.windows_before.last().expect("starts at [0]") / self.batch as u64) as usize
    }

    /// The next batch of the pass, or `None` when it is over (then `reset` starts again).
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.next_window / self.batch as u64 >= self.num_batches() as u64 {
            return None;
        }
        let mut batch = Batch::zeros(self.batch, self.seq_len);
        for row in 0..self.batch {
            let (shard, window) = locate(&self.windows_before, self.next_window + row as u64);
            let start = window * self.seq_len as u64;
            batch.fill_row(row, &self.shards[shard], start);
        }
        self.next_window += self.batch as u64;
        Some(batch)
    }

    /// Back to the first batch.
    pub fn reset(&mut self) {
        self.next_window = 0;
    }
}

/// Running totals with a leading zero: [a, b, c] gives [0, a, a + b, a + b + c].
fn cumulative(counts: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut totals = vec![0];
    for count in counts {
        totals.push(totals[totals.len() - 1] + count);
    }
    totals
}

/// For `before` from `cumulative` and `index` below its last entry: the i with
/// before[i] <= index < before[i + 1], and the position inside that range.
fn locate(before: &[u64], index: u64) -> (usize, u64) {
    let i = before.partition_point(|&b| b <= index) - 1;
    (i, index - before[i])
}

/// Shared checks: some shards, positive B and T, and every shard at least T + 1 tokens long.
fn check_shape(shards: &[Shard], batch: usize, seq_len: usize) -> Result<()> {
    if shards.is_empty() {
        return Err(DataError::NoShards);
    }
    if batch == 0 || seq_len == 0 {
        let what = format!("batch {batch} and sequence length {seq_len} must be positive");
        return Err(DataError::BadConfig { what });
    }
    let needed = seq_len as u64 + 1;
    match shards.iter().find(|shard| shard.len() < needed) {
        Some(shard) => Err(DataError::WindowTooLong {
            path: shard.path().to_path_buf(),
            tokens: shard.len(),
            needed,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::write_shard;
    use std::path::Path;

    /// Shards whose token at offset i is (base + i) % vocab, so a window's tokens say where it
    /// came from.
    fn counting_shards(dir: &Path, lens: &[u32]) -> Vec<Shard> {
        let vocab = 60_000;
        let mut shards = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let path = dir.join(format!("s{i}.bin"));
            let base = 10_000 * i as u32;
            let tokens: Vec<u32> = (0..len).map(|t| (base + t) % vocab).collect();
            write_shard(&path, &tokens, vocab).unwrap();
            shards.push(Shard::open(&path, vocab).unwrap());
        }
        shards
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut loader =
            TrainLoader::new(counting_shards(dir.path(), &[500, 300]), 4, 16, 1).unwrap();
        let batch = loader.next_batch();
        for row in 0..4 {
            let inputs = &batch.inputs[row * 16..(row + 1) * 16];
            let targets = &batch.targets[row * 16..(row + 1) * 16];
            for t in 0..16 {
                assert_eq!(targets[t], inputs[t] + 1, "row {row} position {t}");
            }
        }
    }

    #[test]
    fn windows_stay_inside_their_shard_and_reach_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let shards = counting_shards(dir.path(), &[40, 25]);
        let loader = TrainLoader::new(shards, 1, 8, 3).unwrap();
        let mut seen = [vec![false; 32], vec![false; 17]];
        for k in 0..5000 {
            let (shard, start) = loader.window(k);
            // shard 0 has 40 - 8 = 32 starts, shard 1 has 25 - 8 = 17
            assert!(start + 9 <= [40, 25][shard]);
            seen[shard][start as usize] = true;
        }
        assert!(
            seen.iter().flatten().all(|&s| s),
            "every start is drawn in 5000 tries"
        );
    }

    #[test]
    fn resuming_gives_the_batches_of_an_uninterrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut straight =
            TrainLoader::new(counting_shards(dir.path(), &[700]), 3, 10, 42).unwrap();
        let expected: Vec<Batch> = (0..6).map(|_| straight.next_batch()).collect();

        let mut first = TrainLoader::new(counting_shards(dir.path(), &[700]), 3, 10, 42).unwrap();
        let mut got: Vec<Batch> = (0..2).map(|_| first.next_batch()).collect();
        let saved = LoaderState::from_bytes(first.state().to_bytes());
        drop(first);
        // a fresh loader with another seed: resume must override it
        let mut second = TrainLoader::new(counting_shards(dir.path(), &[700]), 3, 10, 7).unwrap();
        second.resume(saved);
        got.extend((0..4).map(|_| second.next_batch()));
        assert_eq!(got, expected);
    }

    #[test]
    fn seeds_change_the_windows() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = TrainLoader::new(counting_shards(dir.path(), &[900]), 4, 8, 1).unwrap();
        let mut b = TrainLoader::new(counting_shards(dir.path(), &[900]), 4, 8, 2).unwrap();
        assert_ne!(a.next_batch(), b.next_batch());
    }

    #[test]
    fn val_pass_walks_every_shard_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // shard 0: (21 - 1) / 5 = 4 windows; shard 1: (12 - 1) / 5 = 2 windows; 6 in all
        let mut val = ValLoader::new(counting_shards(dir.path(), &[21, 12]), 2, 5).unwrap();
        assert_eq!(val.num_batches(), 3);
        let firsts: Vec<u32> = std::iter::from_fn(|| val.next_batch())
            .flat_map(|b| vec![b.inputs[0], b.inputs[5]])
            .collect();
        assert_eq!(firsts, [0, 5, 10, 15, 10_000, 10_005]);
        val.reset();
        assert_eq!(val.next_batch().unwrap().targets[..5], [1, 2, 3, 4, 5]);
    }

    #[test]
    fn val_needs_one_full_batch() {
        let dir = tempfile::tempdir().unwrap();
        let err = ValLoader::new(counting_shards(dir.path(), &[21]), 5, 5)
            .err()
            .unwrap();
        assert!(matches!(
            err,
            DataError::ValTooSmall {
                windows: 4,
                batch: 5
            }
        ));
    }

    #[test]
    fn locate_finds_the_range_and_skips_empty_ones() {
        let before = cumulative([3, 0, 2].into_iter());
        assert_eq!(before, [0, 3, 3, 5]);
        assert_eq!(locate(&before, 0), (0, 0));
        assert_eq!(locate(&before, 2), (0, 2));
        // range 1 is empty, so index 3 is the first of range 2
        assert_eq!(locate(&before, 3), (2, 0));
        assert_eq!(locate(&before, 4), (2, 1));
    }

    #[test]
    fn state_bytes_round_trip() {
        let state = LoaderState {
            seed: u64::MAX - 3,
            windows_drawn: 123_456_789,
        };
        assert_eq!(LoaderState::from_bytes(state.to_bytes()), state);
    }
}
