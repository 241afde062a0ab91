//! The race between paths, and the stream type that comes out of it.
//!
//! Both peers try every path at once (direct TCP, TCP simultaneous open,
//! UDP hole punching then QUIC). Each path authenticates on its own (pinned
//! TLS 1.3 or QUIC, then its `ferry-ok` confirmation), so each side may end
//! up holding several working streams. The controlling side (the sender)
//! picks one and says so on it:
//!
//! ```text
//! controlling (sender)                            controlled (receiver)
//!   path A established ─┐                          path A established ─┐
//!   path B established ─┤ Race picks the best      path B established ─┤ read 8 bytes on each
//!                       │ (short grace for better  │
//!                       │  paths still pending)    │
//!   "ferry-go" on A ────┼────────────────────────▶ A says "ferry-go": A wins
//!   drop B ─────────────┴────────────────────────▶ B reads EOF: dropped
//! ```
//!
//! [`Race`] is the sans-IO decision logic of the controlling side,
//! [`Nominee`] that of the controlled side; the drivers live in
//! `ferry-session`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::quic::QuicStream;

/// What the controlling side writes on the path it picked.
pub const NOMINATION: &[u8; 8] = b"ferry-go";

/// How a path reaches the peer. Lower [`rank`](PathKind::rank) is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// TCP to a private (LAN) address of the peer.
    Lan,
    /// TCP to a public or UPnP-mapped address of the peer.
    Tcp,
    /// UDP hole punching, then QUIC on the punched socket.
    Quic,
    /// TCP simultaneous open through both NATs.
    SimultaneousOpen,
    /// Through the relay.
    Relay,
}

impl PathKind {
    /// Preference: LAN, then direct TCP, then QUIC, then simultaneous open,
    /// then the relay.
    pub fn rank(self) -> u8 {
        match self {
            PathKind::Lan => 0,
            PathKind::Tcp => 1,
            PathKind::Quic => 2,
            PathKind::SimultaneousOpen => 3,
            PathKind::Relay => 4,
        }
    }

    /// Short name for JSON and `--force-path`.
    pub fn code(self) -> &'static str {
        match self {
            PathKind::Lan => "lan",
            PathKind::Tcp => "tcp",
            PathKind::Quic => "quic",
            PathKind::SimultaneousOpen => "tcp-simultaneous-open",
            PathKind::Relay => "relay",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "direct TCP on the LAN",
            PathKind::Tcp => "direct TCP",
            PathKind::Quic => "direct QUIC over UDP",
            PathKind::SimultaneousOpen => "direct TCP (simultaneous open)",
            PathKind::Relay => "relay",
        })
    }
}

/// Why a path did not make it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathFailure {
    /// Our attempt failed: our own error, as text.
    Failed(String),
    /// The receiver gave up on this path, in its own words (untrusted:
    /// [`Display`](fmt::Display) escapes them).
    AtPeer(String),
    /// The race ended before the path got anywhere.
    TimedOut,
    /// The peer left the race; why.
    Abandoned(String),
}

impl fmt::Display for PathFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ferry_proto::escape::line;
        match self {
            PathFailure::Failed(why) => f.write_str(&line(why)),
            PathFailure::AtPeer(why) => write!(f, "the receiver: {}", line(why)),
            PathFailure::TimedOut => f.write_str("timed out"),
            PathFailure::Abandoned(why) => write!(f, "abandoned: {}", line(why)),
        }
    }
}

/// Identifies one path attempt within a race.
pub type PathId = usize;

/// Tuning of the race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceConfig {
    /// How long an established path waits for a better one still pending.
    pub grace: Duration,
    /// When to give up if nothing works.
    pub deadline: Duration,
}

