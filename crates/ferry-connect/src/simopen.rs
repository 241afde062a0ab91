//! TCP simultaneous open from the signalling port, for peers behind NATs
//! that keep the source port but filter unsolicited inbound TCP.
//!
//! Each side opened its rendezvous connection with [`connect_from`], so the
//! port is shareable, and the server told each side the other's public
//! (server-observed) TCP address. At a moment agreed through the server both
//! sides connect from that same local port to the other's public address:
//!
//! ```text
//! side A (local a, NAT maps to A)            side B (local b, NAT maps to B)
//! signalling a ─▶ server (stays open)        signalling b ─▶ server (stays open)
//!   ◀──────── public addresses and start time, via the server ────────▶
//! at start_at: bind a (SO_REUSEADDR+SO_REUSEPORT), connect(B)
//!   ── SYN ──▶ NAT A: mapping a→A opened      NAT B drops it (not solicited yet)
//!                                 at start_at: bind b, connect(A)
//!   NAT A lets it in (A's SYN went to B) ◀── SYN ──
//!   SYN_SENT + SYN → SYN-ACK ──────────────────▶ SYN_SENT + SYN-ACK → established
//!   established ◀───────────────────────────── ACK / SYN-ACK
//! both connect() calls return the SAME TCP connection (a:A ↔ b:B)
//!   ◀════ TLS 1.3, certificates pinned: controlling side (sender) = TLS server ════▶
//!   ── "ferry-ok" (8 bytes, inside TLS, from the TLS server) ──────────▶
//! ```
//!
//! An attempt that fails (RST because the peer has not connected yet, or no
//! answer within [`ATTEMPT_TIMEOUT`]) is retried from a fresh socket bound to
//! the same port, at most every [`RETRY_INTERVAL`], until the deadline. The
//! timing is the sans-IO [`SimOpenSchedule`]; [`simultaneous_open`] is the
//! thin tokio driver around it. Only one attempt is in flight at a time:
//! two sockets connecting the same 4-tuple cannot coexist.
//!
//! TCP has no client or server after a simultaneous open, so the TLS roles
//! come from the ferry roles. The confirmation is the one [`crate::direct`]
//! uses (the private `confirm` module): in TLS 1.3 the client finishes before the server has checked the
//! client's certificate, so the client waits for the server's `ferry-ok`.
//! Once a TCP connection exists its 4-tuple is used up (a retry could only
//! collide with it or its TIME-WAIT), so a TLS failure ends the attempt.
//!
//! What this module does not do: learn the public addresses, agree on the
//! start time (both come through the rendezvous server), or listen: an
//! unsolicited SYN that arrives between two attempts is refused by the kernel
//! (or dropped by a filtering NAT), and the next attempt catches up.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tracing::debug;

use crate::confirm::{Secure, secure_tcp};
use crate::error::{ConnectError, FailureReason, classify_io};
use crate::tls::{Identity, tls_acceptor, tls_connector};

/// Earliest time between the starts of two attempts.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Longest one attempt waits for the TCP handshake before its socket is
/// replaced by a fresh one (the kernel resends the SYN once within it).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the TLS handshake and confirmation may take once TCP is
/// connected; this may run past the caller's deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// When to start connect attempts, and when to give up on one: a sans-IO
/// state machine, driven with explicit times.
///
/// Attempts start no earlier than `start_at`, at least `interval` apart,
/// one at a time, and none starts at or after `deadline`. A running attempt
/// is abandoned `attempt_timeout` after it started (or at the deadline).
/// The driver loop is: [`next_attempt`](Self::next_attempt) (start one if
/// due), wait for the attempt's outcome or [`poll_timeout`](Self::poll_timeout),
/// report a failure with [`attempt_ended`](Self::attempt_ended) or the time
/// with [`handle_timeout`](Self::handle_timeout), repeat; when `poll_timeout`
/// returns `None` there is nothing left to try.
#[derive(Debug, Clone)]
pub struct SimOpenSchedule {
    interval: Duration,
    attempt_timeout: Duration,
    deadline: std::time::Instant,
    next_start: std::time::Instant,
    in_flight: Option<std::time::Instant>,
    started: u32,
}

/// One connect attempt the schedule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt, then 2, 3...
    pub number: u32,
    /// When to abandon this attempt if it has not connected.
    pub give_up_at: std::time::Instant,
}

