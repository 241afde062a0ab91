//! The CLI side of a session: where the server is, and what the user sees
//! while the library (`ferry_connect::session`) pairs and connects.

use anyhow::Result;
use ferry_connect::session::{self, Sender};
use ferry_connect::{PeerLink, SessionOptions};
use ferry_proto::code::Code;
use serde_json::json;

use crate::exit::Failure;
use crate::output::Output;

/// Resolves the server argument, adding the default port 443.
pub fn server_address(arg: &Option<String>) -> Result<String> {
    let server = arg.as_deref().map(str::trim).unwrap_or_default();
    if server.is_empty() {
        return Err(Failure::usage(
            "no rendezvous server given: pass --server HOST:PORT or set FERRY_SERVER \
             (run one with `ferry serve`)",
        ));
    }
    let has_port = match server.rsplit_once(':') {
        // "[::1]:443" or "host:443" have a port; a bare IPv6 address has several colons.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    Ok(if has_port {
        server.to_string()
    } else if server.contains(':') && !server.starts_with('[') {
        format!("[{server}]:443")
    } else {
        format!("{server}:443")
    })
}

/// The sender's side: shows the code and the receiver's command, then
/// waits for the receiver and connects.
pub async fn sender(
    server: &str,
    code: Option<&str>,
    options: SessionOptions,
    out: &Output,
) -> Result<PeerLink> {
    let sender = Sender::start(server, code, options).await?;
    let code = sender.code().to_string();
    let command = format!("ferry receive --server {server} {code}");
    out.event("code", json!({"code": code, "command": command}));
    out.say(format!("Code: {code}"));
    out.say(format!("On the other machine, run:\n    {command}"));
    let link = sender
        .connect(|| out.say("Receiver connected; checking the code..."))
        .await?;
    Ok(link)
}

/// The receiver's side.
pub async fn receiver(server: &str, code: &Code, options: SessionOptions) -> Result<PeerLink> {
    Ok(session::receive(server, code, options).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_adds_default_port() {
        let s = |x: &str| server_address(&Some(x.to_string())).unwrap();
        assert_eq!(s("example.org"), "example.org:443");
        assert_eq!(s("example.org:8443"), "example.org:8443");
        assert_eq!(s("127.0.0.1:9"), "127.0.0.1:9");
        assert_eq!(s("[::1]:9"), "[::1]:9");
        assert_eq!(s("::1"), "[::1]:443");
        assert_eq!(s("[::1]"), "[::1]:443");
        assert!(server_address(&None).is_err());
        assert!(server_address(&Some("  ".into())).is_err());
    }
}
