//! The CLI side of a session: where the server is, and what the user sees
//! while the library (`ferry_session`) pairs and connects.

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ferry_proto::code::Code;
use ferry_session::{self as session, Sender};
use ferry_session::{MendError, MendEvent, Mender, PathEnd, PeerLink, SessionOptions, Waiting};
use ferry_transfer::TransferError;
use serde_json::json;

use crate::cli::ServerArg;
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

/// The proxy rules of `send`, `receive` and `nat`: `--proxy` (which the
/// config file's `proxy` key also sets) wins, `none` meaning no proxy;
/// without it `HTTPS_PROXY`, then `ALL_PROXY`. `NO_PROXY` applies to all.
/// Made once per process, hence `'static`; `None` when no proxy is set.
pub fn proxy_rules(arg: &Option<String>) -> Result<Option<&'static ferry_proxy::ProxyRules>> {
    proxy_rules_from(arg, &|name| std::env::var(name).ok())
}

fn proxy_rules_from(
    arg: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<&'static ferry_proxy::ProxyRules>> {
    use ferry_proxy::{Bypass, ProxyRules, Source};
    let rules = match arg.as_deref().map(str::trim) {
        Some(off) if off.eq_ignore_ascii_case("none") => {
            tracing::debug!("no proxy: --proxy none");
            return Ok(None);
        }
        Some(url) => {
            let proxy = url.parse().map_err(|e| {
                Failure::usage(format!(
                    "--proxy (or the config file's proxy key): {e}, or `none` for no proxy"
                ))
            })?;
            ProxyRules::new(proxy, Source::Flag).with_bypass(Bypass::from_env(env))
        }
        None => ProxyRules::from_env(env).map_err(|e| {
            Failure::usage(format!(
                "{e}; fix it, unset it, or pass --proxy none (or another --proxy)"
            ))
        })?,
    };
    let Some((proxy, source)) = rules.proxy() else {
        tracing::debug!("no proxy: none set (--proxy, config, HTTPS_PROXY, ALL_PROXY)");
        return Ok(None);
    };
    tracing::info!(%proxy, %source, "proxy for the rendezvous server and the relay");
    Ok(Some(Box::leak(Box::new(rules))))
}

/// The server spec the session dials: [`server_address`] of `--server`,
/// with the TLS the options ask for (`#sha256=HEX` on --server or
/// --server-sha256, --tls, --tls-ca; see `ferry_relay::tls`). None of
/// them: plain TCP, as lab and older servers speak.
pub fn server_spec(arg: &ServerArg) -> Result<String> {
    let given = arg.server.as_deref().unwrap_or_default();
    let (addr, fragment) = match given.split_once('#') {
        Some((addr, fragment)) => (addr, Some(fragment.to_string())),
        None => (given, None),
    };
    let addr = server_address(&Some(addr.to_string()))?;
    with_trust(&addr, fragment, arg)
}

/// `addr` with the trust of `fragment` (from --server or a URI) or of the
/// TLS options; two different ones are a usage error, not a guess.
fn with_trust(addr: &str, fragment: Option<String>, arg: &ServerArg) -> Result<String> {
    let mut asked: Vec<(String, &str)> = Vec::new();
    if let Some(fragment) = fragment {
        asked.push((fragment, "--server HOST:PORT#..."));
    }
    if let Some(pin) = &arg.server_sha256 {
        asked.push((format!("sha256={}", pin.trim()), "--server-sha256"));
    }
    if arg.tls {
        asked.push(("tls".into(), "--tls"));
    }
    if let Some(ca) = &arg.tls_ca {
        asked.push((format!("tls-ca={}", ca.display()), "--tls-ca"));
    }
    let spec = match asked.as_slice() {
        [] => return Ok(addr.to_string()),
        [(fragment, _)] => format!("{addr}#{fragment}"),
        [(first, a), (second, b), ..] => {
            return Err(Failure::usage(format!(
                "{a} and {b} both say how to check the server's TLS certificate ({} and {}); keep one (a pin, --tls or --tls-ca)",
                escape::line(first),
                escape::line(second)
            )));
        }
    };
    ferry_relay::ServerSpec::parse(&spec)
        .map(|spec| spec.to_string())
        .map_err(|e| Failure::usage(escape::line(&e.to_string())))
}

