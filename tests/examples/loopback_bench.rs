//! Throughput check: sends one file over TLS 1.3 on 127.0.0.1 and prints
//! MB/s. `cargo run --release -p ferry-tests --example loopback_bench -- [MiB] [--plain]`
//! (default 1024 MiB; `--plain` skips TLS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use ferry_connect::{Identity, tls_acceptor, tls_connector};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let mib: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let out = dir.path().join("out");
    // ReceiveOptions::out_dir says "created if missing", but accept fails
    // on a missing one (it looks for part files in it first).
    std::fs::create_dir(&out).unwrap();
    {
        let mut xof = blake3::Hasher::new().update(b"bench").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        let mut f = std::fs::File::create(&src).unwrap();
        for _ in 0..mib {
            xof.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
    }
    // The same pinned TLS 1.3 configurations ferry uses between peers.
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let acceptor = tls_acceptor(&server_id, &client_id.fingerprint()).unwrap();
    let connector = tls_connector(&client_id, &server_id.fingerprint()).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ferry_transfer::ReceiveOptions {
        out_dir: out.clone(),
        overwrite: false,
        ..Default::default()
    };
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        if plain {
            let inc = ferry_transfer::receive_offer(tcp, opts).await.unwrap();
            inc.accept(|_| {}).await.unwrap()
        } else {
            let tls = acceptor.accept(tcp).await.unwrap();
            let inc = ferry_transfer::receive_offer(tls, opts).await.unwrap();
            inc.accept(|_| {}).await.unwrap()
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let source = ferry_transfer::scan(&[src]).unwrap();
    let start = Instant::now();
    let outcome = if plain {
        ferry_transfer::send(tcp, source, |_| {}).await.unwrap()
    } else {
        let tls = connector
            .connect(ServerName::try_from("ferry").unwrap(), tcp)
            .await
            .unwrap();
        ferry_transfer::send(tls, source, |_| {}).await.unwrap()
    };
    let elapsed = start.elapsed();
    receiver.await.unwrap();
    println!(
        "{} {mib} MiB in {elapsed:.2?}: {:.0} MB/s ({outcome:?})",
        if plain { "plain TCP" } else { "TLS 1.3" },
        (mib as f64 * 1048576.0) / elapsed.as_secs_f64() / 1e6
    );
}
