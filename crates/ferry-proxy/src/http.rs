//! The HTTP CONNECT handshake, sans-IO.
//!
//! ```text
//! client -> proxy:  CONNECT host:port HTTP/1.1
//!                   Host: host:port
//!                   [Proxy-Authorization: Basic base64(user:password)]
//!                   (blank line)
//! proxy -> client:  HTTP/1.1 200 Connection established
//!                   (headers, blank line) -- then the tunnel's bytes
//! ```
//!
//! [`request`] makes the bytes to send; [`parse_response`] reads what
//! arrived so far: `Ok(None)` while the head is incomplete, the status once
//! it is whole, and how many bytes it took (what follows belongs to the
//! tunnel). A head longer than [`MAX_RESPONSE`] is an error, checked before
//! anything grows.

use base64::Engine;

use crate::url::{Credentials, Target};

/// The longest response head (status line and headers) accepted.
pub const MAX_RESPONSE: usize = 8 * 1024;
/// The most response headers accepted.
const MAX_HEADERS: usize = 64;

/// The CONNECT request for `target`, with basic auth when `credentials`
/// are given.
pub fn request(target: &Target, credentials: Option<&Credentials>) -> Vec<u8> {
    let mut out = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(Credentials { user, password }) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        out.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    out.push_str(concat!(
        "User-Agent: ferry/",
        env!("CARGO_PKG_VERSION"),
        "\r\n\r\n"
    ));
    out.into_bytes()
}

/// The proxy's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code: 2xx means the tunnel is open.
    pub status: u16,
    /// The reason phrase, escaped for a terminal and cut to 100
    /// characters.
    pub reason: String,
    /// The length of the head: the tunnel starts after it.
    pub head_len: usize,
}

impl Response {
    /// Whether the tunnel is open.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The head grew past [`MAX_RESPONSE`].
    #[error("the response head is longer than {MAX_RESPONSE} bytes")]
    TooLong,
    /// Not HTTP.
    #[error("not an HTTP response ({0})")]
    Malformed(String),
}

/// Reads the response head from `input` (all bytes received so far).
pub fn parse_response(input: &[u8]) -> Result<Option<Response>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(input) {
        Ok(httparse::Status::Complete(head_len)) => {
            let status = response
                .code
                .ok_or_else(|| ResponseError::Malformed("no status".into()))?;
            let reason = response.reason.unwrap_or("");
            let reason: String = ferry_proto::escape::line(reason)
                .chars()
                .take(100)
                .collect();
            Ok(Some(Response {
                status,
                reason,
                head_len,
            }))
        }
        Ok(httparse::Status::Partial) if input.len() >= MAX_RESPONSE => Err(ResponseError::TooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ResponseError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        "server.example:443".parse().unwrap()
    }

    #[test]
    fn the_request_is_byte_exact() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            String::from_utf8(request(&target(), None)).unwrap(),
            format!(
                "CONNECT server.example:443 HTTP/1.1\r\nHost: server.example:443\r\n\
                 User-Agent: ferry/{version}\r\n\r\n"
            )
        );
        let credentials = Credentials {
            user: "Aladdin".into(),
            password: "open sesame".into(),
        };
        let with_auth = String::from_utf8(request(&target(), Some(&credentials))).unwrap();
        // RFC 7617's example.
        assert!(
            with_auth.contains("\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n")
        );
        let v6: Target = "[2001:db8::1]:443".parse().unwrap();
        assert!(
            String::from_utf8(request(&v6, None))
                .unwrap()
                .starts_with("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n")
        );
    }

    #[test]
    fn a_response_is_read_once_whole_and_the_tunnel_follows() {
        let whole =
            b"HTTP/1.1 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\nTUNNEL";
        for cut in 0..whole.len() - 6 {
            assert_eq!(parse_response(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        let response = parse_response(whole).unwrap().unwrap();
        assert!(response.is_success());
        assert_eq!(response.reason, "Connection established");
        assert_eq!(&whole[response.head_len..], b"TUNNEL");
        let denied = parse_response(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((denied.status, denied.is_success()), (407, false));
    }

    #[test]
    fn a_hostile_proxy_gets_nothing_raw_to_the_terminal_and_no_unbounded_buffer() {
        let response = parse_response(b"HTTP/1.1 403 \x1b[31mred\r\n\r\n");
        // httparse refuses control bytes in the reason, or we escape them.
        if let Ok(Some(response)) = response {
            assert!(!response.reason.contains('\x1b'));
        }
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < MAX_RESPONSE {
            endless.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse_response(&endless),
            Err(ResponseError::TooLong | ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse_response(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Err(ResponseError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_response(&bytes);
        }
    }
}
