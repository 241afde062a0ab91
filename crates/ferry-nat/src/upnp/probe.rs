//! The one-shot probe for `ferry nat` reports: discover, read the external
//! address, map a UDP port for a minute and remove it again. Never fails;
//! what went wrong is described in the [`UpnpReport`].

use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{Protocol, UpnpOptions, discover};
use crate::addr::{self, AddrClass};

/// Lease used by [`probe`]'s test mapping.
pub const PROBE_LEASE: Duration = Duration::from_secs(60);

/// What [`probe`] found, for `ferry nat` reports. Serializes (JSON) with
/// these snake_case field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpReport {
    /// `gateway`: the gateway's control URL, or `null` when none answered.
    pub gateway: Option<String>,
    /// `external_ip`: the external address the gateway reported.
    pub external_ip: Option<IpAddr>,
    /// `external_ip_class`: its class (`public`, `private`, `shared_cgnat`,
    /// `documentation`, ...); anything but public means a NAT above the
    /// gateway.
    pub external_ip_class: Option<AddrClass>,
    /// `test_mapping`: the outcome of mapping a UDP port for a minute.
    pub test_mapping: TestMapping,
    /// `error`: why discovery or the external-address query failed, if it did.
    pub error: Option<String>,
}

/// The outcome of [`probe`]'s test mapping. Serializes as an object with a
/// `status` field: `{"status":"mapped","external":"203.0.113.7:4000",
/// "removed":true}`, `{"status":"failed","error":"..."}` or
/// `{"status":"not_tried"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TestMapping {
    /// The gateway mapped a port.
    Mapped {
        /// `external`: the mapped external address.
        external: SocketAddrV4,
        /// `removed`: whether the test mapping was removed again.
        removed: bool,
    },
    /// The gateway refused or failed.
    Failed {
        /// `error`: what went wrong.
        error: String,
    },
    /// No gateway, or its external address was unusable.
    NotTried,
}

/// One-shot UPnP check for reports: discover a gateway, read its external
/// address, map `local` (UDP, lease [`PROBE_LEASE`]) and remove the mapping
/// again. Never fails; failures are described in the report.
pub async fn probe(opts: &UpnpOptions, local: SocketAddrV4) -> UpnpReport {
    let mut report = UpnpReport {
        gateway: None,
        external_ip: None,
        external_ip_class: None,
        test_mapping: TestMapping::NotTried,
        error: None,
    };
    let gateway = match discover(opts).await {
        Ok(Some(gateway)) => gateway,
        Ok(None) => return report,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.gateway = Some(gateway.control_url());
    match gateway.external_ip().await {
        Ok(ip) => {
            report.external_ip = Some(ip);
            report.external_ip_class = Some(addr::classify(ip));
        }
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    }
    report.test_mapping = match gateway
        .add_mapping(Protocol::Udp, local, PROBE_LEASE, "ferry nat probe")
        .await
    {
        Ok(mapping) => {
            let removed = gateway
                .remove_mapping(mapping.protocol, mapping.external.port())
                .await;
            if let Err(e) = &removed {
                debug!("UPnP: removing the probe mapping failed: {e}");
            }
            TestMapping::Mapped {
                external: mapping.external,
                removed: removed.is_ok(),
            }
        }
        Err(e) => TestMapping::Failed {
            error: e.to_string(),
        },
    };
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn report_serializes_with_documented_field_names() {
        let report = UpnpReport {
            gateway: Some("http://10.77.0.1:5000/ctl/IPConn".into()),
            external_ip: Some("203.0.113.77".parse().unwrap()),
            external_ip_class: Some(AddrClass::Documentation),
            test_mapping: TestMapping::Mapped {
                external: "203.0.113.77:4000".parse().unwrap(),
                removed: true,
            },
            error: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "gateway": "http://10.77.0.1:5000/ctl/IPConn",
                "external_ip": "203.0.113.77",
                "external_ip_class": "documentation",
                "test_mapping": {"status": "mapped", "external": "203.0.113.77:4000", "removed": true},
                "error": null,
            })
        );
        let back: UpnpReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            serde_json::to_value(TestMapping::Failed { error: "no".into() }).unwrap(),
            serde_json::json!({"status": "failed", "error": "no"})
        );
        assert_eq!(
            serde_json::to_value(TestMapping::NotTried).unwrap(),
            serde_json::json!({"status": "not_tried"})
        );
    }

    #[tokio::test]
    async fn probe_without_gateway_reports_nothing_found() {
        let opts = UpnpOptions {
            search_timeout: Duration::from_millis(200),
            tries: 1,
            bind: Some("127.0.0.1:0".parse().unwrap()),
        };
        let report = probe(&opts, "127.0.0.1:4000".parse().unwrap()).await;
        assert_eq!(report.gateway, None);
        assert_eq!(report.external_ip, None);
        assert_eq!(report.test_mapping, TestMapping::NotTried);
        assert_eq!(report.error, None);
    }
}
