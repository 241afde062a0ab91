//! Receiver driver: read and check the offer, then (if the user agrees)
//! resume, receive, verify and rename.
//!
//! ```text
//! network task                               disk thread (spawn_blocking)
//!  read frame, ReceiverCore checks order ──►  hash the chunk once: check
//!  and bounds, emit progress         bounded  its chunk_hash, add it to the
//!                                    channel  FileHash, write NAME.ferry-part;
//!                                             at FileEnd
//!  FileDone events                 ◄──────── compare, chmod, fsync, rename
//! ```
//!
//! Files under 4 MiB are made durable in batches (up to 128 files or
//! 32 MiB, `fsync`s run side by side so the file system commits them
//! together), larger ones on their own; a file is reported done once it
//! is durable under its own name.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::debug;

use crate::check::ManifestLimits;
use crate::codec::{CHUNK_SIZE, Frame, HASH_LEN};
use crate::error::TransferError;
use crate::fsx::{Dir, set_file_mode};
use crate::hash::{FileHash, hash_prefix};
use crate::io::{
    FINISH_TIMEOUT, FrameReader, IO_TIMEOUT, PIPELINE_DEPTH, Progress, close, flush, report_error,
    timed, write_frame,
};
use crate::message::{EntryKind, Offer, ResumePoint};
use crate::path::{RelativePath, check_within};
use crate::protocol::{PART_SUFFIX, ReceiverCore, ReceiverEvent};
use crate::{Event, Report};

/// Space counted for every file and folder on top of its bytes (a
/// directory block or an inode, roughly), so that millions of empty
/// entries cannot fill a disk past the free-space check.
pub const ENTRY_SPACE: u64 = 4096;

/// Where and how to receive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Output directory (created if missing). Every received path lands
    /// below it.
    pub out_dir: PathBuf,
    /// Replace existing files instead of failing with
    /// [`TransferError::Exists`].
    pub overwrite: bool,
    /// Manifest paths of files this receiver already verified and renamed
    /// in an earlier attempt of the same transfer (before a reconnect).
    /// They are not a clash: they are offered back to the sender as
    /// complete (their hash proves it) and left as they are.
    pub finished: HashSet<String>,
    /// Bounds on the offered manifest (see [`ManifestLimits`]).
    pub limits: ManifestLimits,
    /// Accept entries inside a `.git` folder (refused by default: a hook
    /// or a config there can run commands on this computer).
    pub allow_git: bool,
}

/// An offer that was read and checked, waiting for the user's decision.
pub struct Incoming<S> {
    reader: FrameReader<S>,
    core: ReceiverCore,
    offer: Offer,
    opts: ReceiveOptions,
    started: Instant,
}

impl<S> std::fmt::Debug for Incoming<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("offer", &self.offer)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Reads the offer, sanitizes every path and checks conflicts with
/// existing files ([`TransferError::Exists`] names the file). Nothing is
/// written and nothing expensive is computed yet. On an error the sender
/// is told the reason, with its [`TransferError::code`] when it has one.
pub async fn receive_offer<S>(stream: S, opts: ReceiveOptions) -> Result<Incoming<S>, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let mut reader = FrameReader::new(stream);
    let mut core = ReceiverCore::with_limits(opts.limits, opts.allow_git);
    let result = read_offer(&mut reader, &mut core, &opts).await;
    match result {
        Ok(offer) => Ok(Incoming {
            reader,
            core,
            offer,
            opts,
            started,
        }),
        Err(e) => {
            report_error(reader.get_mut(), &e).await;
            Err(e)
        }
    }
}

async fn read_offer<S: AsyncRead + Unpin>(
    reader: &mut FrameReader<S>,
    core: &mut ReceiverCore,
    opts: &ReceiveOptions,
) -> Result<Offer, TransferError> {
    let frame = timed("waiting for the offer", IO_TIMEOUT, reader.next()).await?;
    let event = core.handle_frame(frame).inspect_err(|e| {
        debug!(error = %e, "sender's offer rejected");
    })?;
    let ReceiverEvent::Offer(offer) = event else {
        return Err(TransferError::Protocol("expected an offer".into()));
    };
    if let Offer::Files(manifest) = &offer {
        let targets = targets(manifest, core.paths());
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || check_targets(&opts, &targets))
            .await
            .map_err(|e| TransferError::Internal(format!("checking targets: {e}")))??;
    }
    Ok(offer)
}

