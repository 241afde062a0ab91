//! Sender driver: offer, wait for the answer, stream the files.
//!
//! ```text
//! disk thread (spawn_blocking)            network task
//!  read chunk, hash it once (its     ──►  write FileStart / Data / FileEnd
//!  chunk_hash feeds the FileHash) bounded  frames, emit events
//!                                channel   concurrently: read the receiver's
//!                                          Done (or an early Error)
//! ```

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::codec::{CHUNK_SIZE, Frame, HASH_LEN};
use crate::error::TransferError;
use crate::hash::{FileHash, hash_prefix};
use crate::io::{
    ANSWER_TIMEOUT, FINISH_TIMEOUT, FrameReader, PIPELINE_DEPTH, Progress, close, flush,
    report_error, timed, write_data, write_frame,
};
use crate::message::{Control, Manifest, Offer, ResumePoint};
use crate::protocol::{Answer, SenderCore, resume_offset};
use crate::scan::Source;
use crate::{Event, Report};

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// All files were received and verified.
    Files(Report),
    /// The text message was received.
    TextDelivered,
    /// The receiver declined, with this reason.
    Declined(String),
}

/// Sends `source` over `stream` (normally a TLS stream to the peer).
///
/// Reports progress through `events`. Returns once the receiver confirmed
/// that everything was written and verified, or declined. On an error the
/// receiver is told the reason (best effort).
pub async fn send<S>(
    stream: S,
    source: Source,
    events: impl FnMut(Event) + Send,
) -> Result<SendOutcome, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    send_moving(stream, source, events, std::future::pending()).await
}

/// Like [`send`], and moves to another path when `move_when` resolves
/// while files are being sent: at the next chunk boundary it sends
/// [`Control::Move`], closes `stream` and returns
/// [`TransferError::Moved`]. Every byte before the boundary went out on
/// this stream; the caller sends again on the new one, where the
/// receiver's answer resumes from the boundary (nothing is sent twice).
/// Only for a receiver that understands `Move`.
pub async fn send_moving<S>(
    stream: S,
    source: Source,
    mut events: impl FnMut(Event) + Send,
    move_when: impl Future<Output = ()> + Send,
) -> Result<SendOutcome, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd);
    let result = run(&mut reader, &mut wr, source, &mut events, move_when).await;
    match &result {
        Err(TransferError::Moved) | Ok(_) => close(&mut wr).await,
        Err(e) => report_error(&mut wr, e).await,
    }
    result
}

