//! The one-shot probe for `ferry nat` reports: map a UDP port for a
//! minute by PCP (else NAT-PMP) and delete it again. Never fails; what
//! went wrong is in the [`PmpReport`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{PmpGateway, PmpOptions, Version};
use crate::addr::AddrClass;
use crate::upnp::Protocol;

/// Lifetime of [`probe`]'s test mapping.
pub const PROBE_LIFETIME: Duration = Duration::from_secs(60);

/// What [`probe`] found. Serializes (JSON) with these snake_case names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmpReport {
    /// `gateway`: the gateway asked (the default route's), `null` if none.
    pub gateway: Option<Ipv4Addr>,
    /// `version`: `pcp` or `nat_pmp`, whichever mapped the test port.
    pub version: Option<Version>,
    /// `external`: the test mapping's external address.
    pub external: Option<SocketAddrV4>,
    /// `external_ip_class`: its class; anything but public means a NAT
    /// above the gateway.
    pub external_ip_class: Option<AddrClass>,
    /// `removed`: whether the test mapping was deleted again.
    pub removed: bool,
    /// `error`: why there is no mapping, if there is none.
    pub error: Option<String>,
}

/// Maps UDP `internal_port` for [`PROBE_LIFETIME`] and deletes it again.
pub async fn probe(options: &PmpOptions, internal_port: u16) -> PmpReport {
    let mut report = PmpReport {
        gateway: None,
        version: None,
        external: None,
        external_ip_class: None,
        removed: false,
        error: None,
    };
    let gateway = match PmpGateway::find(options) {
        Ok(gateway) => gateway,
        Err(error) => {
            report.error = Some(error.to_string());
            return report;
        }
    };
    report.gateway = Some(gateway.addr());
    match gateway
        .map(Protocol::Udp, internal_port, PROBE_LIFETIME)
        .await
    {
        Ok(mapping) => {
            report.version = Some(mapping.version);
            report.external = Some(mapping.external);
            report.external_ip_class = Some(mapping.external_class);
            let removed = gateway.remove(&mapping).await;
            if let Err(error) = &removed {
                debug!(%error, "PCP/NAT-PMP: deleting the probe mapping failed");
            }
            report.removed = removed.is_ok();
        }
        Err(error) => report.error = Some(error.to_string()),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_serializes_with_documented_field_names() {
        let report = PmpReport {
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            version: Some(Version::NatPmp),
            external: Some("198.51.100.2:4000".parse().unwrap()),
            external_ip_class: Some(AddrClass::Documentation),
            removed: true,
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "gateway": "10.0.1.1",
                "version": "nat_pmp",
                "external": "198.51.100.2:4000",
                "external_ip_class": "documentation",
                "removed": true,
                "error": null,
            })
        );
    }
}
