//! `ferry://HOST:PORT/CODE`: the code and the rendezvous server in one
//! string, for a QR code (`ferry send --qr`) or a chat message, which
//! `ferry receive` takes in place of a code.
//!
//! The text comes from whoever made the QR code or wrote the message, so
//! it is parsed strictly, and nothing of it is shown raw:
//! - at most [`MAX_LEN`] bytes of printable ASCII, no spaces;
//! - scheme `ferry` (any case), then `//`;
//! - no userinfo (`user@`), query (`?`) or `%` escapes, and no fragment
//!   (`#`) but `#sha256=HEX` (64 hex digits) at the end: the pin of the
//!   server's TLS certificate, as `--server HOST:PORT#sha256=HEX` takes it;
//! - host: a DNS name, an IPv4 address, or an IPv6 address in brackets
//!   (no zone); port 1 to 65535, 443 when left out;
//! - exactly one path segment, which parses as a [`Code`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ferry_proto::code::Code;

use crate::escape;

/// The scheme, lowercase.
pub const SCHEME: &str = "ferry";

/// The longest URI accepted, in bytes: a 253-byte DNS name, a port and a
/// code fit with room to spare.
pub const MAX_LEN: usize = 320;

/// The port when the URI names none.
pub const DEFAULT_PORT: u16 = 443;

/// What a good URI looks like, for error messages.
const EXAMPLE: &str = "ferry://example.org:443/7-orbit-lantern";

/// A parsed `ferry://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FerryUri {
    /// The rendezvous server.
    pub server: Server,
    /// The code.
    pub code: Code,
    /// The SHA-256 of the server's TLS certificate (64 lowercase hex
    /// digits), when the sender pinned it.
    pub pin: Option<String>,
}

/// A rendezvous server's host (lowercase; IPv6 without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// DNS name, IPv4 or IPv6 address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a text is not a good `ferry://` URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Longer than [`MAX_LEN`].
    #[error("the URI is {len} bytes long, more than the {MAX_LEN} a ferry URI can be")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A control, space or non-ASCII character.
    #[error("the URI holds {shown} at byte {at}; a ferry URI is printable ASCII without spaces")]
    BadCharacter {
        /// The character, escaped.
        shown: String,
        /// Its byte offset.
        at: usize,
    },
    /// Not `ferry://`.
    #[error("the URI starts with {found:?}, not ferry://")]
    Scheme {
        /// What stood before `://` (escaped, shortened), or the start.
        found: String,
    },
    /// `user@host`.
    #[error("the URI names a user (user@host); a ferry URI has none")]
    Userinfo,
    /// `?...`.
    #[error("the URI has a query (?...); a ferry URI has none")]
    Query,
    /// `#...` other than `#sha256=HEX`.
    #[error("the URI has a fragment (#...); a ferry URI has none but #sha256= and 64 hex digits")]
    Fragment,
    /// `%xx`.
    #[error("the URI has a %-escape; a ferry URI needs none")]
    Escape,
    /// No host.
    #[error("the URI names no server")]
    NoHost,
    /// A host that is no DNS name, IPv4 or bracketed IPv6 address.
    #[error("{host:?} is not a server name or address ({why})")]
    Host {
        /// The host as written (escaped, shortened).
        host: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A port that is not 1 to 65535.
    #[error("{port:?} is not a port (1 to 65535)")]
    Port {
        /// The port as written (escaped, shortened).
        port: String,
    },
    /// Nothing after the server.
    #[error("the URI has no code after the server")]
    NoCode,
    /// `/a/b`.
    #[error("the URI has more than one path segment; only the code follows the server")]
    Segments,
    /// The segment is no code.
    #[error("the code in the URI is not a ferry code: {0}")]
    Code(ferry_proto::code::CodeError),
}

impl UriError {
    /// The error and what a good URI looks like, in one line.
    pub fn explained(&self) -> String {
        format!("not a ferry URI: {self}; one looks like {EXAMPLE}")
    }
}

/// Whether `text` is meant as a URI rather than a code: a code never holds
/// `:` or `/`.
pub fn looks_like_uri(text: &str) -> bool {
    text.contains(':') || text.contains('/')
}

