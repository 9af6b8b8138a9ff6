//! # odeflow-data: tokenisation and token shards
//!
//! Text becomes training batches in three steps, one module each:
//!
//! 1. [`tokenizer`]: text to token ids, byte-level (V = 256) or GPT-2 BPE (V = 50257).
//! 2. [`mod@prepare`]: a folder of documents to train/val shards on disk, each split holding the
//!    held-out tail of every document; [`ensure_shards`] does it once, on first use.
//! 3. [`loader`]: shards to batches of B windows of T + 1 tokens; random, seeded and resumable
//!    for training ([`TrainLoader`]), sequential for validation ([`ValLoader`]).
//!
//! Shards use llm.c's `.bin` format ([`header`] has the byte layout, [`shard`] the reading and
//! the all-or-nothing writing), so shards from that ecosystem load here and ours load there.
//! `docs/03-data.md` walks through all of it with the measured speeds.
//!
//! The crate never prints; the `prepare` binary (`src/bin/prepare.rs`) does the talking.

pub mod error;
pub mod header;
pub mod loader;
pub mod prepare;
mod rng;
pub mod shard;
pub mod tokenizer;

pub use error::{DataError, HeaderError, Result, TokenizeError};
pub use header::{ShardHeader, TokenWidth};
pub use loader::{Batch, LoaderState, TrainLoader, ValLoader};
pub use prepare::{
    ensure_shards, prepare, DocumentReport, PrepareConfig, PrepareSummary, ShardSet, Split,
};
pub use shard::{write_shard, Shard, ShardWriter, WrittenShard};
pub use tokenizer::Tokenizer;
