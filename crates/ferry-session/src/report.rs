//! Telling the rendezvous server which path the transfer took, for its
//! metrics: the path outcome rides on the `release` of the signalling
//! connection ([`ferry_proto::signal::PathOutcome`]).
//!
//! ```text
//! the first race of a pairing (not a rejoin) ...
//!   won by a direct path, or by the relay with no direct attempt left
//!       -> release {path} at once, as the release always went
//!   found no path
//!       -> release {path: no-path}
//!   won by the relay while direct attempts go on (an Upgrade)
//!       -> the signalling connection moves to a task of its own (its
//!          background task answers the server's pings as ever), which
//!          releases it with
//!            moved-to-direct  once Upgrade::take hands the transfer a
//!                             direct path;
//!            relay            once PathReport::finish says the transfer
//!                             is over, or the Upgrade and the PathReport
//!                             are both gone, or REPORT_WINDOW passed
//! ```
//!
//! The transfer never waits for a report: only [`PathReport::finish`]
//! does, at the end and for at most [`FINISH_WAIT`]; a server that fails
//! meanwhile costs the report, never the transfer. Both peers report (the
//! server counts the first report of a pairing); a rejoin reports nothing,
//! since its pairing was counted when the first path was found.

use std::time::Duration;

use ferry_connect::PathKind;
use ferry_proto::signal::PathOutcome;
use ferry_rendezvous::SignalClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::*;

/// How long a relayed transfer's signalling connection stays open for
/// its report: the direct attempts' window and the receiver's margin on
/// it ([`UPGRADE_WINDOW`] and 5 s). A transfer that moves later than
/// this is reported as `relay`.
pub const REPORT_WINDOW: Duration = Duration::from_secs(UPGRADE_WINDOW.as_secs() + 5);

/// How long [`PathReport::finish`] waits for the release to go out.
pub const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The outcome a race won by `kind` reports.
pub fn outcome_of(kind: PathKind) -> PathOutcome {
    match kind {
        PathKind::Lan => PathOutcome::Lan,
        PathKind::Tcp => PathOutcome::DirectTcp,
        PathKind::SimultaneousOpen => PathOutcome::SimultaneousOpen,
        PathKind::Quic => PathOutcome::Quic,
        PathKind::Relay => PathOutcome::Relay,
    }
}

/// The report of a transfer that began on the relay while direct
/// attempts went on: the signalling connection, held until it is known
/// whether the transfer moved to a direct path (see the module docs).
#[derive(Debug)]
pub struct PathReport {
    outcome: mpsc::Sender<PathOutcome>,
    task: JoinHandle<()>,
}

/// Held by the [`Upgrade`]: says the transfer moved.
#[derive(Debug, Clone)]
pub(crate) struct MoveNotice(mpsc::Sender<PathOutcome>);

impl MoveNotice {
    /// The transfer moved to a direct path.
    pub(crate) fn moved(&self) {
        let _ = self.0.try_send(PathOutcome::MovedToDirect);
    }
}

impl PathReport {
    /// Takes over `signal`, to release it once the outcome is known.
    pub(crate) fn hold(signal: SignalClient) -> (PathReport, MoveNotice) {
        // Room for both words: the first one that comes is reported.
        let (outcome, outcomes) = mpsc::channel(2);
        let task = tokio::spawn(report_when_known(signal, outcomes, REPORT_WINDOW));
        let notice = MoveNotice(outcome.clone());
        (PathReport { outcome, task }, notice)
    }

    /// The transfer is over: unless it moved, the relay carried it.
    /// Waits at most [`FINISH_WAIT`] for the report to go out (the
    /// program may exit right after).
    pub async fn finish(self) {
        let PathReport { outcome, task } = self;
        let _ = outcome.try_send(PathOutcome::Relay);
        drop(outcome);
        if tokio::time::timeout(FINISH_WAIT, task).await.is_err() {
            debug!("the path report did not go out in time");
        }
    }
}

/// Releases `signal` with the first outcome that comes, or `relay` when
/// every sender is gone or `window` passed.
async fn report_when_known(
    signal: SignalClient,
    mut outcomes: mpsc::Receiver<PathOutcome>,
    window: Duration,
) {
    let outcome = match tokio::time::timeout(window, outcomes.recv()).await {
        Ok(Some(outcome)) => outcome,
        // The transfer and its upgrade are gone, or the window passed:
        // it did not move.
        Ok(None) | Err(_) => PathOutcome::Relay,
    };
    debug!(path = outcome.code(), "reporting the path to the server");
    if let Err(error) = signal.release_reporting(None, Some(outcome)).await {
        debug!(%error, "could not report the path to the rendezvous server");
    }
}

