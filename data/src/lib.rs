//! # odeflow-data: tokenisation and token shards
//!
//! This crate will hold the tokenisers (GPT-2 BPE and byte-level), the memory-mapped `.bin`
//! shard format shared with llm.c, the `prepare` binary that turns text into shards, and a
//! seeded, resumable batch loader. It does not depend on the tensor runtime.
