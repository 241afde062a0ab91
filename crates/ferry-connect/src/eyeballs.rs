//! Happy Eyeballs (RFC 8305) for connections to a named server (the
//! rendezvous server, the relay): every address the name resolves to is
//! tried, IPv6 first and then the families alternating (§4), each attempt
//! [`ATTEMPT_DELAY`] after the one before while that one is still pending,
//! at once when it failed (§5). The first connection wins; the others are
//! dropped. A dual-stack host with broken IPv6 so reaches the server over
//! IPv4 a quarter of a second later, not after a connect timeout, and a
//! working IPv6 is preferred.
//!
//! ```text
//! resolve ──> order(): v6, v4, v6, v4 ...
//!   t = 0          start #1
//!   t = 250 ms     start #2 (if #1 still pending)   #1 failed at 40 ms ──> #2 at 40 ms
//!   ...            first Ok wins, the rest are dropped; all failed ──> every reason
//! ```
//!
//! [`Eyeballs`] is the schedule (sans-IO: addresses and time in, attempts
//! out); [`connect`] drives it with any connect function.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

/// How long an attempt runs alone before the next one starts beside it
/// (RFC 8305's recommended Connection Attempt Delay).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order to try `addrs` in: duplicates removed, IPv6 first, then the
/// two families alternating, each family in the resolver's order.
pub fn order(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut v6 = VecDeque::new();
    let mut v4 = VecDeque::new();
    let mut seen = Vec::new();
    for addr in addrs {
        if seen.contains(&addr) {
            continue;
        }
        seen.push(addr);
        if addr.is_ipv6() {
            v6.push_back(addr);
        } else {
            v4.push_back(addr);
        }
    }
    let mut ordered = Vec::with_capacity(seen.len());
    loop {
        match (v6.pop_front(), v4.pop_front()) {
            (None, None) => return ordered,
            (a, b) => ordered.extend(a.into_iter().chain(b)),
        }
    }
}

/// The schedule of the attempts: which address to try when.
#[derive(Debug)]
pub struct Eyeballs {
    queue: VecDeque<SocketAddr>,
    /// When the next attempt may start (`None`: once one fails).
    next_at: Option<Instant>,
    running: usize,
    delay: Duration,
}

impl Eyeballs {
    /// A schedule for `addrs` (see [`order`]) whose first attempt is due
    /// at `now`.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>, now: Instant, delay: Duration) -> Self {
        Eyeballs {
            queue: order(addrs).into(),
            next_at: Some(now),
            running: 0,
            delay,
        }
    }

    /// The attempt to start now, if one is due: the next address. Call
    /// until `None`.
    pub fn poll_start(&mut self, now: Instant) -> Option<SocketAddr> {
        let due = match self.next_at {
            Some(at) => at <= now,
            // Only a failure makes the next one due.
            None => false,
        };
        if !due {
            return None;
        }
        let addr = self.queue.pop_front()?;
        self.running += 1;
        self.next_at = Some(now + self.delay);
        Some(addr)
    }

    /// An attempt failed: the next one is due at once.
    pub fn handle_failed(&mut self, now: Instant) {
        self.running = self.running.saturating_sub(1);
        self.next_at = Some(now);
    }

    /// When [`poll_start`](Self::poll_start) has an attempt next, if it
    /// will without a failure.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            None
        } else {
            self.next_at
        }
    }

    /// Every address was tried and every attempt failed.
    pub fn is_exhausted(&self) -> bool {
        self.queue.is_empty() && self.running == 0
    }
}