impl FerryUri {
    /// Parses `text` strictly (see the module doc). The caller trims it.
    pub fn parse(text: &str) -> Result<FerryUri, UriError> {
        if text.len() > MAX_LEN {
            return Err(UriError::TooLong { len: text.len() });
        }
        if let Some((at, c)) = text.char_indices().find(|&(_, c)| !c.is_ascii_graphic()) {
            return Err(UriError::BadCharacter {
                shown: shown_char(c),
                at,
            });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(UriError::Scheme {
                found: shorten(text.split(['/', ':']).next().unwrap_or_default()),
            });
        };
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(UriError::Scheme {
                found: shorten(scheme),
            });
        }
        // The pin, the one fragment there may be.
        let (rest, pin) = match rest.split_once('#') {
            None => (rest, None),
            Some((rest, fragment)) => {
                let pin = fragment
                    .strip_prefix("sha256=")
                    .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or(UriError::Fragment)?;
                (rest, Some(pin.to_ascii_lowercase()))
            }
        };
        // Before the structure: `?`, `#` or `@` anywhere is refused, so a
        // query cannot hide a second path and userinfo cannot fake a host.
        if rest.contains('#') {
            return Err(UriError::Fragment);
        }
        if rest.contains('?') {
            return Err(UriError::Query);
        }
        if rest.contains('%') {
            return Err(UriError::Escape);
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(UriError::Userinfo);
        }
        let server = Server::parse(authority)?;
        if path.is_empty() {
            return Err(UriError::NoCode);
        }
        if path.contains('/') {
            return Err(UriError::Segments);
        }
        let code = path.parse().map_err(UriError::Code)?;
        Ok(FerryUri { server, code, pin })
    }
}

impl fmt::Display for FerryUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}://")?;
        let host = &self.server.host;
        if host.contains(':') {
            write!(f, "[{host}]")?;
        } else {
            f.write_str(host)?;
        }
        if self.server.port != DEFAULT_PORT {
            write!(f, ":{}", self.server.port)?;
        }
        write!(f, "/{}", self.code)?;
        match &self.pin {
            Some(pin) => write!(f, "#sha256={pin}"),
            None => Ok(()),
        }
    }
}

/// The URI for `code` on `server` (the spec the session dials, after
/// [`crate::session::server_spec`]): a pin in it goes into the URI; other
/// TLS settings (`#tls`, `#tls-ca=`) are the receiver's own to make.
pub fn to_uri(server: &str, code: &Code) -> Result<String, UriError> {
    let (addr, pin) = match server.split_once('#') {
        Some((addr, fragment)) => (addr, fragment.strip_prefix("sha256=")),
        None => (server, None),
    };
    let server = Server::parse(addr)?;
    Ok(FerryUri {
        server,
        code: code.clone(),
        pin: pin.map(str::to_ascii_lowercase),
    }
    .to_string())
}

impl Server {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`.
    pub fn parse(authority: &str) -> Result<Server, UriError> {
        if authority.is_empty() {
            return Err(UriError::NoHost);
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((v6, after)) = bracketed.split_once(']') else {
                return Err(host_error(authority, "an IPv6 address needs its closing ]"));
            };
            let address: Ipv6Addr = v6
                .parse()
                .map_err(|_| host_error(v6, "not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(host_error(authority, "only :PORT may follow ]")),
                },
            };
            (address.to_string(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(host_error(
                    authority,
                    "an IPv6 address goes in brackets, as [2001:db8::1]:443",
                ));
            }
            (dns_or_ipv4(host)?, port)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(text) => parse_port(text)?,
        };
        Ok(Server { host, port })
    }

    /// As `--server` takes it: `host:port`, `[v6]:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name (lowercased) or an IPv4 address in dotted decimal.
fn dns_or_ipv4(host: &str) -> Result<String, UriError> {
    if host.is_empty() {
        return Err(UriError::NoHost);
    }
    if host.len() > 253 {
        return Err(host_error(host, "longer than 253 characters"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    // As WHATWG URLs do: a host whose last label is a number is an IPv4
    // address or nothing, never a name.
    let last = labels.last().copied().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return host
            .parse::<Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| host_error(host, "not an IPv4 address"));
    }
    for label in labels {
        let why = if label.is_empty() {
            "an empty label (two dots, or a dot at an end)"
        } else if label.len() > 63 {
            "a label longer than 63 characters"
        } else if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            "only letters, digits, - and . go in a name"
        } else if label.starts_with('-') || label.ends_with('-') {
            "a label starts or ends with -"
        } else {
            continue;
        };
        return Err(host_error(host, why));
    }
    Ok(host.to_ascii_lowercase())
}

fn parse_port(text: &str) -> Result<u16, UriError> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(port)
        }
        _ => Err(UriError::Port {
            port: shorten(text),
        }),
    }
}

