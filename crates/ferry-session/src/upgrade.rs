//! Relay first, direct later: when the race hands the transfer to the
//! relay while direct attempts still run (port spraying, a slow punch, a
//! TCP connection still on its way), those attempts go on in the
//! background. The first direct path to come up is nominated on it by the
//! sender, and taken by the receiver when it reads that nomination; the
//! transfer then moves onto it mid-stream (`ferry_transfer::send_moving`:
//! a `Move` at a chunk boundary, and a resume on the new stream), and the
//! relay connection is closed.
//!
//! ```text
//! sender (controlling)                          receiver (controlled)
//!   race: the relay wins, direct attempts        race: "ferry-go" on the relay;
//!   still running ──> Upgrade::controlling        attempts still running ──> Upgrade::controlled
//!   first direct path up: "ferry-go" on it ====>  reads "ferry-go" on it: ready
//!   transfer: Move on the relay at a chunk  ---->  transfer ends with Moved;
//!   boundary; offer again on the direct path       Upgrade::within: the direct path;
//!                                                  resume from what it holds
//! ```
//!
//! Only between peers that both list [`FEATURE_MOVE`](ferry_proto::peer::FEATURE_MOVE).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_connect::ConnectError;
use ferry_connect::race::{NOMINATION, PathId, PathKind, PeerStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info};

use crate::*;

/// How long after the relay won the direct attempts may still bring a
/// path to move to; each attempt ends sooner by its own time limit.
pub const UPGRADE_WINDOW: Duration = Duration::from_secs(30);

/// How long a receiver whose sender said it moves waits for the new path's
/// nomination (it is normally there first: the sender nominates, then
/// moves).
pub const MOVE_WAIT: Duration = Duration::from_secs(10);

/// The direct path that may replace the relay: see the module docs.
pub struct Upgrade {
    task: Option<JoinHandle<Option<Established>>>,
    ready: Option<Established>,
    /// When the relay took over.
    since: Instant,
    /// Told when the direct path is taken: the transfer moved (the
    /// pairing's path report, [`PathReport`]).
    moved: Option<MoveNotice>,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("running", &self.task.is_some())
            .field("ready", &self.ready.as_ref().map(|p| p.kind))
            .finish_non_exhaustive()
    }
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The attempts still running when the relay won.
pub(crate) type Running = JoinSet<(PathId, Result<Established, ConnectError>)>;

impl Upgrade {
    /// The sender's side: the first direct path of `running` to come up
    /// is nominated.
    pub(crate) fn controlling(running: Running) -> Self {
        Self::spawn(nominate_first(running))
    }

    /// The receiver's side: the first direct path of `running` and `held`
    /// (established, not yet nominated) on which the sender says
    /// "ferry-go"; `waiting` are paths already waiting for that word.
    pub(crate) fn controlled(
        running: Running,
        waiting: JoinSet<(PathId, Option<Established>)>,
        held: HashMap<PathId, Established>,
    ) -> Self {
        Self::spawn(await_nomination(running, waiting, held))
    }

    fn spawn(
        find: impl std::future::Future<Output = Option<Established>> + Send + 'static,
    ) -> Self {
        Upgrade {
            task: Some(tokio::spawn(find)),
            ready: None,
            since: Instant::now(),
            moved: None,
        }
    }

    /// Tells `notice` when the transfer takes the direct path.
    pub(crate) fn report_moves(&mut self, notice: MoveNotice) {
        self.moved = Some(notice);
    }

