//! Tokenisers: text in, token ids out, and back.
//!
//! - `byte`: each UTF-8 byte is its own token, V = 256. No training, no tables, and about
//!   3x more tokens than GPT-2 for English; the fast default for CPU runs. Byte 0 (NUL) is the
//!   end-of-text token: it never occurs in text files, so reserving it costs nothing, and it keeps
//!   V at 256 so tokens fit a byte. Text that does contain NUL is rejected rather than silently
//!   read as document breaks.
//! - `gpt2`: GPT-2's byte-level BPE (V = 50257, end-of-text = 50256), the tokeniser of the paper.
//!   The ranks are tiktoken's `r50k_base`, compiled into the `tiktoken-rs` crate, so it works
//!   offline. Text is encoded as ordinary text: a literal `<|endoftext|>` in a file stays text.
//!
//! The end-of-text token is not produced by `encode`; `prepare` inserts it between documents.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::error::{DataError, TokenizeError};

/// Vocabulary size of the byte tokeniser: one token per byte value.
const BYTE_VOCAB: u32 = 256;
/// The byte tokeniser's end-of-text token: NUL, which never occurs in text.
const BYTE_EOT: u32 = 0;
/// GPT-2's vocabulary: 256 bytes + 50000 merges + `<|endoftext|>`.
const GPT2_VOCAB: u32 = 50257;
/// GPT-2's `<|endoftext|>`, the last id.
const GPT2_EOT: u32 = 50256;
/// How an end-of-text token is shown by `decode`.
const EOT_TEXT: &str = "<|endoftext|>";

/// The names `Tokenizer::from_name` accepts, for messages and `--help`.
pub const TOKENIZER_NAMES: &str = "byte, gpt2";

/// A tokeniser, chosen by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    Byte,
    Gpt2,
}

