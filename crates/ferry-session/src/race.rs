//! The race drivers: the controlling side nominates the best
//! authenticated path, the controlled side uses the one nominated; both
//! talk over the mailbox meanwhile: paths given up on, and candidates
//! learnt after the hello (ours go out when our UPnP mapping is done; the
//! peer's become more attempts, see [`Trickle`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_connect::race::{
    Action, NOMINATION, Nominee, NomineeAction, PathFailure, PathId, PathKind, Race, RaceConfig,
};
use ferry_proto::pairing::SecureChannel;
use ferry_proto::peer::{Candidate, FEATURE_CANDIDATES, FEATURE_MOVE, PeerToPeer, Transport};
use ferry_rendezvous::{SignalClient, SignalEvent};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::*;

/// The signalling connection during the race: the receiver reports paths
/// it gave up on, the sender sends candidates it learnt after its hello,
/// and either side notices the other leaving.
pub(crate) struct Mailbox<'a> {
    pub(crate) signal: &'a mut SignalClient,
    pub(crate) channel: &'a mut SecureChannel,
}

/// What the peer said during the race.
pub(crate) enum Said {
    /// It gave up on a path (`path`, its short name) for this reason.
    PathFailed { path: String, why: String },
    /// Candidates it learnt after its hello.
    Candidates(Vec<Candidate>),
    /// Nothing that concerns the race.
    Nothing,
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

    /// Sends candidates learnt after the hello; only for a peer that
    /// listed [`FEATURE_CANDIDATES`] (an older one fails on the message).
    pub(crate) async fn candidates(&mut self, candidates: Vec<Candidate>) {
        if !self.channel.peer_understands(FEATURE_CANDIDATES) {
            debug!("the peer takes no late candidates; not sent");
            return;
        }
        let body = self.channel.seal(&PeerToPeer::Candidates { candidates });
        if let Err(error) = self.signal.send(body).await {
            debug!(%error, "could not send late candidates");
        }
    }

    /// The next thing the peer says during the race.
    pub(crate) async fn next(&mut self) -> Result<Said, SessionError> {
        match self.signal.recv().await? {
            SignalEvent::Message(body) => match self.channel.open(&body)? {
                PeerToPeer::PathFailed { path, why } => Ok(Said::PathFailed { path, why }),
                PeerToPeer::Candidates { candidates } => Ok(Said::Candidates(candidates)),
                PeerToPeer::Abort { reason } => {
                    Err(SessionError::PeerGone(PeerGone::Cancelled(reason)))
                }
                PeerToPeer::Unknown => {
                    debug!("a message of a type we do not know during the race; skipped");
                    Ok(Said::Nothing)
                }
                other => {
                    debug!(?other, "unexpected message during the race");
                    Ok(Said::Nothing)
                }
            },
            SignalEvent::PeerLeft(reason) => {
                Err(SessionError::PeerGone(PeerGone::GaveUpConnecting(reason)))
            }
            SignalEvent::PeerJoined => Ok(Said::Nothing),
        }
    }
}

/// The race's outcome: the path nominated, the paths that failed, and
/// when the relay won while direct attempts still run, those attempts
/// ([`Upgrade`]).
pub(crate) struct Won {
    pub(crate) path: Established,
    pub(crate) lost: Vec<(PathKind, PathFailure)>,
    pub(crate) upgrade: Option<Upgrade>,
}

