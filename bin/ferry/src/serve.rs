//! `ferry serve`: the rendezvous server (TCP, with the relay on the same
//! listener unless it runs elsewhere) and the STUN responder (UDP, plus
//! STUN over TCP), in one process, until Ctrl-C or SIGTERM. `ferry relay`:
//! the relay alone, for a rendezvous server on another host.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ferry_relay::token::SECRET_HOWTO;
use ferry_relay::{RelayConfig, ServerTls, TokenKey, Trust};
use ferry_server::{
    RelayMode, RelayNode, RelayNodeConfig, Server, ServerConfig, StartError, StunConfig,
};
use serde_json::json;
use tracing::{info, warn};

use crate::cli::{RelayArgs, RelayLimitArgs, ServeArgs, TlsArgs};
use crate::exit::Failure;
use crate::output::Output;

/// Runs `ferry serve`.
pub async fn run(args: ServeArgs, out: &mut Output) -> Result<()> {
    if args.no_relay && args.relay_url.is_some() {
        return Err(Failure::usage(
            "--relay-url tells clients to use a relay elsewhere, --no-relay says there is none: \
             drop one of the two",
        ));
    }
    if args.relay_secret_file.is_some() && args.relay_url.is_none() {
        return Err(Failure::usage(
            "--relay-secret-file is for a relay on another host: add --relay-url HOST:PORT \
             naming it (the relay inside `ferry serve` needs no secret file)",
        ));
    }
    // A relay elsewhere: its address as clients will use it, checked now
    // so a typo shows at start-up rather than in every transfer.
    let relay = match (&args.relay_url, &args.relay_secret_file) {
        (Some(url), Some(file)) => RelayMode::Elsewhere {
            addr: relay_url(url).await?,
            key: load_relay_key(file)?,
        },
        _ if args.no_relay => RelayMode::Off,
        _ => RelayMode::Here(relay_config(&args.relay)),
    };
    if args.cluster.is_some()
        && args.advertise.is_none()
        && args.listen.ip().is_unspecified()
        && matches!(relay, RelayMode::Here(_))
    {
        return Err(Failure::usage(
            "in a cluster, the relay here needs this instance's own address as clients reach \
             it, so that a receiver on another instance joins the sender's relay: add \
             --advertise HOST:PORT (e.g. edge-1.example.org:443), or --listen on one IP",
        ));
    }
    let advertise = match &args.advertise {
        Some(addr) => Some(
            host_port(
                "--advertise",
                "this instance's own",
                "edge-1.example.org:443",
                addr,
            )
            .await?,
        ),
        None => None,
    };
    let cluster = match &args.cluster {
        Some(url) => Some(join_cluster(url, args.instance_id.as_deref()).await?),
        None => None,
    };
    let config = ServerConfig {
        cluster,
        listen: args.listen,
        nameplate_ttl: Duration::from_secs(args.nameplate_ttl),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        ipv4_prefix: args.ipv4_prefix,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        max_nameplates: args.max_nameplates,
        stun: (!args.no_stun).then_some(StunConfig {
            listen: args.stun_listen,
            second_port: args.stun_second_port,
            alt_ip: args.stun_alt_ip,
            other_family_ip: args.stun_other_family_ip,
            other_family_alt_ip: args.stun_other_family_alt_ip,
            rate: args.stun_rate,
        }),
        relay,
        relay_token_ttl: Duration::from_secs(args.relay_token_ttl),
        metrics: args.metrics,
        tls: load_tls(&args.tls)?,
        relay_tls: args.relay_tls,
        relay_sha256: args.relay_sha256.as_deref().map(relay_pin).transpose()?,
        advertise,
    };
    let tls = config.tls.clone();
    let server = Server::start(config).await.map_err(|e| match e {
        StartError::Listen { source, addr } if Some(addr) == args.metrics => {
            bind_failure(&source, &addr.to_string(), "--metrics")
        }
        StartError::Listen { source, .. } => {
            bind_failure(&source, &args.listen.to_string(), "--listen")
        }
        StartError::StunAltNeedsIp(_) => Failure::usage(
            "--stun-alt-ip needs a specific primary IP: pass --stun-listen IP:3478 with one of this host's addresses",
        ),
        StartError::Stun(e) => Failure::local(format!(
            "cannot start the STUN responder: {e}; choose other addresses with --stun-listen / \
             --stun-second-port, or run without it (--no-stun)"
        )),
        other => other.into(),
    })?;

    let listening = server.listening();
    let local = listening.signal;
    let relay_here = listening.relay_here;
    let rfc5780 = listening.rfc5780;
    let stun_addrs: Vec<String> = listening.stun.iter().map(ToString::to_string).collect();
    let relay_url = listening.relay_url.clone();
    let metrics = listening.metrics;
    let fingerprint = listening.tls_fingerprint.clone();
    out.event(
        "listening",
        json!({"signal": local.to_string(), "stun": stun_addrs, "rfc5780": rfc5780, "relay": relay_here, "relay_url": relay_url, "metrics": metrics.map(|a| a.to_string()), "tls": fingerprint.is_some(), "tls_sha256": fingerprint}),
    );
    out.say(format!(
        "ferry rendezvous server listening on {local} (TCP){}",
        if relay_here { ", relaying too" } else { "" }
    ));
    if let Some(fingerprint) = &fingerprint {
        out.say(tls_line(fingerprint, local.port()));
    }
    if let Some(url) = &relay_url {
        out.say(format!("Clients relay through {url} (`ferry relay` there)"));
    }
    if let Some(metrics) = metrics {
        out.say(metrics_line(metrics));
    }
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

    let reloading = tls.map(reload_on_hangup);
    shutdown_signal().await;
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

/// Runs `ferry relay`: the relay alone on its listener, until Ctrl-C or
/// SIGTERM.
pub async fn run_relay(args: RelayArgs, out: &mut Output) -> Result<()> {
    let key = load_relay_key(&args.relay_secret_file)?;
    let config = RelayNodeConfig {
        listen: args.listen,
        relay: RelayConfig {
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            ..relay_config(&args.relay)
        },
        key,
        metrics: args.metrics,
        tls: load_tls(&args.tls)?,
    };
    let tls = config.tls.clone();
    let relay = RelayNode::start(config).await.map_err(|e| match e {
        StartError::Listen { source, addr } if Some(addr) == args.metrics => {
            bind_failure(&source, &addr.to_string(), "--metrics")
        }
        StartError::Listen { source, .. } => {
            bind_failure(&source, &args.listen.to_string(), "--listen")
        }
        other => other.into(),
    })?;
    let local = relay.addr();
    let metrics = relay.metrics_addr();
    let fingerprint = tls.as_ref().map(ServerTls::fingerprint);
    out.event(
        "listening",
        json!({"relay": local.to_string(), "metrics": metrics.map(|a| a.to_string()), "tls": fingerprint.is_some(), "tls_sha256": fingerprint}),
    );
    out.say(format!(
        "ferry relay listening on {local} (TCP); give the rendezvous server \
         --relay-url THIS-HOST:{} and the same secret file",
        local.port()
    ));
    if let Some(fingerprint) = &fingerprint {
        out.say(format!(
            "TLS on this port too; its certificate's SHA-256: {fingerprint} (for a self-signed \
             relay, give the rendezvous server --relay-tls --relay-sha256 {fingerprint})"
        ));
    }
    if let Some(metrics) = metrics {
        out.say(metrics_line(metrics));
    }
    let reloading = tls.map(reload_on_hangup);
    shutdown_signal().await;
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    info!(
        "shutting down: no new connections; open transfers have {} s to finish",
        args.shutdown_grace
    );
    let stats = relay.shutdown().await?;
    info!(
        paired = stats.paired,
        unknown_token = stats.unknown_token,
        expired = stats.expired,
        reused = stats.reused,
        per_ip_limit = stats.per_ip_limit,
        pairs_limit = stats.pairs_limit,
        wait_timeout = stats.wait_timeout,
        "relay stopped"
    );
    Ok(())
}

/// Loads `--tls-cert` and `--tls-key`, if given.
fn load_tls(args: &TlsArgs) -> Result<Option<ServerTls>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    ServerTls::load(cert, key)
        .map(Some)
        .map_err(|e| Failure::local(format!("{e}; check --tls-cert and --tls-key")))
}

