//! QUIC on the punched UDP socket: one pinned, bidirectional stream.
//!
//! After [`punch`](crate::punch::punch) has agreed on a path, both peers hand
//! the very same socket to quinn, so the NAT mappings just opened carry the
//! QUIC traffic. The controlling side (the sender) is the QUIC server, the
//! other side the client; both present their throw-away certificate and pin
//! the peer's (the TLS 1.3 configurations of [`tls`], ALPN
//! `ferry/1`, no early data).
//!
//! ```text
//! client (controlled)                          server (controlling)
//!   Initial ... handshake, both certificates pinned ...  (accepts only a pinned peer)
//!   open_bi, "ferry-quic" ──────────────────▶  accept_bi, checks the hello
//!                          ◀────────────────── "ferry-ok"
//!   QuicStream (AsyncRead + AsyncWrite) on both sides
//!   shutdown / drop: finish the send half, wait until the peer acknowledged
//!   it, close once the peer's half has ended too (or after LINGER)
//! ```
//!
//! The hello exists because quinn announces a stream to the acceptor only
//! once the opener sends on it; the confirmation tells the client that the
//! server accepted its certificate (in TLS 1.3 the client finishes the
//! handshake before the server has checked the client certificate).
//! Late punch probes that reach quinn are dropped by it: their first byte has
//! the QUIC fixed bit clear.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, ConnectionError, Endpoint, EndpointConfig, IdleTimeout, Incoming, ReadExactError,
    RecvStream, SendStream, TokioRuntime, TransportConfig, VarInt,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::debug;

use crate::window::{MAX_WINDOW, MIN_WINDOW, Sample, WindowTuner};

use crate::error::{ConnectError, FailureReason};
use crate::tls::{self, ALPN, CERTIFICATE_NAME, Identity};

/// What the client writes first on the stream.
pub const HELLO: &[u8; 10] = b"ferry-quic";

/// What the server answers once it accepted the client.
pub const CONFIRMATION: &[u8; 8] = b"ferry-ok";

/// Longest wait, on shutdown, for the peer to acknowledge our last bytes and
/// to end its own half.
pub const LINGER: Duration = Duration::from_secs(5);

/// Keepalive interval; keeps the NAT mappings open while the transfer waits.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Idle timeout: the connection is dead after this long without packets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Receive and send buffer asked for the QUIC socket (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`, 4 MiB here). The default, about
/// 208 KiB, drops bursts at the receiver: in the lab at 50 ms and 1 Gbit/s
/// a 128 MiB transfer ran at 29 MB/s with it and at 79 MB/s with 4 MiB.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// From this round trip on (as hole punching measured it) QUIC's
/// congestion controller is BBR instead of CUBIC. In the lab at 50 ms with
/// 1% loss CUBIC moved 1 MB/s and BBR 34 MB/s; at once-in-a-while loss on
/// a LAN or loopback quinn's BBR is the slower one (517 against 747 MB/s).
pub const BBR_FROM_RTT: Duration = Duration::from_millis(5);

/// Handshakes from other addresses in flight at once on the server side.
const MAX_PENDING_HANDSHAKES: usize = 8;

