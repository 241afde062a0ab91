//! Pairing: SPAKE2 over the rendezvous mailbox, key confirmation, and the
//! sealed channel that follows.
//!
//! ```text
//! sender (SPAKE2 side A)                        receiver (side B)
//!   | {"phase":"pake","body":hex}  ------------>  |
//!   | <------------  {"phase":"pake","body":hex}  |
//!   |        both derive K, then per-direction keys
//!   | {"phase":"sealed","seq":0,"body":hex(Version)} ->
//!   | <- {"phase":"sealed","seq":0,"body":hex(Version)}
//!   |   opening the peer's Version confirms the key; failure = wrong code
//!   | sealed PeerToPeer messages, seq strictly increasing per direction
//! ```
//!
//! The password is the whole code phrase (`7-orbit-lantern`). Each side's
//! sealing key is `blake3::derive_key("ferry v1 sender to receiver", K)` or
//! `"ferry v1 receiver to sender"`; messages are ChaCha20-Poly1305 with the
//! sequence number as nonce, and the opener rejects any sequence number not
//! above the last one it accepted (replays, reordering).
//!
//! Bodies arrive over one TCP stream through the server, so the peer's pake
//! always comes before its sealed messages; the peer's sealed Version may
//! arrive before we have sent ours, which is fine because ours is queued as
//! soon as the peer's pake is processed.

use std::collections::VecDeque;
use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::peer::PeerToPeer;

/// Which side of the transfer this is. The sender is SPAKE2 side A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that allocated the nameplate and sends files.
    Sender,
    /// The side that typed the code and receives files.
    Receiver,
}

/// Errors from [`Pairing`] and [`SecureChannel`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The peer's key-confirmation message did not open: the two sides typed
    /// different codes (or someone tampered with it).
    #[error("the code did not match")]
    CodeMismatch,
    /// A body that is not a valid envelope or message.
    #[error("malformed message from the peer: {reason}")]
    BadMessage {
        /// What was wrong.
        reason: String,
    },
    /// A message in the wrong phase (e.g. a second pake, sealed before pake).
    #[error("unexpected message from the peer: {what}")]
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// SPAKE2 rejected the peer's message.
    #[error("key exchange failed: {reason}")]
    Pake {
        /// The SPAKE2 error.
        reason: String,
    },
    /// A sealed message with a sequence number not above the last accepted.
    #[error("replayed or reordered message (seq {seq}, last accepted {last})")]
    Replay {
        /// The sequence number received.
        seq: u64,
        /// The last sequence number accepted.
        last: u64,
    },
    /// A sealed message failed authentication after pairing.
    #[error("a message from the peer failed authentication")]
    Tampered,
}

/// The mailbox body format.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
enum Envelope {
    Pake { body: String },
    Sealed { seq: u64, body: String },
}

/// The pairing state machine: feed it mailbox bodies from the peer, send
/// whatever [`Pairing::poll_outbound`] yields.
pub struct Pairing {
    role: Role,
    agent: String,
    features: Vec<String>,
    spake: Option<Spake2<Ed25519Group>>,
    keys: Option<Keys>,
    outbound: VecDeque<String>,
    done: bool,
}

impl Pairing {
    /// Starts pairing with `code` (the whole phrase; it is normalised when it
    /// parses as a [`crate::Code`]) and queues our SPAKE2 message.
    pub fn new(code: &str, role: Role, agent: &str) -> Pairing {
        let password = match code.parse::<crate::Code>() {
            Ok(parsed) => parsed.to_string(),
            Err(_) => code.trim().to_string(),
        };
        let password = Password::new(password.as_bytes());
        let id_a = Identity::new(b"ferry-sender");
        let id_b = Identity::new(b"ferry-receiver");
        // spake2 0.4's start_a/start_b draw the secret scalar from OsRng
        // internally; this is the one place ferry-proto uses OS randomness.
        let (spake, message) = match role {
            Role::Sender => Spake2::<Ed25519Group>::start_a(&password, &id_a, &id_b),
            Role::Receiver => Spake2::<Ed25519Group>::start_b(&password, &id_a, &id_b),
        };
        let mut outbound = VecDeque::new();
        outbound.push_back(envelope_string(&Envelope::Pake {
            body: hex::encode(message),
        }));
        Pairing {
            role,
            agent: agent.to_string(),
            features: Vec::new(),
            spake: Some(spake),
            keys: None,
            outbound,
            done: false,
        }
    }