fn host_error(host: &str, why: &'static str) -> UriError {
    UriError::Host {
        host: shorten(host),
        why,
    }
}

/// At most 40 characters of `text`, escaped, for an error message.
fn shorten(text: &str) -> String {
    let short: String = text.chars().take(40).collect();
    let mut shown = escape::line(&short).into_owned();
    if short.len() < text.len() {
        shown.push_str("...");
    }
    shown
}

/// A character as an error shows it: never raw when it is a control.
fn shown_char(c: char) -> String {
    if c == ' ' {
        "a space".into()
    } else if escape::must_escape(c) {
        format!("the control character {}", escape::line(&c.to_string()))
    } else {
        format!("the non-ASCII character U+{:04X}", u32::from(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> Code {
        "7-orbit-lantern".parse().unwrap()
    }

    fn parse(text: &str) -> Result<FerryUri, UriError> {
        FerryUri::parse(text)
    }

    #[test]
    fn good_forms_parse_to_server_and_code() {
        let cases = [
            ("ferry://example.org/7-orbit-lantern", "example.org:443"),
            (
                "ferry://example.org:8443/7-orbit-lantern",
                "example.org:8443",
            ),
            (
                "FERRY://Relay-1.Example.ORG:9/7-orbit-lantern",
                "relay-1.example.org:9",
            ),
            ("ferry://127.0.0.1:4000/7-orbit-lantern", "127.0.0.1:4000"),
            ("ferry://[::1]:4000/7-orbit-lantern", "[::1]:4000"),
            ("ferry://[2001:DB8::1]/7-orbit-lantern", "[2001:db8::1]:443"),
            ("ferry://localhost:65535/7-Orbit-LANTERN", "localhost:65535"),
        ];
        for (text, server) in cases {
            let uri = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(uri.server.address(), server, "{text}");
            assert_eq!(uri.code, code(), "{text}");
        }
    }

    #[test]
    fn every_bad_form_is_refused_for_its_reason() {
        use UriError as E;
        let long_host = format!("ferry://{}.org/7-orbit-lantern", "a".repeat(MAX_LEN));
        type Check = fn(&UriError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            ("https://example.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("ferry:7-orbit-lantern".into(), |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("ferry:/example.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("ferry://user@example.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Userinfo)
            }),
            ("ferry://u:p@example.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Userinfo)
            }),
            ("ferry://example.org".into(), |e| matches!(e, E::NoCode)),
            ("ferry://example.org/".into(), |e| matches!(e, E::NoCode)),
            ("ferry://example.org/7-orbit/lantern".into(), |e| {
                matches!(e, E::Segments)
            }),
            ("ferry://example.org/7-orbit-lantern/".into(), |e| {
                matches!(e, E::Segments)
            }),
            ("ferry://example.org//7-orbit-lantern".into(), |e| {
                matches!(e, E::Segments)
            }),
            ("ferry://example.org:0/7-orbit-lantern".into(), |e| {
                matches!(e, E::Port { .. })
            }),
            ("ferry://example.org:65536/7-orbit-lantern".into(), |e| {
                matches!(e, E::Port { .. })
            }),
            ("ferry://example.org:+443/7-orbit-lantern".into(), |e| {
                matches!(e, E::Port { .. })
            }),
            ("ferry://example.org:/7-orbit-lantern".into(), |e| {
                matches!(e, E::Port { .. })
            }),
            ("ferry://example.org:https/7-orbit-lantern".into(), |e| {
                matches!(e, E::Port { .. })
            }),
            ("ferry://example.org/7-orbit-lanterns".into(), |e| {
                matches!(e, E::Code(_))
            }),
            ("ferry://example.org/orbit-lantern".into(), |e| {
                matches!(e, E::Code(_))
            }),
            ("ferry://example.org/7-orbit-lantern?x=1".into(), |e| {
                matches!(e, E::Query)
            }),
            ("ferry://example.org/7-orbit-lantern#top".into(), |e| {
                matches!(e, E::Fragment)
            }),
            ("ferry://example.org/7%2Dorbit-lantern".into(), |e| {
                matches!(e, E::Escape)
            }),
            ("ferry://exa\u{1b}[2Jmple.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::BadCharacter { at: 11, .. })
            }),
            ("ferry://example.org/7-orbit-lantern\n".into(), |e| {
                matches!(e, E::BadCharacter { .. })
            }),
            ("ferry://example.org/7 orbit lantern".into(), |e| {
                matches!(e, E::BadCharacter { .. })
            }),
            ("ferry://exämple.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::BadCharacter { .. })
            }),
            ("ferry://ex\u{202e}.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::BadCharacter { .. })
            }),
            (long_host, |e| matches!(e, E::TooLong { .. })),
            ("ferry:///7-orbit-lantern".into(), |e| {
                matches!(e, E::NoHost)
            }),
            ("ferry://::1/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://[::1/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://[fe80::1%25eth0]/7-orbit-lantern".into(), |e| {
                matches!(e, E::Escape)
            }),
            ("ferry://[::1]x/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://[example.org]/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://1.2.3/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://256.1.1.1/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://a..b/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://example.org./7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://-a.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
            ("ferry://a_b.org/7-orbit-lantern".into(), |e| {
                matches!(e, E::Host { .. })
            }),
        ];
        for (text, is_expected) in cases {
            match parse(&text) {
                Ok(uri) => panic!("{text:?} parsed as {uri:?}"),
                Err(e) => assert!(is_expected(&e), "{text:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn errors_never_show_a_control_character_raw_and_say_what_is_good() {
        let hostile = [
            "ferry://exa\u{1b}]52;c;aGk=\u{7}.org/7-orbit-lantern",
            "\u{1b}[2Jhttps://x/7-orbit-lantern",
            "ferry\u{9b}31m://x/7-orbit-lantern",
            "ferry://x/7-orbit-\u{202e}lantern",
        ];
        for text in hostile {
            let message = parse(text).unwrap_err().explained();
            assert!(
                !message.chars().any(escape::must_escape),
                "{text:?} gave {message:?}"
            );
            assert!(message.contains(EXAMPLE), "{message}");
        }
        // Echoed parts are shortened too.
        let scheme = format!("{}://x/7-orbit-lantern", "h".repeat(200));
        let message = parse(&scheme).unwrap_err().to_string();
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn a_printed_uri_parses_back_to_the_same_server_and_code() {
        let servers = [
            ("example.org:443", "ferry://example.org/7-orbit-lantern"),
            (
                "Example.org:8443",
                "ferry://example.org:8443/7-orbit-lantern",
            ),
            ("127.0.0.1:4000", "ferry://127.0.0.1:4000/7-orbit-lantern"),
            ("[::1]:4000", "ferry://[::1]:4000/7-orbit-lantern"),
            ("[2001:db8::1]:443", "ferry://[2001:db8::1]/7-orbit-lantern"),
        ];
        for (server, expected) in servers {
            let text = to_uri(server, &code()).unwrap();
            assert_eq!(text, expected);
            let back = parse(&text).unwrap();
            assert_eq!(back.code, code());
            assert_eq!(back.server, Server::parse(server).unwrap());
            assert_eq!(back.server.address(), server.to_ascii_lowercase());
        }
        let generated = Code::generate(123_456, &mut rand::thread_rng());
        let back = parse(&to_uri("relay.example.org:9", &generated).unwrap()).unwrap();
        assert_eq!(back.code, generated);
        assert!(to_uri("bad host:443", &code()).is_err());
        assert!(looks_like_uri("ferry://x/7-a-b") && !looks_like_uri("7-orbit-lantern"));
    }

    #[test]
    fn the_pin_of_a_tls_server_rides_in_the_uri_and_nothing_else_does() {
        let pin = "ab".repeat(32);
        let uri = to_uri(&format!("example.org:443#sha256={pin}"), &code()).unwrap();
        assert_eq!(uri, format!("ferry://example.org/{}#sha256={pin}", code()));
        let back = FerryUri::parse(&uri).unwrap();
        assert_eq!(back.pin.as_deref(), Some(pin.as_str()));
        assert_eq!(back.to_string(), uri);
        // Capitals are lowered; other TLS settings stay the receiver's own.
        let upper = format!(
            "ferry://example.org/7-orbit-lantern#sha256={}",
            pin.to_uppercase()
        );
        assert_eq!(
            FerryUri::parse(&upper).unwrap().pin.as_deref(),
            Some(pin.as_str())
        );
        assert_eq!(
            to_uri("example.org:443#tls", &code()).unwrap(),
            format!("ferry://example.org/{}", code())
        );
        for bad in [
            "ferry://example.org/7-orbit-lantern#sha256=abcd".to_string(),
            format!("ferry://example.org/7-orbit-lantern#sha256={pin}#x"),
            format!(
                "ferry://example.org/7-orbit-lantern#sha256={}",
                "zz".repeat(32)
            ),
        ] {
            assert_eq!(FerryUri::parse(&bad), Err(UriError::Fragment), "{bad}");
        }
    }
}