/// Connects to `addrs` in Happy Eyeballs order with `connect` (one
/// attempt at one address; give it its own time limit) and returns the
/// first connection and its address. When every attempt failed: each
/// address and why, in the order tried (empty for no addresses).
pub async fn connect<T, E, F, Fut>(
    addrs: impl IntoIterator<Item = SocketAddr>,
    connect: F,
) -> Result<(T, SocketAddr), Vec<(SocketAddr, E)>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut schedule = Eyeballs::new(addrs, Instant::now(), ATTEMPT_DELAY);
    let mut attempts = JoinSet::new();
    let mut failures = Vec::new();
    loop {
        while let Some(addr) = schedule.poll_start(Instant::now()) {
            let attempt = connect(addr);
            attempts.spawn(async move { (addr, attempt.await) });
        }
        if schedule.is_exhausted() {
            return Err(failures);
        }
        let wake = schedule.poll_timeout();
        tokio::select! {
            joined = attempts.join_next(), if !attempts.is_empty() => match joined {
                Some(Ok((addr, Ok(connection)))) => return Ok((connection, addr)),
                Some(Ok((addr, Err(error)))) => {
                    failures.push((addr, error));
                    schedule.handle_failed(Instant::now());
                }
                // A panicked attempt counts as failed, without a reason.
                Some(Err(_)) | None => schedule.handle_failed(Instant::now()),
            },
            () = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_first_then_the_families_alternate() {
        let resolved = [
            addr("192.0.2.1:443"),
            addr("192.0.2.2:443"),
            addr("192.0.2.3:443"),
            addr("[2001:db8::1]:443"),
            addr("192.0.2.1:443"),
            addr("[2001:db8::2]:443"),
        ];
        assert_eq!(
            order(resolved),
            vec![
                addr("[2001:db8::1]:443"),
                addr("192.0.2.1:443"),
                addr("[2001:db8::2]:443"),
                addr("192.0.2.2:443"),
                addr("192.0.2.3:443"),
            ]
        );
        assert_eq!(order([addr("192.0.2.1:1")]), vec![addr("192.0.2.1:1")]);
        assert!(order([]).is_empty());
    }

    #[test]
    fn the_next_attempt_waits_for_the_delay_or_a_failure() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut e = Eyeballs::new(
            [
                addr("192.0.2.1:443"),
                addr("[2001:db8::1]:443"),
                addr("192.0.2.2:443"),
            ],
            t0,
            ATTEMPT_DELAY,
        );
        assert_eq!(e.poll_start(t0), Some(addr("[2001:db8::1]:443")));
        assert_eq!(e.poll_start(t0), None, "one at a time");
        assert_eq!(e.poll_timeout(), Some(ms(250)));
        assert_eq!(e.poll_start(ms(249)), None);
        // Still pending after the delay: the next starts beside it.
        assert_eq!(e.poll_start(ms(250)), Some(addr("192.0.2.1:443")));
        // A failure starts the next at once.
        e.handle_failed(ms(300));
        assert_eq!(e.poll_start(ms(300)), Some(addr("192.0.2.2:443")));
        assert_eq!(e.poll_timeout(), None, "nothing left to start");
        assert!(!e.is_exhausted(), "two attempts still running");
        e.handle_failed(ms(400));
        e.handle_failed(ms(500));
        assert!(e.is_exhausted());
    }

    #[test]
    fn no_addresses_is_exhausted_at_once() {
        let mut e = Eyeballs::new([], Instant::now(), ATTEMPT_DELAY);
        assert_eq!(e.poll_start(Instant::now()), None);
        assert!(e.is_exhausted());
    }

    #[tokio::test]
    async fn a_slow_first_address_loses_to_the_second_after_the_delay() {
        // The IPv6 attempt hangs (an address whose packets vanish); the
        // IPv4 one starts 250 ms later and wins.
        let started = Instant::now();
        let (connection, winner) = connect(
            [addr("192.0.2.1:443"), addr("[2001:db8::1]:443")],
            |addr| async move {
                if addr.is_ipv6() {
                    std::future::pending::<()>().await;
                }
                Ok::<_, String>(addr.port())
            },
        )
        .await
        .unwrap();
        assert_eq!((connection, winner), (443, addr("192.0.2.1:443")));
        let took = started.elapsed();
        assert!(took >= ATTEMPT_DELAY, "{took:?}");
    }

    #[tokio::test]
    async fn real_sockets_fall_back_from_a_refused_address_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        // A port nobody listens on: refused at once.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = Instant::now();
        let (_stream, winner) = connect([closed, open], tokio::net::TcpStream::connect)
            .await
            .unwrap();
        assert_eq!(winner, open);
        assert!(
            started.elapsed() < ATTEMPT_DELAY,
            "a refusal does not wait for the delay: {:?}",
            started.elapsed()
        );
        let failures = connect([closed], tokio::net::TcpStream::connect)
            .await
            .unwrap_err();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, closed);
    }
}