/// After a reconnect: reads the sender's offer again on the new stream
/// and checks that it is the offer first accepted (`first`). Files named
/// in `opts.finished` are kept as they are; the rest resume from their
/// verified bytes once [`Incoming::accept`]ed. A different offer is
/// declined (the sender is told why) and is [`TransferError::OfferChanged`].
pub async fn resume_offer<S>(
    stream: S,
    opts: ReceiveOptions,
    first: &Offer,
) -> Result<Incoming<S>, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let incoming = receive_offer(stream, opts).await?;
    if incoming.offer() != first {
        incoming
            .decline("after reconnecting, the offer differs from the first one")
            .await?;
        return Err(TransferError::OfferChanged);
    }
    Ok(incoming)
}

/// Tells the sender that the receiver stops on purpose (the user pressed
/// Ctrl-C): an error frame saying `reason`, then the end of our side of
/// the stream. Safe to call after dropping [`Incoming::accept`] halfway,
/// because the receiver's side of the stream carries only whole control
/// frames, written at the start and the end.
pub async fn cancel_receiving<W: AsyncWrite + Unpin>(stream: &mut W, reason: &str) {
    let frame = Frame::Control(crate::message::Control::Error {
        message: reason.to_string(),
        code: None,
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        write_frame(stream, &frame).await?;
        flush(stream).await
    })
    .await;
    close(stream).await;
}

