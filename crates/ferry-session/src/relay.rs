//! The relay path: join the peer through the relay (inside TLS to the
//! relay when the server connection is TLS and the relay offers it), then
//! secure the pipe as every TCP path is ([`ferry_connect::secure_tcp`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_connect::race::{PathKind, PeerStream};
use ferry_connect::{ConnectError, Identity};

use crate::*;

/// Joins the peer through the relay, then runs pinned TLS over it (the
/// relay sees only ciphertext): the sender is the TLS server.
pub(crate) async fn relay_path(
    relay: SocketAddr,
    relay_tls: Option<ferry_relay::RelayTls>,
    token: [u8; 32],
    identity: Arc<Identity>,
    fingerprint: String,
    controlling: bool,
    head_start: Duration,
) -> Result<Established, ConnectError> {
    tokio::time::sleep(head_start).await;
    let failed = |reason: String| ConnectError::Relay { reason };
    // Inside TLS to the relay when we reached the server in TLS and the
    // relay runs it (the welcome says so): the token stays off the path.
    let (tcp, limits) = ferry_relay::relay_join(relay, relay_tls.as_ref(), &token, RELAY_WAIT)
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