impl SimOpenSchedule {
    /// A schedule whose first attempt is due at `start_at`.
    pub fn new(
        start_at: std::time::Instant,
        interval: Duration,
        attempt_timeout: Duration,
        deadline: std::time::Instant,
    ) -> SimOpenSchedule {
        SimOpenSchedule {
            interval,
            attempt_timeout,
            deadline,
            next_start: start_at,
            in_flight: None,
            started: 0,
        }
    }

    /// When the caller must next call [`handle_timeout`](Self::handle_timeout)
    /// and [`next_attempt`](Self::next_attempt): the running attempt's
    /// give-up time, or when the next attempt is due. `None` when no attempt
    /// runs and none will start before the deadline: the schedule is over.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        match self.in_flight {
            Some(give_up_at) => Some(give_up_at),
            None if self.next_start < self.deadline => Some(self.next_start),
            None => None,
        }
    }

    /// Time has passed: if the running attempt reached its give-up time it
    /// is over, and `true` tells the caller to abandon (close) it.
    pub fn handle_timeout(&mut self, now: std::time::Instant) -> bool {
        self.close_at_deadline(now);
        match self.in_flight {
            Some(give_up_at) if now >= give_up_at => {
                self.in_flight = None;
                true
            }
            _ => false,
        }
    }

    /// The attempt to start now, if one is due: none while one runs, before
    /// its time, or at or after the deadline.
    pub fn next_attempt(&mut self, now: std::time::Instant) -> Option<Attempt> {
        self.close_at_deadline(now);
        if self.in_flight.is_some() || now < self.next_start || now >= self.deadline {
            return None;
        }
        self.started += 1;
        let give_up_at = (now + self.attempt_timeout).min(self.deadline);
        self.in_flight = Some(give_up_at);
        // Counted from the real start, so a late wake-up does not cause a
        // burst of catch-up attempts.
        self.next_start = now + self.interval;
        Some(Attempt {
            number: self.started,
            give_up_at,
        })
    }

    /// The running attempt ended before its give-up time (it failed, or it
    /// connected and the schedule is no longer needed).
    pub fn attempt_ended(&mut self) {
        self.in_flight = None;
    }

    /// How many attempts have been started.
    pub fn attempts(&self) -> u32 {
        self.started
    }

    /// Once the deadline has passed no attempt may start, even one that
    /// was due earlier but waited for its predecessor.
    fn close_at_deadline(&mut self, now: std::time::Instant) {
        if now >= self.deadline {
            self.next_start = self.next_start.max(self.deadline);
        }
    }
}

/// A TCP socket with `SO_REUSEADDR` and `SO_REUSEPORT`, non-blocking, bound
/// to `local` and not yet connected.
///
/// Every socket that shares the port must be made this way (Linux allows a
/// second `SO_REUSEPORT` bind only if the first socket set it too, for the
/// same user): the signalling connection ([`connect_from`]) and each
/// simultaneous-open attempt. Sockets bound to the same port may connect to
/// different remote addresses at once, since their 4-tuples differ.
pub fn bind_reusable(local: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(all(
        unix,
        not(any(
            target_os = "solaris",
            target_os = "illumos",
            target_os = "cygwin",
            target_os = "nuttx",
            target_os = "wasi"
        ))
    ))]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// Connects to `remote` from `local` (port 0 picks one) through a
/// [`bind_reusable`] socket, so that port can later be reused for
/// [`simultaneous_open`] while this connection stays open. Use it for the
/// rendezvous connection; its `local_addr()` is the port to reuse.
///
/// Fails with [`io::ErrorKind::TimedOut`] after `timeout`.
pub async fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = bind_reusable(local)?;
    match tokio::time::timeout(timeout, connect_socket(socket, remote)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting from {local} to {remote} timed out after {timeout:?}"),
        )),
    }
}

