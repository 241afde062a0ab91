//! The race drivers: the controlling side nominates the best
//! authenticated path, the controlled side uses the one nominated; both
//! talk over the mailbox meanwhile.

use std::time::{Duration, Instant};

use ferry_connect::ConnectError;
use ferry_connect::race::{Action, NOMINATION, PathId, PathKind, Race, RaceConfig};
use ferry_proto::pairing::SecureChannel;
use ferry_proto::peer::PeerToPeer;
use ferry_rendezvous::{SignalClient, SignalEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::*;

/// The signalling connection during the race: the receiver reports paths
/// it gave up on, and either side notices the other leaving.
pub(crate) struct Mailbox<'a> {
    pub(crate) signal: &'a mut SignalClient,
    pub(crate) channel: &'a mut SecureChannel,
}

impl Mailbox<'_> {
    pub(crate) async fn path_failed(&mut self, kind: PathKind, why: &str) {
        let msg = PeerToPeer::PathFailed {
            path: kind.code().to_string(),
            why: why.to_string(),
        };
        let body = self.channel.seal(&msg);
        if let Err(error) = self.signal.send(body).await {
            debug!(%error, "could not report a failed path");
        }
    }

    /// The next thing the peer says during the race: `Ok(Some(path))` for
    /// a path it gave up on, `Ok(None)` for anything else.
    pub(crate) async fn next(&mut self) -> Result<Option<(String, String)>, SessionError> {
        match self.signal.recv().await? {
            SignalEvent::Message(body) => match self.channel.open(&body)? {
                PeerToPeer::PathFailed { path, why } => Ok(Some((path, why))),
                PeerToPeer::Abort { reason } => {
                    Err(SessionError::PeerGone(PeerGone::Cancelled(reason)))
                }
                other => {
                    debug!(?other, "unexpected message during the race");
                    Ok(None)
                }
            },
            SignalEvent::PeerLeft(reason) => {
                Err(SessionError::PeerGone(PeerGone::GaveUpConnecting(reason)))
            }
            SignalEvent::PeerJoined => Ok(None),
        }
    }
}

