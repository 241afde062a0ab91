//! ferry-proxy: reaching a TCP target through a proxy, for networks that
//! let out only their proxy (an office's HTTP proxy, a SOCKS5 gateway).
//!
//! - [`url`]: proxy URLs, `http://[user:pass@]HOST:PORT`, `socks5://` and
//!   `socks5h://` ([`ProxyUrl`]), and `host:port` targets ([`Target`]).
//! - [`rules`]: which proxy, if any, serves a target ([`ProxyRules`]): one
//!   proxy from the command line, a config file or the environment
//!   (`HTTPS_PROXY`, `ALL_PROXY`), minus the hosts `NO_PROXY` names.
//! - [`http`]: the HTTP CONNECT handshake as a sans-IO codec: the request
//!   bytes, and the response parsed from what arrived so far, under a size
//!   limit. No sockets.
//! - [`dial`]: the tokio driver ([`connect`]): TCP to the proxy, the
//!   CONNECT or SOCKS5 handshake (RFC 1928, with RFC 1929 user/password
//!   auth, by `tokio-socks`), and back comes a plain
//!   [`tokio::net::TcpStream`] that carries bytes to the target, ready for
//!   TLS or anything else.
//!
//! ```text
//! http:     TCP -> proxy; "CONNECT host:port HTTP/1.1" -> "HTTP/1.1 200" -> tunnel
//! socks5h:  TCP -> proxy; greeting -> [user/pass] -> CONNECT(domain, port) -> tunnel
//! socks5:   resolve host here; ... CONNECT(ip, port) -> tunnel
//! ```
//!
//! Nothing here reaches a terminal raw: a proxy's words (an HTTP reason
//! phrase) are escaped before they go into an error.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod dial;
pub mod http;
pub mod rules;
pub mod url;

pub use dial::{ProxyError, connect};
pub use rules::{Bypass, ProxyRules, Source};
pub use url::{Credentials, ProxyUrl, ProxyUrlError, Scheme, Target, TargetError};
