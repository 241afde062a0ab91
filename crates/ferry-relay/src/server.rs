//! The tokio driver of the relay.
//!
//! ```text
//! RelayServer::handle(stream, peer, token, buffered)  <- a connection task,
//!   after the first line `relay {token}`:
//!   Relay::handle_join
//!     Refused -> error {relay-refused | server-full}, close
//!     Wait    -> relay-waiting; park: a oneshot in `waiters`; wait until
//!                the partner hands over its stream, the wait deadline
//!                (then Relay::handle_timeout closes it: error {relay-timeout}),
//!                or the client hangs up
//!     Paired  -> relay-waiting; hand our stream to the waiting side's task
//!                and wait until that task is done (so the caller's
//!                connection permits stay held for the pair's life)
//!   the waiting side's task: relay-paired to both, bytes that arrived
//!   early, then copy_bidirectional_with_sizes (256 KiB per direction)
//!   under the idle timeout, the pair's and the relay's rate limits
//!   (`ferry_limits::ByteRate`, paced on reads), the pair's byte budget
//!   and lifetime (PairBudget); a limit that ends a pair is counted in
//!   Stats and logged with its PairEnd reason
//! ```
//!
//! Metrics ([`RelayServer::with_metrics`]): refused joins by reason,
//! pairs joined, open and ended by reason (closed, broken, a limit),
//! bytes as they are read, and, on a listener of its own, connections
//! and the refusals at accept.
//!
//! The core sits behind a `std::sync::Mutex` that is never held across an
//! await. It learns of no token in advance: it checks each one with its
//! [`TokenKey`], so the rendezvous server may run in this process (sharing
//! the key) or on another host (sharing the secret).
//!
//! [`RelayServer::serve`] is a listener of its own for a relay that runs
//! apart from the signalling listener (`ferry relay`, or a second port),
//! on the accept loop shared with the rendezvous server
//! (`ferry_limits::accept`, with its bucket slots, refusals and lingering
//! close): it caps connections per address bucket at accept, then in all,
//! reads the first line
//! (at most `MAX_RELAY_FRAME` bytes, within `first_line_timeout`, 3 s)
//! and calls [`RelayServer::handle`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use ferry_limits::accept::{self, AcceptConfig, Accepted, BucketSlot, Verdict, linger};
use ferry_limits::{ByteRate, OpenCounts};
use ferry_metrics::{Limit, RelayMetrics, RelayRefusal};
use ferry_proto::signal::{
    ClientToServer, ErrorCode, MAX_RELAY_FRAME, RELAY_PROTOCOL_VERSION, ServerToClient,
    decode_frame, encode_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tracing::{debug, info};

use crate::pairing::{ConnId, Join, PairBudget, PairEnd, Refusal, Relay, RelayConfig, Stats};
use crate::tls::{Carrier, ServerTls};
use crate::token::{TokenKey, token_from_hex, unix_secs};

/// Buffer size of each copy direction.
pub const COPY_BUFFER: usize = 256 * 1024;

/// Bytes a client may send before `relay-paired` that are still delivered;
/// beyond this it is dropped (clients should send nothing before it).
pub const MAX_EARLY_BYTES: usize = 64 * 1024;

/// How long one control-line write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused connections that may linger (so their error line is read) at
/// once on a listener of the relay's own.
const REFUSALS_AT_ONCE: usize = 64;
/// What a side waiting for its partner is told when the relay stops.
const SHUTTING_DOWN_MESSAGE: &str =
    "the relay is shutting down; try again in a moment (or through another relay)";
/// What a connection over the relay's total connection limit is told.
const CONNECTION_LIMIT_MESSAGE: &str = "the relay is at its connection limit; try again later";

/// The relay: a shared, cloneable handle on one [`Relay`] core.
#[derive(Debug, Clone)]
pub struct RelayServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RelayConfig,
    key: TokenKey,
    core: Mutex<Relay>,
    waiters: Mutex<HashMap<ConnId, oneshot::Sender<Handoff>>>,
    next_id: AtomicU64,
    /// The whole relay's rate limit, shared by every pair.
    total_rate: Option<Arc<Mutex<ByteRate>>>,
    /// The origin of the rate limits' time.
    origin: Instant,
    /// Set when [`RelayServer::serve`] stops accepting.
    shutting_down: AtomicBool,
    metrics: RelayMetrics,
}

