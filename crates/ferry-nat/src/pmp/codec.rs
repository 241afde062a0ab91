//! The wire formats, pure: NAT-PMP (RFC 6886) requests and responses for
//! the external address and port mappings, and PCP (RFC 6887) MAP.
//! Every length is checked before a byte is read; nothing allocates on
//! decode.
//!
//! ```text
//! NAT-PMP (version 0), big-endian:
//!   external address request   [0][0]                                        2 bytes
//!   external address response  [0][128][result:2][epoch:4][ip:4]            12 bytes
//!   map request                [0][1 UDP|2 TCP][0:2][internal:2][external:2][lifetime:4]  12
//!   map response               [0][128+op][result:2][epoch:4][internal:2][external:2][lifetime:4] 16
//!   an error answer may stop after the epoch                                 8 bytes
//! PCP (version 2):
//!   request header   [2][R=0|opcode][0:2][lifetime:4][client ip:16]         24 bytes
//!   response header  [2][R=1|opcode][0][result][lifetime:4][epoch:4][0:12]  24 bytes
//!   MAP body         [nonce:12][protocol][0:3][internal:2][external:2][external ip:16] 36
//!   ANNOUNCE         the request header alone, opcode 0, lifetime 0        24 bytes
//!   then options (ignored), the whole a multiple of 4 and at most 1100 bytes
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::upnp::Protocol;

/// The UDP port NAT-PMP and PCP servers listen on.
pub const SERVER_PORT: u16 = 5351;
/// NAT-PMP's version number.
pub const NAT_PMP_VERSION: u8 = 0;
/// PCP's version number.
pub const PCP_VERSION: u8 = 2;
/// The longest PCP message (RFC 6887 section 7); longer datagrams are refused.
pub const MAX_MESSAGE_LEN: usize = 1100;
/// Length of a PCP MAP nonce.
pub const NONCE_LEN: usize = 12;

const PCP_HEADER_LEN: usize = 24;
const PCP_MAP_LEN: usize = PCP_HEADER_LEN + 36;
const PCP_OPCODE_ANNOUNCE: u8 = 0;
const PCP_OPCODE_MAP: u8 = 1;
const PCP_RESPONSE_BIT: u8 = 0x80;
const PMP_OPCODE_EXTERNAL: u8 = 0;
const PMP_OPCODE_UDP: u8 = 1;
const PMP_OPCODE_TCP: u8 = 2;
const PMP_RESPONSE_BIT: u8 = 128;
const PMP_ERROR_LEN: usize = 8;
const PMP_EXTERNAL_LEN: usize = 12;
const PMP_MAP_LEN: usize = 16;
const IANA_UDP: u8 = 17;
const IANA_TCP: u8 = 6;

/// Which of the two protocols a message (or a mapping) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    /// PCP, RFC 6887 (version 2).
    Pcp,
    /// NAT-PMP, RFC 6886 (version 0).
    NatPmp,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::Pcp => "PCP",
            Version::NatPmp => "NAT-PMP",
        })
    }
}

/// A request, client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientToServer {
    /// NAT-PMP: what is your external address?
    PmpExternalAddress,
    /// NAT-PMP: map (or, with lifetime 0 and external port 0, delete) a port.
    PmpMap {
        /// UDP or TCP.
        protocol: Protocol,
        /// Our port.
        internal_port: u16,
        /// The external port we would like (0: any).
        suggested_external_port: u16,
        /// Seconds; 0 deletes.
        lifetime: u32,
    },
    /// PCP MAP: map (or, with lifetime 0, delete) a port.
    PcpMap {
        /// Seconds; 0 deletes.
        lifetime: u32,
        /// Our address, as the server sees it (it checks).
        client_ip: Ipv4Addr,
        /// Names the mapping: renewals and the delete repeat it.
        nonce: [u8; NONCE_LEN],
        /// UDP or TCP.
        protocol: Protocol,
        /// Our port.
        internal_port: u16,
        /// The external port we would like (0: any).
        suggested_external_port: u16,
        /// The external address we would like (`0.0.0.0`: any).
        suggested_external_ip: Ipv4Addr,
    },
    /// PCP ANNOUNCE: maps nothing; a PCP server answers it (success), so
    /// it tells whether the gateway speaks PCP.
    PcpAnnounce {
        /// Our address, as the server sees it.
        client_ip: Ipv4Addr,
    },
}

