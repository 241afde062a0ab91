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
//! [`Race`] is the sans-IO decision logic of the controlling side; the
//! drivers live in `ferry-session`.

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
    failures: Vec<(PathKind, String)>,
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
            actions: Vec::new(),
        }
    }

    /// A path attempt started.
    pub fn handle_started(&mut self, id: PathId, kind: PathKind) {
        self.pending.insert(id, kind);
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
    pub fn handle_failed(&mut self, now: Instant, id: PathId, reason: String) {
        if let Some(kind) = self.pending.remove(&id) {
            self.failures.push((kind, reason));
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
    pub fn failures(&self) -> &[(PathKind, String)] {
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
                for kind in self.pending.drain().map(|(_, kind)| kind) {
                    self.failures.push((kind, "timed out".into()));
                }
                self.gave_up = true;
                self.actions.push(Action::GiveUp);
            }
            None => {}
        }
    }
}

/// A secure stream to the peer over whichever path won.
#[derive(Debug)]
pub enum PeerStream {
    /// TLS 1.3 over TCP.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
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
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        race.handle_failed(t0 + ms(110), 0, "refused".into());
        assert_eq!(drain(&mut race), vec![Action::Nominate(1)]);
        assert_eq!(race.failures(), &[(PathKind::Tcp, "refused".to_string())]);
    }

    #[test]
    fn all_failing_gives_up_with_every_reason() {
        let t0 = Instant::now();
        let mut race = Race::new(t0, RaceConfig::default());
        race.handle_started(0, PathKind::Tcp);
        race.handle_started(1, PathKind::Quic);
        race.handle_failed(t0 + ms(10), 0, "refused".into());
        assert_eq!(drain(&mut race), vec![]);
        race.handle_failed(t0 + ms(20), 1, "no answer".into());
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
            &[(PathKind::SimultaneousOpen, "timed out".to_string())]
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
