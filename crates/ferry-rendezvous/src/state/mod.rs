//! The rendezvous server's logic, sans-IO.
//!
//! The driver feeds connections, frames, disconnects and timeouts in with the
//! current time, then drains [`Rendezvous::poll_transmit`] (frames to send)
//! before [`Rendezvous::poll_close`] (connections to close after their queued
//! frames are flushed), and sleeps until [`Rendezvous::poll_timeout`].
//!
//! ```text
//! connect -> hello -> welcome{observed_addr, relay_addr when the relay
//!                              runs on another host}
//!   allocate -> allocated{n}            (side 0 of nameplate n)
//!   claim{n} -> claimed{n}              (side 1); side 0 gets peer-joined
//!   relay-request from both sides (after pairing, since the latest join)
//!            -> relay-token to both: with Config::relay_key, the same fresh
//!               token: (n, expiry, nonce) signed with the key, which the
//!               relay checks on its own (see ferry_relay::token); the
//!               expiry is wall-clock time, from handle_unix_time()
//!   send{body} -> other side gets message{body}
//!                 (queued, up to MAX_PENDING_MESSAGES, while side 1 has not come)
//!   release{reason} / disconnect / silence for 3 heartbeats
//!              -> other side gets peer-left{reason}
//!   release{path}: the path the race found, counted in Stats::paths once
//!              per pairing (the first report of a nameplate whose two
//!              sides both asked for the relay token, i.e. both paired);
//!              reports from clients that never paired, second reports
//!              and reports on rejoin channels are not counted
//!   nameplate freed when no side is left in it; reason "bad-code" burns it
//!   at once (both sides closed); nameplates expire after the TTL.
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_limits::{AddrBucket, Bucketing, RateTable};
use ferry_proto::signal::{
    ClientToServer, ErrorCode, FrameError, PROTOCOL_VERSION, PathOutcome, ReleaseReason,
    ServerToClient,
};
use ferry_relay::TokenKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

pub use cluster::{DirectoryAnswer, DirectoryKey, DirectoryRequest, Proxy};

/// Identifies one client connection; the driver never reuses an id.
pub type ClientId = u64;

/// How many `send` bodies are held for a side that has not claimed yet.
pub const MAX_PENDING_MESSAGES: usize = 16;

/// A client silent for this many heartbeat intervals is dropped.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The release reason that burns a nameplate at once.
pub const BAD_CODE: ReleaseReason = ReleaseReason::BadCode;

/// The reason given to the peer of a client that stopped answering.
pub const PEER_VANISHED: ReleaseReason = ReleaseReason::PeerVanished;

/// The reason given to the peer of a client whose connection closed.
pub const PEER_DISCONNECTED: ReleaseReason = ReleaseReason::PeerDisconnected;

