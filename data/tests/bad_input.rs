//! Every kind of bad input gives its own error, and `prepare` leaves no file behind.

use std::fs;
use std::path::{Path, PathBuf};

use odeflow_data::{
    prepare, write_shard, DataError, HeaderError, PrepareConfig, Shard, ShardSet, Split, Tokenizer,
    TrainLoader, ValLoader,
};
use proptest::prelude::*;

const BYTE_VOCAB: u32 = 256;

/// Files (not folders) under `dir`, hidden ones included; empty if `dir` does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect()
}

/// A valid shard of `n` byte-level tokens.
fn good_shard(dir: &Path, n: u32) -> PathBuf {
    let tokens: Vec<u32> = (0..n).map(|i| i % BYTE_VOCAB).collect();
    write_shard(&dir.join("good.bin"), &tokens, BYTE_VOCAB).unwrap()
}

/// Runs `prepare` with the byte tokeniser into `dir/out` and returns its error.
fn prepare_error(inputs: &[PathBuf], dir: &Path) -> DataError {
    let config = PrepareConfig::new(Tokenizer::Byte);
    prepare(inputs, &dir.join("out"), &config, &mut |_| {}).unwrap_err()
}

#[test]
fn truncated_shard_is_a_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_shard(dir.path(), 100);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = Shard::open(&path, BYTE_VOCAB).err().unwrap();
    // 1024 + 100 tokens * 2 bytes = 1224 promised, 1221 present
    assert!(
        matches!(
            err,
            DataError::SizeMismatch {
                expected: 1224,
                actual: 1221,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("prepare it again"));
}

#[test]
fn shard_cut_inside_the_header_is_too_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_shard(dir.path(), 100);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..500]).unwrap();
    let err = Shard::open(&path, BYTE_VOCAB).err().unwrap();
    let expected = HeaderError::TooShort {
        len: 500,
        needed: 1024,
    };
    assert!(matches!(err, DataError::BadHeader { ref source, .. } if *source == expected));
}

#[test]
fn wrong_magic_is_a_bad_header_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_shard(dir.path(), 10);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0..4].copy_from_slice(&1234i32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let err = Shard::open(&path, BYTE_VOCAB).err().unwrap();
    let bad_magic = matches!(
        err,
        DataError::BadHeader {
            source: HeaderError::BadMagic { found: 1234, .. },
            ..
        }
    );
    assert!(bad_magic, "{err}");
    assert!(err.to_string().contains("good.bin"));
}

#[test]
fn empty_shard_file_is_too_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.bin");
    fs::write(&path, b"").unwrap();
    let err = Shard::open(&path, BYTE_VOCAB).err().unwrap();
    let expected = HeaderError::TooShort {
        len: 0,
        needed: 1024,
    };
    assert!(matches!(err, DataError::BadHeader { ref source, .. } if *source == expected));
}

#[test]
fn token_outside_the_vocab_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    // written for a vocab of 1000, then opened as a byte-level shard (V = 256)
    let mut tokens = vec![7u32; 20];
    tokens[5] = 300;
    let path = dir.path().join("wide.bin");
    let mut bytes = fs::read(write_shard(&path, &tokens, 1000).unwrap()).unwrap();
    // drop the recorded vocab (as an llm.c shard would have), so only the range check can catch it
    bytes[512..520].fill(0);
    fs::write(&path, bytes).unwrap();
    let err = Shard::open(&path, BYTE_VOCAB).err().unwrap();
    // token 5 sits at 1024 + 5 * 2 bytes
    let caught = matches!(
        err,
        DataError::TokenOutOfRange {
            offset: 1034,
            token: 300,
            vocab_size: 256,
            ..
        }
    );
    assert!(caught, "{err}");
}

#[test]
fn recorded_vocab_of_another_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_shard(dir.path(), 10);
    let err = Shard::open(&path, 50257).err().unwrap();
    assert!(matches!(
        err,
        DataError::VocabMismatch {
            recorded: 256,
            expected: 50257,
            ..
        }
    ));
}

#[test]
fn seq_len_longer_than_a_shard_fails_for_both_loaders() {
    let dir = tempfile::tempdir().unwrap();
    let path = good_shard(dir.path(), 64);
    let open = || vec![Shard::open(&path, BYTE_VOCAB).unwrap()];
    let train = TrainLoader::new(open(), 2, 64, 0).err().unwrap();
    assert!(matches!(
        train,
        DataError::WindowTooLong {
            tokens: 64,
            needed: 65,
            ..
        }
    ));
    let val = ValLoader::new(open(), 1, 100).err().unwrap();
    assert!(matches!(
        val,
        DataError::WindowTooLong {
            tokens: 64,
            needed: 101,
            ..
        }
    ));
    // exactly T + 1 tokens is one window, and enough
    assert!(TrainLoader::new(open(), 2, 63, 0).is_ok());
}