async fn run<R, W>(
    reader: &mut FrameReader<R>,
    wr: &mut W,
    source: Source,
    events: &mut (impl FnMut(Event) + Send),
    move_when: impl Future<Output = ()> + Send,
) -> Result<SendOutcome, TransferError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let (offer, files) = match source {
        Source::Text(text) => (Offer::Text(text), Vec::new()),
        Source::Files {
            manifest,
            local_paths,
        } => {
            if local_paths.len() != manifest.entries.len() {
                return Err(TransferError::Internal(
                    "source has a local path count different from its manifest".into(),
                ));
            }
            let files = plan(&manifest, local_paths);
            (Offer::Files(manifest), files)
        }
    };
    let total: u64 = files.iter().map(|f| f.size).sum();
    let (mut core, first) = SenderCore::new(offer);
    write_frame(wr, &Frame::Control(first)).await?;
    flush(wr).await?;

    let answer = timed(
        "waiting for the receiver to accept",
        ANSWER_TIMEOUT,
        reader.next(),
    )
    .await?;
    let resume = match core.handle_answer(answer)? {
        Answer::TextAcked => return Ok(SendOutcome::TextDelivered),
        Answer::Declined(reason) => return Ok(SendOutcome::Declined(reason)),
        Answer::Accepted(resume) => resume,
    };
    // The rate is the transfer's, not the time the receiver took to decide.
    let started = Instant::now();
    let files: Vec<FilePlan> = files
        .into_iter()
        .zip(resume)
        .map(|(f, resume)| FilePlan { resume, ..f })
        .collect();

    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let names: Vec<(String, u64)> = files.iter().map(|f| (f.path.clone(), f.size)).collect();
    let producer = tokio::task::spawn_blocking(move || read_files(files, CHUNK_SIZE, tx));
    // Bytes written so far, for a last progress report when the transfer
    // stops early (a caller may explain the stop, e.g. a relay's limit).
    let done = AtomicU64::new(0);
    let result = async {
        let writing = write_files(wr, rx, producer, names, &done, &mut *events, move_when);
        tokio::pin!(writing);
        let waiting = reader.next();
        tokio::pin!(waiting);
        tokio::select! {
            report = &mut writing => {
                let mut report = match report {
                    Err(TransferError::Stream(error)) => {
                        // Our write failed (a reset, a broken pipe): the peer may
                        // have said why just before, e.g. that it stopped on
                        // purpose. Its words explain more than our error.
                        return Err(match tokio::time::timeout(PEER_REASON_WAIT, &mut waiting).await {
                            Ok(Err(peer @ (TransferError::PeerError { .. } | TransferError::PeerClosed))) => peer,
                            Ok(Ok(frame)) => match core.handle_final(frame) {
                                Err(peer @ TransferError::PeerError { .. }) => peer,
                                _ => TransferError::Stream(error),
                            },
                            _ => TransferError::Stream(error),
                        });
                    }
                    other => other?,
                };
                let last = timed("waiting for the receiver to finish", FINISH_TIMEOUT, &mut waiting).await?;
                core.handle_final(last)?;
                report.elapsed = started.elapsed();
                Ok(SendOutcome::Files(report))
            }
            frame = &mut waiting => {
                let frame = frame?;
                if matches!(frame, Frame::Control(Control::Done { ok: true })) {
                    // The receiver verified the last file before this task
                    // saw the disk thread end: finish, then take its word.
                    let mut report = writing.await?;
                    core.handle_final(frame)?;
                    report.elapsed = started.elapsed();
                    return Ok(SendOutcome::Files(report));
                }
                core.handle_final(frame)?;
                Err(TransferError::Protocol("the receiver finished before all files were sent".into()))
            }
        }
    }
    .await;
    if result.is_err() {
        events(Event::Progress {
            bytes_done: done.load(Ordering::Relaxed),
            bytes_total: total,
        });
    }
    result
}

/// How long a failed write waits for the peer's last words.
const PEER_REASON_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// One file to send, in manifest file order.
struct FilePlan {
    index: usize,
    path: String,
    local: PathBuf,
    size: u64,
    resume: ResumePoint,
}

fn plan(manifest: &Manifest, local_paths: Vec<PathBuf>) -> Vec<FilePlan> {
    manifest
        .entries
        .iter()
        .zip(local_paths)
        .filter_map(|(entry, local)| match entry.kind {
            crate::message::EntryKind::File { size, .. } => Some((entry.path.clone(), size, local)),
            crate::message::EntryKind::Dir { .. } => None,
        })
        .enumerate()
        .map(|(index, (path, size, local))| FilePlan {
            index,
            path,
            local,
            size,
            resume: ResumePoint::fresh(),
        })
        .collect()
}

/// What the disk thread hands to the network task.
enum Item {
    Start { index: usize, offset: u64 },
    Chunk { hash: [u8; HASH_LEN], chunk: Bytes },
    End { hash: [u8; HASH_LEN] },
}