impl<S> Incoming<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// What the sender offers.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Accepts. For files: finds `.ferry-part` files and hashes their
    /// prefixes, checks free space, sends `Accept`, receives, verifies and
    /// renames every file, then confirms with `Done`. For text: acknowledges
    /// (the text is in [`Incoming::offer`]).
    pub async fn accept(
        mut self,
        mut events: impl FnMut(Event) + Send,
    ) -> Result<Report, TransferError> {
        let result = self.run_accept(&mut events).await;
        match &result {
            Err(TransferError::Moved) | Ok(_) => close(self.reader.get_mut()).await,
            Err(e) => report_error(self.reader.get_mut(), e).await,
        }
        result
    }

    /// Declines with `reason`, which the sender shows to its user.
    pub async fn decline(mut self, reason: &str) -> Result<(), TransferError> {
        let msg = self.core.decline(reason);
        let w = self.reader.get_mut();
        write_frame(w, &Frame::Control(msg)).await?;
        flush(w).await?;
        close(w).await;
        Ok(())
    }

    async fn run_accept(
        &mut self,
        events: &mut (impl FnMut(Event) + Send),
    ) -> Result<Report, TransferError> {
        let manifest = match &self.offer {
            Offer::Text(text) => {
                let ack = self.core.accept(Vec::new())?;
                let w = self.reader.get_mut();
                write_frame(w, &Frame::Control(ack)).await?;
                flush(w).await?;
                return Ok(Report {
                    files: 0,
                    bytes_total: text.len() as u64,
                    bytes_transferred: text.len() as u64,
                    bytes_resumed: 0,
                    elapsed: self.started.elapsed(),
                });
            }
            Offer::Files(manifest) => manifest.clone(),
        };
        // The rate is the transfer's, not the time the user took to decide.
        self.started = Instant::now();
        let targets = targets(&manifest, self.core.paths());
        let opts = self.opts.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&opts, targets))
            .await
            .map_err(|e| TransferError::Internal(format!("preparing: {e}")))??;
        let accept = self.core.accept(prepared.resume.clone())?;
        let w = self.reader.get_mut();
        write_frame(w, &Frame::Control(accept)).await?;
        flush(w).await?;

        let total = manifest.total_bytes();
        let names: Vec<(String, u64)> = prepared
            .files
            .iter()
            .map(|f| (f.rel.clone(), f.size))
            .collect();
        let mut report = Report {
            files: names.len(),
            bytes_total: total,
            bytes_transferred: 0,
            bytes_resumed: 0,
            elapsed: Default::default(),
        };
        let mut progress = Progress::new(total);
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let overwrite = self.opts.overwrite;
        let writer =
            tokio::task::spawn_blocking(move || write_files(prepared, overwrite, rx, done_tx));

        let emit_done = |done_rx: &mut mpsc::UnboundedReceiver<usize>,
                         progress: &mut Progress,
                         events: &mut (dyn FnMut(Event) + Send)| {
            while let Ok(index) = done_rx.try_recv() {
                let path = names.get(index).map(|n| n.0.clone()).unwrap_or_default();
                events(Event::FileDone { path });
                progress.advance(0, true, &mut *events);
            }
        };
        let mut loop_result = Ok(());
        while !self.core.is_complete() {
            let step = async {
                let limit = if self.core.awaiting_file_start() {
                    FINISH_TIMEOUT
                } else {
                    IO_TIMEOUT
                };
                let frame = timed("waiting for data", limit, self.reader.next()).await?;
                let event = self.core.handle_frame(frame).inspect_err(|e| {
                    debug!(error = %e, "sender misbehaved");
                })?;
                let cmd = match event {
                    ReceiverEvent::Offer(_) => {
                        return Err(TransferError::Protocol("second offer".into()));
                    }
                    ReceiverEvent::FileStart { index, offset } => {
                        let (path, size) = names.get(index).cloned().unwrap_or_default();
                        report.bytes_resumed += offset;
                        events(Event::FileStarted {
                            path,
                            size,
                            resumed_from: offset,
                        });
                        progress.advance(offset, offset > 0, &mut *events);
                        Cmd::Start { index, offset }
                    }
                    ReceiverEvent::Chunk {
                        index,
                        offset,
                        hash,
                        chunk,
                    } => {
                        report.bytes_transferred += chunk.len() as u64;
                        progress.advance(chunk.len() as u64, false, &mut *events);
                        Cmd::Chunk {
                            index,
                            offset,
                            hash,
                            chunk,
                        }
                    }
                    ReceiverEvent::FileEnd { index, hash } => Cmd::End { index, hash },
                    // What came before is with the disk thread; it
                    // finishes that, and the transfer resumes elsewhere.
                    ReceiverEvent::Moved => return Err(TransferError::Moved),
                };
                Ok(tx.send(cmd).await.is_ok())
            };
            match step.await {
                Ok(true) => emit_done(&mut done_rx, &mut progress, &mut *events),
                // The disk thread stopped: its error is the one to report.
                Ok(false) => break,
                Err(e) => {
                    loop_result = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        if loop_result.is_err() {
            // Where the transfer stopped, for a caller that explains the
            // stop (the relay's byte limit) or resumes.
            progress.advance(0, true, &mut *events);
        }
        let written = writer
            .await
            .map_err(|e| TransferError::Internal(format!("file writer thread: {e}")))?;
        emit_done(&mut done_rx, &mut progress, &mut *events);
        written?;
        loop_result?;
        let done = self.core.finish()?;
        let w = self.reader.get_mut();
        write_frame(w, &Frame::Control(done)).await?;
        flush(w).await?;
        report.elapsed = self.started.elapsed();
        Ok(report)
    }
}

/// One manifest entry and where it lands.
#[derive(Debug, Clone)]
struct Target {
    rel: RelativePath,
    kind: EntryKind,
}

fn targets(manifest: &crate::message::Manifest, paths: &[RelativePath]) -> Vec<Target> {
    manifest
        .entries
        .iter()
        .zip(paths)
        .map(|(e, rel)| Target {
            rel: rel.clone(),
            kind: e.kind,
        })
        .collect()
}

/// No symlink tricks, no overwriting unless asked.
fn check_targets(opts: &ReceiveOptions, targets: &[Target]) -> Result<(), TransferError> {
    for t in targets {
        let path = check_within(&opts.out_dir, &t.rel)?;
        let existing = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(TransferError::io(path, e)),
        };
        let clash = match t.kind {
            EntryKind::Dir { .. } => !existing.is_dir(),
            EntryKind::File { .. } if opts.finished.contains(t.rel.as_str()) => !existing.is_file(),
            EntryKind::File { .. } => existing.is_dir() || !opts.overwrite,
        };
        if clash {
            return Err(TransferError::Exists { path });
        }
    }
    Ok(())
}

