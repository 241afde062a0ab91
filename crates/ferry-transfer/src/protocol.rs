//! The transfer protocol as two sans-IO state machines, [`SenderCore`] and
//! [`ReceiverCore`]: frames in, control messages and events out. They do no
//! IO, hashing of file data, or time keeping; the drivers in
//! [`crate::send`](crate::send()) and [`crate::receive_offer`] do.
//!
//! ```text
//! sender                                   receiver
//!   | -- Control::Offer{Files|Text, version} ---> |  same version? validate paths
//!   | <-- Accept{files:[{offset,prefix_hash}], -- |  (Text: Ack; or Decline)
//!   |            version}  same version?          |
//!   |   for each file, in manifest order:         |
//!   | -- Control::FileStart{index, offset} -----> |  offset = resume offset if the
//!   | -- Data[hash|chunk] * n ------------------> |  prefix hash matched, else 0;
//!   |                                             |  chunks of exactly CHUNK_SIZE
//!   |                                             |  (a file's last: the rest)
//!   | -- FileEnd[hash of whole file] -----------> |  verify, fsync, chmod, rename
//!   | <-------------------------- Done{ok:true} --|
//!   either side, at any time: Control::Error{message, code}, then close
//! ```

use bytes::Bytes;

use crate::codec::{CHUNK_SIZE, Frame, HASH_LEN};
use crate::error::TransferError;
use crate::message::{Control, Offer, ResumePoint, TRANSFER_VERSION};
use crate::path::RelativePath;

pub use crate::check::{ManifestLimits, validate_manifest};

pub use crate::path::PART_SUFFIX;

/// Where the sender starts a file, given the receiver's resume point, the
/// file size and the BLAKE3 of the sender's own first `point.offset` bytes:
/// the resume offset when the hashes match, otherwise 0 (restart).
pub fn resume_offset(point: &ResumePoint, size: u64, local_prefix: &[u8; HASH_LEN]) -> u64 {
    if point.offset == 0 || !resumable(point.offset, size) {
        return 0;
    }
    match parse_hash(&point.prefix_hash) {
        Some(h) if &h == local_prefix => point.offset,
        _ => 0,
    }
}

/// Whether a file of `size` bytes may resume at `offset`: on a chunk
/// boundary (chunks sit at multiples of [`CHUNK_SIZE`], so that each is a
/// subtree of the file's hash tree) or at its end (nothing left to send).
pub fn resumable(offset: u64, size: u64) -> bool {
    offset == size || (offset < size && offset % CHUNK_SIZE as u64 == 0)
}

