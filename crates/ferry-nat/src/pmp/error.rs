//! The typed errors of NAT-PMP/PCP port mapping, each worded so a user
//! knows what to do next.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::codec::Version;

/// Errors from NAT-PMP/PCP port mapping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PmpError {
    /// No IPv4 default route, so no gateway to ask.
    #[error("no IPv4 default gateway found (in /proc/net/route); give the gateway's address")]
    NoGateway,
    /// The local socket could not be made.
    #[error("cannot open a UDP socket towards the gateway {gateway}: {source}")]
    Socket {
        /// The gateway.
        gateway: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Neither PCP nor NAT-PMP answered.
    #[error(
        "the gateway {gateway} did not answer PCP or NAT-PMP within {:.1} s; \
         it may not offer them (enable NAT-PMP/PCP in the router's settings)",
        waited.as_secs_f64()
    )]
    NoAnswer {
        /// The gateway.
        gateway: SocketAddr,
        /// How long we tried.
        waited: Duration,
    },
    /// The gateway answered with an error result code.
    #[error(
        "the gateway {gateway} refused the {version} request: {name} ({code}); \
         allow port mapping for this computer in the router's settings"
    )]
    Refused {
        /// The gateway.
        gateway: SocketAddr,
        /// Which protocol refused.
        version: Version,
        /// The result code.
        code: u16,
        /// Its RFC name.
        name: &'static str,
    },
    /// The gateway reported an external address that cannot be used.
    #[error(
        "the gateway {gateway} reports external address {ip}, which cannot be mapped; \
         the router's internet connection may be down"
    )]
    NoExternalAddress {
        /// The gateway.
        gateway: SocketAddr,
        /// What it reported.
        ip: IpAddr,
    },
    /// An answer that is ours but makes no sense.
    #[error("the gateway {gateway} sent a bad answer: {reason}")]
    BadAnswer {
        /// The gateway.
        gateway: SocketAddr,
        /// What was wrong.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_reads_in_seconds() {
        let error = PmpError::NoAnswer {
            gateway: "192.168.2.1:5351".parse().unwrap(),
            waited: Duration::from_nanos(3_506_113_104),
        };
        assert!(error.to_string().contains("within 3.5 s;"), "{error}");
    }
}