/// The receiver's server and code from what the user gave: a code with
/// `--server` (or `FERRY_SERVER`), or a `ferry://` URI, which names the
/// server itself. Given both a server and a URI naming another one, the
/// server the user set wins, with a warning: the URI may say `localhost`
/// or a name only the sender's network knows, and it may come from anyone.
pub fn receiver_target(arg: &ServerArg, given: &str, out: &Output) -> Result<(String, Code)> {
    let server_arg = &arg.server;
    if !crate::uri::looks_like_uri(given) {
        let server = server_spec(arg).map_err(|e| {
            if server_arg.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                return e;
            }
            Failure::usage(
                "no rendezvous server given: pass --server HOST:PORT, set FERRY_SERVER, \
                 or give the ferry://HOST:PORT/CODE URI (`ferry send --qr` shows it) \
                 instead of the code",
            )
        })?;
        let code = given.parse().map_err(|e| {
            Failure::usage(format!(
                "{:?} is not a ferry code ({e}); it looks like 7-orbit-lantern",
                escape::line(given)
            ))
        })?;
        return Ok((server, code));
    }
    let uri = crate::uri::FerryUri::parse(given).map_err(|e| Failure::usage(e.explained()))?;
    let named = uri.server.address();
    if server_arg.as_deref().is_none_or(|s| s.trim().is_empty()) {
        // The URI's pin, unless the options say how to check the server.
        let pinned = uri.pin.as_ref().map(|pin| format!("sha256={pin}"));
        let own = arg.server_sha256.is_some() || arg.tls || arg.tls_ca.is_some();
        let spec = with_trust(&named, pinned.filter(|_| !own), arg)?;
        return Ok((spec, uri.code));
    }
    let server = server_spec(arg)?;
    let addr = server
        .split_once('#')
        .map_or(server.as_str(), |(addr, _)| addr);
    let same = crate::uri::Server::parse(addr).is_ok_and(|set| set == uri.server);
    if !same {
        let message = format!(
            "the URI names the server {named}, but --server (or FERRY_SERVER) says {}; \
             using {}: drop --server (or unset FERRY_SERVER) to use the URI's",
            escape::line(&server),
            escape::line(&server)
        );
        out.event("warning", json!({"message": message}));
        out.say(format!("Warning: {message}"));
    }
    Ok((server, uri.code))
}

/// The environment variable that carries a code.
pub const CODE_VARIABLE: &str = "FERRY_CODE";

/// The most bytes read from a `--code-file` (a code is a few dozen).
const CODE_FILE_LIMIT: u64 = 4096;

/// The code given without a prompt, if any: the argument, else the first
/// line of `--code-file`, else `FERRY_CODE` (`env`, empty counts as unset).
pub fn given_code(
    argument: Option<&str>,
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<String>> {
    if let Some(code) = argument {
        return Ok(Some(code.trim().to_string()));
    }
    if let Some(file) = file {
        let mut text = String::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(CODE_FILE_LIMIT).read_to_string(&mut text))
            .map_err(|e| {
                Failure::usage(format!(
                    "cannot read the code from {}: {e}; check the --code-file path",
                    file.display()
                ))
            })?;
        let code = text.lines().next().unwrap_or_default().trim();
        if code.is_empty() {
            return Err(Failure::usage(format!(
                "{} holds no code; write the code (such as 7-orbit-lantern) on its first line",
                file.display()
            )));
        }
        return Ok(Some(code.to_string()));
    }
    Ok(env
        .map(|code| code.trim().to_string())
        .filter(|code| !code.is_empty()))
}

/// The receiver's code: as [`given_code`], else typed at a prompt when
/// stdin is a terminal. The prompt echoes: the code is not a secret the
/// user chose (it is on the sender's screen, it is good for one try and
/// one transfer), and seeing it catches a typo before it burns the code.
pub async fn receiver_code(argument: Option<&str>, file: Option<&Path>) -> Result<String> {
    let env = std::env::var(CODE_VARIABLE).ok();
    if let Some(code) = given_code(argument, file, env)? {
        return Ok(code);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "no code given, and stdin is not a terminal to ask for it: set {CODE_VARIABLE}, \
             pass --code-file FILE, or run on a terminal and type the code when asked \
             (`ferry receive CODE` works too, but shows the code to every user of this \
             computer in the process list)"
        )));
    }
    eprint!("Code (as the sender shows it, e.g. 7-orbit-lantern, or its ferry:// URI): ");
    let typed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    let code = typed.trim();
    if code.is_empty() {
        return Err(Failure::usage(
            "no code typed; run again and type the code the sender shows",
        ));
    }
    Ok(code.to_string())
}

