//! From text files to train/val shards.
//!
//! # Documents
//! Each input is a file or a folder. A file is one document whatever its name; a folder
//! contributes every `*.txt` file under it (recursively, names starting with `.` skipped), in
//! sorted path order, so the same folder always gives the same shards. Documents must be
//! non-empty UTF-8.
//!
//! # Layout
//! Every document is tokenised on its own and preceded by the end-of-text token, so a window
//! that crosses into a new document sees the boundary, and the model learns what a beginning
//! looks like (GPT-2's training data was laid out the same way):
//!
//! ```text
//! train: EOT head(doc 1) EOT head(doc 2) ...      val: EOT tail(doc 1) EOT tail(doc 2) ...
//! ```
//!
//! # Split: the held-out tail of every document
//! The last `ceil(val_fraction * n)` of a document's n tokens go to val, the rest to train. We
//! hold out a tail of every document rather than whole documents because:
//! - it works for a corpus of one document (Moby-Dick alone still gets a validation set);
//! - val then mixes all works in the same proportion as train; holding out four of the 42
//!   Shakespeare works instead would make the val loss depend on which four (the Sonnets and
//!   a history play are very different texts);
//! - it depends only on each document, never on file order or count.
//!
//! The cost: val text is unseen but its works are not (names and plots of the last act were
//! met in the first four), so val loss measures generalisation within a work, not to new works.
//!
//! # Shards and atomicity
//! Each split becomes `train_000000.bin`, `train_000001.bin`, ... of at most `shard_tokens`
//! tokens (one shard each for the shipped corpus). Every shard is written under a hidden
//! temporary name, and all of them are renamed into place only after the last document was
//! read: an error anywhere (a bad file, a full disk) leaves `out_dir` without new shards.
//! Two gaps remain, both rare: a process killed outright (no destructors run) can leave a
//! hidden `.train_000000.bin.tmp`, which nothing reads and the next run overwrites; and with
//! `overwrite`, the old shards are deleted just before the new ones are renamed in, so a
//! failing rename at that moment (it needs the disk to vanish) would leave neither.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::loader::{TrainLoader, ValLoader};
use crate::shard::{peek_header, Shard, ShardWriter, WrittenShard};
use crate::tokenizer::Tokenizer;

/// Tokens per shard unless told otherwise: llm.c's choice for FineWeb (200 MB of u16).
pub const DEFAULT_SHARD_TOKENS: u64 = 100_000_000;
/// Share of each document held out for validation unless told otherwise.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;
/// Extension of the files a folder contributes.
const TEXT_EXTENSION: &str = "txt";
const SHARD_EXTENSION: &str = "bin";

/// The two splits, and the file-name prefix of their shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }

    /// `dir/train_000003.bin` for index 3.
    pub fn shard_path(self, dir: &Path, index: usize) -> PathBuf {
        dir.join(format!("{}_{index:06}.{SHARD_EXTENSION}", self.name()))
    }

    fn owns(self, file_name: &str) -> bool {
        let prefix = format!("{}_", self.name());
        let suffix = format!(".{SHARD_EXTENSION}");
        file_name.starts_with(&prefix) && file_name.ends_with(&suffix)
    }
}

/// How to prepare shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrepareConfig {
    pub tokenizer: Tokenizer,
    /// Share of each document's tokens held out for validation, in (0, 1).
    pub val_fraction: f64,
    /// At most this many tokens per shard file.
    pub shard_tokens: u64,
    /// Replace shards already in the output folder instead of refusing.
    pub overwrite: bool,
}

impl PrepareConfig {
    pub fn new(tokenizer: Tokenizer) -> Self {
        PrepareConfig {
            tokenizer,
            val_fraction: DEFAULT_VAL_FRACTION,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            overwrite: false,
        }
    }

    /// Checks the settings; `prepare` calls this before reading anything.
    pub fn validate(&self) -> Result<()> {
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            let fraction = self.val_fraction;
            let what = format!("val fraction {fraction} must lie strictly between 0 and 1");
            return Err(DataError::BadConfig { what });
        }
        if self.shard_tokens < 2 || self.shard_tokens > crate::header::MAX_TOKENS {
            let what = format!(
                "shard size {} tokens must lie in 2..={}",
                self.shard_tokens,
                crate::header::MAX_TOKENS
            );
            return Err(DataError::BadConfig { what });
        }
        Ok(())
    }
}

/// What happened to one document; `prepare` reports it after each one.
#[derive(Debug, Clone, Copy)]
pub struct DocumentReport<'a> {
    pub path: &'a Path,
    pub bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
}