/// The second side's connection, handed to the waiting side's task.
#[derive(Debug)]
struct Handoff {
    conn: ConnId,
    stream: Carrier,
    early: BytesMut,
    /// Dropped when the pair is over.
    _done: oneshot::Sender<()>,
}

impl RelayServer {
    /// A relay with these limits that joins the holders of tokens `key`
    /// signed.
    pub fn new(config: RelayConfig, key: TokenKey) -> Self {
        Self::with_metrics(config, key, RelayMetrics::default())
    }

    /// The same, counting what it does in `metrics`.
    pub fn with_metrics(config: RelayConfig, key: TokenKey, metrics: RelayMetrics) -> Self {
        let origin = Instant::now();
        let total_rate = config
            .total_rate_limit
            .map(|rate| Arc::new(Mutex::new(ByteRate::new(rate, Duration::ZERO))));
        RelayServer {
            inner: Arc::new(Inner {
                core: Mutex::new(Relay::new(config.clone(), key.clone())),
                config,
                key,
                waiters: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                total_rate,
                origin,
                shutting_down: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// The key this relay checks tokens with; a rendezvous server in the
    /// same process signs its tokens with it.
    pub fn key(&self) -> &TokenKey {
        &self.inner.key
    }

    /// The refusal counters so far.
    pub fn stats(&self) -> Stats {
        self.core().stats()
    }

    /// Serves relay connections on a listener of their own until `shutdown`
    /// resolves. It then stops accepting (the listener is closed), tells
    /// sides still waiting for a partner that the relay is shutting down,
    /// and gives open pairs up to `shutdown_grace` to finish before
    /// cutting them. At most `2 * max_pairs + 64`
    /// connections are served at once, and at most `max_connections_per_ip`
    /// from one address bucket (counted at accept, before the first line,
    /// so one party cannot take every slot). A connection over either limit
    /// is told so (`error {server-full}`) and closed.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.serve_tls(listener, None, shutdown).await
    }

    /// [`serve`](Self::serve), with TLS on the listener when `tls` is
    /// set: each connection is told apart by its first byte
    /// ([`Carrier::accept`]), so plain relay clients keep working.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: Option<ServerTls>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        debug!(%local, "relay listening");
        let config = &self.inner.config;
        let accept = AcceptConfig {
            max_connections: config.max_pairs.saturating_mul(2).saturating_add(64),
            // Refusals get their line and a moment to be read, but only so
            // many at once: past that a refused connection gets its line
            // without waiting and is closed, so a flood of refusals costs
            // no tasks.
            max_lingering_refusals: REFUSALS_AT_ONCE,
            shutdown_grace: config.shutdown_grace,
            name: "relay",
        };
        let per_bucket = Arc::new(Mutex::new(OpenCounts::default()));
        let metrics = &self.inner.metrics;
        let admit = |accepted: Accepted| {
            let Accepted {
                stream,
                addr: peer,
                permit,
            } = accepted;
            let bucket = config.bucketing.bucket(peer.ip());
            let max = config.max_connections_per_ip;
            let Ok(slot) = BucketSlot::take(&per_bucket, |open: &mut OpenCounts| {
                open.try_open(bucket, max).then_some(bucket).ok_or(())
            }) else {
                metrics.refused(RelayRefusal::PerAddress);
                debug!(%peer, %bucket, "relay per-address connection limit reached");
                return Verdict::Refuse(refuse_at_accept(stream, Refusal::PerIpLimit.message()));
            };
            let Some(permit) = permit else {
                metrics.refusals.count(Limit::RelayMaxConnections);
                debug!(%peer, "relay connection limit reached");
                return Verdict::Refuse(refuse_at_accept(stream, CONNECTION_LIMIT_MESSAGE));
            };
            let relay = self.clone();
            let open = metrics.connections.accepted();
            let tls = tls.clone();
            Verdict::Serve(permit, async move {
                let _slot = slot;
                let _open = open;
                match Carrier::accept(stream, tls.as_ref()).await {
                    Ok(stream) => relay.serve_one(stream, peer).await,
                    Err(error) => {
                        debug!(%peer, %error, "relay connection ended before its first line")
                    }
                }
            })
        };
        let grace = config.shutdown_grace;
        let stopping = |open: usize| {
            self.inner.shutting_down.store(true, Ordering::Relaxed);
            // Nobody new can come, so nobody waiting will be joined:
            // dropping their inboxes tells them so.
            self.waiters().clear();
            info!(
                connections = open,
                "relay stopped accepting; letting open pairs finish for up to {grace:?}"
            );
            std::future::ready(())
        };
        let drained =
            ferry_limits::accept::serve(listener, accept, shutdown, admit, stopping).await;
        if drained.cut > 0 {
            info!(
                connections = drained.cut,
                "relay pairs still open after the grace period; cut them"
            );
        }
        Ok(())
    }

    async fn serve_one(&self, mut stream: Carrier, peer: SocketAddr) {
        let mut input = BytesMut::with_capacity(MAX_RELAY_FRAME);
        let mut chunk = [0u8; MAX_RELAY_FRAME];
        let first = timeout(self.inner.config.first_line_timeout, async {
            loop {
                let window = input.len().min(MAX_RELAY_FRAME);
                if input[..window].contains(&b'\n') {
                    return decode_frame::<ClientToServer>(&mut input).ok().flatten();
                }
                if input.len() >= MAX_RELAY_FRAME {
                    return None;
                }
                match stream
                    .read(&mut chunk[..MAX_RELAY_FRAME - input.len()])
                    .await
                {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        match first {
            Ok(Some(ClientToServer::Relay { protocol, token }))
                if protocol == RELAY_PROTOCOL_VERSION =>
            {
                self.handle(stream, peer, token, input).await;
            }
            Ok(Some(ClientToServer::Hello { .. })) => {
                debug!(%peer, "signalling client at a relay-only listener");
                let message = "this is a ferry relay only, not a rendezvous server; \
                               point --server at the rendezvous server (`ferry serve`)";
                let _ = send_error(&mut stream, ErrorCode::BadFrame, message).await;
                linger(&mut stream).await;
            }
            Ok(Some(ClientToServer::Relay { protocol, .. })) => {
                debug!(%peer, protocol, "relay protocol version mismatch");
                let message = format!(
                    "this relay speaks relay protocol {RELAY_PROTOCOL_VERSION}, you sent {protocol}"
                );
                let _ = send_error(&mut stream, ErrorCode::ProtocolVersion, &message).await;
                linger(&mut stream).await;
            }
            _ => {
                debug!(%peer, "no relay line at the start of a relay connection");
                let message = "a relay connection must start with a relay line";
                let _ = send_error(&mut stream, ErrorCode::BadFrame, message).await;
                linger(&mut stream).await;
            }
        }
    }

    /// Serves one relay connection whose first line (`relay {token}`) was
    /// already read; `buffered` holds any bytes read beyond that line. Returns
    /// when the connection is refused, times out, or its pair is over.
    pub async fn handle(
        &self,
        stream: Carrier,
        peer: SocketAddr,
        token: String,
        buffered: BytesMut,
    ) {
        let conn = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut stream = stream;
        let _ = stream.tcp().set_nodelay(true);
        let now = Instant::now().into_std();
        let unix = unix_secs(SystemTime::now());
        let (tx, rx) = oneshot::channel();
        let join = {
            let token = token_from_hex(&token).unwrap_or_else(|| {
                debug!(%peer, "relay token is not 64 hex digits");
                // Fails the MAC check, so counted and refused like any unknown token.
                [0u8; 32]
            });
            let mut core = self.core();
            core.handle_timeout(now, unix);
            let join = core.handle_join(now, unix, conn, peer.ip(), &token);
            if join == Join::Wait {
                // Registered under the core's lock, so a partner that joins
                // right after us finds our inbox.
                self.waiters().insert(conn, tx);
            }
            self.close_timed_out(&mut core);
            join
        };
        match join {
            Join::Refused(refusal) => {
                self.inner.metrics.refused(refusal_label(refusal));
                debug!(%peer, ?refusal, "relay connection refused");
                refuse(&mut stream, refusal).await;
            }
            Join::Wait => {
                let deadline = Instant::from_std(now + self.inner.config.wait_timeout);
                self.wait(conn, peer, stream, buffered, rx, deadline).await;
            }
            Join::Paired { other } => {
                let waiter = self.waiters().remove(&other);
                if send_line(&mut stream, &ServerToClient::RelayWaiting)
                    .await
                    .is_err()
                {
                    debug!(%peer, "relay client left right after joining");
                }
                let (done_tx, done_rx) = oneshot::channel();
                let handoff = Handoff {
                    conn,
                    stream,
                    early: buffered,
                    _done: done_tx,
                };
                let sent = match waiter {
                    Some(waiter) => waiter.send(handoff).map_err(Some),
                    None => Err(Some(handoff)),
                };
                match sent {
                    Ok(()) => {
                        // The waiting side's task runs the pair; hold on until it ends.
                        let _ = done_rx.await;
                        self.core().handle_close(conn);
                    }
                    Err(handoff) => {
                        debug!(%peer, conn, other, "relay partner left just before pairing");
                        self.core().handle_close(conn);
                        if let Some(mut handoff) = handoff {
                            let _ = send_error(
                                &mut handoff.stream,
                                ErrorCode::RelayTimeout,
                                "the other side left the relay before the pair was joined; try again",
                            )
                            .await;
                            linger(&mut handoff.stream).await;
                        }
                    }
                }
            }
        }
    }

    /// The waiting side: park until the partner arrives, then run the pair.
    async fn wait(
        &self,
        conn: ConnId,
        peer: SocketAddr,
        mut stream: Carrier,
        mut early: BytesMut,
        mut rx: oneshot::Receiver<Handoff>,
        mut deadline: Instant,
    ) {
        if send_line(&mut stream, &ServerToClient::RelayWaiting)
            .await
            .is_err()
        {
            self.forget(conn);
            return;
        }
        let mut chunk = vec![0u8; 16 * 1024];
        let handoff = loop {
            tokio::select! {
                biased;
                handoff = &mut rx => match handoff {
                    Ok(handoff) => break handoff,
                    Err(_) if self.inner.shutting_down.load(Ordering::Relaxed) => {
                        self.forget(conn);
                        let _ = send_error(&mut stream, ErrorCode::ServerFull, SHUTTING_DOWN_MESSAGE).await;
                        linger(&mut stream).await;
                        return;
                    }
                    Err(_) => {
                        // The core closed us: we waited too long.
                        self.inner.metrics.refused(RelayRefusal::WaitTimeout);
                        let _ = send_error(&mut stream, ErrorCode::RelayTimeout, Refusal::WaitTimeout.message()).await;
                        linger(&mut stream).await;
                        return;
                    }
                },
                _ = sleep_until(deadline) => {
                    let mut core = self.core();
                    core.handle_timeout(Instant::now().into_std(), unix_secs(SystemTime::now()));
                    self.close_timed_out(&mut core);
                    // Normally our sender is gone now; if not, look again shortly.
                    deadline = Instant::now() + Duration::from_millis(50);
                }
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => {
                        debug!(%peer, conn, "waiting relay client hung up");
                        self.forget(conn);
                        return;
                    }
                    Ok(n) if early.len() + n <= MAX_EARLY_BYTES => early.extend_from_slice(&chunk[..n]),
                    Ok(_) => {
                        debug!(%peer, conn, "relay client sent too much before being paired");
                        self.forget(conn);
                        return;
                    }
                },
            }
        };
        drop(chunk);
        let other = handoff.conn;
        self.run_pair(conn, stream, early, handoff).await;
        let mut core = self.core();
        core.handle_close(conn);
        core.handle_close(other);
    }

    async fn run_pair(&self, conn: ConnId, mut a: Carrier, early_a: BytesMut, handoff: Handoff) {
        let Handoff {
            conn: other,
            stream: mut b,
            early: early_b,
            _done,
        } = handoff;
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        let _open = metrics.pair_joined();
        let paired = ServerToClient::RelayPaired {
            max_bytes: config.max_pair_bytes,
            max_secs: config.max_pair_lifetime.map(|l| l.as_secs()),
        };
        let setup = async {
            send_line(&mut a, &paired).await?;
            send_line(&mut b, &paired).await?;
            // Bytes a side sent too early go to the other side first.
            write_timed(&mut b, &early_a).await?;
            write_timed(&mut a, &early_b).await
        };
        if let Err(error) = setup.await {
            debug!(conn, other, %error, "relay pair broke while being joined");
            metrics.pair_ended(ferry_metrics::PairEnd::Broken);
            return;
        }
        // Relayed too, though not through Metered.
        metrics.bytes(u64::try_from(early_a.len() + early_b.len()).unwrap_or(u64::MAX));
        debug!(conn, other, "relay pair joined; copying");
        let activity = Arc::new(Activity::new());
        let budget = Arc::new(Mutex::new(PairBudget::new(
            config,
            Instant::now().into_std(),
        )));
        let origin = self.inner.origin;
        let mut rates: Vec<_> = config
            .rate_limit
            .map(|rate| Arc::new(Mutex::new(ByteRate::new(rate, origin.elapsed()))))
            .into_iter()
            .collect();
        rates.extend(self.inner.total_rate.clone());
        let rates = Rates {
            origin,
            limits: rates,
        };
        let mut a = Metered::new(a, activity.clone(), budget.clone(), rates.clone(), metrics);
        let mut b = Metered::new(b, activity.clone(), budget.clone(), rates, metrics);
        let idle = config.idle_timeout;
        let lifetime = lock(&budget).deadline().map(Instant::from_std);
        let copy =
            tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER);
        tokio::pin!(copy);
        let (end, broken) = loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                result = &mut copy => {
                    match &result {
                        Ok((a_to_b, b_to_a)) => debug!(conn, other, a_to_b, b_to_a, "relay pair done"),
                        Err(error) => debug!(conn, other, %error, "relay pair ended with an error"),
                    }
                    break (lock(&budget).check(Instant::now().into_std()), result.is_err());
                }
                _ = sleep_until(deadline) => {
                    if activity.last() + idle <= Instant::now() {
                        break (Some(PairEnd::Idle), false);
                    }
                }
                _ = sleep_until(lifetime.unwrap_or_else(far_future)), if lifetime.is_some() => {
                    break (Some(PairEnd::Lifetime), false);
                }
            }
        };
        metrics.pair_ended(match end {
            Some(PairEnd::ByteLimit) => ferry_metrics::PairEnd::ByteLimit,
            Some(PairEnd::Lifetime) => ferry_metrics::PairEnd::Lifetime,
            Some(PairEnd::Idle) => ferry_metrics::PairEnd::Idle,
            None if broken => ferry_metrics::PairEnd::Broken,
            None => ferry_metrics::PairEnd::Closed,
        });
        if let Some(end) = end {
            debug!(conn, other, ?end, "{}", end.message());
            self.core().handle_pair_end(end);
        }
    }

    fn forget(&self, conn: ConnId) {
        self.waiters().remove(&conn);
        self.core().handle_close(conn);
    }

    /// Drops the waiters the core timed out; their tasks then close.
    fn close_timed_out(&self, core: &mut Relay) {
        while let Some(conn) = core.poll_close() {
            self.waiters().remove(&conn);
        }
    }

    fn core(&self) -> MutexGuard<'_, Relay> {
        self.inner
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<ConnId, oneshot::Sender<Handoff>>> {
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Tells a connection refused at accept why (`error {server-full}`) with
/// a non-blocking write; the future it returns closes it after a linger
/// (`accept::refuse`).
fn refuse_at_accept(
    stream: TcpStream,
    message: &'static str,
) -> impl Future<Output = ()> + Send + 'static {
    let mut line = BytesMut::new();
    let msg = ServerToClient::Error {
        code: ErrorCode::ServerFull,
        message: message.to_string(),
    };
    // Not encoded (it always is): nothing to deliver, so no linger either.
    let _ = encode_frame(&msg, &mut line);
    accept::refuse(stream, &line, accept::LINGER_AT_MOST)
}

/// The metrics' name for `refusal`.
fn refusal_label(refusal: Refusal) -> RelayRefusal {
    match refusal {
        Refusal::UnknownToken => RelayRefusal::UnknownToken,
        Refusal::Expired => RelayRefusal::Expired,
        Refusal::Reused => RelayRefusal::Reused,
        Refusal::PerIpLimit => RelayRefusal::PerAddress,
        Refusal::PairsLimit => RelayRefusal::MaxPairs,
        Refusal::WaitTimeout => RelayRefusal::WaitTimeout,
    }
}

async fn refuse(stream: &mut Carrier, refusal: Refusal) {
    let code = match refusal {
        Refusal::PerIpLimit | Refusal::PairsLimit => ErrorCode::ServerFull,
        Refusal::WaitTimeout => ErrorCode::RelayTimeout,
        _ => ErrorCode::RelayRefused,
    };
    let _ = send_error(stream, code, refusal.message()).await;
    linger(stream).await;
}

async fn send_error(stream: &mut Carrier, code: ErrorCode, message: &str) -> std::io::Result<()> {
    let msg = ServerToClient::Error {
        code,
        message: message.to_string(),
    };
    send_line(stream, &msg).await
}

async fn send_line(stream: &mut Carrier, msg: &ServerToClient) -> std::io::Result<()> {
    let mut line = BytesMut::new();
    encode_frame(msg, &mut line).map_err(std::io::Error::other)?;
    write_timed(stream, &line).await
}

async fn write_timed(stream: &mut Carrier, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    timeout(WRITE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// When a pair last moved a byte, shared by both directions.
#[derive(Debug)]
struct Activity {
    base: Instant,
    millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_max(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// The rate limits a pair obeys (its own, the relay's), each shared by
/// both directions of the pair, and the origin of their time.
#[derive(Debug, Clone)]
struct Rates {
    origin: Instant,
    limits: Vec<Arc<Mutex<ByteRate>>>,
}

/// A stream that records activity, obeys the pair's and the relay's rate
/// limits on reads (limiting reads of both streams limits both directions
/// of the copy) and never reads past the pair's byte budget: once it is
/// spent, reads fail, which ends the copy.
struct Metered<S> {
    inner: S,
    activity: Arc<Activity>,
    budget: Arc<Mutex<PairBudget>>,
    rates: Rates,
    sleep: Option<Pin<Box<Sleep>>>,
    metrics: RelayMetrics,
}

impl<S> Metered<S> {
    fn new(
        inner: S,
        activity: Arc<Activity>,
        budget: Arc<Mutex<PairBudget>>,
        rates: Rates,
        metrics: &RelayMetrics,
    ) -> Self {
        Metered {
            inner,
            activity,
            budget,
            rates,
            sleep: None,
            metrics: metrics.clone(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let since = loop {
            if let Some(sleep) = &mut this.sleep {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            let now = Instant::now();
            let since = now.saturating_duration_since(this.rates.origin);
            let pause = this
                .rates
                .limits
                .iter()
                .filter_map(|rate| lock(rate).pause(since))
                .max();
            match pause {
                None => break since,
                Some(pause) => this.sleep = Some(Box::pin(sleep_until(now + pause))),
            }
        };
        let allowed = lock(&this.budget).allowed(buf.remaining());
        if allowed == 0 && buf.remaining() > 0 {
            return Poll::Ready(Err(std::io::Error::other(PairEnd::ByteLimit.message())));
        }
        let n = {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(allowed));
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
            limited.filled().len()
        };
        buf.advance(n);
        if n > 0 {
            this.activity.touch();
            this.metrics.bytes(u64::try_from(n).unwrap_or(u64::MAX));
            lock(&this.budget).spend(n);
            for rate in &this.rates.limits {
                lock(rate).spend(since, n);
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A deadline that never comes, for a disabled `select!` branch.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
