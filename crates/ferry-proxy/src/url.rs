//! Proxy URLs and the `host:port` targets reached through them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// How to talk to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP CONNECT (`http://`).
    Http,
    /// SOCKS5, the target's name resolved here (`socks5://`).
    Socks5,
    /// SOCKS5, the target's name resolved by the proxy (`socks5h://`).
    Socks5h,
}

impl Scheme {
    /// The URL scheme, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        }
    }

    /// The proxy kind in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Scheme::Http => "HTTP proxy",
            Scheme::Socks5 | Scheme::Socks5h => "SOCKS5 proxy",
        }
    }
}

/// A user name and password for the proxy (HTTP basic auth, SOCKS5
/// RFC 1929). Never shown: [`Debug`] hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A proxy: `http://[user:pass@]HOST:PORT`, `socks5://...`, `socks5h://...`.
///
/// A URL without a scheme is an HTTP proxy (as curl takes it); a missing
/// port is 80 for HTTP and 1080 for SOCKS5. [`Display`](fmt::Display)
/// leaves the credentials out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// How to talk to it.
    pub scheme: Scheme,
    /// Its host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// User and password, when the URL has them.
    pub credentials: Option<Credentials>,
}

/// Why a proxy URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyUrlError {
    /// A scheme other than `http`, `socks5`, `socks5h`.
    #[error(
        "{url:?}: the proxy scheme {scheme:?} is not supported; use http://, socks5:// or socks5h://"
    )]
    Scheme {
        /// The URL as given (credentials removed).
        url: String,
        /// The scheme.
        scheme: String,
    },
    /// No host.
    #[error("{url:?}: no proxy host; write it as http://HOST:PORT or socks5h://HOST:PORT")]
    NoHost {
        /// The URL as given (credentials removed).
        url: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("{url:?}: {port:?} is not a port (1 to 65535)")]
    Port {
        /// The URL as given (credentials removed).
        url: String,
        /// The port text.
        port: String,
    },
    /// A path, query or fragment after the address, or other stray text.
    #[error("{url:?}: unexpected {rest:?} after the proxy address; write only SCHEME://HOST:PORT")]
    Trailing {
        /// The URL as given (credentials removed).
        url: String,
        /// The stray text.
        rest: String,
    },
    /// A bad percent escape in the user name or password.
    #[error("{url:?}: the user name or password has a bad %-escape")]
    Escape {
        /// The URL as given (credentials removed).
        url: String,
    },
}

impl FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_string(), text),
        };
        // What a message may show of the URL: never a password.
        let shown = match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => text.to_string(),
        };
        let scheme = match scheme.as_str() {
            "http" => Scheme::Http,
            "socks5" => Scheme::Socks5,
            "socks5h" => Scheme::Socks5h,
            _ => {
                return Err(ProxyUrlError::Scheme { url: shown, scheme });
            }
        };
        let (authority, tail) = match rest.find(['/', '?', '#']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if !tail.is_empty() && tail != "/" {
            return Err(ProxyUrlError::Trailing {
                url: shown,
                rest: tail.to_string(),
            });
        }
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| ProxyUrlError::Escape { url: shown.clone() })
                };
                let credentials = Credentials {
                    user: decode(user)?,
                    password: decode(password)?,
                };
                (Some(credentials), address)
            }
            None => (None, authority),
        };
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Socks5 | Scheme::Socks5h => 1080,
        };
        let (host, port) = split_host_port(address).map_err(|e| match e {
            SplitError::NoHost => ProxyUrlError::NoHost { url: shown.clone() },
            SplitError::Port(port) => ProxyUrlError::Port {
                url: shown.clone(),
                port,
            },
            SplitError::Trailing(rest) => ProxyUrlError::Trailing {
                url: shown.clone(),
                rest,
            },
        })?;
        Ok(ProxyUrl {
            scheme,
            host,
            port: port.unwrap_or(default_port),
            credentials,
        })
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if self.credentials.is_some() {
            f.write_str("***@")?;
        }
        write!(f, "{}", HostPort(&self.host, self.port))
    }
}

impl ProxyUrl {
    /// `host:port` of the proxy itself, for connecting.
    pub fn address(&self) -> String {
        HostPort(&self.host, self.port).to_string()
    }
}