    /// Resolves once a direct path is up; never when none comes.
    /// Cancel-safe.
    pub async fn arrived(&mut self) {
        if self.ready.is_some() {
            return;
        }
        if let Some(task) = self.task.as_mut() {
            let found = task.await;
            self.task = None;
            if let Ok(Some(path)) = found {
                self.ready = Some(path);
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    /// The direct path, once [`arrived`](Self::arrived), as a link
    /// (without a [`Rejoin`]: keep the first link's).
    pub fn take(&mut self) -> Option<PeerLink> {
        let path = self.ready.take()?;
        if let Some(moved) = self.moved.take() {
            moved.moved();
        }
        match &path.stream {
            PeerStream::Tls(tls) => detect_breaks(tls.get_ref().0),
            PeerStream::Relayed(tls) => detect_breaks(tls.get_ref().0.tcp()),
            PeerStream::Quic(_) => {}
        }
        Some(PeerLink {
            stream: path.stream,
            path: path.kind,
            local: path.local,
            remote: path.remote,
            connect_time: self.since.elapsed(),
            lost: Vec::new(),
            relay_reason: None,
            relay_limits: None,
            found_by: path.found_by,
            rejoin: None,
            upgrade: None,
            report: None,
        })
    }

    /// The direct path, waiting up to `wait` for it (the receiver, when
    /// the sender said it moves).
    pub async fn within(&mut self, wait: Duration) -> Option<PeerLink> {
        tokio::time::timeout(wait, self.arrived()).await.ok()?;
        self.take()
    }
}

/// The sender: the first direct path to come up gets "ferry-go".
async fn nominate_first(mut running: Running) -> Option<Established> {
    let deadline = tokio::time::Instant::now() + UPGRADE_WINDOW;
    loop {
        let joined = tokio::time::timeout_at(deadline, running.join_next())
            .await
            .ok()??;
        match joined {
            Ok((_, Ok(path))) if path.kind == PathKind::Relay => {}
            Ok((_, Ok(mut path))) => {
                let nominated = async {
                    path.stream.write_all(NOMINATION).await?;
                    path.stream.flush().await
                };
                match tokio::time::timeout(Duration::from_secs(5), nominated).await {
                    Ok(Ok(())) => {
                        info!(path = %path.kind, remote = %path.remote, "a direct path came up after the relay; nominated");
                        return Some(path);
                    }
                    _ => {
                        debug!(path = %path.kind, "the peer went away as its direct path was nominated")
                    }
                }
            }
            Ok((_, Err(error))) => debug!(%error, "a direct attempt behind the relay failed"),
            Err(error) => debug!(%error, "a direct attempt behind the relay died"),
        }
    }
}

/// The receiver: the first path on which the sender says "ferry-go".
async fn await_nomination(
    mut running: Running,
    mut waiting: JoinSet<(PathId, Option<Established>)>,
    held: HashMap<PathId, Established>,
) -> Option<Established> {
    // A little longer than the sender's window: a path it nominates at the
    // end of its own is still taken.
    let deadline = Instant::now() + UPGRADE_WINDOW + Duration::from_secs(5);
    for (id, path) in held {
        waiting.spawn(read_nomination(id, path, deadline));
    }
    loop {
        if running.is_empty() && waiting.is_empty() {
            return None;
        }
        tokio::select! {
            joined = running.join_next(), if !running.is_empty() => match joined {
                Some(Ok((id, Ok(path)))) if path.kind != PathKind::Relay => {
                    debug!(path = %path.kind, "a direct path came up after the relay; waiting for its nomination");
                    waiting.spawn(read_nomination(id, path, deadline));
                }
                Some(Ok((_, Err(error)))) => debug!(%error, "a direct attempt behind the relay failed"),
                _ => {}
            },
            nominated = waiting.join_next(), if !waiting.is_empty() => {
                if let Some(Ok((_, Some(path)))) = nominated {
                    info!(path = %path.kind, remote = %path.remote, "the sender moves to this direct path");
                    return Some(path);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => return None,
        }
    }
}

/// Waits on `path` until `deadline` for the sender's "ferry-go".
pub(crate) async fn read_nomination(
    id: PathId,
    mut path: Established,
    deadline: Instant,
) -> (PathId, Option<Established>) {
    let mut word = [0u8; NOMINATION.len()];
    let read = tokio::time::timeout_at(deadline.into(), path.stream.read_exact(&mut word)).await;
    match read {
        Ok(Ok(_)) if &word == NOMINATION => (id, Some(path)),
        _ => (id, None),
    }
}