/// What `prepare` wrote.
#[derive(Debug, Clone)]
pub struct PrepareSummary {
    pub shards: ShardSet,
    pub documents: usize,
    /// Bytes of text read.
    pub bytes: u64,
    /// Tokens of text in each split, end-of-text tokens not counted.
    pub train_tokens: u64,
    pub val_tokens: u64,
}

impl PrepareSummary {
    /// Compression of the tokeniser on this corpus: 1.0 for `byte`, about 3.2 for GPT-2 on
    /// Shakespeare.
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / (self.train_tokens + self.val_tokens).max(1) as f64
    }
}

/// The shards of one prepared corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSet {
    pub dir: PathBuf,
    pub tokenizer: Tokenizer,
    pub train: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
}

impl ShardSet {
    /// The shards already in `dir`, if any. Fails if only one split is there, or if a shard
    /// records another vocabulary than `tokenizer`'s.
    pub fn find(dir: &Path, tokenizer: Tokenizer) -> Result<Option<ShardSet>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let train = shard_files(dir, Split::Train)?;
        let val = shard_files(dir, Split::Val)?;
        match (train.is_empty(), val.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {}
            _ => {
                return Err(DataError::IncompleteShardSet {
                    path: dir.to_path_buf(),
                })
            }
        }
        for path in train.iter().chain(&val) {
            let recorded = peek_header(path)?.vocab_size;
            let expected = tokenizer.vocab_size();
            if let Some(recorded) = recorded.filter(|&v| v != expected) {
                return Err(DataError::VocabMismatch {
                    path: path.clone(),
                    recorded,
                    expected,
                });
            }
        }
        Ok(Some(ShardSet {
            dir: dir.to_path_buf(),
            tokenizer,
            train,
            val,
        }))
    }

    /// Opens (and fully validates) the shards of `split`.
    pub fn open(&self, split: Split) -> Result<Vec<Shard>> {
        let paths = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        let vocab = self.tokenizer.vocab_size();
        paths.iter().map(|path| Shard::open(path, vocab)).collect()
    }

    /// A loader of random training windows; see [`TrainLoader::new`].
    pub fn train_loader(&self, batch: usize, seq_len: usize, seed: u64) -> Result<TrainLoader> {
        TrainLoader::new(self.open(Split::Train)?, batch, seq_len, seed)
    }

    /// A sequential pass over the validation split; see [`ValLoader::new`].
    pub fn val_loader(&self, batch: usize, seq_len: usize) -> Result<ValLoader> {
        ValLoader::new(self.open(Split::Val)?, batch, seq_len)
    }
}

/// The shards in `out_dir` if there are some, else prepares them from `inputs`. The first-run
/// helper of the train binary; it never overwrites.
pub fn ensure_shards(
    inputs: &[PathBuf],
    out_dir: &Path,
    config: &PrepareConfig,
) -> Result<ShardSet> {
    if let Some(set) = ShardSet::find(out_dir, config.tokenizer)? {
        return Ok(set);
    }
    let config = PrepareConfig {
        overwrite: false,
        ..*config
    };
    Ok(prepare(inputs, out_dir, &config, &mut |_| {})?.shards)
}

/// Tokenises the documents of `inputs` into train/val shards in `out_dir`, calling
/// `on_document` after each document (for a progress bar).
pub fn prepare(
    inputs: &[PathBuf],
    out_dir: &Path,
    config: &PrepareConfig,
    on_document: &mut dyn FnMut(&DocumentReport),
) -> Result<PrepareSummary> {
    config.validate()?;
    let documents = list_documents(inputs)?;
    let existing = existing_shards(out_dir)?;
    if !existing.is_empty() && !config.overwrite {
        return Err(DataError::ShardsExist {
            path: out_dir.to_path_buf(),
        });
    }
    fs::create_dir_all(out_dir).map_err(|e| DataError::io("create", out_dir, e))?;

    // tokenise everything into temporary shards
    let vocab = config.tokenizer.vocab_size();
    let mut train = SplitWriter::new(out_dir, Split::Train, vocab, config.shard_tokens)?;
    let mut val = SplitWriter::new(out_dir, Split::Val, vocab, config.shard_tokens)?;
    let mut bytes = 0;
    for path in &documents {
        let report = add_document(path, config, &mut train, &mut val)?;
        bytes += report.bytes;
        on_document(&report);
    }
    let (train_tokens, val_tokens) = (train.text_tokens, val.text_tokens);
    let (train, val) = (train.finish()?, val.finish()?);

    // only now replace what was there
    for path in existing {
        fs::remove_file(&path).map_err(|e| DataError::io("remove old shard", &path, e))?;
    }
    let shards = ShardSet {
        dir: out_dir.to_path_buf(),
        tokenizer: config.tokenizer,
        train: commit_all(train)?,
        val: commit_all(val)?,
    };
    let documents = documents.len();
    Ok(PrepareSummary {
        shards,
        documents,
        bytes,
        train_tokens,
        val_tokens,
    })
}

