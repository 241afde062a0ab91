//! `ferry serve`: the rendezvous server (TCP) and the STUN responder (UDP,
//! plus STUN over TCP), in one process, until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_nat::stun::{StunServer, StunServerConfig};
use ferry_relay::RelayConfig;
use ferry_rendezvous::{Config, ServerConfig};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::cli::ServeArgs;
use crate::exit::Failure;
use crate::output::Output;

/// Runs `ferry serve`.
pub async fn run(args: ServeArgs, out: &mut Output) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| bind_failure(&e, &args.listen.to_string(), "--listen"))?;
    let local = listener.local_addr()?;

    let stun = if args.no_stun {
        None
    } else {
        if args.stun_alt_ip.is_some() && args.stun_listen.ip().is_unspecified() {
            return Err(Failure::usage(
                "--stun-alt-ip needs a specific primary IP: pass --stun-listen IP:3478 with one of this host's addresses",
            ));
        }
        let config = StunServerConfig {
            second_port: Some(args.stun_second_port),
            alternate_ip: args.stun_alt_ip,
            ..StunServerConfig::new(args.stun_listen)
        };
        let server = StunServer::bind(config).await.map_err(|e| {
            Failure::local(format!(
                "cannot start the STUN responder: {e}; choose other addresses with --stun-listen / \
                 --stun-second-port, or run without it (--no-stun)"
            ))
        })?;
        Some(server)
    };
    let stun_addrs: Vec<String> = stun
        .as_ref()
        .map(|s| s.udp_addrs().iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let rfc5780 = stun.as_ref().is_some_and(|s| s.alt_config().is_some());
    out.event(
        "listening",
        json!({"signal": local.to_string(), "stun": stun_addrs, "rfc5780": rfc5780, "relay": !args.no_relay}),
    );
    out.say(format!(
        "ferry rendezvous server listening on {local} (TCP)"
    ));
    if !stun_addrs.is_empty() {
        out.say(format!(
            "STUN responder on {} (UDP){}",
            stun_addrs.join(", "),
            if rfc5780 {
                ", RFC 5780 behaviour tests enabled"
            } else {
                ""
            }
        ));
    }
    info!(%local, ?stun_addrs, rfc5780, "server listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let config = ServerConfig {
        rendezvous: Config {
            nameplate_ttl: Duration::from_secs(args.nameplate_ttl),
            stun_port: stun
                .as_ref()
                .and_then(|s| s.udp_addrs().first().map(|a| a.port())),
            ..Config::default()
        },
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        relay: (!args.no_relay).then(|| RelayConfig {
            max_pairs: args.relay_max_pairs,
            max_connections_per_ip: args.relay_max_per_ip,
            rate_limit: args.relay_rate,
            idle_timeout: Duration::from_secs(args.relay_idle),
            token_ttl: Duration::from_secs(args.relay_token_ttl),
            ..RelayConfig::default()
        }),
    };
    let rendezvous = ferry_rendezvous::serve(listener, config, stopped(stop_rx.clone()));
    let stun_task = async {
        match stun {
            Some(server) => server.run(stopped(stop_rx.clone())).await,
            None => Ok(()),
        }
    };
    let signal = async {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let (rendezvous, stun, ()) = tokio::join!(rendezvous, stun_task, signal);
    rendezvous.context("the rendezvous server failed")?;
    stun.context("the STUN responder failed")?;
    info!("server stopped");
    Ok(())
}

fn bind_failure(e: &std::io::Error, addr: &str, flag: &str) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        }
        std::io::ErrorKind::AddrInUse => " (another program uses it)",
        _ => "",
    };
    Failure::local(format!(
        "cannot listen on {addr}: {e}{hint}; choose another address with {flag} ADDR:PORT, e.g. {flag} 0.0.0.0:8443"
    ))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
