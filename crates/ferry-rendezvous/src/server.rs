//! The tokio driver of the rendezvous server.
//!
//! ```text
//! serve(): ferry_limits::accept::serve, the accept loop shared with the
//!   relay:
//!   - it caps connections (max_connections); then admission::Admission
//!     caps each address bucket (IPv4 prefix, IPv6 /64) and its rate of
//!     new connections (a connection holds an accept::BucketSlot of it);
//!     refused connections get one error frame and are closed
//!     (accept::refuse: a bounded number linger briefly so the frame
//!     arrives; the rest close at once)
//!   - accept errors back off (up to 1 s)
//!   - spawns connection(), one task per TCP connection
//! connection(): with TLS configured (ServerConfig::tls), first tells a
//!   TLS client from a plain one by the first byte (ferry_relay::Carrier::
//!   accept: at most PEEK_WAIT, 10 s, while holding the permit and the
//!   bucket slot) and runs the TLS handshake; then, either way, reads frames (64 KiB limit, checked before buffering more)
//!   -> ActorMsg to the actor; writes the frames the actor encodes for it
//!   (queue bounded in bytes, OUTBOUND_BYTES; a client that does not keep
//!   up is dropped). An idle connection holds no read or write buffer:
//!   they are taken when bytes come and given back when drained.
//! actor(): owns state::Rendezvous, the only place decisions are made;
//!   one timer re-armed from poll_timeout()
//! metrics (ServerConfig::metrics): admit() counts refusals by limit and
//!   accepted connections; the actor adds what the core's Stats counted
//!   since its last step and sets the client and nameplate gauges; the
//!   core itself knows nothing of metrics
//! shutdown: the accept loop stops, the actor sends every client an
//!   `error {shutting-down}` and closes it; the actor and the tasks get
//!   shutdown_grace (5 s) to finish, then the rest are aborted.
//! ```
//!
//! Cluster (ServerConfig::cluster, `ferry serve --cluster`): several
//! instances share a `ferry_cluster::Directory`. The core (with
//! `Config::clustered`) asks it before it opens a nameplate (a cluster-wide
//! `SET NX`) and before it calls a claim unknown; the link (`link.rs`) runs
//! those requests as tasks and carries proxied clients through the
//! instances' inboxes (`hop.rs`):
//!
//! ```text
//!  sender --TCP--> instance A (home of 17)      receiver --TCP--> instance B
//!                  core: allocate 17                         core: claim 17?
//!                  directory: SET np:17 A NX                 directory: GET np:17 = A
//!                                                            core: Proxy -> A
//!                  core <-- connect/frame ------------------ B's link
//!                  (remote client, B's addr)  inbox:A
//!                  core --> to-client/close ----------------> B writes to the
//!                                             inbox:B          receiver's TCP
//! ```
//!
//! So claims, the one-guess rule, mailbox queues, relay tokens and the
//! per-address budgets of a nameplate stay in its home's core. Without a
//! cluster none of this runs: the core asks nothing, as before.
//!
//! The first frame of a connection decides what it is for: `hello` is
//! signalling; `relay {token}` hands the connection (with any bytes read
//! beyond that line) to the [`RelayServer`], which pairs it and pipes bytes
//! until the pair ends; the connection keeps its connection-limit permits
//! meanwhile. Without a relay here, relay frames get `error {relay-refused}`.
//!
//! Relay tokens: the core signs them with a [`TokenKey`] and the relay
//! checks them with the same key, so nothing passes between the two. With
//! a relay in this process the key is the relay's own (random, made at
//! start-up); with the relay on another host (`Config::relay_addr`, told
//! to clients in the welcome) it comes from the secret both hold.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use ferry_limits::accept::{self, AcceptConfig, Accepted, BucketSlot, Verdict, linger};
use ferry_metrics::{
    Allocation, ClaimOutcome, Closed, ConnectionKind, Limit, Metrics, OpenConnection,
    RendezvousMetrics,
};
use ferry_proto::signal::{
    ClientToServer, ErrorCode, FrameError, MAX_FRAME, PathOutcome, RELAY_PROTOCOL_VERSION,
    ServerToClient, decode_frame, encode_frame,
};
use ferry_relay::token::unix_secs;
use ferry_relay::{Carrier, RelayConfig, RelayServer, ServerTls, TokenKey};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info};

