//! The tokio driver: a TCP connection to the proxy, the handshake, and the
//! plain stream to the target that remains.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::http;
use crate::url::{ProxyUrl, Scheme, Target};

/// What went wrong reaching a target through a proxy. Each says which
/// proxy (never its password) and, where it matters, which target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy's host name did not resolve.
    #[error("could not resolve the {} {proxy}: {reason}", .proxy.scheme.describe())]
    Resolve {
        /// The proxy.
        proxy: ProxyUrl,
        /// Why.
        reason: String,
    },
    /// No TCP connection to the proxy.
    #[error("could not reach the {} {proxy}: {reason}", .proxy.scheme.describe())]
    Unreachable {
        /// The proxy.
        proxy: ProxyUrl,
        /// Why, e.g. "connection refused".
        reason: String,
    },
    /// The proxy wants credentials, or refused the ones given.
    #[error("the {} {proxy} refused to let us through to {target}: {reason}", .proxy.scheme.describe())]
    Auth {
        /// The proxy.
        proxy: ProxyUrl,
        /// Where we wanted to go.
        target: Target,
        /// What it said, e.g. "407 Proxy Authentication Required".
        reason: String,
    },
    /// The proxy does not allow this target (a 403, a SOCKS rule set).
    #[error("the {} {proxy} does not allow connections to {target}: {reason}", .proxy.scheme.describe())]
    Refused {
        /// The proxy.
        proxy: ProxyUrl,
        /// Where we wanted to go.
        target: Target,
        /// What it said.
        reason: String,
    },
    /// The proxy could not reach the target (a 502, a SOCKS "connection
    /// refused"): the target is down, or the name is wrong.
    #[error("the {} {proxy} could not reach {target}: {reason}", .proxy.scheme.describe())]
    TargetUnreachable {
        /// The proxy.
        proxy: ProxyUrl,
        /// Where we wanted to go.
        target: Target,
        /// What it said.
        reason: String,
    },
    /// With `socks5://` the target's name is resolved here, and it did
    /// not resolve.
    #[error(
        "could not resolve {target} (the SOCKS5 proxy {proxy} takes addresses; socks5h:// lets the proxy resolve names): {reason}"
    )]
    TargetResolve {
        /// The proxy.
        proxy: ProxyUrl,
        /// The target.
        target: Target,
        /// Why.
        reason: String,
    },
    /// The handshake took too long.
    #[error("the {} {proxy} did not connect us to {target} within {secs} s", .proxy.scheme.describe())]
    Timeout {
        /// The proxy.
        proxy: ProxyUrl,
        /// Where we wanted to go.
        target: Target,
        /// The limit.
        secs: u64,
    },
    /// The proxy answered something that is not the protocol, or hung up.
    #[error("the {} {proxy} broke the protocol: {reason}; is it really a{} proxy?", .proxy.scheme.describe(), if .proxy.scheme == Scheme::Http { "n HTTP" } else { " SOCKS5" })]
    Protocol {
        /// The proxy.
        proxy: ProxyUrl,
        /// What was wrong.
        reason: String,
    },
}

impl ProxyError {
    /// The proxy worked, but the target did not answer through it (down,
    /// restarting): worth another try, as a direct connection that failed
    /// would be.
    pub fn is_target_unreachable(&self) -> bool {
        matches!(
            self,
            ProxyError::TargetUnreachable { .. } | ProxyError::Timeout { .. }
        )
    }

    /// The proxy this is about.
    pub fn proxy(&self) -> &ProxyUrl {
        match self {
            ProxyError::Resolve { proxy, .. }
            | ProxyError::Unreachable { proxy, .. }
            | ProxyError::Auth { proxy, .. }
            | ProxyError::Refused { proxy, .. }
            | ProxyError::TargetUnreachable { proxy, .. }
            | ProxyError::TargetResolve { proxy, .. }
            | ProxyError::Timeout { proxy, .. }
            | ProxyError::Protocol { proxy, .. } => proxy,
        }
    }
}

/// Connects to `target` through `proxy`, the whole within `wait`. The
/// stream returned carries bytes to and from the target, from its first
/// byte on.
pub async fn connect(
    proxy: &ProxyUrl,
    target: &Target,
    wait: Duration,
) -> Result<TcpStream, ProxyError> {
    let timed_out = || ProxyError::Timeout {
        proxy: proxy.clone(),
        target: target.clone(),
        secs: wait.as_secs().max(1),
    };
    let stream = tokio::time::timeout(wait, handshake(proxy, target))
        .await
        .map_err(|_| timed_out())??;
    debug!(%proxy, %target, "tunnel open through the proxy");
    Ok(stream)
}

async fn handshake(proxy: &ProxyUrl, target: &Target) -> Result<TcpStream, ProxyError> {
    let mut stream = connect_proxy(proxy).await?;
    let _ = stream.set_nodelay(true);
    match proxy.scheme {
        Scheme::Http => http_connect(&mut stream, proxy, target).await?,
        Scheme::Socks5 | Scheme::Socks5h => return socks5_connect(stream, proxy, target).await,
    }
    Ok(stream)
}