/// Checks `--relay-sha256`; returns it as lowercase hex.
fn relay_pin(pin: &str) -> Result<String> {
    match Trust::pin(pin) {
        Ok(Trust::Pin(bytes)) => Ok(hex::encode(bytes)),
        Ok(_) => Err(Failure::usage("--relay-sha256 wants 64 hex digits")),
        Err(e) => Err(Failure::usage(format!("--relay-sha256: {e}"))),
    }
}

/// The line that tells how clients reach this server in TLS.
fn tls_line(fingerprint: &str, port: u16) -> String {
    format!(
        "TLS on this port too (plain clients still served); its certificate's SHA-256: \
         {fingerprint}. Clients: --server HOST:{port} --tls for a certificate from a public CA, \
         or --server HOST:{port}#sha256={fingerprint} for a self-signed one"
    )
}

/// Reads the certificate and key again on every SIGHUP: new connections
/// get the new certificate; files that do not load are logged and the
/// old certificate stays.
fn reload_on_hangup(tls: ServerTls) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
                return;
            };
            while hangup.recv().await.is_some() {
                match tls.reload() {
                    Ok(fingerprint) => info!(
                        tls_sha256 = %fingerprint,
                        "SIGHUP: reloaded the TLS certificate; new connections get it"
                    ),
                    Err(error) => warn!(
                        %error,
                        "SIGHUP: the TLS certificate did not load; still using the old one"
                    ),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tls;
        }
    })
}

