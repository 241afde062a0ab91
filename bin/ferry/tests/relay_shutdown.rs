//! SIGTERM on the real `ferry relay`: it stops accepting, lets a relayed
//! pair in flight finish within the grace period, and exits within the
//! grace period plus a little.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{Proc, ferry, relay_secret};
use ferry_relay::token::unix_secs;
use ferry_relay::{TokenKey, relay_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts `ferry relay` on loopback with `extra` flags; its address, the
/// key its tokens are signed with, and the process.
fn start_relay(dir: &std::path::Path, extra: &[&str]) -> (SocketAddr, TokenKey, Proc) {
    let secret = dir.join("relay.secret");
    relay_secret(&secret);
    let key = TokenKey::from_hex(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let mut cmd = ferry();
    cmd.args([
        "relay",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--relay-secret-file",
    ])
    .arg(&secret)
    .args(extra);
    let mut proc = Proc::spawn(cmd);
    let ev = proc.wait_event("listening", Duration::from_secs(20));
    let addr = ev["relay"].as_str().unwrap().parse().unwrap();
    (addr, key, proc)
}

async fn pair(addr: SocketAddr, key: &TokenKey) -> (TcpStream, TcpStream) {
    let token = key.issue(1, unix_secs(SystemTime::now()) + 120, rand::random());
    let wait = Duration::from_secs(10);
    let (a, b) = tokio::join!(
        relay_connect(addr, &token, wait),
        relay_connect(addr, &token, wait)
    );
    (a.unwrap(), b.unwrap())
}

/// Sends SIGTERM to the relay process we started (by its PID).
fn sigterm(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most `within`) for the process to exit; how long it took.
fn wait_exit(proc: &mut Proc, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            assert!(status.success(), "ferry relay exited with {status}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "ferry relay did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `data` to `a` and closes it; `b` reads to the end.
async fn move_bytes(a: TcpStream, mut b: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let writer = tokio::spawn(async move {
        let mut a = a;
        let _ = a.write_all(&data).await;
        let _ = a.shutdown().await;
        let mut rest = Vec::new();
        let _ = a.read_to_end(&mut rest).await;
    });
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), b.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    got
}

/// A pair paced at 1 MiB/s moving 3 MiB (about 2 s) when SIGTERM arrives:
/// with a 10 s grace it finishes every byte, new connections are refused,
/// and the relay exits as soon as the pair is done.
#[tokio::test]
async fn sigterm_lets_a_relayed_pair_finish_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, key, mut proc) = start_relay(
        dir.path(),
        &["--relay-rate", "1M", "--shutdown-grace", "10"],
    );
    let (a, b) = pair(addr, &key).await;
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let transfer = tokio::spawn(move_bytes(a, b, data.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&proc);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No longer accepting.
    let late = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
    assert!(
        matches!(late, Ok(Err(_))),
        "a new connection after SIGTERM: {late:?}"
    );
    let got = transfer.await.unwrap();
    assert_eq!(got.len(), data.len(), "the pair in flight moved every byte");
    assert!(got == data);
    let exited = tokio::task::spawn_blocking(move || wait_exit(&mut proc, Duration::from_secs(12)))
        .await
        .unwrap();
    assert!(
        exited < Duration::from_secs(5),
        "exited {exited:?} after the pair ended"
    );
}

/// A pair that would take far longer than the grace is cut at the grace,
/// and the relay exits then.
#[tokio::test]
async fn sigterm_exits_within_the_grace_when_a_pair_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, key, mut proc) =
        start_relay(dir.path(), &["--relay-rate", "1M", "--shutdown-grace", "1"]);
    let (a, b) = pair(addr, &key).await;
    let data: Vec<u8> = vec![9u8; 30 << 20];
    let transfer = tokio::spawn(move_bytes(a, b, data));
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&proc);
    let exited = tokio::task::spawn_blocking(move || wait_exit(&mut proc, Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(
        exited >= Duration::from_millis(800),
        "the grace was given: {exited:?}"
    );
    assert!(
        exited < Duration::from_secs(4),
        "grace 1 s, exited after {exited:?}"
    );
    let got = transfer.await.unwrap();
    assert!(got.len() < 30 << 20, "the pair was cut");
}