/// The sender picks the best authenticated path and nominates it.
pub(crate) async fn race_controlling(
    mut set: JoinSet<(PathId, Result<Established, ConnectError>)>,
    kinds: &[PathKind],
    mut mailbox: Mailbox<'_>,
) -> Result<(Established, Vec<(PathKind, String)>), SessionError> {
    let mut mailbox_open = true;
    let mut race = Race::new(
        Instant::now(),
        RaceConfig {
            deadline: RACE_DEADLINE,
            ..RaceConfig::default()
        },
    );
    for (id, kind) in kinds.iter().enumerate() {
        race.handle_started(id, *kind);
    }
    let mut established: Vec<Option<Established>> = kinds.iter().map(|_| None).collect();
    if kinds.is_empty() {
        race.handle_timeout(Instant::now());
    }
    loop {
        while let Some(action) = race.poll_action() {
            match action {
                Action::Nominate(id) => {
                    let Some(mut winner) = established.get_mut(id).and_then(Option::take) else {
                        continue;
                    };
                    let nominated = async {
                        winner.stream.write_all(NOMINATION).await?;
                        winner.stream.flush().await
                    };
                    match tokio::time::timeout(Duration::from_secs(5), nominated).await {
                        Ok(Ok(())) => {
                            info!(path = %winner.kind, remote = %winner.remote, "path nominated");
                            return Ok((winner, race.failures().to_vec()));
                        }
                        _ => {
                            return Err(SessionError::PeerGone(PeerGone::WentAwayAsChosen(
                                winner.kind,
                            )));
                        }
                    }
                }
                Action::Close(id) => {
                    if let Some(loser) = established.get_mut(id).and_then(Option::take) {
                        debug!(path = %loser.kind, "closing a path that lost the race");
                    }
                }
                Action::GiveUp => {
                    return Err(SessionError::NoPath {
                        failures: race.failures().to_vec(),
                        relay_forced: false,
                    });
                }
            }
        }
        let wake = race
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + RACE_DEADLINE);
        tokio::select! {
            joined = set.join_next(), if !set.is_empty() => {
                let now = Instant::now();
                match joined {
                    Some(Ok((id, Ok(path)))) => {
                        debug!(path = %path.kind, remote = %path.remote, "path established");
                        let kind = path.kind;
                        if let Some(slot) = established.get_mut(id) {
                            *slot = Some(path);
                        }
                        race.handle_established(now, id, kind);
                    }
                    Some(Ok((id, Err(error)))) => {
                        debug!(path = ?kinds.get(id), %error, "path failed");
                        race.handle_failed(now, id, error.to_string());
                    }
                    Some(Err(error)) => debug!(%error, "path task failed"),
                    None => {}
                }
            }
            () = tokio::time::sleep_until(wake) => race.handle_timeout(Instant::now()),
            said = mailbox.next(), if mailbox_open => match said {
                Ok(Some((path, why))) => {
                    // The receiver gave up on a path we are still waiting on.
                    let now = Instant::now();
                    for (id, kind) in kinds.iter().enumerate() {
                        if kind.code() == path && established.get(id).is_some_and(Option::is_none) {
                            race.handle_failed(now, id, format!("the receiver: {why}"));
                        }
                    }
                }
                Ok(None) => {}
                Err(SessionError::Signal(error)) => {
                    // The direct paths may still work without the server.
                    debug!(%error, "lost the rendezvous server during the race");
                    mailbox_open = false;
                }
                Err(SessionError::PeerGone(why)) => {
                    // The receiver found no path and left.
                    let mut failures = race.failures().to_vec();
                    for kind in kinds {
                        if !failures.iter().any(|(k, _)| k == kind) {
                            failures.push((*kind, format!("abandoned: {why}")));
                        }
                    }
                    return Err(SessionError::NoPath { failures, relay_forced: false });
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// The receiver waits for the sender to say "ferry-go" on one of the
/// paths it established.
pub(crate) async fn race_controlled(
    mut set: JoinSet<(PathId, Result<Established, ConnectError>)>,
    kinds: &[PathKind],
    mut mailbox: Mailbox<'_>,
) -> Result<(Established, Vec<(PathKind, String)>), SessionError> {
    let mut failures: Vec<(PathKind, String)> = Vec::new();
    let mut mailbox_open = true;
    let mut waiting: JoinSet<Result<Established, (PathKind, String)>> = JoinSet::new();
    let mut deadline = tokio::time::Instant::now() + NOMINATION_TIMEOUT;
    loop {
        if set.is_empty() && waiting.is_empty() {
            return Err(SessionError::NoPath {
                failures,
                relay_forced: false,
            });
        }
        tokio::select! {
            joined = set.join_next(), if !set.is_empty() => match joined {
                Some(Ok((_, Ok(mut path)))) => {
                    debug!(path = %path.kind, remote = %path.remote, "path established; waiting for the nomination");
                    waiting.spawn(async move {
                        let mut word = [0u8; NOMINATION.len()];
                        match tokio::time::timeout_at(deadline, path.stream.read_exact(&mut word)).await {
                            Ok(Ok(_)) if &word == NOMINATION => Ok(path),
                            _ => Err((path.kind, "the sender chose another path".to_string())),
                        }
                    });
                }
                Some(Ok((id, Err(error)))) => {
                    let kind = kinds.get(id).copied().unwrap_or(PathKind::Tcp);
                    debug!(path = %kind, %error, "path failed");
                    if kind == PathKind::Tcp {
                        mailbox.path_failed(kind, &error.to_string()).await;
                    }
                    failures.push((kind, error.to_string()));
                }
                Some(Err(error)) => debug!(%error, "path task failed"),
                None => {}
            },
            nominated = waiting.join_next(), if !waiting.is_empty() => match nominated {
                Some(Ok(Ok(path))) => {
                    info!(path = %path.kind, remote = %path.remote, "the sender chose this path");
                    return Ok((path, failures));
                }
                Some(Ok(Err((kind, why)))) => {
                    debug!(path = %kind, why, "path not chosen");
                }
                Some(Err(error)) => debug!(%error, "nomination task failed"),
                None => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(SessionError::NoPath { failures, relay_forced: false });
            }
            said = mailbox.next(), if mailbox_open => match said {
                Ok(_) => {}
                Err(SessionError::Signal(error)) => {
                    debug!(%error, "lost the rendezvous server during the race");
                    mailbox_open = false;
                }
                // The sender left: either it gave up (no path), or it
                // nominated a path and released the nameplate. Wait briefly
                // for that nomination, then stop.
                Err(SessionError::PeerGone(why)) => {
                    debug!(%why, "the sender left the rendezvous");
                    mailbox_open = false;
                    deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(3));
                }
                Err(error) => return Err(error),
            },
        }
    }
}