/// Everything the disk thread needs.
struct Prepared {
    files: Vec<WriteFile>,
    /// Directories and their modes, applied once all files are in.
    dirs: Vec<(RelativePath, u32)>,
    out_dir: PathBuf,
    resume: Vec<ResumePoint>,
}

struct WriteFile {
    rel: String,
    /// The folder components below the output directory.
    parents: Vec<String>,
    /// The last component, and it with [`PART_SUFFIX`].
    name: String,
    part_name: String,
    final_path: PathBuf,
    part_path: PathBuf,
    size: u64,
    mode: u32,
    /// The whole-file hash state after the resumable prefix.
    prefix: Option<FileHash>,
    /// Received, verified and renamed in an earlier attempt: the final
    /// file is the "part", offered back as complete.
    finished: bool,
}

/// Re-checks the targets, finds resumable parts, checks free space and
/// creates the directories.
fn prepare(opts: &ReceiveOptions, targets: Vec<Target>) -> Result<Prepared, TransferError> {
    check_targets(opts, &targets)?;
    // The output folder is created if missing (as ReceiveOptions says)
    // before anything is looked up below it.
    fs::create_dir_all(&opts.out_dir).map_err(|e| TransferError::io(&opts.out_dir, e))?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut resume = Vec::new();
    let mut needed = 0u64;
    for t in &targets {
        let final_path = t.rel.join_to(&opts.out_dir);
        match t.kind {
            EntryKind::Dir { mode } => dirs.push((t.rel.clone(), mode)),
            EntryKind::File { size, mode } => {
                let mut parents: Vec<String> = t.rel.components().map(str::to_owned).collect();
                let name = parents.pop().unwrap_or_default();
                let part_name = format!("{name}{PART_SUFFIX}");
                let part_path = final_path.with_file_name(&part_name);
                let finished = opts.finished.contains(t.rel.as_str());
                let dir =
                    Dir::open_beneath(&opts.out_dir, parents.iter().map(String::as_str), false)?;
                let (point, prefix) = match &dir {
                    None => (ResumePoint::fresh(), None),
                    Some(dir) if finished => find_part(dir, &name, size)?,
                    Some(dir) => find_part(dir, &part_name, size)?,
                };
                needed = needed.saturating_add(size - point.offset);
                resume.push(point);
                files.push(WriteFile {
                    rel: t.rel.as_str().to_owned(),
                    parents,
                    name,
                    part_name,
                    final_path,
                    part_path,
                    size,
                    mode,
                    prefix,
                    finished,
                });
            }
        }
    }
    let listed: HashSet<&str> = targets.iter().map(|t| t.rel.as_str()).collect();
    let implied = targets
        .iter()
        .flat_map(|t| t.rel.ancestors())
        .filter(|a| !listed.contains(a))
        .collect::<HashSet<_>>()
        .len();
    let entries = (targets.len() + implied) as u64;
    needed = needed.saturating_add(entries.saturating_mul(ENTRY_SPACE));
    let available =
        fs4::available_space(&opts.out_dir).map_err(|e| TransferError::io(&opts.out_dir, e))?;
    if needed > available {
        return Err(TransferError::NoSpace { needed, available });
    }
    // Every folder, one component at a time, never through a link.
    let mut created = HashSet::new();
    for t in &targets {
        let depth = match t.kind {
            EntryKind::Dir { .. } => t.rel.components().count(),
            EntryKind::File { .. } => t.rel.components().count() - 1,
        };
        let dir_path = t.rel.components().take(depth).collect::<Vec<_>>();
        if depth > 0 && created.insert(dir_path.join("/")) {
            Dir::open_beneath(&opts.out_dir, dir_path, true)?;
        }
    }
    Ok(Prepared {
        files,
        dirs,
        out_dir: opts.out_dir.clone(),
        resume,
    })
}