/// What `--metrics` serves, and a warning when it is reachable from
/// anywhere.
fn metrics_line(addr: std::net::SocketAddr) -> String {
    let ip = addr.ip();
    let open = ip.is_unspecified()
        || match ip {
            std::net::IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_private()),
            std::net::IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unique_local()),
        };
    if open {
        warn!(
            %addr,
            "the metrics listener has no authentication and may be reachable from the internet; \
             bind --metrics to 127.0.0.1 or a private address"
        );
    }
    format!("Metrics on http://{addr}/metrics, health check on http://{addr}/health")
}

fn relay_config(limits: &RelayLimitArgs) -> RelayConfig {
    RelayConfig {
        max_pairs: limits.relay_max_pairs,
        max_connections_per_ip: limits.relay_max_per_ip,
        rate_limit: limits.relay_rate,
        total_rate_limit: limits.relay_total_rate,
        max_pair_bytes: limits.relay_max_bytes,
        max_pair_lifetime: (limits.relay_max_lifetime > 0)
            .then(|| Duration::from_secs(limits.relay_max_lifetime)),
        idle_timeout: Duration::from_secs(limits.relay_idle),
        ..RelayConfig::default()
    }
}

/// Reads the relay secret file (hex, at least 32 bytes).
fn load_relay_key(path: &Path) -> Result<TokenKey> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::local(format!(
            "cannot read the relay secret file {shown}: {e}; create it with: {SECRET_HOWTO}, \
             and give the rendezvous server and the relay the same file"
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(
                    "the relay secret file {shown} is readable by other users; chmod 600 {shown}"
                );
            }
        }
    }
    TokenKey::from_hex(&text)
        .map_err(|e| Failure::local(format!("bad relay secret file {shown}: {e}")))
}

/// Checks that `--relay-url` is a HOST:PORT that resolves; returns it with
/// the default port added.
async fn relay_url(url: &str) -> Result<String> {
    host_port("--relay-url", "the relay's", "relay.example.org:443", url).await
}

/// Checks that `flag`'s value `url` is a HOST:PORT that resolves (`whose`
/// HOST:PORT as clients will reach it, like `example`); returns it with
/// the default port added.
async fn host_port(flag: &str, whose: &str, example: &str, url: &str) -> Result<String> {
    let url = url.trim();
    let wanted = format!("give {whose} HOST:PORT as clients will reach it, e.g. {example}");
    if url.is_empty() || url.contains('/') {
        return Err(Failure::usage(format!(
            "{flag} wants {whose} HOST:PORT as clients will reach it, e.g. {example}, not {url:?}"
        )));
    }
    let addr = crate::session::server_address(&Some(url.to_string()))?;
    let found = tokio::net::lookup_host(addr.as_str())
        .await
        .map(|mut found| found.next().is_some());
    match found {
        Ok(true) => Ok(addr),
        Ok(false) => Err(Failure::usage(format!(
            "{flag} {addr} resolves to no address; {wanted}"
        ))),
        Err(e) => Err(Failure::usage(format!(
            "cannot resolve {flag} {addr}: {e}; {wanted}"
        ))),
    }
}

/// Connects to the cluster's Redis; unreachable is a start-up error.
async fn join_cluster(url: &str, instance: Option<&str>) -> Result<ferry_cluster::Directory> {
    let instance = match instance {
        Some(name) => {
            ferry_cluster::check_instance(name).map_err(|e| {
                Failure::usage(format!("--instance-id: {e}; e.g. --instance-id edge-1"))
            })?;
            name.to_string()
        }
        None => ferry_cluster::random_instance(),
    };
    let directory = ferry_cluster::RedisDirectory::connect(url, &instance)
        .await
        .map_err(|e| match e {
            ferry_cluster::ClusterError::BadUrl { .. } => Failure::usage(format!(
                "--cluster: {e}; e.g. --cluster redis://127.0.0.1:6379/0"
            )),
            e => Failure::local(format!(
                "cannot join the cluster: {e}; start Redis there (or fix --cluster), \
                 or run without --cluster to keep everything in this instance"
            )),
        })?;
    info!(instance, "joined the cluster");
    Ok(directory)
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
