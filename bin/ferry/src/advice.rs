//! What the user can do about an error, in the words of this command line.
//!
//! The libraries say what happened ("a.txt already exists"); which option
//! fixes it is the binary's to say, so the advice lives here and names the
//! flags of `ferry`. [`for_error`] finds it from the typed errors in an
//! error's chain; [`exit::classify`](crate::exit::classify) appends it to
//! the one line the user sees.

use ferry_connect::{PathFailure, PathKind};
use ferry_proxy::ProxyError;
use ferry_relay::Refusal;
use ferry_rendezvous::SignalError;
use ferry_session::SessionError;
use ferry_transfer::{ErrorCode, TransferError};

/// An existing file the receiver would write over.
const EXISTS: &str = "pass --overwrite to replace it or choose another directory with --out";
/// A `.git` folder in the offer.
const GIT_DIR: &str = "pass --allow-git to receive it anyway";

/// What to do about `err`, if one of its causes says.
pub fn for_error(err: &anyhow::Error) -> Option<&'static str> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<TransferError>() {
            return for_transfer(e);
        }
        if let Some(e) = cause.downcast_ref::<SessionError>() {
            return for_session(e);
        }
        if let Some(e) = cause.downcast_ref::<ProxyError>() {
            return Some(for_proxy(e));
        }
        cause.downcast_ref::<SignalError>().and_then(for_signal)
    })
}

/// `error`'s text with what to do about it, if anything: how errors of
/// the rendezvous client are shown (also while trying again).
pub fn signal_text(error: &SignalError) -> String {
    match for_signal(error) {
        Some(advice) => format!("{error}; {advice}"),
        None => error.to_string(),
    }
}

/// This side's transfer errors, and the receiver's refusals as the sender
/// is told them (by code: the receiver's words come from a library that
/// knows no flags).
fn for_transfer(error: &TransferError) -> Option<&'static str> {
    match error {
        TransferError::Exists { .. } => Some(EXISTS),
        TransferError::GitDir { .. } => Some(GIT_DIR),
        TransferError::PeerError {
            code: Some(code), ..
        } => match code {
            ErrorCode::Exists => Some(
                "the receiver can pass --overwrite to replace it or choose another directory \
                 with --out",
            ),
            ErrorCode::GitDir => Some("the receiver can pass --allow-git to receive it anyway"),
            _ => None,
        },
        _ => None,
    }
}

fn for_session(error: &SessionError) -> Option<&'static str> {
    match error {
        SessionError::Signal(e) => for_signal(e),
        SessionError::Proxy(e) => Some(for_proxy(e)),
        SessionError::NoPath { failures, .. } => {
            let foreign_token = failures.iter().any(|(kind, why)| {
                matches!((kind, why), (PathKind::Relay, PathFailure::Failed(text))
                    if Refusal::in_text(text) == Some(Refusal::UnknownToken))
            });
            foreign_token.then_some(
                "if the relay keeps refusing the token, its operator must give `ferry serve` \
                 and `ferry relay` the same --relay-secret-file",
            )
        }
        _ => None,
    }
}

/// What to do when the proxy did not get us through.
pub fn for_proxy(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::Resolve { .. } | ProxyError::Unreachable { .. } => {
            "check the proxy's address in --proxy, the config file (`ferry config`), \
             HTTPS_PROXY or ALL_PROXY; --proxy none goes direct"
        }
        ProxyError::Auth { .. } => {
            "give the proxy's user name and password in the URL (http://USER:PASS@HOST:PORT, \
             socks5h://USER:PASS@HOST:PORT; %-escape special characters)"
        }
        ProxyError::Refused { .. } => {
            "the proxy's rules do not allow that port: many allow only 443, so try the server \
             on port 443, or ask the proxy's operator"
        }
        ProxyError::TargetResolve { .. } => {
            "use socks5h:// so that the proxy resolves the name, or check --server"
        }
        ProxyError::Protocol { .. } => {
            "check the scheme: http:// for an HTTP proxy (CONNECT), socks5h:// for SOCKS5"
        }
        _ => {
            "is the server running, on that port? check --server; `ferry nat --proxy URL` \
             shows what gets through"
        }
    }
}