/// Limits and timers of the rendezvous logic.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a nameplate lives, paired or not (default 30 minutes).
    pub nameplate_ttl: Duration,
    /// How many nameplates may exist at once (default 10 000).
    pub max_nameplates: usize,
    /// Ping interval (default 5 s); clients silent for three intervals are dropped.
    pub heartbeat: Duration,
    /// The UDP port of the STUN responder on this host, told to clients in
    /// the welcome (default none).
    pub stun_port: Option<u16>,
    /// A second UDP port of that STUN responder on the same IP, told to
    /// clients in the welcome (default none).
    pub stun_second_port: Option<u16>,
    /// The key relay tokens are signed with: with one, every claim gives
    /// both sides a relay token (default none: no relay).
    pub relay_key: Option<TokenKey>,
    /// How long a relay token may be presented, rounded up to whole
    /// seconds (default 120 s).
    pub relay_token_ttl: Duration,
    /// Where the relay is, `host:port`, told to clients in the welcome
    /// when it runs apart from this server (default none: the relay, if
    /// any, answers on this server's own address).
    pub relay_addr: Option<String>,
    /// Whether this port also speaks TLS, told to clients in the welcome
    /// (default false).
    pub tls_offered: bool,
    /// Whether the relay at `relay_addr` runs TLS (default false), and
    /// the SHA-256 of its certificate when it is self-signed: told in the
    /// welcome.
    pub relay_tls: bool,
    /// See [`Config::relay_tls`].
    pub relay_sha256: Option<String>,
    /// The relay this server names in every relay token (default none:
    /// clients join the relay of their welcome). In a cluster the two
    /// sides of a pair may have come in through different instances, each
    /// with a relay of its own: the pair's home names its relay, and the
    /// side on the other instance follows it, so both meet there.
    pub pair_relay: Option<PairRelay>,
    /// Which addresses count as one party for the per-address budgets
    /// (default: IPv4 per address, IPv6 per /64).
    pub bucketing: Bucketing,
    /// Failed claims (unknown nameplate, or one with two sides; also a
    /// `reserve` of a taken one) one connection may make before it is
    /// closed (default 3).
    pub failed_claims_per_connection: u32,
    /// Failed claims one address bucket may make a minute (default 10);
    /// beyond that its claims are refused for [`Config::claim_block`].
    pub failed_claims_per_minute: u32,
    /// How long an address bucket over its failed-claim budget may not
    /// claim (default 60 s).
    pub claim_block: Duration,
    /// Claims from one address bucket that may end in a `bad-code`
    /// release within [`Config::bad_code_window`] (default 3): the one
    /// that reaches it blocks the bucket's claims for
    /// [`Config::bad_code_block`].
    pub bad_codes_per_window: u32,
    /// See [`Config::bad_codes_per_window`] (default 10 minutes).
    pub bad_code_window: Duration,
    /// See [`Config::bad_codes_per_window`] (default 10 minutes).
    pub bad_code_block: Duration,
    /// How long a greeted client may hold no nameplate (nor rejoin
    /// channel) before it is closed (default 30 s): connections must be
    /// for a transfer, not for holding a slot.
    pub idle_timeout: Duration,
    /// How many address buckets the budget tables track at most (default
    /// 100 000); when full, new buckets are refused rather than the
    /// tables growing.
    pub max_tracked_buckets: usize,
    /// Whether this core is one instance of several sharing a directory
    /// (default false: it is the only one, and asks nobody). See
    /// [`cluster`](self#cluster).
    pub clustered: bool,
}

/// Where a pair's relay is, as [`ServerToClient::RelayToken`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRelay {
    /// `host:port` as clients reach it.
    pub addr: String,
    /// Whether it runs TLS.
    pub tls: bool,
    /// The SHA-256 (hex) of its certificate, for a self-signed one.
    pub sha256: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nameplate_ttl: Duration::from_secs(30 * 60),
            max_nameplates: 10_000,
            heartbeat: Duration::from_secs(5),
            stun_port: None,
            stun_second_port: None,
            relay_key: None,
            relay_token_ttl: Duration::from_secs(120),
            relay_addr: None,
            tls_offered: false,
            relay_tls: false,
            relay_sha256: None,
            pair_relay: None,
            bucketing: Bucketing::default(),
            failed_claims_per_connection: 3,
            failed_claims_per_minute: 10,
            claim_block: Duration::from_secs(60),
            bad_codes_per_window: 3,
            bad_code_window: Duration::from_secs(600),
            bad_code_block: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(30),
            max_tracked_buckets: 100_000,
            clustered: false,
        }
    }
}