use crate::admission::{Admission, AdmissionLimits, Refusal};
use crate::link::ClusterLink;
use crate::state::{ClientId, Config, Rendezvous, Stats};
use ferry_cluster::Directory;

/// Bytes of frames queued for one client before it counts as too slow and
/// is dropped.
pub const OUTBOUND_BYTES: usize = 1 << 20;

/// How long one write may take before the client counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const INBOX: usize = 1024;
const READ_CHUNK: usize = 8 * 1024;
/// Refused connections lingering at once to deliver their error frame.
const MAX_LINGERING_REFUSALS: usize = 64;
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Settings of [`serve`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Nameplate and heartbeat settings.
    pub rendezvous: Config,
    /// Connections served at once (default 1024).
    pub max_connections: usize,
    /// Connections served at once from one address bucket (default 16):
    /// one IPv4 address (or `rendezvous.bucketing.ipv4_prefix`), one IPv6
    /// /64. Relay connections count here too.
    pub max_connections_per_ip: usize,
    /// New connections a second one address bucket may open, sustained
    /// (default 10).
    pub connections_per_second: f64,
    /// New connections one address bucket may open in a burst (default 30).
    pub connection_burst: f64,
    /// A relay on the same listener, with its limits (default none: relay
    /// connections are refused, and relay tokens are issued only when
    /// `rendezvous.relay_key` is set, for a relay on another host). Its
    /// tokens are signed with `rendezvous.relay_key` when set, else with a
    /// random key made at start.
    pub relay: Option<RelayConfig>,
    /// On shutdown, how long open connections (relayed pairs above all) may
    /// run on before they are cut (default 5 s).
    pub shutdown_grace: Duration,
    /// Where it counts what it does (default: a registry of its own that
    /// nobody reads). [`serve`] gives the relay it makes the same one.
    pub metrics: Metrics,
    /// TLS on the listener (default none: plain only). With it, each
    /// connection is told apart by its first byte
    /// ([`Carrier::accept`]): TLS clients get TLS, plain clients stay
    /// plain, and the welcome says this port offers TLS.
    pub tls: Option<ServerTls>,
    /// The directory shared with other instances (default none: this
    /// instance is the only one, and keeps everything in memory). See
    /// the module doc's cluster part.
    pub cluster: Option<Directory>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            rendezvous: Config::default(),
            max_connections: 1024,
            max_connections_per_ip: 16,
            connections_per_second: 10.0,
            connection_burst: 30.0,
            relay: None,
            shutdown_grace: Duration::from_secs(5),
            metrics: Metrics::default(),
            tls: None,
            cluster: None,
        }
    }
}

/// Serves signalling (and the relay, when `config.relay` is set) on an
/// already-bound listener until `shutdown` resolves, then closes
/// connections gracefully.
///
/// Returns an error only if the listener's address cannot be read.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let relay = config.relay.clone().map(|relay| {
        let key = config
            .rendezvous
            .relay_key
            .clone()
            .unwrap_or_else(random_key);
        RelayServer::with_metrics(relay, key, config.metrics.relay())
    });
    serve_with_relay(listener, config, relay, shutdown).await
}

