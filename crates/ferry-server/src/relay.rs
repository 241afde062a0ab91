//! [`RelayNode`]: the relay alone on a listener of its own (`ferry relay`),
//! for a rendezvous server on another host that signs tokens with the
//! same key.

use std::io;
use std::net::SocketAddr;

use ferry_metrics::Metrics;
use ferry_relay::{RelayServer, Stats};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::RelayNodeConfig;
use crate::error::{ServerError, StartError};
use crate::server::{bind, serve_metrics, stopped};

/// A running relay. Dropping it without [`shutdown`](Self::shutdown)
/// starts the same graceful shutdown in the background.
#[derive(Debug)]
pub struct RelayNode {
    addr: SocketAddr,
    relay: RelayServer,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
    metrics: Metrics,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
}

impl RelayNode {
    /// Binds the listener (and the metrics listener, if asked for) and
    /// starts relaying.
    pub async fn start(config: RelayNodeConfig) -> Result<RelayNode, StartError> {
        let (listener, addr) = bind(config.listen).await?;
        let metrics_listener = match config.metrics {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics = Metrics::new();
        let relay = RelayServer::with_metrics(config.relay, config.key, metrics.relay());
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        let tls_fingerprint = config.tls.as_ref().map(ferry_relay::ServerTls::fingerprint);
        info!(local = %addr, metrics = ?metrics_addr, ?tls_fingerprint, "relay listening");
        let (stop, stop_rx) = watch::channel(false);
        let serving = relay.clone();
        let stop_serving = stop_rx.clone();
        let tls = config.tls.clone();
        let task = tokio::spawn(async move {
            serving
                .serve_tls(listener, tls, stopped(stop_serving))
                .await
        });
        let metrics_task =
            metrics_listener.map(|(listener, _)| serve_metrics(listener, metrics.clone(), stop_rx));
        Ok(RelayNode {
            addr,
            relay,
            stop,
            task,
            metrics,
            metrics_addr,
            metrics_task,
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's address, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What it counted so far (what `GET /metrics` shows).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The relay's counters so far.
    pub fn stats(&self) -> Stats {
        self.relay.stats()
    }

    /// Stops accepting, tells sides still waiting for a partner that the
    /// relay is shutting down, and gives open pairs the configured
    /// `shutdown_grace` before cutting them. Returns the final counters.
    pub async fn shutdown(self) -> Result<Stats, ServerError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.metrics_task {
            let _ = task.await;
        }
        self.task
            .await
            .map_err(|source| ServerError::Task {
                part: "relay",
                source,
            })?
            .map_err(ServerError::Relay)?;
        Ok(self.relay.stats())
    }
}
