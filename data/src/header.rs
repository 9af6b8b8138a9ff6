//! The 1024-byte header of a token shard, shared with llm.c.
//!
//! A shard is this header followed by the tokens, little-endian, 2 or 4 bytes each. The header is
//! 256 little-endian `i32` slots (1024 bytes); llm.c reads slots 0-2 and ignores the rest.
//!
//! | slot    | bytes     | meaning                                                    |
//! |---------|-----------|------------------------------------------------------------|
//! | 0       | 0..4      | magic: 20240520 (u16 tokens) or 20240801 (u32 tokens)      |
//! | 1       | 4..8      | version: 1 with magic 20240520, 7 with magic 20240801      |
//! | 2       | 8..12     | N, the number of tokens after the header                   |
//! | 3..128  | 12..512   | zero                                                       |
//! | 128     | 512..516  | odeflow tag, the ASCII bytes `odef` (0 in llm.c's shards)  |
//! | 129     | 516..520  | V, the vocabulary size (read only when the tag is present) |
//! | 130..256| 520..1024 | zero                                                       |
//!
//! The two magic/version pairs are the ones llm.c's `dev/data/data_common.py` writes: "gpt-2"
//! shards (u16) and "llama-3" shards (u32). A file is `1024 + N * width` bytes exactly.
//!
//! Slots 128-129 are our extension: they let a loader check that a shard was made with the
//! tokeniser it is about to use. llm.c never looks there, and a header without the tag (every
//! shard llm.c writes) simply has no recorded vocabulary, so both ecosystems read each other's
//! files. Spare slots are not required to be zero when reading, for the same reason.

use crate::error::HeaderError;

/// Number of `i32` slots in a header.
pub const HEADER_SLOTS: usize = 256;
/// Size of a header in bytes: 256 slots of 4 bytes.
pub const HEADER_BYTES: usize = HEADER_SLOTS * 4;
/// Magic of llm.c's GPT-2 shards, whose tokens are u16.
pub const MAGIC_U16: i32 = 20240520;
/// Version that goes with [`MAGIC_U16`].
pub const VERSION_U16: i32 = 1;
/// Magic of llm.c's LLaMA-3 shards, whose tokens are u32.
pub const MAGIC_U32: i32 = 20240801;
/// Version that goes with [`MAGIC_U32`].
pub const VERSION_U32: i32 = 7;
/// The token count lives in an `i32`, so a shard holds at most this many tokens.
pub const MAX_TOKENS: u64 = i32::MAX as u64;

const SLOT_MAGIC: usize = 0;
const SLOT_VERSION: usize = 1;
const SLOT_TOKEN_COUNT: usize = 2;
const SLOT_ODEFLOW_TAG: usize = 128;
const SLOT_VOCAB_SIZE: usize = 129;
/// Marks slots 128-129 as ours; reads as `odef` in a hex dump.
const ODEFLOW_TAG: i32 = i32::from_le_bytes(*b"odef");

/// How wide each token is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// The narrowest width that holds every token id below `vocab_size`.
    pub fn for_vocab(vocab_size: u32) -> Self {
        if vocab_size <= 1 << 16 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    /// Bytes per token on disk.
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    fn magic_and_version(self) -> (i32, i32) {
        match self {
            TokenWidth::U16 => (MAGIC_U16, VERSION_U16),
            TokenWidth::U32 => (MAGIC_U32, VERSION_U32),
        }
    }
}

/// What a shard header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub width: TokenWidth,
    /// N, the number of tokens that follow the header; at most [`MAX_TOKENS`].
    pub token_count: u64,
    /// V, when the writer recorded it (odeflow does; llm.c does not).
    pub vocab_size: Option<u32>,
}

impl ShardHeader {
    /// Size in bytes of the whole file this header describes.
    pub fn file_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + self.token_count * self.width.bytes() as u64
    }

    /// Reads a header from the first [`HEADER_BYTES`] of `bytes`; never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < HEADER_BYTES {
            let len = bytes.len() as u64;
            return Err(HeaderError::TooShort {
                len,
                needed: HEADER_BYTES,
            });
        }
        let width = parse_width(slot(bytes, SLOT_MAGIC), slot(bytes, SLOT_VERSION))?;
        let count = slot(bytes, SLOT_TOKEN_COUNT);
        let token_count =
            u64::try_from(count).map_err(|_| HeaderError::NegativeTokenCount { found: count })?;
        let vocab_size = parse_vocab(bytes)?;
        Ok(ShardHeader {
            width,
            token_count,
            vocab_size,
        })
    }

    /// The 1024 header bytes. Panics if `token_count > MAX_TOKENS` or the vocabulary size does
    /// not fit an `i32`: `ShardWriter` never builds such a header.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut slots = [0i32; HEADER_SLOTS];
        let (magic, version) = self.width.magic_and_version();
        slots[SLOT_MAGIC] = magic;
        slots[SLOT_VERSION] = version;
        slots[SLOT_TOKEN_COUNT] = i32::try_from(self.token_count).expect("token count fits i32");
        if let Some(vocab) = self.vocab_size {
            slots[SLOT_ODEFLOW_TAG] = ODEFLOW_TAG;
            slots[SLOT_VOCAB_SIZE] = i32::try_from(vocab).expect("vocabulary size fits i32");
        }
        let mut bytes = [0u8; HEADER_BYTES];
        for (chunk, value) in bytes.chunks_exact_mut(4).zip(slots) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

/// Slot `index` of a header, as a little-endian i32. `bytes` holds at least a header.
fn slot(bytes: &[u8], index: usize) -> i32 {
    let start = 4 * index;
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[start..start + 4]);
    i32::from_le_bytes(le)
}

