//! `ferry serve`.

use std::time::Duration;

use anyhow::Result;
use ferry_rendezvous::{Config, ServerConfig};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::info;

use crate::cli::ServeArgs;
use crate::exit::Failure;
use crate::output::Output;

/// Runs `ferry serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs, out: &mut Output) -> Result<()> {
    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another program uses it)"
        } else {
            ""
        };
        Failure::local(format!(
            "cannot listen on {}: {e}{hint}; choose another address with --listen ADDR:PORT, e.g. --listen 0.0.0.0:8443",
            args.listen
        ))
    })?;
    let local = listener.local_addr()?;
    out.event("listening", json!({"signal": local.to_string()}));
    out.say(format!(
        "ferry rendezvous server listening on {local} (TCP)"
    ));
    info!(%local, "rendezvous listening");

    let config = ServerConfig {
        rendezvous: Config {
            nameplate_ttl: Duration::from_secs(args.nameplate_ttl),
            ..Config::default()
        },
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
    };
    ferry_rendezvous::serve(listener, config, shutdown_signal()).await?;
    info!("server stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
