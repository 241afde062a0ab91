//! One way to secure a TCP stream to the peer ([`secure_tcp`]): pinned
//! TLS 1.3, the ferry ALPN, then the TLS server's confirmation. Direct TCP
//! ([`direct`](crate::direct): its listener handshakes many candidates at
//! once and confirms the one it keeps), TCP simultaneous open
//! ([`simopen`](crate::simopen)) and the relay path (`ferry-session`) all
//! end in it.
//!
//! In TLS 1.3 the client finishes its handshake before the server has
//! checked the client's certificate, so the TLS server writes
//! [`CONFIRMATION`] on the one connection it chose and the client waits for
//! it before using the stream (see the [`direct`](crate::direct) module
//! documentation for why).

use std::io;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream, client, server};

use crate::error::{FailureReason, classify_io};
use crate::tls::ALPN;

/// Which end of the TLS handshake this side is.
#[derive(Clone)]
pub enum Secure<'a> {
    /// The TLS server (the controlling side, the sender).
    Server(&'a TlsAcceptor),
    /// The TLS client, naming the server as its certificate does.
    Client(&'a TlsConnector, ServerName<'static>),
}

/// Secures `tcp`: the pinned TLS handshake, the ferry ALPN, then the
/// server confirms (or the client waits for the confirmation). A peer
/// that speaks TLS but not ferry is [`FailureReason::NotFerry`].
///
/// Any stream: TCP for the direct paths, the relay's [`Carrier`]
/// (`ferry_relay::Carrier`, itself maybe TLS to the relay) for the relay
/// path.
pub async fn secure_tcp<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    how: Secure<'_>,
) -> Result<TlsStream<S>, FailureReason> {
    Ok(match how {
        Secure::Server(acceptor) => secure_server(tcp, acceptor).await?.into(),
        Secure::Client(connector, name) => secure_client(tcp, connector, name).await?.into(),
    })
}

/// [`secure_tcp`] as the TLS server.
pub async fn secure_server<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    acceptor: &TlsAcceptor,
) -> Result<server::TlsStream<S>, FailureReason> {
    let mut tls = acceptor.accept(tcp).await.map_err(classify_io)?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(FailureReason::NotFerry);
    }
    confirm(&mut tls).await.map_err(classify_io)?;
    Ok(tls)
}

/// [`secure_tcp`] as the TLS client.
pub async fn secure_client<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    connector: &TlsConnector,
    name: ServerName<'static>,
) -> Result<client::TlsStream<S>, FailureReason> {
    let mut tls = connector.connect(name, tcp).await.map_err(classify_io)?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(FailureReason::NotFerry);
    }
    read_confirmation(&mut tls).await?;
    Ok(tls)
}

/// Sent by the TLS server on the one connection it chose.
pub(crate) const CONFIRMATION: &[u8; 8] = b"ferry-ok";

/// The TLS server's side: confirms the connection to the client.
pub(crate) async fn confirm<S: AsyncWrite + Unpin>(tls: &mut S) -> io::Result<()> {
    tls.write_all(CONFIRMATION).await?;
    tls.flush().await
}

/// The TLS client's side: waits for the server's confirmation; anything
/// else than [`CONFIRMATION`] means the other end is not a ferry peer.
pub(crate) async fn read_confirmation<S: AsyncRead + Unpin>(
    tls: &mut S,
) -> Result<(), FailureReason> {
    let mut confirmation = [0u8; CONFIRMATION.len()];
    tls.read_exact(&mut confirmation)
        .await
        .map_err(classify_io)?;
    if &confirmation != CONFIRMATION {
        return Err(FailureReason::NotFerry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_confirmation_is_read_back() {
        let (mut server, mut client) = tokio::io::duplex(64);
        confirm(&mut server).await.unwrap();
        assert_eq!(read_confirmation(&mut client).await, Ok(()));
    }

    #[tokio::test]
    async fn other_bytes_are_not_a_ferry_peer() {
        let (mut server, mut client) = tokio::io::duplex(64);
        server.write_all(b"HTTP/1.1").await.unwrap();
        assert_eq!(
            read_confirmation(&mut client).await,
            Err(FailureReason::NotFerry)
        );
    }

    #[tokio::test]
    async fn a_closed_stream_is_closed_by_the_peer() {
        let (server, mut client) = tokio::io::duplex(64);
        drop(server);
        assert_eq!(
            read_confirmation(&mut client).await,
            Err(FailureReason::ClosedByPeer)
        );
    }
}
