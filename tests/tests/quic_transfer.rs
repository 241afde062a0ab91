//! Cross-crate: files move over the QUIC path exactly as over TLS/TCP —
//! hole punching (ferry-connect) on two real UDP sockets, QUIC on the
//! punched sockets with pinned certificates, then the transfer protocol
//! (ferry-transfer) over the QUIC stream.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_connect::{Identity, punch, quic_connect};
use ferry_transfer::{ReceiveOptions, SendOutcome, receive_offer, scan};
use rand::RngCore;
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_crosses_a_punched_quic_path_intact() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    let mut data = vec![0u8; 5 * 1024 * 1024 + 3];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(root.join("sub/big.bin"), &data).unwrap();
    std::fs::write(root.join("small.txt"), b"hello").unwrap();

    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let key = [42u8; 32];
    let timeout = Duration::from_secs(10);
    let (to_b, to_a) = ([b_addr], [a_addr]);
    let (pa, pb) = tokio::join!(
        punch(&a, key, true, &to_b, timeout),
        punch(&b, key, false, &to_a, timeout)
    );
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pa.remote, b_addr);
    assert_eq!(pb.remote, a_addr);

    let (ida, idb) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (fa, fb) = (ida.fingerprint(), idb.fingerprint());
    let (qa, qb) = tokio::join!(
        quic_connect(
            a.into_std().unwrap(),
            pa.remote,
            &ida,
            &fb,
            true,
            Some(pa.rtt),
            timeout
        ),
        quic_connect(
            b.into_std().unwrap(),
            pb.remote,
            &idb,
            &fa,
            false,
            Some(pb.rtt),
            timeout
        )
    );
    let (qa, qb) = (qa.unwrap(), qb.unwrap());

    let source = scan(std::slice::from_ref(&root)).unwrap();
    let options = ReceiveOptions {
        out_dir: dst.path().to_path_buf(),
        overwrite: false,
        ..Default::default()
    };
    let (sent, received) = tokio::join!(ferry_transfer::send(qa, source, |_| {}), async {
        let incoming = receive_offer(qb, options).await?;
        incoming.accept(|_| {}).await
    });
    let report = received.unwrap();
    assert!(matches!(sent.unwrap(), SendOutcome::Files(_)));
    assert_eq!(report.files, 2);
    assert_eq!(
        std::fs::read(dst.path().join("tree/sub/big.bin")).unwrap(),
        data
    );
    assert_eq!(
        std::fs::read(dst.path().join("tree/small.txt")).unwrap(),
        b"hello"
    );
    assert!(dst.path().join("tree/sub/empty").is_dir());
}