/// The sender's side: shows the code and how to receive, then waits for
/// the receiver and connects.
pub async fn sender(
    server: &str,
    code: Option<&str>,
    options: SessionOptions,
    qr: bool,
    out: &Output,
) -> Result<PeerLink> {
    let sender = Sender::start_with(server, code, options, |w| show_waiting(out, w)).await?;
    let welcome = sender.welcome();
    if welcome.tls_offered && !welcome.tls {
        let message = "this server offers TLS on the same port, which hides the code's nameplate \
                       and the relay token from the network: add --tls (a certificate from a \
                       public CA) or --server HOST:PORT#sha256=... (a self-signed one; `ferry \
                       serve` prints it)";
        out.event("note", json!({"message": message}));
        out.say(format!("Note: {message}"));
    }
    // The URI (and QR code) carries the pin, if any: the receiver then
    // checks the same certificate without typing it.
    let uri = crate::uri::to_uri(server, sender.code());
    let code = sender.code().to_string();
    // The code is left out of the command: pasted as an argument, it would
    // sit in the receiver's process list for every local user to read.
    let command = format!("ferry receive --server {server}");
    let uri_field = uri.as_ref().ok();
    out.event(
        "code",
        json!({"code": code, "command": command, "uri": uri_field}),
    );
    out.say(format!("Code: {code}"));
    if qr {
        crate::qr::show_uri(out, uri.as_deref());
    }
    out.say(format!(
        "On the other computer, run `{command}` and type the code when asked \
         (or set {CODE_VARIABLE}, or pass --code-file FILE)."
    ));
    let link = sender
        .connect(|w| show_waiting(out, w))
        .await
        .map_err(in_flags)?;
    Ok(link)
}

/// A session error in the words of this command line, where the flags
/// explain it better than the library can.
fn in_flags(error: session::SessionError) -> anyhow::Error {
    match error {
        session::SessionError::NoPath {
            failures,
            relay_forced: true,
        } if failures.is_empty() => Failure::network(
            "--force-path relay, but the rendezvous server offers no relay (it runs with \
             --no-relay); run without --force-path",
        ),
        other => other.into(),
    }
}

/// The receiver's side.
pub async fn receiver(
    server: &str,
    code: &Code,
    options: SessionOptions,
    out: &Output,
) -> Result<PeerLink> {
    session::receive_with(server, code, options, |w| show_waiting(out, w))
        .await
        .map_err(in_flags)
}

/// Tells the user what happens while one side waits for the other: the
/// receiver has come, or the server went away and we try again.
fn show_waiting(out: &Output, waiting: Waiting) {
    match waiting {
        Waiting::Joined => {
            out.event("joined", json!({}));
            out.say("Receiver connected; checking the code...");
        }
        Waiting::ServerLost {
            error,
            attempt,
            retry_in,
        } => {
            let reason = crate::advice::signal_text(&error);
            out.event(
                "server-lost",
                json!({"try": attempt, "retry_in_secs": retry_in.as_secs_f64(), "error": reason}),
            );
            // One line at the start, then one about every 30 s.
            if attempt == 1 {
                out.say(format!(
                    "{}; trying again in {}...",
                    escape::line(&reason),
                    crate::output::short_duration(retry_in)
                ));
            } else if attempt % 6 == 0 {
                out.say(format!(
                    "Still trying to reach the server (try {attempt})..."
                ));
            }
        }
        Waiting::ServerBack { after } => {
            out.event("server-back", json!({"after_secs": after.as_secs_f64()}));
            out.say(format!(
                "Reached the server again after {}; still waiting, the code stays the same",
                crate::output::short_duration(after)
            ));
        }
        Waiting::SenderReturning { wait } => {
            out.event("sender-returning", json!({"wait_secs": wait.as_secs_f64()}));
            out.say(format!(
                "The server restarted moments ago and has no transfer under this code yet; \
                 giving the sender {} to reconnect...",
                crate::output::short_duration(wait)
            ));
        }
        _ => {}
    }
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

/// Closes the stream the transfer moved away from (the relay) in the
/// background, bounded: the transfer goes on on the new path meanwhile.
pub fn close_moved(stream: ferry_connect::PeerStream) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
    });
}

/// Reconnecting after the path broke mid-transfer (`--retries`): the
/// library's [`Mender`] decides and reconnects; this renders what it does.
pub struct Reconnect {
    mender: Mender,
}

