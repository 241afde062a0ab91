//! One BLAKE3 pass per byte. The hash a data frame carries is the chaining
//! value of its chunk's subtree in the file's BLAKE3 tree
//! ([`chunk_hash`]), and the whole-file hash of `FileEnd` is merged from
//! those chaining values ([`FileHash`]), so no byte is hashed twice.
//!
//! With a power-of-two chunk size of at least 1 KiB and chunks placed at
//! its multiples (all full but a file's last), every chunk is a whole
//! subtree of the file's tree, and the tree above the chunks is the one
//! BLAKE3 builds over its own 1 KiB chunks: the same lazy merge stack
//! gives the standard `blake3::hash` of the whole file.
//!
//! ```text
//!               root            = blake3::hash(file)       (FileEnd)
//!             /      \
//!        parent       \          merge_subtrees_non_root / _root
//!       /      \       \
//!   chunk 0  chunk 1  chunk 2    chunk_hash(offset, bytes) (data frames)
//! ```
//!
//! Built on `blake3::hazmat`; the property tests below compare every
//! result with `blake3::hash`.

use std::io::{self, Read};

use blake3::hazmat::{
    HasherExt, Mode, max_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::codec::HASH_LEN;

/// Why a chunk or chunk size cannot be hashed as a subtree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The chunk size is not a power of two of at least 1 KiB.
    #[error("chunk size {0} is not a power of two of at least 1 KiB")]
    ChunkSize(usize),
    /// An empty chunk (no subtree is empty).
    #[error("empty chunk at offset {offset}")]
    Empty {
        /// Where it would start.
        offset: u64,
    },
    /// The chunk's offset or length does not make it one subtree of the
    /// file's tree (not on a chunk boundary, too long, or after a short
    /// chunk).
    #[error("a chunk of {len} bytes at offset {offset} is not a subtree of the file's hash tree")]
    NotSubtree {
        /// Where the chunk starts in the file.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

/// The hash of the chunk `bytes` at `offset` of a file, as data frames
/// carry it: the non-root chaining value of its subtree in the file's
/// BLAKE3 tree. `offset` must be a multiple of 1 KiB, and `bytes` (not
/// empty) no longer than the subtree at `offset` may be
/// (`blake3::hazmat::max_subtree_len`): with chunks of a power-of-two
/// size placed at its multiples, every chunk qualifies.
pub fn chunk_hash(offset: u64, bytes: &[u8]) -> Result<[u8; HASH_LEN], HashError> {
    Ok(subtree(offset, bytes)?.finalize_non_root())
}

/// The whole-file hash, merged from the chaining values of its chunks as
/// they arrive in order. [`FileHash::finalize`] is the standard
/// `blake3::hash` of all bytes given so far, so a resumed prefix is
/// checked the same way as a whole file.
#[derive(Debug, Clone)]
pub struct FileHash {
    chunk_size: u64,
    /// Bytes given so far.
    len: u64,
    /// Chunks given so far.
    chunks: u64,
    /// Chaining values of the completed subtrees, left to right (at most
    /// one per bit of `chunks`, so 64 at most).
    stack: Vec<[u8; HASH_LEN]>,
    /// The root hash while there is at most one chunk: a one-chunk file
    /// has no parent node to merge, and its root cannot be derived from
    /// its chaining value.
    single: blake3::Hash,
}

impl FileHash {
    /// An empty file's hash, to be fed chunks of `chunk_size` bytes (a
    /// power of two of at least 1 KiB; the last chunk may be shorter).
    pub fn new(chunk_size: usize) -> Result<Self, HashError> {
        if !chunk_size.is_power_of_two() || chunk_size < blake3::CHUNK_LEN {
            return Err(HashError::ChunkSize(chunk_size));
        }
        Ok(Self {
            chunk_size: chunk_size as u64,
            len: 0,
            chunks: 0,
            stack: Vec::new(),
            single: blake3::hash(b""),
        })
    }

    /// Hashes the next chunk and adds it; returns its [`chunk_hash`]. Every
    /// chunk but the last must be exactly the chunk size.
    pub fn update(&mut self, chunk: &[u8]) -> Result<[u8; HASH_LEN], HashError> {
        let offset = self.len;
        if offset % self.chunk_size != 0 || chunk.len() as u64 > self.chunk_size {
            return Err(HashError::NotSubtree {
                offset,
                len: chunk.len(),
            });
        }
        let hasher = subtree(offset, chunk)?;
        let cv = hasher.finalize_non_root();
        if offset == 0 {
            // The same hasher gives the root too, at the cost of a few
            // parent nodes: no second pass over the chunk.
            self.single = hasher.finalize();
        }
        self.push(cv);
        self.len += chunk.len() as u64;
        Ok(cv)
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The standard BLAKE3 hash of everything given so far (more chunks
    /// may follow).
    pub fn finalize(&self) -> blake3::Hash {
        let Some((last, rest)) = self.stack.split_last() else {
            return self.single;
        };
        let Some((first, middle)) = rest.split_first() else {
            return self.single;
        };
        let right = middle.iter().rev().fold(*last, |right, left| {
            merge_subtrees_non_root(left, &right, Mode::Hash)
        });
        merge_subtrees_root(first, &right, Mode::Hash)
    }

    /// Adds the chaining value of the next chunk. BLAKE3's own lazy merge:
    /// before pushing chunk `n`, merge while the stack holds more subtrees
    /// than `n` has one bits; what stays is merged only at the end, when it
    /// is known which merge is the root.
    fn push(&mut self, cv: [u8; HASH_LEN]) {
        let keep = self.chunks.count_ones() as usize;
        while self.stack.len() > keep {
            let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                break;
            };
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
        self.stack.push(cv);
        self.chunks += 1;
    }
}

/// Reads and hashes the first `len` bytes of `reader` in chunks of
/// `chunk_size` (the resumed prefix of a file), reusing one buffer.
/// Fails with `UnexpectedEof` if there are fewer.
pub(crate) fn hash_prefix(
    mut reader: impl Read,
    len: u64,
    chunk_size: usize,
) -> io::Result<FileHash> {
    let mut hash = FileHash::new(chunk_size).map_err(io::Error::other)?;
    let mut buf = vec![0; chunk_size];
    while hash.len() < len {
        let n = usize::try_from(len - hash.len()).map_or(chunk_size, |n| n.min(chunk_size));
        let chunk = &mut buf[..n];
        reader.read_exact(chunk)?;
        hash.update(chunk).map_err(io::Error::other)?;
    }
    Ok(hash)
}

/// A hasher that has taken `bytes` as the subtree at `offset`, after
/// checking what `blake3::hazmat` would otherwise assert (and panic on).
fn subtree(offset: u64, bytes: &[u8]) -> Result<blake3::Hasher, HashError> {
    let not_subtree = HashError::NotSubtree {
        offset,
        len: bytes.len(),
    };
    if offset % blake3::CHUNK_LEN as u64 != 0 {
        return Err(not_subtree);
    }
    if bytes.is_empty() {
        return Err(HashError::Empty { offset });
    }
    if max_subtree_len(offset).is_some_and(|max| bytes.len() as u64 > max) {
        return Err(not_subtree);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(bytes);
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic, not repetitive: equal chunks would hide a chunk
    /// merged in the wrong place.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut xof = blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof();
        let mut out = vec![0; len];
        xof.fill(&mut out);
        out
    }

    /// The whole-file hash as the drivers compute it, checked against
    /// `blake3::hash` and against [`chunk_hash`] of every chunk; and, with
    /// at least two chunks, the merge of the `chunk_hash` values alone.
    fn check(len: usize, chunk_size: usize, seed: u64) {
        let bytes = data(len, seed);
        let expected = blake3::hash(&bytes);
        let mut file = FileHash::new(chunk_size).unwrap();
        let mut cvs = FileHash::new(chunk_size).unwrap();
        for (i, chunk) in bytes.chunks(chunk_size).enumerate() {
            let offset = (i * chunk_size) as u64;
            let cv = chunk_hash(offset, chunk).unwrap();
            assert_eq!(file.update(chunk).unwrap(), cv, "chunk {i}");
            cvs.push(cv);
        }
        assert_eq!(file.len(), len as u64);
        assert_eq!(file.finalize(), expected, "len {len}, chunk {chunk_size}");
        if len > chunk_size {
            assert_eq!(cvs.finalize(), expected, "CVs only: len {len}");
        }
        // A resumed prefix of whole chunks hashes like a file of its own.
        let prefix = (len / chunk_size / 2) * chunk_size;
        let resumed = hash_prefix(&bytes[..], prefix as u64, chunk_size).unwrap();
        assert_eq!(resumed.finalize(), blake3::hash(&bytes[..prefix]));
        let mut resumed = resumed;
        for chunk in bytes[prefix..].chunks(chunk_size) {
            resumed.update(chunk).unwrap();
        }
        assert_eq!(resumed.finalize(), expected, "resumed at {prefix}");
    }

    fn chunk_sizes() -> impl Strategy<Value = usize> {
        (10u32..=20).prop_map(|bits| 1usize << bits)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn merged_chunk_hashes_are_blake3_of_the_file(
            chunk_size in chunk_sizes(),
            chunks in 0usize..40,
            tail in 0usize..4096,
            seed: u64,
        ) {
            let len = (chunks * chunk_size + tail).min(8 << 20);
            check(len, chunk_size, seed);
        }
    }

    #[test]
    fn edge_lengths_match_blake3() {
        for bits in 10..=20 {
            let c = 1usize << bits;
            for len in [
                0,
                1,
                1023,
                1024,
                1025,
                c - 1,
                c,
                c + 1,
                2 * c,
                3 * c - 1,
                3 * c,
                4 * c,
                5 * c + 7,
                7 * c,
                8 * c + 1,
            ] {
                check(len, c, len as u64);
            }
        }
        // Many chunks, so the stack grows and shrinks several times.
        check(37 * 1024 + 5, 1024, 1);
        check(256 * 1024 * 5 + 3, 256 * 1024, 2);
    }

    #[test]
    fn bad_chunks_are_errors_not_panics() {
        assert_eq!(FileHash::new(3000).unwrap_err(), HashError::ChunkSize(3000));
        assert_eq!(FileHash::new(512).unwrap_err(), HashError::ChunkSize(512));
        assert_eq!(chunk_hash(0, b""), Err(HashError::Empty { offset: 0 }));
        assert!(matches!(
            chunk_hash(5, b"x"),
            Err(HashError::NotSubtree { .. })
        ));
        // The subtree at 1 KiB holds one 1 KiB chunk.
        assert!(chunk_hash(1024, &[0; 1024]).is_ok());
        assert!(matches!(
            chunk_hash(1024, &[0; 1025]),
            Err(HashError::NotSubtree { .. })
        ));
        let mut file = FileHash::new(1024).unwrap();
        assert!(file.update(&[0; 1025]).is_err(), "longer than a chunk");
        file.update(&[0; 10]).unwrap();
        assert!(file.update(&[0; 10]).is_err(), "after a short chunk");
        let mut file = FileHash::new(1024).unwrap();
        assert!(file.update(b"").is_err());
    }
}
