//! What a server is told: [`ServerConfig`] holds everything the
//! `ferry serve` flags set (its [`Default`] is those flags' defaults),
//! [`RelayNodeConfig`] what `ferry relay` runs with.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_relay::{RelayConfig, ServerTls, TokenKey};

/// A whole server: signalling, STUN, relay (`ferry serve`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and TCP port for rendezvous signalling (`--listen`,
    /// default 0.0.0.0:443).
    pub listen: SocketAddr,
    /// How long an unclaimed or idle nameplate lives (default 30 min).
    pub nameplate_ttl: Duration,
    /// Most simultaneous client connections (default 1024).
    pub max_connections: usize,
    /// Most simultaneous client connections from one address bucket
    /// (default 16).
    pub max_connections_per_ip: usize,
    /// IPv4 addresses sharing this many leading bits count as one party
    /// for the per-address limits (default 32). IPv6 counts per /64.
    pub ipv4_prefix: u8,
    /// On shutdown, how long open connections (relayed pairs above all)
    /// may run on before they are cut (default 5 s).
    pub shutdown_grace: Duration,
    /// Most nameplates at once (default 10 000).
    pub max_nameplates: usize,
    /// The STUN responder; `None` runs none (`--no-stun`).
    pub stun: Option<StunConfig>,
    /// Where clients relay (default: here, with the default limits).
    pub relay: RelayMode,
    /// How long a relay token can be presented after it was issued
    /// (default 120 s).
    pub relay_token_ttl: Duration,
    /// Where to serve `GET /metrics` and `GET /health` (`--metrics`,
    /// default none). Unauthenticated: loopback or a private address.
    pub metrics: Option<SocketAddr>,
    /// TLS on the signalling listener, the relay here included
    /// (`--tls-cert`, `--tls-key`; default none). Plain clients keep
    /// working on the same port; the welcome tells them TLS is there.
    /// Keep a clone to [`reload`](ServerTls::reload) it (SIGHUP).
    pub tls: Option<ServerTls>,
    /// The relay elsewhere runs TLS on its port (`--relay-tls`): clients
    /// that reached this server in TLS join it in TLS too.
    pub relay_tls: bool,
    /// The SHA-256 of the relay elsewhere's self-signed certificate
    /// (`--relay-sha256`), told to clients over TLS only.
    pub relay_sha256: Option<String>,
    /// The directory shared with other instances (`--cluster`, default
    /// none: this instance alone, all in memory). Connect it first
    /// ([`ferry_cluster::RedisDirectory::connect`]), so that an
    /// unreachable Redis is an error before anything is bound.
    pub cluster: Option<ferry_cluster::Directory>,
    /// This instance's own `host:port` as clients reach it (`--advertise`,
    /// default none: the `listen` address when it is a specific IP). In a
    /// cluster every relay token names the relay of the pair's home, so a
    /// side that came in through another instance joins it there: the
    /// relay here by this address, a relay elsewhere by its own.
    pub advertise: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 443),
            nameplate_ttl: Duration::from_secs(1800),
            max_connections: 1024,
            max_connections_per_ip: 16,
            ipv4_prefix: 32,
            shutdown_grace: Duration::from_secs(5),
            max_nameplates: 10_000,
            stun: Some(StunConfig::default()),
            relay: RelayMode::Here(RelayConfig::default()),
            relay_token_ttl: Duration::from_secs(120),
            metrics: None,
            tls: None,
            relay_tls: false,
            relay_sha256: None,
            cluster: None,
            advertise: None,
        }
    }
}

impl ServerConfig {
    /// The defaults, but every socket on 127.0.0.1 with ports the OS picks
    /// (the STUN second port too): for tests and local set-ups.
    pub fn loopback() -> Self {
        let any_port = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        ServerConfig {
            listen: any_port,
            stun: Some(StunConfig {
                listen: any_port,
                second_port: 0,
                ..StunConfig::default()
            }),
            ..ServerConfig::default()
        }
    }
}

/// The STUN responder of a [`ServerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunConfig {
    /// UDP (and TCP) address (`--stun-listen`, default 0.0.0.0:3478). Use
    /// a specific IP with `alt_ip`.
    pub listen: SocketAddr,
    /// A second UDP port on the same IP, 0 for any free port (default 3479).
    pub second_port: u16,
    /// A second IP address of this host: enables RFC 5780 behaviour tests.
    pub alt_ip: Option<IpAddr>,
    /// An address of this host of the other family than `listen`'s (e.g.
    /// its IPv6 address beside an IPv4 `listen`): plain STUN there too, on
    /// the same two ports, so clients that reach the server over either
    /// family learn their mapping (`--stun-other-family-ip`).
    pub other_family_ip: Option<IpAddr>,
    /// A second address of that other family: RFC 5780 behaviour tests
    /// there too (`--stun-other-family-alt-ip`).
    pub other_family_alt_ip: Option<IpAddr>,
    /// Answers per second to one source, with bursts of twice that
    /// (default 20).
    pub rate: u32,
}

impl Default for StunConfig {
    fn default() -> Self {
        StunConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478),
            second_port: 3479,
            alt_ip: None,
            other_family_ip: None,
            other_family_alt_ip: None,
            rate: 20,
        }
    }
}

/// Where the clients of a [`ServerConfig`] relay.
#[derive(Debug, Clone)]
pub enum RelayMode {
    /// On the signalling listener, with these limits; tokens are signed
    /// with a random key made at start.
    Here(RelayConfig),
    /// On another host (`ferry relay` there): clients are told `addr`
    /// (HOST:PORT as they will reach it), and tokens are signed with the
    /// key both hold (`--relay-url`, `--relay-secret-file`).
    Elsewhere {
        /// The relay's HOST:PORT.
        addr: String,
        /// The secret shared with it.
        key: TokenKey,
    },
    /// No relay (`--no-relay`): peers without a direct path cannot connect.
    Off,
}

/// The relay alone on a listener of its own (`ferry relay`).
#[derive(Debug, Clone)]
pub struct RelayNodeConfig {
    /// Address and TCP port to listen on.
    pub listen: SocketAddr,
    /// Its limits (and its `shutdown_grace`).
    pub relay: RelayConfig,
    /// The secret shared with the rendezvous server that issues tokens.
    pub key: TokenKey,
    /// Where to serve `GET /metrics` and `GET /health` (`--metrics`),
    /// if anywhere.
    pub metrics: Option<SocketAddr>,
    /// TLS on its listener (`--tls-cert`, `--tls-key`), plain clients
    /// still served.
    pub tls: Option<ServerTls>,
}