    /// Lists `features` (optional parts of the protocol we understand, e.g.
    /// [`FEATURE_CANDIDATES`](crate::peer::FEATURE_CANDIDATES)) in our
    /// Version, which goes out once the peer's pake arrives.
    pub fn with_features(mut self, features: &[&str]) -> Pairing {
        self.features = features.iter().map(|f| f.to_string()).collect();
        self
    }

    /// The next mailbox body to send to the peer, if any.
    ///
    /// Keep draining this after [`Pairing::handle_inbound`] returned the
    /// channel: our own Version may still be waiting here.
    pub fn poll_outbound(&mut self) -> Option<String> {
        self.outbound.pop_front()
    }

    /// Handles one mailbox body from the peer.
    ///
    /// Returns `Some(channel)` once the peer's Version opened, i.e. both
    /// sides hold the same key. Fails with [`PairingError::CodeMismatch`]
    /// when the peer's first sealed message does not open.
    pub fn handle_inbound(&mut self, body: &str) -> Result<Option<SecureChannel>, PairingError> {
        if self.done {
            return Err(PairingError::Unexpected {
                what: "message after pairing completed",
            });
        }
        match parse_envelope(body)? {
            Envelope::Pake { body } => {
                let message = hex::decode(&body).map_err(|e| PairingError::BadMessage {
                    reason: format!("pake body is not hex: {e}"),
                })?;
                let spake = self.spake.take().ok_or(PairingError::Unexpected {
                    what: "second pake message",
                })?;
                let key = spake.finish(&message).map_err(|e| PairingError::Pake {
                    reason: format!("{e:?}"),
                })?;
                let mut keys = Keys::new(&key, self.role)?;
                let version = PeerToPeer::Version {
                    protocol: crate::PROTOCOL_VERSION,
                    agent: self.agent.clone(),
                    features: self.features.clone(),
                };
                self.outbound.push_back(keys.seal(&version));
                self.keys = Some(keys);
                Ok(None)
            }
            Envelope::Sealed { seq, body } => {
                let keys = self.keys.as_mut().ok_or(PairingError::Unexpected {
                    what: "sealed message before pake",
                })?;
                let msg = match keys.open(seq, &body) {
                    Ok(msg) => msg,
                    Err(PairingError::Tampered) => return Err(PairingError::CodeMismatch),
                    Err(e) => return Err(e),
                };
                let PeerToPeer::Version {
                    protocol,
                    agent,
                    features,
                } = msg
                else {
                    return Err(PairingError::Unexpected {
                        what: "first sealed message is not version",
                    });
                };
                self.done = true;
                let Some(keys) = self.keys.take() else {
                    return Err(PairingError::Unexpected { what: "no keys" });
                };
                Ok(Some(SecureChannel {
                    keys,
                    peer_protocol: protocol,
                    peer_agent: agent,
                    peer_features: features,
                }))
            }
        }
    }
}

impl fmt::Debug for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pairing")
            .field("role", &self.role)
            .field("have_key", &self.keys.is_some())
            .field("outbound", &self.outbound.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The sealed channel between the peers, after pairing succeeded.
pub struct SecureChannel {
    keys: Keys,
    peer_protocol: u32,
    peer_agent: String,
    peer_features: Vec<String>,
}

impl SecureChannel {
    /// Seals `msg` into a mailbox body for the peer.
    pub fn seal(&mut self, msg: &PeerToPeer) -> String {
        self.keys.seal(msg)
    }

    /// Opens a mailbox body from the peer. Rejects tampered, replayed and
    /// reordered bodies.
    pub fn open(&mut self, body: &str) -> Result<PeerToPeer, PairingError> {
        match parse_envelope(body)? {
            Envelope::Sealed { seq, body } => self.keys.open(seq, &body),
            Envelope::Pake { .. } => Err(PairingError::Unexpected {
                what: "pake message after pairing",
            }),
        }
    }

    /// The peer's protocol version and agent string from its Version message.
    pub fn peer_version(&self) -> (u32, &str) {
        (self.peer_protocol, &self.peer_agent)
    }

    /// The features the peer listed in its Version (none from older peers).
    pub fn peer_features(&self) -> &[String] {
        &self.peer_features
    }

    /// Whether the peer listed `feature` in its Version.
    pub fn peer_understands(&self, feature: &str) -> bool {
        self.peer_features.iter().any(|f| f == feature)
    }

    /// A 32-byte secret for `context` derived from the SPAKE2 key, the same
    /// on both sides (e.g. hole-punch probe authentication, relay tokens).
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.keys.shared)
    }
}

