//! Errors of the data crate.
//!
//! Three enums, from the innermost out:
//! - [`HeaderError`]: a shard header's 1024 bytes are not a valid header (pure, no file involved);
//! - [`TokenizeError`]: a tokeniser could not encode or decode (no file involved);
//! - [`DataError`]: everything a caller meets, each variant naming the file (and the byte offset
//!   where one applies) and saying what to do next.

use std::io;
use std::path::PathBuf;

/// A shard header that cannot be read. See `header.rs` for the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "the file is {len} bytes, shorter than the {needed}-byte header: it is empty or \
         truncated; prepare the shards again"
    )]
    TooShort { len: u64, needed: usize },

    #[error(
        "magic number {found} is not a token shard's (expected {u16_magic} or {u32_magic}): \
         is this the right file?"
    )]
    BadMagic {
        found: i32,
        u16_magic: i32,
        u32_magic: i32,
    },

    #[error(
        "header version {found} does not go with magic {magic} (expected {expected}): the shard \
         comes from an unsupported writer; prepare it again with `prepare`"
    )]
    BadVersion {
        magic: i32,
        found: i32,
        expected: i32,
    },

    #[error("token count {found} is negative: the header is corrupt; prepare the shard again")]
    NegativeTokenCount { found: i32 },

    #[error("recorded vocabulary size {found} is not positive: the header is corrupt")]
    BadVocabSize { found: i32 },
}

/// A tokeniser that could not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    #[error(
        "byte 0 (NUL) at offset {offset} is reserved as the byte tokeniser's end-of-text token; \
         strip NUL bytes from the text or use the gpt2 tokeniser"
    )]
    ReservedByte { offset: usize },

    #[error("token {token} is outside the {tokenizer} vocabulary of {vocab_size} tokens")]
    UnknownToken {
        token: u32,
        tokenizer: &'static str,
        vocab_size: u32,
    },

    #[error(
        "the GPT-2 ranks compiled into tiktoken-rs could not be loaded ({reason}); rebuild the \
         crate or use the byte tokeniser"
    )]
    Gpt2Unavailable { reason: String },
}

/// Every error the data crate returns.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{path} is not a token shard: {source}")]
    BadHeader { path: PathBuf, source: HeaderError },

    #[error(
        "{path} is {actual} bytes but its header promises {tokens} tokens ({expected} bytes): \
         the shard is truncated or has trailing bytes; prepare it again"
    )]
    SizeMismatch {
        path: PathBuf,
        tokens: u64,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{path}: token {token} at byte offset {offset} is not below the vocabulary size \
         {vocab_size}: the shard was made with another tokeniser or is corrupt"
    )]
    TokenOutOfRange {
        path: PathBuf,
        offset: u64,
        token: u32,
        vocab_size: u32,
    },

    #[error(
        "{path} was prepared for a vocabulary of {recorded} tokens but this run uses {expected}: \
         choose the matching --tokenizer or prepare the shards again into another folder"
    )]
    VocabMismatch {
        path: PathBuf,
        recorded: u32,
        expected: u32,
    },

    #[error(
        "{path} holds {tokens} tokens but a window needs seq_len + 1 = {needed}: lower the \
         sequence length or give the split more text"
    )]
    WindowTooLong {
        path: PathBuf,
        tokens: u64,
        needed: u64,
    },

    #[error(
        "the validation split has {windows} windows of seq_len + 1 tokens, fewer than one batch \
         of {batch}: lower the batch size or raise --val-fraction"
    )]
    ValTooSmall { windows: u64, batch: usize },

    #[error("no shards were given to the loader: run `prepare` first or check the shard folder")]
    NoShards,

    #[error(
        "{path} is not valid UTF-8 at byte {offset}: convert it (e.g. `iconv -t UTF-8`) or \
         leave it out of the input"
    )]
    NotUtf8 { path: PathBuf, offset: usize },

    #[error("could not tokenise {path}: {source}")]
    Tokenize {
        path: PathBuf,
        source: TokenizeError,
    },

    #[error("{path} is empty: add text to it or leave it out of the input")]
    EmptyDocument { path: PathBuf },

    #[error("{path} contains no .txt files: point at a folder of UTF-8 .txt files")]
    NoTextFiles { path: PathBuf },

    #[error("no input was given: name at least one text file or folder")]
    NoInput,

    #[error("{path} already holds shards: pass --force to replace them or choose another --out")]
    ShardsExist { path: PathBuf },

    #[error(
        "{path} holds train shards but no val shards (or the reverse): delete the folder and \
         prepare again"
    )]
    IncompleteShardSet { path: PathBuf },

    #[error("unknown tokeniser `{name}`: expected one of {expected}")]
    UnknownTokenizer {
        name: String,
        expected: &'static str,
    },

    #[error("invalid setting: {what}")]
    BadConfig { what: String },

    #[error(transparent)]
    Token(#[from] TokenizeError),
}

impl DataError {
    /// Wraps an I/O error with what we were doing and to which path.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