impl Tokenizer {
    /// `"byte"` or `"gpt2"`.
    pub fn from_name(name: &str) -> Result<Self, DataError> {
        match name {
            "byte" => Ok(Tokenizer::Byte),
            "gpt2" => Ok(Tokenizer::Gpt2),
            _ => Err(DataError::UnknownTokenizer {
                name: name.to_string(),
                expected: TOKENIZER_NAMES,
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Byte => "byte",
            Tokenizer::Gpt2 => "gpt2",
        }
    }

    /// The tokeniser a model with `vocab_size` rows was most likely trained with, for a binary
    /// not told: gpt2 when the model can hold GPT-2's 50257 tokens, byte otherwise.
    pub fn for_vocab_size(vocab_size: usize) -> Tokenizer {
        if vocab_size >= GPT2_VOCAB as usize {
            Tokenizer::Gpt2
        } else {
            Tokenizer::Byte
        }
    }

    /// V: every token id is below this.
    pub fn vocab_size(self) -> u32 {
        match self {
            Tokenizer::Byte => BYTE_VOCAB,
            Tokenizer::Gpt2 => GPT2_VOCAB,
        }
    }

    /// The token `prepare` puts before every document.
    pub fn eot_token(self) -> u32 {
        match self {
            Tokenizer::Byte => BYTE_EOT,
            Tokenizer::Gpt2 => GPT2_EOT,
        }
    }

    /// Token ids of `text`, without any end-of-text token.
    pub fn encode(self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        match self {
            Tokenizer::Byte => encode_bytes(text),
            Tokenizer::Gpt2 => Ok(gpt2()?.encode_ordinary(text)),
        }
    }

    /// Text of `tokens`, with end-of-text shown as `<|endoftext|>`. Byte sequences that are not
    /// UTF-8 (a window can cut a character in two) become U+FFFD.
    pub fn decode(self, tokens: &[u32]) -> Result<String, TokenizeError> {
        self.check_ids(tokens)?;
        match self {
            Tokenizer::Byte => Ok(decode_bytes(tokens)),
            Tokenizer::Gpt2 => {
                let bytes = gpt2()?
                    .decode_bytes(tokens)
                    .expect("ids checked against V above");
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// The bytes of `tokens`, end-of-text as `<|endoftext|>`: `decode` before its UTF-8 step.
    /// A printer that streams tokens needs them, because a token can end inside a character
    /// (every byte token of a multi-byte character does, and so do some GPT-2 tokens).
    pub fn decode_raw(self, tokens: &[u32]) -> Result<Vec<u8>, TokenizeError> {
        self.check_ids(tokens)?;
        match self {
            Tokenizer::Byte => {
                let mut bytes = Vec::with_capacity(tokens.len());
                for &t in tokens {
                    match t {
                        BYTE_EOT => bytes.extend_from_slice(EOT_TEXT.as_bytes()),
                        byte => bytes.push(byte as u8),
                    }
                }
                Ok(bytes)
            }
            Tokenizer::Gpt2 => Ok(gpt2()?
                .decode_bytes(tokens)
                .expect("ids checked against V above")),
        }
    }

    /// Every id must be below V.
    fn check_ids(self, tokens: &[u32]) -> Result<(), TokenizeError> {
        match tokens.iter().find(|&&t| t >= self.vocab_size()) {
            None => Ok(()),
            Some(&token) => Err(TokenizeError::UnknownToken {
                token,
                tokenizer: self.name(),
                vocab_size: self.vocab_size(),
            }),
        }
    }
}

impl FromStr for Tokenizer {
    type Err = DataError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Tokenizer::from_name(name)
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn encode_bytes(text: &str) -> Result<Vec<u32>, TokenizeError> {
    if let Some(offset) = text.bytes().position(|b| u32::from(b) == BYTE_EOT) {
        return Err(TokenizeError::ReservedByte { offset });
    }
    Ok(text.bytes().map(u32::from).collect())
}

fn decode_bytes(tokens: &[u32]) -> String {
    let mut text = String::new();
    // split at end-of-text tokens so each run of bytes decodes on its own
    for (i, run) in tokens.split(|&t| t == BYTE_EOT).enumerate() {
        if i > 0 {
            text.push_str(EOT_TEXT);
        }
        let bytes: Vec<u8> = run.iter().map(|&t| t as u8).collect();
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

/// GPT-2's BPE, built from the embedded ranks on first use (about 30 ms) and kept for the life
/// of the process. Building cannot fail unless the crate itself is broken; if it does, every
/// call reports why instead of panicking.
fn gpt2() -> Result<&'static CoreBPE, TokenizeError> {
    static BPE: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    let built = BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string()));
    built
        .as_ref()
        .map_err(|reason| TokenizeError::Gpt2Unavailable {
            reason: reason.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for tokenizer in [Tokenizer::Byte, Tokenizer::Gpt2] {
            assert_eq!(Tokenizer::from_name(tokenizer.name()).unwrap(), tokenizer);
        }
        let err = Tokenizer::from_name("bpe").unwrap_err();
        assert!(matches!(err, DataError::UnknownTokenizer { ref name, .. } if name == "bpe"));
    }

    #[test]
    fn byte_tokens_are_the_utf8_bytes() {
        // 'é' is two bytes in UTF-8: 0xC3 0xA9
        assert_eq!(Tokenizer::Byte.encode("hé").unwrap(), vec![104, 0xC3, 0xA9]);
        assert_eq!(Tokenizer::Byte.decode(&[104, 0xC3, 0xA9]).unwrap(), "hé");
    }

    #[test]
    fn byte_tokenizer_rejects_nul_and_shows_eot() {
        let err = Tokenizer::Byte.encode("ab\0c").unwrap_err();
        assert_eq!(err, TokenizeError::ReservedByte { offset: 2 });
        assert_eq!(
            Tokenizer::Byte.decode(&[0, 104, 105]).unwrap(),
            "<|endoftext|>hi"
        );
    }

    #[test]
    fn gpt2_matches_known_ids() {
        // "Hello world" is [15496, 995] in GPT-2, as every GPT-2 tokenizer reports.
        assert_eq!(
            Tokenizer::Gpt2.encode("Hello world").unwrap(),
            vec![15496, 995]
        );
        let text = Tokenizer::Gpt2.decode(&[15496, 995, 50256]).unwrap();
        assert_eq!(text, "Hello world<|endoftext|>");
    }

    #[test]
    fn gpt2_reads_a_literal_eot_as_text() {
        let tokens = Tokenizer::Gpt2.encode("<|endoftext|>").unwrap();
        assert!(tokens.len() > 1 && !tokens.contains(&GPT2_EOT));
    }

    #[test]
    fn the_vocabulary_size_picks_the_tokenizer() {
        assert_eq!(Tokenizer::for_vocab_size(256), Tokenizer::Byte);
        assert_eq!(Tokenizer::for_vocab_size(50256), Tokenizer::Byte);
        assert_eq!(Tokenizer::for_vocab_size(50257), Tokenizer::Gpt2);
        assert_eq!(Tokenizer::for_vocab_size(50304), Tokenizer::Gpt2);
    }

    #[test]
    fn decode_raw_gives_the_bytes_before_the_utf8_step() {
        // half of 'é' (0xC3 0xA9) is a byte a streaming printer must hold back, not U+FFFD
        assert_eq!(Tokenizer::Byte.decode_raw(&[104, 0xC3]).unwrap(), b"h\xC3");
        assert_eq!(
            Tokenizer::Byte.decode_raw(&[0, 105]).unwrap(),
            b"<|endoftext|>i"
        );
        let bytes = Tokenizer::Gpt2.decode_raw(&[15496, 995, 50256]).unwrap();
        assert_eq!(bytes, b"Hello world<|endoftext|>");
        let err = Tokenizer::Gpt2.decode_raw(&[50257]).unwrap_err();
        assert!(matches!(
            err,
            TokenizeError::UnknownToken { token: 50257, .. }
        ));
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocab() {
        let err = Tokenizer::Byte.decode(&[300]).unwrap_err();
        assert!(matches!(
            err,
            TokenizeError::UnknownToken {
                token: 300,
                vocab_size: 256,
                ..
            }
        ));
    }
}
