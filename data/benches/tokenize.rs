//! Tokeniser speed in bytes of text per second: `cargo bench -p odeflow-data --bench tokenize`.
//!
//! Input: Hamlet from the shipped corpus (about 190 kB of ASCII).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use odeflow_data::Tokenizer;

const TEXT: &str = "corpus/shakespeare/hamlet_gut.txt";

fn tokenize_speed(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TEXT);
    let text = std::fs::read_to_string(&path).expect("the shipped corpus is in data/corpus");
    // build GPT-2's tables outside the timing
    Tokenizer::Gpt2.encode("warm up").expect("gpt2 ranks");

    let mut group = c.benchmark_group("tokenize");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(text.len() as u64));
    for tokenizer in [Tokenizer::Gpt2, Tokenizer::Byte] {
        group.bench_function(format!("encode {tokenizer}"), |bench| {
            bench.iter(|| black_box(tokenizer.encode(black_box(&text)).expect("encodes")))
        });
    }
    group.finish();
}

criterion_group!(benches, tokenize_speed);
criterion_main!(benches);
