//! The relay's pairing rules, sans-IO.
//!
//! The driver feeds joins ([`Relay::handle_join`]) and closes
//! ([`Relay::handle_close`]) with the current time (monotonic, and Unix
//! seconds for token expiry), calls [`Relay::handle_timeout`] when
//! [`Relay::poll_timeout`] says so, and closes the connections
//! [`Relay::poll_close`] names. Tokens are signed by the rendezvous server
//! with the relay's [`TokenKey`] (see [`crate::token`]); the relay needs no
//! word from the rendezvous to check one.
//!
//! ```text
//! join(conn, ip, token):
//!   per-IP limit reached              -> Refused(PerIpLimit)
//!   MAC does not verify (forged,
//!     corrupted, another secret)      -> Refused(UnknownToken)
//!   Unix time >= its expiry           -> Refused(Expired)
//!   token already joined twice        -> Refused(Reused)
//!   first side, no free pair slot     -> Refused(PairsLimit)
//!   first side                        -> Wait     (takes a pair slot;
//!                                        the token is remembered)
//!   second side                       -> Paired { other }
//! close(conn): frees its IP share; a waiting side also gives its join back
//!   (it may come again); a paired side frees the pair slot
//! timeout(now): waiting longer than wait_timeout -> poll_close (WaitTimeout);
//!   tokens seen are forgotten once expired (then the expiry check alone
//!   refuses them, so forgetting cannot make a token usable again)
//! ```
//!
//! The Unix clock only moves forward here: the core keeps the latest time
//! it was given, so a clock stepped back cannot revive a forgotten token.
//!
//! A pair slot is taken when the first side starts waiting, so a second
//! side is never refused for lack of room and `max_pairs` bounds waiting
//! and paired connections together.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferry_limits::{AddrBucket, Bucketing};
use tracing::debug;

pub use crate::token::Token;
use crate::token::{Claims, TokenKey};

/// Identifies one relay connection; the driver never reuses an id.
pub type ConnId = u64;

/// Limits and timers of the relay, with defaults for a small VPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Relay connections from one address bucket (default 8): waiting or
    /// paired here, and, on a listener of the relay's own
    /// ([`crate::RelayServer::serve`]), every open connection, counted at
    /// accept before its first line.
    pub max_connections_per_ip: usize,
    /// Which addresses count as one party for `max_connections_per_ip`
    /// (default: one IPv4 address, one IPv6 /64).
    pub bucketing: Bucketing,
    /// How long [`crate::RelayServer::serve`] waits for a connection's first
    /// line (default 3 s).
    pub first_line_timeout: Duration,
    /// Pairs at once, counting a side still waiting for its partner as a
    /// pair (default 64).
    pub max_pairs: usize,
    /// Bytes per second per pair, both directions together (default
    /// [`DEFAULT_PAIR_RATE`], 64 MiB/s; `None`: no cap).
    pub rate_limit: Option<u64>,
    /// Bytes per second through the whole relay, all pairs together
    /// (default [`DEFAULT_TOTAL_RATE`], 128 MiB/s, about 1 Gbit/s; `None`:
    /// no cap).
    pub total_rate_limit: Option<u64>,
    /// Bytes one pair may move, both directions together; the pair is then
    /// ended ([`PairEnd::ByteLimit`]) (default [`DEFAULT_PAIR_BYTES`],
    /// 64 GiB; `None`: no cap).
    pub max_pair_bytes: Option<u64>,
    /// How long one pair may last; it is then ended ([`PairEnd::Lifetime`])
    /// (default [`DEFAULT_PAIR_LIFETIME`], 24 h; `None`: no cap).
    pub max_pair_lifetime: Option<Duration>,
    /// A pair with no byte either way for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// How long the first side may wait for the second (default 30 s).
    pub wait_timeout: Duration,
    /// When [`crate::RelayServer::serve`] is told to stop, it stops
    /// accepting at once and gives pairs this long to finish before
    /// cutting them (default 5 s, as `ferry serve`'s rendezvous server).
    pub shutdown_grace: Duration,
}

