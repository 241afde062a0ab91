//! ferry-metrics: what a ferry server counts, and the listener that shows
//! it to Prometheus.
//!
//! - [`Metrics`]: one registry (no global one) and typed handles on it,
//!   one per part of the server: [`RendezvousMetrics`] (signalling
//!   connections, nameplates, claims), [`RelayMetrics`] (pairs, bytes,
//!   refused joins), [`StunMetrics`] (answers). Each handle is a few
//!   atomics behind `Arc`s: cheap to clone into every task, and a driver
//!   given none uses [`Default`] handles that nobody reads.
//! - [`http`]: [`http::serve`], `GET /metrics` (the Prometheus text format,
//!   version 0.0.4) and `GET /health` on a listener of its own, with a
//!   bounded request, timeouts and a cap on scrapes at once.
//!
//! Every label value is one of the enums here ([`Listener`], [`Limit`],
//! [`ClaimOutcome`], ...): nothing a peer sends becomes a label, so the
//! number of series is fixed by this crate, not by the traffic.
//!
//! The drivers count (the sans-IO cores do not know this crate): the
//! rendezvous driver from the counters its core keeps, the relay and STUN
//! drivers where they act.
//!
//! Path outcomes ([`PathOutcome`], `ferry_path_outcomes_total`) are what
//! the clients report in `release` (ferry-proto's `PathOutcome`): the
//! rendezvous core counts the first report of each pairing, so a lying
//! client can skew only its own pairing's count.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod health;
pub mod http;

use std::sync::Arc;