/// Where to go through the proxy: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Why a `host:port` target does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not HOST:PORT ({problem})")]
pub struct TargetError {
    /// The text.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let failed = |problem| TargetError {
            text: text.to_string(),
            problem,
        };
        match split_host_port(text) {
            Ok((host, Some(port))) => Ok(Target { host, port }),
            Ok((_, None)) => Err(failed("no port")),
            Err(SplitError::NoHost) => Err(failed("no host")),
            Err(SplitError::Port(_)) => Err(failed("bad port")),
            Err(SplitError::Trailing(_)) => Err(failed("stray text after the address")),
        }
    }
}

impl From<std::net::SocketAddr> for Target {
    fn from(addr: std::net::SocketAddr) -> Self {
        Target {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HostPort(&self.host, self.port).fmt(f)
    }
}

impl Target {
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// `host:port`, with brackets around an IPv6 address.
struct HostPort<'a>(&'a str, u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

enum SplitError {
    NoHost,
    Port(String),
    Trailing(String),
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(text: &str) -> Result<(String, Option<u16>), SplitError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(SplitError::NoHost)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(SplitError::NoHost);
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| SplitError::Trailing(after.to_string()))?,
            ),
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            // A bare IPv6 address without a port.
            Some(_) if text.parse::<std::net::Ipv6Addr>().is_ok() => (text, None),
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(SplitError::NoHost);
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(SplitError::Port(p.to_string())),
        })
        .transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ProxyUrl {
        s.parse().unwrap()
    }

    #[test]
    fn the_three_schemes_parse_with_and_without_credentials() {
        assert_eq!(
            url("http://proxy.example.com:3128"),
            ProxyUrl {
                scheme: Scheme::Http,
                host: "proxy.example.com".into(),
                port: 3128,
                credentials: None
            }
        );
        let socks = url("socks5h://al%40ce:p%3Ass@198.51.100.7:1080/");
        assert_eq!(socks.scheme, Scheme::Socks5h);
        assert_eq!(socks.host, "198.51.100.7");
        assert_eq!(
            socks.credentials,
            Some(Credentials {
                user: "al@ce".into(),
                password: "p:ss".into()
            })
        );
        assert_eq!(url("SOCKS5://[2001:db8::1]:9050").host, "2001:db8::1");
        assert_eq!(url("socks5://h").port, 1080);
        assert_eq!(url("http://h").port, 80);
        // As curl takes it: no scheme is HTTP.
        assert_eq!(url("proxy:8080").scheme, Scheme::Http);
    }

    #[test]
    fn the_password_never_shows() {
        let proxy = url("http://user:secret@proxy:3128");
        assert_eq!(proxy.to_string(), "http://***@proxy:3128");
        assert!(!format!("{proxy:?}").contains("secret"));
        let err = "ftp://user:secret@proxy:21"
            .parse::<ProxyUrl>()
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(
            url("socks5h://[2001:db8::1]:1080").to_string(),
            "socks5h://[2001:db8::1]:1080"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |s: &str| s.parse::<ProxyUrl>().unwrap_err();
        assert!(
            matches!(err("https://p:443"), ProxyUrlError::Scheme { scheme, .. } if scheme == "https")
        );
        assert!(matches!(
            err("socks4://p:1080"),
            ProxyUrlError::Scheme { .. }
        ));
        assert!(matches!(err("http://:3128"), ProxyUrlError::NoHost { .. }));
        assert!(matches!(err("http://"), ProxyUrlError::NoHost { .. }));
        assert!(matches!(err("http://p:0"), ProxyUrlError::Port { .. }));
        assert!(matches!(err("http://p:99999"), ProxyUrlError::Port { .. }));
        assert!(matches!(err("http://p:x"), ProxyUrlError::Port { .. }));
        assert!(matches!(
            err("http://p:3128/path"),
            ProxyUrlError::Trailing { .. }
        ));
        assert!(matches!(
            err("http://[2001:db8::1]x"),
            ProxyUrlError::Trailing { .. }
        ));
        assert!(matches!(
            err("http://u:%zz@p:1"),
            ProxyUrlError::Escape { .. }
        ));
        assert!(matches!(
            err("http://pro xy:1"),
            ProxyUrlError::NoHost { .. }
        ));
    }

    #[test]
    fn targets_parse_and_print_back() {
        for text in ["example.com:443", "203.0.113.9:8443", "[2001:db8::2]:443"] {
            assert_eq!(text.parse::<Target>().unwrap().to_string(), text);
        }
        assert!("example.com".parse::<Target>().is_err());
        assert!(":443".parse::<Target>().is_err());
        assert!("a b:443".parse::<Target>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_text_makes_the_parsers_panic(text in ".{0,64}") {
            let _ = text.parse::<ProxyUrl>();
            let _ = text.parse::<Target>();
        }
    }
}