/// The sender picks the best authenticated path and nominates it.
pub(crate) async fn race_controlling(
    mut paths: Paths,
    mut mailbox: Mailbox<'_>,
    mut trickle: Trickle<'_>,
) -> Result<Won, SessionError> {
    let mut mailbox_open = true;
    let mut race = Race::new(
        Instant::now(),
        RaceConfig {
            deadline: RACE_DEADLINE,
            ..RaceConfig::default()
        },
    );
    for (id, kind) in paths.kinds.iter().enumerate() {
        race.handle_started(id, *kind);
    }
    let mut established: Vec<Option<Established>> = paths.kinds.iter().map(|_| None).collect();
    // Attempts whose task has ended (established or failed).
    let mut ended: Vec<bool> = paths.kinds.iter().map(|_| false).collect();
    // The receiver's "TCP failed" while our UPnP search may still bring a
    // TCP mapping: held back until the search ends, so that our listener
    // stays a pending better path (the race's grace) and a QUIC path that
    // is up first does not win before the mapping is even sent.
    let mut tcp_failed_at_peer: Option<String> = None;
    if paths.kinds.is_empty() {
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
                            let upgrade = (winner.kind == PathKind::Relay
                                && mailbox.channel.peer_understands(FEATURE_MOVE)
                                && !paths.set.is_empty())
                            .then(|| {
                                info!("direct attempts go on behind the relay");
                                Upgrade::controlling(std::mem::take(&mut paths.set))
                            });
                            return Ok(Won {
                                path: winner,
                                lost: race.failures().to_vec(),
                                upgrade,
                            });
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
            joined = paths.set.join_next(), if !paths.set.is_empty() => {
                let now = Instant::now();
                match joined {
                    Some(Ok((id, Ok(path)))) => {
                        debug!(path = %path.kind, remote = %path.remote, "path established");
                        let kind = path.kind;
                        if let Some(slot) = established.get_mut(id) {
                            *slot = Some(path);
                        }
                        if let Some(ended) = ended.get_mut(id) {
                            *ended = true;
                        }
                        race.handle_established(now, id, kind);
                    }
                    Some(Ok((id, Err(error)))) => {
                        debug!(path = ?paths.kinds.get(id), %error, "path failed");
                        if let Some(ended) = ended.get_mut(id) {
                            *ended = true;
                        }
                        race.handle_failed(now, id, PathFailure::Failed(error.to_string()));
                    }
                    Some(Err(error)) => debug!(%error, "path task failed"),
                    None => {}
                }
            }
            () = tokio::time::sleep_until(wake) => race.handle_timeout(Instant::now()),
            ours = trickle.upnp.late_candidates(), if trickle.upnp.is_pending() => {
                let tcp = ours.iter().any(|c| c.transport == Transport::Tcp);
                if let Some(why) = tcp_failed_at_peer.take().filter(|_| !tcp) {
                    // No TCP mapping after all: the receiver's verdict stands.
                    fail_at_peer(&mut race, &paths.kinds, &established, "tcp", &why);
                }
                if !ours.is_empty() {
                    info!(candidates = ?ours, "UPnP done after the hello; sending its candidates");
                    mailbox.candidates(ours).await;
                    if tcp {
                        // The receiver may have given up on our listener
                        // already: it has a new address to try now.
                        for (id, kind) in paths.kinds.iter().enumerate() {
                            let running = ended.get(id).is_some_and(|ended| !ended);
                            if *kind == PathKind::Tcp && running && race.handle_revived(id) {
                                debug!(id, "waiting for the receiver's TCP again");
                            }
                        }
                    }
                }
            }
            said = mailbox.next(), if mailbox_open => match said {
                Ok(Said::PathFailed { path, why }) => {
                    // The receiver gave up on a path we are still waiting on.
                    if path == PathKind::Tcp.code() && trickle.upnp.is_pending() {
                        debug!(%why, "the receiver's TCP failed; waiting for our UPnP search first");
                        tcp_failed_at_peer = Some(why);
                    } else {
                        fail_at_peer(&mut race, &paths.kinds, &established, &path, &why);
                    }
                }
                Ok(Said::Candidates(late)) => {
                    for (id, kind) in trickle.take_theirs(late, &mut paths) {
                        established.push(None);
                        ended.push(false);
                        debug_assert_eq!(established.len(), id + 1);
                        race.handle_started(id, kind);
                    }
                }
                Ok(Said::Nothing) => {}
                Err(SessionError::Signal(error)) => {
                    // The direct paths may still work without the server.
                    debug!(%error, "lost the rendezvous server during the race");
                    mailbox_open = false;
                }
                Err(SessionError::PeerGone(why)) => {
                    // The receiver found no path and left.
                    let mut failures = race.failures().to_vec();
                    for kind in &paths.kinds {
                        if !failures.iter().any(|(k, _)| k == kind) {
                            failures.push((*kind, PathFailure::Abandoned(why.to_string())));
                        }
                    }
                    return Err(SessionError::NoPath { failures, relay_forced: false });
                }
                Err(error) => return Err(error),
            },
        }
    }
}

/// The receiver gave up on `path`: every attempt of that kind not yet
/// established fails with its words.
fn fail_at_peer<T>(
    race: &mut Race,
    kinds: &[PathKind],
    established: &[Option<T>],
    path: &str,
    why: &str,
) {
    let now = Instant::now();
    for (id, kind) in kinds.iter().enumerate() {
        if kind.code() == path && established.get(id).is_some_and(Option::is_none) {
            race.handle_failed(now, id, PathFailure::AtPeer(why.to_owned()));
        }
    }
}