/// A resumable `.ferry-part` (or a finished file) `name` in `dir`: its
/// length in whole chunks (or the whole file) and the hash of those bytes.
/// A part file holds only verified chunks, but a break can cut the last
/// write short: that tail is sent again (`open_part` truncates it).
fn find_part(
    dir: &Dir,
    name: &str,
    size: u64,
) -> Result<(ResumePoint, Option<FileHash>), TransferError> {
    let path = dir.path().join(name);
    let Some(file) = dir.open_file(name, false)? else {
        return Ok((ResumePoint::fresh(), None));
    };
    let len = file
        .metadata()
        .map_err(|e| TransferError::io(&path, e))?
        .len();
    if len > size {
        return Ok((ResumePoint::fresh(), None));
    }
    let len = if len == size {
        len
    } else {
        len - len % CHUNK_SIZE as u64
    };
    if len == 0 {
        return Ok((ResumePoint::fresh(), None));
    }
    let hasher = match hash_prefix(file, len, CHUNK_SIZE) {
        Ok(hasher) => hasher,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok((ResumePoint::fresh(), None));
        }
        Err(e) => return Err(TransferError::io(&path, e)),
    };
    let point = ResumePoint {
        offset: len,
        prefix_hash: hasher.finalize().to_hex().to_string(),
    };
    Ok((point, Some(hasher)))
}

/// What the network task hands to the disk thread.
enum Cmd {
    Start {
        index: usize,
        offset: u64,
    },
    Chunk {
        index: usize,
        offset: u64,
        hash: [u8; HASH_LEN],
        chunk: Bytes,
    },
    End {
        index: usize,
        hash: [u8; HASH_LEN],
    },
}

struct Open {
    index: usize,
    /// The file's folder, opened when the file started.
    dir: Option<Dir>,
    /// `None` for a file finished in an earlier attempt: nothing to write.
    file: Option<File>,
    hasher: FileHash,
}

/// The disk thread: verifies and writes chunks, finishes files. Stops at
/// the first error; the `.ferry-part` then holds only verified bytes.
/// Verified files in the batch still waiting to be made durable are
/// finished even then, so a resume need not send them again.
fn write_files(
    mut prepared: Prepared,
    overwrite: bool,
    rx: mpsc::Receiver<Cmd>,
    done: mpsc::UnboundedSender<usize>,
) -> Result<(), TransferError> {
    let mut batch = Batch::default();
    let written = write_loop(&mut prepared, overwrite, rx, &done, &mut batch);
    let flushed = batch.flush(&prepared.files, overwrite, &done);
    written?;
    flushed?;
    if batch.finished == prepared.files.len() {
        apply_dir_modes(&prepared.out_dir, &mut prepared.dirs)?;
    }
    Ok(())
}

/// Files at least this large are made durable on their own (`fsync`): the
/// call's cost is small against their writing. Smaller ones wait in a
/// [`Batch`].
const SYNC_ALONE: u64 = 4 * 1024 * 1024;
/// Most files in one batch (each holds two descriptors meanwhile).
const BATCH_FILES: usize = 128;
/// Most bytes in one batch.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// Verified small files, mode set, still named `.ferry-part`: made durable
/// together ([`sync_files`](crate::fsx::sync_files)), then renamed and
/// reported done. One `fsync` each, one after the other, cost 26 s for
/// 10,000 files of 4 KiB.
#[derive(Default)]
struct Batch {
    files: Vec<(usize, Dir, File)>,
    bytes: u64,
    /// Files finished so far, batched or not.
    finished: usize,
}

impl Batch {
    fn flush(
        &mut self,
        files: &[WriteFile],
        overwrite: bool,
        done: &mpsc::UnboundedSender<usize>,
    ) -> Result<(), TransferError> {
        let batch = std::mem::take(&mut self.files);
        self.bytes = 0;
        let named = batch
            .iter()
            .filter_map(|(index, _, file)| Some((file, files.get(*index)?)))
            .collect::<Vec<_>>();
        crate::fsx::sync_files(named.iter().map(|(file, f)| (*file, f.part_path.as_path())))
            .map_err(|(part, e)| {
                let f = named.iter().find(|(_, f)| f.part_path == part);
                write_error(f.map_or(part, |(_, f)| &f.final_path), part, e)
            })?;
        for (index, dir, file) in batch {
            drop(file);
            let f = files
                .get(index)
                .ok_or_else(|| TransferError::Internal(format!("no file {index}")))?;
            dir.rename(&f.part_name, &f.name, overwrite)?;
            self.finished += 1;
            let _ = done.send(index);
        }
        Ok(())
    }
}