/// Counters of what the rendezvous did, for metrics, logs and tests. They
/// only grow; [`Rendezvous::stats`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Nameplates allocated with a number the server picked.
    pub allocated: u64,
    /// Nameplates allocated with a number the sender chose (`reserve`).
    pub reserved: u64,
    /// Hidden nameplates opened for a rejoin channel.
    pub rejoin_channels: u64,
    /// Claims that took the second side of a nameplate.
    pub claimed: u64,
    /// Claims of a nameplate that does not exist.
    pub claims_unknown: u64,
    /// Claims of a nameplate two peers hold already.
    pub claims_taken: u64,
    /// Claims refused because the address bucket is blocked.
    pub claims_blocked: u64,
    /// Claims from a connection that holds a nameplate already.
    pub claims_already_holding: u64,
    /// Peers that met again on a rejoin channel.
    pub rejoined: u64,
    /// Nameplates freed as their sides left.
    pub freed: u64,
    /// Nameplates burnt by a `bad-code` release.
    pub burnt: u64,
    /// Nameplates that expired.
    pub expired: u64,
    /// Allocations refused for lack of room (`max_nameplates`, or no free
    /// number).
    pub nameplates_full: u64,
    /// Connections closed for too many failed claims.
    pub failed_claims_closed: u64,
    /// Messages refused because too many wait for an absent side.
    pub pending_full: u64,
    /// The paths the pairings found, as their clients reported them.
    pub paths: PathCounts,
}

/// How many pairings reported each [`PathOutcome`]: one report per
/// pairing, the first of its two sides. What a client reports is not
/// checked (the server cannot see the path), so a lying client skews
/// the count of its own pairing, and no other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounts {
    counts: [u64; PathOutcome::ALL.len()],
}

impl PathCounts {
    /// How many pairings reported `outcome`.
    pub fn get(&self, outcome: PathOutcome) -> u64 {
        self.counts[Self::index(outcome)]
    }

    /// Every outcome with its count, in [`PathOutcome::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (PathOutcome, u64)> + '_ {
        PathOutcome::ALL
            .iter()
            .map(|&outcome| (outcome, self.get(outcome)))
    }

    /// The sum over every outcome.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn count(&mut self, outcome: PathOutcome) {
        let count = &mut self.counts[Self::index(outcome)];
        *count = count.saturating_add(1);
    }

    fn index(outcome: PathOutcome) -> usize {
        // Outcomes a later version of ferry-proto adds count as unknown
        // until this list names them.
        PathOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(PathOutcome::ALL.len() - 1)
    }
}

/// The rendezvous state machine.
#[derive(Debug)]
pub struct Rendezvous {
    config: Config,
    stats: Stats,
    rng: StdRng,
    clients: HashMap<ClientId, Client>,
    nameplates: HashMap<u32, Nameplate>,
    /// Rejoin channels and the hidden nameplate each one uses.
    rejoins: HashMap<String, u32>,
    transmits: VecDeque<(ClientId, ServerToClient)>,
    closes: VecDeque<ClientId>,
    /// Wall-clock time, Unix seconds, as the driver last said.
    unix: u64,
    next_ping_id: u64,
    /// Nameplates in use per number of digits (index 0: 1-2 digits, 1: 3
    /// digits, ..., 8: 10 digits), so allocation needs no scan.
    digits_used: [usize; 9],
    /// When the server started ([`Rendezvous::start`]), else the first
    /// time fed in: the origin of the budget tables and of the uptime in
    /// the welcome.
    origin: Option<Instant>,
    /// Failed-claim budget per address bucket.
    claim_failures: RateTable<AddrBucket>,
    /// Bad-code budget per address bucket.
    bad_codes: RateTable<AddrBucket>,
    /// Buckets that may not claim until the given time.
    blocked: HashMap<AddrBucket, Instant>,
    /// Armed deadlines, earliest first.
    timers: BTreeSet<(Instant, Timer)>,
    /// Requests for the cluster directory (only with `Config::clustered`).
    directory: VecDeque<DirectoryRequest>,
    /// Clients to hand to another instance.
    proxies: VecDeque<Proxy>,
}

/// What a deadline in [`Rendezvous::timers`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A client's silence, ping or idle deadline.
    Client(ClientId),
    /// A nameplate's expiry.
    Nameplate(u32),
}