use health::{Health, HealthReport, Probed};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric of a server, registered under the `ferry_` prefix.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    rendezvous: RendezvousMetrics,
    relay: RelayMetrics,
    stun: StunMetrics,
    health: Health,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let accepted = Family::<ListenerLabels, Counter>::default();
        let open = Family::<ListenerLabels, Gauge>::default();
        let refusals = Refusals::default();
        registry.register(
            "connections_accepted",
            "TCP connections taken for serving (past the connection limits), by listener",
            accepted.clone(),
        );
        registry.register(
            "connections_open",
            "TCP connections being served now, by listener",
            open.clone(),
        );
        registry.register(
            "refusals",
            "Requests or connections refused by a limit, by which limit",
            refusals.family.clone(),
        );
        // Process basics: which build, and since when (a restart shows as
        // a change of it).
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The ferry version serving, as a label; always 1",
            build,
        );
        let started = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        started.set(i64::try_from(unix).unwrap_or(i64::MAX));
        registry.register_with_unit(
            "start_time",
            "When these metrics started counting (the server started), Unix time",
            Unit::Seconds,
            started,
        );
        let connections = |listener| Connections {
            listener,
            accepted: accepted.clone(),
            open: open.clone(),
        };

        let rendezvous = RendezvousMetrics {
            connections: connections(Listener::Signal),
            refusals: refusals.clone(),
            ..RendezvousMetrics::default()
        };
        registry.register(
            "signal_connections",
            "Connections on the signalling listener, by what their first frame made them",
            rendezvous.first_frames.clone(),
        );
        registry.register(
            "signalling_clients",
            "Signalling clients connected now",
            rendezvous.clients.clone(),
        );
        registry.register(
            "nameplates_allocated",
            "Nameplates opened, by kind (random, chosen by the sender, rejoin channel)",
            rendezvous.nameplates_allocated.clone(),
        );
        registry.register(
            "nameplates_open",
            "Nameplates that exist now",
            rendezvous.nameplates_open.clone(),
        );
        registry.register(
            "nameplates_closed",
            "Nameplates gone, by why (freed by their sides, burnt by a wrong code, expired)",
            rendezvous.nameplates_closed.clone(),
        );
        registry.register(
            "claims",
            "Claims of a nameplate, by outcome",
            rendezvous.claims.clone(),
        );
        registry.register(
            "rejoins",
            "Peers that met again on a rejoin channel",
            rendezvous.rejoins.clone(),
        );
        registry.register(
            "path_outcomes",
            "Pairings by the path their transfer took, as a client reported it (one report per pairing)",
            rendezvous.path_outcomes.clone(),
        );

        let relay = RelayMetrics {
            connections: connections(Listener::Relay),
            refusals: refusals.clone(),
            ..RelayMetrics::default()
        };
        registry.register("relay_pairs", "Relayed pairs joined", relay.pairs.clone());
        registry.register(
            "relay_pairs_open",
            "Relayed pairs copying now",
            relay.pairs_open.clone(),
        );
        registry.register(
            "relay_pairs_ended",
            "Relayed pairs over, by why",
            relay.pairs_ended.clone(),
        );
        registry.register_with_unit(
            "relay",
            "Bytes the relay copied, both directions together",
            Unit::Bytes,
            relay.bytes.clone(),
        );
        registry.register(
            "relay_refused",
            "Relay joins refused, by reason",
            relay.refused.clone(),
        );

        let stun = StunMetrics {
            refusals: refusals.clone(),
            ..StunMetrics::default()
        };
        registry.register(
            "stun_requests",
            "STUN binding requests answered, by transport and the socket that got them",
            stun.answered.clone(),
        );

        // Every series starts at zero, so a dashboard sees it (and a rate
        // over it) before the first event: the label sets are small enums.
        for &listener in Listener::ALL {
            let _ = accepted.get_or_create(&ListenerLabels { listener });
            let _ = open.get_or_create(&ListenerLabels { listener });
        }
        for &limit in Limit::ALL {
            let _ = refusals.family.get_or_create(&LimitLabels { limit });
        }
        for &kind in ConnectionKind::ALL {
            let _ = rendezvous.first_frames.get_or_create(&KindLabels { kind });
        }
        for &kind in Allocation::ALL {
            let labels = AllocationLabels { kind };
            let _ = rendezvous.nameplates_allocated.get_or_create(&labels);
        }
        for &reason in Closed::ALL {
            let labels = ClosedLabels { reason };
            let _ = rendezvous.nameplates_closed.get_or_create(&labels);
        }
        for &outcome in ClaimOutcome::ALL {
            let _ = rendezvous.claims.get_or_create(&ClaimLabels { outcome });
        }
        for &path in PathOutcome::ALL {
            let _ = rendezvous.path_outcomes.get_or_create(&PathLabels { path });
        }
        for &reason in PairEnd::ALL {
            let _ = relay.pairs_ended.get_or_create(&PairEndLabels { reason });
        }
        for &reason in RelayRefusal::ALL {
            let _ = relay.refused.get_or_create(&RelayRefusalLabels { reason });
        }
        for &transport in Transport::ALL {
            // Only the primary socket surely exists.
            let socket = StunSocket::Primary;
            let _ = stun
                .answered
                .get_or_create(&StunLabels { transport, socket });
        }

        let health = Health::default();
        registry.register(
            "health_check_up",
            "Whether a part the server depends on while it runs works now (1) or not (0), by check; what GET /health reports",
            health.up.clone(),
        );

        Metrics {
            registry: Arc::new(registry),
            rendezvous,
            relay,
            stun,
            health,
        }
    }

    /// The rendezvous server's handle.
    pub fn rendezvous(&self) -> RendezvousMetrics {
        self.rendezvous.clone()
    }

    /// The relay's handle (on the signalling listener or one of its own:
    /// its connection counts are labelled `listener="relay"` either way,
    /// and only its own listener counts them).
    pub fn relay(&self) -> RelayMetrics {
        self.relay.clone()
    }

    /// The STUN responder's handle.
    pub fn stun(&self) -> StunMetrics {
        self.stun.clone()
    }

    /// Adds a part whose state `GET /health` and `ferry_health_check_up`
    /// report: `probe` says whether it works now, and where it is. It is
    /// asked at every scrape and health request, so it must be cheap and
    /// must not block.
    pub fn add_health_check(
        &self,
        check: HealthCheck,
        probe: impl Fn() -> Probed + Send + Sync + 'static,
    ) {
        self.health.add(check, Arc::new(probe));
    }

    /// What every health check says now (what `GET /health` answers).
    pub fn health(&self) -> HealthReport {
        self.health.report()
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        // The health gauges are read, not counted: fresh at each scrape.
        let _ = self.health.report();
        let mut text = String::new();
        // Writing to a String cannot fail, and no label value here needs
        // more than `fmt::Write`.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Connection counts of one listener.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    listener: Listener,
    accepted: Family<ListenerLabels, Counter>,
    open: Family<ListenerLabels, Gauge>,
}