#[test]
fn non_utf8_text_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("a_good.txt");
    let bad = dir.path().join("b_latin1.txt");
    fs::write(&good, "a perfectly good first document").unwrap();
    // "caf\xe9": Latin-1 e-acute, invalid as UTF-8 at byte 3
    fs::write(&bad, b"caf\xe9").unwrap();
    let err = prepare_error(&[good, bad], dir.path());
    assert!(matches!(err, DataError::NotUtf8 { offset: 3, .. }), "{err}");
    // the first document's temporary shard must be gone too
    assert_eq!(files_in(&dir.path().join("out")), Vec::<PathBuf>::new());
}

#[test]
fn empty_text_file_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    fs::write(&empty, "").unwrap();
    let err = prepare_error(&[empty], dir.path());
    assert!(matches!(err, DataError::EmptyDocument { .. }));
    assert!(files_in(&dir.path().join("out")).is_empty());
}

#[test]
fn folder_without_text_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("notes");
    fs::create_dir(&folder).unwrap();
    fs::write(folder.join("README.md"), "markdown is not picked up").unwrap();
    let inputs = [folder];
    let err = prepare_error(&inputs, dir.path());
    assert!(matches!(err, DataError::NoTextFiles { ref path } if *path == inputs[0]));
    assert!(files_in(&dir.path().join("out")).is_empty());
}

#[test]
fn nul_byte_is_refused_by_the_byte_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("nul.txt");
    fs::write(&doc, "before\0after").unwrap();
    let err = prepare_error(&[doc], dir.path());
    assert!(matches!(err, DataError::Tokenize { .. }), "{err}");
    assert!(err.to_string().contains("offset 6"));
    assert!(files_in(&dir.path().join("out")).is_empty());
}

#[test]
fn missing_input_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [dir.path().join("nowhere.txt")];
    let err = prepare_error(&inputs, dir.path());
    assert!(matches!(err, DataError::Io { ref path, .. } if *path == inputs[0]));
}

#[test]
fn existing_shards_are_kept_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let doc = [dir.path().join("doc.txt")];
    fs::write(&doc[0], "first version of the text").unwrap();
    let out = dir.path().join("out");
    let mut config = PrepareConfig::new(Tokenizer::Byte);
    prepare(&doc, &out, &config, &mut |_| {}).unwrap();
    let before = fs::read(out.join("train_000000.bin")).unwrap();

    fs::write(&doc[0], "second, longer version of the text").unwrap();
    let err = prepare(&doc, &out, &config, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DataError::ShardsExist { .. }));
    assert_eq!(fs::read(out.join("train_000000.bin")).unwrap(), before);

    config.overwrite = true;
    prepare(&doc, &out, &config, &mut |_| {}).unwrap();
    assert_ne!(fs::read(out.join("train_000000.bin")).unwrap(), before);
}

#[test]
fn half_a_shard_set_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(
        &Split::Train.shard_path(dir.path(), 0),
        &[1, 2, 3],
        BYTE_VOCAB,
    )
    .unwrap();
    let err = ShardSet::find(dir.path(), Tokenizer::Byte).unwrap_err();
    assert!(matches!(err, DataError::IncompleteShardSet { .. }));
}

#[test]
fn bad_settings_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.txt");
    fs::write(&doc, "text").unwrap();
    let mut config = PrepareConfig::new(Tokenizer::Byte);
    config.val_fraction = 1.0;
    let err = prepare(&[doc], &dir.path().join("out"), &config, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DataError::BadConfig { .. }));
    assert!(!dir.path().join("out").exists());
}

proptest! {
    // Each case writes a file, so keep the count modest.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes, with and without a valid header in front, never make `open` panic, and it
    /// succeeds only when the size matches the header.
    #[test]
    fn random_files_never_panic(
        mut body in proptest::collection::vec(any::<u8>(), 0..3000),
        with_header in any::<bool>(),
        exact_count in any::<bool>(),
        mut count in 0i32..1500,
    ) {
        // half the headed cases promise exactly the tokens present, to reach the range check
        if exact_count {
            body.truncate(body.len() / 2 * 2);
            count = (body.len() / 2) as i32;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.bin");
        let mut bytes = Vec::new();
        if with_header {
            bytes.extend_from_slice(&20240520i32.to_le_bytes());
            bytes.extend_from_slice(&1i32.to_le_bytes());
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.resize(1024, 0);
        }
        bytes.extend_from_slice(&body);
        fs::write(&path, &bytes).unwrap();
        match Shard::open(&path, 65536) {
            Ok(shard) => {
                let width = shard.header().width.bytes() as u64;
                prop_assert_eq!(bytes.len() as u64, 1024 + shard.len() * width);
            }
            // every u16 is below 65536, so a headed file of the right size must open
            Err(err) => prop_assert!(!(with_header && exact_count), "{}", err),
        }
    }
}
