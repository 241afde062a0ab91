//! Cross-crate integration tests live in tests/tests/: they combine the
//! library crates the way the CLI does, without the CLI (end-to-end tests
//! of the binary live in bin/ferry/tests/, where Cargo can build it).
//!
//! The library holds what the tests and the relay tools in `examples/`
//! (`relay_load`, `relay_probe`) share: [`Pattern`], a deterministic byte
//! stream a receiver can check exactly without the sender's data.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Size of the block a [`Pattern`] repeats (with a stamp per block).
pub const PATTERN_BLOCK: usize = 1 << 20;

/// An endless byte stream from a seed: one pseudo-random block of
/// [`PATTERN_BLOCK`] bytes, repeated, with the block's index and the seed
/// written over the first 16 bytes of every block. Two streams with
/// different seeds differ in every block, and a block that arrives twice,
/// is skipped or comes from another stream fails [`PatternCheck`].
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    block: Vec<u8>,
}

impl Pattern {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        // xorshift64: cheap, incompressible enough, different per seed.
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut block = Vec::with_capacity(PATTERN_BLOCK);
        while block.len() < PATTERN_BLOCK {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes());
        }
        block.truncate(PATTERN_BLOCK);
        Pattern { seed, block }
    }

    /// Writes the stream's bytes `offset..offset + out.len()` into `out`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut pos = offset;
        let mut done = 0;
        while done < out.len() {
            let index = pos / PATTERN_BLOCK as u64;
            let within = (pos % PATTERN_BLOCK as u64) as usize;
            let n = (PATTERN_BLOCK - within).min(out.len() - done);
            let dst = &mut out[done..done + n];
            dst.copy_from_slice(&self.block[within..within + n]);
            // The stamp: index then seed, over the block's first 16 bytes.
            let mut stamp = [0u8; 16];
            stamp[..8].copy_from_slice(&index.to_le_bytes());
            stamp[8..].copy_from_slice(&self.seed.to_le_bytes());
            if within < stamp.len() {
                let end = stamp.len().min(within + n);
                dst[..end - within].copy_from_slice(&stamp[within..end]);
            }
            done += n;
            pos += n as u64;
        }
    }

    /// A checker for this stream from its start.
    pub fn checker(&self) -> PatternCheck {
        PatternCheck {
            pattern: self.clone(),
            offset: 0,
            scratch: Vec::new(),
        }
    }
}

/// Compares received bytes, in order, with a [`Pattern`].
#[derive(Debug)]
pub struct PatternCheck {
    pattern: Pattern,
    offset: u64,
    scratch: Vec<u8>,
}

impl PatternCheck {
    /// Checks the next bytes of the stream. On a mismatch, returns the
    /// stream offset of the first wrong byte (and stays there).
    pub fn update(&mut self, data: &[u8]) -> Result<(), u64> {
        self.scratch.resize(data.len(), 0);
        self.pattern.fill(self.offset, &mut self.scratch);
        if let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            return Err(self.offset + i as u64);
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Bytes checked so far.
    pub fn checked(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_any_size_check_against_the_whole() {
        let pattern = Pattern::new(7);
        let len = 3 * PATTERN_BLOCK + 1234;
        let mut whole = vec![0u8; len];
        pattern.fill(0, &mut whole);
        let mut check = pattern.checker();
        let mut at = 0;
        for step in [
            1usize,
            15,
            16,
            17,
            PATTERN_BLOCK - 49,
            PATTERN_BLOCK + 3,
            100_000,
        ] {
            let end = (at + step).min(len);
            assert_eq!(check.update(&whole[at..end]), Ok(()));
            at = end;
        }
        assert_eq!(check.update(&whole[at..]), Ok(()));
        assert_eq!(check.checked(), len as u64);
    }

    #[test]
    fn a_repeated_block_or_another_seed_is_caught() {
        let pattern = Pattern::new(1);
        let mut first = vec![0u8; PATTERN_BLOCK];
        pattern.fill(0, &mut first);
        let mut check = pattern.checker();
        assert_eq!(check.update(&first), Ok(()));
        // The same block again: only its stamp differs, and that is caught.
        assert_eq!(check.update(&first), Err(PATTERN_BLOCK as u64));
        let mut other = vec![0u8; 4096];
        Pattern::new(2).fill(0, &mut other);
        assert_eq!(Pattern::new(1).checker().update(&other), Err(8));
    }
}