async fn write_files<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut rx: mpsc::Receiver<Item>,
    producer: tokio::task::JoinHandle<Result<(), TransferError>>,
    names: Vec<(String, u64)>,
    done: &AtomicU64,
    events: &mut (impl FnMut(Event) + Send),
    move_when: impl Future<Output = ()>,
) -> Result<Report, TransferError> {
    let total = names.iter().map(|(_, size)| size).sum();
    let mut progress = Progress::new(total);
    let mut report = Report {
        files: names.len(),
        bytes_total: total,
        bytes_transferred: 0,
        bytes_resumed: 0,
        elapsed: Default::default(),
    };
    let mut current = 0;
    let mut move_when = std::pin::pin!(move_when);
    loop {
        // Between two frames: a chunk boundary, where a move may happen
        // (before the next item, which stays unsent on this stream).
        let item = tokio::select! {
            biased;
            () = &mut move_when => {
                write_frame(wr, &Frame::Control(Control::Move)).await?;
                flush(wr).await?;
                return Err(TransferError::Moved);
            }
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        match item {
            Item::Start { index, offset } => {
                current = index;
                let (path, size) = names.get(index).cloned().unwrap_or_default();
                write_frame(wr, &Frame::Control(Control::FileStart { index, offset })).await?;
                report.bytes_resumed += offset;
                events(Event::FileStarted {
                    path,
                    size,
                    resumed_from: offset,
                });
                progress.advance(offset, offset > 0, events);
            }
            Item::Chunk { hash, chunk } => {
                write_data(wr, &hash, &chunk).await?;
                report.bytes_transferred += chunk.len() as u64;
                progress.advance(chunk.len() as u64, false, events);
            }
            Item::End { hash } => {
                write_frame(wr, &Frame::FileEnd { hash }).await?;
                flush(wr).await?;
                let path = names.get(current).map(|n| n.0.clone()).unwrap_or_default();
                events(Event::FileDone { path });
                progress.advance(0, true, events);
            }
        }
        done.store(progress.done, Ordering::Relaxed);
    }
    // The channel closed: the disk thread finished or failed.
    producer
        .await
        .map_err(|e| TransferError::Internal(format!("file reader thread: {e}")))??;
    flush(wr).await?;
    Ok(report)
}

/// The disk thread: reads, hashes and hands over every file in order.
/// Returns early without error if the network task went away (it reports
/// its own error).
fn read_files(
    files: Vec<FilePlan>,
    chunk_size: usize,
    tx: mpsc::Sender<Item>,
) -> Result<(), TransferError> {
    for f in files {
        let io_err = |e: io::Error| TransferError::io(&f.local, e);
        let mut file = File::open(&f.local).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len != f.size {
            return Err(changed(&f, len));
        }
        let fresh =
            || FileHash::new(chunk_size).map_err(|e| TransferError::Internal(e.to_string()));
        let mut hasher = fresh()?;
        let mut offset = 0;
        if f.resume.offset > 0 && f.resume.offset <= f.size {
            // The prefix must be hashed anyway to continue the whole-file
            // hash; in whole chunks, as the receiver hashed its part file.
            hasher = hash_prefix(&mut file, f.resume.offset, chunk_size).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    changed(&f, file.metadata().map_or(0, |m| m.len()))
                } else {
                    io_err(e)
                }
            })?;
            offset = resume_offset(&f.resume, f.size, hasher.finalize().as_bytes());
            if offset == 0 {
                tracing::debug!(path = %f.path, "receiver's partial file differs, restarting");
                hasher = fresh()?;
                file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            }
        }
        if tx
            .blocking_send(Item::Start {
                index: f.index,
                offset,
            })
            .is_err()
        {
            return Ok(());
        }
        let mut remaining = f.size - offset;
        while remaining > 0 {
            let n = usize::try_from(remaining)
                .unwrap_or(chunk_size)
                .min(chunk_size);
            // Read into spare capacity: no memset of a buffer about to be
            // overwritten.
            let mut buf = Vec::with_capacity(n);
            (&mut file)
                .take(n as u64)
                .read_to_end(&mut buf)
                .map_err(io_err)?;
            if buf.len() != n {
                return Err(changed(&f, f.size - remaining + buf.len() as u64));
            }
            let hash = hasher
                .update(&buf)
                .map_err(|e| TransferError::Internal(e.to_string()))?;
            let chunk = Bytes::from(buf);
            if tx.blocking_send(Item::Chunk { hash, chunk }).is_err() {
                return Ok(());
            }
            remaining -= n as u64;
        }
        let hash = *hasher.finalize().as_bytes();
        if tx.blocking_send(Item::End { hash }).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn changed(f: &FilePlan, now: u64) -> TransferError {
    TransferError::io(
        &f.local,
        io::Error::other(format!(
            "file changed while sending (offered {} bytes, found {now})",
            f.size
        )),
    )
}