/// Default per-pair rate: 64 MiB/s, so one pair cannot take a whole 1 Gbit/s
/// link, while a 64 MiB transfer still passes within the first second's
/// burst.
pub const DEFAULT_PAIR_RATE: u64 = 64 << 20;
/// Default rate of the whole relay: 128 MiB/s, about a 1 Gbit/s link.
pub const DEFAULT_TOTAL_RATE: u64 = 128 << 20;
/// Default bytes per pair: 64 GiB.
pub const DEFAULT_PAIR_BYTES: u64 = 64 << 30;
/// Default lifetime of a pair: 24 h.
pub const DEFAULT_PAIR_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the relay ended a pair that was copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PairEnd {
    /// The pair moved [`RelayConfig::max_pair_bytes`].
    ByteLimit,
    /// The pair lasted [`RelayConfig::max_pair_lifetime`].
    Lifetime,
    /// No byte either way for [`RelayConfig::idle_timeout`].
    Idle,
}

impl PairEnd {
    /// A sentence for the relay's log and the user, saying what to do. The
    /// limits are the relay's configuration; a program that knows how its
    /// operator sets them can name that (`ferry` does: `--relay-max-bytes`).
    pub fn message(self) -> &'static str {
        match self {
            PairEnd::ByteLimit => {
                "the relay ended the transfer at its limit of bytes per transfer; \
                 resume it to carry on, or ask the relay's operator"
            }
            PairEnd::Lifetime => {
                "the relay ended the transfer at its time limit per transfer; \
                 resume it to carry on, or ask the relay's operator"
            }
            PairEnd::Idle => "the relay ended the transfer: nothing moved for too long",
        }
    }
}

/// What a pair that is copying may still do: a pure check of its byte
/// budget and deadline, fed by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairBudget {
    bytes_left: Option<u64>,
    ends_at: Option<Instant>,
}

impl PairBudget {
    /// The budget of a pair joined at `now` under `config`.
    pub fn new(config: &RelayConfig, now: Instant) -> Self {
        PairBudget {
            bytes_left: config.max_pair_bytes,
            ends_at: config.max_pair_lifetime.and_then(|l| now.checked_add(l)),
        }
    }

    /// How many of `wanted` bytes may be read now; 0 once the byte budget
    /// is spent.
    pub fn allowed(&self, wanted: usize) -> usize {
        match self.bytes_left {
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(wanted),
            None => wanted,
        }
    }

    /// `n` bytes moved.
    pub fn spend(&mut self, n: usize) {
        if let Some(left) = &mut self.bytes_left {
            *left = left.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// When the pair must end for its lifetime, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.ends_at
    }

    /// Whether the pair must end at `now`, and why.
    pub fn check(&self, now: Instant) -> Option<PairEnd> {
        if self.bytes_left == Some(0) {
            return Some(PairEnd::ByteLimit);
        }
        match self.ends_at {
            Some(at) if now >= at => Some(PairEnd::Lifetime),
            _ => None,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_connections_per_ip: 8,
            bucketing: Bucketing::default(),
            first_line_timeout: Duration::from_secs(3),
            max_pairs: 64,
            rate_limit: Some(DEFAULT_PAIR_RATE),
            total_rate_limit: Some(DEFAULT_TOTAL_RATE),
            max_pair_bytes: Some(DEFAULT_PAIR_BYTES),
            max_pair_lifetime: Some(DEFAULT_PAIR_LIFETIME),
            idle_timeout: Duration::from_secs(60),
            wait_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What to do with a connection that presented a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Tell it `relay-waiting`; its partner has not come yet.
    Wait,
    /// Join it with `other`, which was waiting.
    Paired {
        /// The waiting connection to join with.
        other: ConnId,
    },
    /// Tell it why and close it.
    Refused(Refusal),
}

/// Why a join was refused (or a waiting connection dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The token's MAC does not verify: forged, corrupted, or signed with
    /// another secret than this relay's.
    UnknownToken,
    /// The token is past its expiry time.
    Expired,
    /// Two connections already presented the token.
    Reused,
    /// Too many relay connections from this IP address.
    PerIpLimit,
    /// Too many pairs at once.
    PairsLimit,
    /// The other side did not come within the wait timeout.
    WaitTimeout,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 6] = [
        Refusal::UnknownToken,
        Refusal::Expired,
        Refusal::Reused,
        Refusal::PerIpLimit,
        Refusal::PairsLimit,
        Refusal::WaitTimeout,
    ];

    /// A sentence for the refused user, saying what to do. It travels to
    /// the client as the text of the relay's error line:
    /// [`Refusal::in_text`] finds it again there.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::UnknownToken => {
                "unknown relay token: this relay did not sign it; pair again through the rendezvous \
                 server, and if it keeps happening tell its operator (the rendezvous server and the \
                 relay may hold different relay secrets)"
            }
            Refusal::Expired => "the relay token expired; pair again to get a fresh one",
            Refusal::Reused => {
                "this relay token was already used by both sides; pair again to get a fresh one"
            }
            Refusal::PerIpLimit => "too many relay connections from your address; try again later",
            Refusal::PairsLimit => "the relay is at its limit of transfers; try again later",
            Refusal::WaitTimeout => "the other side did not come to the relay in time",
        }
    }

    /// Which refusal `text` reports: a relay's message, or an error that
    /// ends with one (as [`RelayError::Refused`](crate::RelayError::Refused)
    /// and the errors that carry it on do), so a client can explain it in
    /// its own terms. `None` for any other text, such as the words of a
    /// relay of another version.
    pub fn in_text(text: &str) -> Option<Refusal> {
        Refusal::ALL
            .into_iter()
            .find(|refusal| text.ends_with(refusal.message()))
    }
}

