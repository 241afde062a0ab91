//! Relay load generator: many relayed pairs at once through a running
//! `ferry serve`, each pushing the same amount of data one way; prints one
//! JSON object and exits non-zero if any pair failed.
//!
//! ```text
//! cargo run --release -p ferry-tests --example relay_load -- --server 127.0.0.1:8443 [--pairs 200] [--mib 16]
//! ```
//!
//! 1. Signal: per pair, a sender allocates a nameplate and a receiver
//!    claims it; both get the nameplate's relay token.
//! 2. Join: all 2 x pairs relay connections at once (the relay's first
//!    line, as `relay_connect` sends it, each side with the token its own
//!    signalling client got).
//! 3. Push: once every pair that joined is joined, each sender writes
//!    `--mib` MiB of a [`Pattern`] seeded per pair and closes; each receiver
//!    reads to the end and compares every byte with the pattern.
//!
//! `secs` runs from the first byte received by any pair to the last byte
//! received by any pair; `aggregate_mib_per_sec` is all pairs' bytes over
//! it. With a loopback server, each side of a pair connects from its own
//! loopback source address (127.B.C.D: one signalling and one relay
//! connection each), so per-address caps and connection rate limits see
//! many small parties; with `--one-source`, or another server, everything
//! comes from one address and the server needs limits that let it hold
//! 2 x pairs signalling plus 2 x pairs relay connections:
//! `--max-connections-per-ip`, `--relay-max-per-ip`. `--relay-max-pairs`
//! must let all pairs in at once either way.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use clap::Parser;
use ferry_proto::signal::{
    ClientToServer, MAX_RELAY_FRAME, RELAY_PROTOCOL_VERSION, ServerToClient, decode_frame,
    encode_frame,
};
use ferry_relay::{Token, token_to_hex};
use ferry_rendezvous::{SignalClient, SignalEvent};
use ferry_tests::Pattern;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// Many relayed pairs at once through a running `ferry serve`.
#[derive(Debug, Parser)]
struct Args {
    /// The server, IP:PORT.
    #[arg(long)]
    server: SocketAddr,
    /// Connect every client from the default source address, even to a
    /// loopback server.
    #[arg(long)]
    one_source: bool,
    /// Pairs at once.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// MiB each pair moves (sender to receiver).
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Bound on signalling and joining, per pair, in seconds.
    #[arg(long, default_value_t = 60)]
    setup_secs: u64,
    /// Bound on the data phase of each pair, in seconds.
    #[arg(long, default_value_t = 600)]
    transfer_secs: u64,
}

/// Write and read size, like the relay's own copy buffers.
const CHUNK: usize = 256 * 1024;

/// What a receiver saw.
struct Received {
    first: Instant,
    last: Instant,
}

/// When a pair passed each phase, and how it ended.
struct PairReport {
    index: usize,
    signalled: Instant,
    joined: Instant,
    result: Result<Received>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bytes = args.mib * 1024 * 1024;
    let started = Instant::now();
    // Every pair task passes both barriers exactly once, failed or not, so
    // the phases are clean: nobody pushes data while others still join.
    let barriers = Arc::new((Barrier::new(args.pairs), Barrier::new(args.pairs)));
    let mut tasks = JoinSet::new();
    let spread = args.server.ip().is_loopback() && !args.one_source;
    for index in 0..args.pairs {
        let sources = spread.then(|| (source_addr(2 * index), source_addr(2 * index + 1)));
        let ends = Ends {
            server: args.server,
            sources,
        };
        let barriers = barriers.clone();
        let setup = Duration::from_secs(args.setup_secs);
        let transfer = Duration::from_secs(args.transfer_secs);
        tasks.spawn(run_pair(index, ends, barriers, setup, transfer, bytes));
    }
    let mut reports = Vec::new();
    while let Some(done) = tasks.join_next().await {
        reports.push(done.context("a pair task panicked")?);
    }

