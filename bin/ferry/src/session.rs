//! The CLI side of a session: where the server is, and what the user sees
//! while the library (`ferry_connect::session`) pairs and connects.

use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_connect::session::{self, Rejoin, Sender};
use ferry_connect::{PeerLink, SessionOptions};
use ferry_proto::code::Code;
use ferry_transfer::TransferError;
use serde_json::json;

use crate::escape;
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

/// Runs `work` (a transfer over the peer stream) unless the user presses
/// Ctrl-C first: then `None`, and the caller closes the stream with
/// [`interrupted`].
pub async fn unless_interrupted<T>(work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        result = work => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    }
}

/// Closes `stream` gracefully after Ctrl-C (TLS close_notify, or the end
/// of the QUIC stream), so the peer sees a deliberate end and does not try
/// to reconnect; returns the "interrupted" error.
pub async fn interrupted(mut stream: ferry_connect::PeerStream, receiving: bool) -> anyhow::Error {
    if receiving {
        ferry_transfer::cancel_receiving(&mut stream, "the receiver stopped (interrupted)").await;
    }
    // Bounded: the user is waiting for the prompt.
    let _ = tokio::time::timeout(Duration::from_millis(1500), stream.close()).await;
    Failure::interrupted()
}

/// Closes `stream` gracefully, then fails with `error`: what we last wrote
/// (an error frame telling the peer why) reaches it before we exit, also
/// on QUIC, whose packets in flight die with the process. Without it the
/// peer would take the silence for a broken path and try to reconnect.
pub async fn fail_closing<T>(stream: ferry_connect::PeerStream, error: anyhow::Error) -> Result<T> {
    stream.close().await;
    Err(error)
}

/// The longest one break may take to mend, all tries included.
const RECONNECT_BUDGET: Duration = Duration::from_secs(120);
/// The most breaks one transfer may survive.
const MAX_BREAKS: u32 = 20;

/// Reconnecting after the path broke mid-transfer (`--retries`).
pub struct Reconnect {
    rejoin: Option<Rejoin>,
    retries: u32,
    breaks: u32,
}

impl Reconnect {
    /// Takes what the first link offers to find the peer again.
    pub fn new(link: &mut PeerLink, retries: u32) -> Self {
        Reconnect {
            rejoin: link.rejoin.take(),
            retries,
            breaks: 0,
        }
    }

    /// Whether `error` is a broken path we may mend by reconnecting: a
    /// reset, an end without TLS close_notify, a dead QUIC connection, a
    /// stall. Not a deliberate end (the peer closed its stream cleanly, as
    /// after Ctrl-C), a refusal, a verification failure or a local problem.
    pub fn may_mend(&self, error: &TransferError) -> bool {
        let broken = matches!(error, TransferError::Stream(_) | TransferError::Timeout(_));
        broken && self.retries > 0 && self.rejoin.is_some() && self.breaks < MAX_BREAKS
    }

    /// Reconnects after `error` broke the path: up to `retries` tries with
    /// growing pauses, within [`RECONNECT_BUDGET`]. Says so on the output.
    pub async fn mend(&mut self, error: TransferError, out: &mut Output) -> Result<PeerLink> {
        let Some(rejoin) = self.rejoin.as_mut() else {
            return Err(anyhow::anyhow!("cannot reconnect: nothing to rejoin"));
        };
        self.breaks += 1;
        out.finish_progress();
        let broke = Instant::now();
        let mut last = String::new();
        for attempt in 1..=self.retries {
            let pause = Duration::from_millis(500 << (attempt - 1).min(4));
            if broke.elapsed() + pause > RECONNECT_BUDGET {
                break;
            }
            out.event(
                "reconnect",
                json!({"try": attempt, "of": self.retries, "error": error.to_string(), "last": last}),
            );
            if attempt == 1 {
                out.say(format!(
                    "The connection broke ({}); reconnecting, try 1 of {}...",
                    escape::line(&describe_break(&error)),
                    self.retries
                ));
            } else {
                out.say(format!(
                    "Still reconnecting, try {attempt} of {} (last try: {})...",
                    self.retries,
                    escape::line(&last)
                ));
            }
            tokio::time::sleep(pause).await;
            let remaining = RECONNECT_BUDGET.saturating_sub(broke.elapsed());
            match tokio::time::timeout(remaining, rejoin.reconnect()).await {
                Ok(Ok(link)) => {
                    let after = broke.elapsed();
                    out.event(
                        "reconnected",
                        json!({"after_secs": after.as_secs_f64(), "tries": attempt}),
                    );
                    out.say(format!(
                        "Reconnected after {}; resuming from the last verified byte",
                        crate::output::short_duration(after)
                    ));
                    return Ok(link);
                }
                Ok(Err(why)) => {
                    tracing::info!(attempt, error = %why, "reconnecting failed");
                    last = why.to_string();
                }
                Err(_) => {
                    last = "out of time".into();
                    break;
                }
            }
        }
        Err(anyhow::Error::new(error).context(format!(
            "the connection broke and reconnecting failed ({last}); run the same command \
             again with a new code: the transfer resumes from the last verified byte"
        )))
    }
}

/// A short account of how a path broke, for people.
fn describe_break(error: &TransferError) -> String {
    use std::io::ErrorKind as K;
    match error {
        TransferError::Stream(io) => match io.kind() {
            K::UnexpectedEof => "the connection ended without a goodbye".into(),
            K::ConnectionReset | K::ConnectionAborted => "the connection was reset".into(),
            K::BrokenPipe => "the connection was closed under us".into(),
            K::TimedOut => "the peer stopped answering".into(),
            _ => io.to_string(),
        },
        other => other.to_string(),
    }
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
