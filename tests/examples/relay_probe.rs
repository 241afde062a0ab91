//! Relay token probe for the lab (scripts/e2e-relay-tokens.sh): one side of
//! a genuine relayed pair, or a client presenting a token the relay must
//! refuse. Prints one JSON object per line on stdout.
//!
//! ```text
//! relay_probe send    --server S --mib M --secs T [--reuse]   allocate, print the nameplate,
//!                       join the relay, send M MiB of a pattern paced over T s
//! relay_probe recv    --server S --nameplate N --mib M [--reuse]   claim, join, read and
//!                       check every byte; exit 1 unless exactly M MiB arrived intact
//! relay_probe bogus   --server S              present 32 random bytes as a token
//! relay_probe expired --server S --after SECS pair a fresh nameplate from this host, then
//!                       present its token SECS later (past the server's --relay-token-ttl)
//! ```
//!
//! `--reuse`: once joined, the side presents its own token a second time
//! while its pair moves data: a reused token.
//!
//! Events: `nameplate {nameplate}`, `joined {secs}`, `done {bytes, intact,
//! secs}` and `refusal {kind, outcome, code, message}` where outcome is
//! `refused` (the relay said no), `paired` (it did not) or `error`
//! (something else, e.g. a timeout). `bogus` and `expired` exit 0 when
//! refused, 2 when paired, 1 otherwise. Genuine tokens go from
//! `relay_token()` to `relay_connect` untouched; the bogus one is written
//! on the wire by hand, as an outsider's client would.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use clap::{Parser, Subcommand};
use ferry_proto::signal::{
    ClientToServer, MAX_RELAY_FRAME, RELAY_PROTOCOL_VERSION, ServerToClient, decode_frame,
    encode_frame,
};
use ferry_relay::{RelayError, relay_connect};
use ferry_rendezvous::{SignalClient, SignalEvent};
use ferry_tests::Pattern;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// One side of a relayed pair, or a client with a token to refuse.
#[derive(Debug, Parser)]
struct Args {
    /// The server, HOST:PORT.
    #[arg(long, global = true, default_value = "203.0.113.10:443")]
    server: String,
    /// Bound on waiting for the other side and on each relay join, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    wait: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Allocate a nameplate, join the relay, send a pattern.
    Send {
        /// MiB to send.
        #[arg(long, default_value_t = 32)]
        mib: u64,
        /// Spread the data evenly over this many seconds.
        #[arg(long, default_value_t = 0.0)]
        secs: f64,
        /// Present our token again once joined.
        #[arg(long)]
        reuse: bool,
    },
    /// Claim NAMEPLATE, join the relay, check the pattern.
    Recv {
        /// The sender's nameplate.
        #[arg(long)]
        nameplate: u32,
        /// MiB expected.
        #[arg(long, default_value_t = 32)]
        mib: u64,
        /// Present our token again once joined.
        #[arg(long)]
        reuse: bool,
    },
    /// Present a random token.
    Bogus,
    /// Pair a nameplate, wait, then present its token.
    Expired {
        /// Seconds to wait after the token was issued.
        #[arg(long)]
        after: f64,
    },
}

const CHUNK: usize = 64 * 1024;
/// Bound on the data phase.
const TRANSFER_WAIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let wait = Duration::from_secs(args.wait);
    match args.mode {
        Mode::Send { mib, secs, reuse } => send(&args.server, wait, mib, secs, reuse).await,
        Mode::Recv {
            nameplate,
            mib,
            reuse,
        } => recv(&args.server, wait, nameplate, mib, reuse).await,
        Mode::Bogus => {
            let relay = resolve(&args.server).await?;
            let outcome = bogus(relay, wait).await;
            finish(refusal_event("bogus", outcome))
        }
        Mode::Expired { after } => {
            let (mut sender, _) = SignalClient::connect(&args.server).await?;
            let (mut receiver, welcome) = SignalClient::connect(&args.server).await?;
            let nameplate = sender.allocate().await?;
            receiver.claim(nameplate).await?;
            let (_, token) =
                tokio::join!(sender.request_relay_token(), receiver.request_relay_token());
            let token = token?.context("the server gave no relay token (is the relay on?)")?;
            emit(json!({"event": "issued", "nameplate": nameplate}));
            sleep(Duration::from_secs_f64(after)).await;
            let outcome = relay_connect(welcome.server_addr, &token, wait).await;
            finish(refusal_event("expired", outcome.map(|_| ())))
        }
    }
}

async fn send(server: &str, wait: Duration, mib: u64, secs: f64, reuse: bool) -> Result<()> {
    let (mut client, welcome) = SignalClient::connect(server).await?;
    let nameplate = client.allocate().await?;
    emit(json!({"event": "nameplate", "nameplate": nameplate}));
    match timeout(wait, client.recv())
        .await
        .context("nobody claimed the nameplate in time")??
    {
        SignalEvent::PeerJoined => {}
        other => bail!("expected peer-joined, got {other:?}"),
    }
    let token = client
        .request_relay_token()
        .await?
        .context("the server gave no relay token (is the relay on?)")?;
    let started = Instant::now();
    let stream = relay_connect(welcome.server_addr, &token, wait).await?;
    emit(json!({"event": "joined", "secs": started.elapsed().as_secs_f64()}));
    let bytes = mib * 1024 * 1024;
    let pattern = Pattern::new(u64::from(nameplate));
    let transfer = async {
        let mut stream = stream;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        let begun = Instant::now();
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            pattern.fill(sent, &mut buf[..n]);
            stream.write_all(&buf[..n]).await.context("sending")?;
            sent += n as u64;
            if secs > 0.0 {
                let due = secs * sent as f64 / bytes as f64;
                sleep_until(begun + Duration::from_secs_f64(due)).await;
            }
        }
        stream.shutdown().await.context("closing")?;
        // The receiver closes once it has checked everything.
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest).await;
        Ok::<_, anyhow::Error>(sent)
    };
    // Our pair has joined, so the token was presented twice already.
    let again = async {
        if reuse {
            let outcome = relay_connect(welcome.server_addr, &token, wait).await;
            emit(refusal_event("reused", outcome.map(|_| ())));
        }
    };
    let (sent, ()) = tokio::join!(timeout(TRANSFER_WAIT, transfer), again);
    let sent = sent.context("the transfer timed out")??;
    emit(json!({"event": "done", "bytes": sent, "secs": started.elapsed().as_secs_f64()}));
    drop(client);
    Ok(())
}

