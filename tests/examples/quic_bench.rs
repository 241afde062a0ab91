//! Raw stream throughput of ferry's two secured paths on loopback, side by
//! side in one run: QUIC on a UDP socket pair (`quic_connect`, the code the
//! punched path runs) against TLS 1.3 over TCP (the direct path's
//! configuration). No files and no hashing: this isolates what the
//! transport costs. Each end runs in its own tokio runtime on its own
//! thread, as two processes would.
//!
//! `cargo run --release -p ferry-tests --example quic_bench -- [MiB] [runs]`
//! (default 1024 MiB, 3 runs; prints the median MB/s of each and the ratio).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ferry_connect::{Identity, quic_connect, tls_acceptor, tls_connector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;

const BLOCK: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sends `mib` MiB, then waits for the receiver's one-byte receipt (as
/// ferry's transfer protocol waits for its final acknowledgement).
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mib: usize) {
    let block = vec![0x5au8; BLOCK];
    for _ in 0..u64::try_from(mib).unwrap() * 8 {
        s.write_all(&block[..BLOCK / 8]).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut receipt = [0u8; 1];
    s.read_exact(&mut receipt).await.unwrap();
    assert_eq!(
        s.read(&mut receipt).await.unwrap(),
        0,
        "nothing after the receipt"
    );
    s.shutdown().await.unwrap();
}

/// Reads exactly `mib` MiB, then sends the receipt.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mib: usize) -> usize {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    while total < mib * BLOCK {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "early end after {total} bytes");
        total += n;
    }
    s.write_all(b"k").await.unwrap();
    s.shutdown().await.unwrap();
    total
}

/// One QUIC run: seconds from both ends starting to the receiver holding
/// every byte (the graceful close after it is not timed).
fn quic_run(mib: usize) -> f64 {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b): (SocketAddr, SocketAddr) =
        (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let (fa, fb) = (a.fingerprint(), b.fingerprint());
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        runtime().block_on(async move {
            let s = quic_connect(sa, addr_b, &a, &fb, true, None, Duration::from_secs(10))
                .await
                .unwrap();
            let mut s = s;
            pump(&mut s, mib).await;
            s.close().await;
        });
    });
    let got = runtime().block_on(async move {
        let mut s = quic_connect(sb, addr_a, &b, &fa, false, None, Duration::from_secs(10))
            .await
            .unwrap();
        let got = drain(&mut s, mib).await;
        let secs = start.elapsed().as_secs_f64();
        s.close().await;
        (got, secs)
    });
    let (got, secs) = got;
    sender.join().unwrap();
    assert_eq!(got, mib * BLOCK);
    secs
}

/// One TLS-over-TCP run, timed the same way.
fn tls_run(mib: usize) -> f64 {
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let acceptor = tls_acceptor(&server_id, &client_id.fingerprint()).unwrap();
    let connector = tls_connector(&client_id, &server_id.fingerprint()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let s = acceptor.accept(tcp).await.unwrap();
            pump(s, mib).await;
        });
    });
    let got = runtime().block_on(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(ferry_connect::tls::CERTIFICATE_NAME).unwrap();
        let s = connector.connect(name, tcp).await.unwrap();
        drain(s, mib).await
    });
    let secs = start.elapsed().as_secs_f64();
    sender.join().unwrap();
    assert_eq!(got, mib * BLOCK);
    secs
}

/// CPU seconds this process has used so far (both ends run in it), from
/// /proc/self/stat; 0 where there is none.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The fields after the command name in parentheses; utime and stime
    // are the 14th and 15th of the whole line.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `run` and returns (seconds it reported, CPU seconds used meanwhile).
fn timed(run: impl FnOnce() -> f64) -> (f64, f64) {
    let before = cpu_secs();
    let secs = run();
    (secs, cpu_secs() - before)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mib = args.first().copied().unwrap_or(1024);
    let runs = args.get(1).copied().unwrap_or(3).max(1);
    let (mut quic, mut quic_cpu) = (Vec::new(), Vec::new());
    let (mut tls, mut tls_cpu) = (Vec::new(), Vec::new());
    // Interleaved, so that a busy moment of the machine hits both alike.
    for _ in 0..runs {
        let (secs, cpu) = timed(|| tls_run(mib));
        tls.push(secs);
        tls_cpu.push(cpu);
        let (secs, cpu) = timed(|| quic_run(mib));
        quic.push(secs);
        quic_cpu.push(cpu);
    }
    let mb = (mib * BLOCK) as f64 / 1e6;
    let gib = mib as f64 / 1024.0;
    let (q, t) = (mb / median(quic), mb / median(tls));
    let (qc, tc) = (median(quic_cpu) / gib, median(tls_cpu) / gib);
    println!(
        "TLS over TCP  {t:8.0} MB/s  {tc:5.2} CPU s per GiB, both ends  (median of {runs}, {mib} MiB)"
    );
    println!(
        "QUIC over UDP {q:8.0} MB/s  {qc:5.2} CPU s per GiB, both ends  (median of {runs}, {mib} MiB)"
    );
    println!("QUIC / TCP    {:8.2}      {:5.2} x the CPU", q / t, qc / tc);
}