/// The receiver waits for the sender to say "ferry-go" on one of the
/// paths it established; the decisions are [`Nominee`]'s.
pub(crate) async fn race_controlled(
    mut paths: Paths,
    mut mailbox: Mailbox<'_>,
    mut trickle: Trickle<'_>,
) -> Result<Won, SessionError> {
    let mut nominee = Nominee::new(Instant::now(), NOMINATION_TIMEOUT);
    for (id, kind) in paths.kinds.iter().enumerate() {
        nominee.handle_started(id, *kind);
    }
    // Established paths, until the nomination says which one to keep.
    let mut held: HashMap<PathId, Established> = HashMap::new();
    let mut waiting: JoinSet<(PathId, Option<Established>)> = JoinSet::new();
    let mut mailbox_open = true;
    loop {
        while let Some(action) = nominee.poll_action() {
            match action {
                NomineeAction::Report { kind, why } => mailbox.path_failed(kind, &why).await,
                NomineeAction::Await(id) => {
                    let Some(path) = held.remove(&id) else {
                        continue;
                    };
                    let deadline = nominee.poll_timeout().unwrap_or_else(Instant::now);
                    waiting.spawn(read_nomination(id, path, deadline));
                }
                NomineeAction::Use(id) => {
                    let Some(path) = held.remove(&id) else {
                        continue;
                    };
                    info!(path = %path.kind, remote = %path.remote, "the sender chose this path");
                    // An earlier attempt at the winning kind of path (TCP to
                    // the hello's addresses, before late ones won) did not
                    // lose the race.
                    let won = paths.kinds.get(id).copied();
                    let mut lost = nominee.failures().to_vec();
                    lost.retain(|(kind, _)| Some(*kind) != won);
                    let behind = !paths.set.is_empty() || !waiting.is_empty() || !held.is_empty();
                    let upgrade = (path.kind == PathKind::Relay
                        && mailbox.channel.peer_understands(FEATURE_MOVE)
                        && behind)
                        .then(|| {
                            info!("direct attempts go on behind the relay");
                            Upgrade::controlled(
                                std::mem::take(&mut paths.set),
                                std::mem::take(&mut waiting),
                                std::mem::take(&mut held),
                            )
                        });
                    return Ok(Won {
                        path,
                        lost,
                        upgrade,
                    });
                }
                NomineeAction::GiveUp => {
                    return Err(SessionError::NoPath {
                        failures: nominee.failures().to_vec(),
                        relay_forced: false,
                    });
                }
            }
        }
        if paths.set.is_empty() && waiting.is_empty() {
            // Nothing left that could be nominated (also when a path task
            // died without saying which path it was).
            return Err(SessionError::NoPath {
                failures: nominee.failures().to_vec(),
                relay_forced: false,
            });
        }
        let wake = nominee.poll_timeout().unwrap_or_else(Instant::now);
        tokio::select! {
            joined = paths.set.join_next(), if !paths.set.is_empty() => match joined {
                Some(Ok((id, Ok(path)))) => {
                    debug!(path = %path.kind, remote = %path.remote, "path established; waiting for the nomination");
                    held.insert(id, path);
                    nominee.handle_established(id);
                }
                Some(Ok((id, Err(error)))) => {
                    debug!(path = ?paths.kinds.get(id), %error, "path failed");
                    nominee.handle_failed(Instant::now(), id, error.to_string());
                }
                Some(Err(error)) => debug!(%error, "path task failed"),
                None => {}
            },
            nominated = waiting.join_next(), if !waiting.is_empty() => match nominated {
                Some(Ok((id, Some(path)))) => {
                    held.insert(id, path);
                    nominee.handle_nominated(id);
                }
                Some(Ok((id, None))) => {
                    debug!(path = ?paths.kinds.get(id), "path not chosen");
                    nominee.handle_not_chosen(Instant::now(), id);
                }
                Some(Err(error)) => debug!(%error, "nomination task failed"),
                None => {}
            },
            () = tokio::time::sleep_until(wake.into()) => nominee.handle_timeout(Instant::now()),
            ours = trickle.upnp.late_candidates(), if trickle.upnp.is_pending() => {
                if !ours.is_empty() {
                    mailbox.candidates(ours).await;
                }
            }
            said = mailbox.next(), if mailbox_open => match said {
                Ok(Said::Candidates(late)) => {
                    for (id, kind) in trickle.take_theirs(late, &mut paths) {
                        info!(path = %kind, "trying candidates the sender sent late");
                        nominee.handle_started(id, kind);
                    }
                }
                Ok(Said::PathFailed { .. } | Said::Nothing) => {}
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
                    nominee.handle_peer_left(Instant::now());
                }
                Err(error) => return Err(error),
            },
        }
    }
}