impl Connections {
    /// A connection was taken for serving: counted, and open until the
    /// returned guard is dropped (hold it in the connection's task).
    pub fn accepted(&self) -> OpenConnection {
        let labels = ListenerLabels {
            listener: self.listener,
        };
        self.accepted.get_or_create(&labels).inc();
        let open = self.open.get_or_create(&labels).clone();
        open.inc();
        OpenConnection { open }
    }
}

/// One open connection in [`Connections`]; dropping it closes it.
#[derive(Debug)]
pub struct OpenConnection {
    open: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// `ferry_refusals_total`, shared by every part.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    family: Family<LimitLabels, Counter>,
}

impl Refusals {
    /// `limit` refused something.
    pub fn count(&self, limit: Limit) {
        self.family.get_or_create(&LimitLabels { limit }).inc();
    }

    /// `limit` refused `n` things.
    pub fn count_n(&self, limit: Limit, n: u64) {
        if n > 0 {
            self.family.get_or_create(&LimitLabels { limit }).inc_by(n);
        }
    }
}

/// What the rendezvous server counts.
#[derive(Debug, Clone, Default)]
pub struct RendezvousMetrics {
    /// Its listener's connections (`listener="signal"`).
    pub connections: Connections,
    /// Refusals by its limits.
    pub refusals: Refusals,
    first_frames: Family<KindLabels, Counter>,
    clients: Gauge,
    nameplates_allocated: Family<AllocationLabels, Counter>,
    nameplates_open: Gauge,
    nameplates_closed: Family<ClosedLabels, Counter>,
    claims: Family<ClaimLabels, Counter>,
    rejoins: Counter,
    path_outcomes: Family<PathLabels, Counter>,
}

impl RendezvousMetrics {
    /// A connection's first frame made it `kind`.
    pub fn first_frame(&self, kind: ConnectionKind) {
        self.first_frames.get_or_create(&KindLabels { kind }).inc();
    }

    /// The gauges: signalling clients and nameplates there are now.
    pub fn set_open(&self, clients: usize, nameplates: usize) {
        self.clients.set(gauge_value(clients));
        self.nameplates_open.set(gauge_value(nameplates));
    }

    /// `n` nameplates of `kind` were opened.
    pub fn nameplates_allocated(&self, kind: Allocation, n: u64) {
        if n > 0 {
            let labels = AllocationLabels { kind };
            self.nameplates_allocated.get_or_create(&labels).inc_by(n);
        }
    }

    /// `n` nameplates went, for `reason`.
    pub fn nameplates_closed(&self, reason: Closed, n: u64) {
        if n > 0 {
            let labels = ClosedLabels { reason };
            self.nameplates_closed.get_or_create(&labels).inc_by(n);
        }
    }

    /// `n` claims ended in `outcome`.
    pub fn claims(&self, outcome: ClaimOutcome, n: u64) {
        if n > 0 {
            let labels = ClaimLabels { outcome };
            self.claims.get_or_create(&labels).inc_by(n);
        }
    }

    /// `n` peers met again on a rejoin channel.
    pub fn rejoins(&self, n: u64) {
        self.rejoins.inc_by(n);
    }

    /// `n` pairings reported `path`.
    pub fn path_outcomes(&self, path: PathOutcome, n: u64) {
        if n > 0 {
            let labels = PathLabels { path };
            self.path_outcomes.get_or_create(&labels).inc_by(n);
        }
    }
}

/// What the relay counts.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// Its own listener's connections (`listener="relay"`), when it has one.
    pub connections: Connections,
    /// Refusals by its limits.
    pub refusals: Refusals,
    pairs: Counter,
    pairs_open: Gauge,
    pairs_ended: Family<PairEndLabels, Counter>,
    bytes: Counter,
    refused: Family<RelayRefusalLabels, Counter>,
}

impl RelayMetrics {
    /// A pair was joined: counted, and open until the returned guard is
    /// dropped.
    pub fn pair_joined(&self) -> OpenPair {
        self.pairs.inc();
        self.pairs_open.inc();
        OpenPair {
            open: self.pairs_open.clone(),
        }
    }

    /// A pair ended, for `reason`.
    pub fn pair_ended(&self, reason: PairEnd) {
        self.pairs_ended
            .get_or_create(&PairEndLabels { reason })
            .inc();
    }