/// Counters of what the relay did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tokens that verified and were presented for the first time.
    pub tokens_seen: u64,
    /// Pairs joined.
    pub paired: u64,
    /// Joins refused for an unknown token.
    pub unknown_token: u64,
    /// Joins refused for an expired token.
    pub expired: u64,
    /// Joins refused for a token already used twice.
    pub reused: u64,
    /// Joins refused by the per-IP limit.
    pub per_ip_limit: u64,
    /// Joins refused by the pairs limit.
    pub pairs_limit: u64,
    /// Waiting connections dropped because the other side did not come.
    pub wait_timeout: u64,
    /// Pairs ended at the byte limit per pair.
    pub byte_limit: u64,
    /// Pairs ended at the lifetime limit per pair.
    pub lifetime_limit: u64,
    /// Pairs ended because nothing moved for the idle timeout.
    pub idle: u64,
}

impl Stats {
    /// All refusals together.
    pub fn refused(&self) -> u64 {
        self.unknown_token
            + self.expired
            + self.reused
            + self.per_ip_limit
            + self.pairs_limit
            + self.wait_timeout
    }

    fn count(&mut self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::UnknownToken => &mut self.unknown_token,
            Refusal::Expired => &mut self.expired,
            Refusal::Reused => &mut self.reused,
            Refusal::PerIpLimit => &mut self.per_ip_limit,
            Refusal::PairsLimit => &mut self.pairs_limit,
            Refusal::WaitTimeout => &mut self.wait_timeout,
        };
        *counter += 1;
    }
}

/// The relay state machine.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    key: TokenKey,
    /// The latest Unix time given; never goes back.
    unix: u64,
    tokens: HashMap<Token, TokenState>,
    conns: HashMap<ConnId, Conn>,
    per_ip: HashMap<AddrBucket, usize>,
    /// Waiting connections plus live pairs.
    slots: usize,
    closes: VecDeque<ConnId>,
    stats: Stats,
}

#[derive(Debug)]
struct TokenState {
    nameplate: u32,
    /// Unix seconds.
    expires: u64,
    joins: u8,
    waiting: Option<ConnId>,
}

#[derive(Debug)]
struct Conn {
    ip: IpAddr,
    state: ConnState,
}

#[derive(Debug, Clone, Copy)]
enum ConnState {
    Waiting {
        token: Token,
        deadline: Instant,
    },
    Paired {
        other: ConnId,
    },
    /// Its partner closed; the pair slot is already free.
    Orphan,
}

