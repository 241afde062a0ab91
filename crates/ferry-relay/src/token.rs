//! Relay tokens a relay can check without asking the rendezvous server.
//!
//! The rendezvous server and the relay share a secret (at least 32 random
//! bytes). On a claim the rendezvous gives both sides of the nameplate one
//! token; the relay checks its MAC and its expiry itself, and remembers the
//! tokens it saw (its pairing rules, which use this module) so that only
//! two connections can present one. This is the TURN REST-API idea with BLAKE3 in place of
//! HMAC-SHA1, plus single use.
//!
//! ```text
//! key   = BLAKE3 derive_key("ferry relay token v1", secret)
//! token = nameplate (u32 BE) | expires (u32 BE, Unix seconds) | nonce (8 random bytes)
//!         | mac = first 16 bytes of BLAKE3 keyed_hash(key, the 16 bytes before it)
//!       = 32 bytes, 64 hex digits on the wire
//! ```
//!
//! - Unforgeable: without the key, a valid MAC is a 2^-128 guess per try
//!   (the relay checks online and limits connections per address). The
//!   MAC is compared in constant time.
//! - Short-lived: `expires` is wall-clock time, so the two hosts' clocks
//!   must agree to well within the token's lifetime (NTP).
//! - Bound to its nameplate, and unique: the nonce comes from the
//!   rendezvous server's seeded rng, so two claims never share a token.
//! - Single use is the relay's memory, not the token's: see the pairing
//!   rules.
//!
//! Pure functions: no sockets, no clock (time is an argument). This module
//! uses no other module of the crate; `pairing` builds on it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A relay token: 32 bytes the rendezvous gives both sides of a nameplate,
/// signed with the relay's key (layout above).
pub type Token = [u8; 32];

/// Formats a token as the 64 hex digits that travel in frames.
pub fn token_to_hex(token: &Token) -> String {
    hex::encode(token)
}

/// Parses 64 hex digits into a token; `None` for anything else.
pub fn token_from_hex(text: &str) -> Option<Token> {
    if text.len() != 64 {
        return None;
    }
    let mut token = [0u8; 32];
    hex::decode_to_slice(text, &mut token).ok()?;
    Some(token)
}

/// The BLAKE3 `derive_key` context; a new token format takes a new one.
pub const KEY_CONTEXT: &str = "ferry relay token v1";

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Bytes of the MAC at the end of a token.
pub const MAC_LEN: usize = 16;

/// How to make a secret, for error messages and help texts.
pub const SECRET_HOWTO: &str =
    "openssl rand -hex 32 > relay.secret (or: od -An -tx1 -N32 /dev/urandom > relay.secret)";

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The nameplate whose two sides got the token.
    pub nameplate: u32,
    /// Unix time (seconds) from which the token is refused.
    pub expires: u64,
}

/// Why a relay secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// A character that is neither a hex digit nor whitespace.
    #[error(
        "the relay secret must be hex digits (whitespace is ignored), found {found:?}; make one with: {SECRET_HOWTO}"
    )]
    NotHex {
        /// The offending character.
        found: char,
    },
    /// An odd number of hex digits.
    #[error("the relay secret has an odd number of hex digits; make one with: {SECRET_HOWTO}")]
    OddLength,
    /// Fewer than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "the relay secret holds {bytes} bytes, it needs at least {MIN_SECRET_LEN} random bytes ({} hex digits); make one with: {SECRET_HOWTO}",
        MIN_SECRET_LEN * 2
    )]
    TooShort {
        /// How many bytes it held.
        bytes: usize,
    },
}

/// The key that signs and checks relay tokens, derived from the shared
/// secret. Its `Debug` output does not show it.
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// The key for a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn from_secret(secret: &[u8]) -> Result<TokenKey, SecretError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                bytes: secret.len(),
            });
        }
        Ok(TokenKey {
            key: blake3::derive_key(KEY_CONTEXT, secret),
        })
    }

    /// The key for a secret of exactly [`MIN_SECRET_LEN`] bytes, e.g. 32
    /// random bytes for a relay and a rendezvous server in one process.
    pub fn from_random(secret: [u8; MIN_SECRET_LEN]) -> TokenKey {
        TokenKey {
            key: blake3::derive_key(KEY_CONTEXT, &secret),
        }
    }

    /// The key for a secret written as hex digits (the secret file's
    /// format); whitespace anywhere is ignored.
    pub fn from_hex(text: &str) -> Result<TokenKey, SecretError> {
        let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(found) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(SecretError::NotHex { found });
        }
        if digits.len() % 2 == 1 {
            return Err(SecretError::OddLength);
        }
        let secret = hex::decode(&digits).map_err(|_| SecretError::OddLength)?;
        Self::from_secret(&secret)
    }

    /// A token for both sides of `nameplate`, refused from Unix time
    /// `expires` (seconds; clamped to what 32 bits hold, i.e. up to 2106).
    pub fn issue(&self, nameplate: u32, expires: u64, nonce: [u8; 8]) -> Token {
        let expires = u32::try_from(expires).unwrap_or(u32::MAX);
        let mut token = [0u8; 32];
        token[..4].copy_from_slice(&nameplate.to_be_bytes());
        token[4..8].copy_from_slice(&expires.to_be_bytes());
        token[8..16].copy_from_slice(&nonce);
        let mac = self.mac(&token);
        token[16..].copy_from_slice(&mac);
        token
    }

    /// What `token` says, if this key signed it. Says nothing about
    /// expiry or reuse: that is the caller's to check.
    pub fn verify(&self, token: &Token) -> Option<Claims> {
        let expected = self.mac(token);
        let mut presented = [0u8; MAC_LEN];
        presented.copy_from_slice(&token[16..]);
        if !constant_time_eq::constant_time_eq_16(&expected, &presented) {
            return None;
        }
        let word = |at: usize| {
            u32::from_be_bytes([token[at], token[at + 1], token[at + 2], token[at + 3]])
        };
        Some(Claims {
            nameplate: word(0),
            expires: u64::from(word(4)),
        })
    }

    fn mac(&self, token: &Token) -> [u8; MAC_LEN] {
        let hash = blake3::keyed_hash(&self.key, &token[..16]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&hash.as_bytes()[..MAC_LEN]);
        mac
    }
}

