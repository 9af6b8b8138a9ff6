//! Token shards on disk: reading one through a memory map, and writing one all-or-nothing.
//!
//! A shard is a [`ShardHeader`] (1024 bytes, see `header.rs` for the slot table) followed by N
//! little-endian tokens of 2 or 4 bytes:
//!
//! ```text
//! byte 0        1024          1024 + w        1024 + N*w
//!      | header | token 0     | token 1 | ... |  (w = 2 for u16 shards, 4 for u32)
//! ```
//!
//! [`Shard::open`] checks, in order, before it hands out any token: the file is at least a
//! header long, the header parses (magic, version), the file size is exactly `1024 + N*w`, the
//! recorded vocabulary (if any) is the caller's, and every token is below the vocabulary size.
//! The last check reads the whole shard once (a few ms per million tokens) so that the loader
//! can index without checks afterwards.
//!
//! [`ShardWriter`] writes to a hidden temporary name beside the target and renames only when
//! told to commit; dropping a writer or an uncommitted [`WrittenShard`] deletes the temporary
//! file, so an error half-way leaves nothing behind.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{DataError, HeaderError, Result};
use crate::header::{ShardHeader, TokenWidth, HEADER_BYTES, MAX_TOKENS};

/// A validated, memory-mapped shard. Its tokens are all below the vocabulary size it was opened
/// with.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    map: Mmap,
}

impl Shard {
    /// Opens and validates the shard at `path` for a vocabulary of `vocab_size` tokens.
    pub fn open(path: &Path, vocab_size: u32) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
        let header = read_header(&file, path)?;
        check_vocab(&header, path, vocab_size)?;
        // SAFETY: a map is sound while nobody changes the file under it. The map is read-only,
        // and shards are never modified in place: this crate writes a shard once under a
        // temporary name and renames it, so a rewrite replaces the directory entry and leaves
        // our mapped inode intact. What remains is another program truncating the file while
        // it is mapped (SIGBUS), the standard caveat of memory-mapped input, noted in the docs.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io("map", path, e))?;
        let shard = Shard {
            path: path.to_path_buf(),
            header,
            map,
        };
        shard.check_token_range(vocab_size)?;
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// N, the number of tokens.
    pub fn len(&self) -> u64 {
        self.header.token_count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies tokens `start .. start + out.len()` into `out`. Panics if that runs past the end.
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        let width = self.header.width.bytes();
        let bytes = &self.token_bytes()[start * width..(start + out.len()) * width];
        match self.header.width {
            TokenWidth::U16 => {
                for (token, le) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *token = u32::from(u16::from_le_bytes([le[0], le[1]]));
                }
            }
            TokenWidth::U32 => {
                for (token, le) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *token = u32::from_le_bytes([le[0], le[1], le[2], le[3]]);
                }
            }
        }
    }

    /// All tokens, decoded. For tests and small shards.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut tokens = vec![0; self.len() as usize];
        self.read_into(0, &mut tokens);
        tokens
    }

    fn token_bytes(&self) -> &[u8] {
        &self.map[HEADER_BYTES..]
    }

    /// Fails on the first token >= `vocab_size`, naming its byte offset in the file.
    fn check_token_range(&self, vocab_size: u32) -> Result<()> {
        let width = self.header.width.bytes();
        let mut chunk = vec![0u32; CHECK_CHUNK_TOKENS];
        let mut start = 0;
        while start < self.len() as usize {
            let n = CHECK_CHUNK_TOKENS.min(self.len() as usize - start);
            self.read_into(start, &mut chunk[..n]);
            if let Some(i) = chunk[..n].iter().position(|&t| t >= vocab_size) {
                let offset = (HEADER_BYTES + (start + i) * width) as u64;
                let (path, token) = (self.path.clone(), chunk[i]);
                return Err(DataError::TokenOutOfRange {
                    path,
                    offset,
                    token,
                    vocab_size,
                });
            }
            start += n;
        }
        Ok(())
    }
}

/// Tokens decoded per step of the range check: 256 KiB of u32, small enough to stay in cache.
const CHECK_CHUNK_TOKENS: usize = 1 << 16;

