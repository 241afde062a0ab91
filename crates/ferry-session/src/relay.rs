//! The relay path: join the peer through the relay (inside TLS to the
//! relay when the server connection is TLS and the relay offers it), then
//! secure the pipe as every TCP path is ([`ferry_connect::secure_tcp`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_connect::race::{PathKind, PeerStream};
use ferry_connect::{ConnectError, Identity};
use ferry_proxy::{ProxyRules, ProxyUrl, Target};
use ferry_rendezvous::Welcome;

use crate::*;

/// Where the relay is and how to get there: direct to its address, or
/// through a proxy to its name (the name the server advertised for a relay
/// of its own, or the server's own `host:port` when the relay is the
/// server, so that with `socks5h://` and `http://` the proxy resolves it;
/// the client may not be able to).
#[derive(Debug, Clone)]
pub(crate) struct RelayRoute {
    /// The relay's address (in errors and on the path; unspecified when
    /// only the proxy knows it).
    pub(crate) addr: SocketAddr,
    /// The proxy and the target it connects us to.
    pub(crate) through: Option<(ProxyUrl, Target)>,
}

/// The route to the relay of `welcome`, whose server is `server`.
pub(crate) fn relay_route(
    server: &str,
    welcome: &Welcome,
    proxy: Option<&ProxyRules>,
) -> RelayRoute {
    let addr = welcome.relay_addr;
    // The spec may carry TLS after '#': the name is before it.
    let server = server.split_once('#').map_or(server, |(name, _)| name);
    // A relay of its own goes by the name the server advertised; the
    // server's relay by the server's name.
    let name = match &welcome.relay_name {
        Some(relay) => relay.as_str(),
        None if addr == welcome.server_addr => server,
        None => "",
    };
    let target = name
        .parse::<Target>()
        .unwrap_or_else(|_| Target::from(addr));
    let through = proxy
        .and_then(|rules| rules.select(&target.host))
        .map(|proxy| (proxy.clone(), target));
    RelayRoute { addr, through }
}

/// Joins the peer through the relay, then runs pinned TLS over it (the
/// relay sees only ciphertext): the sender is the TLS server.
pub(crate) async fn relay_path(
    route: RelayRoute,
    relay_tls: Option<ferry_relay::RelayTls>,
    token: [u8; 32],
    identity: Arc<Identity>,
    fingerprint: String,
    controlling: bool,
    head_start: Duration,
) -> Result<Established, ConnectError> {
    tokio::time::sleep(head_start).await;
    let failed = |reason: String| ConnectError::Relay { reason };
    let relay = route.addr;
    let through = route
        .through
        .as_ref()
        .map(|(proxy, target)| (proxy, target));
    // Inside TLS to the relay when we reached the server in TLS and the
    // relay runs it (the welcome says so): the token stays off the path.
    let (tcp, limits) =
        ferry_relay::relay_join_via(relay, through, relay_tls.as_ref(), &token, RELAY_WAIT)
            .await
            .map_err(|e| failed(e.to_string()))?;
    let local = local_of(tcp.tcp());
    // The same securing as the direct paths: pinned TLS, the ferry ALPN,
    // the sender's confirmation.
    let handshake = async {
        let secured = if controlling {
            let acceptor = ferry_connect::tls_acceptor(&identity, &fingerprint)?;
            ferry_connect::secure_tcp(tcp, ferry_connect::Secure::Server(&acceptor)).await
        } else {
            let name =
                rustls::pki_types::ServerName::try_from(ferry_connect::tls::CERTIFICATE_NAME)
                    .map_err(|e| failed(e.to_string()))?;
            let connector = ferry_connect::tls_connector(&identity, &fingerprint)?;
            ferry_connect::secure_tcp(tcp, ferry_connect::Secure::Client(&connector, name)).await
        };
        secured.map_err(|why| failed(format!("TLS through the relay: {why}")))
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| failed("the TLS handshake through the relay timed out".into()))??;
    Ok(Established {
        stream: PeerStream::Relayed(Box::new(tls)),
        kind: PathKind::Relay,
        local,
        remote: relay,
        relay_limits: Some(limits),
        found_by: None,
        accepted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::{Bypass, Source};

    fn welcome(relay_addr: &str, relay_name: Option<&str>) -> Welcome {
        Welcome {
            observed_addr: "192.0.2.7:40000".parse().unwrap(),
            server_addr: "203.0.113.10:443".parse().unwrap(),
            local_addr: "10.0.1.2:40000".parse().unwrap(),
            stun_port: None,
            stun_second_port: None,
            relay_addr: relay_addr.parse().unwrap(),
            relay_name: relay_name.map(str::to_string),
            uptime: None,
            tls: false,
            tls_offered: false,
            relay_tls: None,
        }
    }

    fn proxy() -> ProxyRules {
        ProxyRules::new("socks5h://10.0.1.1:1080".parse().unwrap(), Source::Flag)
    }

    #[test]
    fn through_a_proxy_the_relay_goes_by_the_name_that_names_it() {
        let server = "server.lab:443#sha256=00";
        // The relay is the server: the server's name, without the '#...'.
        let own = relay_route(server, &welcome("203.0.113.10:443", None), Some(&proxy()));
        let (_, target) = own.through.unwrap();
        assert_eq!((target.host.as_str(), target.port), ("server.lab", 443));
        // A relay of its own, unresolved here: the advertised name.
        let apart = welcome("0.0.0.0:443", Some("relay.lab:443"));
        let route = relay_route(server, &apart, Some(&proxy()));
        let (_, target) = route.through.unwrap();
        assert_eq!((target.host.as_str(), target.port), ("relay.lab", 443));
        // NO_PROXY sees that name.
        let bypassed = proxy().with_bypass(Bypass::parse("relay.lab"));
        assert!(
            relay_route(server, &apart, Some(&bypassed))
                .through
                .is_none()
        );
        // Without a proxy, the address.
        let direct = welcome("203.0.113.11:443", Some("relay.lab:443"));
        let route = relay_route(server, &direct, None);
        assert!(route.through.is_none());
        assert_eq!(route.addr, "203.0.113.11:443".parse().unwrap());
    }
}
