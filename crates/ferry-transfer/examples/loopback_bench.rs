//! Throughput check: sends one file over TLS 1.3 on 127.0.0.1 and prints
//! MB/s. `cargo run --release -p ferry-transfer --example loopback_bench -- [MiB] [--plain]`
//! (default 1024 MiB; `--plain` skips TLS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let mib: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let out = dir.path().join("out");
    {
        let mut xof = blake3::Hasher::new().update(b"bench").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        let mut f = std::fs::File::create(&src).unwrap();
        for _ in 0..mib {
            xof.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
    }
    let provider = Arc::new(ring::default_provider());
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = key.cert.der().clone();
    let pkey = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], pkey)
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ferry_transfer::ReceiveOptions {
        out_dir: out.clone(),
        overwrite: false,
    };
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        if plain {
            let inc = ferry_transfer::receive_offer(tcp, opts).await.unwrap();
            inc.accept(|_| {}).await.unwrap()
        } else {
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg))
                .accept(tcp)
                .await
                .unwrap();
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
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
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

/// Bench only: accepts any server certificate.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