async fn recv(server: &str, wait: Duration, nameplate: u32, mib: u64, reuse: bool) -> Result<()> {
    let (mut client, welcome) = SignalClient::connect(server).await?;
    client.claim(nameplate).await?;
    let token = client
        .request_relay_token()
        .await?
        .context("the server gave no relay token (is the relay on?)")?;
    let started = Instant::now();
    let stream = relay_connect(welcome.server_addr, &token, wait).await?;
    emit(json!({"event": "joined", "secs": started.elapsed().as_secs_f64()}));
    let bytes = mib * 1024 * 1024;
    let pattern = Pattern::new(u64::from(nameplate));
    let transfer = async {
        let mut stream = stream;
        let mut check = pattern.checker();
        let mut buf = vec![0u8; CHUNK];
        let mut wrong = None;
        loop {
            let n = stream.read(&mut buf).await.context("receiving")?;
            if n == 0 {
                break;
            }
            if wrong.is_none() {
                wrong = check.update(&buf[..n]).err();
            }
        }
        let _ = stream.shutdown().await;
        Ok::<_, anyhow::Error>((check.checked(), wrong))
    };
    // Our pair has joined, so the token was presented twice already.
    let again = async {
        if reuse {
            let outcome = relay_connect(welcome.server_addr, &token, wait).await;
            emit(refusal_event("reused", outcome.map(|_| ())));
        }
    };
    let (received, ()) = tokio::join!(timeout(TRANSFER_WAIT, transfer), again);
    let (checked, wrong) = received.context("the transfer timed out")??;
    let intact = wrong.is_none() && checked == bytes;
    emit(json!({
        "event": "done",
        "bytes": checked,
        "intact": intact,
        "first_wrong_byte": wrong,
        "secs": started.elapsed().as_secs_f64(),
    }));
    drop(client);
    if !intact {
        bail!("expected {bytes} intact bytes; {checked} matched the pattern");
    }
    Ok(())
}

/// A client that never signalled: the relay line with 32 random bytes.
async fn bogus(relay: SocketAddr, wait: Duration) -> Result<(), RelayError> {
    let protocol = |reason: String| RelayError::Protocol { relay, reason };
    let exchange = async {
        let mut stream = TcpStream::connect(relay)
            .await
            .map_err(|e| RelayError::Connect {
                relay,
                reason: e.to_string(),
            })?;
        let mut line = BytesMut::new();
        let hello = ClientToServer::Relay {
            protocol: RELAY_PROTOCOL_VERSION,
            token: hex::encode(rand::random::<[u8; 32]>()),
        };
        encode_frame(&hello, &mut line).map_err(|e| protocol(e.to_string()))?;
        stream
            .write_all(&line)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        line.clear();
        let mut chunk = [0u8; MAX_RELAY_FRAME];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| protocol(e.to_string()))?;
            if n == 0 {
                return Err(protocol("closed without an answer".into()));
            }
            line.extend_from_slice(&chunk[..n]);
            // The first whole line decides.
            if let Some(msg) =
                decode_frame::<ServerToClient>(&mut line).map_err(|e| protocol(e.to_string()))?
            {
                match msg {
                    ServerToClient::RelayWaiting | ServerToClient::RelayPaired { .. } => {
                        return Ok(());
                    }
                    ServerToClient::Error { code, message } => {
                        return Err(RelayError::Refused {
                            relay,
                            code,
                            message,
                        });
                    }
                    other => return Err(protocol(format!("unexpected {other:?}"))),
                }
            }
        }
    };
    timeout(wait, exchange)
        .await
        .unwrap_or(Err(RelayError::Timeout {
            relay,
            secs: wait.as_secs(),
        }))
}

fn refusal_event(kind: &str, outcome: Result<(), RelayError>) -> Value {
    match outcome {
        Ok(()) => json!({"event": "refusal", "kind": kind, "outcome": "paired"}),
        Err(RelayError::Refused { code, message, .. }) => json!({
            "event": "refusal", "kind": kind, "outcome": "refused", "code": code, "message": message,
        }),
        Err(error) => json!({
            "event": "refusal", "kind": kind, "outcome": "error", "message": error.to_string(),
        }),
    }
}

/// Prints the refusal event; the exit code says whether it was one.
fn finish(event: Value) -> Result<()> {
    emit(event.clone());
    match event["outcome"].as_str() {
        Some("refused") => Ok(()),
        Some("paired") => std::process::exit(2),
        _ => Err(anyhow!("no refusal: {}", event["message"])),
    }
}

async fn resolve(server: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("resolving {server}"))?
        .next()
        .with_context(|| format!("{server} has no address"))
}

fn emit(event: Value) {
    println!("{event}");
}
