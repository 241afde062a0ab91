//! [`RelayNode`]: the relay alone on a listener of its own (`ferry relay`),
//! for a rendezvous server on another host that signs tokens with the
//! same key.

use std::io;
use std::net::SocketAddr;

use ferry_relay::{RelayServer, Stats};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::RelayNodeConfig;
use crate::error::{ServerError, StartError};
use crate::server::{bind, stopped};

/// A running relay. Dropping it without [`shutdown`](Self::shutdown)
/// starts the same graceful shutdown in the background.
#[derive(Debug)]
pub struct RelayNode {
    addr: SocketAddr,
    relay: RelayServer,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

impl RelayNode {
    /// Binds the listener and starts relaying.
    pub async fn start(config: RelayNodeConfig) -> Result<RelayNode, StartError> {
        let (listener, addr) = bind(config.listen).await?;
        let relay = RelayServer::new(config.relay, config.key);
        info!(local = %addr, "relay listening");
        let (stop, stop_rx) = watch::channel(false);
        let serving = relay.clone();
        let task = tokio::spawn(async move { serving.serve(listener, stopped(stop_rx)).await });
        Ok(RelayNode {
            addr,
            relay,
            stop,
            task,
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