/// Releases the signalling connection after a race, reporting its outcome
/// when `reporting` (the pairing's first race). When the relay won while
/// direct attempts go on, the connection is held by a [`PathReport`]
/// instead, returned for the link, and the upgrade says when it moves.
pub(crate) async fn release_after_race(
    signal: SignalClient,
    result: &mut Result<Won, SessionError>,
    reporting: bool,
) -> Option<PathReport> {
    let outcome = match result {
        _ if !reporting => None,
        Ok(Won {
            upgrade: Some(upgrade),
            ..
        }) => {
            let (report, notice) = PathReport::hold(signal);
            upgrade.report_moves(notice);
            return Some(report);
        }
        Ok(won) => Some(outcome_of(won.path.kind)),
        Err(SessionError::NoPath { .. }) => Some(PathOutcome::NoPath),
        Err(_) => None,
    };
    let _ = signal.release_reporting(None, outcome).await;
    None
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ferry_metrics::Metrics;
    use tokio::net::TcpListener;

    use super::*;

    /// A real rendezvous server on loopback that counts into `metrics`.
    async fn server(metrics: &Metrics) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = ferry_rendezvous::ServerConfig {
            metrics: metrics.clone(),
            ..Default::default()
        };
        tokio::spawn(ferry_rendezvous::serve(
            listener,
            config,
            std::future::pending(),
        ));
        addr
    }

    /// Two signalling clients on one nameplate that both asked for the
    /// relay token, as paired peers do.
    async fn paired(server: &str) -> (SignalClient, SignalClient) {
        let (mut sender, _) = SignalClient::connect(server).await.unwrap();
        let (mut receiver, _) = SignalClient::connect(server).await.unwrap();
        let nameplate = sender.allocate().await.unwrap();
        receiver.claim(nameplate).await.unwrap();
        let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
        a.unwrap();
        b.unwrap();
        (sender, receiver)
    }

    /// The count of `path` in `metrics`.
    fn count(metrics: &Metrics, path: &str) -> f64 {
        let series = format!("ferry_path_outcomes_total{{path=\"{path}\"}}");
        let text = metrics.encode();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    /// Waits (up to 5 s) until `path` counts `want`.
    async fn counted(metrics: &Metrics, path: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while count(metrics, path) != want {
            assert!(
                Instant::now() < deadline,
                "{path} counts {}, not {want}:\n{}",
                count(metrics, path),
                metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_transfer_that_moves_reports_moved_to_direct_once() {
        let metrics = Metrics::new();
        let server = server(&metrics).await;
        let (sender, receiver) = paired(&server).await;
        let (sender_report, sender_moves) = PathReport::hold(sender);
        let (receiver_report, receiver_moves) = PathReport::hold(receiver);
        sender_moves.moved();
        counted(&metrics, "moved_to_direct", 1.0).await;
        // The receiver takes the path too, and both transfers end: the
        // pairing was counted already.
        receiver_moves.moved();
        receiver_report.finish().await;
        sender_report.finish().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&metrics, "moved_to_direct"), 1.0);
        assert_eq!(count(&metrics, "relay"), 0.0);
    }

    #[tokio::test]
    async fn a_transfer_that_ends_on_the_relay_reports_relay_at_its_end() {
        let metrics = Metrics::new();
        let server = server(&metrics).await;
        let (sender, receiver) = paired(&server).await;
        let (report, moves) = PathReport::hold(sender);
        // Held: nothing reported while the transfer may still move.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&metrics, "relay"), 0.0);
        let finishing = Instant::now();
        report.finish().await;
        assert!(finishing.elapsed() < FINISH_WAIT, "finish waited");
        counted(&metrics, "relay", 1.0).await;
        // A move the upgrade finds afterwards changes nothing.
        moves.moved();
        receiver.release(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(&metrics, "relay"), 1.0);
        assert_eq!(count(&metrics, "moved_to_direct"), 0.0);
    }

    #[tokio::test]
    async fn a_report_held_past_its_window_says_relay() {
        let metrics = Metrics::new();
        let server = server(&metrics).await;
        let (sender, _receiver) = paired(&server).await;
        let (outcome, outcomes) = mpsc::channel(2);
        let held = tokio::spawn(report_when_known(
            sender,
            outcomes,
            Duration::from_millis(300),
        ));
        counted(&metrics, "relay", 1.0).await;
        held.await.unwrap();
        // The move came too late to be reported.
        let _ = outcome.try_send(PathOutcome::MovedToDirect);
        assert_eq!(count(&metrics, "moved_to_direct"), 0.0);
    }

    #[test]
    fn every_path_kind_has_its_outcome() {
        let kinds = [
            (PathKind::Lan, "lan"),
            (PathKind::Tcp, "direct-tcp"),
            (PathKind::SimultaneousOpen, "simultaneous-open"),
            (PathKind::Quic, "quic"),
            (PathKind::Relay, "relay"),
        ];
        for (kind, code) in kinds {
            assert_eq!(outcome_of(kind).code(), code, "{kind:?}");
        }
    }
}