impl Default for RaceConfig {
    fn default() -> Self {
        RaceConfig {
            // Long enough for hole punching and a QUIC handshake over a
            // continent after TCP made it; short enough not to be noticed.
            grace: Duration::from_millis(500),
            deadline: Duration::from_secs(30),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Use this path: write [`NOMINATION`] on it.
    Nominate(PathId),
    /// Drop this established path.
    Close(PathId),
    /// Nothing worked: give up.
    GiveUp,
}

/// The controlling side's decision: which established path to use.
#[derive(Debug)]
pub struct Race {
    config: RaceConfig,
    deadline: Instant,
    pending: HashMap<PathId, PathKind>,
    established: Vec<(PathId, PathKind)>,
    decide_at: Option<Instant>,
    winner: Option<PathId>,
    gave_up: bool,
    failures: Vec<(PathKind, PathFailure)>,
    /// The path of each entry of `failures`.
    failed: Vec<PathId>,
    actions: Vec<Action>,
}

impl Race {
    /// A race starting at `now`.
    pub fn new(now: Instant, config: RaceConfig) -> Self {
        Race {
            config,
            deadline: now + config.deadline,
            pending: HashMap::new(),
            established: Vec::new(),
            decide_at: None,
            winner: None,
            gave_up: false,
            failures: Vec::new(),
            failed: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// A path attempt started (also while the race runs: an attempt for
    /// candidates the peer sent late).
    pub fn handle_started(&mut self, id: PathId, kind: PathKind) {
        self.pending.insert(id, kind);
    }

    /// A path counted as failed is pending again, its failure forgotten:
    /// the receiver gave up on our listener, and we have just sent it new
    /// addresses for it while our attempt still runs. Returns whether the
    /// path was revived (not when it never failed, or the race is decided).
    pub fn handle_revived(&mut self, id: PathId) -> bool {
        if self.winner.is_some() || self.gave_up {
            return false;
        }
        let Some(index) = self.failed.iter().position(|&f| f == id) else {
            return false;
        };
        self.failed.remove(index);
        let (kind, _) = self.failures.remove(index);
        self.pending.insert(id, kind);
        true
    }

    /// A path is authenticated and confirmed, with its final kind (a TCP
    /// path may turn out to be [`PathKind::Lan`]).
    pub fn handle_established(&mut self, now: Instant, id: PathId, kind: PathKind) {
        self.pending.remove(&id);
        if self.winner.is_some() || self.gave_up {
            self.actions.push(Action::Close(id));
            return;
        }
        self.established.push((id, kind));
        self.decide(now);
    }

    /// A path attempt failed.
    pub fn handle_failed(&mut self, now: Instant, id: PathId, reason: PathFailure) {
        if let Some(kind) = self.pending.remove(&id) {
            self.failures.push((kind, reason));
            self.failed.push(id);
        }
        self.decide(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.decide(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.winner.is_some() || self.gave_up {
            return None;
        }
        Some(
            self.decide_at
                .map_or(self.deadline, |at| at.min(self.deadline)),
        )
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            None
        } else {
            Some(self.actions.remove(0))
        }
    }

    /// Why each failed path failed.
    pub fn failures(&self) -> &[(PathKind, PathFailure)] {
        &self.failures
    }

    /// The nominated path, once decided.
    pub fn winner(&self) -> Option<PathId> {
        self.winner
    }

    fn decide(&mut self, now: Instant) {
        if self.winner.is_some() || self.gave_up {
            return;
        }
        let best = self
            .established
            .iter()
            .copied()
            .min_by_key(|(_, kind)| kind.rank());
        match best {
            Some((id, kind)) => {
                let better_pending = self.pending.values().any(|p| p.rank() < kind.rank());
                let at = *self.decide_at.get_or_insert(now + self.config.grace);
                if !better_pending || now >= at || now >= self.deadline {
                    self.winner = Some(id);
                    self.actions.push(Action::Nominate(id));
                    for (other, _) in std::mem::take(&mut self.established) {
                        if other != id {
                            self.actions.push(Action::Close(other));
                        }
                    }
                }
            }
            None if self.pending.is_empty() || now >= self.deadline => {
                for (id, kind) in self.pending.drain() {
                    self.failures.push((kind, PathFailure::TimedOut));
                    self.failed.push(id);
                }
                self.gave_up = true;
                self.actions.push(Action::GiveUp);
            }
            None => {}
        }
    }
}

/// How long the controlled side still waits for a nomination once the
/// controlling side has left the rendezvous: it may have nominated a path
/// and released the nameplate.
pub const AFTER_PEER_LEFT: Duration = Duration::from_secs(3);

/// What the controlled side's driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NomineeAction {
    /// Tell the controlling side that this path failed here (only direct
    /// TCP, once no TCP attempt of ours is left, pending or up: the
    /// controlling side's accept waits for our connects).
    Report {
        /// The path.
        kind: PathKind,
        /// Why, in our words.
        why: String,
    },
    /// Wait on this established path for the [`NOMINATION`].
    Await(PathId),
    /// The controlling side nominated this path: use it.
    Use(PathId),
    /// Nothing was nominated: give up.
    GiveUp,
}

/// The controlled side's part of the race, sans-IO: it holds every
/// established path until the controlling side names one with
/// [`NOMINATION`], and gives up when all paths failed or the deadline
/// passed.
///
/// ```text
/// handle_established(id) -> Await(id)        handle_nominated(id) -> Use(id)
/// handle_failed(id, why) -> Report (the last TCP attempt)
/// all failed / deadline -> GiveUp
/// handle_peer_left(now)  -> deadline = min(deadline, now + AFTER_PEER_LEFT)
/// ```
#[derive(Debug)]
pub struct Nominee {
    deadline: Instant,
    pending: HashMap<PathId, PathKind>,
    awaiting: HashMap<PathId, PathKind>,
    failures: Vec<(PathKind, PathFailure)>,
    actions: Vec<NomineeAction>,
    done: bool,
}

impl Nominee {
    /// A race whose nomination must come within `wait` of `now`.
    pub fn new(now: Instant, wait: Duration) -> Self {
        Nominee {
            deadline: now + wait,
            pending: HashMap::new(),
            awaiting: HashMap::new(),
            failures: Vec::new(),
            actions: Vec::new(),
            done: false,
        }
    }

    /// A path attempt started (also while the race runs: an attempt for
    /// candidates the peer sent late).
    pub fn handle_started(&mut self, id: PathId, kind: PathKind) {
        self.pending.insert(id, kind);
    }

    /// A path is authenticated and confirmed: wait on it for the
    /// nomination.
    pub fn handle_established(&mut self, id: PathId) {
        if let Some(kind) = self.pending.remove(&id) {
            if !self.done {
                self.awaiting.insert(id, kind);
                self.actions.push(NomineeAction::Await(id));
            }
        }
    }

    /// A path attempt failed.
    pub fn handle_failed(&mut self, now: Instant, id: PathId, why: String) {
        if let Some(kind) = self.pending.remove(&id) {
            // A TCP path up here (the controlling side connected to our
            // listener) is no failure to report either.
            let tcp_left = self
                .pending
                .values()
                .chain(self.awaiting.values())
                .any(|k| *k == PathKind::Tcp);
            if kind == PathKind::Tcp && !tcp_left && !self.done {
                self.actions.push(NomineeAction::Report {
                    kind,
                    why: why.clone(),
                });
            }
            self.failures.push((kind, PathFailure::Failed(why)));
        }
        self.check(now);
    }

    /// The controlling side wrote [`NOMINATION`] on this path.
    pub fn handle_nominated(&mut self, id: PathId) {
        if self.awaiting.remove(&id).is_some() && !self.done {
            self.done = true;
            self.actions.push(NomineeAction::Use(id));
        }
    }

    /// This path ended without the nomination: another was chosen.
    pub fn handle_not_chosen(&mut self, now: Instant, id: PathId) {
        self.awaiting.remove(&id);
        self.check(now);
    }

    /// The controlling side left the rendezvous.
    pub fn handle_peer_left(&mut self, now: Instant) {
        self.deadline = self.deadline.min(now + AFTER_PEER_LEFT);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline {
            self.give_up();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<NomineeAction> {
        if self.actions.is_empty() {
            None
        } else {
            Some(self.actions.remove(0))
        }
    }

    /// Why each failed path failed.
    pub fn failures(&self) -> &[(PathKind, PathFailure)] {
        &self.failures
    }

    fn check(&mut self, now: Instant) {
        if self.pending.is_empty() && self.awaiting.is_empty() || now >= self.deadline {
            self.give_up();
        }
    }

    fn give_up(&mut self) {
        if !self.done {
            self.done = true;
            self.actions.push(NomineeAction::GiveUp);
        }
    }
}

/// A secure stream to the peer over whichever path won.
#[derive(Debug)]
pub enum PeerStream {
    /// TLS 1.3 over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// TLS 1.3 to the peer through the relay, over the connection to the
    /// relay (plain, or itself TLS on a TLS server port).
    Relayed(Box<tokio_rustls::TlsStream<ferry_relay::Carrier>>),
    /// A QUIC stream.
    Quic(Box<QuicStream>),
}

impl PeerStream {
    /// Ends the stream gracefully: finishes our half, drains the peer's
    /// half until it ends (bounded), and lets QUIC acknowledge the last
    /// bytes, so nothing in flight is lost when the process exits next.
    pub async fn close(mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shutdown()).await;
        let drain = async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        if let PeerStream::Quic(quic) = self {
            quic.close().await;
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Relayed(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Relayed(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Relayed(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Relayed(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nominee_uses_the_nominated_path_and_reports_tcp_failures() {
        let t0 = Instant::now();
        let mut n = Nominee::new(t0, Duration::from_secs(25));
        n.handle_started(0, PathKind::Tcp);
        n.handle_started(1, PathKind::Quic);
        n.handle_started(2, PathKind::Relay);
        n.handle_failed(t0, 0, "refused".into());
        assert_eq!(
            n.poll_action(),
            Some(NomineeAction::Report {
                kind: PathKind::Tcp,
                why: "refused".into()
            })
        );
        n.handle_established(1);
        n.handle_established(2);
        assert_eq!(n.poll_action(), Some(NomineeAction::Await(1)));
        assert_eq!(n.poll_action(), Some(NomineeAction::Await(2)));
        n.handle_not_chosen(t0, 1);
        assert_eq!(n.poll_action(), None);
        n.handle_nominated(2);
        assert_eq!(n.poll_action(), Some(NomineeAction::Use(2)));
        assert_eq!(n.poll_timeout(), None);
        // A QUIC failure is not reported: only TCP.
        assert_eq!(
            n.failures(),
            [(PathKind::Tcp, PathFailure::Failed("refused".into()))]
        );
    }

    #[test]
    fn a_tcp_path_accepted_here_is_no_tcp_failure_to_report() {
        // Our listener took the controlling side's connection; our own
        // connect to its listener then fails.
        let t0 = Instant::now();
        let mut n = Nominee::new(t0, Duration::from_secs(25));
        n.handle_started(0, PathKind::Tcp);
        n.handle_started(1, PathKind::Tcp);
        n.handle_established(0);
        assert_eq!(n.poll_action(), Some(NomineeAction::Await(0)));
        n.handle_failed(t0, 1, "refused".into());
        assert_eq!(n.poll_action(), None, "no report while a TCP path is up");
        n.handle_nominated(0);
        assert_eq!(n.poll_action(), Some(NomineeAction::Use(0)));
    }

    #[test]
    fn the_nominee_gives_up_when_all_fail_or_time_runs_out() {
        let t0 = Instant::now();
        let mut n = Nominee::new(t0, Duration::from_secs(25));
        n.handle_started(0, PathKind::Quic);
        n.handle_failed(t0, 0, "no answer".into());
        assert_eq!(n.poll_action(), Some(NomineeAction::GiveUp));
        // Established but never nominated: the deadline ends it.
        let mut n = Nominee::new(t0, Duration::from_secs(25));
        n.handle_started(0, PathKind::Relay);
        n.handle_established(0);
        assert_eq!(n.poll_action(), Some(NomineeAction::Await(0)));
        n.handle_timeout(t0 + Duration::from_secs(24));
        assert_eq!(n.poll_action(), None);
        // The sender left: three more seconds, not the full wait.
        n.handle_peer_left(t0 + Duration::from_secs(1));
        assert_eq!(
            n.poll_timeout(),
            Some(t0 + Duration::from_secs(1) + AFTER_PEER_LEFT)
        );
        n.handle_timeout(t0 + Duration::from_secs(4));
        assert_eq!(n.poll_action(), Some(NomineeAction::GiveUp));
        // A late nomination changes nothing.
        n.handle_nominated(0);
        assert_eq!(n.poll_action(), None);
    }

    #[test]
    fn the_nominee_reports_tcp_once_its_last_tcp_attempt_failed() {
        let t0 = Instant::now();
        let mut n = Nominee::new(t0, Duration::from_secs(25));
        n.handle_started(0, PathKind::Tcp);
        n.handle_started(1, PathKind::Quic);
        // A second TCP attempt, for addresses the sender sent late.
        n.handle_started(2, PathKind::Tcp);
        n.handle_failed(t0, 0, "unreachable".into());
        assert_eq!(n.poll_action(), None, "attempt 2 still runs");
        n.handle_failed(t0, 2, "refused".into());
        assert_eq!(
            n.poll_action(),
            Some(NomineeAction::Report {
                kind: PathKind::Tcp,
                why: "refused".into()
            })
        );
        assert_eq!(n.failures().len(), 2);
    }

    #[test]
    fn a_path_the_receiver_gave_up_on_can_be_revived() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_failed(t0 + ms(10), 0, PathFailure::AtPeer("unreachable".into()));
        assert_eq!(race.failures().len(), 1);
        // We sent the receiver a new TCP address: the accept counts again.
        assert!(race.handle_revived(0));
        assert!(!race.handle_revived(0), "pending already");
        assert!(race.failures().is_empty());
        race.handle_established(t0 + ms(100), 1, PathKind::Quic);
        assert_eq!(drain(&mut race), vec![], "a grace for the TCP path");
        race.handle_established(t0 + ms(300), 0, PathKind::Tcp);
        assert_eq!(
            drain(&mut race),
            vec![Action::Nominate(0), Action::Close(1)]
        );
        assert!(!race.handle_revived(1), "decided");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(race: &mut Race) -> Vec<Action> {
        std::iter::from_fn(|| race.poll_action()).collect()
    }

    #[test]
    fn first_path_wins_when_nothing_better_is_pending() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Quic);
        race.handle_started(1, PathKind::SimultaneousOpen);
        race.handle_established(t0 + ms(200), 0, PathKind::Quic);
        assert_eq!(drain(&mut race), vec![Action::Nominate(0)]);
        // A later path is closed at once.
        race.handle_established(t0 + ms(300), 1, PathKind::SimultaneousOpen);
        assert_eq!(drain(&mut race), vec![Action::Close(1)]);
        assert_eq!(race.winner(), Some(0));
        assert_eq!(race.poll_timeout(), None);
    }

    #[test]
    fn a_better_pending_path_gets_a_grace_period() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_established(t0 + ms(100), 1, PathKind::Quic);
        assert_eq!(drain(&mut race), vec![]);
        assert_eq!(race.poll_timeout(), Some(t0 + ms(600)));
        // The TCP path turns out to be LAN and arrives within the grace.
        race.handle_established(t0 + ms(430), 0, PathKind::Lan);
        assert_eq!(
            drain(&mut race),
            vec![Action::Nominate(0), Action::Close(1)]
        );
    }

    #[test]
    fn grace_expires_and_the_established_path_wins() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_established(t0 + ms(100), 1, PathKind::Quic);
        race.handle_timeout(t0 + ms(599));
        assert_eq!(drain(&mut race), vec![]);
        race.handle_timeout(t0 + ms(600));
        assert_eq!(drain(&mut race), vec![Action::Nominate(1)]);
        // The slow TCP path is closed when it arrives.
        race.handle_established(t0 + ms(900), 0, PathKind::Tcp);
        assert_eq!(drain(&mut race), vec![Action::Close(0)]);
    }

    #[test]
    fn a_failed_better_path_ends_the_grace_early() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_established(t0 + ms(100), 1, PathKind::Quic);
        race.handle_failed(t0 + ms(110), 0, PathFailure::Failed("refused".into()));
        assert_eq!(drain(&mut race), vec![Action::Nominate(1)]);
        assert_eq!(
            race.failures(),
            &[(PathKind::Tcp, PathFailure::Failed("refused".into()))]
        );
    }

    #[test]
    fn all_failing_gives_up_with_every_reason() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_failed(t0 + ms(10), 0, PathFailure::Failed("refused".into()));
        assert_eq!(drain(&mut race), vec![]);
        race.handle_failed(t0 + ms(20), 1, PathFailure::Failed("no answer".into()));
        assert_eq!(drain(&mut race), vec![Action::GiveUp]);
        assert_eq!(race.failures().len(), 2);
    }

    #[test]
    fn deadline_gives_up_on_pending_paths() {
        let t0 = Instant::now();
        let config = RaceConfig {
            grace: ms(60),
            deadline: Duration::from_secs(5),
        };
        let mut race = Race::new(t0, config);
        race.handle_started(0, PathKind::SimultaneousOpen);
        assert_eq!(race.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        race.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut race), vec![Action::GiveUp]);
        assert_eq!(
            race.failures(),
            &[(PathKind::SimultaneousOpen, PathFailure::TimedOut)]
        );
    }

    #[test]
    fn best_of_several_established_wins() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::SimultaneousOpen);
        race.handle_started(1, PathKind::Quic);
        race.handle_started(2, PathKind::Tcp);
        race.handle_established(t0 + ms(10), 0, PathKind::SimultaneousOpen);
        race.handle_established(t0 + ms(20), 1, PathKind::Quic);
        assert_eq!(drain(&mut race), vec![]);
        race.handle_timeout(t0 + ms(509));
        assert_eq!(drain(&mut race), vec![]);
        race.handle_timeout(t0 + ms(510));
        assert_eq!(
            drain(&mut race),
            vec![Action::Nominate(1), Action::Close(0)]
        );
    }
}