/// The documents named by `inputs`, in the order they will be written.
pub fn list_documents(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(DataError::NoInput);
    }
    let mut documents = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).map_err(|e| DataError::io("read", input, e))?;
        if !meta.is_dir() {
            documents.push(input.clone());
            continue;
        }
        let before = documents.len();
        collect_text_files(input, &mut documents)?;
        if documents.len() == before {
            return Err(DataError::NoTextFiles {
                path: input.clone(),
            });
        }
    }
    Ok(documents)
}

/// Appends the `.txt` files under `dir` to `out`, depth first, in sorted order.
fn collect_text_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            collect_text_files(&path, out)?;
        } else if has_text_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Entries of `dir`, sorted, hidden ones (`.git`, our temporary shards) left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read_error = |e| DataError::io("list", dir, e);
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn has_text_extension(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    ext.as_deref() == Some(TEXT_EXTENSION)
}

/// Shard files of either split already in `dir` (none if `dir` does not exist).
fn existing_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = shard_files(dir, Split::Train)?;
    paths.extend(shard_files(dir, Split::Val)?);
    Ok(paths)
}

/// `dir`'s shards of `split`, sorted; empty if `dir` does not exist.
fn shard_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let owned = |path: &PathBuf| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        name.is_some_and(|n| split.owns(&n))
    };
    Ok(sorted_entries(dir)?.into_iter().filter(owned).collect())
}

/// Reads, tokenises and splits one document.
fn add_document<'a>(
    path: &'a Path,
    config: &PrepareConfig,
    train: &mut SplitWriter,
    val: &mut SplitWriter,
) -> Result<DocumentReport<'a>> {
    let text = read_text(path)?;
    let tokenizer = config.tokenizer;
    let tokens = tokenizer
        .encode(&text)
        .map_err(|source| DataError::Tokenize {
            path: path.to_path_buf(),
            source,
        })?;
    let cut = tokens.len() - val_length(tokens.len(), config.val_fraction);
    let (head, tail) = tokens.split_at(cut);
    train.push_document(tokenizer.eot_token(), head)?;
    val.push_document(tokenizer.eot_token(), tail)?;
    let (bytes, train_tokens, val_tokens) = (text.len() as u64, head.len() as u64, tail.len());
    Ok(DocumentReport {
        path,
        bytes,
        train_tokens,
        val_tokens: val_tokens as u64,
    })
}

/// Tokens held out from a document of `n`: ceil(fraction * n), so every document gives val at
/// least one token.
fn val_length(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).min(n)
}