    /// `n` bytes were copied (counted as they are read, so a rate over
    /// `ferry_relay_bytes_total` is the relay's throughput).
    pub fn bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    /// A join was refused; one refused by a limit counts in
    /// `ferry_refusals_total` too.
    pub fn refused(&self, reason: RelayRefusal) {
        self.refused
            .get_or_create(&RelayRefusalLabels { reason })
            .inc();
        match reason {
            RelayRefusal::PerAddress => self.refusals.count(Limit::RelayConnectionsPerAddress),
            RelayRefusal::MaxPairs => self.refusals.count(Limit::RelayMaxPairs),
            _ => {}
        }
    }
}

/// One open pair in [`RelayMetrics`]; dropping it closes it.
#[derive(Debug)]
pub struct OpenPair {
    open: Gauge,
}

impl Drop for OpenPair {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What the STUN responder counts.
#[derive(Debug, Clone, Default)]
pub struct StunMetrics {
    /// Refusals by its limits.
    pub refusals: Refusals,
    answered: Family<StunLabels, Counter>,
}

impl StunMetrics {
    /// A binding request got an answer.
    pub fn answered(&self, transport: Transport, socket: StunSocket) {
        self.answered
            .get_or_create(&StunLabels { transport, socket })
            .inc();
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Defines a label-value enum: its variants and their text.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label's text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_enum! {
    /// A part of the server that `GET /health` reports on (`check`).
    HealthCheck {
        /// The directory a cluster's instances share (`--cluster`).
        Cluster => "cluster",
    }
}

label_enum! {
    /// Which TCP listener (`listener`).
    #[derive(Default)]
    Listener {
        /// The rendezvous server's (signalling, and the relay with it).
        #[default]
        Signal => "signal",
        /// The relay's own (`ferry relay`).
        Relay => "relay",
    }
}

label_enum! {
    /// Which limit refused (`limit`).
    Limit {
        /// Connections at once on the signalling listener (`--max-connections`).
        MaxConnections => "max_connections",
        /// Connections at once from one address bucket (`--max-connections-per-ip`).
        ConnectionsPerAddress => "connections_per_address",
        /// New connections a second from one address bucket.
        ConnectionRate => "connection_rate",
        /// Nameplates at once (`--max-nameplates`), or no free number.
        MaxNameplates => "max_nameplates",
        /// Failed claims on one connection: it is closed.
        FailedClaimsPerConnection => "failed_claims_per_connection",
        /// A claim from an address bucket blocked for its failed claims
        /// or wrong codes.
        ClaimBlock => "claim_block",
        /// Messages held for a side that has not come.
        PendingMessages => "pending_messages",
        /// A client that does not read its frames (its queue is full).
        OutboundQueue => "outbound_queue",
        /// Connections at once on the relay's own listener.
        RelayMaxConnections => "relay_max_connections",
        /// Relay connections from one address bucket (`--relay-max-per-ip`).
        RelayConnectionsPerAddress => "relay_connections_per_address",
        /// Relayed pairs at once (`--relay-max-pairs`).
        RelayMaxPairs => "relay_max_pairs",
        /// STUN answers a second to one source (`--stun-rate`).
        StunRate => "stun_rate",
        /// STUN over TCP connections from one source.
        StunTcpPerAddress => "stun_tcp_per_address",
    }
}

label_enum! {
    /// What a connection on the signalling listener is for (`kind`).
    ConnectionKind {
        /// Signalling (its first frame was `hello`, or anything but `relay`).
        Signalling => "signalling",
        /// A relay connection (its first frame was `relay`).
        Relay => "relay",
    }
}

label_enum! {
    /// How a nameplate was opened (`kind`).
    Allocation {
        /// A number the server picked.
        Random => "random",
        /// A number the sender chose (`reserve`).
        Chosen => "chosen",
        /// A hidden nameplate for a rejoin channel.
        Rejoin => "rejoin",
    }
}

label_enum! {
    /// Why a nameplate went (`reason`).
    Closed {
        /// Its sides left.
        Freed => "freed",
        /// A side reported a wrong code.
        Burnt => "burnt",
        /// It outlived the nameplate TTL.
        Expired => "expired",
    }
}

label_enum! {
    /// How a claim ended (`outcome`).
    ClaimOutcome {
        /// The claimer took the second side.
        Ok => "ok",
        /// No nameplate of that number waits.
        UnknownNameplate => "unknown_nameplate",
        /// Two peers hold it already.
        Taken => "taken",
        /// The claimer's address bucket is blocked (too many failed
        /// claims or wrong codes).
        Blocked => "blocked",
        /// The connection holds a nameplate already.
        AlreadyHolds => "already_holds",
    }
}

label_enum! {
    /// Which path a pairing's transfer took, as its client reported it
    /// (`path`).
    PathOutcome {
        /// Direct TCP to a LAN address.
        Lan => "lan",
        /// Direct TCP to a public or port-mapped address.
        DirectTcp => "direct_tcp",
        /// TCP simultaneous open.
        SimultaneousOpen => "simultaneous_open",
        /// QUIC over a punched UDP path.
        Quic => "quic",
        /// The relay, the whole way.
        Relay => "relay",
        /// The relay first, then a direct path that came up later.
        MovedToDirect => "moved_to_direct",
        /// The race found no path.
        NoPath => "no_path",
        /// An outcome this server does not know (a newer client's).
        Unknown => "unknown",
    }
}

label_enum! {
    /// Why a relayed pair ended (`reason`).
    PairEnd {
        /// A side closed its connection.
        Closed => "closed",
        /// A connection broke (an error, or it broke while being joined).
        Broken => "broken",
        /// The byte limit per pair (`--relay-max-bytes`).
        ByteLimit => "byte_limit",
        /// The lifetime limit per pair (`--relay-max-lifetime`).
        Lifetime => "lifetime",
        /// Nothing moved for the idle timeout (`--relay-idle`).
        Idle => "idle",
    }
}

label_enum! {
    /// Why the relay refused a join (`reason`).
    RelayRefusal {
        /// The token's MAC does not verify.
        UnknownToken => "unknown_token",
        /// The token expired.
        Expired => "expired",
        /// Two connections presented the token already.
        Reused => "reused",
        /// Too many relay connections from one address bucket.
        PerAddress => "per_address",
        /// Too many pairs at once.
        MaxPairs => "max_pairs",
        /// The other side did not come in time.
        WaitTimeout => "wait_timeout",
    }
}

label_enum! {
    /// How a STUN request came (`transport`).
    Transport {
        /// UDP.
        Udp => "udp",
        /// TCP.
        Tcp => "tcp",
    }
}

label_enum! {
    /// Which STUN socket got a request (`socket`), in RFC 5780 terms.
    StunSocket {
        /// The primary address.
        Primary => "primary",
        /// The primary IP, the second port.
        SecondPort => "second_port",
        /// The alternate IP, the primary port.
        AltIp => "alt_ip",
        /// The alternate IP and the second port.
        AltIpSecondPort => "alt_ip_second_port",
    }
}

impl StunSocket {
    /// The socket at `index` in the responder's order: primary, second
    /// port, alternate IP, alternate IP with the second port.
    pub fn from_index(index: usize) -> StunSocket {
        match index {
            0 => StunSocket::Primary,
            1 => StunSocket::SecondPort,
            2 => StunSocket::AltIp,
            _ => StunSocket::AltIpSecondPort,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HealthLabels {
    check: HealthCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: Listener,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: ConnectionKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AllocationLabels {
    kind: Allocation,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClosedLabels {
    reason: Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClaimLabels {
    outcome: ClaimOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    path: PathOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PairEndLabels {
    reason: PairEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RelayRefusalLabels {
    reason: RelayRefusal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StunLabels {
    transport: Transport,
    socket: StunSocket,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels as exposed).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
    }

    #[test]
    fn counters_are_exposed_with_prefix_help_type_and_labels() {
        let metrics = Metrics::new();
        let rendezvous = metrics.rendezvous();
        rendezvous.claims(ClaimOutcome::Ok, 2);
        rendezvous.claims(ClaimOutcome::UnknownNameplate, 1);
        rendezvous.refusals.count(Limit::ConnectionRate);
        metrics.relay().bytes(1234);
        metrics
            .stun()
            .answered(Transport::Udp, StunSocket::SecondPort);
        let text = metrics.encode();

        assert!(
            text.contains("# HELP ferry_claims_total Claims of a nameplate, by outcome.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferry_claims_total counter\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"ferry_claims_total{outcome="ok"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_claims_total{outcome="unknown_nameplate"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_refusals_total{limit="connection_rate"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&text, "ferry_relay_bytes_total"), Some(1234.0));
        assert_eq!(
            sample(
                &text,
                r#"ferry_stun_requests_total{transport="udp",socket="second_port"}"#
            ),
            Some(1.0)
        );
        // Nothing is exposed in the OpenMetrics dialect.
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn every_labelled_series_starts_at_zero() {
        let text = Metrics::new().encode();
        for limit in Limit::ALL {
            let series = format!("ferry_refusals_total{{limit=\"{}\"}}", limit.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for outcome in ClaimOutcome::ALL {
            let series = format!("ferry_claims_total{{outcome=\"{}\"}}", outcome.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for path in PathOutcome::ALL {
            let series = format!("ferry_path_outcomes_total{{path=\"{}\"}}", path.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        assert_eq!(
            sample(&text, r#"ferry_connections_open{listener="relay"}"#),
            Some(0.0)
        );
        let build = format!(
            "ferry_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &build), Some(1.0), "{text}");
        let started = sample(&text, "ferry_start_time_seconds").unwrap();
        assert!(started > 1.6e9, "{started}");
    }

    #[test]
    fn path_outcomes_count_by_their_path() {
        let metrics = Metrics::new();
        let rendezvous = metrics.rendezvous();
        rendezvous.path_outcomes(PathOutcome::Quic, 2);
        rendezvous.path_outcomes(PathOutcome::MovedToDirect, 1);
        rendezvous.path_outcomes(PathOutcome::Relay, 0);
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE ferry_path_outcomes_total counter\n"),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"ferry_path_outcomes_total{path="quic"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"ferry_path_outcomes_total{path="moved_to_direct"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_path_outcomes_total{path="relay"}"#),
            Some(0.0)
        );
        let series = text
            .lines()
            .filter(|line| line.starts_with("ferry_path_outcomes_total{"))
            .count();
        assert_eq!(series, PathOutcome::ALL.len(), "{text}");
    }

    #[test]
    fn guards_keep_gauges_honest() {
        let metrics = Metrics::new();
        let relay = metrics.relay();
        let first = relay.pair_joined();
        let second = relay.pair_joined();
        let conn = metrics.rendezvous().connections.accepted();
        let text = metrics.encode();
        assert_eq!(sample(&text, "ferry_relay_pairs_open"), Some(2.0));
        assert_eq!(
            sample(&text, r#"ferry_connections_open{listener="signal"}"#),
            Some(1.0)
        );
        drop((first, conn));
        relay.pair_ended(PairEnd::Closed);
        let text = metrics.encode();
        assert_eq!(sample(&text, "ferry_relay_pairs_open"), Some(1.0));
        assert_eq!(sample(&text, "ferry_relay_pairs_total"), Some(2.0));
        assert_eq!(
            sample(&text, r#"ferry_connections_open{listener="signal"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"ferry_connections_accepted_total{listener="signal"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_relay_pairs_ended_total{reason="closed"}"#),
            Some(1.0)
        );
        drop(second);
    }

    #[test]
    fn a_refused_relay_join_by_a_limit_counts_as_a_refusal_too() {
        let metrics = Metrics::new();
        let relay = metrics.relay();
        relay.refused(RelayRefusal::MaxPairs);
        relay.refused(RelayRefusal::UnknownToken);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, r#"ferry_relay_refused_total{reason="max_pairs"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"ferry_refusals_total{limit="relay_max_pairs"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"ferry_relay_refused_total{reason="unknown_token"}"#
            ),
            Some(1.0)
        );
        assert!(
            !text.contains("unknown_token\"} 1\nferry_refusals"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_snake_case_words() {
        let all: Vec<&str> = Limit::ALL
            .iter()
            .map(|l| l.as_str())
            .chain(ClaimOutcome::ALL.iter().map(|o| o.as_str()))
            .chain(PathOutcome::ALL.iter().map(|o| o.as_str()))
            .chain(PairEnd::ALL.iter().map(|o| o.as_str()))
            .chain(RelayRefusal::ALL.iter().map(|o| o.as_str()))
            .collect();
        for text in all {
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
        }
    }

    #[test]
    fn handles_nobody_registered_count_without_panicking() {
        let stray = RelayMetrics::default();
        let _pair = stray.pair_joined();
        stray.bytes(10);
        assert!(
            !Metrics::new()
                .encode()
                .contains("ferry_relay_bytes_total 10")
        );
    }
}
