//! Rendezvous load generator: many signalling clients against a running
//! `ferry serve` on loopback; prints one JSON object (with a one-line
//! `summary`) and exits non-zero if the server did not hold.
//!
//! ```text
//! cargo run --release -p ferry-tests --example rendezvous_load -- --server 127.0.0.1:8443 idle --connections 5000
//! ... churn --pairs 32 --secs 30
//! ... latency --idle 50000 --samples 1000
//! ```
//!
//! Every client speaks the protocol as `ferry` does (ferry_proto::signal):
//! `hello`, then `allocate` (a waiting sender) or `claim`; it answers the
//! server's `ping` and pings the server every heartbeat of the `welcome`.
//! Client sockets are bound to many loopback source addresses (127.B.C.D,
//! `--per-source` connections each, consecutive connections on different
//! addresses), so per-address caps and connection rate limits of a
//! hardened server see many small parties, as on the internet.
//!
//! - `idle`: `--connections` clients connect (`--parallel` setups at
//!   once, each retried a few times with back-off when refused), each
//!   allocates a nameplate and holds it; then, over `--window-secs`, every
//!   ping a client sends is counted and must be answered (pongs count until
//!   two heartbeats after the window). Fails if a client could not
//!   connect, got no nameplate, was dropped, or a ping went unanswered.
//! - `churn`: `--pairs` workers for `--secs`, each repeating the whole
//!   cycle with two fresh connections: the sender allocates, the receiver
//!   claims, each sends one mailbox message and reads the other's, both
//!   release and see the server close. Cycles per second and p50/p99 of
//!   the cycle time (from the sender's connect to both closes).
//! - `latency`: the `idle` population (`--idle` clients), then pairs one
//!   after another, each exchanging `--per-pair` mailbox messages in turn:
//!   p50/p99 from one peer's `send` to the other peer reading `message`.
//!
//! `--claim-server ADDR` (default: `--server`): the claiming side of each
//! churn and latency pair connects there instead, e.g. a second instance
//! of a `ferry serve --cluster` on the same Redis, so that every pair is
//! split over two instances (the idle population stays on `--server`).
//!
//! Bounded: every setup, cycle and read has a timeout, every loop a count
//! or a deadline. Traffic goes only to a loopback server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use clap::{Parser, Subcommand};
use ferry_proto::signal::{
    ClientToServer, ErrorCode, PROTOCOL_VERSION, ServerToClient, decode_frame, encode_frame,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};

/// Many signalling clients against a running `ferry serve` on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// The server, IP:PORT (a loopback address).
    #[arg(long)]
    server: SocketAddr,
    /// Where the claiming side of each churn and latency pair connects,
    /// IP:PORT (a loopback address; default: --server): another instance
    /// of a cluster, so that each pair is split over two instances.
    #[arg(long, value_name = "ADDR")]
    claim_server: Option<SocketAddr>,
    /// Client connections per loopback source address.
    #[arg(long, default_value_t = 8)]
    per_source: u32,
    /// What to measure.
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Idle clients holding nameplates, heartbeats counted over a window.
    Idle {
        #[command(flatten)]
        idle: IdleArgs,
        /// Seconds over which heartbeats are counted.
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
    },
    /// Allocate/claim/exchange/release cycles by concurrent pairs.
    Churn {
        /// Pairs cycling at once.
        #[arg(long, default_value_t = 32)]
        pairs: usize,
        /// How long to start new cycles, in seconds.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Source addresses the cycles rotate through.
        #[arg(long, default_value_t = 4096)]
        sources: u32,
    },
    /// One mailbox message's latency while idle clients are connected.
    Latency {
        #[command(flatten)]
        idle: IdleArgs,
        /// Messages measured in all.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Messages per pair (a fresh pair after that, as transfers are).
        #[arg(long, default_value_t = 10)]
        per_pair: usize,
        /// Pause between two messages, in milliseconds.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Bound on the measuring, in seconds: no new pair after it (the
        /// figure then fails, with the samples taken so far).
        #[arg(long, default_value_t = 180)]
        budget_secs: u64,
    },
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Idle clients, each holding a nameplate.
    #[arg(long = "connections", visible_alias = "idle", default_value_t = 5000)]
    connections: usize,
    /// Client setups (connect, hello, allocate) in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// Bound on bringing every idle client up, in seconds.
    #[arg(long, default_value_t = 600)]
    setup_secs: u64,
}

