//! The listener's confirmation on a pinned TLS-over-TCP connection, shared
//! by [`direct`](crate::direct) and [`simopen`](crate::simopen).
//!
//! In TLS 1.3 the client finishes its handshake before the server has
//! checked the client's certificate, so the TLS server writes
//! [`CONFIRMATION`] on the one connection it chose and the client waits for
//! it before using the stream (see the [`direct`](crate::direct) module
//! documentation for why).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{FailureReason, classify_io};

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