fn write_loop(
    prepared: &mut Prepared,
    overwrite: bool,
    mut rx: mpsc::Receiver<Cmd>,
    done: &mpsc::UnboundedSender<usize>,
    batch: &mut Batch,
) -> Result<(), TransferError> {
    let mut open: Option<Open> = None;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Start { index, offset } => {
                let f = file_at(&mut prepared.files, index)?;
                open = Some(open_part(&prepared.out_dir, f, index, offset)?);
            }
            Cmd::Chunk {
                index,
                offset,
                hash,
                chunk,
            } => {
                let cur = current(&mut open, index)?;
                let f = file_at(&mut prepared.files, index)?;
                // The one hash of these bytes: checked against the frame's,
                // then part of the whole-file hash. ReceiverCore let through
                // only chunks that are subtrees, so an error is ours.
                let cv = cur
                    .hasher
                    .update(&chunk)
                    .map_err(|e| TransferError::Internal(format!("{}: {e}", f.rel)))?;
                if cv != hash {
                    debug!(path = %f.rel, offset, "chunk failed verification");
                    return Err(TransferError::ChunkMismatch {
                        path: f.rel.clone(),
                        offset,
                    });
                }
                let Some(file) = cur.file.as_mut() else {
                    return Err(TransferError::Internal(format!(
                        "data for {}, which is complete",
                        f.rel
                    )));
                };
                file.write_all(&chunk)
                    .map_err(|e| write_error(&f.final_path, &f.part_path, e))?;
            }
            Cmd::End { index, hash } => {
                let cur = current(&mut open, index)?;
                let f = file_at(&mut prepared.files, index)?;
                if cur.hasher.finalize().as_bytes() != &hash {
                    if let Some(dir) = open.take().and_then(|cur| cur.dir) {
                        let _ = dir.remove_file(&f.part_name);
                    }
                    return Err(TransferError::FileMismatch {
                        path: f.rel.clone(),
                    });
                }
                // Without a file: finished in an earlier attempt, nothing
                // to write.
                if let Some(Open {
                    file: Some(file),
                    dir: Some(dir),
                    ..
                }) = open.take()
                {
                    set_file_mode(&file, &f.part_path, f.mode)?;
                    if f.size < SYNC_ALONE {
                        batch.bytes += f.size;
                        batch.files.push((index, dir, file));
                        if batch.files.len() >= BATCH_FILES || batch.bytes >= BATCH_BYTES {
                            batch.flush(&prepared.files, overwrite, done)?;
                        }
                        continue;
                    }
                    file.sync_all()
                        .map_err(|e| write_error(&f.final_path, &f.part_path, e))?;
                    drop(file);
                    dir.rename(&f.part_name, &f.name, overwrite)?;
                }
                batch.finished += 1;
                let _ = done.send(index);
            }
        }
    }
    Ok(())
}

fn file_at(files: &mut [WriteFile], index: usize) -> Result<&mut WriteFile, TransferError> {
    files
        .get_mut(index)
        .ok_or_else(|| TransferError::Internal(format!("no file {index}")))
}

fn current(open: &mut Option<Open>, index: usize) -> Result<&mut Open, TransferError> {
    open.as_mut()
        .filter(|o| o.index == index)
        .ok_or_else(|| TransferError::Internal(format!("file {index} is not open")))
}

