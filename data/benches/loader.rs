//! Loader throughput in tokens per second: `cargo bench -p odeflow-data --bench loader`.
//!
//! A synthetic GPT-2-sized shard (u16 tokens) of 16 M tokens, larger than the caches, so each
//! window is a fresh read from the memory map as in training.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use odeflow_data::{write_shard, Batch, Shard, TrainLoader, ValLoader};

const SHARD_TOKENS: u32 = 16 << 20;
const GPT2_VOCAB: u32 = 50257;
/// (B, T) pairs: a small CPU run and a GPT-2-small sized one.
const SHAPES: [(usize, usize); 2] = [(8, 256), (16, 1024)];

fn loader_throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.bin");
    // a multiplicative walk through the vocabulary: every token id, no pattern the CPU can use
    let tokens: Vec<u32> = (0..SHARD_TOKENS)
        .map(|i| i.wrapping_mul(2_654_435_761) % GPT2_VOCAB)
        .collect();
    write_shard(&path, &tokens, GPT2_VOCAB).expect("write bench shard");
    let open = || vec![Shard::open(&path, GPT2_VOCAB).expect("open bench shard")];

    let mut group = c.benchmark_group("loader");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (b, t) in SHAPES {
        group.throughput(Throughput::Elements((b * t) as u64));
        let mut train = TrainLoader::new(open(), b, t, 0).expect("train loader");
        let mut batch = Batch::zeros(b, t);
        group.bench_function(format!("train B={b} T={t}"), |bench| {
            bench.iter(|| {
                train.next_batch_into(&mut batch);
                black_box(&batch);
            })
        });
        let mut val = ValLoader::new(open(), b, t).expect("val loader");
        group.bench_function(format!("val B={b} T={t}"), |bench| {
            bench.iter(|| match val.next_batch() {
                Some(batch) => black_box(batch),
                None => {
                    val.reset();
                    black_box(val.next_batch().expect("a pass has a batch"))
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, loader_throughput);
criterion_main!(benches);
