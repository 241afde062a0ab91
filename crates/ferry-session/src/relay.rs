//! The relay path: join the peer through the relay, then pinned TLS.

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
    token: [u8; 32],
    identity: Arc<Identity>,
    fingerprint: String,
    controlling: bool,
    head_start: Duration,
) -> Result<Established, ConnectError> {
    tokio::time::sleep(head_start).await;
    let failed = |reason: String| ConnectError::Relay { reason };
    let (tcp, limits) = ferry_relay::relay_join(relay, &token, RELAY_WAIT)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let local = local_of(&tcp);
    let handshake = async {
        let tls: tokio_rustls::TlsStream<tokio::net::TcpStream> = if controlling {
            ferry_connect::tls_acceptor(&identity, &fingerprint)?
                .accept(tcp)
                .await
                .map_err(|e| failed(format!("TLS through the relay: {e}")))?
                .into()
        } else {
            let name =
                rustls::pki_types::ServerName::try_from(ferry_connect::tls::CERTIFICATE_NAME)
                    .map_err(|e| failed(e.to_string()))?;
            ferry_connect::tls_connector(&identity, &fingerprint)?
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("TLS through the relay: {e}")))?
                .into()
        };
        Ok::<_, ConnectError>(tls)
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| failed("the TLS handshake through the relay timed out".into()))??;
    Ok(Established {
        stream: PeerStream::Tls(Box::new(tls)),
        kind: PathKind::Relay,
        local,
        remote: relay,
        relay_limits: Some(limits),
    })
}