/// A response, server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerToClient {
    /// NAT-PMP's answer about the external address.
    PmpExternalAddress {
        /// The result code.
        result: PmpResult,
        /// Seconds since the server's mapping table started.
        epoch: u32,
        /// The external address (meaningless unless `result` is success).
        external_ip: Ipv4Addr,
    },
    /// NAT-PMP's answer to a map request.
    PmpMap {
        /// UDP or TCP, from the opcode.
        protocol: Protocol,
        /// The result code.
        result: PmpResult,
        /// Seconds since the server's mapping table started.
        epoch: u32,
        /// Our port, echoed.
        internal_port: u16,
        /// The external port granted.
        external_port: u16,
        /// Seconds granted.
        lifetime: u32,
    },
    /// A NAT-PMP error answer cut short after the epoch (as for an
    /// unsupported version, which is how a NAT-PMP server answers PCP).
    PmpError {
        /// The opcode answered (without the response bit).
        opcode: u8,
        /// The result code.
        result: PmpResult,
    },
    /// PCP's answer to MAP. `map` is `None` for an error answer that
    /// carries only the header.
    PcpMap {
        /// The result code.
        result: PcpResult,
        /// Seconds granted (for an error: how long the error holds).
        lifetime: u32,
        /// Seconds since the server's mapping table started.
        epoch: u32,
        /// The MAP fields, when present.
        map: Option<PcpMapBody>,
    },
    /// A PCP answer to an opcode other than MAP (we send none: ignored).
    PcpOther {
        /// The opcode.
        opcode: u8,
        /// The result code.
        result: PcpResult,
    },
}

/// The MAP fields of a PCP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcpMapBody {
    /// The request's nonce, echoed.
    pub nonce: [u8; NONCE_LEN],
    /// The IANA protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Our port, echoed.
    pub internal_port: u16,
    /// The external port granted.
    pub external_port: u16,
    /// The external address granted (IPv4-mapped for IPv4).
    pub external_ip: Ipv6Addr,
}

impl PcpMapBody {
    /// The protocol, if it is one ferry maps.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol {
            IANA_UDP => Some(Protocol::Udp),
            IANA_TCP => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// A NAT-PMP result code (RFC 6886 section 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PmpResult(pub u16);

impl PmpResult {
    /// Success.
    pub const SUCCESS: PmpResult = PmpResult(0);
    /// The server does not speak the request's version.
    pub const UNSUPPORTED_VERSION: PmpResult = PmpResult(1);

    /// The code's RFC name.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "SUCCESS",
            1 => "UNSUPPORTED_VERSION",
            2 => "NOT_AUTHORIZED",
            3 => "NETWORK_FAILURE",
            4 => "OUT_OF_RESOURCES",
            5 => "UNSUPPORTED_OPCODE",
            _ => "UNKNOWN",
        }
    }
}

/// A PCP result code (RFC 6887 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcpResult(pub u8);

impl PcpResult {
    /// Success.
    pub const SUCCESS: PcpResult = PcpResult(0);
    /// The server does not speak the request's version.
    pub const UNSUPP_VERSION: PcpResult = PcpResult(1);

    /// The code's RFC name.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "SUCCESS",
            1 => "UNSUPP_VERSION",
            2 => "NOT_AUTHORIZED",
            3 => "MALFORMED_REQUEST",
            4 => "UNSUPP_OPCODE",
            5 => "UNSUPP_OPTION",
            6 => "MALFORMED_OPTION",
            7 => "NETWORK_FAILURE",
            8 => "NO_RESOURCES",
            9 => "UNSUPP_PROTOCOL",
            10 => "USER_EX_QUOTA",
            11 => "CANNOT_PROVIDE_EXTERNAL",
            12 => "ADDRESS_MISMATCH",
            13 => "EXCESSIVE_REMOTE_PEERS",
            _ => "UNKNOWN",
        }
    }
}