/// Like [`serve`], with a relay the caller made (to read its
/// [`stats`](RelayServer::stats), or share it); `config.relay` is ignored
/// and tokens are signed with the relay's key. `None` runs no relay here
/// (tokens are still issued when `config.rendezvous.relay_key` is set).
pub async fn serve_with_relay(
    listener: TcpListener,
    config: ServerConfig,
    relay: Option<RelayServer>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let mut core_config = config.rendezvous.clone();
    core_config.tls_offered = config.tls.is_some();
    if let Some(relay) = &relay {
        core_config.relay_key = Some(relay.key().clone());
    }
    core_config.clustered = config.cluster.is_some();
    let cluster = match &config.cluster {
        Some(directory) => {
            let inbox = directory.subscribe().await.map_err(std::io::Error::other)?;
            Some(ClusterLink::new(directory.clone(), inbox))
        }
        None => None,
    };
    info!(
        %local,
        relay_here = relay.is_some(),
        relay_elsewhere = ?core_config.relay_addr,
        "rendezvous server listening"
    );
    // 32 bytes of seed: relay token nonces come from this rng.
    let mut core = Rendezvous::with_seed(core_config, rand::random::<[u8; 32]>());
    core.start(Instant::now().into_std());
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
    let (stop_tx, stop_rx) = oneshot::channel();
    let metrics = config.metrics.rendezvous();
    let actor = tokio::spawn(actor(core, inbox_rx, stop_rx, metrics.clone(), cluster));

    let admission = Arc::new(Mutex::new(Admission::new(AdmissionLimits {
        bucketing: config.rendezvous.bucketing,
        max_per_bucket: config.max_connections_per_ip.max(1),
        per_second: config.connections_per_second,
        burst: config.connection_burst,
        max_tracked_buckets: config.rendezvous.max_tracked_buckets,
    })));
    let started = Instant::now();
    let mut next_id: ClientId = 1;
    let accept = AcceptConfig {
        max_connections: config.max_connections,
        // Refused connections that may linger to deliver their error
        // frame; beyond this many at once, they are closed at once.
        max_lingering_refusals: MAX_LINGERING_REFUSALS,
        shutdown_grace: config.shutdown_grace,
        name: "rendezvous",
    };
    let admit = |accepted: Accepted| {
        let Accepted {
            stream,
            addr,
            permit,
        } = accepted;
        let Some(permit) = permit else {
            metrics.refusals.count(Limit::MaxConnections);
            debug!(%addr, "connection limit reached");
            let message = "the server is at its connection limit; try again later".to_string();
            return Verdict::Refuse(refuse(stream, ErrorCode::ServerFull, message));
        };
        let now = started.elapsed();
        let slot = match BucketSlot::take(&admission, |admission| admission.admit(now, addr.ip())) {
            Ok(slot) => slot,
            Err(refusal) => {
                debug!(%addr, %refusal, "connection refused");
                let (code, limit) = match refusal {
                    Refusal::PerAddress { .. } => {
                        (ErrorCode::ServerFull, Limit::ConnectionsPerAddress)
                    }
                    _ => (ErrorCode::RateLimited, Limit::ConnectionRate),
                };
                metrics.refusals.count(limit);
                return Verdict::Refuse(refuse(stream, code, refusal.to_string()));
            }
        };
        let id = next_id;
        next_id += 1;
        let conn = Conn {
            id,
            addr,
            inbox: inbox_tx.clone(),
            relay: relay.clone(),
            tls: config.tls.clone(),
            metrics: metrics.clone(),
            _open: metrics.connections.accepted(),
            _slot: slot,
        };
        Verdict::Serve(permit, connection(conn, stream))
    };
    let stopping = |_open| {
        info!("rendezvous server shutting down");
        let _ = stop_tx.send(());
        async move {
            let _ = actor.await;
        }
    };
    let drained = ferry_limits::accept::serve(listener, accept, shutdown, admit, stopping).await;
    if drained.cut > 0 {
        debug!(
            connections = drained.cut,
            "connections still open after the grace period; aborted them"
        );
    }
    Ok(())
}

/// A relay key from 32 bytes of the OS's randomness, for a relay whose
/// rendezvous server runs in the same process.
fn random_key() -> TokenKey {
    TokenKey::from_random(rand::random())
}

/// Messages from connection tasks to the actor.
pub(crate) enum ActorMsg {
    Connect {
        id: ClientId,
        addr: SocketAddr,
        out: Outbox,
    },
    Frame {
        id: ClientId,
        msg: ClientToServer,
    },
    FrameError {
        id: ClientId,
        error: FrameError,
    },
    Disconnect {
        id: ClientId,
    },
}

/// Messages from the actor to one connection task.
enum Out {
    /// An encoded frame.
    Frame(Bytes),
    /// Flush what is queued, then close.
    Close,
}

/// The actor's end of one connection's queue, bounded in bytes.
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes queued and not yet written; the connection task subtracts
    /// what it wrote.
    queued: Arc<AtomicUsize>,
}

impl Outbox {
    /// Queues `msg`; false when the client's queue is full or it is gone.
    pub(crate) fn frame(&self, msg: &ServerToClient) -> bool {
        let mut buf = BytesMut::new();
        if let Err(error) = encode_frame(msg, &mut buf) {
            debug!(%error, "could not encode frame");
            return true;
        }
        let len = buf.len();
        if self.queued.load(Ordering::Relaxed) + len > OUTBOUND_BYTES {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.send(Out::Frame(buf.freeze())).is_ok()
    }

    pub(crate) fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }
}