/// Bound on one connect + hello + welcome, and on one reply.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one whole churn cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Setup attempts per idle client (refusals back off 1, 2, 4, 8 s).
const SETUP_ATTEMPTS: u32 = 5;
/// Failure reasons kept for the report.
const REASONS_KEPT: usize = 10;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        bail!(
            "--server {} is not a loopback address; this generator loads only a local server",
            args.server
        );
    }
    let claim_server = args.claim_server.unwrap_or(args.server);
    if !claim_server.ip().is_loopback() {
        bail!(
            "--claim-server {claim_server} is not a loopback address; this generator loads only a local server"
        );
    }
    let servers = Servers {
        server: args.server,
        claim: claim_server,
    };
    let per_source = args.per_source.max(1);
    let (mut report, ok) = match args.mode {
        Mode::Idle { idle, window_secs } => {
            run_idle(args.server, per_source, &idle, window_secs).await?
        }
        Mode::Churn {
            pairs,
            secs,
            sources,
        } => run_churn(servers, pairs, secs, sources.max(2)).await?,
        Mode::Latency {
            idle,
            samples,
            per_pair,
            interval_ms,
            budget_secs,
        } => {
            let timing = Timing {
                samples,
                per_pair: per_pair.max(1),
                interval: Duration::from_millis(interval_ms),
                budget: Duration::from_secs(budget_secs),
            };
            run_latency(servers, per_source, &idle, timing).await?
        }
    };
    report["server"] = json!(servers.server.to_string());
    report["claim_server"] = json!(servers.claim.to_string());
    println!("{report}");
    if !ok {
        eprintln!(
            "rendezvous_load: the server did not hold: {}",
            report["summary"]
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Where the two sides of a pair connect: the allocating side to
/// `server`, the claiming side to `claim` (the same server, or another
/// instance of its cluster).
#[derive(Debug, Clone, Copy)]
struct Servers {
    server: SocketAddr,
    claim: SocketAddr,
}

/// The `index`-th loopback source address: 127.B.C.D with B varying
/// fastest, so neighbouring indices share no /16 and no /24.
fn source_addr(index: u32) -> IpAddr {
    let b = 1 + index % 250;
    let c = (index / 250) % 256;
    let d = 1 + (index / (250 * 256)) % 254;
    IpAddr::V4(Ipv4Addr::new(127, b as u8, c as u8, d as u8))
}

/// One signalling connection, driven by hand: frames in and out, pings
/// from the server answered while waiting for something else.
struct Client {
    stream: TcpStream,
    input: BytesMut,
    output: BytesMut,
    heartbeat: Duration,
}

/// How a client's wait for a frame ended badly.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    #[error("the server closed the connection")]
    Closed,
    #[error("the server sent error {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("{0}")]
    Other(String),
}

impl Client {
    /// Connects from `source`, says hello and reads the welcome.
    async fn open(server: SocketAddr, source: IpAddr) -> Result<Client, WaitError> {
        let socket = TcpSocket::new_v4().map_err(|e| WaitError::Other(format!("socket: {e}")))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| WaitError::Other(format!("bind {source}: {e}")))?;
        let stream = timeout(STEP_TIMEOUT, socket.connect(server))
            .await
            .map_err(|_| WaitError::Other("connect timed out".into()))?
            .map_err(|e| WaitError::Other(format!("connect from {source}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut client = Client {
            stream,
            input: BytesMut::with_capacity(512),
            output: BytesMut::with_capacity(128),
            heartbeat: Duration::from_secs(5),
        };
        client
            .send(&ClientToServer::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "ferry-rendezvous-load".into(),
            })
            .await?;
        match client.next().await? {
            ServerToClient::Welcome { heartbeat_secs, .. } => {
                client.heartbeat = Duration::from_secs(u64::from(heartbeat_secs.clamp(1, 300)));
                Ok(client)
            }
            other => Err(WaitError::Other(format!("expected welcome, got {other:?}"))),
        }
    }

    async fn send(&mut self, msg: &ClientToServer) -> Result<(), WaitError> {
        encode_frame(msg, &mut self.output).map_err(|e| WaitError::Other(e.to_string()))?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), WaitError> {
        let written = timeout(STEP_TIMEOUT, self.stream.write_all(&self.output)).await;
        self.output.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WaitError::Other(format!("write: {e}"))),
            Err(_) => Err(WaitError::Other("write timed out".into())),
        }
    }

    /// A frame already read, if a whole one is buffered.
    fn buffered(&mut self) -> Result<Option<ServerToClient>, WaitError> {
        decode_frame(&mut self.input).map_err(|e| WaitError::Other(format!("bad frame: {e}")))
    }

    /// Reads more input; `Closed` at end of stream.
    async fn fill(&mut self) -> Result<(), WaitError> {
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err(WaitError::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(WaitError::Other(format!("read: {e}"))),
        }
    }

    /// The next frame that is not a heartbeat (pings are answered);
    /// `error` frames become [`WaitError::Server`]. Bounded by STEP_TIMEOUT.
    async fn next(&mut self) -> Result<ServerToClient, WaitError> {
        timeout(STEP_TIMEOUT, async {
            loop {
                while let Some(frame) = self.buffered()? {
                    match frame {
                        ServerToClient::Ping { id } => {
                            self.send(&ClientToServer::Pong { id }).await?;
                        }
                        ServerToClient::Pong { .. } => {}
                        ServerToClient::Error { code, message } => {
                            return Err(WaitError::Server { code, message });
                        }
                        other => return Ok(other),
                    }
                }
                self.fill().await?;
            }
        })
        .await
        .map_err(|_| WaitError::Other(format!("no answer within {STEP_TIMEOUT:?}")))?
    }

    /// Releases and waits for the server to close (other frames skipped).
    async fn release(mut self) -> Result<(), WaitError> {
        self.send(&ClientToServer::Release {
            reason: None,
            path: None,
        })
        .await?;
        let closed = timeout(STEP_TIMEOUT, async {
            loop {
                match self.next().await {
                    Err(WaitError::Closed) => return Ok(()),
                    Err(other) => return Err(other),
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed.map_err(|_| WaitError::Other("the server did not close after release".into()))?
    }
}

/// Counters shared by the idle clients.
#[derive(Default)]
struct IdleStats {
    connected: AtomicU64,
    setup_failed: AtomicU64,
    setup_retries: AtomicU64,
    with_nameplate: AtomicU64,
    without_nameplate: AtomicU64,
    dropped: AtomicU64,
    pings_sent: AtomicU64,
    pings_answered: AtomicU64,
    server_pings: AtomicU64,
    /// Round trips of the answered counted pings.
    rtts: Mutex<Vec<Duration>>,
    reasons: Mutex<Vec<String>>,
}

impl IdleStats {
    fn reason(&self, reason: String) {
        if let Ok(mut reasons) = self.reasons.lock()
            && reasons.len() < REASONS_KEPT
        {
            reasons.push(reason);
        }
    }
}

/// Where the idle population is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    /// Pings sent now are counted.
    Window,
    /// Answers to counted pings still count; new pings do not.
    Drain,
    Stop,
}

/// A running idle population.
struct Idle {
    stats: Arc<IdleStats>,
    phase: watch::Sender<Phase>,
    tasks: JoinSet<()>,
    setup_secs: f64,
    connections: usize,
}

/// Brings `args.connections` idle clients up (sources `0..`), each holding
/// a nameplate; returns once all are up or failed, or the setup bound passed.
async fn start_idle(server: SocketAddr, per_source: u32, args: &IdleArgs) -> Idle {
    let stats = Arc::new(IdleStats::default());
    let (phase, phase_rx) = watch::channel(Phase::Setup);
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let sources = (args.connections as u32).div_ceil(per_source).max(1);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..args.connections as u32 {
        let source = source_addr(index % sources);
        tasks.spawn(idle_client(
            server,
            source,
            stats.clone(),
            phase_rx.clone(),
            gate.clone(),
        ));
    }
    let deadline = started + Duration::from_secs(args.setup_secs);
    let total = args.connections as u64;
    let mut last_note = Instant::now();
    while Instant::now() < deadline {
        let up = stats.connected.load(Ordering::Relaxed);
        let failed = stats.setup_failed.load(Ordering::Relaxed);
        if up + failed >= total {
            break;
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            eprintln!("rendezvous_load: {up} of {total} idle clients up, {failed} failed");
            last_note = Instant::now();
        }
        sleep(Duration::from_millis(50)).await;
    }
    Idle {
        stats,
        phase,
        tasks,
        setup_secs: started.elapsed().as_secs_f64(),
        connections: args.connections,
    }
}

impl Idle {
    /// Stops every idle client and waits (bounded) for them to close.
    async fn stop(mut self) {
        let _ = self.phase.send(Phase::Stop);
        let closing = async { while self.tasks.join_next().await.is_some() {} };
        if timeout(Duration::from_secs(30), closing).await.is_err() {
            self.tasks.abort_all();
        }
    }

    /// The counters as JSON, and whether everything held.
    fn report(&self) -> (serde_json::Value, bool) {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let reasons = s.reasons.lock().map(|r| r.clone()).unwrap_or_default();
        let mut rtts = s.rtts.lock().map(|r| r.clone()).unwrap_or_default();
        rtts.sort();
        let ok = get(&s.connected) == self.connections as u64
            && get(&s.with_nameplate) == self.connections as u64
            && get(&s.dropped) == 0
            && get(&s.pings_sent) > 0
            && get(&s.pings_sent) == get(&s.pings_answered);
        let value = json!({
            "connections": self.connections,
            "connected": get(&s.connected),
            "setup_failed": get(&s.setup_failed),
            "setup_retries": get(&s.setup_retries),
            "setup_secs": round3(self.setup_secs),
            "with_nameplate": get(&s.with_nameplate),
            "without_nameplate": get(&s.without_nameplate),
            "dropped": get(&s.dropped),
            "heartbeats_sent": get(&s.pings_sent),
            "heartbeats_answered": get(&s.pings_answered),
            "server_pings_answered": get(&s.server_pings),
            "heartbeat_rtt_ms_p50": round3(ms(percentile(&rtts, 0.50))),
            "heartbeat_rtt_ms_p99": round3(ms(percentile(&rtts, 0.99))),
            "heartbeat_rtt_ms_max": round3(ms(rtts.last().copied().unwrap_or_default())),
            "failure_reasons": reasons,
        });
        (value, ok)
    }
}

/// One idle client: set up (retried), then hold the nameplate, answer
/// pings and ping every heartbeat until told to stop.
async fn idle_client(
    server: SocketAddr,
    source: IpAddr,
    stats: Arc<IdleStats>,
    mut phase: watch::Receiver<Phase>,
    gate: Arc<Semaphore>,
) {
    let mut client = None;
    let mut backoff = Duration::from_secs(1);
    for attempt in 0..SETUP_ATTEMPTS {
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        let result = idle_setup(server, source).await;
        drop(permit);
        match result {
            Ok(setup) => {
                client = Some(setup);
                break;
            }
            Err(_) if attempt + 1 < SETUP_ATTEMPTS => {
                stats.setup_retries.fetch_add(1, Ordering::Relaxed);
                sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                stats.setup_failed.fetch_add(1, Ordering::Relaxed);
                stats.reason(format!("setup from {source}: {error}"));
                return;
            }
        }
    }
    let Some((mut client, nameplate)) = client else {
        return;
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    if nameplate.is_some() {
        stats.with_nameplate.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.without_nameplate.fetch_add(1, Ordering::Relaxed);
    }
    // Spread the first pings over one heartbeat.
    let offset = Duration::from_millis(rand::random::<u64>() % client.heartbeat.as_millis() as u64);
    let mut ticker = interval_at(Instant::now() + offset, client.heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_id: u64 = 0;
    // Counted pings not yet answered (a few at most).
    let mut counted: Vec<(u64, Instant)> = Vec::new();
    let end = loop {
        let now_phase = *phase.borrow();
        if now_phase == Phase::Stop {
            break None;
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break None;
                }
            }
            _ = ticker.tick() => {
                next_id += 1;
                if now_phase == Phase::Window {
                    counted.push((next_id, Instant::now()));
                    stats.pings_sent.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(error) = client.send(&ClientToServer::Ping { id: next_id }).await {
                    break Some(error.to_string());
                }
            }
            read = client.fill() => {
                if let Err(error) = read {
                    break Some(error.to_string());
                }
                let mut failed = None;
                loop {
                    match client.buffered() {
                        Ok(Some(ServerToClient::Ping { id })) => {
                            if now_phase == Phase::Window {
                                stats.server_pings.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Err(error) = client.send(&ClientToServer::Pong { id }).await {
                                failed = Some(error.to_string());
                                break;
                            }
                        }
                        Ok(Some(ServerToClient::Pong { id })) => {
                            if let Some(at) = counted.iter().position(|c| c.0 == id) {
                                let (_, sent) = counted.swap_remove(at);
                                stats.pings_answered.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut rtts) = stats.rtts.lock() {
                                    rtts.push(sent.elapsed());
                                }
                            }
                        }
                        Ok(Some(other)) => {
                            failed = Some(format!("unexpected frame while idle: {other:?}"));
                            break;
                        }
                        Ok(None) => break,
                        Err(error) => {
                            failed = Some(error.to_string());
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    break failed;
                }
            }
        }
    };
    if let Some(reason) = end {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        stats.reason(format!("idle client from {source} dropped: {reason}"));
    }
}

/// Connect, hello, allocate. The nameplate is `None` when the server
/// refused one (e.g. its nameplate cap); other errors fail the setup.
async fn idle_setup(server: SocketAddr, source: IpAddr) -> Result<(Client, Option<u32>)> {
    let mut client = Client::open(server, source).await?;
    client.send(&ClientToServer::Allocate).await?;
    match client.next().await {
        Ok(ServerToClient::Allocated { nameplate }) => Ok((client, Some(nameplate))),
        Ok(other) => bail!("expected allocated, got {other:?}"),
        Err(WaitError::Server {
            code: ErrorCode::ServerFull,
            ..
        }) => Ok((client, None)),
        Err(error) => Err(error.into()),
    }
}

/// Figure 1: idle clients with heartbeats over a window.
async fn run_idle(
    server: SocketAddr,
    per_source: u32,
    args: &IdleArgs,
    window_secs: u64,
) -> Result<(serde_json::Value, bool)> {
    let idle = start_idle(server, per_source, args).await;
    eprintln!(
        "rendezvous_load: {} idle clients up in {:.1} s; counting heartbeats for {window_secs} s",
        idle.stats.connected.load(Ordering::Relaxed),
        idle.setup_secs
    );
    let heartbeat = idle_heartbeat(server).await;
    let _ = idle.phase.send(Phase::Window);
    sleep(Duration::from_secs(window_secs)).await;
    let _ = idle.phase.send(Phase::Drain);
    sleep(2 * heartbeat + Duration::from_secs(1)).await;
    let (mut report, ok) = idle.report();
    idle.stop().await;
    let get = |k: &str| report[k].as_u64().unwrap_or(0);
    let summary = format!(
        "idle: {}/{} connected ({} holding a nameplate) in {:.1} s; {window_secs} s window: \
         heartbeats sent {} answered {} (round trip p50 {} ms p99 {} ms max {} ms), server pings answered {}, \
         dropped {}, setup failed {}",
        get("connected"),
        args.connections,
        get("with_nameplate"),
        report["setup_secs"].as_f64().unwrap_or(0.0),
        get("heartbeats_sent"),
        get("heartbeats_answered"),
        report["heartbeat_rtt_ms_p50"],
        report["heartbeat_rtt_ms_p99"],
        report["heartbeat_rtt_ms_max"],
        get("server_pings_answered"),
        get("dropped"),
        get("setup_failed"),
    );
    report["mode"] = json!("idle");
    report["window_secs"] = json!(window_secs);
    report["ok"] = json!(ok);
    report["summary"] = json!(summary);
    Ok((report, ok))
}

/// The server's heartbeat, from one short-lived client's welcome.
async fn idle_heartbeat(server: SocketAddr) -> Duration {
    // A source address the idle population does not use.
    match Client::open(server, IpAddr::V4(Ipv4Addr::new(127, 255, 255, 1))).await {
        Ok(client) => client.heartbeat,
        Err(_) => Duration::from_secs(5),
    }
}

/// Figure 2: whole allocate/claim/exchange/release cycles by `pairs`
/// workers for `secs`.
async fn run_churn(
    servers: Servers,
    pairs: usize,
    secs: u64,
    sources: u32,
) -> Result<(serde_json::Value, bool)> {
    let next_source = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();
    for _ in 0..pairs.max(1) {
        let next_source = next_source.clone();
        tasks.spawn(async move {
            let mut times = Vec::new();
            let mut failures = Vec::new();
            while Instant::now() < stop_at {
                let pick = || {
                    let n = next_source.fetch_add(1, Ordering::Relaxed);
                    source_addr((n % u64::from(sources)) as u32)
                };
                let (a, b) = (pick(), pick());
                let begun = Instant::now();
                match timeout(CYCLE_TIMEOUT, cycle(servers, a, b)).await {
                    Ok(Ok(())) => times.push(begun.elapsed()),
                    Ok(Err(error)) => failures.push(format!("{error:#}")),
                    Err(_) => failures.push(format!("cycle took over {CYCLE_TIMEOUT:?}")),
                }
            }
            (times, failures)
        });
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (t, f) = done.context("a churn worker panicked")?;
        times.extend(t);
        failures.extend(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    let rate = times.len() as f64 / elapsed;
    let (p50, p99) = (ms(percentile(&times, 0.50)), ms(percentile(&times, 0.99)));
    let ok = failures.is_empty() && !times.is_empty();
    let summary = format!(
        "churn: {pairs} pairs for {elapsed:.1} s: {} cycles ({rate:.0} cycles/s), cycle p50 {p50:.1} ms p99 {p99:.1} ms, {} failed",
        times.len(),
        failures.len()
    );
    let report = json!({
        "mode": "churn",
        "pairs": pairs,
        "secs": round3(elapsed),
        "cycles": times.len(),
        "cycles_per_sec": round3(rate),
        "cycle_ms_p50": round3(p50),
        "cycle_ms_p99": round3(p99),
        "failures": failures.len(),
        "failure_reasons": failures.iter().take(REASONS_KEPT).collect::<Vec<_>>(),
        "ok": ok,
        "summary": summary,
    });
    Ok((report, ok))
}

/// One whole cycle: `a` allocates, `b` claims, one message each way, both
/// release and see the server close.
async fn cycle(servers: Servers, a: IpAddr, b: IpAddr) -> Result<()> {
    let (mut sender, mut receiver) = pair(servers, a, b).await?;
    sender
        .send(&ClientToServer::Send { body: "s".into() })
        .await?;
    receiver
        .send(&ClientToServer::Send { body: "r".into() })
        .await?;
    expect_message(&mut sender, "r").await.context("sender")?;
    expect_message(&mut receiver, "s")
        .await
        .context("receiver")?;
    let (s, r) = tokio::join!(sender.release(), receiver.release());
    s.context("sender release")?;
    r.context("receiver release")?;
    Ok(())
}

/// A paired sender (allocated on `servers.server`, saw peer-joined) and
/// receiver (claimed on `servers.claim`).
async fn pair(servers: Servers, a: IpAddr, b: IpAddr) -> Result<(Client, Client)> {
    let mut sender = Client::open(servers.server, a)
        .await
        .context("sender connect")?;
    let mut receiver = Client::open(servers.claim, b)
        .await
        .context("receiver connect")?;
    sender.send(&ClientToServer::Allocate).await?;
    let nameplate = match sender.next().await.context("allocate")? {
        ServerToClient::Allocated { nameplate } => nameplate,
        other => bail!("expected allocated, got {other:?}"),
    };
    receiver.send(&ClientToServer::Claim { nameplate }).await?;
    match receiver.next().await.context("claim")? {
        ServerToClient::Claimed { .. } => {}
        other => bail!("expected claimed, got {other:?}"),
    }
    match sender.next().await.context("waiting for peer-joined")? {
        ServerToClient::PeerJoined { .. } => {}
        other => bail!("expected peer-joined, got {other:?}"),
    }
    Ok((sender, receiver))
}

/// Reads frames until `message {body}`, which must be `body`.
async fn expect_message(client: &mut Client, body: &str) -> Result<()> {
    match client.next().await? {
        ServerToClient::Message { body: got } if got == body => Ok(()),
        other => Err(anyhow!("expected message {body:?}, got {other:?}")),
    }
}

/// How the latency samples are taken.
struct Timing {
    samples: usize,
    per_pair: usize,
    interval: Duration,
    budget: Duration,
}

/// Figure 3: one mailbox message's latency with an idle population.
async fn run_latency(
    servers: Servers,
    per_source: u32,
    args: &IdleArgs,
    timing: Timing,
) -> Result<(serde_json::Value, bool)> {
    // The idle population, and the heartbeat, on --server.
    let server = servers.server;
    // Pairs use source addresses after the idle population's.
    let first_source = (args.connections as u32).div_ceil(per_source) + 1;
    // The first pair pairs before the idle clients come, so a server
    // whose nameplate cap they fill still has the pair's (each next pair
    // takes the one its predecessor freed); it pings while it waits.
    let (mut sender, mut receiver) = pair(
        servers,
        source_addr(first_source),
        source_addr(first_source + 1),
    )
    .await
    .context("the first latency pair")?;
    let idle = {
        let up = start_idle(server, per_source, args);
        tokio::pin!(up);
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut id = 0;
        loop {
            tokio::select! {
                idle = &mut up => break idle,
                _ = beat.tick() => {
                    id += 1;
                    sender.send(&ClientToServer::Ping { id }).await?;
                    receiver.send(&ClientToServer::Ping { id }).await?;
                }
            }
        }
    };
    let mut first_pair = Some((sender, receiver));
    eprintln!(
        "rendezvous_load: {} idle clients up in {:.1} s; measuring {} messages",
        idle.stats.connected.load(Ordering::Relaxed),
        idle.setup_secs,
        timing.samples
    );
    let _ = idle.phase.send(Phase::Window);
    let mut latencies = Vec::with_capacity(timing.samples);
    let mut failures = Vec::new();
    let pairs = timing.samples.div_ceil(timing.per_pair);
    let stop_at = Instant::now() + timing.budget;
    for pair_index in 0..pairs as u32 {
        if latencies.len() >= timing.samples {
            break;
        }
        if Instant::now() >= stop_at {
            failures.push(format!(
                "measuring took over {:?}: {} of {} messages",
                timing.budget,
                latencies.len(),
                timing.samples
            ));
            break;
        }
        let a = source_addr(first_source + 2 * pair_index);
        let b = source_addr(first_source + 2 * pair_index + 1);
        let want = timing.per_pair.min(timing.samples - latencies.len());
        let measured = timeout(
            CYCLE_TIMEOUT + timing.interval * want as u32,
            measure_pair(servers, first_pair.take(), (a, b), want, timing.interval),
        )
        .await;
        match measured {
            Ok(Ok(more)) => latencies.extend(more),
            Ok(Err(error)) => failures.push(format!("{error:#}")),
            Err(_) => failures.push("a latency pair timed out".into()),
        }
    }
    let heartbeat = idle_heartbeat(server).await;
    let _ = idle.phase.send(Phase::Drain);
    sleep(2 * heartbeat + Duration::from_secs(1)).await;
    let (idle_report, idle_ok) = idle.report();
    idle.stop().await;
    latencies.sort();
    let (p50, p99) = (
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    );
    let max = ms(latencies.last().copied().unwrap_or_default());
    let connected = idle_report["connected"].as_u64().unwrap_or(0);
    let ok = failures.is_empty() && latencies.len() == timing.samples && idle_ok;
    let summary = format!(
        "latency: one mailbox message p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms ({} messages, {pairs} pairs) \
         with {connected}/{} idle clients connected (heartbeats sent {} answered {}, dropped {}), {} failed",
        latencies.len(),
        args.connections,
        idle_report["heartbeats_sent"],
        idle_report["heartbeats_answered"],
        idle_report["dropped"],
        failures.len()
    );
    let report = json!({
        "mode": "latency",
        "samples": latencies.len(),
        "pairs": pairs,
        "message_ms_p50": round3(p50),
        "message_ms_p99": round3(p99),
        "message_ms_max": round3(max),
        "failures": failures.len(),
        "failure_reasons": failures.iter().take(REASONS_KEPT).collect::<Vec<_>>(),
        "idle": idle_report,
        "ok": ok,
        "summary": summary,
    });
    Ok((report, ok))
}

/// One pair exchanging `count` messages in turn; the time from each
/// `send` to the other side reading its `message`.
async fn measure_pair(
    servers: Servers,
    paired: Option<(Client, Client)>,
    (a, b): (IpAddr, IpAddr),
    count: usize,
    interval: Duration,
) -> Result<Vec<Duration>> {
    let (mut sender, mut receiver) = match paired {
        Some(paired) => paired,
        None => pair(servers, a, b).await?,
    };
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let body = format!("m{n}");
        let (from, to) = if n % 2 == 0 {
            (&mut sender, &mut receiver)
        } else {
            (&mut receiver, &mut sender)
        };
        let sent = Instant::now();
        from.send(&ClientToServer::Send { body: body.clone() })
            .await?;
        expect_message(to, &body).await?;
        latencies.push(sent.elapsed());
        sleep(interval).await;
    }
    let (s, r) = tokio::join!(sender.release(), receiver.release());
    s.context("sender release")?;
    r.context("receiver release")?;
    Ok(latencies)
}

/// The nearest-rank `q` quantile of sorted `values` (zero when empty).
fn percentile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