fn parse_width(magic: i32, version: i32) -> Result<TokenWidth, HeaderError> {
    let width = match magic {
        MAGIC_U16 => TokenWidth::U16,
        MAGIC_U32 => TokenWidth::U32,
        found => {
            let (u16_magic, u32_magic) = (MAGIC_U16, MAGIC_U32);
            return Err(HeaderError::BadMagic {
                found,
                u16_magic,
                u32_magic,
            });
        }
    };
    let (_, expected) = width.magic_and_version();
    if version != expected {
        return Err(HeaderError::BadVersion {
            magic,
            found: version,
            expected,
        });
    }
    Ok(width)
}

fn parse_vocab(bytes: &[u8]) -> Result<Option<u32>, HeaderError> {
    if slot(bytes, SLOT_ODEFLOW_TAG) != ODEFLOW_TAG {
        return Ok(None);
    }
    let found = slot(bytes, SLOT_VOCAB_SIZE);
    match u32::try_from(found) {
        Ok(vocab) if vocab > 0 => Ok(Some(vocab)),
        _ => Err(HeaderError::BadVocabSize { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A header as llm.c's `write_datafile` builds it: three slots, the rest zero.
    fn llmc_header(magic: i32, version: i32, count: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&magic.to_le_bytes());
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        bytes[8..12].copy_from_slice(&count.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_an_llmc_gpt2_header_without_vocab() {
        let header = ShardHeader::parse(&llmc_header(20240520, 1, 1234)).unwrap();
        let expected = ShardHeader {
            width: TokenWidth::U16,
            token_count: 1234,
            vocab_size: None,
        };
        assert_eq!(header, expected);
        // 1024 header bytes + 1234 tokens * 2 bytes
        assert_eq!(header.file_bytes(), 1024 + 2468);
    }

    #[test]
    fn reads_an_llmc_llama3_header_as_u32() {
        let header = ShardHeader::parse(&llmc_header(20240801, 7, 5)).unwrap();
        assert_eq!(header.width, TokenWidth::U32);
        assert_eq!(header.file_bytes(), 1024 + 20);
    }

    #[test]
    fn our_header_reads_as_llmc_expects() {
        let header = ShardHeader {
            width: TokenWidth::U16,
            token_count: 99,
            vocab_size: Some(50257),
        };
        let bytes = header.to_bytes();
        assert_eq!(bytes[0..12], llmc_header(MAGIC_U16, VERSION_U16, 99)[0..12]);
        // slots 3..128 stay zero, where llm.c might one day look
        assert!(bytes[12..512].iter().all(|&b| b == 0));
        assert_eq!(&bytes[512..516], b"odef");
    }

    #[test]
    fn rejects_wrong_magic_version_and_count() {
        let magic = ShardHeader::parse(&llmc_header(42, 1, 10));
        assert!(matches!(
            magic,
            Err(HeaderError::BadMagic { found: 42, .. })
        ));
        let version = ShardHeader::parse(&llmc_header(MAGIC_U16, 7, 10));
        assert!(matches!(
            version,
            Err(HeaderError::BadVersion {
                found: 7,
                expected: 1,
                ..
            })
        ));
        let count = ShardHeader::parse(&llmc_header(MAGIC_U16, 1, -3));
        assert_eq!(count, Err(HeaderError::NegativeTokenCount { found: -3 }));
        let short = ShardHeader::parse(&[0u8; 1023]);
        assert_eq!(
            short,
            Err(HeaderError::TooShort {
                len: 1023,
                needed: 1024
            })
        );
    }

    #[test]
    fn a_tagged_header_needs_a_positive_vocab() {
        let mut bytes = llmc_header(MAGIC_U16, 1, 10);
        bytes[512..516].copy_from_slice(b"odef");
        bytes[516..520].copy_from_slice(&(-5i32).to_le_bytes());
        assert_eq!(
            ShardHeader::parse(&bytes),
            Err(HeaderError::BadVocabSize { found: -5 })
        );
    }

    fn any_width() -> impl Strategy<Value = TokenWidth> {
        prop_oneof![Just(TokenWidth::U16), Just(TokenWidth::U32)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn header_round_trips(
            width in any_width(),
            token_count in 0..=MAX_TOKENS,
            vocab_size in proptest::option::of(1..=i32::MAX as u32),
        ) {
            let header = ShardHeader { width, token_count, vocab_size };
            prop_assert_eq!(ShardHeader::parse(&header.to_bytes()), Ok(header));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            // The property is mostly "returns at all"; what it returns must also be sensible.
            let parsed = ShardHeader::parse(&bytes);
            if bytes.len() < HEADER_BYTES {
                let too_short = matches!(parsed, Err(HeaderError::TooShort { .. }));
                prop_assert!(too_short);
            } else if parsed.is_ok() {
                prop_assert!([MAGIC_U16, MAGIC_U32].contains(&slot(&bytes, SLOT_MAGIC)));
            }
        }

        #[test]
        fn corrupting_one_slot_of_a_valid_header_never_panics(
            index in 0..HEADER_SLOTS,
            value in any::<i32>(),
        ) {
            let header =
                ShardHeader { width: TokenWidth::U16, token_count: 7, vocab_size: Some(256) };
            let mut bytes = header.to_bytes();
            bytes[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
            if let Ok(parsed) = ShardHeader::parse(&bytes) {
                // whatever survives still describes a consistent file size
                let width = parsed.width.bytes() as u64;
                prop_assert_eq!(parsed.file_bytes(), 1024 + parsed.token_count * width);
            }
        }
    }
}
