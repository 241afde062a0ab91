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
//!   nameplate freed when no side is left in it; reason "bad-code" burns it
//!   at once (both sides closed); nameplates expire after the TTL.
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_limits::{AddrBucket, Bucketing, RateTable};
use ferry_proto::signal::{
    ClientToServer, ErrorCode, FrameError, PROTOCOL_VERSION, ReleaseReason, ServerToClient,
};
use ferry_relay::TokenKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

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
            bucketing: Bucketing::default(),
            failed_claims_per_connection: 3,
            failed_claims_per_minute: 10,
            claim_block: Duration::from_secs(60),
            bad_codes_per_window: 3,
            bad_code_window: Duration::from_secs(600),
            bad_code_block: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(30),
            max_tracked_buckets: 100_000,
        }
    }
}

/// The rendezvous state machine.
#[derive(Debug)]
pub struct Rendezvous {
    config: Config,
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
            config,
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
            ClientToServer::Release { reason } => {
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

    fn client_timer(&mut self, now: Instant, client: ClientId, at: Instant) {
        let silence = self.config.heartbeat * MISSED_HEARTBEATS;
        let idle_timeout = self.config.idle_timeout;
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        if state.scheduled != Some(at) {
            return;
        }
        state.scheduled = None;
        if now >= state.last_heard + silence {
            debug!(
                client,
                "client silent for {MISSED_HEARTBEATS} heartbeats, dropping"
            );
            self.remove_client(now, client, Some(PEER_VANISHED));
            self.closes.push_back(client);
            return;
        }
        if state.idle_deadline(idle_timeout).is_some_and(|d| now >= d) {
            debug!(client, "client held no nameplate for too long; closing");
            let message = format!(
                "you held no nameplate for {} s; connect again when you send or receive",
                idle_timeout.as_secs()
            );
            self.fail(now, client, ErrorCode::Idle, message);
            return;
        }
        if state.greeted && now >= state.next_ping {
            state.next_ping = now + self.config.heartbeat;
            let ping = ServerToClient::Ping {
                id: self.next_ping_id,
            };
            self.next_ping_id += 1;
            self.transmits.push_back((client, ping));
        }
        self.schedule(client);
    }

    fn nameplate_timer(&mut self, now: Instant, number: u32) {
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        if now < nameplate.expires {
            // Pushed back (a rejoin) since this timer was armed.
            nameplate.armed = nameplate.expires;
            self.timers
                .insert((nameplate.expires, Timer::Nameplate(number)));
            return;
        }
        let Some(nameplate) = self.remove_nameplate(number) else {
            return;
        };
        info!(nameplate = number, "nameplate expired");
        let minutes = self.config.nameplate_ttl.as_secs() / 60;
        for side in nameplate.sides {
            if let Side::Here(client) = side {
                if let Some(state) = self.clients.get_mut(&client) {
                    state.nameplate = None;
                }
                let message = format!(
                    "nameplate {number} expired after {minutes} minutes; start again with a new code"
                );
                self.fail(now, client, ErrorCode::Expired, message);
            }
        }
    }

    /// Arms `client`'s timer for its next deadline (silence, ping, idle),
    /// unless one at or before it is armed already.
    fn schedule(&mut self, client: ClientId) {
        let silence = self.config.heartbeat * MISSED_HEARTBEATS;
        let idle_timeout = self.config.idle_timeout;
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        let mut due = state.last_heard + silence;
        if state.greeted {
            due = due.min(state.next_ping);
        }
        if let Some(idle) = state.idle_deadline(idle_timeout) {
            due = due.min(idle);
        }
        match state.scheduled {
            Some(armed) if armed <= due => {}
            armed => {
                if let Some(armed) = armed {
                    self.timers.remove(&(armed, Timer::Client(client)));
                }
                state.scheduled = Some(due);
                self.timers.insert((due, Timer::Client(client)));
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

    /// Allocates a fresh nameplate, or `wanted` when the user chose the code.
    fn allocate(&mut self, now: Instant, client: ClientId, wanted: Option<u32>) {
        if self.refuse_second_nameplate(client) {
            return;
        }
        if self.refuse_when_full(client) {
            return;
        }
        if let Some(number) = wanted {
            if number == 0 || self.nameplates.contains_key(&number) {
                let message = format!(
                    "nameplate {number} is in use or invalid; choose another code, or let ferry pick one"
                );
                self.error(client, ErrorCode::NameplateTaken, message);
                // Probing which nameplates exist costs like a failed claim.
                self.claim_failed(now, client);
                return;
            }
        }
        let Some(number) = wanted.or_else(|| self.pick_nameplate()) else {
            self.error(
                client,
                ErrorCode::ServerFull,
                "no free nameplate; try again later".into(),
            );
            return;
        };
        info!(nameplate = number, client, "nameplate allocated");
        self.open_nameplate(now, client, number, None);
    }

    /// Whether `client` already holds a nameplate (then it is told so).
    fn refuse_second_nameplate(&mut self, client: ClientId) -> bool {
        let holds = self.nameplate_of(client).is_some();
        if holds {
            let message = "you already hold a nameplate".into();
            self.error(client, ErrorCode::AlreadyClaimed, message);
        }
        holds
    }

    /// Whether there is no room for another nameplate (then `client` is
    /// told so).
    fn refuse_when_full(&mut self, client: ClientId) -> bool {
        let full = self.nameplates.len() >= self.config.max_nameplates;
        if full {
            debug!(client, "no room for another nameplate");
            let message = "the server has too many transfers waiting; try again later".into();
            self.error(client, ErrorCode::ServerFull, message);
        }
        full
    }

    /// Creates nameplate `number` with `client` on the first side, waiting
    /// for the second, and answers `allocated`.
    fn open_nameplate(
        &mut self,
        now: Instant,
        client: ClientId,
        number: u32,
        rejoin: Option<String>,
    ) {
        if let Some(channel) = &rejoin {
            self.rejoins.insert(channel.clone(), number);
        }
        self.digits_used[digits_index(number)] += 1;
        self.nameplates.insert(
            number,
            Nameplate {
                sides: [Side::Here(client), Side::Open],
                expires: now + self.config.nameplate_ttl,
                pending: VecDeque::new(),
                rejoin,
                relay_asked: [false; 2],
                claimer_bucket: None,
                armed: now + self.config.nameplate_ttl,
            },
        );
        self.timers
            .insert((now + self.config.nameplate_ttl, Timer::Nameplate(number)));
        if let Some(state) = self.clients.get_mut(&client) {
            state.nameplate = Some(number);
        }
        self.transmits
            .push_back((client, ServerToClient::Allocated { nameplate: number }));
    }

    fn claim(&mut self, now: Instant, client: ClientId, number: u32) {
        if self.refuse_second_nameplate(client) {
            return;
        }
        if let Some(wait) = self.blocked_for(now, client) {
            debug!(client, "claim from a blocked address bucket");
            let message = format!(
                "too many failed claims or wrong codes from your address; wait {} s, then check the code and try again",
                wait.as_secs().max(1)
            );
            self.error(client, ErrorCode::RateLimited, message);
            self.claim_failed(now, client);
            return;
        }
        let bucket = self.clients.get(&client).map(|c| c.bucket);
        let Some(nameplate) = self
            .nameplates
            .get_mut(&number)
            .filter(|n| n.rejoin.is_none())
        else {
            let message = format!(
                "no transfer is waiting under {number}; check the code or ask for a new one"
            );
            self.error(client, ErrorCode::UnknownNameplate, message);
            self.claim_failed(now, client);
            return;
        };
        if nameplate.sides[1] != Side::Open {
            let message = format!(
                "nameplate {number} is in use by two peers already; ask the sender for a new code"
            );
            self.error(client, ErrorCode::NameplateTaken, message);
            self.claim_failed(now, client);
            return;
        }
        nameplate.sides[1] = Side::Here(client);
        nameplate.claimer_bucket = bucket;
        info!(nameplate = number, client, "nameplate claimed");
        self.join(client, number, 1);
    }

    /// `client` has just taken side `index` of nameplate `number`, whose
    /// other side is present (or gone): tell both, draw the relay token,
    /// deliver what waited.
    fn join(&mut self, client: ClientId, number: u32, index: usize) {
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let other = nameplate.sides[1 - index];
        let pending = std::mem::take(&mut nameplate.pending);
        nameplate.relay_asked = [false; 2];
        if let Some(state) = self.clients.get_mut(&client) {
            state.nameplate = Some(number);
        }
        // No relay token yet: a claimer who guessed the nameplate but not
        // the code never pairs, so it never gets one (see relay_request).
        self.transmits.push_back((
            client,
            ServerToClient::Claimed {
                nameplate: number,
                relay_token: None,
            },
        ));
        if let Side::Here(other) = other {
            self.transmits
                .push_back((other, ServerToClient::PeerJoined { relay_token: None }));
        }
        for body in pending {
            self.transmits
                .push_back((client, ServerToClient::Message { body }));
        }
    }

    /// Meets the peer of an earlier transfer on a secret channel.
    fn rejoin(&mut self, now: Instant, client: ClientId, channel: String) {
        if self.refuse_second_nameplate(client) {
            return;
        }
        let valid = (32..=64).contains(&channel.len())
            && channel
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            let message = "a rejoin channel is 32 to 64 lowercase hex digits".to_string();
            self.fail(now, client, ErrorCode::BadFrame, message);
            return;
        }
        if let Some(&number) = self.rejoins.get(&channel) {
            let Some(nameplate) = self.nameplates.get_mut(&number) else {
                return;
            };
            let Some(index) = nameplate.sides.iter().position(|s| *s == Side::Open) else {
                let message = "two peers already use this rejoin channel".to_string();
                self.error(client, ErrorCode::NameplateTaken, message);
                return;
            };
            nameplate.sides[index] = Side::Here(client);
            nameplate.expires = now + self.config.nameplate_ttl;
            info!(nameplate = number, client, "peer rejoined");
            self.join(client, number, index);
            return;
        }
        if self.refuse_when_full(client) {
            return;
        }
        // Hidden nameplates live above the range codes use in practice;
        // `claim` refuses them anyway.
        let number = loop {
            let candidate = self.rng.gen_range(1_000_000_000..=u32::MAX);
            if !self.nameplates.contains_key(&candidate) {
                break candidate;
            }
        };
        info!(nameplate = number, client, "waiting on a rejoin channel");
        self.open_nameplate(now, client, number, Some(channel));
    }

    /// `client` asks for the relay token: both sides get it once both are
    /// here and both asked since the latest join (so both paired).
    fn relay_request(&mut self, client: ClientId) {
        let Some(number) = self.nameplate_of(client) else {
            let message = "claim or allocate a nameplate before asking for a relay token".into();
            self.error(client, ErrorCode::NotClaimed, message);
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let Some(index) = nameplate.side_of(client) else {
            return;
        };
        nameplate.relay_asked[index] = true;
        let [Side::Here(first), Side::Here(second)] = nameplate.sides else {
            return;
        };
        if nameplate.relay_asked != [true, true] {
            return;
        }
        nameplate.relay_asked = [false; 2];
        let relay_token = self.relay_token(number);
        debug!(
            nameplate = number,
            "relay token issued to a paired nameplate"
        );
        for side in [first, second] {
            self.transmits.push_back((
                side,
                ServerToClient::RelayToken {
                    relay_token: relay_token.clone(),
                },
            ));
        }
    }

    /// A fresh relay token for nameplate `number`, when the server issues them.
    fn relay_token(&mut self, number: u32) -> Option<String> {
        self.config.relay_key.as_ref().map(|key| {
            let expires = ferry_relay::token::expiry(self.unix, self.config.relay_token_ttl);
            let token = key.issue(number, expires, self.rng.r#gen());
            ferry_relay::token_to_hex(&token)
        })
    }

    fn send(&mut self, client: ClientId, body: String) {
        let Some(number) = self.nameplate_of(client) else {
            let message = "claim or allocate a nameplate before sending".into();
            self.error(client, ErrorCode::NotClaimed, message);
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let other = if nameplate.sides[0] == Side::Here(client) {
            nameplate.sides[1]
        } else {
            nameplate.sides[0]
        };
        match other {
            Side::Here(other) => {
                self.transmits
                    .push_back((other, ServerToClient::Message { body }));
            }
            Side::Open if nameplate.pending.len() < MAX_PENDING_MESSAGES => {
                nameplate.pending.push_back(body);
            }
            Side::Open => {
                debug!(client, "too many messages for an absent peer");
                let message = "too many messages are waiting for the other side to join".into();
                self.error(client, ErrorCode::QueueFull, message);
            }
            Side::Gone => debug!(client, "message for a peer that left dropped"),
        }
    }

    /// How long `client`'s address bucket may not claim, if it is blocked.
    fn blocked_for(&mut self, now: Instant, client: ClientId) -> Option<Duration> {
        let bucket = self.clients.get(&client)?.bucket;
        let until = *self.blocked.get(&bucket)?;
        if now >= until {
            self.blocked.remove(&bucket);
            return None;
        }
        Some(until - now)
    }

    /// Blocks `bucket`'s claims until `until` (a later block wins).
    fn block(&mut self, now: Instant, bucket: AddrBucket, until: Instant) {
        if self.blocked.len() >= self.config.max_tracked_buckets {
            self.blocked.retain(|_, t| *t > now);
            if self.blocked.len() >= self.config.max_tracked_buckets {
                debug!(%bucket, "block table full; not blocking");
                return;
            }
        }
        let entry = self.blocked.entry(bucket).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Charges a failed claim to `client` and its address bucket: the
    /// connection closes after a few, the bucket is blocked for a while
    /// beyond its budget.
    fn claim_failed(&mut self, now: Instant, client: ClientId) {
        let since = now.saturating_duration_since(*self.origin.get_or_insert(now));
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.failed_claims += 1;
        let failed = state.failed_claims;
        let bucket = state.bucket;
        if !self.claim_failures.allow(&bucket, since) {
            debug!(client, %bucket, "address bucket over its failed-claim budget");
            self.block(now, bucket, now + self.config.claim_block);
        }
        if failed >= self.config.failed_claims_per_connection {
            debug!(client, failed, "too many failed claims; closing");
            let message = format!(
                "{failed} failed claims on this connection; check the code, then try again"
            );
            self.fail(now, client, ErrorCode::RateLimited, message);
        }
    }

    /// A pairing whose claimer came from `bucket` ended in a wrong code.
    fn bad_code_from(&mut self, now: Instant, bucket: AddrBucket) {
        let since = now.saturating_duration_since(*self.origin.get_or_insert(now));
        if !self.bad_codes.allow(&bucket, since) {
            debug!(%bucket, "address bucket over its bad-code budget");
            self.block(now, bucket, now + self.config.bad_code_block);
        }
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

    fn nameplate_of(&self, client: ClientId) -> Option<u32> {
        self.clients.get(&client).and_then(|c| c.nameplate)
    }

    /// Forgets `client` and takes it out of its nameplate; the other side
    /// hears `reason`.
    fn remove_client(&mut self, now: Instant, client: ClientId, reason: Option<ReleaseReason>) {
        let Some(state) = self.clients.remove(&client) else {
            return;
        };
        if let Some(armed) = state.scheduled {
            self.timers.remove(&(armed, Timer::Client(client)));
        }
        let Some(number) = state.nameplate else {
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let Some(index) = nameplate.side_of(client) else {
            return;
        };
        let rejoin = nameplate.rejoin.is_some();
        nameplate.sides[index] = if rejoin { Side::Open } else { Side::Gone };
        let other = nameplate.sides[1 - index];
        let burn = reason == Some(BAD_CODE);
        let claimer_bucket = nameplate.claimer_bucket;
        if rejoin {
            if let Side::Here(other) = other {
                self.transmits
                    .push_back((other, ServerToClient::PeerLeft { reason }));
            } else {
                self.remove_nameplate(number);
                debug!(nameplate = number, "rejoin channel closed");
            }
            return;
        }
        if let Side::Here(other) = other {
            self.transmits
                .push_back((other, ServerToClient::PeerLeft { reason }));
            if burn {
                // The other side learns the code was wrong, then leaves too.
                if let Some(gone) = self.clients.remove(&other) {
                    if let Some(armed) = gone.scheduled {
                        self.timers.remove(&(armed, Timer::Client(other)));
                    }
                }
                self.closes.push_back(other);
            } else {
                return;
            }
        }
        self.remove_nameplate(number);
        if burn {
            if let Some(bucket) = claimer_bucket {
                self.bad_code_from(now, bucket);
            }
            info!(nameplate = number, "nameplate burnt after a wrong code");
        } else {
            info!(nameplate = number, "nameplate freed");
        }
    }

    /// Forgets a nameplate (and its rejoin channel).
    fn remove_nameplate(&mut self, number: u32) -> Option<Nameplate> {
        let nameplate = self.nameplates.remove(&number)?;
        self.timers
            .remove(&(nameplate.armed, Timer::Nameplate(number)));
        let used = &mut self.digits_used[digits_index(number)];
        *used = used.saturating_sub(1);
        if let Some(channel) = &nameplate.rejoin {
            self.rejoins.remove(channel);
        }
        Some(nameplate)
    }

    /// A free number, at random, from the smallest range `1..=99`,
    /// `1..=999`, ... that is less than half full, so that a guess hits a
    /// nameplate in use at most half the time, and codes stay short.
    /// Counts per number of digits are kept, so this needs no scan.
    fn pick_nameplate(&mut self) -> Option<u32> {
        let mut high: u32 = 99;
        let mut used = 0;
        for digits in 0..self.digits_used.len() - 1 {
            used += self.digits_used[digits];
            if used * 2 < high as usize {
                // Less than half full: 64 misses in a row are a 2^-64 event.
                for _ in 0..64 {
                    let candidate = self.rng.gen_range(1..=high);
                    if !self.nameplates.contains_key(&candidate) {
                        return Some(candidate);
                    }
                }
            }
            high = high.saturating_mul(10).saturating_add(9);
        }
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], port))
    }

    struct Harness {
        core: Rendezvous,
        now: Instant,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            Harness {
                core: Rendezvous::new(config, 7),
                now: Instant::now(),
            }
        }

        fn greet(&mut self, client: ClientId) {
            self.core
                .handle_connect(self.now, client, addr(40000 + client as u16));
            self.msg(
                client,
                ClientToServer::Hello {
                    protocol: PROTOCOL_VERSION,
                    agent: "test".into(),
                },
            );
            let out = self.drain();
            assert_eq!(
                out,
                vec![(
                    client,
                    ServerToClient::Welcome {
                        protocol: PROTOCOL_VERSION,
                        observed_addr: format!("198.51.100.7:{}", 40000 + client as u16),
                        heartbeat_secs: 5,
                        stun_port: None,
                        stun_second_port: None,
                        relay_addr: None,
                        uptime_secs: Some(0),
                    }
                )]
            );
        }

        fn msg(&mut self, client: ClientId, msg: ClientToServer) {
            self.core.handle_message(self.now, client, msg);
        }

        fn drain(&mut self) -> Vec<(ClientId, ServerToClient)> {
            std::iter::from_fn(|| self.core.poll_transmit()).collect()
        }

        fn closes(&mut self) -> Vec<ClientId> {
            std::iter::from_fn(|| self.core.poll_close()).collect()
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.core.handle_timeout(self.now);
        }

        /// Allocates with client 1 and claims with client 2.
        fn paired(&mut self) -> u32 {
            self.greet(1);
            self.greet(2);
            self.msg(1, ClientToServer::Allocate);
            let [(1, ServerToClient::Allocated { nameplate })] = self.drain()[..] else {
                panic!("no allocation");
            };
            self.msg(2, ClientToServer::Claim { nameplate });
            assert_eq!(
                self.drain(),
                vec![
                    (
                        2,
                        ServerToClient::Claimed {
                            nameplate,
                            relay_token: None
                        }
                    ),
                    (1, ServerToClient::PeerJoined { relay_token: None })
                ]
            );
            nameplate
        }
    }

    fn error_code(out: &[(ClientId, ServerToClient)]) -> Vec<(ClientId, ErrorCode)> {
        out.iter()
            .filter_map(|(c, m)| match m {
                ServerToClient::Error { code, .. } => Some((*c, *code)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn allocate_claim_forward() {
        let mut h = Harness::new(Config::default());
        let n = h.paired();
        assert!((1..=99).contains(&n));
        h.msg(
            1,
            ClientToServer::Send {
                body: "to receiver".into(),
            },
        );
        h.msg(
            2,
            ClientToServer::Send {
                body: "to sender".into(),
            },
        );
        assert_eq!(
            h.drain(),
            vec![
                (
                    2,
                    ServerToClient::Message {
                        body: "to receiver".into()
                    }
                ),
                (
                    1,
                    ServerToClient::Message {
                        body: "to sender".into()
                    }
                ),
            ]
        );
        h.msg(1, ClientToServer::Ping { id: 9 });
        assert_eq!(h.drain(), vec![(1, ServerToClient::Pong { id: 9 })]);
    }

    #[test]
    fn messages_before_claim_are_queued_and_bounded() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.greet(2);
        h.msg(1, ClientToServer::Allocate);
        let [(1, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!()
        };
        for i in 0..MAX_PENDING_MESSAGES {
            h.msg(
                1,
                ClientToServer::Send {
                    body: format!("m{i}"),
                },
            );
        }
        assert!(h.drain().is_empty());
        h.msg(
            1,
            ClientToServer::Send {
                body: "overflow".into(),
            },
        );
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::QueueFull)]);
        h.msg(2, ClientToServer::Claim { nameplate });
        let out = h.drain();
        assert_eq!(out.len(), 2 + MAX_PENDING_MESSAGES);
        assert_eq!(out[2], (2, ServerToClient::Message { body: "m0".into() }));
    }

    #[test]
    fn third_claimant_is_refused() {
        let mut h = Harness::new(Config::default());
        let n = h.paired();
        h.greet(3);
        h.msg(3, ClientToServer::Claim { nameplate: n });
        let out = h.drain();
        assert_eq!(error_code(&out), vec![(3, ErrorCode::NameplateTaken)]);
        let ServerToClient::Error { message, .. } = &out[0].1 else {
            panic!()
        };
        assert!(message.contains("in use by two peers"), "{message}");
        // The pair is undisturbed.
        h.msg(1, ClientToServer::Send { body: "x".into() });
        assert_eq!(
            h.drain(),
            vec![(2, ServerToClient::Message { body: "x".into() })]
        );
    }

    #[test]
    fn unknown_nameplate() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.msg(1, ClientToServer::Claim { nameplate: 4242 });
        let out = h.drain();
        assert_eq!(error_code(&out), vec![(1, ErrorCode::UnknownNameplate)]);
        assert!(
            h.closes().is_empty(),
            "a typo should not cost the connection"
        );
    }

    #[test]
    fn release_frees_when_both_left() {
        let mut h = Harness::new(Config::default());
        let n = h.paired();
        h.msg(
            2,
            ClientToServer::Release {
                reason: Some(ReleaseReason::Done),
            },
        );
        assert_eq!(
            h.drain(),
            vec![(
                1,
                ServerToClient::PeerLeft {
                    reason: Some(ReleaseReason::Done)
                }
            )]
        );
        assert_eq!(h.closes(), vec![2]);
        assert_eq!(h.core.nameplate_count(), 1, "the sender is still there");
        // Nobody else can take the freed side.
        h.greet(3);
        h.msg(3, ClientToServer::Claim { nameplate: n });
        assert_eq!(error_code(&h.drain()), vec![(3, ErrorCode::NameplateTaken)]);
        h.core.handle_disconnect(h.now, 1);
        assert!(h.drain().is_empty());
        assert_eq!(h.core.nameplate_count(), 0);
        h.msg(3, ClientToServer::Claim { nameplate: n });
        assert_eq!(
            error_code(&h.drain()),
            vec![(3, ErrorCode::UnknownNameplate)]
        );
    }

    #[test]
    fn allocator_leaving_alone_frees() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.msg(1, ClientToServer::Allocate);
        h.drain();
        h.msg(1, ClientToServer::Release { reason: None });
        assert_eq!(h.core.nameplate_count(), 0);
    }

    #[test]
    fn bad_code_burns_at_once() {
        let mut h = Harness::new(Config::default());
        let n = h.paired();
        h.msg(
            2,
            ClientToServer::Release {
                reason: Some(BAD_CODE),
            },
        );
        assert_eq!(
            h.drain(),
            vec![(
                1,
                ServerToClient::PeerLeft {
                    reason: Some(BAD_CODE)
                }
            )]
        );
        let mut closes = h.closes();
        closes.sort();
        assert_eq!(closes, vec![1, 2]);
        assert_eq!(h.core.nameplate_count(), 0);
        assert_eq!(h.core.client_count(), 0);
        h.greet(3);
        h.msg(3, ClientToServer::Claim { nameplate: n });
        assert_eq!(
            error_code(&h.drain()),
            vec![(3, ErrorCode::UnknownNameplate)]
        );
    }

    #[test]
    fn nameplates_expire_after_ttl() {
        let config = Config {
            nameplate_ttl: Duration::from_secs(60),
            ..Config::default()
        };
        let mut h = Harness::new(config);
        h.greet(1);
        h.msg(1, ClientToServer::Allocate);
        h.drain();
        let deadline = h.core.poll_timeout().unwrap();
        assert!(deadline <= h.now + Duration::from_secs(5));
        // Keep the client alive with pongs while time passes.
        for _ in 0..11 {
            h.advance(Duration::from_secs(5));
            h.msg(1, ClientToServer::Pong { id: 0 });
        }
        assert_eq!(h.core.nameplate_count(), 1);
        h.drain();
        h.advance(Duration::from_secs(5));
        assert_eq!(h.core.nameplate_count(), 0);
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::Expired)]);
        assert_eq!(h.closes(), vec![1]);
    }

    #[test]
    fn silent_client_is_dropped_and_peer_told() {
        let mut h = Harness::new(Config::default());
        h.paired();
        for _ in 0..2 {
            h.advance(Duration::from_secs(5));
            let pings = h.drain();
            assert_eq!(pings.len(), 2, "both are pinged: {pings:?}");
            h.msg(1, ClientToServer::Pong { id: 0 });
        }
        // Client 2 never answered: after 3 heartbeats it is gone.
        let next = h.core.poll_timeout().unwrap();
        h.now = next;
        h.core.handle_timeout(h.now);
        let out = h.drain();
        assert!(
            out.contains(&(
                1,
                ServerToClient::PeerLeft {
                    reason: Some(PEER_VANISHED)
                }
            )),
            "{out:?}"
        );
        assert_eq!(h.closes(), vec![2]);
        assert_eq!(h.core.client_count(), 1);
    }

    #[test]
    fn messages_before_hello_close() {
        let mut h = Harness::new(Config::default());
        h.core.handle_connect(h.now, 1, addr(1));
        h.msg(1, ClientToServer::Allocate);
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::BadFrame)]);
        assert_eq!(h.closes(), vec![1]);
        // Later frames from the closed client are ignored.
        h.msg(1, ClientToServer::Allocate);
        assert!(h.drain().is_empty());
    }

    #[test]
    fn protocol_version_mismatch_closes() {
        let mut h = Harness::new(Config::default());
        h.core.handle_connect(h.now, 1, addr(1));
        h.msg(
            1,
            ClientToServer::Hello {
                protocol: 99,
                agent: "future".into(),
            },
        );
        let out = h.drain();
        assert_eq!(error_code(&out), vec![(1, ErrorCode::ProtocolVersion)]);
        assert_eq!(h.closes(), vec![1]);
    }

    #[test]
    fn client_without_hello_times_out() {
        let mut h = Harness::new(Config::default());
        h.core.handle_connect(h.now, 1, addr(1));
        assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(15)));
        h.advance(Duration::from_secs(15));
        assert_eq!(h.closes(), vec![1]);
    }

    #[test]
    fn frame_errors_close() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.core
            .handle_frame_error(h.now, 1, &FrameError::FrameTooLarge { limit: 65536 });
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::FrameTooLarge)]);
        assert_eq!(h.closes(), vec![1]);
    }

    #[test]
    fn send_without_nameplate_and_double_allocate() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.msg(1, ClientToServer::Send { body: "x".into() });
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::NotClaimed)]);
        h.msg(1, ClientToServer::Allocate);
        h.drain();
        h.msg(1, ClientToServer::Allocate);
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::AlreadyClaimed)]);
    }

    #[test]
    fn reserve_takes_the_chosen_nameplate_once() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.greet(2);
        h.greet(3);
        h.msg(1, ClientToServer::Reserve { nameplate: 4242 });
        assert_eq!(
            h.drain(),
            vec![(1, ServerToClient::Allocated { nameplate: 4242 })]
        );
        h.msg(2, ClientToServer::Reserve { nameplate: 4242 });
        assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::NameplateTaken)]);
        h.msg(2, ClientToServer::Reserve { nameplate: 0 });
        assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::NameplateTaken)]);
        h.msg(3, ClientToServer::Claim { nameplate: 4242 });
        assert_eq!(
            h.drain(),
            vec![
                (
                    3,
                    ServerToClient::Claimed {
                        nameplate: 4242,
                        relay_token: None
                    }
                ),
                (1, ServerToClient::PeerJoined { relay_token: None })
            ]
        );
    }

    #[test]
    fn allocation_stays_short_and_grows_at_half_occupancy() {
        let config = Config {
            max_nameplates: 200,
            ..Config::default()
        };
        let mut h = Harness::new(config);
        let mut numbers = Vec::new();
        for client in 1..=150 {
            h.greet(client);
            h.msg(client, ClientToServer::Allocate);
            match h.drain()[..] {
                [(_, ServerToClient::Allocated { nameplate })] => numbers.push(nameplate),
                ref other => panic!("{other:?}"),
            }
        }
        // While fewer than half of 1-99 are in use, codes use two digits.
        assert!(numbers[..50].iter().all(|n| (1..=99).contains(n)));
        // Then 1-999, never more than half of the 99 small ones taken.
        assert!(numbers[50..].iter().all(|n| (1..=999).contains(n)));
        assert!(numbers[50..].iter().any(|n| *n >= 100));
        let mut distinct = numbers.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), numbers.len());
        // Random, not sequential.
        assert_ne!(numbers[..10], (1..=10).collect::<Vec<u32>>()[..]);
        assert_eq!(digits_index(99), 0);
        assert_eq!(digits_index(100), 1);
        assert_eq!(digits_index(u32::MAX), 8);
    }

    /// Connects and greets `client` from `ip`.
    fn greet_from(h: &mut Harness, client: ClientId, ip: [u8; 4]) {
        h.core
            .handle_connect(h.now, client, SocketAddr::from((ip, 40000)));
        h.msg(
            client,
            ClientToServer::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "test".into(),
            },
        );
        h.drain();
    }

    #[test]
    fn failed_claims_close_the_connection_and_block_the_address() {
        let mut h = Harness::new(Config::default());
        // Three misses on one connection: closed, with a clear error.
        greet_from(&mut h, 1, [203, 0, 113, 1]);
        for n in 1..=3 {
            h.msg(1, ClientToServer::Claim { nameplate: n });
        }
        let out = h.drain();
        assert_eq!(
            error_code(&out),
            vec![
                (1, ErrorCode::UnknownNameplate),
                (1, ErrorCode::UnknownNameplate),
                (1, ErrorCode::UnknownNameplate),
                (1, ErrorCode::RateLimited)
            ]
        );
        assert_eq!(h.closes(), vec![1]);
        // Seven more misses from the same address on fresh connections
        // use up its ten a minute; the eleventh blocks the address.
        let mut id = 2;
        for _ in 0..8 {
            greet_from(&mut h, id, [203, 0, 113, 1]);
            h.msg(id, ClientToServer::Claim { nameplate: 50 });
            id += 1;
        }
        h.drain();
        // A genuine sender now allocates: the blocked address cannot
        // claim it even with the right number, another address can.
        greet_from(&mut h, 100, [198, 51, 100, 1]);
        h.msg(100, ClientToServer::Allocate);
        let [(100, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!("no allocation");
        };
        greet_from(&mut h, id, [203, 0, 113, 1]);
        h.msg(id, ClientToServer::Claim { nameplate });
        let out = h.drain();
        assert_eq!(error_code(&out), vec![(id, ErrorCode::RateLimited)]);
        let ServerToClient::Error { message, .. } = &out[0].1 else {
            panic!()
        };
        assert!(message.contains("wait"), "{message}");
        greet_from(&mut h, 101, [198, 51, 100, 2]);
        h.msg(101, ClientToServer::Claim { nameplate });
        assert!(matches!(
            h.drain()[0],
            (101, ServerToClient::Claimed { .. })
        ));
        // After the block the address may claim again.
        h.now += Duration::from_secs(61);
        h.msg(id, ClientToServer::Claim { nameplate: 4242 });
        assert_eq!(
            error_code(&h.drain()),
            vec![(id, ErrorCode::UnknownNameplate)]
        );
    }

    #[test]
    fn probing_with_reserve_costs_like_a_failed_claim() {
        let mut h = Harness::new(Config::default());
        greet_from(&mut h, 1, [198, 51, 100, 1]);
        h.msg(1, ClientToServer::Reserve { nameplate: 77 });
        h.drain();
        greet_from(&mut h, 2, [203, 0, 113, 1]);
        for _ in 0..3 {
            h.msg(2, ClientToServer::Reserve { nameplate: 77 });
        }
        let out = h.drain();
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(matches!(
            out[3],
            (
                2,
                ServerToClient::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        ));
        assert_eq!(h.closes(), vec![2]);
    }

    #[test]
    fn three_bad_codes_block_the_claimers_address_for_ten_minutes() {
        let mut h = Harness::new(Config::default());
        let mut id = 1;
        let guesser = [203, 0, 113, 9];
        for round in 0..3 {
            greet_from(&mut h, id, [198, 51, 100, 1]);
            h.msg(id, ClientToServer::Allocate);
            let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
                panic!("no allocation");
            };
            greet_from(&mut h, id + 1, guesser);
            h.msg(id + 1, ClientToServer::Claim { nameplate });
            assert!(
                matches!(h.drain()[0], (_, ServerToClient::Claimed { .. })),
                "round {round}: the guesser may still claim"
            );
            // The sender finds the code wrong and burns the nameplate.
            h.msg(
                id,
                ClientToServer::Release {
                    reason: Some(BAD_CODE),
                },
            );
            h.drain();
            h.closes();
            id += 2;
        }
        greet_from(&mut h, id, [198, 51, 100, 1]);
        h.msg(id, ClientToServer::Allocate);
        let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!("no allocation");
        };
        greet_from(&mut h, id + 1, guesser);
        h.msg(id + 1, ClientToServer::Claim { nameplate });
        assert_eq!(
            error_code(&h.drain()),
            vec![(id + 1, ErrorCode::RateLimited)]
        );
        h.now += Duration::from_secs(9 * 60);
        h.msg(id + 1, ClientToServer::Claim { nameplate });
        assert_eq!(
            error_code(&h.drain()),
            vec![(id + 1, ErrorCode::RateLimited)]
        );
        h.now += Duration::from_secs(61);
        greet_from(&mut h, id + 2, guesser);
        h.msg(id + 2, ClientToServer::Claim { nameplate });
        assert!(matches!(h.drain()[0], (_, ServerToClient::Claimed { .. })));
    }

    #[test]
    fn greeted_clients_without_a_nameplate_are_closed_after_the_idle_timeout() {
        let mut h = Harness::new(Config {
            idle_timeout: Duration::from_secs(30),
            ..Config::default()
        });
        h.greet(1);
        h.greet(2);
        h.greet(3);
        h.msg(2, ClientToServer::Allocate);
        h.msg(
            3,
            ClientToServer::Rejoin {
                channel: "ab".repeat(16),
            },
        );
        h.drain();
        for _ in 0..6 {
            h.advance(Duration::from_secs(5));
            for client in 1..=3 {
                h.msg(client, ClientToServer::Pong { id: 0 });
            }
        }
        let out = h.drain();
        assert_eq!(error_code(&out), vec![(1, ErrorCode::Idle)]);
        assert_eq!(h.closes(), vec![1]);
        assert_eq!(h.core.client_count(), 2, "holders of a nameplate stay");
    }

    /// Both sides of `nameplate`'s pair ask for the relay token; returns
    /// the one both got.
    fn both_ask(h: &mut Harness, first: ClientId, second: ClientId) -> String {
        h.msg(first, ClientToServer::RelayRequest);
        assert!(h.drain().is_empty(), "no token before both asked");
        h.msg(second, ClientToServer::RelayRequest);
        let out = h.drain();
        let [
            (
                a,
                ServerToClient::RelayToken {
                    relay_token: Some(ref x),
                },
            ),
            (
                b,
                ServerToClient::RelayToken {
                    relay_token: Some(ref y),
                },
            ),
        ] = out[..]
        else {
            panic!("no token for both sides: {out:?}");
        };
        let mut got = [a, b];
        got.sort();
        let mut want = [first, second];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(x, y, "both sides got the same token");
        x.clone()
    }

    #[test]
    fn timers_track_only_live_clients_and_nameplates() {
        let mut h = Harness::new(Config::default());
        for round in 0..50u64 {
            let a = 1000 + 2 * round;
            h.greet(a);
            h.greet(a + 1);
            h.msg(a, ClientToServer::Allocate);
            let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
                panic!("no allocation");
            };
            h.msg(a + 1, ClientToServer::Claim { nameplate });
            h.msg(
                a + 1,
                ClientToServer::Release {
                    reason: Some(ReleaseReason::Done),
                },
            );
            h.core.handle_disconnect(h.now, a);
            h.drain();
            h.closes();
        }
        h.greet(1);
        h.msg(1, ClientToServer::Allocate);
        h.drain();
        assert_eq!(h.core.client_count(), 1);
        // One timer for the client, one for its nameplate.
        assert_eq!(h.core.timers.len(), 2);
    }

    #[test]
    fn relay_token_only_once_both_paired_sides_ask() {
        let key = TokenKey::from_secret(&[5; 32]).unwrap();
        let config = Config {
            relay_key: Some(key.clone()),
            relay_token_ttl: Duration::from_secs(90),
            ..Config::default()
        };
        let mut h = Harness::new(config);
        h.core.handle_unix_time(1_700_000_000);
        // Claiming alone gives no token (paired() asserts none in
        // claimed and peer-joined)...
        let nameplate = h.paired();
        // ...nor does asking alone: a claimer that guessed the nameplate
        // but not the code never pairs, so the sender never asks.
        h.msg(2, ClientToServer::RelayRequest);
        h.msg(2, ClientToServer::RelayRequest);
        assert!(h.drain().is_empty());
        let token = both_ask(&mut h, 2, 1);
        let bytes = ferry_relay::token_from_hex(&token).expect("64 hex digits");
        // The relay's view: signed with the key, bound to this nameplate,
        // expiring one TTL after it was issued.
        let claims = key.verify(&bytes).expect("signed with the relay key");
        assert_eq!(claims.nameplate, nameplate);
        assert_eq!(claims.expires, 1_700_000_090);
        let other_key = TokenKey::from_secret(&[6; 32]).unwrap();
        assert_eq!(other_key.verify(&bytes), None);
        // Another pair gets another token.
        h.greet(3);
        h.greet(4);
        h.msg(3, ClientToServer::Allocate);
        let [(3, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!("no allocation");
        };
        h.msg(4, ClientToServer::Claim { nameplate });
        h.drain();
        assert_ne!(both_ask(&mut h, 3, 4), token);
        // Without a nameplate there is nothing to ask for.
        h.greet(5);
        h.msg(5, ClientToServer::RelayRequest);
        assert_eq!(error_code(&h.drain()), vec![(5, ErrorCode::NotClaimed)]);
        // A side alone (its peer not come yet) gets nothing either.
        h.msg(5, ClientToServer::Allocate);
        h.drain();
        h.msg(5, ClientToServer::RelayRequest);
        assert!(h.drain().is_empty());
    }

    #[test]
    fn without_a_relay_key_the_answer_has_no_token() {
        let mut h = Harness::new(Config::default());
        h.paired();
        h.msg(1, ClientToServer::RelayRequest);
        h.msg(2, ClientToServer::RelayRequest);
        let none = ServerToClient::RelayToken { relay_token: None };
        assert_eq!(h.drain(), vec![(1, none.clone()), (2, none)]);
    }

    #[test]
    fn welcome_names_a_relay_on_another_host() {
        let config = Config {
            relay_key: Some(TokenKey::from_secret(&[5; 32]).unwrap()),
            relay_addr: Some("relay.example.org:443".into()),
            ..Config::default()
        };
        let mut h = Harness::new(config);
        h.core.handle_connect(h.now, 1, addr(1));
        h.msg(
            1,
            ClientToServer::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "test".into(),
            },
        );
        let out = h.drain();
        let [(1, ServerToClient::Welcome { ref relay_addr, .. })] = out[..] else {
            panic!("no welcome: {out:?}");
        };
        assert_eq!(relay_addr.as_deref(), Some("relay.example.org:443"));
    }

    #[test]
    fn relay_frame_on_signalling_connection_closes() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        h.msg(
            1,
            ClientToServer::Relay {
                protocol: 1,
                token: "00".repeat(32),
            },
        );
        assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::BadFrame)]);
        assert_eq!(h.closes(), vec![1]);
    }

    #[test]
    fn server_full() {
        let config = Config {
            max_nameplates: 1,
            ..Config::default()
        };
        let mut h = Harness::new(config);
        h.greet(1);
        h.greet(2);
        h.msg(1, ClientToServer::Allocate);
        h.drain();
        h.msg(2, ClientToServer::Allocate);
        assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::ServerFull)]);
    }

    fn rejoin(h: &mut Harness, client: ClientId, channel: &str) -> Vec<(ClientId, ServerToClient)> {
        h.msg(
            client,
            ClientToServer::Rejoin {
                channel: channel.into(),
            },
        );
        h.drain()
    }

    const CHANNEL: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn rejoin_meets_the_peer_again_with_a_fresh_relay_token() {
        let mut h = Harness::new(Config {
            relay_key: Some(TokenKey::from_secret(&[5; 32]).unwrap()),
            ..Config::default()
        });
        h.greet(1);
        h.greet(2);
        let out = rejoin(&mut h, 1, CHANNEL);
        let [(1, ServerToClient::Allocated { nameplate })] = out[..] else {
            panic!("first rejoin should wait: {out:?}");
        };
        // Not reachable by claim.
        h.greet(3);
        h.msg(3, ClientToServer::Claim { nameplate });
        assert_eq!(
            error_code(&h.drain()),
            vec![(3, ErrorCode::UnknownNameplate)]
        );
        // A message sent while waiting reaches the peer once it is there.
        h.msg(
            1,
            ClientToServer::Send {
                body: "early".into(),
            },
        );
        assert!(h.drain().is_empty());
        let out = rejoin(&mut h, 2, CHANNEL);
        match &out[..] {
            [
                (
                    2,
                    ServerToClient::Claimed {
                        nameplate: n,
                        relay_token: None,
                    },
                ),
                (1, ServerToClient::PeerJoined { relay_token: None }),
                (2, ServerToClient::Message { body }),
            ] if *n == nameplate && body == "early" => {}
            other => panic!("unexpected {other:?}"),
        }
        let token = both_ask(&mut h, 1, 2);
        // A third party on the same channel is refused.
        let out = rejoin(&mut h, 3, CHANNEL);
        assert_eq!(error_code(&out), vec![(3, ErrorCode::NameplateTaken)]);
        // One side drops and comes back: the other hears both, and a new
        // token is drawn.
        h.core.handle_disconnect(h.now, 2);
        let out = h.drain();
        assert!(
            matches!(&out[..], [(1, ServerToClient::PeerLeft { .. })]),
            "{out:?}"
        );
        h.greet(4);
        let out = rejoin(&mut h, 4, CHANNEL);
        assert!(
            matches!(
                &out[..],
                [
                    (4, ServerToClient::Claimed { .. }),
                    (1, ServerToClient::PeerJoined { .. })
                ]
            ),
            "{out:?}"
        );
        assert_ne!(both_ask(&mut h, 4, 1), token);
        // Both leave: the channel is gone, the next rejoin waits afresh.
        h.core.handle_disconnect(h.now, 1);
        h.core.handle_disconnect(h.now, 4);
        h.drain();
        assert_eq!(h.core.nameplate_count(), 0);
        h.greet(5);
        let out = rejoin(&mut h, 5, CHANNEL);
        assert!(
            matches!(&out[..], [(5, ServerToClient::Allocated { .. })]),
            "{out:?}"
        );
    }

    #[test]
    fn rejoin_refuses_bad_channels_and_double_holding() {
        let mut h = Harness::new(Config::default());
        h.greet(1);
        let out = rejoin(&mut h, 1, "short");
        assert_eq!(error_code(&out), vec![(1, ErrorCode::BadFrame)]);
        assert_eq!(h.closes(), vec![1]);
        h.greet(2);
        h.msg(2, ClientToServer::Allocate);
        h.drain();
        let out = rejoin(&mut h, 2, CHANNEL);
        assert_eq!(error_code(&out), vec![(2, ErrorCode::AlreadyClaimed)]);
        let out = rejoin(&mut h, 3, &CHANNEL.to_uppercase());
        assert!(out.is_empty(), "unknown client ignored");
    }
}