    let mut failures: Vec<String> = Vec::new();
    let mut received = Vec::new();
    for report in &reports {
        match &report.result {
            Ok(seen) => received.push(seen),
            Err(error) => failures.push(format!("pair {}: {error:#}", report.index)),
        }
    }
    let signalled = reports.iter().map(|r| r.signalled).min().unwrap_or(started);
    let joined = reports.iter().map(|r| r.joined).min().unwrap_or(signalled);
    let first = received.iter().map(|r| r.first).min();
    let last = received.iter().map(|r| r.last).max();
    let secs = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    let mib_per_sec = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            bytes as f64 / 1048576.0 / secs
        } else {
            0.0
        }
    };
    let mut rates: Vec<f64> = received
        .iter()
        .map(|r| mib_per_sec(bytes, (r.last - r.first).as_secs_f64()))
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = match rates.len() {
        0 => 0.0,
        n if n % 2 == 1 => rates[n / 2],
        n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
    };
    failures.sort();
    let report = json!({
        "pairs": args.pairs,
        "pairs_ok": received.len(),
        "failures": failures.len(),
        "failure_reasons": failures.iter().take(10).collect::<Vec<_>>(),
        "bytes_per_pair": bytes,
        "mib_per_pair": args.mib,
        "signal_secs": round3((signalled - started).as_secs_f64()),
        "join_secs": round3((joined - signalled).as_secs_f64()),
        "start_to_first_byte_secs": round3(first.map_or(0.0, |f| (f - joined).as_secs_f64())),
        "secs": round3(secs),
        "aggregate_mib_per_sec": round3(mib_per_sec(bytes * received.len() as u64, secs)),
        "pair_mib_per_sec_median": round3(median),
        "pair_mib_per_sec_min": round3(rates.first().copied().unwrap_or(0.0)),
    });
    println!("{report}");
    if !failures.is_empty() {
        eprintln!(
            "relay_load: {} of {} pairs failed",
            failures.len(),
            args.pairs
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Where a pair connects to, and from: the (sender, receiver) source
/// addresses, or `None` for the default.
struct Ends {
    server: SocketAddr,
    sources: Option<(IpAddr, IpAddr)>,
}

/// The `index`-th loopback source address: 127.B.C.D with B varying
/// fastest, so neighbouring indices share no /16 and no /24.
fn source_addr(index: usize) -> IpAddr {
    let b = 1 + index % 250;
    let c = (index / 250) % 256;
    let d = 1 + (index / (250 * 256)) % 254;
    IpAddr::V4(Ipv4Addr::new(127, b as u8, c as u8, d as u8))
}

/// A TCP connection to `server` from `source` (any port), or from the
/// default address.
async fn connect_from(server: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("socket")?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding to {source}"))?;
    }
    socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server} from {source:?}"))
}

/// A signalling client connected from `source`.
async fn signal_from(
    server: SocketAddr,
    source: Option<IpAddr>,
) -> Result<(SignalClient, SocketAddr)> {
    let stream = connect_from(server, source).await?;
    let (client, welcome) = SignalClient::connect_over(&server.to_string(), Some(stream)).await?;
    Ok((client, welcome.server_addr))
}