/// TCP simultaneous open from `local` (our signalling address) to `remote`
/// (the peer's public TCP address as the rendezvous server saw it), then
/// TLS 1.3 with both certificates pinned and the `ferry-ok` confirmation.
///
/// Attempts start at `start_at` (agreed with the peer through the server)
/// and are retried per [`SimOpenSchedule`] with [`RETRY_INTERVAL`] and
/// [`ATTEMPT_TIMEOUT`] until `start_at + deadline`. The `controlling` side
/// (the sender) is the TLS server, the other the TLS client. Returns the
/// stream and the peer's address.
///
/// Errors: [`ConnectError::InvalidFingerprint`] or [`ConnectError::Tls`] at
/// once; [`ConnectError::SimultaneousOpenBind`] at once if `local` cannot be
/// bound (its port held by a socket without `SO_REUSEPORT`);
/// [`ConnectError::SimultaneousOpenFailed`], listing every attempt, when
/// nothing connects by the deadline or the TLS handshake on the connection
/// fails (at most [`HANDSHAKE_TIMEOUT`] after the deadline).
pub async fn simultaneous_open(
    local: SocketAddr,
    remote: SocketAddr,
    start_at: Instant,
    controlling: bool,
    ours: &Identity,
    peer_fingerprint: &str,
    deadline: Duration,
) -> Result<(TlsStream<TcpStream>, SocketAddr), ConnectError> {
    let role = if controlling {
        Role::Server(tls_acceptor(ours, peer_fingerprint)?)
    } else {
        Role::Client(tls_connector(ours, peer_fingerprint)?)
    };
    let failed = |attempts: Vec<FailureReason>| ConnectError::SimultaneousOpenFailed {
        local,
        remote,
        waited: Instant::now().saturating_duration_since(start_at),
        attempts,
    };
    if !connectable(local, remote) {
        debug!(%local, %remote, "addresses unusable for a TCP simultaneous open");
        return Err(failed(vec![FailureReason::NotConnectable]));
    }
    // Bind now: a port that cannot be shared is reported at once, not at
    // start_at, and the first attempt's socket is ready.
    let mut prepared = Some(
        bind_reusable(local)
            .map_err(|source| ConnectError::SimultaneousOpenBind { local, source })?,
    );

    let mut schedule = SimOpenSchedule::new(
        start_at.into_std(),
        RETRY_INTERVAL,
        ATTEMPT_TIMEOUT,
        (start_at + deadline).into_std(),
    );
    let mut attempts: Vec<FailureReason> = Vec::new();
    let mut in_flight = None;
    let tcp = loop {
        let now = Instant::now().into_std();
        if schedule.handle_timeout(now) && in_flight.take().is_some() {
            debug!(%local, %remote, attempt = schedule.attempts(), "no answer; abandoning this attempt");
            attempts.push(FailureReason::TimedOut);
        }
        if let Some(attempt) = schedule.next_attempt(now) {
            let socket = match prepared.take().map_or_else(|| bind_reusable(local), Ok) {
                Ok(socket) => socket,
                Err(error) => {
                    debug!(%local, %error, "could not bind the signalling port again");
                    schedule.attempt_ended();
                    attempts.push(FailureReason::Io(format!("bind {local}: {error}")));
                    continue;
                }
            };
            debug!(%local, %remote, attempt = attempt.number, "simultaneous open attempt");
            in_flight = Some(Box::pin(connect_socket(socket, remote)));
        }
        let Some(wake_at) = schedule.poll_timeout() else {
            debug!(%local, %remote, tried = attempts.len(), "TCP simultaneous open gave up");
            return Err(failed(attempts));
        };
        let outcome = tokio::select! {
            result = finish(&mut in_flight) => Some(result),
            () = sleep_until(Instant::from_std(wake_at)) => None,
        };
        match outcome {
            None => {}
            Some(Ok(tcp)) => {
                schedule.attempt_ended();
                break tcp;
            }
            Some(Err(error)) => {
                in_flight = None;
                schedule.attempt_ended();
                let reason = classify_io(error);
                debug!(%local, %remote, attempt = schedule.attempts(), %reason, "simultaneous open attempt failed");
                attempts.push(reason);
            }
        }
    };
    drop(in_flight);

    if let Err(error) = tcp.set_nodelay(true) {
        debug!(%remote, %error, "could not set TCP_NODELAY");
    }
    debug!(
        local = ?tcp.local_addr().ok(),
        peer = ?tcp.peer_addr().ok(),
        attempt = schedule.attempts(),
        controlling,
        "TCP simultaneous open connected; securing it"
    );
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    match timeout_at(handshake_deadline, secure(tcp, remote, &role)).await {
        Ok(Ok(tls)) => {
            debug!(%remote, "TCP simultaneous open established");
            Ok((tls, remote))
        }
        Ok(Err(reason)) => {
            debug!(%remote, %reason, "TCP simultaneous open failed the secure handshake");
            attempts.push(reason);
            Err(failed(attempts))
        }
        Err(_) => {
            debug!(%remote, "TLS handshake after simultaneous open timed out");
            attempts.push(FailureReason::TimedOut);
            Err(failed(attempts))
        }
    }
}