async fn actor(
    mut core: Rendezvous,
    mut inbox: mpsc::Receiver<ActorMsg>,
    mut stop: oneshot::Receiver<()>,
    metrics: RendezvousMetrics,
    mut cluster: Option<ClusterLink>,
) {
    let mut conns: HashMap<ClientId, Outbox> = HashMap::new();
    let mut counted = Stats::default();
    loop {
        let cluster_input = async {
            match cluster.as_mut() {
                Some(link) => link.next().await,
                None => std::future::pending().await,
            }
        };
        let deadline = core.poll_timeout().map(Instant::from_std);
        let timer = async {
            match deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                let now = Instant::now().into_std();
                core.handle_unix_time(unix_secs(std::time::SystemTime::now()));
                match msg {
                    ActorMsg::Connect { id, addr, out } => {
                        conns.insert(id, out);
                        core.handle_connect(now, id, addr);
                    }
                    ActorMsg::Frame { id, msg } => match cluster.as_mut() {
                        Some(link) if link.proxied.contains_key(&id) => link.forward(id, msg),
                        _ => core.handle_message(now, id, msg),
                    },
                    ActorMsg::FrameError { id, error } => match cluster.as_mut() {
                        Some(link) if link.proxied.contains_key(&id) => {
                            debug!(client = id, %error, "bad frame from a proxied client");
                            if let Some(out) = conns.remove(&id) {
                                out.close();
                            }
                            link.gone(id);
                        }
                        _ => core.handle_frame_error(now, id, &error),
                    },
                    ActorMsg::Disconnect { id } => {
                        conns.remove(&id);
                        match cluster.as_mut() {
                            Some(link) if link.proxied.contains_key(&id) => link.gone(id),
                            _ => core.handle_disconnect(now, id),
                        }
                    }
                }
            }
            input = cluster_input => {
                let now = Instant::now().into_std();
                core.handle_unix_time(unix_secs(std::time::SystemTime::now()));
                if let Some(link) = cluster.as_mut() {
                    link.handle(now, input, &mut core, &mut conns);
                }
            }
            _ = timer => core.handle_timeout(Instant::now().into_std()),
        }
        flush(&mut core, &mut conns, &metrics, cluster.as_mut());
        let stats = core.stats();
        if stats != counted {
            export(&metrics, &counted, &stats);
            counted = stats;
        }
        metrics.set_open(core.client_count(), core.nameplate_count());
    }
    let shutting_down = ServerToClient::Error {
        code: ErrorCode::ShuttingDown,
        message: "the rendezvous server is shutting down; try again in a moment".into(),
    };
    if let Some(link) = cluster.as_ref() {
        link.leave().await;
    }
    for (_, out) in conns.drain() {
        out.frame(&shutting_down);
        out.close();
    }
    if let Some(link) = cluster.as_mut() {
        link.shut_down(&shutting_down).await;
    }
}

/// Adds what the core counted since `before` to the metrics.
fn export(metrics: &RendezvousMetrics, before: &Stats, after: &Stats) {
    let delta = |field: fn(&Stats) -> u64| field(after).saturating_sub(field(before));
    metrics.nameplates_allocated(Allocation::Random, delta(|s| s.allocated));
    metrics.nameplates_allocated(Allocation::Chosen, delta(|s| s.reserved));
    metrics.nameplates_allocated(Allocation::Rejoin, delta(|s| s.rejoin_channels));
    metrics.nameplates_closed(Closed::Freed, delta(|s| s.freed));
    metrics.nameplates_closed(Closed::Burnt, delta(|s| s.burnt));
    metrics.nameplates_closed(Closed::Expired, delta(|s| s.expired));
    metrics.claims(ClaimOutcome::Ok, delta(|s| s.claimed));
    metrics.claims(ClaimOutcome::UnknownNameplate, delta(|s| s.claims_unknown));
    metrics.claims(ClaimOutcome::Taken, delta(|s| s.claims_taken));
    metrics.claims(ClaimOutcome::Blocked, delta(|s| s.claims_blocked));
    metrics.claims(
        ClaimOutcome::AlreadyHolds,
        delta(|s| s.claims_already_holding),
    );
    metrics.rejoins(delta(|s| s.rejoined));
    for ((outcome, now), (_, then)) in after.paths.iter().zip(before.paths.iter()) {
        metrics.path_outcomes(path_label(outcome), now.saturating_sub(then));
    }
    let refusals = &metrics.refusals;
    refusals.count_n(Limit::MaxNameplates, delta(|s| s.nameplates_full));
    refusals.count_n(Limit::ClaimBlock, delta(|s| s.claims_blocked));
    refusals.count_n(
        Limit::FailedClaimsPerConnection,
        delta(|s| s.failed_claims_closed),
    );
    refusals.count_n(Limit::PendingMessages, delta(|s| s.pending_full));
}