/// Why a datagram is not a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its kind needs.
    #[error("{len} bytes, {need} needed")]
    TooShort {
        /// The datagram's length.
        len: usize,
        /// The length its kind needs.
        need: usize,
    },
    /// Longer than any response.
    #[error("{len} bytes, more than {MAX_MESSAGE_LEN}")]
    TooLong {
        /// The datagram's length.
        len: usize,
    },
    /// A PCP message whose length is not a multiple of 4.
    #[error("a PCP message of {len} bytes, not a multiple of 4")]
    Unaligned {
        /// The datagram's length.
        len: usize,
    },
    /// Neither NAT-PMP nor PCP.
    #[error("unknown version {0}")]
    UnknownVersion(u8),
    /// A request, not a response.
    #[error("a request, not a response")]
    NotAResponse,
    /// A NAT-PMP opcode we never send.
    #[error("unknown NAT-PMP opcode {0}")]
    UnknownOpcode(u8),
}

impl ClientToServer {
    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            ClientToServer::PmpExternalAddress => 2,
            ClientToServer::PmpMap { .. } => 12,
            ClientToServer::PcpMap { .. } => PCP_MAP_LEN,
            ClientToServer::PcpAnnounce { .. } => PCP_HEADER_LEN,
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        match *self {
            ClientToServer::PmpExternalAddress => {
                out.extend_from_slice(&[NAT_PMP_VERSION, PMP_OPCODE_EXTERNAL]);
            }
            ClientToServer::PmpMap {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => {
                let opcode = match protocol {
                    Protocol::Udp => PMP_OPCODE_UDP,
                    Protocol::Tcp => PMP_OPCODE_TCP,
                };
                out.extend_from_slice(&[NAT_PMP_VERSION, opcode, 0, 0]);
                out.extend_from_slice(&internal_port.to_be_bytes());
                out.extend_from_slice(&suggested_external_port.to_be_bytes());
                out.extend_from_slice(&lifetime.to_be_bytes());
            }
            ClientToServer::PcpMap {
                lifetime,
                client_ip,
                nonce,
                protocol,
                internal_port,
                suggested_external_port,
                suggested_external_ip,
            } => {
                out.extend_from_slice(&[PCP_VERSION, PCP_OPCODE_MAP, 0, 0]);
                out.extend_from_slice(&lifetime.to_be_bytes());
                out.extend_from_slice(&client_ip.to_ipv6_mapped().octets());
                out.extend_from_slice(&nonce);
                out.push(match protocol {
                    Protocol::Udp => IANA_UDP,
                    Protocol::Tcp => IANA_TCP,
                });
                out.extend_from_slice(&[0, 0, 0]);
                out.extend_from_slice(&internal_port.to_be_bytes());
                out.extend_from_slice(&suggested_external_port.to_be_bytes());
                out.extend_from_slice(&suggested_external_ip.to_ipv6_mapped().octets());
            }
            ClientToServer::PcpAnnounce { client_ip } => {
                out.extend_from_slice(&[PCP_VERSION, PCP_OPCODE_ANNOUNCE, 0, 0]);
                out.extend_from_slice(&0u32.to_be_bytes());
                out.extend_from_slice(&client_ip.to_ipv6_mapped().octets());
            }
        }
        out
    }
}

impl ServerToClient {
    /// Reads one response datagram. Hostile input gets an error, never a
    /// panic; semantic checks (is it ours, is the address usable) are the
    /// client's.
    pub fn decode(bytes: &[u8]) -> Result<ServerToClient, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong { len: bytes.len() });
        }
        match bytes.first() {
            None => Err(DecodeError::TooShort { len: 0, need: 2 }),
            Some(&NAT_PMP_VERSION) => decode_pmp(bytes),
            Some(&PCP_VERSION) => decode_pcp(bytes),
            // A PCP server of another version answers UNSUPP_VERSION with
            // its own version in the header; anything else is noise.
            Some(&v) if bytes.len() >= 4 && bytes[1] & PCP_RESPONSE_BIT != 0 => {
                if PcpResult(bytes[3]) == PcpResult::UNSUPP_VERSION {
                    Ok(ServerToClient::PcpOther {
                        opcode: bytes[1] & !PCP_RESPONSE_BIT,
                        result: PcpResult::UNSUPP_VERSION,
                    })
                } else {
                    Err(DecodeError::UnknownVersion(v))
                }
            }
            Some(&v) => Err(DecodeError::UnknownVersion(v)),
        }
    }
}

