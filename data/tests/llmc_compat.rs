//! Shards cross between llm.c and odeflow in both directions.

use std::fs;

use odeflow_data::{write_shard, Shard, TrainLoader};

/// What llm.c's `write_datafile` produces for GPT-2 tokens: 256 i32 slots of which only magic,
/// version and count are set, then the tokens as little-endian u16.
fn llmc_gpt2_file(tokens: &[u16]) -> Vec<u8> {
    let mut slots = [0i32; 256];
    (slots[0], slots[1], slots[2]) = (20240520, 1, tokens.len() as i32);
    let mut bytes: Vec<u8> = slots.iter().flat_map(|s| s.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    bytes
}

#[test]
fn an_llmc_shard_loads_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny_shakespeare_val.bin");
    let tokens: Vec<u16> = (0..300).map(|i| (i * 163 % 50257) as u16).collect();
    fs::write(&path, llmc_gpt2_file(&tokens)).unwrap();

    let shard = Shard::open(&path, 50257).unwrap();
    assert_eq!(shard.header().vocab_size, None);
    let expected: Vec<u32> = tokens.iter().map(|&t| u32::from(t)).collect();
    assert_eq!(shard.to_vec(), expected);
    let mut loader = TrainLoader::new(vec![shard], 2, 64, 0).unwrap();
    assert_eq!(loader.next_batch().inputs.len(), 128);
}

#[test]
fn our_shard_passes_llmcs_checks() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..300).map(|i| i * 163 % 50257).collect();
    let path = write_shard(&dir.path().join("ours.bin"), &tokens, 50257).unwrap();
    let bytes = fs::read(path).unwrap();
    let slot = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    // llm.c's dataloader: magic, version, then file size == 1024 + ntok * sizeof(uint16_t)
    assert_eq!((slot(0), slot(1), slot(2)), (20240520, 1, 300));
    assert_eq!(bytes.len(), 1024 + 300 * 2);
    let llmc_view: Vec<u8> = llmc_gpt2_file(&tokens.iter().map(|&t| t as u16).collect::<Vec<_>>());
    // identical to llm.c's own file except for our two extension slots (128-129)
    assert_eq!(bytes[..512], llmc_view[..512]);
    assert_eq!(bytes[520..], llmc_view[520..]);
}