/// The metrics label of a path outcome the core counted.
fn path_label(outcome: PathOutcome) -> ferry_metrics::PathOutcome {
    use ferry_metrics::PathOutcome as Label;
    match outcome {
        PathOutcome::Lan => Label::Lan,
        PathOutcome::DirectTcp => Label::DirectTcp,
        PathOutcome::SimultaneousOpen => Label::SimultaneousOpen,
        PathOutcome::Quic => Label::Quic,
        PathOutcome::Relay => Label::Relay,
        PathOutcome::MovedToDirect => Label::MovedToDirect,
        PathOutcome::NoPath => Label::NoPath,
        _ => Label::Unknown,
    }
}

/// Hands the core's frames and closes to the connection tasks (or, for
/// remote clients, to their instances), and its directory requests and
/// proxies to the cluster link.
fn flush(
    core: &mut Rendezvous,
    conns: &mut HashMap<ClientId, Outbox>,
    metrics: &RendezvousMetrics,
    mut cluster: Option<&mut ClusterLink>,
) {
    loop {
        if let Some(link) = cluster.as_deref_mut() {
            while let Some(request) = core.poll_directory() {
                link.request(request);
            }
            while let Some(proxy) = core.poll_proxy() {
                link.proxy(proxy);
            }
        }
        while let Some((id, msg)) = core.poll_transmit() {
            let Some(out) = conns.get(&id) else {
                if let Some(link) = cluster.as_deref_mut() {
                    if !link.send_to_remote(id, msg) {
                        core.handle_disconnect(Instant::now().into_std(), id);
                    }
                }
                continue;
            };
            if !out.frame(&msg) {
                metrics.refusals.count(Limit::OutboundQueue);
                debug!(
                    client = id,
                    "client does not keep up with its frames; dropping it"
                );
                // Dropping the sender makes the connection task close.
                conns.remove(&id);
                core.handle_disconnect(Instant::now().into_std(), id);
            }
        }
        let Some(id) = core.poll_close() else { break };
        if let Some(out) = conns.remove(&id) {
            out.close();
        } else if let Some(link) = cluster.as_deref_mut() {
            link.close_remote(id);
        }
    }
    if let Some(link) = cluster {
        while let Some(request) = core.poll_directory() {
            link.request(request);
        }
    }
}

/// What a connection task holds; its bucket slot is released when it ends
/// (its place under the connection cap right after).
struct Conn {
    id: ClientId,
    addr: SocketAddr,
    inbox: mpsc::Sender<ActorMsg>,
    relay: Option<RelayServer>,
    tls: Option<ServerTls>,
    metrics: RendezvousMetrics,
    /// Counts it open in the metrics while it lives.
    _open: OpenConnection,
    _slot: BucketSlot<Admission>,
}