/// Parses a hex BLAKE3 hash.
pub fn parse_hash(hex_str: &str) -> Option<[u8; HASH_LEN]> {
    let mut out = [0u8; HASH_LEN];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

fn protocol(msg: impl Into<String>) -> TransferError {
    TransferError::Protocol(msg.into())
}

/// What the receiver answered to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Files accepted, with validated resume points (one per file).
    Accepted(Vec<ResumePoint>),
    /// Text message received.
    TextAcked,
    /// Offer declined, with the reason.
    Declined(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderState {
    AwaitAnswer,
    Sending,
    Finished,
}

/// Sender side: validates what the receiver says.
#[derive(Debug)]
pub struct SenderCore {
    /// `None` for a text offer, else the file sizes in order.
    sizes: Option<Vec<u64>>,
    state: SenderState,
}

impl SenderCore {
    /// Starts a sender for `offer`; returns it and the message to send first.
    pub fn new(offer: Offer) -> (Self, Control) {
        let sizes = match &offer {
            Offer::Files(m) => Some(m.files().map(|(_, size, _)| size).collect()),
            Offer::Text(_) => None,
        };
        (
            Self {
                sizes,
                state: SenderState::AwaitAnswer,
            },
            Control::Offer {
                offer,
                version: TRANSFER_VERSION,
            },
        )
    }

    /// Handles the receiver's answer to the offer.
    pub fn handle_answer(&mut self, frame: Frame) -> Result<Answer, TransferError> {
        if self.state != SenderState::AwaitAnswer {
            return Err(protocol("answer handled twice"));
        }
        let msg = match frame {
            Frame::Control(msg) => msg,
            _ => return Err(protocol("data frame instead of an answer")),
        };
        self.state = SenderState::Finished;
        match (msg, &self.sizes) {
            (Control::Error { message, code }, _) => Err(TransferError::from_peer(message, code)),
            (Control::Decline { reason }, _) => Ok(Answer::Declined(reason)),
            (Control::Ack, None) => Ok(Answer::TextAcked),
            (Control::Accept { version, .. }, _) if version != TRANSFER_VERSION => {
                Err(TransferError::Version {
                    sender: TRANSFER_VERSION,
                    receiver: version,
                })
            }
            (Control::Accept { files, .. }, Some(sizes)) => {
                if files.len() != sizes.len() {
                    return Err(protocol(format!(
                        "accept lists {} files, offer has {}",
                        files.len(),
                        sizes.len()
                    )));
                }
                for (point, &size) in files.iter().zip(sizes) {
                    if point.offset > size {
                        return Err(protocol("resume offset beyond the end of a file"));
                    }
                    if !resumable(point.offset, size) {
                        return Err(protocol("resume offset not on a chunk boundary"));
                    }
                    if point.offset > 0 && parse_hash(&point.prefix_hash).is_none() {
                        return Err(protocol("resume point without a valid prefix hash"));
                    }
                }
                self.state = SenderState::Sending;
                Ok(Answer::Accepted(files))
            }
            (other, _) => Err(protocol(format!("unexpected answer {}", name(&other)))),
        }
    }

    /// Handles the receiver's last message after all files were sent (or
    /// an early error frame while sending).
    pub fn handle_final(&mut self, frame: Frame) -> Result<(), TransferError> {
        if self.state != SenderState::Sending {
            return Err(protocol("unexpected frame"));
        }
        self.state = SenderState::Finished;
        match frame {
            Frame::Control(Control::Done { ok: true }) => Ok(()),
            Frame::Control(Control::Done { ok: false }) => Err(TransferError::from_peer(
                "the receiver could not complete the transfer".into(),
                None,
            )),
            Frame::Control(Control::Error { message, code }) => {
                Err(TransferError::from_peer(message, code))
            }
            Frame::Control(other) => Err(protocol(format!("unexpected {}", name(&other)))),
            _ => Err(protocol("data frame from the receiver")),
        }
    }
}

/// What a frame means to the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The offer arrived and passed validation ([`ReceiverCore::paths`]).
    Offer(Offer),
    /// Data for file `index` starts at `offset` (0 = truncate the part).
    FileStart {
        /// File index (manifest file order).
        index: usize,
        /// Start offset.
        offset: u64,
    },
    /// A chunk of file `index` at `offset`, not yet verified.
    Chunk {
        /// File index.
        index: usize,
        /// Offset of the chunk in the file.
        offset: u64,
        /// Claimed BLAKE3 of the chunk.
        hash: [u8; HASH_LEN],
        /// The bytes.
        chunk: Bytes,
    },
    /// File `index` is complete; its claimed whole-file hash.
    FileEnd {
        /// File index.
        index: usize,
        /// Claimed BLAKE3 of the whole file.
        hash: [u8; HASH_LEN],
    },
    /// The sender moves the transfer to another path
    /// ([`Control::Move`]); this core is done.
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReceiverState {
    AwaitOffer,
    Deciding {
        text: bool,
    },
    /// Waiting for `FileStart` of file `next` (`current` = None) or inside
    /// file `current = (index, position)`.
    Receiving {
        next: usize,
        current: Option<(usize, u64)>,
    },
    /// All files ended; nothing more may arrive.
    Complete,
    Closed,
}

/// Receiver side: checks the order and bounds of everything the sender
/// sends.
#[derive(Debug)]
pub struct ReceiverCore {
    limits: ManifestLimits,
    allow_git: bool,
    state: ReceiverState,
    paths: Vec<RelativePath>,
    sizes: Vec<u64>,
    offered: Vec<u64>,
}

impl Default for ReceiverCore {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiverCore {
    /// A receiver waiting for an offer, with the default
    /// [`ManifestLimits`] and no `.git` folders.
    pub fn new() -> Self {
        Self::with_limits(ManifestLimits::default(), false)
    }

    /// A receiver waiting for an offer that must fit `limits`;
    /// `allow_git` accepts entries inside a `.git` folder.
    pub fn with_limits(limits: ManifestLimits, allow_git: bool) -> Self {
        Self {
            limits,
            allow_git,
            state: ReceiverState::AwaitOffer,
            paths: Vec::new(),
            sizes: Vec::new(),
            offered: Vec::new(),
        }
    }

    /// The sanitized paths of the offered manifest, in entry order.
    pub fn paths(&self) -> &[RelativePath] {
        &self.paths
    }

    /// Feeds one frame from the sender.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<ReceiverEvent, TransferError> {
        if let Frame::Control(Control::Error { message, code }) = frame {
            self.state = ReceiverState::Closed;
            return Err(TransferError::from_peer(message, code));
        }
        match (&mut self.state, frame) {
            (ReceiverState::AwaitOffer, Frame::Control(Control::Offer { version, .. }))
                if version != TRANSFER_VERSION =>
            {
                self.state = ReceiverState::Closed;
                Err(TransferError::Version {
                    sender: version,
                    receiver: TRANSFER_VERSION,
                })
            }
            (ReceiverState::AwaitOffer, Frame::Control(Control::Offer { offer, .. })) => {
                let text = match &offer {
                    Offer::Files(m) => {
                        self.paths = validate_manifest(m, &self.limits, self.allow_git)?;
                        self.sizes = m.files().map(|(_, size, _)| size).collect();
                        false
                    }
                    Offer::Text(_) => true,
                };
                self.state = ReceiverState::Deciding { text };
                Ok(ReceiverEvent::Offer(offer))
            }
            (ReceiverState::AwaitOffer, _) => Err(protocol("expected an offer")),
            (ReceiverState::Deciding { .. }, _) => {
                Err(protocol("frame before the offer was accepted"))
            }
            (
                ReceiverState::Receiving {
                    next,
                    current: current @ None,
                },
                Frame::Control(Control::FileStart { index, offset }),
            ) => {
                if index != *next {
                    return Err(protocol(format!(
                        "file {index} started, expected file {next}"
                    )));
                }
                if offset != 0 && offset != self.offered[index] {
                    return Err(protocol("file started at an offset that was not offered"));
                }
                *next += 1;
                *current = Some((index, offset));
                Ok(ReceiverEvent::FileStart { index, offset })
            }
            (
                ReceiverState::Receiving {
                    current: Some((index, pos)),
                    ..
                },
                Frame::Data { hash, chunk },
            ) => {
                let index = *index;
                let offset = *pos;
                let left = self.sizes[index] - offset;
                if chunk.is_empty() {
                    return Err(protocol("empty data frame"));
                }
                if chunk.len() as u64 > left {
                    return Err(protocol("data beyond the end of the file"));
                }
                // Each chunk must be one subtree of the file's hash tree.
                if chunk.len() as u64 != left.min(CHUNK_SIZE as u64) {
                    return Err(protocol(format!(
                        "a data frame of {} bytes at offset {offset}: chunks are {CHUNK_SIZE} \
                         bytes, a file's last one the rest",
                        chunk.len()
                    )));
                }
                *pos = offset + chunk.len() as u64;
                Ok(ReceiverEvent::Chunk {
                    index,
                    offset,
                    hash,
                    chunk,
                })
            }
            (
                ReceiverState::Receiving {
                    next,
                    current: current @ Some(_),
                },
                Frame::FileEnd { hash },
            ) => {
                let Some((index, pos)) = *current else {
                    return Err(protocol("file end outside a file"));
                };
                if pos != self.sizes[index] {
                    return Err(protocol("file ended before all its bytes arrived"));
                }
                *current = None;
                if *next == self.sizes.len() {
                    self.state = ReceiverState::Complete;
                }
                Ok(ReceiverEvent::FileEnd { index, hash })
            }
            // At a chunk boundary, which every frame boundary is.
            (ReceiverState::Receiving { .. }, Frame::Control(Control::Move)) => {
                self.state = ReceiverState::Closed;
                Ok(ReceiverEvent::Moved)
            }
            (ReceiverState::Receiving { current: None, .. }, Frame::Data { .. }) => {
                Err(protocol("data for no file"))
            }
            (ReceiverState::Receiving { .. }, Frame::Control(other)) => Err(protocol(format!(
                "unexpected {} during transfer",
                name(&other)
            ))),
            (ReceiverState::Receiving { .. }, _) => Err(protocol("file end outside a file")),
            (ReceiverState::Complete | ReceiverState::Closed, _) => {
                Err(protocol("frame after the transfer was complete"))
            }
        }
    }

    /// Accepts the offer. For files, `resume` has one point per file (what
    /// the receiver already holds); returns the message to send.
    pub fn accept(&mut self, resume: Vec<ResumePoint>) -> Result<Control, TransferError> {
        match self.state {
            ReceiverState::Deciding { text: true } => {
                self.state = ReceiverState::Closed;
                Ok(Control::Ack)
            }
            ReceiverState::Deciding { text: false } => {
                if resume.len() != self.sizes.len() {
                    return Err(protocol("one resume point per file required"));
                }
                if resume
                    .iter()
                    .zip(&self.sizes)
                    .any(|(p, &size)| !resumable(p.offset, size))
                {
                    return Err(TransferError::Internal(
                        "resume offset not on a chunk boundary".into(),
                    ));
                }
                self.offered = resume.iter().map(|p| p.offset).collect();
                self.state = if self.sizes.is_empty() {
                    ReceiverState::Complete
                } else {
                    ReceiverState::Receiving {
                        next: 0,
                        current: None,
                    }
                };
                Ok(Control::Accept {
                    files: resume,
                    version: TRANSFER_VERSION,
                })
            }
            _ => Err(protocol("no offer to accept")),
        }
    }

    /// Declines the offer; returns the message to send.
    pub fn decline(&mut self, reason: &str) -> Control {
        self.state = ReceiverState::Closed;
        Control::Decline {
            reason: reason.to_owned(),
        }
    }

    /// Whether the next frame must start a file (the sender may first hash
    /// a long resumed prefix, so drivers wait longer here).
    pub fn awaiting_file_start(&self) -> bool {
        matches!(self.state, ReceiverState::Receiving { current: None, .. })
    }

    /// Whether every file has ended (time to send [`ReceiverCore::finish`]).
    pub fn is_complete(&self) -> bool {
        self.state == ReceiverState::Complete
    }

    /// The final message once every file is written and verified.
    pub fn finish(&mut self) -> Result<Control, TransferError> {
        if self.state != ReceiverState::Complete {
            return Err(protocol("transfer not complete"));
        }
        self.state = ReceiverState::Closed;
        Ok(Control::Done { ok: true })
    }
}

fn name(msg: &Control) -> &'static str {
    match msg {
        Control::Offer { .. } => "offer",
        Control::Accept { .. } => "accept",
        Control::Decline { .. } => "decline",
        Control::Ack => "ack",
        Control::FileStart { .. } => "file start",
        Control::Done { .. } => "done",
        Control::Error { .. } => "error",
        Control::Move => "move",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Entry, EntryKind, ErrorCode, Manifest};

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { size, mode: 0o644 },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode: 0o755 },
        }
    }

    const C: u64 = CHUNK_SIZE as u64;

    fn offer(entries: Vec<Entry>) -> Frame {
        Frame::Control(Control::Offer {
            offer: Offer::Files(Manifest { entries }),
            version: TRANSFER_VERSION,
        })
    }

    fn start(index: usize, offset: u64) -> Frame {
        Frame::Control(Control::FileStart { index, offset })
    }

    fn data(n: usize) -> Frame {
        Frame::Data {
            hash: [0; 32],
            chunk: Bytes::from(vec![1u8; n]),
        }
    }

    const END: Frame = Frame::FileEnd { hash: [0; 32] };

    fn accepted(entries: Vec<Entry>, resume: Vec<ResumePoint>) -> ReceiverCore {
        let mut r = ReceiverCore::new();
        assert!(matches!(
            r.handle_frame(offer(entries)),
            Ok(ReceiverEvent::Offer(_))
        ));
        r.accept(resume).unwrap();
        r
    }

    fn point(offset: u64, hash: &[u8; 32]) -> ResumePoint {
        ResumePoint {
            offset,
            prefix_hash: hex::encode(hash),
        }
    }

    #[test]
    fn a_move_ends_the_core_between_frames_and_only_while_receiving() {
        let moved = Frame::Control(Control::Move);
        let resume = vec![ResumePoint::fresh(), ResumePoint::fresh()];
        // Between two chunks of a file, and between two files.
        let mut r = accepted(vec![file("a", 2 * C), file("b", 1)], resume.clone());
        r.handle_frame(start(0, 0)).unwrap();
        r.handle_frame(data(CHUNK_SIZE)).unwrap();
        assert!(matches!(
            r.handle_frame(moved.clone()),
            Ok(ReceiverEvent::Moved)
        ));
        assert!(
            r.handle_frame(data(CHUNK_SIZE)).is_err(),
            "nothing after it"
        );
        let mut r = accepted(vec![file("a", 2 * C), file("b", 1)], resume);
        r.handle_frame(start(0, 0)).unwrap();
        r.handle_frame(data(CHUNK_SIZE)).unwrap();
        r.handle_frame(data(CHUNK_SIZE)).unwrap();
        r.handle_frame(END).unwrap();
        assert!(matches!(
            r.handle_frame(moved.clone()),
            Ok(ReceiverEvent::Moved)
        ));
        // Not before the offer was accepted.
        let mut r = ReceiverCore::new();
        assert!(r.handle_frame(moved.clone()).is_err());
        let mut r = ReceiverCore::new();
        r.handle_frame(offer(vec![file("a", 1)])).unwrap();
        assert!(r.handle_frame(moved).is_err());
    }

    #[test]
    fn manifest_counts() {
        let m = Manifest {
            entries: vec![dir("d"), file("d/a", 3), file("b", u64::MAX), dir("e")],
        };
        assert_eq!(m.file_count(), 2);
        assert_eq!(m.dir_count(), 2);
        assert_eq!(m.total_bytes(), u64::MAX);
    }

    #[test]
    fn resume_offset_match_and_mismatch() {
        let h = *blake3::hash(b"hello").as_bytes();
        let other = *blake3::hash(b"hellx").as_bytes();
        assert_eq!(resume_offset(&point(C, &h), 2 * C, &h), C);
        assert_eq!(resume_offset(&point(10, &h), 10, &h), 10, "complete");
        assert_eq!(
            resume_offset(&point(C, &h), 2 * C, &other),
            0,
            "mismatch restarts"
        );
        assert_eq!(resume_offset(&point(11, &h), 10, &h), 0, "beyond the end");
        assert_eq!(resume_offset(&point(5, &h), 10, &h), 0, "inside a chunk");
        assert_eq!(resume_offset(&ResumePoint::fresh(), 10, &h), 0);
        let bad = ResumePoint {
            offset: 5,
            prefix_hash: "zz".into(),
        };
        assert_eq!(resume_offset(&bad, 10, &h), 0);
    }

    #[test]
    fn full_receive_sequence() {
        let h = [3u8; 32];
        let mut r = accepted(
            vec![dir("d"), file("d/a", 2 * C + 5), file("z", 0)],
            vec![point(C, &h), ResumePoint::fresh()],
        );
        assert_eq!(r.paths().len(), 3);
        assert_eq!(
            r.handle_frame(start(0, C)).unwrap(),
            ReceiverEvent::FileStart {
                index: 0,
                offset: C
            }
        );
        match r.handle_frame(data(CHUNK_SIZE)).unwrap() {
            ReceiverEvent::Chunk { index, offset, .. } => assert_eq!((index, offset), (0, C)),
            e => panic!("{e:?}"),
        }
        match r.handle_frame(data(5)).unwrap() {
            ReceiverEvent::Chunk { index, offset, .. } => assert_eq!((index, offset), (0, 2 * C)),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            r.handle_frame(END),
            Ok(ReceiverEvent::FileEnd { index: 0, .. })
        ));
        assert!(!r.is_complete());
        assert!(r.awaiting_file_start());
        r.handle_frame(start(1, 0)).unwrap();
        assert!(!r.awaiting_file_start());
        assert!(matches!(
            r.handle_frame(END),
            Ok(ReceiverEvent::FileEnd { index: 1, .. })
        ));
        assert!(r.is_complete());
        assert_eq!(r.finish().unwrap(), Control::Done { ok: true });
    }

    #[test]
    fn restart_at_zero_after_offered_resume_is_allowed() {
        let mut r = accepted(vec![file("a", C + 5)], vec![point(C, &[1; 32])]);
        assert_eq!(
            r.handle_frame(start(0, 0)).unwrap(),
            ReceiverEvent::FileStart {
                index: 0,
                offset: 0
            }
        );
        r.handle_frame(data(CHUNK_SIZE)).unwrap();
        r.handle_frame(data(5)).unwrap();
        r.handle_frame(END).unwrap();
        assert!(r.is_complete());
    }

    #[test]
    fn start_at_unoffered_offset_is_rejected() {
        let mut r = accepted(vec![file("a", C + 5)], vec![point(C, &[1; 32])]);
        assert!(matches!(
            r.handle_frame(start(0, 3)),
            Err(TransferError::Protocol(_))
        ));
    }

    #[test]
    fn resume_points_inside_a_chunk_are_refused() {
        let mut r = ReceiverCore::new();
        r.handle_frame(offer(vec![file("a", C + 5)])).unwrap();
        assert!(r.accept(vec![point(5, &[1; 32])]).is_err());
        let mut r = ReceiverCore::new();
        r.handle_frame(offer(vec![file("a", 5)])).unwrap();
        assert!(r.accept(vec![point(5, &[1; 32])]).is_ok(), "the whole file");
    }

    #[test]
    fn other_transfer_versions_are_refused_both_ways() {
        let mut r = ReceiverCore::new();
        let old = Frame::Control(Control::Offer {
            offer: Offer::Text("hi".into()),
            version: 1,
        });
        let e = r.handle_frame(old).unwrap_err();
        assert!(
            matches!(
                e,
                TransferError::Version {
                    sender: 1,
                    receiver: TRANSFER_VERSION
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("same ferry release"), "{e}");
        let (mut s, _) = SenderCore::new(Offer::Files(Manifest {
            entries: vec![file("a", 1)],
        }));
        let old = Frame::Control(Control::Accept {
            files: vec![ResumePoint::fresh()],
            version: 1,
        });
        assert!(matches!(
            s.handle_answer(old),
            Err(TransferError::Version {
                sender: TRANSFER_VERSION,
                receiver: 1
            })
        ));
    }

    #[test]
    fn data_before_accept_is_rejected() {
        let mut r = ReceiverCore::new();
        assert!(matches!(
            r.handle_frame(data(1)),
            Err(TransferError::Protocol(_))
        ));
        let mut r = ReceiverCore::new();
        r.handle_frame(offer(vec![file("a", 1)])).unwrap();
        assert!(matches!(
            r.handle_frame(data(1)),
            Err(TransferError::Protocol(_))
        ));
        assert!(matches!(
            r.handle_frame(start(0, 0)),
            Err(TransferError::Protocol(_))
        ));
    }

    #[test]
    fn data_for_no_file_is_rejected() {
        let mut r = accepted(vec![file("a", 1)], vec![ResumePoint::fresh()]);
        assert!(matches!(
            r.handle_frame(data(1)),
            Err(TransferError::Protocol(_))
        ));
        let mut r = accepted(vec![file("a", 1)], vec![ResumePoint::fresh()]);
        assert!(matches!(
            r.handle_frame(END),
            Err(TransferError::Protocol(_))
        ));
        let mut r = accepted(vec![file("a", 1)], vec![ResumePoint::fresh()]);
        assert!(matches!(
            r.handle_frame(start(1, 0)),
            Err(TransferError::Protocol(_))
        ));
    }

    #[test]
    fn too_much_or_too_little_data_is_rejected() {
        let mut r = accepted(vec![file("a", 4)], vec![ResumePoint::fresh()]);
        r.handle_frame(start(0, 0)).unwrap();
        assert!(matches!(
            r.handle_frame(data(5)),
            Err(TransferError::Protocol(_))
        ));
        let mut r = accepted(vec![file("a", C + 4)], vec![ResumePoint::fresh()]);
        r.handle_frame(start(0, 0)).unwrap();
        r.handle_frame(data(CHUNK_SIZE)).unwrap();
        assert!(matches!(
            r.handle_frame(END),
            Err(TransferError::Protocol(_))
        ));
    }

    #[test]
    fn chunks_of_another_size_are_rejected() {
        for (size, first) in [(C + 4, 3), (C + 4, 4), (5, 4), (5, 0)] {
            let mut r = accepted(vec![file("a", size)], vec![ResumePoint::fresh()]);
            r.handle_frame(start(0, 0)).unwrap();
            assert!(
                matches!(r.handle_frame(data(first)), Err(TransferError::Protocol(_))),
                "{first} bytes of a file of {size}"
            );
        }
    }

    #[test]
    fn frame_after_done_is_rejected() {
        let mut r = accepted(vec![file("a", 1)], vec![ResumePoint::fresh()]);
        r.handle_frame(start(0, 0)).unwrap();
        r.handle_frame(data(1)).unwrap();
        r.handle_frame(END).unwrap();
        assert!(matches!(
            r.handle_frame(data(1)),
            Err(TransferError::Protocol(_))
        ));
        r.finish().unwrap();
        assert!(matches!(
            r.handle_frame(start(0, 0)),
            Err(TransferError::Protocol(_))
        ));
        // Empty offers are complete as soon as accepted.
        let mut r = accepted(vec![dir("d")], vec![]);
        assert!(r.is_complete());
        assert!(matches!(
            r.handle_frame(END),
            Err(TransferError::Protocol(_))
        ));
    }

    #[test]
    fn peer_error_is_surfaced_in_any_state() {
        let mut r = accepted(vec![file("a", 1)], vec![ResumePoint::fresh()]);
        let e = r
            .handle_frame(Frame::Control(Control::Error {
                message: "disk on fire".into(),
                code: None,
            }))
            .unwrap_err();
        assert!(
            matches!(e, TransferError::PeerError { message, code: None } if message == "disk on fire")
        );
    }

    #[test]
    fn unsafe_and_inconsistent_manifests_are_rejected() {
        for entries in [
            vec![file("../escape", 1)],
            vec![file("/etc/x", 1)],
            vec![file("a", 1), file("a", 2)],
            vec![dir("a"), file("a", 2)],
            vec![file("a", 1), file("a/b", 2)],
            vec![file("a", 1), file("a.ferry-part", 2)],
        ] {
            let mut r = ReceiverCore::new();
            let e = r.handle_frame(offer(entries.clone())).unwrap_err();
            assert!(
                matches!(e, TransferError::UnsafePath { .. }),
                "{entries:?}: {e}"
            );
        }
    }

    #[test]
    fn sender_validates_answers() {
        let m = Manifest {
            entries: vec![file("a", 2 * C), file("b", 0)],
        };
        let (mut s, first) = SenderCore::new(Offer::Files(m.clone()));
        assert!(matches!(first, Control::Offer { .. }));
        let h = [9u8; 32];
        let good = vec![point(C, &h), ResumePoint::fresh()];
        assert_eq!(
            s.handle_answer(Frame::Control(Control::Accept {
                files: good.clone(),
                version: TRANSFER_VERSION,
            }))
            .unwrap(),
            Answer::Accepted(good)
        );
        assert!(
            s.handle_final(Frame::Control(Control::Done { ok: true }))
                .is_ok()
        );

        for bad in [
            Control::Accept {
                files: vec![],
                version: TRANSFER_VERSION,
            },
            Control::Accept {
                files: vec![point(2 * C + 1, &h), ResumePoint::fresh()],
                version: TRANSFER_VERSION,
            },
            Control::Accept {
                files: vec![point(C + 1, &h), ResumePoint::fresh()],
                version: TRANSFER_VERSION,
            },
            Control::Accept {
                files: vec![
                    ResumePoint {
                        offset: C,
                        prefix_hash: String::new(),
                    },
                    ResumePoint::fresh(),
                ],
                version: TRANSFER_VERSION,
            },
            Control::Ack,
            Control::Done { ok: true },
        ] {
            let (mut s, _) = SenderCore::new(Offer::Files(m.clone()));
            assert!(
                matches!(
                    s.handle_answer(Frame::Control(bad.clone())),
                    Err(TransferError::Protocol(_))
                ),
                "{bad:?}"
            );
        }
        let (mut s, _) = SenderCore::new(Offer::Text("hi".into()));
        assert_eq!(
            s.handle_answer(Frame::Control(Control::Ack)).unwrap(),
            Answer::TextAcked
        );
        let (mut s, _) = SenderCore::new(Offer::Text("hi".into()));
        assert_eq!(
            s.handle_answer(Frame::Control(Control::Decline {
                reason: "no".into()
            }))
            .unwrap(),
            Answer::Declined("no".into())
        );
        let (mut s, _) = SenderCore::new(Offer::Files(m));
        assert!(matches!(
            s.handle_answer(Frame::Control(Control::Error {
                message: "x".into(),
                code: Some(ErrorCode::GitDir),
            })),
            Err(TransferError::PeerError {
                code: Some(ErrorCode::GitDir),
                ..
            })
        ));
    }

    #[test]
    fn sender_rejects_early_done_and_data() {
        let (mut s, _) = SenderCore::new(Offer::Files(Manifest::default()));
        assert!(
            s.handle_final(Frame::Control(Control::Done { ok: true }))
                .is_err()
        );
        assert!(matches!(
            s.handle_answer(data(1)),
            Err(TransferError::Protocol(_))
        ));
    }
}