/// Runs QUIC on `socket` to the punched `remote` and returns the one
/// confirmed stream.
///
/// `controlling` (the sender) accepts as the server; the other side connects
/// as the client to `remote`, server name `ferry`. Both present `ours` and
/// accept only a certificate whose SHA-256 is `peer_fingerprint`. `rtt`,
/// when known (hole punching measured it), starts QUIC's loss recovery at
/// the path's real round trip. Must run inside a tokio runtime; gives up
/// after `timeout`.
pub async fn quic_connect(
    socket: std::net::UdpSocket,
    remote: SocketAddr,
    ours: &Identity,
    peer_fingerprint: &str,
    controlling: bool,
    rtt: Option<Duration>,
    timeout: Duration,
) -> Result<QuicStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    let quic_error = |reason| ConnectError::Quic { remote, reason };
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer only costs speed.
    if let Err(error) = sock
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and_then(|()| sock.set_send_buffer_size(SOCKET_BUFFER))
    {
        debug!(%error, "could not enlarge the QUIC socket's buffers");
    }
    socket
        .set_nonblocking(true)
        .map_err(|source| ConnectError::UdpSocket { source })?;
    let runtime = Arc::new(TokioRuntime);
    if controlling {
        let crypto = QuicServerConfig::try_from(tls::server_config(ours, peer_fingerprint)?)
            .map_err(|e| quic_error(FailureReason::Tls(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(1, rtt)));
        let endpoint = Endpoint::new(EndpointConfig::default(), Some(server), socket, runtime)
            .map_err(|source| ConnectError::UdpSocket { source })?;
        accept(endpoint, remote, deadline).await
    } else {
        let crypto = QuicClientConfig::try_from(tls::client_config(ours, peer_fingerprint)?)
            .map_err(|e| quic_error(FailureReason::Tls(e.to_string())))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport_config(0, rtt)));
        let endpoint = Endpoint::new(EndpointConfig::default(), None, socket, runtime)
            .map_err(|source| ConnectError::UdpSocket { source })?;
        let connecting = endpoint
            .connect_with(client, remote, CERTIFICATE_NAME)
            .map_err(|e| quic_error(FailureReason::Io(e.to_string())))?;
        let opened = timeout_at(deadline, async {
            let connection = connecting.await.map_err(|e| classify_connection(&e))?;
            check_alpn(&connection)?;
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| classify_connection(&e))?;
            send.write_all(HELLO)
                .await
                .map_err(|e| classify_write(&e))?;
            let mut confirmation = [0u8; CONFIRMATION.len()];
            recv.read_exact(&mut confirmation)
                .await
                .map_err(|e| classify_read(&e))?;
            if &confirmation != CONFIRMATION {
                return Err(FailureReason::NotFerry);
            }
            Ok((connection, send, recv))
        })
        .await
        .unwrap_or(Err(FailureReason::TimedOut));
        match opened {
            Ok((connection, send, recv)) => {
                debug!(%remote, "QUIC stream established (client)");
                Ok(QuicStream::new(endpoint, connection, send, recv, remote))
            }
            Err(reason) => {
                endpoint.close(VarInt::from_u32(0), b"failed");
                Err(quic_error(reason))
            }
        }
    }
}

/// One QUIC bidirectional stream with the connection and endpoint behind it:
/// tokio [`AsyncRead`] + [`AsyncWrite`], so the transfer runs on it as on
/// any other stream.
///
/// `poll_shutdown` finishes the send half. Dropping the stream (or calling
/// [`close`](Self::close)) finishes it too and keeps the connection alive in
/// the background, at most [`LINGER`], until the peer has acknowledged the
/// last bytes, so they are not lost.
#[derive(Debug)]
pub struct QuicStream {
    send: Option<SendStream>,
    recv: RecvStream,
    connection: Connection,
    endpoint: Endpoint,
    remote: SocketAddr,
    read_to_end: bool,
    /// Sizes the connection's windows while the stream lives ([`window`](crate::window)).
    tuner: tokio::task::AbortHandle,
}

