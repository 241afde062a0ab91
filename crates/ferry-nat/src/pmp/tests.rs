//! End to end against a real NAT-PMP/PCP gateway (miniupnpd), ignored by
//! default. In the lab (`FERRY_LAB_ID=p scripts/lab.sh up pmp`, then on
//! host `a`): `FERRY_PMP_EXTERNAL_IP=198.51.100.2 <test binary> --ignored
//! pmp::tests::pmp_against_real_gateway`.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;
use crate::upnp::Protocol;

#[tokio::test]
#[ignore = "needs a real NAT-PMP/PCP gateway (the lab's pmp topology)"]
async fn pmp_against_real_gateway() {
    let external: Ipv4Addr = std::env::var("FERRY_PMP_EXTERNAL_IP")
        .expect("FERRY_PMP_EXTERNAL_IP not set")
        .parse()
        .unwrap();
    let gateway = PmpGateway::find(&PmpOptions::default()).unwrap();
    eprintln!("gateway {} from {}", gateway.addr(), gateway.local_ip());
    for (start, port) in [(Version::Pcp, 47101), (Version::NatPmp, 47102)] {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let mapping = gateway
                .map_starting_at(start, protocol, port, Duration::from_secs(120))
                .await
                .unwrap();
            eprintln!("{start} {protocol}: {mapping:?}");
            assert_eq!(mapping.version, start);
            assert_eq!(*mapping.external.ip(), external);
            assert_eq!(mapping.internal_port, port);
            assert!(mapping.lifetime > Duration::ZERO);
            let renewed = gateway.renew(&mapping).await.unwrap();
            assert_eq!(
                renewed.external, mapping.external,
                "a renewal keeps the port"
            );
            gateway.remove(&mapping).await.unwrap();
        }
    }
    // The guard: add, then close deletes.
    let mut guard = PmpGuard::new(gateway.clone());
    let m = guard
        .add(Protocol::Tcp, 47103, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(guard.mappings(), [m]);
    guard.close().await.unwrap();
    // The probe.
    let report = probe(&PmpOptions::default(), 47104).await;
    assert_eq!(report.version, Some(Version::Pcp), "{report:?}");
    assert!(report.removed, "{report:?}");
}
