//! [`Server`]: the rendezvous server and the STUN responder of one
//! [`ServerConfig`], bound and running as tasks of the current tokio
//! runtime, until [`Server::shutdown`].

use std::io;
use std::net::SocketAddr;

use ferry_limits::Bucketing;
use ferry_metrics::health::Probed;
use ferry_metrics::http::HttpLimits;
use ferry_metrics::{HealthCheck, Metrics};
use ferry_nat::stun::{SourceLimits, StunServer, StunServerConfig};
use ferry_relay::ServerTls;
use ferry_rendezvous::{Config, PairRelay};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{RelayMode, ServerConfig, StunConfig};
use crate::error::{ServerError, StartError};

/// Where a started [`Server`] listens: what `ferry serve` reports in its
/// `listening` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The signalling listener (TCP); the relay too when
    /// [`relay_here`](Self::relay_here).
    pub signal: SocketAddr,
    /// The STUN responder's UDP sockets: primary first, then the second
    /// port, then the alternate IP's two. Empty without STUN.
    pub stun: Vec<SocketAddr>,
    /// STUN over TCP, on the primary STUN address.
    pub stun_tcp: Option<SocketAddr>,
    /// Whether RFC 5780 behaviour tests are on (an alternate IP).
    pub rfc5780: bool,
    /// Whether the relay runs on the signalling listener.
    pub relay_here: bool,
    /// The relay elsewhere that clients are told about.
    pub relay_url: Option<String>,
    /// The metrics listener (`GET /metrics`, `GET /health`), if any.
    pub metrics: Option<SocketAddr>,
    /// With TLS on the signalling listener: the SHA-256 of the leaf
    /// certificate at start, what clients of a self-signed server pin.
    pub tls_fingerprint: Option<String>,
}

/// A running server. Dropping it without [`shutdown`](Self::shutdown)
/// starts the same graceful shutdown in the background.
#[derive(Debug)]
pub struct Server {
    listening: Listening,
    stop: watch::Sender<bool>,
    rendezvous: JoinHandle<io::Result<()>>,
    stun: Option<JoinHandle<io::Result<()>>>,
    metrics: Metrics,
    metrics_task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the signalling listener, then the STUN sockets and the
    /// metrics listener, and starts serving on all of them.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        let metrics = Metrics::new();
        if let Some(directory) = config.cluster.clone() {
            // GET /health answers 503 while the directory is lost.
            metrics.add_health_check(HealthCheck::Cluster, move || {
                let (up, detail) = directory.status();
                Probed { up, detail }
            });
        }
        let (listener, signal) = bind(config.listen).await?;
        let stun = match &config.stun {
            Some(stun) => Some(bind_stun(stun).await?.with_metrics(metrics.stun())),
            None => None,
        };
        let metrics_listener = match config.metrics {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let stun_udp = stun.as_ref().map(StunServer::udp_addrs).unwrap_or_default();
        let (relay_here, relay_url) = match &config.relay {
            RelayMode::Here(_) => (true, None),
            RelayMode::Elsewhere { addr, .. } => (false, Some(addr.clone())),
            RelayMode::Off => (false, None),
        };
        let listening = Listening {
            signal,
            stun_tcp: stun.as_ref().and_then(StunServer::tcp_addr),
            rfc5780: stun.as_ref().is_some_and(|s| s.alt_config().is_some()),
            stun: stun_udp,
            relay_here,
            relay_url,
            metrics: metrics_listener.as_ref().map(|(_, addr)| *addr),
            tls_fingerprint: config.tls.as_ref().map(ServerTls::fingerprint),
        };
        info!(
            local = %signal,
            stun_addrs = ?listening.stun,
            rfc5780 = listening.rfc5780,
            relay_here,
            relay_url = ?listening.relay_url,
            metrics = ?listening.metrics,
            tls_fingerprint = ?listening.tls_fingerprint,
            "server listening"
        );

        let (stop, stop_rx) = watch::channel(false);
        let rendezvous = tokio::spawn(ferry_rendezvous::serve(
            listener,
            ferry_rendezvous::ServerConfig {
                metrics: metrics.clone(),
                ..rendezvous_config(&config, signal, &listening.stun)
            },
            stopped(stop_rx.clone()),
        ));
        let stun = stun.map(|server| tokio::spawn(server.run(stopped(stop_rx.clone()))));
        let metrics_task =
            metrics_listener.map(|(listener, _)| serve_metrics(listener, metrics.clone(), stop_rx));
        Ok(Server {
            listening,
            stop,
            rendezvous,
            stun,
            metrics,
            metrics_task,
        })
    }

    /// What it counted so far (what `GET /metrics` shows).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where it listens.
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// The signalling listener's address (what clients call the server).
    pub fn signal_addr(&self) -> SocketAddr {
        self.listening.signal
    }

