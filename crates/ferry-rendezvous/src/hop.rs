//! What instances of a cluster send each other through their inboxes
//! (`ferry_cluster::Directory::publish`): a proxied client's frames to its
//! nameplate's home, and the home's frames back.
//!
//! ```text
//!  origin (holds the TCP connection)        home (holds the nameplate)
//!    connect{from, client, addr}  -------->  handle_remote_connect
//!    frame{from, client, msg}     -------->  handle_message
//!    gone{from, client}           -------->  handle_disconnect
//!    write to the connection  <--------  to-client{client, msg}
//!    flush, close             <--------  close{client}
//! ```
//!
//! Each instance trusts the others only as far as the shapes go: JSON of
//! these types, at most `ferry_cluster::MAX_PAYLOAD` bytes, instance names
//! checked before anything is published to them.

use std::net::SocketAddr;

use ferry_proto::signal::{ClientToServer, ServerToClient};
use serde::{Deserialize, Serialize};

/// One message between instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hop", rename_all = "kebab-case")]
pub(crate) enum Hop {
    /// A client of `from` joins the home, from `addr`.
    Connect {
        from: String,
        client: u64,
        addr: SocketAddr,
    },
    /// A frame of that client.
    Frame {
        from: String,
        client: u64,
        msg: ClientToServer,
    },
    /// That client's connection closed.
    Gone { from: String, client: u64 },
    /// A frame for the origin's client `client`.
    ToClient { client: u64, msg: ServerToClient },
    /// The home closed `client`: flush, then close it.
    Close { client: u64 },
}

impl Hop {
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<Hop> {
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_round_trip() {
        let hops = [
            Hop::Connect {
                from: "i-1".into(),
                client: 7,
                addr: "127.0.0.1:9".parse().unwrap(),
            },
            Hop::Frame {
                from: "i-1".into(),
                client: 7,
                msg: ClientToServer::Claim { nameplate: 12 },
            },
            Hop::ToClient {
                client: 7,
                msg: ServerToClient::Pong { id: 3 },
            },
            Hop::Close { client: 7 },
        ];
        for hop in hops {
            assert_eq!(Hop::decode(&hop.encode().unwrap()), Some(hop));
        }
        assert_eq!(Hop::decode(b"{\"hop\":\"nonsense\"}"), None);
    }
}