async fn connect_proxy(proxy: &ProxyUrl) -> Result<TcpStream, ProxyError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(proxy.address())
        .await
        .map_err(|e| ProxyError::Resolve {
            proxy: proxy.clone(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last = "no address found".to_string();
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                debug!(%proxy, %addr, "reached the proxy");
                return Ok(stream);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(ProxyError::Unreachable {
        proxy: proxy.clone(),
        reason: last,
    })
}

async fn http_connect(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    target: &Target,
) -> Result<(), ProxyError> {
    let protocol = |reason: String| ProxyError::Protocol {
        proxy: proxy.clone(),
        reason,
    };
    stream
        .write_all(&http::request(target, proxy.credentials.as_ref()))
        .await
        .map_err(|e| protocol(format!("sending CONNECT failed: {e}")))?;
    // A byte at a time: not one byte of the tunnel may be taken for the
    // head (the head is short, and this happens once per connection).
    let mut head = Vec::with_capacity(256);
    let response = loop {
        let byte = match stream.read_u8().await {
            Ok(byte) => byte,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(protocol(
                    "it closed the connection without an answer".into(),
                ));
            }
            Err(e) => return Err(protocol(format!("reading its answer failed: {e}"))),
        };
        head.push(byte);
        if byte != b'\n' {
            if head.len() >= http::MAX_RESPONSE {
                return Err(protocol(http::ResponseError::TooLong.to_string()));
            }
            continue;
        }
        if let Some(response) = http::parse_response(&head).map_err(|e| protocol(e.to_string()))? {
            break response;
        }
    };
    if response.is_success() {
        return Ok(());
    }
    let reason = format!("{} {}", response.status, response.reason)
        .trim_end()
        .to_string();
    let target = target.clone();
    let proxy = proxy.clone();
    Err(match response.status {
        // tinyproxy answers wrong credentials with 401.
        401 | 407 => ProxyError::Auth {
            reason: if proxy.credentials.is_some() {
                format!("{reason} (the user name or password was not accepted)")
            } else {
                format!("{reason} (it wants a user name and password: http://USER:PASS@HOST:PORT)")
            },
            proxy,
            target,
        },
        403 | 405 => ProxyError::Refused {
            proxy,
            target,
            reason,
        },
        // 502 Bad Gateway, 503, 504 Gateway Timeout, 404 for a name the
        // proxy could not resolve.
        _ => ProxyError::TargetUnreachable {
            proxy,
            target,
            reason,
        },
    })
}

async fn socks5_connect(
    stream: TcpStream,
    proxy: &ProxyUrl,
    target: &Target,
) -> Result<TcpStream, ProxyError> {
    use tokio_socks::tcp::Socks5Stream;
    let connected = match (proxy.scheme, target.ip()) {
        (Scheme::Socks5, None) => {
            // socks5://: the name resolves here, the proxy gets the address.
            let addr = tokio::net::lookup_host(target.to_string())
                .await
                .map_err(|e| e.to_string())
                .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address found".to_string()))
                .map_err(|reason| ProxyError::TargetResolve {
                    proxy: proxy.clone(),
                    target: target.clone(),
                    reason,
                })?;
            debug!(%target, %addr, "resolved here for socks5://");
            socks5_handshake(stream, proxy, addr).await
        }
        (_, Some(ip)) => socks5_handshake(stream, proxy, SocketAddr::new(ip, target.port)).await,
        // socks5h://: the name goes to the proxy.
        (_, None) => socks5_handshake(stream, proxy, (target.host.as_str(), target.port)).await,
    };
    connected
        .map(Socks5Stream::into_inner)
        .map_err(|e| socks5_error(e, proxy, target))
}

async fn socks5_handshake<'t>(
    stream: TcpStream,
    proxy: &ProxyUrl,
    target: impl tokio_socks::IntoTargetAddr<'t>,
) -> Result<tokio_socks::tcp::Socks5Stream<TcpStream>, tokio_socks::Error> {
    use tokio_socks::tcp::Socks5Stream;
    match &proxy.credentials {
        Some(c) => {
            Socks5Stream::connect_with_password_and_socket(stream, target, &c.user, &c.password)
                .await
        }
        None => Socks5Stream::connect_with_socket(stream, target).await,
    }
}

fn socks5_error(error: tokio_socks::Error, proxy: &ProxyUrl, target: &Target) -> ProxyError {
    use tokio_socks::Error as E;
    let (proxy, target) = (proxy.clone(), target.clone());
    let reason = error.to_string().to_lowercase();
    match error {
        E::NoAcceptableAuthMethods | E::AuthorizationRequired => ProxyError::Auth {
            reason: if proxy.credentials.is_some() {
                format!("{reason} (it takes none of the ways we can log in)")
            } else {
                format!(
                    "{reason} (it wants a user name and password: socks5h://USER:PASS@HOST:PORT)"
                )
            },
            proxy,
            target,
        },
        E::PasswordAuthFailure(_) | E::InvalidAuthValues(_) => ProxyError::Auth {
            reason: format!("{reason} (the user name or password was not accepted)"),
            proxy,
            target,
        },
        E::ConnectionNotAllowedByRuleset => ProxyError::Refused {
            proxy,
            target,
            reason,
        },
        E::GeneralSocksServerFailure
        | E::NetworkUnreachable
        | E::HostUnreachable
        | E::ConnectionRefused
        | E::TtlExpired => ProxyError::TargetUnreachable {
            proxy,
            target,
            reason,
        },
        E::Io(e) => ProxyError::Protocol {
            proxy,
            reason: format!("the handshake failed: {e}"),
        },
        _ => ProxyError::Protocol { proxy, reason },
    }
}