impl Reconnect {
    /// Takes what the first link offers to find the peer again.
    pub fn new(link: &mut PeerLink, retries: u32) -> Self {
        Reconnect {
            mender: Mender::new(link, retries),
        }
    }

    /// The transfer moved from the `from` path to `link` (a direct path
    /// that came up behind the relay). Says so on the output.
    pub fn moved(&mut self, link: &PeerLink, from: ferry_connect::PathKind, out: &mut Output) {
        self.mender.moved(link);
        crate::output::announce_move(link, from, out);
        out.start_link();
    }

    /// Whether `error` is a broken path we may mend by reconnecting.
    pub fn may_mend(&self, error: &TransferError) -> bool {
        self.mender.may_mend(error)
    }

    /// Reconnects after `error` broke the path. Says so on the output.
    pub async fn mend(&mut self, error: TransferError, out: &mut Output) -> Result<PeerLink> {
        out.finish_progress();
        let on_link = out.bytes_on_link();
        let mended = self
            .mender
            .mend(&error, on_link, |event| show_mending(out, event))
            .await;
        match mended {
            Ok(link) => {
                out.start_link();
                Ok(link)
            }
            Err(MendError::GaveUp { last }) => Err(anyhow::Error::new(error).context(format!(
                "the connection broke and reconnecting failed ({last}); run the same command \
                 again with a new code: the transfer resumes from the last verified byte"
            ))),
            Err(other) => Err(anyhow::Error::new(error).context(other.to_string())),
        }
    }
}

/// What mending does, in the user's words (and as JSON events).
fn show_mending(out: &Output, event: MendEvent<'_>) {
    match event {
        MendEvent::Trying {
            attempt,
            of,
            end,
            error,
            last,
            ..
        } => {
            let relay_limit = match end {
                PathEnd::RelayByteLimit { .. } => Some("bytes"),
                PathEnd::RelayLifetime { .. } => Some("lifetime"),
                _ => None,
            };
            out.event(
                "reconnect",
                json!({
                    "try": attempt,
                    "of": of,
                    "error": error.to_string(),
                    "last": last.unwrap_or_default(),
                    "relay_limit": relay_limit,
                }),
            );
            if attempt == 1 {
                let why = relay_limit_why(end).unwrap_or_else(|| describe_break(error));
                out.say(format!(
                    "The connection ended ({}); reconnecting, try 1 of {of}...",
                    escape::line(&why)
                ));
            } else {
                out.say(format!(
                    "Still reconnecting, try {attempt} of {of} (last try: {})...",
                    escape::line(last.unwrap_or_default())
                ));
            }
        }
        MendEvent::Reconnected { after, tries } => {
            out.event(
                "reconnected",
                json!({"after_secs": after.as_secs_f64(), "tries": tries}),
            );
            out.say(format!(
                "Reconnected after {}; resuming from the last verified byte",
                crate::output::short_duration(after)
            ));
        }
        _ => {}
    }
}