impl fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureChannel")
            .field("peer_protocol", &self.peer_protocol)
            .field("peer_agent", &self.peer_agent)
            .field("peer_features", &self.peer_features)
            .field("send_seq", &self.keys.send_seq)
            .finish_non_exhaustive()
    }
}

/// Per-direction AEAD keys and counters.
struct Keys {
    shared: Vec<u8>,
    send: LessSafeKey,
    recv: LessSafeKey,
    send_seq: u64,
    /// The highest sequence number accepted so far.
    recv_last: Option<u64>,
}

const SENDER_TO_RECEIVER: &str = "ferry v1 sender to receiver";
const RECEIVER_TO_SENDER: &str = "ferry v1 receiver to sender";

impl Keys {
    fn new(shared: &[u8], role: Role) -> Result<Keys, PairingError> {
        let s2r = blake3::derive_key(SENDER_TO_RECEIVER, shared);
        let r2s = blake3::derive_key(RECEIVER_TO_SENDER, shared);
        let (send, recv) = match role {
            Role::Sender => (s2r, r2s),
            Role::Receiver => (r2s, s2r),
        };
        Ok(Keys {
            shared: shared.to_vec(),
            send: aead_key(&send)?,
            recv: aead_key(&recv)?,
            send_seq: 0,
            recv_last: None,
        })
    }

    fn seal(&mut self, msg: &PeerToPeer) -> String {
        let seq = self.send_seq;
        // 2^64 messages cannot be sent in practice; saturating keeps the
        // counter from wrapping to a used nonce (the peer rejects repeats).
        self.send_seq = self.send_seq.saturating_add(1);
        // Serializing PeerToPeer (strings, numbers, addresses) cannot fail.
        let mut buf = serde_json::to_vec(msg).unwrap_or_default();
        // Sealing fails only when the input exceeds ChaCha20-Poly1305's
        // 256 GiB limit, which a JSON message never does.
        let _ = self
            .send
            .seal_in_place_append_tag(nonce(seq), Aad::empty(), &mut buf);
        envelope_string(&Envelope::Sealed {
            seq,
            body: hex::encode(buf),
        })
    }