/// The whole of `path` as text; fails on empty or non-UTF-8 files.
fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| DataError::io("read", path, e))?;
    if bytes.is_empty() {
        return Err(DataError::EmptyDocument {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// The shards of one split, written one after another as they fill.
struct SplitWriter {
    dir: PathBuf,
    split: Split,
    vocab: u32,
    shard_tokens: u64,
    current: ShardWriter,
    done: Vec<WrittenShard>,
    /// Tokens of text pushed, end-of-text tokens not counted.
    text_tokens: u64,
}

impl SplitWriter {
    /// Opens the first shard at once, so each split has a shard even if it gets no tokens.
    fn new(dir: &Path, split: Split, vocab: u32, shard_tokens: u64) -> Result<Self> {
        let current = ShardWriter::create(&split.shard_path(dir, 0), vocab)?;
        let dir = dir.to_path_buf();
        let done = Vec::new();
        Ok(SplitWriter {
            dir,
            split,
            vocab,
            shard_tokens,
            current,
            done,
            text_tokens: 0,
        })
    }

    /// Appends end-of-text then `tokens`, unless `tokens` is empty.
    fn push_document(&mut self, eot: u32, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.push(&[eot])?;
        self.push(tokens)?;
        self.text_tokens += tokens.len() as u64;
        Ok(())
    }

    /// Appends `tokens`, starting a new shard whenever the current one is full.
    fn push(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            if self.current.len() == self.shard_tokens {
                self.start_next_shard()?;
            }
            let room = (self.shard_tokens - self.current.len()) as usize;
            let (now, later) = tokens.split_at(room.min(tokens.len()));
            self.current.push(now)?;
            tokens = later;
        }
        Ok(())
    }

    fn start_next_shard(&mut self) -> Result<()> {
        let index = self.done.len() + 1;
        let next = ShardWriter::create(&self.split.shard_path(&self.dir, index), self.vocab)?;
        let full = std::mem::replace(&mut self.current, next);
        self.done.push(full.finish()?);
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<WrittenShard>> {
        self.done.push(self.current.finish()?);
        Ok(self.done)
    }
}

/// Renames every shard into place, in order.
fn commit_all(shards: Vec<WrittenShard>) -> Result<Vec<PathBuf>> {
    shards.into_iter().map(WrittenShard::commit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn val_length_is_a_rounded_up_tail() {
        assert_eq!(val_length(100, 0.1), 10);
        assert_eq!(val_length(101, 0.1), 11);
        assert_eq!(val_length(1, 0.1), 1);
        assert_eq!(val_length(0, 0.1), 0);
    }

    #[test]
    fn folders_give_sorted_txt_files_only() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.txt"), "b");
        write(&dir.path().join("a/z.txt"), "z");
        write(&dir.path().join("NOTICE.md"), "not a document");
        write(&dir.path().join(".hidden.txt"), "skipped");
        let docs = list_documents(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = docs
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap())
            .collect();
        assert_eq!(names, [Path::new("a/z.txt"), Path::new("b.txt")]);
    }

    #[test]
    fn byte_shards_hold_eot_then_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("in/one.txt"), "abcdefghij");
        write(&dir.path().join("in/two.txt"), "KLMNO");
        let mut config = PrepareConfig::new(Tokenizer::Byte);
        config.val_fraction = 0.2;
        let out = dir.path().join("out");
        let inputs = [dir.path().join("in")];
        let summary = prepare(&inputs, &out, &config, &mut |_| {}).unwrap();
        let train = summary
            .shards
            .open(Split::Train)
            .unwrap()
            .remove(0)
            .to_vec();
        let val = summary.shards.open(Split::Val).unwrap().remove(0).to_vec();
        // 0.2 * 10 = 2 bytes and ceil(0.2 * 5) = 1 byte held out; 0 is end-of-text
        let train_text = Tokenizer::Byte.decode(&train).unwrap();
        assert_eq!(train_text, "<|endoftext|>abcdefgh<|endoftext|>KLMN");
        assert_eq!(
            Tokenizer::Byte.decode(&val).unwrap(),
            "<|endoftext|>ij<|endoftext|>O"
        );
        assert_eq!(
            (summary.train_tokens, summary.val_tokens, summary.bytes),
            (12, 3, 15)
        );
        assert_eq!(summary.bytes_per_token(), 1.0);
    }

    #[test]
    fn small_shard_size_rolls_over_into_numbered_shards() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("in.txt"), &"x".repeat(95));
        let mut config = PrepareConfig::new(Tokenizer::Byte);
        config.shard_tokens = 40;
        let out = dir.path().join("out");
        let summary = prepare(&[dir.path().join("in.txt")], &out, &config, &mut |_| {}).unwrap();
        // train = 1 EOT + 85 bytes = 86 tokens: shards of 40, 40, 6
        let lens: Vec<u64> = summary
            .shards
            .open(Split::Train)
            .unwrap()
            .iter()
            .map(|s| s.len())
            .collect();
        assert_eq!(lens, [40, 40, 6]);
        assert_eq!(summary.shards.train[2], out.join("train_000002.bin"));
    }

    #[test]
    fn ensure_shards_prepares_once_then_finds() {
        let dir = tempfile::tempdir().unwrap();
        let input = [dir.path().join("in.txt")];
        write(&input[0], "some text to split");
        let out = dir.path().join("out");
        let config = PrepareConfig::new(Tokenizer::Byte);
        let first = ensure_shards(&input, &out, &config).unwrap();
        // a second call must not need the input any more
        fs::remove_file(&input[0]).unwrap();
        let second = ensure_shards(&input, &out, &config).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn finding_shards_of_another_tokenizer_fails() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("in.txt"), "some text");
        let out = dir.path().join("out");
        let config = PrepareConfig::new(Tokenizer::Byte);
        ensure_shards(&[dir.path().join("in.txt")], &out, &config).unwrap();
        let err = ShardSet::find(&out, Tokenizer::Gpt2).unwrap_err();
        assert!(matches!(
            err,
            DataError::VocabMismatch {
                recorded: 256,
                expected: 50257,
                ..
            }
        ));
    }
}