impl Relay {
    /// An empty relay that accepts the tokens `key` signed.
    pub fn new(config: RelayConfig, key: TokenKey) -> Self {
        Relay {
            config,
            key,
            unix: 0,
            tokens: HashMap::new(),
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            slots: 0,
            closes: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The limits this relay enforces.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Connection `conn` from `ip` presented `token`, at `now` and Unix
    /// time `unix` (seconds).
    pub fn handle_join(
        &mut self,
        now: Instant,
        unix: u64,
        conn: ConnId,
        ip: IpAddr,
        token: &Token,
    ) -> Join {
        self.unix = self.unix.max(unix);
        let claims = match self.check_join(conn, ip, token) {
            Ok(claims) => claims,
            Err(refusal) => {
                self.stats.count(refusal);
                debug!(conn, %ip, ?refusal, "relay join refused");
                return Join::Refused(refusal);
            }
        };
        *self
            .per_ip
            .entry(self.config.bucketing.bucket(ip))
            .or_insert(0) += 1;
        let state = self.tokens.entry(*token).or_insert_with(|| {
            self.stats.tokens_seen += 1;
            TokenState {
                nameplate: claims.nameplate,
                expires: claims.expires,
                joins: 0,
                waiting: None,
            }
        });
        state.joins += 1;
        match state.waiting.take() {
            Some(other) => {
                let nameplate = state.nameplate;
                self.conns.insert(
                    conn,
                    Conn {
                        ip,
                        state: ConnState::Paired { other },
                    },
                );
                if let Some(waiter) = self.conns.get_mut(&other) {
                    waiter.state = ConnState::Paired { other: conn };
                }
                self.stats.paired += 1;
                debug!(conn, other, nameplate, "relay pair joined");
                Join::Paired { other }
            }
            None => {
                state.waiting = Some(conn);
                self.slots += 1;
                self.conns.insert(
                    conn,
                    Conn {
                        ip,
                        state: ConnState::Waiting {
                            token: *token,
                            deadline: now + self.config.wait_timeout,
                        },
                    },
                );
                debug!(conn, nameplate = state.nameplate, "relay side waiting");
                Join::Wait
            }
        }
    }

    /// The connection `conn` closed (or the driver closed it). Unknown ids
    /// are ignored, so closing twice is harmless.
    pub fn handle_close(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        let bucket = self.config.bucketing.bucket(state.ip);
        if let Some(count) = self.per_ip.get_mut(&bucket) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&bucket);
            }
        }
        match state.state {
            ConnState::Waiting { token, .. } => {
                self.slots -= 1;
                // The side may come again with the same token.
                if let Some(token) = self.tokens.get_mut(&token) {
                    if token.waiting == Some(conn) {
                        token.waiting = None;
                        token.joins = token.joins.saturating_sub(1);
                    }
                }
            }
            ConnState::Paired { other } => {
                self.slots -= 1;
                if let Some(other) = self.conns.get_mut(&other) {
                    other.state = ConnState::Orphan;
                }
            }
            ConnState::Orphan => {}
        }
    }

    /// Time passed (`now`, and Unix time `unix` in seconds): drop sides
    /// that waited too long, forget expired tokens.
    pub fn handle_timeout(&mut self, now: Instant, unix: u64) {
        self.unix = self.unix.max(unix);
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, ConnState::Waiting { deadline, .. } if now >= deadline),
            )
            .map(|(id, _)| *id)
            .collect();
        for conn in late {
            debug!(conn, "relay side waited too long for its partner; dropping");
            self.stats.count(Refusal::WaitTimeout);
            self.handle_close(conn);
            self.closes.push_back(conn);
        }
        let unix = self.unix;
        self.tokens.retain(|_, token| {
            // A side still waiting keeps its token until its own deadline.
            unix < token.expires || token.waiting.is_some()
        });
    }

    /// The next connection to close (it waited too long), once told why.
    pub fn poll_close(&mut self) -> Option<ConnId> {
        self.closes.pop_front()
    }

    /// When [`Relay::handle_timeout`] must next be called: the earliest
    /// wait deadline. (Expired tokens are forgotten by any later
    /// `handle_timeout` or `handle_join`; they need no timer.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| match c.state {
                ConnState::Waiting { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// The driver ended a copying pair for `end`: counted in [`Stats`].
    pub fn handle_pair_end(&mut self, end: PairEnd) {
        match end {
            PairEnd::ByteLimit => self.stats.byte_limit += 1,
            PairEnd::Lifetime => self.stats.lifetime_limit += 1,
            PairEnd::Idle => self.stats.idle += 1,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections waiting or paired.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Tokens remembered (presented and not yet expired).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The token's claims if this join may go ahead, else why not.
    fn check_join(&self, conn: ConnId, ip: IpAddr, token: &Token) -> Result<Claims, Refusal> {
        if self.conns.contains_key(&conn) {
            // A driver bug, not a peer's doing; refuse rather than corrupt state.
            return Err(Refusal::Reused);
        }
        let bucket = self.config.bucketing.bucket(ip);
        if self.per_ip.get(&bucket).copied().unwrap_or(0) >= self.config.max_connections_per_ip {
            return Err(Refusal::PerIpLimit);
        }
        let claims = self.key.verify(token).ok_or(Refusal::UnknownToken)?;
        if self.unix >= claims.expires {
            return Err(Refusal::Expired);
        }
        let waiting = match self.tokens.get(token) {
            Some(state) if state.joins >= 2 => return Err(Refusal::Reused),
            Some(state) => state.waiting.is_some(),
            None => false,
        };
        if !waiting && self.slots >= self.config.max_pairs {
            return Err(Refusal::PairsLimit);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));

    /// 2023-11-14, an arbitrary start of virtual wall-clock time.
    const START_UNIX: u64 = 1_700_000_000;

    fn key() -> TokenKey {
        TokenKey::from_secret(&[42; 32]).unwrap()
    }

    /// A relay in virtual time, and a rendezvous signing tokens with the
    /// same secret.
    struct Harness {
        relay: Relay,
        now: Instant,
        unix: u64,
        ttl: u64,
        tokens: HashMap<u8, Token>,
    }

    impl Harness {
        fn new(config: RelayConfig) -> Self {
            Harness {
                relay: Relay::new(config, key()),
                now: Instant::now(),
                unix: START_UNIX,
                ttl: 120,
                tokens: HashMap::new(),
            }
        }

        /// The rendezvous issues token `n` for nameplate `n`, now.
        fn issue(&mut self, n: u8) {
            let token = key().issue(u32::from(n), self.unix + self.ttl, [n; 8]);
            self.tokens.insert(n, token);
        }

        fn join(&mut self, conn: ConnId, ip: IpAddr, n: u8) -> Join {
            let token = self.tokens[&n];
            self.join_token(conn, ip, &token)
        }

        fn join_token(&mut self, conn: ConnId, ip: IpAddr, token: &Token) -> Join {
            self.relay.handle_join(self.now, self.unix, conn, ip, token)
        }

        /// Both clocks move on by `by`.
        fn advance(&mut self, by: Duration) -> Vec<ConnId> {
            self.now += by;
            self.unix += by.as_secs();
            self.relay.handle_timeout(self.now, self.unix);
            std::iter::from_fn(|| self.relay.poll_close()).collect()
        }
    }

    #[test]
    fn two_sides_pair() {
        let mut h = Harness::new(RelayConfig::default());
        h.issue(1);
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert_eq!(h.join(11, B, 1), Join::Paired { other: 10 });
        assert_eq!(h.relay.stats().paired, 1);
        assert_eq!(h.relay.stats().tokens_seen, 1);
        assert_eq!(h.relay.stats().refused(), 0);
        // Paired connections are not timed out by the wait timeout.
        assert!(h.advance(Duration::from_secs(3600)).is_empty());
        assert_eq!(h.relay.connection_count(), 2);
    }

    #[test]
    fn bogus_forged_and_foreign_tokens_are_refused() {
        let mut h = Harness::new(RelayConfig::default());
        h.issue(1);
        // Random bytes.
        assert_eq!(
            h.join_token(10, A, &[7; 32]),
            Join::Refused(Refusal::UnknownToken)
        );
        // A genuine token with its nameplate or expiry changed.
        let mut forged = h.tokens[&1];
        forged[3] ^= 1;
        assert_eq!(
            h.join_token(11, A, &forged),
            Join::Refused(Refusal::UnknownToken)
        );
        let mut later = h.tokens[&1];
        later[7] = later[7].wrapping_add(100);
        assert_eq!(
            h.join_token(12, A, &later),
            Join::Refused(Refusal::UnknownToken)
        );
        // Well-formed, but signed with another secret.
        let other = TokenKey::from_secret(&[43; 32]).unwrap();
        let foreign = other.issue(1, h.unix + 120, [1; 8]);
        assert_eq!(
            h.join_token(13, A, &foreign),
            Join::Refused(Refusal::UnknownToken)
        );
        assert_eq!(h.relay.stats().unknown_token, 4);
        assert_eq!(h.relay.connection_count(), 0);
        assert_eq!(
            h.relay.token_count(),
            0,
            "refused tokens are not remembered"
        );
        // The genuine one still works.
        assert_eq!(h.join(14, A, 1), Join::Wait);
    }

    #[test]
    fn expired_token_is_refused_before_and_after_it_is_forgotten() {
        let mut h = Harness::new(RelayConfig::default());
        h.ttl = 60;
        h.issue(1);
        h.issue(2);
        assert_eq!(h.join(10, A, 2), Join::Wait);
        h.relay.handle_close(10);
        assert_eq!(h.relay.token_count(), 1);
        h.advance(Duration::from_secs(59));
        // One second before the expiry a token still works.
        assert_eq!(h.join(11, A, 1), Join::Wait);
        h.relay.handle_close(11);
        h.advance(Duration::from_secs(1));
        assert_eq!(h.relay.token_count(), 0, "expired tokens are forgotten");
        assert_eq!(h.join(12, A, 1), Join::Refused(Refusal::Expired));
        assert_eq!(h.join(13, A, 2), Join::Refused(Refusal::Expired));
        assert_eq!(h.relay.stats().expired, 2);
        // A wall clock stepped back does not revive a forgotten token.
        h.unix -= 3600;
        assert_eq!(h.join(14, A, 2), Join::Refused(Refusal::Expired));
        assert_eq!(h.relay.connection_count(), 0);
    }

    #[test]
    fn third_presenter_is_refused_and_pair_unaffected() {
        let mut h = Harness::new(RelayConfig::default());
        h.issue(1);
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert_eq!(h.join(11, B, 1), Join::Paired { other: 10 });
        assert_eq!(h.join(12, C, 1), Join::Refused(Refusal::Reused));
        assert_eq!(h.relay.stats().reused, 1);
        assert_eq!(h.relay.connection_count(), 2);
        // Even after both sides of the pair closed, the token stays used
        // until it expires.
        h.relay.handle_close(10);
        assert_eq!(h.join(13, C, 1), Join::Refused(Refusal::Reused));
        h.relay.handle_close(11);
        assert_eq!(h.relay.connection_count(), 0);
        h.advance(Duration::from_secs(119));
        assert_eq!(h.join(14, C, 1), Join::Refused(Refusal::Reused));
        h.advance(Duration::from_secs(1));
        assert_eq!(h.join(15, C, 1), Join::Refused(Refusal::Expired));
    }

    #[test]
    fn waiting_side_that_leaves_gives_its_join_back() {
        let mut h = Harness::new(RelayConfig::default());
        h.issue(1);
        assert_eq!(h.join(10, A, 1), Join::Wait);
        h.relay.handle_close(10);
        assert_eq!(h.join(11, A, 1), Join::Wait);
        assert_eq!(h.join(12, B, 1), Join::Paired { other: 11 });
        assert_eq!(h.join(13, B, 1), Join::Refused(Refusal::Reused));
    }

    #[test]
    fn per_ip_limit() {
        let config = RelayConfig {
            max_connections_per_ip: 2,
            ..RelayConfig::default()
        };
        let mut h = Harness::new(config);
        for n in 1..=3 {
            h.issue(n);
        }
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert_eq!(h.join(11, A, 1), Join::Paired { other: 10 });
        assert_eq!(h.join(12, A, 2), Join::Refused(Refusal::PerIpLimit));
        assert_eq!(h.relay.stats().per_ip_limit, 1);
        // Other addresses are not affected.
        assert_eq!(h.join(13, B, 2), Join::Wait);
        // A closed connection frees its share.
        h.relay.handle_close(10);
        assert_eq!(h.join(14, A, 2), Join::Paired { other: 13 });
    }

    #[test]
    fn pairs_limit_counts_waiting_sides_but_never_refuses_a_partner() {
        let config = RelayConfig {
            max_pairs: 2,
            ..RelayConfig::default()
        };
        let mut h = Harness::new(config);
        for n in 1..=3 {
            h.issue(n);
        }
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert_eq!(h.join(11, A, 2), Join::Wait);
        assert_eq!(h.join(12, B, 3), Join::Refused(Refusal::PairsLimit));
        assert_eq!(h.relay.stats().pairs_limit, 1);
        // The partners of waiting sides still get in.
        assert_eq!(h.join(13, B, 1), Join::Paired { other: 10 });
        assert_eq!(h.join(14, B, 2), Join::Paired { other: 11 });
        assert_eq!(h.join(15, C, 3), Join::Refused(Refusal::PairsLimit));
        // One side of a pair closing frees the slot; the other side's close
        // later does not free it twice.
        h.relay.handle_close(13);
        assert_eq!(h.join(16, C, 3), Join::Wait);
        h.relay.handle_close(10);
        h.issue(4);
        assert_eq!(h.join(17, C, 4), Join::Refused(Refusal::PairsLimit));
    }

    #[test]
    fn unpaired_side_is_dropped_after_wait_timeout() {
        let config = RelayConfig {
            wait_timeout: Duration::from_secs(30),
            ..RelayConfig::default()
        };
        let mut h = Harness::new(config);
        h.issue(1);
        assert_eq!(h.relay.poll_timeout(), None);
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert_eq!(
            h.relay.poll_timeout(),
            Some(h.now + Duration::from_secs(30))
        );
        assert!(h.advance(Duration::from_secs(29)).is_empty());
        assert_eq!(h.advance(Duration::from_secs(1)), vec![10]);
        assert_eq!(h.relay.stats().wait_timeout, 1);
        assert_eq!(h.relay.connection_count(), 0);
        assert_eq!(h.relay.poll_timeout(), None);
        // The driver's close after the timeout is harmless.
        h.relay.handle_close(10);
        // The token is still good for a fresh try by both sides.
        assert_eq!(h.join(11, A, 1), Join::Wait);
        assert_eq!(h.join(12, B, 1), Join::Paired { other: 11 });
    }

    #[test]
    fn waiting_side_keeps_its_token_past_the_expiry_until_its_deadline() {
        let config = RelayConfig {
            wait_timeout: Duration::from_secs(30),
            ..RelayConfig::default()
        };
        let mut h = Harness::new(config);
        h.ttl = 20;
        h.issue(1);
        assert_eq!(h.join(10, A, 1), Join::Wait);
        assert!(h.advance(Duration::from_secs(25)).is_empty());
        assert_eq!(h.relay.token_count(), 1);
        // Past the expiry nobody new may present it, the partner included.
        assert_eq!(h.join(11, B, 1), Join::Refused(Refusal::Expired));
        assert_eq!(h.advance(Duration::from_secs(5)), vec![10]);
        assert_eq!(h.join(12, B, 1), Join::Refused(Refusal::Expired));
        h.advance(Duration::from_secs(1));
        assert_eq!(h.relay.token_count(), 0);
        assert_eq!(h.relay.poll_timeout(), None);
    }

    #[test]
    fn tokens_are_remembered_only_until_they_expire() {
        let mut h = Harness::new(RelayConfig::default());
        for n in 1..=50 {
            h.issue(n);
            assert_eq!(h.join(u64::from(n), A, n), Join::Wait);
            h.relay.handle_close(u64::from(n));
        }
        assert_eq!(h.relay.token_count(), 50);
        h.advance(Duration::from_secs(120));
        assert_eq!(h.relay.token_count(), 0);
    }

    #[test]
    fn pair_budget_counts_bytes_and_time() {
        let start = Instant::now();
        let config = RelayConfig {
            max_pair_bytes: Some(1000),
            max_pair_lifetime: Some(Duration::from_secs(10)),
            ..RelayConfig::default()
        };
        let mut budget = PairBudget::new(&config, start);
        assert_eq!(budget.allowed(4096), 1000);
        budget.spend(600);
        assert_eq!(budget.allowed(4096), 400);
        assert_eq!(budget.check(start), None);
        assert_eq!(
            budget.check(start + Duration::from_secs(10)),
            Some(PairEnd::Lifetime)
        );
        budget.spend(400);
        assert_eq!(budget.allowed(4096), 0);
        assert_eq!(budget.check(start), Some(PairEnd::ByteLimit));
        let unlimited = PairBudget::new(
            &RelayConfig {
                max_pair_bytes: None,
                max_pair_lifetime: None,
                ..RelayConfig::default()
            },
            start,
        );
        assert_eq!(unlimited.allowed(usize::MAX), usize::MAX);
        assert_eq!(unlimited.deadline(), None);
    }

    #[test]
    fn each_refusal_is_found_again_in_the_text_that_carries_it() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::in_text(refusal.message()), Some(refusal));
            let carried = format!("the relay at 192.0.2.1:443 refused: {}", refusal.message());
            assert_eq!(Refusal::in_text(&carried), Some(refusal), "{carried}");
        }
        assert_eq!(Refusal::in_text("unknown relay token"), None);
        assert_eq!(Refusal::in_text(""), None);
    }
}