#[derive(Debug)]
struct Client {
    addr: SocketAddr,
    bucket: AddrBucket,
    failed_claims: u32,
    /// When the hello came; with no nameplate, the idle clock runs from it.
    greeted_at: Option<Instant>,
    /// The deadline armed in the timers for this client, if any.
    scheduled: Option<Instant>,
    greeted: bool,
    nameplate: Option<u32>,
    last_heard: Instant,
    next_ping: Instant,
    /// Proxied here by another instance (`handle_remote_connect`).
    remote: bool,
    /// What it waits for from the directory, if anything.
    waiting: Option<cluster::Waiting>,
    /// Its frames that came while it waited.
    held: VecDeque<ClientToServer>,
}

impl Client {
    /// When this client is closed for holding no nameplate, if it holds none.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        match (self.greeted_at, self.nameplate) {
            (Some(greeted), None) => Some(greeted + idle_timeout),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Nobody has taken this side yet.
    Open,
    Here(ClientId),
    /// A client held this side and left; nobody else may take it.
    Gone,
}

#[derive(Debug)]
struct Nameplate {
    /// `[allocator, claimer]`.
    sides: [Side; 2],
    expires: Instant,
    /// Bodies the allocator sent before the claimer came.
    pending: VecDeque<String>,
    /// The rejoin channel this hidden nameplate serves: sides that leave
    /// open up again (the peer may come back), and `claim` cannot reach it.
    rejoin: Option<String>,
    /// Which sides asked for the relay token since the latest join.
    relay_asked: [bool; 2],
    /// The address bucket of the claimer, penalised if the pairing ends
    /// in a bad code.
    claimer_bucket: Option<AddrBucket>,
    /// The expiry timer armed for this nameplate (`expires` may be later).
    armed: Instant,
    /// Both sides asked for the relay token since a join: both paired
    /// (a side asks only after key confirmation), so path reports count.
    paired: bool,
    /// A path report of this pairing was counted.
    path_counted: bool,
}

impl Nameplate {
    /// Which side (0 allocator, 1 claimer) `client` is here, if any.
    fn side_of(&self, client: ClientId) -> Option<usize> {
        self.sides.iter().position(|s| *s == Side::Here(client))
    }
}

impl Rendezvous {
    /// A fresh server state; `rng_seed` drives nameplate choice and relay
    /// tokens. Fine for tests; a server that issues relay tokens should use
    /// [`Rendezvous::with_seed`] with 32 random bytes.
    pub fn new(config: Config, rng_seed: u64) -> Self {
        Self::from_rng(config, StdRng::seed_from_u64(rng_seed))
    }

    /// A fresh server state whose rng is seeded with 32 bytes, so relay
    /// token nonces carry the seed's full entropy.
    pub fn with_seed(config: Config, seed: [u8; 32]) -> Self {
        Self::from_rng(config, StdRng::from_seed(seed))
    }

    fn from_rng(config: Config, rng: StdRng) -> Self {
        let per_minute = f64::from(config.failed_claims_per_minute.max(1));
        let claim_failures =
            RateTable::new(per_minute / 60.0, per_minute, config.max_tracked_buckets);
        // The bad code that reaches the limit is the one refused: the
        // bucket holds one token less than the limit.
        let bad_burst = f64::from(config.bad_codes_per_window.max(1) - 1);
        let bad_codes = RateTable::new(
            bad_burst.max(1.0) / config.bad_code_window.as_secs_f64().max(1.0),
            bad_burst,
            config.max_tracked_buckets,
        );
        Rendezvous {
            digits_used: [0; 9],
            origin: None,
            claim_failures,
            bad_codes,
            blocked: HashMap::new(),
            timers: BTreeSet::new(),
            directory: VecDeque::new(),
            proxies: VecDeque::new(),
            config,
            stats: Stats::default(),
            rng,
            clients: HashMap::new(),
            nameplates: HashMap::new(),
            rejoins: HashMap::new(),
            transmits: VecDeque::new(),
            closes: VecDeque::new(),
            unix: 0,
            next_ping_id: 1,
        }
    }