/// Joins the relay from `source` with `token`, as `relay_connect` does:
/// the `relay` line, then lines up to `relay-paired`, read byte by byte
/// so no piped byte is taken.
async fn relay_from(
    relay: SocketAddr,
    source: Option<IpAddr>,
    token: &Token,
    wait: Duration,
) -> Result<TcpStream> {
    timeout(wait, async {
        let mut stream = connect_from(relay, source).await?;
        let _ = stream.set_nodelay(true);
        let mut first = BytesMut::new();
        let hello = ClientToServer::Relay {
            protocol: RELAY_PROTOCOL_VERSION,
            token: token_to_hex(token),
        };
        encode_frame(&hello, &mut first)?;
        stream
            .write_all(&first)
            .await
            .context("sending the token")?;
        let mut line = BytesMut::with_capacity(64);
        loop {
            let byte = stream
                .read_u8()
                .await
                .context("connection lost before pairing")?;
            line.extend_from_slice(&[byte]);
            if byte != b'\n' {
                if line.len() >= MAX_RELAY_FRAME {
                    bail!("relay line longer than {MAX_RELAY_FRAME} bytes");
                }
                continue;
            }
            match decode_frame::<ServerToClient>(&mut line)? {
                Some(ServerToClient::RelayWaiting) | None => {}
                Some(ServerToClient::RelayPaired { .. }) => return Ok(stream),
                Some(other) => bail!("relay refused: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("not paired at the relay within {wait:?}")))
}

/// One pair from signalling to the last byte. The tokens stay local and
/// go from `relay_token()` to the relay untouched.
async fn run_pair(
    index: usize,
    ends: Ends,
    barriers: Arc<(Barrier, Barrier)>,
    setup: Duration,
    transfer: Duration,
    bytes: u64,
) -> PairReport {
    // 1. Signal: the sender allocates, the receiver claims.
    let signalled = timeout(setup, async {
        let (a, b) = ends.sources.unzip();
        let (mut sender, _) = signal_from(ends.server, a)
            .await
            .context("sender connect")?;
        let (mut receiver, relay) = signal_from(ends.server, b)
            .await
            .context("receiver connect")?;
        let nameplate = sender.allocate().await.context("allocate")?;
        receiver.claim(nameplate).await.context("claim")?;
        match sender.recv().await.context("waiting for peer-joined")? {
            SignalEvent::PeerJoined => {}
            other => bail!("expected peer-joined, got {other:?}"),
        }
        let (a, b) = tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
        a.context("sender relay-request")?;
        b.context("receiver relay-request")?;
        let token_a = sender
            .relay_token()
            .context("the server gave the sender no relay token (is the relay on?)")?;
        let token_b = receiver
            .relay_token()
            .context("the server gave the receiver no relay token (is the relay on?)")?;
        Ok::<_, anyhow::Error>((sender, receiver, relay, token_a, token_b))
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("signalling timed out")));
    barriers.0.wait().await;
    let signalled_at = Instant::now();

    // 2. Join through the relay, every pair at once. The signalling
    // clients stay open for the pair's life, as ferry's do.
    let joined = match &signalled {
        Ok((_, _, relay, token_a, token_b)) => {
            let (source_a, source_b) = ends.sources.unzip();
            let (a, b) = tokio::join!(
                relay_from(*relay, source_a, token_a, setup),
                relay_from(*relay, source_b, token_b, setup)
            );
            match (a, b) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                (Err(error), _) | (_, Err(error)) => Err(anyhow!("relay join: {error:#}")),
            }
        }
        Err(error) => Err(anyhow!("{error:#}")),
    };
    barriers.1.wait().await;
    let joined_at = Instant::now();

    // 3. Push the data.
    let result = match joined {
        Ok((a, b)) => {
            let pattern = Pattern::new(index as u64 + 1);
            timeout(transfer, push(a, b, &pattern, bytes))
                .await
                .unwrap_or_else(|_| Err(anyhow!("transfer timed out")))
        }
        Err(error) => Err(error),
    };
    drop(signalled);
    PairReport {
        index,
        signalled: signalled_at,
        joined: joined_at,
        result,
    }
}

/// Writes `bytes` of `pattern` on `a`, reads and checks them on `b`.
async fn push(a: TcpStream, mut b: TcpStream, pattern: &Pattern, bytes: u64) -> Result<Received> {
    let writer = async {
        let mut a = a;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            pattern.fill(sent, &mut buf[..n]);
            a.write_all(&buf[..n]).await.context("sending")?;
            sent += n as u64;
        }
        a.shutdown().await.context("closing the sending side")?;
        // Hold the stream until the receiver is done, so the relay sees a
        // half-close, not a reset.
        let mut rest = [0u8; 1];
        let _ = a.read(&mut rest).await;
        Ok::<_, anyhow::Error>(())
    };
    let reader = async {
        let mut check = pattern.checker();
        let mut buf = vec![0u8; CHUNK];
        let mut first = None;
        loop {
            let n = b.read(&mut buf).await.context("receiving")?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            check.update(&buf[..n]).map_err(|offset| {
                anyhow!("received data differs from what was sent at byte {offset}")
            })?;
            if check.checked() > bytes {
                bail!("received more than the {bytes} bytes sent");
            }
        }
        let last = Instant::now();
        if check.checked() != bytes {
            bail!("received {} of {bytes} bytes", check.checked());
        }
        b.shutdown().await.context("closing the receiving side")?;
        Ok(Received {
            first: first.unwrap_or(last),
            last,
        })
    };
    let (wrote, read) = tokio::join!(writer, reader);
    let received = read?;
    wrote?;
    Ok(received)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