/// One connection: frames in to the actor, frames out to the socket; or,
/// when the first frame is `relay`, a relay connection.
async fn connection(conn: Conn, tcp: TcpStream) {
    let Conn {
        id,
        addr,
        ref inbox,
        ref relay,
        ref tls,
        ref metrics,
        ..
    } = conn;
    let _ = tcp.set_nodelay(true);
    // Plain or TLS, by the first byte (only with TLS configured); a
    // silent client waits at most PEEK_WAIT here, holding its slot.
    let mut stream = match Carrier::accept(tcp, tls.as_ref()).await {
        Ok(stream) => stream,
        Err(error) => {
            debug!(client = id, %addr, %error, "connection ended before its first frame");
            return;
        }
    };
    let mut first_frame = true;
    let (tx, mut out_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox {
        tx,
        queued: queued.clone(),
    };
    if inbox
        .send(ActorMsg::Connect {
            id,
            addr,
            out: outbox,
        })
        .await
        .is_err()
    {
        return;
    }
    // Empty until bytes arrive: an idle connection holds no buffer.
    let mut input = BytesMut::new();
    let mut reading = true;
    'conn: loop {
        // Hand every complete frame to the actor.
        while reading {
            match decode_frame::<ClientToServer>(&mut input) {
                Ok(Some(msg)) => {
                    // First-frame dispatch: a relay connection leaves the
                    // actor at once; everything else is signalling, whose
                    // core insists on `hello` first.
                    if std::mem::take(&mut first_frame) {
                        let relaying = matches!(msg, ClientToServer::Relay { .. });
                        metrics.first_frame(if relaying {
                            ConnectionKind::Relay
                        } else {
                            ConnectionKind::Signalling
                        });
                        if let ClientToServer::Relay { protocol, token } = msg {
                            let _ = inbox.send(ActorMsg::Disconnect { id }).await;
                            // Boxed: the relay's state machine is large, and
                            // every signalling connection's task would
                            // otherwise carry its size.
                            Box::pin(relay_connection(
                                stream,
                                addr,
                                protocol,
                                token,
                                input,
                                relay.as_ref(),
                            ))
                            .await;
                            return;
                        }
                    }
                    if inbox.send(ActorMsg::Frame { id, msg }).await.is_err() {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // The core answers with an error frame and a close.
                    reading = false;
                    if inbox
                        .send(ActorMsg::FrameError { id, error })
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
            }
        }
        if input.is_empty() && input.capacity() > 0 {
            // Drained: give the buffer back.
            input = BytesMut::new();
        }
        // Never more than MAX_FRAME buffered: decode_frame refuses a full
        // buffer without a newline. A plain connection reserves room only
        // once readable, so an idle one holds no buffer.
        let room = READ_CHUNK.min(MAX_FRAME.saturating_sub(input.len()).max(1));
        tokio::select! {
            out = out_rx.recv() => {
                let mut next = out;
                // Write whatever is queued, frame by frame.
                loop {
                    match next {
                        Some(Out::Frame(frame)) => {
                            match timeout(WRITE_TIMEOUT, stream.write_all(&frame)).await {
                                Ok(Ok(())) => {
                                    queued.fetch_sub(frame.len(), Ordering::Relaxed);
                                }
                                Ok(Err(error)) => {
                                    debug!(client = id, %error, "write failed");
                                    break 'conn;
                                }
                                Err(_) => {
                                    debug!(client = id, "write timed out");
                                    break 'conn;
                                }
                            }
                        }
                        Some(Out::Close) | None => {
                            linger(&mut stream).await;
                            break 'conn;
                        }
                    }
                    match out_rx.try_recv() {
                        Ok(msg) => next = Some(msg),
                        Err(_) => break,
                    }
                }
            }
            read = stream.read_into(&mut input, room), if reading => {
                match read {
                    Ok(0) => break 'conn,
                    Ok(_) => {}
                    Err(error) => {
                        debug!(client = id, %error, "read failed");
                        break 'conn;
                    }
                }
            }
        }
    }
    let _ = inbox.send(ActorMsg::Disconnect { id }).await;
}

/// A connection whose first frame was `relay`: hand it to the relay, or
/// refuse it.
async fn relay_connection(
    mut stream: Carrier,
    addr: SocketAddr,
    protocol: u32,
    token: String,
    buffered: BytesMut,
    relay: Option<&RelayServer>,
) {
    let (code, message) = match relay {
        _ if protocol != RELAY_PROTOCOL_VERSION => (
            ErrorCode::ProtocolVersion,
            format!(
                "this relay speaks relay protocol {RELAY_PROTOCOL_VERSION}, you sent {protocol}; \
                 use the same ferry version as the server"
            ),
        ),
        Some(relay) => return relay.handle(stream, addr, token, buffered).await,
        None => (
            ErrorCode::RelayRefused,
            "this server runs no relay".to_string(),
        ),
    };
    debug!(%addr, ?code, "relay connection refused");
    let mut frame = BytesMut::new();
    if encode_frame(&ServerToClient::Error { code, message }, &mut frame).is_ok() {
        let _ = timeout(WRITE_TIMEOUT, stream.write_all(&frame)).await;
    }
    linger(&mut stream).await;
}

/// Writes one error frame to a refused connection without waiting; the
/// future it returns closes it after a short linger (`accept::refuse`).
fn refuse(
    stream: TcpStream,
    code: ErrorCode,
    message: String,
) -> impl Future<Output = ()> + Send + 'static {
    let mut frame = BytesMut::new();
    // Not encoded (it always is): nothing to deliver, so no linger either.
    let _ = encode_frame(&ServerToClient::Error { code, message }, &mut frame);
    accept::refuse(stream, &frame, REFUSAL_LINGER)
}