/// The Unix time of `time` in whole seconds (0 before 1970).
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The expiry of a token issued at Unix time `now` that lives `ttl`
/// (rounded up to whole seconds, at least one).
pub fn expiry(now: u64, ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    now.saturating_add(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> TokenKey {
        TokenKey::from_secret(&[byte; 32]).unwrap()
    }

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let token = key(1).issue(4242, 1_700_000_120, [9; 8]);
        assert_eq!(
            key(1).verify(&token),
            Some(Claims {
                nameplate: 4242,
                expires: 1_700_000_120
            })
        );
        // Byte layout: the claims in the clear, then nonce and MAC.
        assert_eq!(&token[..4], &4242u32.to_be_bytes());
        assert_eq!(&token[4..8], &1_700_000_120u32.to_be_bytes());
        assert_eq!(&token[8..16], &[9; 8]);
    }

    #[test]
    fn another_secret_or_any_flipped_bit_fails() {
        let token = key(1).issue(7, 1_000, [3; 8]);
        assert_eq!(key(2).verify(&token), None);
        for bit in 0..256 {
            let mut bad = token;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(key(1).verify(&bad), None, "bit {bit}");
        }
        assert_eq!(key(1).verify(&[0; 32]), None);
    }

    #[test]
    fn nonce_makes_tokens_distinct() {
        let k = key(1);
        assert_ne!(k.issue(7, 1_000, [1; 8]), k.issue(7, 1_000, [2; 8]));
    }

    #[test]
    fn a_32_byte_secret_gives_the_same_key_either_way() {
        let token = TokenKey::from_random([1; 32]).issue(7, 1_000, [0; 8]);
        assert!(key(1).verify(&token).is_some());
    }

    #[test]
    fn secrets_are_hex_of_at_least_32_bytes() {
        let hex64 = "00112233445566778899aabbccddeeff".repeat(2);
        let spaced = format!(" {}\n{}\n", &hex64[..32], &hex64[32..]);
        let a = TokenKey::from_hex(&hex64).unwrap();
        let b = TokenKey::from_hex(&spaced).unwrap();
        let token = a.issue(1, 2, [0; 8]);
        assert!(b.verify(&token).is_some(), "whitespace is ignored");
        // `od -An -tx1` output parses too.
        assert!(TokenKey::from_hex(&" 0a 1b".repeat(32)).is_ok());
        assert_eq!(
            TokenKey::from_hex(&hex64[..62]).unwrap_err(),
            SecretError::TooShort { bytes: 31 }
        );
        assert_eq!(
            TokenKey::from_hex("").unwrap_err(),
            SecretError::TooShort { bytes: 0 }
        );
        assert_eq!(
            TokenKey::from_hex(&format!("{hex64}z")).unwrap_err(),
            SecretError::NotHex { found: 'z' }
        );
        assert_eq!(
            TokenKey::from_hex(&format!("{hex64}a")).unwrap_err(),
            SecretError::OddLength
        );
        let message = SecretError::TooShort { bytes: 3 }.to_string();
        assert!(message.contains("openssl rand -hex 32"), "{message}");
        assert_eq!(format!("{a:?}"), "TokenKey(..)");
    }

    #[test]
    fn expiry_rounds_up_and_clamps() {
        assert_eq!(expiry(100, Duration::from_secs(120)), 220);
        assert_eq!(expiry(100, Duration::from_millis(1500)), 102);
        assert_eq!(expiry(100, Duration::ZERO), 101);
        assert_eq!(expiry(u64::MAX, Duration::from_secs(5)), u64::MAX);
        let late = key(1).issue(1, u64::MAX, [0; 8]);
        assert_eq!(key(1).verify(&late).unwrap().expires, u64::from(u32::MAX));
    }
}