fn for_signal(error: &SignalError) -> Option<&'static str> {
    match error {
        // The proxy worked; the server did not answer through it.
        SignalError::Connect { reason, .. } if reason.contains(" proxy ") => Some(
            "is `ferry serve` running there, on that port? check --server; a proxy may allow \
             only port 443; --proxy none goes direct",
        ),
        SignalError::Resolve { .. } => Some(
            "the name did not resolve: check it in --server, FERRY_SERVER or the config file \
             (`ferry config`), and this computer's DNS",
        ),
        SignalError::Connect { reason, .. } if reason.to_lowercase().contains("refused") => {
            Some("is `ferry serve` running there, on that port? set --server or FERRY_SERVER")
        }
        SignalError::Connect { .. } => Some(
            "nothing answered: a firewall may let only some ports out; try the server on port \
             443, and `ferry nat --server HOST:PORT` shows what this network lets through",
        ),
        SignalError::RelayResolve { .. } => {
            Some("check this computer's DNS, or ask the server's operator to fix its --relay-url")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn shown(err: anyhow::Error) -> String {
        crate::exit::classify(&err).1
    }

    #[test]
    fn local_refusals_name_the_receive_flags() {
        let exists = TransferError::Exists {
            path: "/tmp/in/a.txt".into(),
        };
        assert_eq!(
            shown(anyhow::Error::new(exists).context("the transfer failed")),
            "the transfer failed: /tmp/in/a.txt already exists; pass --overwrite to replace \
             it or choose another directory with --out"
        );
        let git = TransferError::GitDir {
            path: "repo/.git".into(),
        };
        assert_eq!(
            shown(anyhow::Error::new(git).context("cannot take the offer")),
            "cannot take the offer: refusing \"repo/.git\": it is inside a .git folder, whose \
             hooks and settings can run commands on this computer; pass --allow-git to \
             receive it anyway"
        );
    }

    #[test]
    fn the_sender_learns_what_the_receiver_can_do_from_the_code() {
        let told = |code| {
            shown(
                anyhow::Error::new(TransferError::PeerError {
                    message: "refusing \"repo/.git\": it is inside a .git folder".into(),
                    code,
                })
                .context("the transfer failed"),
            )
        };
        assert!(
            told(Some(ErrorCode::GitDir))
                .ends_with("; the receiver can pass --allow-git to receive it anyway"),
            "{}",
            told(Some(ErrorCode::GitDir))
        );
        assert!(told(Some(ErrorCode::Exists)).contains("the receiver can pass --overwrite"));
        // A receiver of another version: its words alone.
        assert_eq!(for_transfer(&peer(None)), None);
        assert_eq!(for_transfer(&peer(Some(ErrorCode::Unknown))), None);
    }

    fn peer(code: Option<ErrorCode>) -> TransferError {
        TransferError::PeerError {
            message: "x".into(),
            code,
        }
    }

    #[test]
    fn rendezvous_errors_name_the_server_option() {
        let resolve = SignalError::Resolve {
            server: "nowhere.invalid:443".into(),
            reason: "no such host".into(),
        };
        assert_eq!(
            signal_text(&resolve),
            "could not resolve the rendezvous server nowhere.invalid:443: no such host; \
             the name did not resolve: check it in --server, FERRY_SERVER or the config file \
             (`ferry config`), and this computer's DNS"
        );
        let connect = SignalError::Connect {
            server: "127.0.0.1:9".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            shown(SessionError::Signal(connect.clone()).into()),
            "could not reach the rendezvous server at 127.0.0.1:9: connection refused; is \
             `ferry serve` running there, on that port? set --server or FERRY_SERVER"
        );
        let silent = SignalError::Connect {
            server: "192.0.2.1:8443".into(),
            reason: "timed out".into(),
        };
        assert!(
            signal_text(&silent).ends_with(
                "nothing answered: a firewall may let only some ports out; try the server on \
                 port 443, and `ferry nat --server HOST:PORT` shows what this network lets \
                 through"
            ),
            "{}",
            signal_text(&silent)
        );
        assert_eq!(shown(connect.clone().into()), signal_text(&connect));
        let relay = SignalError::RelayResolve {
            server: "s:443".into(),
            relay: "r.invalid:443".into(),
            reason: "no such host".into(),
        };
        assert!(signal_text(&relay).ends_with("fix its --relay-url"));
    }

    #[test]
    fn a_relay_refusing_our_token_names_the_secret_file() {
        let refused = format!(
            "the relay could not join us with the peer: the relay at 127.0.0.2:9 refused: {}",
            Refusal::UnknownToken.message()
        );
        let no_path = |text: &str| SessionError::NoPath {
            failures: vec![(PathKind::Relay, PathFailure::Failed(text.into()))],
            relay_forced: true,
        };
        let message = shown(no_path(&refused).into());
        assert!(
            message.contains("unknown relay token") && message.contains("--relay-secret-file"),
            "{message}"
        );
        let expired = refused.replace(Refusal::UnknownToken.message(), Refusal::Expired.message());
        assert_eq!(for_session(&no_path(&expired)), None);
    }

    #[test]
    fn errors_without_advice_are_shown_as_they_are() {
        let err = anyhow::anyhow!("disk on fire").context("the transfer failed");
        assert_eq!(shown(err), "the transfer failed: disk on fire");
        let none: anyhow::Result<()> = Err(TransferError::PeerClosed.into());
        assert_eq!(for_error(&none.context("x").unwrap_err()), None);
    }

    #[test]
    fn proxy_failures_say_what_to_try() {
        let proxy: ferry_proxy::ProxyUrl = "http://u:pw@proxy.example:3128".parse().unwrap();
        let target: ferry_proxy::Target = "server.example:8443".parse().unwrap();
        let refused = ferry_proxy::ProxyError::Refused {
            proxy: proxy.clone(),
            target: target.clone(),
            reason: "403 Forbidden".into(),
        };
        let shown = shown(SessionError::from(refused).into());
        assert_eq!(
            shown,
            "the HTTP proxy http://***@proxy.example:3128 does not allow connections to \
             server.example:8443: 403 Forbidden; the proxy's rules do not allow that port: \
             many allow only 443, so try the server on port 443, or ask the proxy's operator"
        );
        let unreachable = ferry_proxy::ProxyError::Unreachable {
            proxy,
            reason: "connection refused".into(),
        };
        assert!(for_proxy(&unreachable).contains("--proxy none"));
        assert_eq!(
            crate::exit::classify(&SessionError::from(unreachable.clone()).into()).0,
            4
        );
        // The server did not answer through a working proxy.
        let through = SignalError::Connect {
            server: "server.example:8443".into(),
            reason:
                "the HTTP proxy http://proxy.example:3128 could not reach server.example:8443: \
                     502 Bad Gateway"
                    .into(),
        };
        assert!(signal_text(&through).contains("a proxy may allow only port 443"));
    }
}
