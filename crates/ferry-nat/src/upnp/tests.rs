//! End to end against a real UPnP IGD (miniupnpd), all layers at once:
//! search, gateway calls, guard (renewal, close, drop) and probe. Ignored
//! by default; `scripts/upnp-check.sh` runs it by its exact name
//! `upnp::tests::upnp_against_real_gateway`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::PortMappingProtocol;

use super::*;
use crate::addr::AddrClass;

/// Runs against a real UPnP IGD (miniupnpd): run via
/// `scripts/upnp-check.sh`, which builds the network namespaces, starts
/// miniupnpd and sets the environment. Never run on a real LAN: it
/// searches with multicast from the default interface.
#[tokio::test]
#[ignore = "needs a real UPnP gateway: scripts/upnp-check.sh"]
async fn upnp_against_real_gateway() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let expect_ext: Ipv4Addr = env("FERRY_UPNP_EXTERNAL_IP").parse().unwrap();
    let lan_ip: Ipv4Addr = env("FERRY_UPNP_LAN_IP").parse().unwrap();
    let port: u16 = env("FERRY_UPNP_PORT").parse().unwrap();
    let other_host: Ipv4Addr = env("FERRY_UPNP_OTHER_HOST").parse().unwrap();

    // Automatic bind address selection (default route source).
    let start = std::time::Instant::now();
    let gateway = discover(&UpnpOptions::default())
        .await
        .unwrap()
        .expect("gateway found");
    eprintln!(
        "found {} in {:?} (local {:?})",
        gateway.control_url(),
        start.elapsed(),
        gateway.local_ip()
    );
    assert_eq!(gateway.local_ip(), Some(lan_ip));
    let ip = gateway.external_ip().await.unwrap();
    assert_eq!(ip, IpAddr::V4(expect_ext));

    // Same-port UDP mapping of a real socket; an outside host's datagram
    // arrives through it (the script sends them).
    let socket = tokio::net::UdpSocket::bind((lan_ip, port)).await.unwrap();
    let mut guard = MappingGuard::new(gateway.clone());
    let udp = guard
        .add(
            Protocol::Udp,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            Duration::from_secs(120),
            "ferry upnp-check udp",
        )
        .await
        .unwrap();
    assert_eq!(udp.external, SocketAddrV4::new(expect_ext, port));
    assert_eq!(udp.local, SocketAddrV4::new(lan_ip, port));
    assert_eq!(udp.external_class, AddrClass::Documentation);
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("a datagram through the mapping within 10 s")
        .unwrap();
    eprintln!(
        "received {:?} from {from}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(buf[..n].starts_with(b"ferry-upnp-ping"));

    // Another host holds external TCP port `port`: we get another port.
    gateway
        .inner
        .add_port(
            PortMappingProtocol::TCP,
            port,
            SocketAddr::new(IpAddr::V4(other_host), port),
            120,
            "someone else",
        )
        .await
        .unwrap();
    let tcp = guard
        .add(
            Protocol::Tcp,
            SocketAddrV4::new(lan_ip, port),
            Duration::from_secs(120),
            "ferry upnp-check tcp",
        )
        .await
        .unwrap();
    assert_ne!(tcp.external.port(), port, "port in use by another host");
    assert_eq!(tcp.external.ip(), &expect_ext);
    assert_eq!(guard.mappings(), &[udp.clone(), tcp.clone()]);
    let listed = list_mappings(&gateway).await;
    assert!(listed.contains(&(Protocol::Udp, port, lan_ip.to_string())));
    assert!(listed.contains(&(Protocol::Tcp, tcp.external.port(), lan_ip.to_string())));
    assert!(listed.contains(&(Protocol::Tcp, port, other_host.to_string())));

    // close() removes ours and only ours; removing twice is fine.
    guard.close().await.unwrap();
    let listed = list_mappings(&gateway).await;
    assert_eq!(listed, [(Protocol::Tcp, port, other_host.to_string())]);
    gateway.remove_mapping(Protocol::Udp, port).await.unwrap();
    gateway.remove_mapping(Protocol::Tcp, port).await.unwrap();
    assert!(list_mappings(&gateway).await.is_empty());

    // Renewal: a 4 s lease held by a guard outlives 7 s; an unguarded
    // one expires.
    let mut guard = MappingGuard::new(gateway.clone());
    let kept = guard
        .add(
            Protocol::Udp,
            SocketAddrV4::new(lan_ip, port),
            Duration::from_secs(4),
            "kept",
        )
        .await
        .unwrap();
    let lapsed = gateway
        .add_mapping(
            Protocol::Udp,
            SocketAddrV4::new(lan_ip, port + 1),
            Duration::from_secs(4),
            "lapsed",
        )
        .await
        .unwrap();
    assert_eq!(kept.lease, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(7)).await;
    let listed = list_mappings(&gateway).await;
    assert!(
        listed.contains(&(Protocol::Udp, port, lan_ip.to_string())),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|m| m.1 == lapsed.external.port()),
        "unrenewed lease expired: {listed:?}"
    );
    // Drop removes best effort in the background.
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(list_mappings(&gateway).await.is_empty());

    // The probe maps and unmaps.
    let report = probe(&UpnpOptions::default(), SocketAddrV4::new(lan_ip, port)).await;
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(
        report.test_mapping,
        TestMapping::Mapped {
            external: SocketAddrV4::new(expect_ext, port),
            removed: true
        }
    );
    assert_eq!(report.external_ip_class, Some(AddrClass::Documentation));
    assert!(list_mappings(&gateway).await.is_empty());
}

async fn list_mappings(gateway: &Gateway) -> Vec<(Protocol, u16, String)> {
    let mut out = Vec::new();
    for i in 0..64 {
        match gateway.inner.get_generic_port_mapping_entry(i).await {
            Ok(e) => out.push((
                match e.protocol {
                    PortMappingProtocol::UDP => Protocol::Udp,
                    PortMappingProtocol::TCP => Protocol::Tcp,
                },
                e.external_port,
                e.internal_client,
            )),
            Err(_) => break,
        }
    }
    out
}