/// Reads the header and checks the file size against it, touching no token.
fn read_header(file: &File, path: &Path) -> Result<ShardHeader> {
    let actual = file
        .metadata()
        .map_err(|e| DataError::io("stat", path, e))?
        .len();
    let bad_header = |source| DataError::BadHeader {
        path: path.to_path_buf(),
        source,
    };
    if actual < HEADER_BYTES as u64 {
        return Err(bad_header(HeaderError::TooShort {
            len: actual,
            needed: HEADER_BYTES,
        }));
    }
    let mut bytes = [0u8; HEADER_BYTES];
    let mut reader = file;
    reader
        .read_exact(&mut bytes)
        .map_err(|e| DataError::io("read", path, e))?;
    let header = ShardHeader::parse(&bytes).map_err(bad_header)?;
    let expected = header.file_bytes();
    if actual != expected {
        let (path, tokens) = (path.to_path_buf(), header.token_count);
        return Err(DataError::SizeMismatch {
            path,
            tokens,
            expected,
            actual,
        });
    }
    Ok(header)
}

fn check_vocab(header: &ShardHeader, path: &Path, expected: u32) -> Result<()> {
    match header.vocab_size {
        Some(recorded) if recorded != expected => Err(DataError::VocabMismatch {
            path: path.to_path_buf(),
            recorded,
            expected,
        }),
        _ => Ok(()),
    }
}

/// Reads just the header of the shard at `path` (no size or token checks): enough to see which
/// vocabulary it was made for.
pub fn peek_header(path: &Path) -> Result<ShardHeader> {
    let mut file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    let mut limited = (&mut file).take(HEADER_BYTES as u64);
    limited
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io("read", path, e))?;
    let source_to_error = |source| DataError::BadHeader {
        path: path.to_path_buf(),
        source,
    };
    ShardHeader::parse(&bytes).map_err(source_to_error)
}

/// Writes one shard, token by token, under a temporary name.
///
/// The header is written first with N = 0 and patched by [`ShardWriter::finish`]. Dropping the
/// writer before `finish` deletes the temporary file.
pub struct ShardWriter {
    final_path: PathBuf,
    // `out` is declared before `temp` so the file is closed before it is deleted on drop
    out: BufWriter<File>,
    temp: TempFile,
    width: TokenWidth,
    vocab_size: u32,
    token_count: u64,
}

impl ShardWriter {
    /// Starts a shard that will become `path`, for tokens below `vocab_size`.
    pub fn create(path: &Path, vocab_size: u32) -> Result<Self> {
        let (temp, file) = TempFile::create(temp_path_for(path))?;
        let mut writer = ShardWriter {
            final_path: path.to_path_buf(),
            out: BufWriter::new(file),
            temp,
            width: TokenWidth::for_vocab(vocab_size),
            vocab_size,
            token_count: 0,
        };
        let placeholder = writer.header().to_bytes();
        writer.write_bytes(&placeholder)?;
        Ok(writer)
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.token_count
    }

    pub fn is_empty(&self) -> bool {
        self.token_count == 0
    }