/// Which of the relay's limits ended the pipe, named by the option its
/// operator sets it with.
fn relay_limit_why(end: PathEnd) -> Option<String> {
    match end {
        PathEnd::RelayByteLimit { max_bytes } => Some(format!(
            "the relay ends each pair after {} (its operator's --relay-max-bytes)",
            indicatif::HumanBytes(max_bytes)
        )),
        PathEnd::RelayLifetime { max } => Some(format!(
            "the relay ends each pair after {} (its operator's --relay-max-lifetime)",
            crate::output::short_duration(max)
        )),
        _ => None,
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
    fn the_server_spec_carries_one_way_to_check_tls_or_none() {
        let arg = |server: &str| ServerArg {
            server: Some(server.to_string()),
            proxy: None,
            server_sha256: None,
            tls: false,
            tls_ca: None,
        };
        let pin = "ab".repeat(32);
        assert_eq!(server_spec(&arg("example.org")).unwrap(), "example.org:443");
        assert_eq!(
            server_spec(&arg(&format!("example.org#sha256={}", pin.to_uppercase()))).unwrap(),
            format!("example.org:443#sha256={pin}")
        );
        let tls = ServerArg {
            tls: true,
            ..arg("[::1]:8443")
        };
        assert_eq!(server_spec(&tls).unwrap(), "[::1]:8443#tls");
        let ca = ServerArg {
            tls_ca: Some("/etc/ca.pem".into()),
            ..arg("h:1")
        };
        assert_eq!(server_spec(&ca).unwrap(), "h:1#tls-ca=/etc/ca.pem");
        // Two ways at once, or a bad pin: usage errors that say which.
        let both = ServerArg {
            server_sha256: Some(pin.clone()),
            ..tls.clone()
        };
        let error = server_spec(&both).unwrap_err().to_string();
        assert!(error.contains("--server-sha256 and --tls"), "{error}");
        let bad = ServerArg {
            server_sha256: Some("12".into()),
            ..arg("h:1")
        };
        let error = server_spec(&bad).unwrap_err().to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }

    #[test]
    fn code_comes_from_argument_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("code");
        std::fs::write(&file, "  12-orbit-lantern \nignored\n").unwrap();
        let env = || Some("9-a-b".to_string());
        let given = |a, f, e| given_code(a, f, e).unwrap();
        assert_eq!(
            given(Some("1-x-y"), Some(&file), env()).as_deref(),
            Some("1-x-y")
        );
        assert_eq!(
            given(None, Some(&file), env()).as_deref(),
            Some("12-orbit-lantern")
        );
        assert_eq!(given(None, None, env()).as_deref(), Some("9-a-b"));
        assert_eq!(given(None, None, Some(" ".into())), None);
        assert_eq!(given(None, None, None), None);
        std::fs::write(&file, "\n").unwrap();
        let empty = given_code(None, Some(&file), None).unwrap_err().to_string();
        assert!(empty.contains("holds no code"), "{empty}");
        let missing = given_code(None, Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(missing.to_string().contains("--code-file"), "{missing}");
    }

    #[test]
    fn relay_limits_are_named_by_the_operators_options() {
        let bytes = relay_limit_why(PathEnd::RelayByteLimit { max_bytes: 8 << 20 }).unwrap();
        assert_eq!(
            bytes,
            "the relay ends each pair after 8.00 MiB (its operator's --relay-max-bytes)"
        );
        let lifetime = relay_limit_why(PathEnd::RelayLifetime {
            max: Duration::from_secs(2),
        })
        .unwrap();
        assert!(
            lifetime.ends_with("(its operator's --relay-max-lifetime)"),
            "{lifetime}"
        );
        assert_eq!(relay_limit_why(PathEnd::Broken), None);
    }

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

    #[test]
    fn the_proxy_flag_wins_over_the_environment_and_none_turns_it_off() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://env-proxy:3128".to_string()),
            "ALL_PROXY" => Some("socks5h://all-proxy:1080".to_string()),
            "NO_PROXY" => Some("intranet.example".to_string()),
            _ => None,
        };
        let chosen = |arg: Option<&str>| {
            proxy_rules_from(&arg.map(str::to_string), &env)
                .unwrap()
                .and_then(|rules| rules.select("server.example").map(|p| p.to_string()))
        };
        assert_eq!(chosen(None).as_deref(), Some("http://env-proxy:3128"));
        assert_eq!(
            chosen(Some("socks5h://flag-proxy:1080")).as_deref(),
            Some("socks5h://flag-proxy:1080")
        );
        assert_eq!(chosen(Some("none")), None);
        assert_eq!(chosen(Some(" NONE ")), None);
        // NO_PROXY holds for a proxy from the flag too.
        let rules = proxy_rules_from(&Some("http://p:1".into()), &env)
            .unwrap()
            .unwrap();
        assert_eq!(rules.select("a.intranet.example"), None);
        assert!(proxy_rules_from(&None, &|_| None).unwrap().is_none());
    }

    #[test]
    fn a_bad_proxy_is_a_usage_error_that_names_where_it_came_from() {
        let err = proxy_rules_from(&Some("ftp://p:21".into()), &|_| None).unwrap_err();
        let (code, message) = crate::exit::classify(&err);
        assert_eq!(code, 2);
        assert!(
            message.contains("--proxy") && message.contains("`none`"),
            "{message}"
        );
        let env = |name: &str| (name == "ALL_PROXY").then(|| "socks4://p:1".to_string());
        let err = proxy_rules_from(&None, &env).unwrap_err();
        let (code, message) = crate::exit::classify(&err);
        assert_eq!(code, 2);
        assert!(
            message.starts_with("ALL_PROXY is not a proxy URL"),
            "{message}"
        );
        assert!(message.contains("--proxy none"), "{message}");
    }
}
