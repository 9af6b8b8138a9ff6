//! The shipped corpus prepares into shards that decode back to the original text.

use std::fs;
use std::path::{Path, PathBuf};

use odeflow_data::prepare::list_documents;
use odeflow_data::{prepare, PrepareConfig, PrepareSummary, Split, Tokenizer};

/// Bytes of the 42 Shakespeare files and of Moby-Dick, as their NOTICE.md files state.
const SHAKESPEARE_BYTES: u64 = 5_057_198;
const MOBY_DICK_BYTES: u64 = 1_204_997;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// All tokens of one split, shard after shard.
fn split_tokens(summary: &PrepareSummary, split: Split) -> Vec<u32> {
    let shards = summary.shards.open(split).unwrap();
    shards.iter().flat_map(|shard| shard.to_vec()).collect()
}

/// Each document's train head followed by its val tail decodes to the file's text.
fn assert_round_trip(summary: &PrepareSummary, documents: &[PathBuf]) {
    let tokenizer = summary.shards.tokenizer;
    let eot = tokenizer.eot_token();
    let (train, val) = (
        split_tokens(summary, Split::Train),
        split_tokens(summary, Split::Val),
    );
    // both splits start with end-of-text, so the first piece of each split is empty
    let heads: Vec<&[u32]> = train.split(|&t| t == eot).skip(1).collect();
    let tails: Vec<&[u32]> = val.split(|&t| t == eot).skip(1).collect();
    assert_eq!(
        (heads.len(), tails.len()),
        (documents.len(), documents.len())
    );
    for ((path, head), tail) in documents.iter().zip(heads).zip(tails) {
        let whole: Vec<u32> = head.iter().chain(tail).copied().collect();
        let text = fs::read_to_string(path).unwrap();
        assert_eq!(
            tokenizer.decode(&whole).unwrap(),
            text,
            "{}",
            path.display()
        );
        // the tail is ceil(10%) of the document's tokens
        assert_eq!(tail.len(), (whole.len() as f64 * 0.1).ceil() as usize);
    }
}

#[test]
fn corpus_ships_with_its_notices() {
    for name in ["shakespeare", "moby-dick"] {
        assert!(corpus(name).join("NOTICE.md").is_file(), "{name}/NOTICE.md");
    }
    let works = list_documents(&[corpus("shakespeare")]).unwrap();
    assert_eq!(works.len(), 42);
}

#[test]
fn whole_corpus_byte_level() {
    let inputs = [corpus("shakespeare"), corpus("moby-dick")];
    let out = tempfile::tempdir().unwrap();
    let config = PrepareConfig::new(Tokenizer::Byte);
    let mut reported = 0;
    let summary = prepare(&inputs, out.path(), &config, &mut |_| reported += 1).unwrap();
    assert_eq!((summary.documents, reported), (43, 43));
    assert_eq!(summary.bytes, SHAKESPEARE_BYTES + MOBY_DICK_BYTES);
    assert_eq!(summary.train_tokens + summary.val_tokens, summary.bytes);
    assert_round_trip(&summary, &list_documents(&inputs).unwrap());

    // and the loaders run on it
    let mut train = summary.shards.train_loader(4, 256, 1).unwrap();
    assert!(train.next_batch().inputs.iter().all(|&t| t < 256));
    let val = summary.shards.val_loader(8, 256).unwrap();
    // ~626k val tokens / 256 per window / 8 per batch, less the dropped ends
    assert!(
        (300..=306).contains(&val.num_batches()),
        "{}",
        val.num_batches()
    );
}

/// The one GPT-2 pass over a large text in the suite (about a second in release mode).
#[test]
fn shakespeare_gpt2() {
    let inputs = [corpus("shakespeare")];
    let out = tempfile::tempdir().unwrap();
    let config = PrepareConfig::new(Tokenizer::Gpt2);
    let summary = prepare(&inputs, out.path(), &config, &mut |_| {}).unwrap();
    let tokens = summary.train_tokens + summary.val_tokens;
    // NOTICE.md: "about 1.57 M GPT-2 tokens"
    assert!((1_500_000..1_650_000).contains(&tokens), "{tokens}");
    assert!((3.0..3.5).contains(&summary.bytes_per_token()));
    assert_round_trip(&summary, &list_documents(&inputs).unwrap());
}