/// The TLS side this peer plays on the connection.
enum Role {
    Server(TlsAcceptor),
    Client(TlsConnector),
}

async fn connect_socket(socket: Socket, remote: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(remote).await
}

/// Waits for the attempt in flight; never completes when there is none.
async fn finish<F>(in_flight: &mut Option<F>) -> F::Output
where
    F: std::future::Future + Unpin,
{
    match in_flight {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

async fn secure(
    tcp: TcpStream,
    remote: SocketAddr,
    role: &Role,
) -> Result<TlsStream<TcpStream>, FailureReason> {
    match role {
        Role::Server(acceptor) => secure_tcp(tcp, Secure::Server(acceptor)).await,
        Role::Client(connector) => {
            secure_tcp(
                tcp,
                Secure::Client(connector, ServerName::from(remote.ip())),
            )
            .await
        }
    }
}

fn connectable(local: SocketAddr, remote: SocketAddr) -> bool {
    let ip = remote.ip();
    local.is_ipv4() == remote.is_ipv4()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && remote.port() != 0
        && local.port() != 0
        // Connecting a port to itself would be a TCP self-connect.
        && local != remote
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    const MS: Duration = Duration::from_millis(1);

    fn schedule(t0: StdInstant) -> SimOpenSchedule {
        SimOpenSchedule::new(
            t0 + 100 * MS,
            250 * MS,
            2000 * MS,
            t0 + 100 * MS + 2000 * MS,
        )
    }

    #[test]
    fn first_attempt_waits_for_the_agreed_start() {
        let t0 = StdInstant::now();
        let mut s = schedule(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + 100 * MS));
        assert_eq!(s.next_attempt(t0), None);
        assert_eq!(s.next_attempt(t0 + 99 * MS), None);
        let first = s.next_attempt(t0 + 100 * MS).unwrap();
        assert_eq!(first.number, 1);
        // The attempt timeout would end after the deadline: capped.
        assert_eq!(first.give_up_at, t0 + 2100 * MS);
        assert_eq!(s.attempts(), 1);
    }

    #[test]
    fn one_attempt_at_a_time_and_retries_spaced_by_the_interval() {
        let t0 = StdInstant::now();
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, t0 + 5000 * MS);
        let first = s.next_attempt(t0).unwrap();
        assert_eq!(first.give_up_at, t0 + 1000 * MS);
        // While it runs, nothing else starts; the timer is its give-up time.
        assert_eq!(s.next_attempt(t0 + 300 * MS), None);
        assert_eq!(s.poll_timeout(), Some(t0 + 1000 * MS));
        // Refused quickly: the retry waits for the interval.
        assert!(!s.handle_timeout(t0 + 5 * MS));
        s.attempt_ended();
        assert_eq!(s.poll_timeout(), Some(t0 + 250 * MS));
        assert_eq!(s.next_attempt(t0 + 249 * MS), None);
        let second = s.next_attempt(t0 + 250 * MS).unwrap();
        assert_eq!(second.number, 2);
        assert_eq!(second.give_up_at, t0 + 1250 * MS);
    }

    #[test]
    fn silent_attempt_is_abandoned_at_its_timeout_and_replaced_at_once() {
        let t0 = StdInstant::now();
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, t0 + 5000 * MS);
        s.next_attempt(t0).unwrap();
        assert!(!s.handle_timeout(t0 + 999 * MS));
        assert_eq!(s.next_attempt(t0 + 999 * MS), None);
        assert!(s.handle_timeout(t0 + 1000 * MS));
        // Already past the interval: the next one is due immediately.
        assert_eq!(s.poll_timeout(), Some(t0 + 250 * MS));
        let second = s.next_attempt(t0 + 1000 * MS).unwrap();
        assert_eq!(second.number, 2);
        assert_eq!(second.give_up_at, t0 + 2000 * MS);
        // A second timeout report for the same attempt changes nothing.
        assert!(!s.handle_timeout(t0 + 1500 * MS));
    }

    #[test]
    fn always_refused_gives_one_attempt_per_interval_until_the_deadline() {
        let t0 = StdInstant::now();
        let deadline = t0 + 2000 * MS;
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, deadline);
        let mut now = t0;
        let mut starts = Vec::new();
        // Virtual time: every attempt is refused 1 ms after it starts.
        while let Some(wake) = s.poll_timeout() {
            now = now.max(wake);
            s.handle_timeout(now);
            if let Some(attempt) = s.next_attempt(now) {
                starts.push(now - t0);
                now += MS;
                assert!(now < attempt.give_up_at);
                s.attempt_ended();
            }
        }
        let expected: Vec<Duration> = (0..8).map(|i| i * 250 * MS).collect();
        assert_eq!(starts, expected);
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.next_attempt(deadline), None);
        assert_eq!(s.next_attempt(deadline + 1000 * MS), None);
    }

    #[test]
    fn attempt_abandoned_at_the_deadline_ends_the_schedule() {
        // Regression: an attempt still running when the next start was due
        // left that start pending past the deadline, and the driver spun.
        let t0 = StdInstant::now();
        let deadline = t0 + 1500 * MS;
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, deadline);
        s.next_attempt(t0).unwrap();
        assert!(s.handle_timeout(t0 + 1000 * MS));
        let second = s.next_attempt(t0 + 1000 * MS).unwrap();
        assert_eq!(second.give_up_at, deadline);
        assert_eq!(s.poll_timeout(), Some(deadline));
        assert!(s.handle_timeout(deadline));
        assert_eq!(s.next_attempt(deadline), None);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.attempts(), 2);
    }

    #[test]
    fn late_wake_up_does_not_burst() {
        let t0 = StdInstant::now();
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, t0 + 5000 * MS);
        // The driver only got to run 900 ms after the agreed start.
        s.next_attempt(t0 + 900 * MS).unwrap();
        s.attempt_ended();
        assert_eq!(s.next_attempt(t0 + 901 * MS), None);
        assert_eq!(s.poll_timeout(), Some(t0 + 1150 * MS));
    }

    #[test]
    fn nothing_to_do_when_the_window_is_empty() {
        let t0 = StdInstant::now();
        let mut s = SimOpenSchedule::new(t0, 250 * MS, 1000 * MS, t0);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.next_attempt(t0), None);
        assert_eq!(s.attempts(), 0);
    }

    #[test]
    fn failure_message_names_both_ends_and_the_attempts() {
        let error = ConnectError::SimultaneousOpenFailed {
            local: "192.168.1.5:40000".parse().unwrap(),
            remote: "203.0.113.9:51000".parse().unwrap(),
            waited: Duration::from_secs(6),
            attempts: vec![FailureReason::Refused; 3],
        };
        assert_eq!(
            error.to_string(),
            "TCP simultaneous open from 192.168.1.5:40000 to 203.0.113.9:51000 failed after 6s: \
             3 attempts (refused x3); a NAT may change the port or block TCP simultaneous open; \
             other paths may still work"
        );
        let error = ConnectError::SimultaneousOpenFailed {
            local: "192.168.1.5:40000".parse().unwrap(),
            remote: "203.0.113.9:51000".parse().unwrap(),
            waited: Duration::from_secs(1),
            attempts: vec![FailureReason::WrongCertificate],
        };
        assert!(error.to_string().contains("new code"), "{error}");
    }

    #[test]
    fn unusable_address_pairs_are_refused_up_front() {
        let a: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        assert!(connectable(a, "127.0.0.3:4000".parse().unwrap()));
        assert!(!connectable(a, a));
        assert!(!connectable(a, "[::1]:4000".parse().unwrap()));
        assert!(!connectable(a, "0.0.0.0:4000".parse().unwrap()));
        assert!(!connectable(a, "127.0.0.3:0".parse().unwrap()));
        assert!(!connectable(a, "224.0.0.1:4000".parse().unwrap()));
        assert!(!connectable(
            "127.0.0.2:0".parse().unwrap(),
            "127.0.0.3:4000".parse().unwrap()
        ));
    }
}