impl QuicStream {
    fn new(
        endpoint: Endpoint,
        connection: Connection,
        send: SendStream,
        recv: RecvStream,
        remote: SocketAddr,
    ) -> QuicStream {
        let tuner = tokio::spawn(tune_windows(connection.clone())).abort_handle();
        QuicStream {
            send: Some(send),
            recv,
            connection,
            endpoint,
            remote,
            read_to_end: false,
            tuner,
        }
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The connection's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// The underlying QUIC connection (statistics, more streams).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Finishes our half, waits (at most [`LINGER`] each) until the peer
    /// acknowledged it and ended its own half, then closes the connection.
    pub async fn close(mut self) {
        if let Some(send) = self.send.take() {
            linger(
                send,
                self.connection.clone(),
                self.endpoint.clone(),
                self.read_to_end,
            )
            .await;
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let polled = AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && wanted && buf.filled().len() == before {
            self.read_to_end = true;
        }
        polled
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.send.as_mut() {
            Some(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            None => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.send.as_mut() {
            Some(send) => Pin::new(send).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.send.as_mut() {
            Some(send) => Pin::new(send).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        self.tuner.abort();
        let Some(send) = self.send.take() else {
            return;
        };
        let connection = self.connection.clone();
        let endpoint = self.endpoint.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(linger(send, connection, endpoint, self.read_to_end));
            }
            // No runtime to wait in: finishing is the best we can do.
            Err(_) => drop(send),
        }
    }
}

/// Feeds the connection's round trip and byte counters to a
/// [`WindowTuner`] about once per round trip and applies its windows; runs
/// until aborted (the stream's drop) or the connection ends.
async fn tune_windows(connection: Connection) {
    let mut tuner = WindowTuner::new();
    loop {
        let stats = connection.stats();
        let sample = Sample {
            rtt: stats.path.rtt,
            min_rtt: stats.path.min_rtt,
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
        };
        if let Some(windows) = tuner.update(Instant::now().into_std(), sample) {
            debug!(
                send = windows.send,
                receive = windows.receive,
                min_rtt_us = sample.min_rtt.as_micros() as u64,
                "QUIC windows"
            );
            connection.set_send_window(windows.send);
            connection.set_receive_window(VarInt::from_u64(windows.receive).unwrap_or(VarInt::MAX));
        }
        tokio::select! {
            () = tokio::time::sleep(WindowTuner::tick(sample.rtt)) => {}
            _ = connection.closed() => return,
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the QUIC stream was closed")
}

/// Graceful end: our half finished and acknowledged, then the connection
/// closed by whichever side has seen both halves end (the other waits for
/// that close), everything bounded by [`LINGER`].
async fn linger(
    mut send: SendStream,
    connection: Connection,
    endpoint: Endpoint,
    read_to_end: bool,
) {
    // Already finished (after poll_shutdown) is fine.
    let _ = send.finish();
    let _ = tokio::time::timeout(LINGER, send.stopped()).await;
    if !read_to_end {
        let _ = tokio::time::timeout(LINGER, connection.closed()).await;
    }
    connection.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// `rtt`: the round trip hole punching measured on this very path. Without
/// it quinn assumes 333 ms, so one lost handshake packet costs about a
/// second; with it, a few tens of milliseconds.
fn transport_config(peer_bidi_streams: u8, rtt: Option<Duration>) -> TransportConfig {
    let mut transport = TransportConfig::default();
    if let Some(rtt) = rtt {
        // One probe is one sample: leave room for jitter.
        transport.initial_rtt((rtt * 2).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    }
    if uses_bbr(rtt) {
        transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    transport
        // The connection's windows start small and follow the path
        // ([`window`](crate::window)); the stream's only caps them.
        .stream_receive_window(VarInt::from_u64(MAX_WINDOW).unwrap_or(VarInt::MAX))
        .receive_window(VarInt::from_u64(MIN_WINDOW).unwrap_or(VarInt::MAX))
        .send_window(MIN_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
        ))))
        .max_concurrent_bidi_streams(VarInt::from(peer_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    transport
}

/// Whether a path with this measured round trip gets BBR ([`BBR_FROM_RTT`]);
/// unknown: CUBIC, quinn's default.
pub fn uses_bbr(rtt: Option<Duration>) -> bool {
    rtt.is_some_and(|rtt| rtt >= BBR_FROM_RTT)
}

/// Server side: accepts until a pinned client completes the hello, or the
/// deadline. A pinning failure from `remote` itself ends it at once (only
/// the peer, or someone on the path, can get that far from that address);
/// failures from elsewhere are logged and accepting goes on.
async fn accept(
    endpoint: Endpoint,
    remote: SocketAddr,
    deadline: Instant,
) -> Result<QuicStream, ConnectError> {
    let mut handshakes = JoinSet::new();
    let mut last_failure = None;
    let result = loop {
        tokio::select! {
            () = sleep_until(deadline) => {
                break Err(last_failure.unwrap_or(FailureReason::TimedOut));
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let from = ferry_nat::addr::canonical(incoming.remote_address());
                    if from != remote {
                        debug!(%from, %remote, "QUIC connection from another address than the punched one");
                    }
                    if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        debug!(%from, "too many QUIC handshakes in flight; refusing");
                        incoming.refuse();
                        continue;
                    }
                    handshakes.spawn(server_handshake(incoming, deadline));
                }
                None => break Err(FailureReason::Io("the QUIC endpoint closed".into())),
            },
            Some(joined) = handshakes.join_next(), if !handshakes.is_empty() => match joined {
                Ok((_, Ok((connection, send, recv)))) => {
                    debug!(%remote, "QUIC stream established (server)");
                    return Ok(QuicStream::new(endpoint, connection, send, recv, remote));
                }
                Ok((from, Err(reason))) => {
                    debug!(%from, %reason, "QUIC handshake failed");
                    let definitive = matches!(
                        reason,
                        FailureReason::WrongCertificate
                            | FailureReason::RejectedByPeer
                            | FailureReason::NotFerry
                    );
                    if from == remote && definitive {
                        break Err(reason);
                    }
                    last_failure = Some(reason);
                }
                Err(error) => debug!(%error, "QUIC handshake task failed"),
            },
        }
    };
    endpoint.close(VarInt::from_u32(0), b"failed");
    result.map_err(|reason| ConnectError::Quic { remote, reason })
}

type Opened = (Connection, SendStream, RecvStream);

async fn server_handshake(
    incoming: Incoming,
    deadline: Instant,
) -> (SocketAddr, Result<Opened, FailureReason>) {
    let from = ferry_nat::addr::canonical(incoming.remote_address());
    let result = timeout_at(deadline, async {
        let connection = incoming.await.map_err(|e| classify_connection(&e))?;
        check_alpn(&connection)?;
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|e| classify_connection(&e))?;
        let mut hello = [0u8; HELLO.len()];
        recv.read_exact(&mut hello)
            .await
            .map_err(|e| classify_read(&e))?;
        if &hello != HELLO {
            connection.close(VarInt::from_u32(1), b"not ferry");
            return Err(FailureReason::NotFerry);
        }
        send.write_all(CONFIRMATION)
            .await
            .map_err(|e| classify_write(&e))?;
        Ok((connection, send, recv))
    })
    .await
    .unwrap_or(Err(FailureReason::TimedOut));
    (from, result)
}

fn check_alpn(connection: &Connection) -> Result<(), FailureReason> {
    let protocol = connection
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol);
    if protocol.as_deref() == Some(ALPN) {
        Ok(())
    } else {
        connection.close(VarInt::from_u32(1), b"not ferry");
        Err(FailureReason::NotFerry)
    }
}

/// TLS alerts carried as QUIC CRYPTO_ERROR codes (0x100 + alert).
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then(|| u8::try_from(code - 0x100).ok())
        .flatten()
}

/// bad_certificate .. certificate_unknown, unknown_ca, access_denied,
/// decrypt_error, certificate_required.
fn is_certificate_alert(alert: u8) -> bool {
    matches!(alert, 42..=46 | 48 | 49 | 51 | 116)
}

const NO_APPLICATION_PROTOCOL: u8 = 120;

fn classify_connection(error: &ConnectionError) -> FailureReason {
    match error {
        ConnectionError::TransportError(transport) => match tls_alert(transport.code) {
            Some(alert) if is_certificate_alert(alert) => FailureReason::WrongCertificate,
            Some(NO_APPLICATION_PROTOCOL) => FailureReason::NotFerry,
            _ => FailureReason::Tls(transport.to_string()),
        },
        ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(alert) if is_certificate_alert(alert) => FailureReason::RejectedByPeer,
            Some(NO_APPLICATION_PROTOCOL) => FailureReason::NotFerry,
            _ => FailureReason::Tls(close.to_string()),
        },
        ConnectionError::ApplicationClosed(_) | ConnectionError::Reset => {
            FailureReason::ClosedByPeer
        }
        ConnectionError::TimedOut => FailureReason::TimedOut,
        ConnectionError::VersionMismatch => FailureReason::NotFerry,
        other => FailureReason::Io(other.to_string()),
    }
}

fn classify_read(error: &ReadExactError) -> FailureReason {
    match error {
        ReadExactError::FinishedEarly(_) => FailureReason::ClosedByPeer,
        ReadExactError::ReadError(quinn::ReadError::ConnectionLost(lost)) => {
            classify_connection(lost)
        }
        ReadExactError::ReadError(other) => FailureReason::Io(other.to_string()),
    }
}

fn classify_write(error: &quinn::WriteError) -> FailureReason {
    match error {
        quinn::WriteError::ConnectionLost(lost) => classify_connection(lost),
        other => FailureReason::Io(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbr_only_for_long_measured_round_trips() {
        assert!(!uses_bbr(None));
        assert!(!uses_bbr(Some(Duration::from_micros(300))));
        assert!(!uses_bbr(Some(Duration::from_millis(4))));
        assert!(uses_bbr(Some(BBR_FROM_RTT)));
        assert!(uses_bbr(Some(Duration::from_millis(50))));
    }

    #[test]
    fn crypto_error_codes_map_to_alerts() {
        assert_eq!(tls_alert(quinn::TransportErrorCode::crypto(42)), Some(42));
        assert_eq!(tls_alert(quinn::TransportErrorCode::crypto(120)), Some(120));
        assert!(is_certificate_alert(42));
        assert!(!is_certificate_alert(NO_APPLICATION_PROTOCOL));
    }

    #[test]
    fn existing_tls_configurations_are_quic_compatible() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let server = tls::server_config(&a, &b.fingerprint()).unwrap();
        assert_eq!(
            server.max_early_data_size, 0,
            "QUIC allows only 0 or u32::MAX"
        );
        assert!(QuicServerConfig::try_from(server).is_ok());
        assert!(
            QuicClientConfig::try_from(tls::client_config(&b, &a.fingerprint()).unwrap()).is_ok()
        );
    }
}