    fn open(&mut self, seq: u64, body: &str) -> Result<PeerToPeer, PairingError> {
        if let Some(last) = self.recv_last {
            if seq <= last {
                return Err(PairingError::Replay { seq, last });
            }
        }
        let mut buf = hex::decode(body).map_err(|e| PairingError::BadMessage {
            reason: format!("sealed body is not hex: {e}"),
        })?;
        let plain = self
            .recv
            .open_in_place(nonce(seq), Aad::empty(), &mut buf)
            .map_err(|_| PairingError::Tampered)?;
        let msg = serde_json::from_slice(plain).map_err(|e| PairingError::BadMessage {
            reason: format!("sealed message is not a peer message: {e}"),
        })?;
        self.recv_last = Some(seq);
        Ok(msg)
    }
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, PairingError> {
    UnboundKey::new(&CHACHA20_POLY1305, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| PairingError::Pake {
            reason: "could not build the AEAD key".into(),
        })
}

fn nonce(seq: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn envelope_string(envelope: &Envelope) -> String {
    // An enum of strings and integers always serializes.
    serde_json::to_string(envelope).unwrap_or_default()
}

fn parse_envelope(body: &str) -> Result<Envelope, PairingError> {
    serde_json::from_str(body).map_err(|e| PairingError::BadMessage {
        reason: format!("not a pairing envelope: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Candidate, CandidateKind, Transport};

    /// Runs both machines to completion, delivering everything in order.
    fn pair(
        code_s: &str,
        code_r: &str,
    ) -> (
        Result<SecureChannel, PairingError>,
        Result<SecureChannel, PairingError>,
    ) {
        let mut s = Pairing::new(code_s, Role::Sender, "ferry-test/s");
        let mut r = Pairing::new(code_r, Role::Receiver, "ferry-test/r");
        let mut s_done = None;
        let mut r_done = None;
        for _ in 0..10 {
            while let Some(body) = s.poll_outbound() {
                if r_done.is_none() {
                    match r.handle_inbound(&body) {
                        Ok(Some(ch)) => r_done = Some(Ok(ch)),
                        Ok(None) => {}
                        Err(e) => r_done = Some(Err(e)),
                    }
                }
            }
            while let Some(body) = r.poll_outbound() {
                if s_done.is_none() {
                    match s.handle_inbound(&body) {
                        Ok(Some(ch)) => s_done = Some(Ok(ch)),
                        Ok(None) => {}
                        Err(e) => s_done = Some(Err(e)),
                    }
                }
            }
        }
        (
            s_done.expect("sender finished"),
            r_done.expect("receiver finished"),
        )
    }

    fn hello() -> PeerToPeer {
        PeerToPeer::Hello {
            cert_fingerprint: "00ff".into(),
            candidates: vec![Candidate {
                addr: "127.0.0.1:9".parse().unwrap(),
                transport: Transport::Tcp,
                kind: CandidateKind::Host,
                priority: 7,
            }],
            network: Default::default(),
        }
    }

    #[test]
    fn matching_codes_pair_and_seal_both_ways() {
        let (s, r) = pair("7-orbit-lantern", " 7-Orbit-Lantern ");
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        assert_eq!(s.peer_version(), (1, "ferry-test/r"));
        assert_eq!(r.peer_version(), (1, "ferry-test/s"));
        let body = s.seal(&hello());
        assert_eq!(r.open(&body).unwrap(), hello());
        let abort = PeerToPeer::Abort {
            reason: "bye".into(),
        };
        let body = r.seal(&abort);
        assert_eq!(s.open(&body).unwrap(), abort);
        assert_eq!(s.derive_secret("x"), r.derive_secret("x"));
        assert_ne!(s.derive_secret("x"), s.derive_secret("y"));
    }

    #[test]
    fn wrong_code_is_a_mismatch_on_both_sides() {
        let (s, r) = pair("7-orbit-lantern", "7-orbit-lemon");
        assert!(matches!(s, Err(PairingError::CodeMismatch)), "{s:?}");
        assert!(matches!(r, Err(PairingError::CodeMismatch)), "{r:?}");
    }

    #[test]
    fn same_role_twice_does_not_pair() {
        let mut a = Pairing::new("7-orbit-lantern", Role::Sender, "a");
        let b_pake = Pairing::new("7-orbit-lantern", Role::Sender, "b")
            .poll_outbound()
            .unwrap();
        assert!(matches!(
            a.handle_inbound(&b_pake),
            Err(PairingError::Pake { .. })
        ));
    }

    #[test]
    fn second_pake_is_unexpected() {
        let mut s = Pairing::new("7-orbit-lantern", Role::Sender, "s");
        let r_pake = Pairing::new("7-orbit-lantern", Role::Receiver, "r")
            .poll_outbound()
            .unwrap();
        assert!(s.handle_inbound(&r_pake).unwrap().is_none());
        assert!(matches!(
            s.handle_inbound(&r_pake),
            Err(PairingError::Unexpected { .. })
        ));
    }

    #[test]
    fn features_are_exchanged_and_unknown_messages_open_as_unknown() {
        let mut s = Pairing::new("3-acorn-zebra", Role::Sender, "s")
            .with_features(&[crate::peer::FEATURE_CANDIDATES, "later"]);
        let mut r = Pairing::new("3-acorn-zebra", Role::Receiver, "r");
        let s_pake = s.poll_outbound().unwrap();
        let r_pake = r.poll_outbound().unwrap();
        assert!(r.handle_inbound(&s_pake).unwrap().is_none());
        let r_version = r.poll_outbound().unwrap();
        assert!(s.handle_inbound(&r_pake).unwrap().is_none());
        let s_chan = s.handle_inbound(&r_version).unwrap().unwrap();
        let s_version = s.poll_outbound().unwrap();
        let mut r_chan = r.handle_inbound(&s_version).unwrap().unwrap();
        assert!(r_chan.peer_understands(crate::peer::FEATURE_CANDIDATES));
        assert_eq!(r_chan.peer_features(), ["candidates", "later"]);
        assert!(!s_chan.peer_understands(crate::peer::FEATURE_CANDIDATES));
        assert!(s_chan.peer_features().is_empty());
        // A newer peer's message type, sealed by hand: it opens (and counts
        // for replay protection) as Unknown.
        let mut keys = Keys::new(&s_chan.keys.shared, Role::Sender).unwrap();
        keys.send_seq = 5;
        let mut plain = br#"{"type":"from-the-future","x":1}"#.to_vec();
        keys.send
            .seal_in_place_append_tag(nonce(5), Aad::empty(), &mut plain)
            .unwrap();
        let body = envelope_string(&Envelope::Sealed {
            seq: 5,
            body: hex::encode(plain),
        });
        assert_eq!(r_chan.open(&body).unwrap(), PeerToPeer::Unknown);
        assert!(matches!(
            r_chan.open(&body),
            Err(PairingError::Replay { seq: 5, last: 5 })
        ));
    }

    #[test]
    fn peer_version_may_arrive_before_ours_is_sent() {
        let mut s = Pairing::new("3-acorn-zebra", Role::Sender, "s");
        let mut r = Pairing::new("3-acorn-zebra", Role::Receiver, "r");
        let s_pake = s.poll_outbound().unwrap();
        let r_pake = r.poll_outbound().unwrap();
        // The receiver's Version follows its pake; the sender gets both
        // before draining its own queue.
        assert!(r.handle_inbound(&s_pake).unwrap().is_none());
        let r_version = r.poll_outbound().unwrap();
        assert!(s.handle_inbound(&r_pake).unwrap().is_none());
        let mut s_chan = s.handle_inbound(&r_version).unwrap().unwrap();
        // The sender's Version is still waiting in its queue.
        let s_version = s.poll_outbound().unwrap();
        let mut r_chan = r.handle_inbound(&s_version).unwrap().unwrap();
        let body = s_chan.seal(&hello());
        assert_eq!(r_chan.open(&body).unwrap(), hello());
    }

    #[test]
    fn sealed_before_pake_is_rejected() {
        let (s, _r) = pair("7-orbit-lantern", "7-orbit-lantern");
        let mut s = s.unwrap();
        let body = s.seal(&hello());
        let mut fresh = Pairing::new("7-orbit-lantern", Role::Receiver, "r");
        assert!(matches!(
            fresh.handle_inbound(&body),
            Err(PairingError::Unexpected { .. })
        ));
    }

    #[test]
    fn replay_and_reorder_are_rejected() {
        let (s, r) = pair("9-tiger-wagon", "9-tiger-wagon");
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        let first = s.seal(&hello());
        let second = s.seal(&PeerToPeer::Abort { reason: "x".into() });
        r.open(&first).unwrap();
        assert!(matches!(
            r.open(&first),
            Err(PairingError::Replay { seq: 1, last: 1 })
        ));
        r.open(&second).unwrap();
        // Reordered: a third message, then the second again.
        let third = s.seal(&hello());
        let fourth = s.seal(&hello());
        r.open(&fourth).unwrap();
        assert!(matches!(r.open(&third), Err(PairingError::Replay { .. })));
    }

    #[test]
    fn tampered_body_is_rejected() {
        let (s, r) = pair("9-tiger-wagon", "9-tiger-wagon");
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        let body = s.seal(&hello());
        let Envelope::Sealed { seq, body: hexbody } = parse_envelope(&body).unwrap() else {
            panic!("not sealed");
        };
        let mut bytes = hex::decode(hexbody).unwrap();
        bytes[3] ^= 1;
        let tampered = envelope_string(&Envelope::Sealed {
            seq,
            body: hex::encode(&bytes),
        });
        assert!(matches!(r.open(&tampered), Err(PairingError::Tampered)));
        // Changing the seq (nonce) also breaks authentication.
        let moved = envelope_string(&Envelope::Sealed {
            seq: seq + 5,
            body: hex::encode(
                hex::decode(match parse_envelope(&body).unwrap() {
                    Envelope::Sealed { body, .. } => body,
                    Envelope::Pake { .. } => unreachable!(),
                })
                .unwrap(),
            ),
        });
        assert!(matches!(r.open(&moved), Err(PairingError::Tampered)));
        // The genuine message still opens: failures do not advance the counter.
        assert_eq!(r.open(&body).unwrap(), hello());
    }

    #[test]
    fn garbage_is_a_bad_message() {
        let mut p = Pairing::new("1-acorn-zebra", Role::Sender, "s");
        assert!(matches!(
            p.handle_inbound("nope"),
            Err(PairingError::BadMessage { .. })
        ));
        assert!(matches!(
            p.handle_inbound("{\"phase\":\"pake\",\"body\":\"zz\"}"),
            Err(PairingError::BadMessage { .. })
        ));
        assert!(matches!(
            p.handle_inbound("{\"phase\":\"pake\",\"body\":\"00\"}"),
            Err(PairingError::Pake { .. })
        ));
    }

    #[test]
    fn envelope_snapshot() {
        assert_eq!(
            envelope_string(&Envelope::Pake { body: "ab".into() }),
            "{\"phase\":\"pake\",\"body\":\"ab\"}"
        );
        assert_eq!(
            envelope_string(&Envelope::Sealed {
                seq: 2,
                body: "cd".into()
            }),
            "{\"phase\":\"sealed\",\"seq\":2,\"body\":\"cd\"}"
        );
    }
}