fn open_part(
    out_dir: &Path,
    f: &mut WriteFile,
    index: usize,
    offset: u64,
) -> Result<Open, TransferError> {
    if f.finished {
        // The sender agreed the file is complete (it checked the hash);
        // anything else means the file here is not the one it sends.
        let hasher = f
            .prefix
            .take()
            .filter(|_| offset == f.size)
            .ok_or_else(|| TransferError::Exists {
                path: f.final_path.clone(),
            })?;
        return Ok(Open {
            index,
            dir: None,
            file: None,
            hasher,
        });
    }
    let io_err = |e| TransferError::io(&f.part_path, e);
    // The folder was made in `prepare`; a link in its place now is refused.
    let dir = Dir::open_beneath(out_dir, f.parents.iter().map(String::as_str), false)?
        .ok_or_else(|| TransferError::io(&f.part_path, io::Error::from(io::ErrorKind::NotFound)))?;
    let (mut file, hasher) = if offset == 0 {
        let hasher =
            FileHash::new(CHUNK_SIZE).map_err(|e| TransferError::Internal(e.to_string()))?;
        (dir.create_file(&f.part_name)?, hasher)
    } else {
        let hasher = f
            .prefix
            .take()
            .ok_or_else(|| TransferError::Internal("resume without a prefix".into()))?;
        let file = dir.open_file(&f.part_name, true)?.ok_or_else(|| {
            TransferError::io(&f.part_path, io::Error::from(io::ErrorKind::NotFound))
        })?;
        file.set_len(offset).map_err(io_err)?;
        (file, hasher)
    };
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    Ok(Open {
        index,
        dir: Some(dir),
        file: Some(file),
        hasher,
    })
}

fn apply_dir_modes(out_dir: &Path, dirs: &mut [(RelativePath, u32)]) -> Result<(), TransferError> {
    // Deepest first, so a read-only parent does not block its children.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (rel, mode) in dirs.iter() {
        let dir = Dir::open_beneath(out_dir, rel.components(), false)?.ok_or_else(|| {
            TransferError::io(
                rel.join_to(out_dir),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        dir.set_mode(*mode)?;
    }
    Ok(())
}

fn write_error(final_path: &Path, part_path: &Path, e: io::Error) -> TransferError {
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        TransferError::DiskFull {
            path: final_path.to_path_buf(),
        }
    } else {
        TransferError::io(part_path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_maps_to_disk_full_and_other_errors_to_io() {
        let enospc = io::Error::from_raw_os_error(28);
        assert!(matches!(
            write_error(Path::new("out/f"), Path::new("out/f.ferry-part"), enospc),
            TransferError::DiskFull { path } if path == Path::new("out/f")
        ));
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(
            write_error(Path::new("out/f"), Path::new("out/f.ferry-part"), other),
            TransferError::Io { path, .. } if path == Path::new("out/f.ferry-part")
        ));
    }

    #[test]
    fn part_files_are_found_and_hashed() {
        let t = tempfile::tempdir().unwrap();
        let part = t.path().join("f.ferry-part");
        let dir = Dir::open_beneath(t.path(), [], false).unwrap().unwrap();
        let find_part = |_: &Path, size| find_part(&dir, "f.ferry-part", size);
        assert_eq!(find_part(&part, 10).unwrap().0, ResumePoint::fresh());
        fs::write(&part, b"hello").unwrap();
        let (point, hasher) = find_part(&part, 5).unwrap();
        assert_eq!(point.offset, 5, "the whole file");
        assert_eq!(
            point.prefix_hash,
            blake3::hash(b"hello").to_hex().to_string()
        );
        assert_eq!(hasher.unwrap().finalize(), blake3::hash(b"hello"));
        // Less than a chunk of a longer file: nothing to resume.
        assert_eq!(find_part(&part, 10).unwrap().0, ResumePoint::fresh());
        // Longer than the offered file: start over.
        assert_eq!(find_part(&part, 4).unwrap().0, ResumePoint::fresh());
    }

    #[test]
    fn part_files_cut_inside_a_chunk_resume_from_the_last_whole_chunk() {
        let t = tempfile::tempdir().unwrap();
        let part = t.path().join("f.ferry-part");
        let dir = Dir::open_beneath(t.path(), [], false).unwrap().unwrap();
        let bytes: Vec<u8> = (0..2 * CHUNK_SIZE + 100).map(|i| (i % 251) as u8).collect();
        fs::write(&part, &bytes).unwrap();
        let (point, hasher) = find_part(&dir, "f.ferry-part", 3 * CHUNK_SIZE as u64).unwrap();
        let whole = &bytes[..2 * CHUNK_SIZE];
        assert_eq!(point.offset, whole.len() as u64);
        assert_eq!(point.prefix_hash, blake3::hash(whole).to_hex().to_string());
        assert_eq!(hasher.unwrap().finalize(), blake3::hash(whole));
    }
}