    /// Appends `tokens`. Fails if one is >= the vocabulary size or the shard would pass
    /// [`MAX_TOKENS`].
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        if self.token_count + tokens.len() as u64 > MAX_TOKENS {
            let what = format!("a shard holds at most {MAX_TOKENS} tokens; use smaller shards");
            return Err(DataError::BadConfig { what });
        }
        self.check_range(tokens)?;
        let mut bytes = Vec::with_capacity(tokens.len() * self.width.bytes());
        for &token in tokens {
            match self.width {
                // in range for u16: check_range passed and V <= 65536 picks this width
                TokenWidth::U16 => bytes.extend_from_slice(&(token as u16).to_le_bytes()),
                TokenWidth::U32 => bytes.extend_from_slice(&token.to_le_bytes()),
            }
        }
        self.write_bytes(&bytes)?;
        self.token_count += tokens.len() as u64;
        Ok(())
    }

    /// Writes the real header, flushes and syncs. The shard keeps its temporary name until
    /// [`WrittenShard::commit`].
    pub fn finish(self) -> Result<WrittenShard> {
        let header = self.header().to_bytes();
        let ShardWriter {
            final_path,
            out,
            temp,
            token_count,
            ..
        } = self;
        let write_error = |e| DataError::io("write", temp.path(), e);
        let mut file = out.into_inner().map_err(|e| write_error(e.into()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .and_then(|_| file.sync_all())
            .map_err(write_error)?;
        drop(file);
        Ok(WrittenShard {
            final_path,
            temp,
            token_count,
        })
    }

    fn header(&self) -> ShardHeader {
        let (width, token_count) = (self.width, self.token_count);
        ShardHeader {
            width,
            token_count,
            vocab_size: Some(self.vocab_size),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let result = self.out.write_all(bytes);
        result.map_err(|e| DataError::io("write", self.temp.path(), e))
    }

    fn check_range(&self, tokens: &[u32]) -> Result<()> {
        let Some(i) = tokens.iter().position(|&t| t >= self.vocab_size) else {
            return Ok(());
        };
        let index = self.token_count + i as u64;
        Err(DataError::TokenOutOfRange {
            path: self.final_path.clone(),
            offset: HEADER_BYTES as u64 + index * self.width.bytes() as u64,
            token: tokens[i],
            vocab_size: self.vocab_size,
        })
    }
}

/// A complete shard still under its temporary name. Dropping it without [`commit`] deletes it.
///
/// [`commit`]: WrittenShard::commit
pub struct WrittenShard {
    final_path: PathBuf,
    temp: TempFile,
    token_count: u64,
}

impl WrittenShard {
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    pub fn token_count(&self) -> u64 {
        self.token_count
    }

    /// Renames the shard to its final name (atomic within one filesystem).
    pub fn commit(self) -> Result<PathBuf> {
        self.temp.rename_to(&self.final_path)?;
        Ok(self.final_path)
    }
}

/// A file under a temporary name, deleted when dropped unless renamed into place first.
struct TempFile {
    /// `None` once renamed: nothing left to delete.
    path: Option<PathBuf>,
}

impl TempFile {
    /// Creates (or truncates) the file at `path`, open for writing.
    fn create(path: PathBuf) -> Result<(Self, File)> {
        let file = File::create(&path).map_err(|e| DataError::io("create", &path, e))?;
        Ok((TempFile { path: Some(path) }, file))
    }

    fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a temp file has a path until renamed")
    }

    fn rename_to(mut self, target: &Path) -> Result<()> {
        let path = self.path.take().expect("renamed once");
        if let Err(e) = fs::rename(&path, target) {
            self.path = Some(path); // so that drop deletes it
            return Err(DataError::io("rename into place", target, e));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // best effort: the error that made us drop early is the one worth reporting
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes `tokens` as a complete shard at `path` in one go.
pub fn write_shard(path: &Path, tokens: &[u32], vocab_size: u32) -> Result<PathBuf> {
    let mut writer = ShardWriter::create(path, vocab_size)?;
    writer.push(tokens)?;
    writer.finish()?.commit()
}

/// `dir/.name.tmp` for `dir/name`: hidden, and in the same folder so the rename is atomic.
fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_round_trips_u16_and_u32() {
        let dir = tempfile::tempdir().unwrap();
        for (vocab, width) in [(256, TokenWidth::U16), (100_000, TokenWidth::U32)] {
            let path = dir.path().join(format!("v{vocab}.bin"));
            let tokens: Vec<u32> = (0..1000).map(|i| (i * 37) % vocab).collect();
            write_shard(&path, &tokens, vocab).unwrap();
            let shard = Shard::open(&path, vocab).unwrap();
            assert_eq!(shard.header().width, width);
            assert_eq!(shard.to_vec(), tokens);
            let file_len = fs::metadata(&path).unwrap().len();
            assert_eq!(file_len, 1024 + 1000 * width.bytes() as u64);
        }
    }

    #[test]
    fn read_into_takes_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        write_shard(&path, &[5, 6, 7, 8, 9], 10).unwrap();
        let mut out = [0u32; 3];
        Shard::open(&path, 10).unwrap().read_into(1, &mut out);
        assert_eq!(out, [6, 7, 8]);
    }

    #[test]
    fn dropping_an_unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let mut writer = ShardWriter::create(&path, 256).unwrap();
        writer.push(&[1, 2, 3]).unwrap();
        drop(writer);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_uncommitted_shard_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ShardWriter::create(&dir.path().join("x.bin"), 256).unwrap();
        writer.push(&[1, 2, 3]).unwrap();
        let written = writer.finish().unwrap();
        assert_eq!(written.token_count(), 3);
        drop(written);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn writer_rejects_tokens_outside_the_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ShardWriter::create(&dir.path().join("x.bin"), 256).unwrap();
        writer.push(&[1, 2]).unwrap();
        let err = writer.push(&[3, 256]).unwrap_err();
        // token index 3 sits at 1024 + 3 * 2 bytes
        assert!(matches!(
            err,
            DataError::TokenOutOfRange {
                offset: 1030,
                token: 256,
                ..
            }
        ));
    }
}