    /// Stops accepting everywhere; signalling clients are told the server
    /// is shutting down, and open connections (relayed pairs above all)
    /// get the configured `shutdown_grace` to finish before they are cut.
    /// Returns once every part has stopped.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let Server {
            stop,
            rendezvous,
            stun,
            metrics_task,
            ..
        } = self;
        let _ = stop.send(true);
        if let Some(task) = metrics_task {
            // It only answers scrapes: nothing to wait for but its end.
            let _ = task.await;
        }
        let rendezvous = rendezvous.await;
        let stun = match stun {
            Some(task) => Some(task.await),
            None => None,
        };
        rendezvous
            .map_err(|source| ServerError::Task {
                part: "rendezvous",
                source,
            })?
            .map_err(ServerError::Rendezvous)?;
        if let Some(stun) = stun {
            stun.map_err(|source| ServerError::Task {
                part: "STUN",
                source,
            })?
            .map_err(ServerError::Stun)?;
        }
        info!("server stopped");
        Ok(())
    }
}

/// Binds a TCP listener on `listen`; it and the address it got.
pub(crate) async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::LocalAddr)?;
    Ok((listener, addr))
}

/// Serves the metrics listener as a task until `stop` says so.
pub(crate) fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(ferry_metrics::http::serve(
        listener,
        metrics,
        HttpLimits::default(),
        stopped(stop),
    ))
}

/// Resolves once `stop` says so, or its sender is gone.
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn bind_stun(stun: &StunConfig) -> Result<StunServer, StartError> {
    if stun.alt_ip.is_some() && stun.listen.ip().is_unspecified() {
        return Err(StartError::StunAltNeedsIp(stun.listen));
    }
    let config = StunServerConfig {
        second_port: Some(stun.second_port),
        alternate_ip: stun.alt_ip,
        other_family_ip: stun.other_family_ip,
        other_family_alternate_ip: stun.other_family_alt_ip,
        udp_limits: SourceLimits {
            rate: stun.rate,
            burst: stun.rate.saturating_mul(2),
            ..SourceLimits::default()
        },
        ..StunServerConfig::new(stun.listen)
    };
    StunServer::bind(config).await.map_err(StartError::Stun)
}

/// The relay this instance names with every relay token: in a cluster
/// only (alone, the welcome's relay is the pair's), the relay here at
/// its advertised address (or its listening address `signal`, when that is
/// a specific IP), a relay elsewhere at its own.
fn pair_relay(config: &ServerConfig, signal: SocketAddr) -> Option<PairRelay> {
    config.cluster.as_ref()?;
    match &config.relay {
        RelayMode::Here(_) => {
            let addr = match &config.advertise {
                Some(addr) => addr.clone(),
                None if !signal.ip().is_unspecified() => signal.to_string(),
                None => return None,
            };
            Some(PairRelay {
                addr,
                tls: config.tls.is_some(),
                sha256: None,
            })
        }
        RelayMode::Elsewhere { addr, .. } => Some(PairRelay {
            addr: addr.clone(),
            tls: config.relay_tls,
            sha256: config.relay_sha256.clone(),
        }),
        RelayMode::Off => None,
    }
}

/// The rendezvous server's settings: the flags', plus the STUN ports it
/// tells clients about and where the relay is.
fn rendezvous_config(
    config: &ServerConfig,
    signal: SocketAddr,
    stun_udp: &[SocketAddr],
) -> ferry_rendezvous::ServerConfig {
    let first = stun_udp.first();
    let (relay, relay_key, relay_addr) = match &config.relay {
        RelayMode::Here(relay) => (Some(relay.clone()), None, None),
        RelayMode::Elsewhere { addr, key } => (None, Some(key.clone()), Some(addr.clone())),
        RelayMode::Off => (None, None, None),
    };
    ferry_rendezvous::ServerConfig {
        rendezvous: Config {
            pair_relay: pair_relay(config, signal),
            nameplate_ttl: config.nameplate_ttl,
            stun_port: first.map(SocketAddr::port),
            // Another port on the same IP as the first: lets clients see
            // whether their NAT maps each destination apart.
            stun_second_port: first.and_then(|first| {
                stun_udp
                    .iter()
                    .find(|a| a.ip() == first.ip() && a.port() != first.port())
                    .map(SocketAddr::port)
            }),
            relay_key,
            relay_addr,
            relay_tls: config.relay_tls,
            relay_sha256: config.relay_sha256.clone(),
            relay_token_ttl: config.relay_token_ttl,
            max_nameplates: config.max_nameplates,
            bucketing: Bucketing {
                ipv4_prefix: config.ipv4_prefix,
                ..Bucketing::default()
            },
            ..Config::default()
        },
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        relay,
        shutdown_grace: config.shutdown_grace,
        tls: config.tls.clone(),
        cluster: config.cluster.clone(),
        ..ferry_rendezvous::ServerConfig::default()
    }
}
