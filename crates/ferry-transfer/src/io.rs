//! Frame IO over an async stream, with timeouts, and progress throttling.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Event;
use crate::codec::{self, Frame, HASH_LEN, HEADER_LEN};
use crate::error::TransferError;

/// Longest the connection may stay silent while a frame is expected.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a write may stay blocked (the peer may be busy fsyncing a large
/// file while our data waits in its buffers).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the receiver waits for the next file to start (the sender
/// hashes the resumed prefix of that file first) and the sender waits for
/// `Done` after the last byte (the receiver fsyncs and renames the last
/// file first).
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the sender waits for the receiver to accept or decline (a
/// person may be reading a prompt).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Chunks in flight between the disk thread and the network task, each side.
pub const PIPELINE_DEPTH: usize = 8;
/// Smallest read into the frame buffer.
const READ_SIZE: usize = 64 * 1024;
/// At most this many progress events per second (plus file boundaries).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Reads frames from an async reader into a bounded buffer: at most one
/// maximal frame plus one read is ever buffered, since lengths are checked
/// from the header before reserving.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next frame; no timeout (callers wrap it with [`timed`]). Cancel
    /// safe: a partially read frame stays buffered.
    pub(crate) async fn next(&mut self) -> Result<Frame, TransferError> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf)? {
                return Ok(frame);
            }
            let frame_len = codec::frame_len(&self.buf)?.unwrap_or(HEADER_LEN);
            let missing = frame_len.saturating_sub(self.buf.len());
            self.buf.reserve(missing.max(READ_SIZE));
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(TransferError::Stream)?;
            if n == 0 {
                return Err(TransferError::PeerClosed);
            }
        }
    }
}

/// Awaits `fut` for at most `limit`; `what` completes "timed out ...".
pub(crate) async fn timed<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, TransferError>>,
) -> Result<T, TransferError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| TransferError::Timeout(what))?
}

/// Writes a whole frame (used for control and file-end frames).
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), TransferError> {
    let mut buf = BytesMut::new();
    codec::encode(frame, &mut buf);
    write_all(w, &buf).await
}

/// Writes a data frame without copying the chunk into a frame buffer.
pub(crate) async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    hash: &[u8; HASH_LEN],
    chunk: &Bytes,
) -> Result<(), TransferError> {
    let mut header = BytesMut::with_capacity(HEADER_LEN + HASH_LEN);
    codec::encode_data_header(hash, chunk.len(), &mut header);
    write_all(w, &header).await?;
    write_all(w, chunk).await
}

pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> Result<(), TransferError> {
    timed("writing to the peer", WRITE_TIMEOUT, async {
        w.write_all(bytes).await.map_err(TransferError::Stream)
    })
    .await
}

pub(crate) async fn flush<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), TransferError> {
    timed("writing to the peer", WRITE_TIMEOUT, async {
        w.flush().await.map_err(TransferError::Stream)
    })
    .await
}

/// Best effort: tells the peer why we give up, then closes our side.
pub(crate) async fn report_error<W: AsyncWrite + Unpin>(w: &mut W, error: &TransferError) {
    if !error.worth_reporting() {
        return;
    }
    let frame = Frame::Control(crate::message::Control::Error {
        message: error.to_string(),
        code: error.code(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        write_frame(w, &frame).await?;
        flush(w).await
    })
    .await;
}

/// Best effort close of our writing side.
pub(crate) async fn close<W: AsyncWrite + Unpin>(w: &mut W) {
    let _ = tokio::time::timeout(Duration::from_secs(5), w.shutdown()).await;
}

/// Turns byte counts into [`Event::Progress`] at a bounded rate.
pub(crate) struct Progress {
    pub(crate) done: u64,
    pub(crate) total: u64,
    last: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(total: u64) -> Self {
        Self {
            done: 0,
            total,
            last: None,
        }
    }

    /// Adds `n` bytes and reports if enough time passed (or `force`).
    pub(crate) fn advance(&mut self, n: u64, force: bool, events: &mut dyn FnMut(Event)) {
        self.done = self.done.saturating_add(n);
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= PROGRESS_INTERVAL);
        if force || due {
            self.last = Some(now);
            events(Event::Progress {
                bytes_done: self.done,
                bytes_total: self.total,
            });
        }
    }
}