fn need(bytes: &[u8], need: usize) -> Result<(), DecodeError> {
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            need,
        });
    }
    Ok(())
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn decode_pmp(bytes: &[u8]) -> Result<ServerToClient, DecodeError> {
    need(bytes, 2)?;
    let op = bytes[1];
    if op < PMP_RESPONSE_BIT {
        return Err(DecodeError::NotAResponse);
    }
    let opcode = op - PMP_RESPONSE_BIT;
    need(bytes, PMP_ERROR_LEN)?;
    let result = PmpResult(u16_at(bytes, 2));
    let epoch = u32_at(bytes, 4);
    let full = match opcode {
        PMP_OPCODE_EXTERNAL => PMP_EXTERNAL_LEN,
        PMP_OPCODE_UDP | PMP_OPCODE_TCP => PMP_MAP_LEN,
        // The answer to an opcode we never send as NAT-PMP (PCP's MAP is
        // 1, so a NAT-PMP server's UNSUPPORTED_VERSION to PCP lands on 1).
        _ if result != PmpResult::SUCCESS => {
            return Ok(ServerToClient::PmpError { opcode, result });
        }
        _ => return Err(DecodeError::UnknownOpcode(opcode)),
    };
    if bytes.len() < full {
        if result != PmpResult::SUCCESS {
            return Ok(ServerToClient::PmpError { opcode, result });
        }
        need(bytes, full)?;
    }
    Ok(match opcode {
        PMP_OPCODE_EXTERNAL => ServerToClient::PmpExternalAddress {
            result,
            epoch,
            external_ip: Ipv4Addr::new(bytes[8], bytes[9], bytes[10], bytes[11]),
        },
        _ => ServerToClient::PmpMap {
            protocol: if opcode == PMP_OPCODE_UDP {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            result,
            epoch,
            internal_port: u16_at(bytes, 8),
            external_port: u16_at(bytes, 10),
            lifetime: u32_at(bytes, 12),
        },
    })
}

fn decode_pcp(bytes: &[u8]) -> Result<ServerToClient, DecodeError> {
    need(bytes, PCP_HEADER_LEN)?;
    if bytes.len() % 4 != 0 {
        return Err(DecodeError::Unaligned { len: bytes.len() });
    }
    if bytes[1] & PCP_RESPONSE_BIT == 0 {
        return Err(DecodeError::NotAResponse);
    }
    let opcode = bytes[1] & !PCP_RESPONSE_BIT;
    let result = PcpResult(bytes[3]);
    if opcode != PCP_OPCODE_MAP {
        return Ok(ServerToClient::PcpOther { opcode, result });
    }
    let lifetime = u32_at(bytes, 4);
    let epoch = u32_at(bytes, 8);
    let map = if bytes.len() >= PCP_MAP_LEN {
        let b = &bytes[PCP_HEADER_LEN..PCP_MAP_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[..NONCE_LEN]);
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[20..36]);
        Some(PcpMapBody {
            nonce,
            protocol: b[12],
            internal_port: u16_at(b, 16),
            external_port: u16_at(b, 18),
            external_ip: Ipv6Addr::from(ip),
        })
    } else if result == PcpResult::SUCCESS {
        // A success must say what was mapped.
        return Err(DecodeError::TooShort {
            len: bytes.len(),
            need: PCP_MAP_LEN,
        });
    } else {
        None
    };
    Ok(ServerToClient::PcpMap {
        result,
        lifetime,
        epoch,
        map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nat_pmp_requests_have_the_rfc_layout() {
        assert_eq!(ClientToServer::PmpExternalAddress.encode(), [0, 0]);
        let map = ClientToServer::PmpMap {
            protocol: Protocol::Tcp,
            internal_port: 0x1234,
            suggested_external_port: 0x5678,
            lifetime: 7200,
        };
        assert_eq!(
            map.encode(),
            [0, 2, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x1c, 0x20]
        );
        assert_eq!(map.encoded_len(), 12);
        let udp = ClientToServer::PmpMap {
            protocol: Protocol::Udp,
            internal_port: 1,
            suggested_external_port: 0,
            lifetime: 0,
        };
        assert_eq!(udp.encode()[1], 1);
    }

    #[test]
    fn pcp_announce_is_a_bare_header() {
        let announce = ClientToServer::PcpAnnounce {
            client_ip: Ipv4Addr::new(10, 0, 1, 10),
        };
        let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[0; 10]);
        want.extend_from_slice(&[0xff, 0xff, 10, 0, 1, 10]);
        assert_eq!(announce.encode(), want);
        assert_eq!(announce.encoded_len(), 24);
        // Its answer: a header with the response bit on opcode 0.
        let mut answer = vec![2, 0x80, 0, 0];
        answer.extend_from_slice(&[0; 20]);
        assert_eq!(
            ServerToClient::decode(&answer).unwrap(),
            ServerToClient::PcpOther {
                opcode: 0,
                result: PcpResult::SUCCESS
            }
        );
    }

    #[test]
    fn pcp_map_request_has_the_rfc_layout() {
        let req = ClientToServer::PcpMap {
            lifetime: 600,
            client_ip: Ipv4Addr::new(10, 0, 1, 10),
            nonce: [0xaa; 12],
            protocol: Protocol::Tcp,
            internal_port: 4000,
            suggested_external_port: 4001,
            suggested_external_ip: Ipv4Addr::UNSPECIFIED,
        };
        let b = req.encode();
        assert_eq!(b.len(), 60);
        assert_eq!(req.encoded_len(), 60);
        assert_eq!(b[..4], [2, 1, 0, 0]);
        assert_eq!(b[4..8], 600u32.to_be_bytes());
        assert_eq!(
            b[8..24],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 10]
        );
        assert_eq!(b[24..36], [0xaa; 12]);
        assert_eq!(b[36..40], [6, 0, 0, 0]);
        assert_eq!(b[40..42], 4000u16.to_be_bytes());
        assert_eq!(b[42..44], 4001u16.to_be_bytes());
        assert_eq!(
            b[44..60],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn nat_pmp_responses_decode() {
        let ext = [0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 7];
        assert_eq!(
            ServerToClient::decode(&ext),
            Ok(ServerToClient::PmpExternalAddress {
                result: PmpResult::SUCCESS,
                epoch: 9,
                external_ip: Ipv4Addr::new(203, 0, 113, 7),
            })
        );
        let map = [
            0, 130, 0, 0, 0, 0, 0, 9, 0x0f, 0xa0, 0x0f, 0xa1, 0, 0, 2, 0x58,
        ];
        assert_eq!(
            ServerToClient::decode(&map),
            Ok(ServerToClient::PmpMap {
                protocol: Protocol::Tcp,
                result: PmpResult::SUCCESS,
                epoch: 9,
                internal_port: 4000,
                external_port: 4001,
                lifetime: 600,
            })
        );
        // A NAT-PMP server's answer to a PCP MAP request: version 0,
        // opcode 1 + 128, UNSUPPORTED_VERSION, 8 bytes.
        assert_eq!(
            ServerToClient::decode(&[0, 129, 0, 1, 0, 0, 0, 1]),
            Ok(ServerToClient::PmpError {
                opcode: 1,
                result: PmpResult::UNSUPPORTED_VERSION,
            })
        );
        // An error may come full length too.
        assert!(matches!(
            ServerToClient::decode(&[0, 130, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(ServerToClient::PmpMap {
                result: PmpResult(2),
                ..
            })
        ));
    }

    #[test]
    fn nat_pmp_lengths_are_checked() {
        // A success cut short.
        assert_eq!(
            ServerToClient::decode(&[0, 128, 0, 0, 0, 0, 0, 9, 203]),
            Err(DecodeError::TooShort { len: 9, need: 12 })
        );
        assert_eq!(
            ServerToClient::decode(&[0, 130, 0, 0, 0, 0, 0, 9, 0, 1, 0, 2]),
            Err(DecodeError::TooShort { len: 12, need: 16 })
        );
        assert_eq!(
            ServerToClient::decode(&[0, 130, 0, 1]),
            Err(DecodeError::TooShort { len: 4, need: 8 })
        );
        // Our own request echoed back is not an answer.
        assert_eq!(
            ServerToClient::decode(&[0, 0]),
            Err(DecodeError::NotAResponse)
        );
        assert_eq!(
            ServerToClient::decode(&[0, 200, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownOpcode(72))
        );
        assert_eq!(
            ServerToClient::decode(&[]),
            Err(DecodeError::TooShort { len: 0, need: 2 })
        );
        assert_eq!(
            ServerToClient::decode(&[0; MAX_MESSAGE_LEN + 1]),
            Err(DecodeError::TooLong {
                len: MAX_MESSAGE_LEN + 1
            })
        );
        assert_eq!(
            ServerToClient::decode(&[7, 0]),
            Err(DecodeError::UnknownVersion(7))
        );
    }

    fn pcp_response(result: u8, body: bool) -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, result];
        b.extend_from_slice(&600u32.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        if body {
            b.extend_from_slice(&[0xaa; 12]);
            b.extend_from_slice(&[17, 0, 0, 0]);
            b.extend_from_slice(&4000u16.to_be_bytes());
            b.extend_from_slice(&4001u16.to_be_bytes());
            b.extend_from_slice(&Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped().octets());
        }
        b
    }

    #[test]
    fn pcp_responses_decode() {
        let b = pcp_response(0, true);
        assert_eq!(
            ServerToClient::decode(&b),
            Ok(ServerToClient::PcpMap {
                result: PcpResult::SUCCESS,
                lifetime: 600,
                epoch: 77,
                map: Some(PcpMapBody {
                    nonce: [0xaa; 12],
                    protocol: 17,
                    internal_port: 4000,
                    external_port: 4001,
                    external_ip: Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped(),
                }),
            })
        );
        // Options after the body are skipped.
        let mut with_option = b.clone();
        with_option.extend_from_slice(&[0x80, 0, 0, 0]);
        assert!(matches!(
            ServerToClient::decode(&with_option),
            Ok(ServerToClient::PcpMap { map: Some(_), .. })
        ));
        // An error may carry only the header.
        assert_eq!(
            ServerToClient::decode(&pcp_response(2, false)),
            Ok(ServerToClient::PcpMap {
                result: PcpResult(2),
                lifetime: 600,
                epoch: 77,
                map: None,
            })
        );
    }

    #[test]
    fn pcp_lengths_are_checked() {
        assert_eq!(
            ServerToClient::decode(&pcp_response(0, false)),
            Err(DecodeError::TooShort { len: 24, need: 60 })
        );
        let mut odd = pcp_response(0, true);
        odd.push(0);
        assert_eq!(
            ServerToClient::decode(&odd),
            Err(DecodeError::Unaligned { len: 61 })
        );
        assert_eq!(
            ServerToClient::decode(&[2, 0x81, 0, 0]),
            Err(DecodeError::TooShort { len: 4, need: 24 })
        );
        let mut request = pcp_response(0, true);
        request[1] = 1;
        assert_eq!(
            ServerToClient::decode(&request),
            Err(DecodeError::NotAResponse)
        );
        // Another PCP version's UNSUPP_VERSION.
        assert_eq!(
            ServerToClient::decode(&[1, 0x81, 0, 1]),
            Ok(ServerToClient::PcpOther {
                opcode: 1,
                result: PcpResult::UNSUPP_VERSION,
            })
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = ServerToClient::decode(&bytes);
        }

        #[test]
        fn pcp_shaped_noise_never_panics(result: u8, tail in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut b = vec![2, 0x81, 0, result];
            b.extend_from_slice(&tail);
            let _ = ServerToClient::decode(&b);
        }
    }
}