    /// The wall-clock time, in seconds since the Unix epoch. Relay tokens
    /// carry their expiry in it, so that a relay on another host can check
    /// it; the driver says the time before it feeds anything else.
    pub fn handle_unix_time(&mut self, unix: u64) {
        self.unix = unix;
    }

    /// The server starts serving at `now`: the welcome's uptime counts
    /// from here (a driver calls this once, before the first client).
    pub fn start(&mut self, now: Instant) {
        self.origin = Some(now);
    }

    fn uptime(&mut self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.origin.get_or_insert(now))
    }

    /// A new connection from `peer_addr`. It must say hello within three
    /// heartbeats.
    pub fn handle_connect(&mut self, now: Instant, client: ClientId, peer_addr: SocketAddr) {
        if self.clients.contains_key(&client) {
            debug!(client, "duplicate connect ignored");
            return;
        }
        self.origin.get_or_insert(now);
        self.clients.insert(
            client,
            Client {
                addr: peer_addr,
                bucket: self.config.bucketing.bucket(peer_addr.ip()),
                failed_claims: 0,
                greeted_at: None,
                scheduled: None,
                greeted: false,
                nameplate: None,
                last_heard: now,
                next_ping: now + self.config.heartbeat,
                remote: false,
                waiting: None,
                held: VecDeque::new(),
            },
        );
        self.schedule(client);
    }

    /// A frame from `client`.
    pub fn handle_message(&mut self, now: Instant, client: ClientId, msg: ClientToServer) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.last_heard = now;
        if !state.greeted {
            match msg {
                ClientToServer::Hello { protocol, agent } if protocol == PROTOCOL_VERSION => {
                    state.greeted = true;
                    state.greeted_at = Some(now);
                    debug!(client, addr = %state.addr, agent, "hello");
                    let welcome = ServerToClient::Welcome {
                        protocol: PROTOCOL_VERSION,
                        observed_addr: state.addr.to_string(),
                        heartbeat_secs: heartbeat_secs(self.config.heartbeat),
                        stun_port: self.config.stun_port,
                        stun_second_port: self.config.stun_second_port,
                        relay_addr: self.config.relay_addr.clone(),
                        uptime_secs: Some(self.uptime(now).as_secs()),
                        tls: self.config.tls_offered.then_some(true),
                        relay_tls: (self.config.relay_addr.is_some() && self.config.relay_tls)
                            .then_some(true),
                        relay_sha256: self
                            .config
                            .relay_addr
                            .as_ref()
                            .and(self.config.relay_sha256.clone()),
                    };
                    self.transmits.push_back((client, welcome));
                    // The ping and idle deadlines start now.
                    self.schedule(client);
                }
                ClientToServer::Hello { protocol, .. } => {
                    debug!(client, protocol, "wrong protocol version");
                    let message = format!(
                        "this server speaks ferry protocol {PROTOCOL_VERSION}, you sent {protocol}; \
                         use the same ferry version as the server"
                    );
                    self.fail(now, client, ErrorCode::ProtocolVersion, message);
                }
                _ => {
                    debug!(client, "frame before hello");
                    let message = "the first frame must be hello".to_string();
                    self.fail(now, client, ErrorCode::BadFrame, message);
                }
            }
            return;
        }
        if state.waiting.is_some() {
            self.hold(now, client, msg);
            return;
        }
        match msg {
            ClientToServer::Hello { .. } => {
                debug!(client, "second hello");
                self.fail(now, client, ErrorCode::BadFrame, "hello sent twice".into());
            }
            ClientToServer::Allocate => self.allocate(now, client, None),
            ClientToServer::Reserve { nameplate } => self.allocate(now, client, Some(nameplate)),
            ClientToServer::Claim { nameplate } => self.claim(now, client, nameplate),
            ClientToServer::Rejoin { channel } => self.rejoin(now, client, channel),
            ClientToServer::Send { body } => self.send(client, body),
            ClientToServer::RelayRequest => self.relay_request(client),
            ClientToServer::Release { reason, path } => {
                if let Some(path) = path {
                    self.path_reported(client, path);
                }
                // Only known codes are passed on (the type holds no text);
                // a code this version does not know is dropped.
                let reason = reason.filter(|r| *r != ReleaseReason::Unknown);
                self.remove_client(now, client, reason);
                self.closes.push_back(client);
            }
            ClientToServer::Ping { id } => {
                self.transmits
                    .push_back((client, ServerToClient::Pong { id }));
            }
            ClientToServer::Pong { .. } => {}
            ClientToServer::Relay { .. } => {
                debug!(client, "relay frame on a signalling connection");
                let message = "relay must be the first frame of its own connection".to_string();
                self.fail(now, client, ErrorCode::BadFrame, message);
            }
        }
    }

    /// The driver could not decode a frame from `client`: answer with an
    /// error and close the connection.
    pub fn handle_frame_error(&mut self, now: Instant, client: ClientId, error: &FrameError) {
        if !self.clients.contains_key(&client) {
            return;
        }
        debug!(client, %error, "bad frame");
        let (code, message) = match error {
            FrameError::FrameTooLarge { limit } => (
                ErrorCode::FrameTooLarge,
                format!("frames are limited to {limit} bytes"),
            ),
            other => (
                ErrorCode::BadFrame,
                format!("could not read your frame: {other}"),
            ),
        };
        self.fail(now, client, code, message);
    }

    /// The connection of `client` closed.
    pub fn handle_disconnect(&mut self, now: Instant, client: ClientId) {
        self.remove_client(now, client, Some(PEER_DISCONNECTED));
    }

    /// Time passed: send pings, drop silent clients, expire nameplates.
    ///
    /// Only the timers that are due are looked at (a [`BTreeSet`] of
    /// deadlines), never every client: a client's timer is re-armed
    /// lazily, when it fires, from its latest state.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Client(client) => self.client_timer(now, client, at),
                Timer::Nameplate(number) => self.nameplate_timer(now, number),
            }
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<(ClientId, ServerToClient)> {
        self.transmits.pop_front()
    }

    /// The next client to disconnect, once its queued frames are sent.
    pub fn poll_close(&mut self) -> Option<ClientId> {
        self.closes.pop_front()
    }

    /// When [`Rendezvous::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// How many nameplates exist.
    pub fn nameplate_count(&self) -> usize {
        self.nameplates.len()
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// What it did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends an error and closes `client`.
    fn fail(&mut self, now: Instant, client: ClientId, code: ErrorCode, message: String) {
        self.error(client, code, message);
        let reason = match code {
            ErrorCode::Expired => Some(ReleaseReason::Expired),
            _ => Some(PEER_DISCONNECTED),
        };
        self.remove_client(now, client, reason);
        self.closes.push_back(client);
    }

    fn error(&mut self, client: ClientId, code: ErrorCode, message: String) {
        self.transmits
            .push_back((client, ServerToClient::Error { code, message }));
    }
}

/// Which `digits_used` slot counts nameplate `number`.
fn digits_index(number: u32) -> usize {
    let mut index = 0;
    let mut high: u64 = 99;
    while u64::from(number) > high && index < 8 {
        index += 1;
        high = high * 10 + 9;
    }
    index
}

fn heartbeat_secs(heartbeat: Duration) -> u32 {
    let secs = heartbeat.as_secs() + u64::from(heartbeat.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

mod budgets;
pub mod cluster;
mod nameplates;
mod timers;

#[cfg(test)]
mod tests;
