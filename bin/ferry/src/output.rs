//! What the user sees: human lines, an indicatif progress bar on a TTY, or
//! one JSON object per line (`--json`) for scripts.
//!
//! JSON events (field `event`):
//! - `code`: `{code, command, uri}` (sender: the code, and the receiver's command
//!   without it: the receiver types the code, or sets `FERRY_CODE`; `uri` is
//!   `ferry://HOST:PORT/CODE`, which `ferry receive` takes in place of the
//!   code and the server, or null when the server is no URI host)
//! - `warning`: `{message}` (receiver: `--server` overrides the URI's server)
//! - `offer`: `{kind: "files", files, dirs, bytes, names, top, flagged}`:
//!   `names` the first 20 paths; `top` every top-level entry as
//!   `{name, kind: "file"|"folder", files, bytes}`; `flagged` every hidden
//!   path (a component starting with `.`; the shortest such prefix, a
//!   folder ending in `/`) and executable file as `{path, hidden, executable}`
//! - `path`: `{path, description, local, remote, connect_secs, lost: [{path, why}], relay_reason, found_by, relay_limits}`:
//!   how the peers connected; `path` is `lan`, `tcp`, `quic`,
//!   `tcp-simultaneous-open` or `relay`; `lost` lists the paths that
//!   failed; `relay_reason` (relay only, else null) says why no direct
//!   path did. Again after each reconnect.
//! - `reconnect`: `{try, of, error}`: the path broke; reconnecting
//! - `reconnected`: `{after_secs, tries}`: a new path is up; the transfer resumes
//! - `resume`: `{path, offset}` for each file resumed from a `.ferry-part`
//! - `progress`: `{bytes_done, bytes_total}`
//! - `text`: `{text}` (receiver of a text message)
//! - `moved`: `{from, path, description, local, remote, after_secs, bytes_before, found_by}`:
//!   the transfer moved from the relay (`from`) to a direct path that came
//!   up later, at a chunk boundary; `bytes_before` went over `from`
//! - `done`: `{files, bytes_total, bytes_transferred, bytes_resumed, secs, rate_bytes_per_sec, path, moves}`:
//!   `path` the last path; `moves` the `moved` events, in order
//! - `error`: `{message, exit_code}`
//!
//! Strings that came from the peer or the server (names, text, reasons,
//! error messages) are escaped before they are shown (see
//! [`crate::escape`]): in human output, controls and bidi characters show
//! as `\x1b` or `\u{202e}`; in JSON the string keeps its exact value but
//! DEL, C1 controls and bidi characters are written as `\u009b`-style
//! escapes (serde_json escapes C0 itself), so no raw control byte reaches
//! the terminal either way.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::escape;
use ferry_connect::PathFailure;
use ferry_session::RelayReason;

/// The output sink for one command.
pub struct Output {
    json: bool,
    tty: bool,
    bar: Option<ProgressBar>,
    last_plain: Option<Instant>,
    /// Bytes done as the last progress said.
    done: u64,
    /// Bytes done at the first progress on the current link (the resumed
    /// offset after a reconnect), once it came.
    link_base: Option<u64>,
    /// The moves between paths so far, as `done` lists them.
    moves: Vec<Value>,
    /// Bytes moved on the paths the transfer moved away from.
    carried: u64,
    /// When the first progress came.
    first_progress: Option<Instant>,
}

impl Output {
    /// `json`: machine output; otherwise human output, animated only when
    /// stdout is a terminal.
    pub fn new(json: bool) -> Self {
        Output {
            json,
            tty: std::io::stdout().is_terminal(),
            bar: None,
            last_plain: None,
            done: 0,
            link_base: None,
            moves: Vec::new(),
            carried: 0,
            first_progress: None,
        }
    }

    /// Whether `--json` is on.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A human line (suppressed in JSON mode). Controls other than newline
    /// and tab are escaped here as a last guard; remote strings that must
    /// stay on one line (names, reasons) go through [`escape::line`] first.
    pub fn say(&self, line: impl AsRef<str>) {
        if self.json {
            return;
        }
        let line = escape::text(line.as_ref());
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    /// A JSON event (suppressed in human mode).
    pub fn event(&self, name: &str, mut fields: Value) {
        if !self.json {
            return;
        }
        if let Value::Object(map) = &mut fields {
            map.insert("event".into(), Value::String(name.into()));
        }
        let line = escape::json_line(&fields);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Progress of the whole transfer.
    pub fn progress(&mut self, done: u64, total: u64) {
        self.done = done;
        self.link_base.get_or_insert(done);
        self.first_progress.get_or_insert_with(Instant::now);
        if self.json {
            self.event(
                "progress",
                json!({"bytes_done": done, "bytes_total": total}),
            );
            return;
        }
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::with_draw_target(
                    Some(total),
                    ProgressDrawTarget::stdout_with_hz(10),
                );
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            });
            bar.set_length(total);
            bar.set_position(done);
        } else {
            // Not a terminal: a plain line every few seconds, no animation.
            let now = Instant::now();
            let due = self
                .last_plain
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5));
            if due && done > 0 && done < total {
                self.last_plain = Some(now);
                self.say(format!(
                    "progress: {} of {} ({}%)",
                    HumanBytes(done),
                    HumanBytes(total),
                    done * 100 / total
                ));
            }
        }
    }

    /// Bytes moved on the current link: since its first progress (the
    /// offset it resumed from), as the last progress said.
    pub fn bytes_on_link(&self) -> u64 {
        self.done
            .saturating_sub(self.link_base.unwrap_or(self.done))
    }

    /// A new link carries the transfer from here: [`bytes_on_link`]
    /// counts from its first progress.
    ///
    /// [`bytes_on_link`]: Self::bytes_on_link
    pub fn start_link(&mut self) {
        self.link_base = None;
    }

    /// Ends the progress bar, if any.
    pub fn finish_progress(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Reports a fatal error (stderr for humans, an `error` event for
    /// scripts). The message may embed remote strings (a peer's reason, a
    /// path it named): it is escaped to one line.
    pub fn error(&mut self, message: &str, exit_code: i32) {
        self.finish_progress();
        if self.json {
            self.event("error", json!({"message": message, "exit_code": exit_code}));
        } else {
            eprintln!("error: {}", escape::line(message));
        }
    }
}

/// "12.3 MiB/s" from bytes and seconds.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", HumanBytes((bytes as f64 / secs) as u64))
}

/// Tells how the peers connected.
pub fn announce_path(link: &ferry_session::PeerLink, out: &Output) {
    let lost: Vec<_> = link
        .lost
        .iter()
        .map(|(kind, why)| json!({"path": kind.code(), "why": failure_json(why)}))
        .collect();
    out.event(
        "path",
        json!({
            "path": link.path.code(),
            "description": link.path.to_string(),
            "local": link.local.to_string(),
            "remote": link.remote.to_string(),
            "connect_secs": link.connect_time.as_secs_f64(),
            "lost": lost,
            "relay_reason": link.relay_reason.as_ref().map(relay_reason),
            "found_by": link.found_by.map(found_by_json),
            "relay_limits": link.relay_limits.map(|l| json!({
                "max_bytes": l.max_bytes,
                "max_secs": l.max_lifetime.map(|d| d.as_secs()),
            })),
        }),
    );
    match &link.relay_reason {
        Some(why) => out.say(format!(
            "Connected: relay via {} ({}), in {}; the relay sees only encrypted bytes",
            link.remote,
            match why {
                RelayReason::Forced => relay_reason(why),
                _ => format!("no direct path: {}", escape::line(&relay_reason(why))),
            },
            short_duration(link.connect_time)
        )),
        None => out.say(format!(
            "Connected: {}, {} ⇄ {}, in {}{}",
            link.path,
            link.local,
            link.remote,
            short_duration(link.connect_time),
            match link.found_by {
                Some(how) => format!(" (found by {how})"),
                None => String::new(),
            }
        )),
    }
    for (kind, why) in &link.lost {
        tracing::info!("{kind} lost: {why}");
    }
}

/// Tells that the transfer moved from the `from` path (the relay) to
/// `link`, a direct path that came up later, and notes it for `done`.
pub fn announce_move(
    link: &ferry_session::PeerLink,
    from: ferry_connect::PathKind,
    out: &mut Output,
) {
    let after = link.connect_time;
    let carried = out.bytes_on_link();
    out.carried += carried;
    let moved = json!({
        "from": from.code(),
        "path": link.path.code(),
        "description": link.path.to_string(),
        "local": link.local.to_string(),
        "remote": link.remote.to_string(),
        "after_secs": after.as_secs_f64(),
        "bytes_before": carried,
        "found_by": link.found_by.map(found_by_json),
    });
    out.event("moved", moved.clone());
    out.moves.push(moved);
    out.say(format!(
        "Moved to {}, {} ⇄ {}, after {} on the {from}{}; {} went over the {from}, the rest goes \
         direct",
        link.path,
        link.local,
        link.remote,
        short_duration(after),
        match link.found_by {
            Some(how) => format!(" (found by {how})"),
            None => String::new(),
        },
        HumanBytes(carried),
    ));
}

/// How a direct path was found, for JSON: `method` (`punch`, `spray`,
/// `port-mapping`); for spraying, `hard_here`, `probes` (null on the side
/// that sprayed from many sockets) and `predicted`; for a port mapping,
/// `side` (`ours`: the peer connected to the port our gateway mapped, with
/// its `protocol`; `peer`: we connected to the peer's).
fn found_by_json(how: ferry_session::FoundBy) -> serde_json::Value {
    match how {
        ferry_session::FoundBy::Spray {
            hard_here,
            probes,
            predicted,
        } => json!({
            "method": how.code(),
            "hard_here": hard_here,
            "probes": probes,
            "predicted": predicted,
        }),
        ferry_session::FoundBy::PeerPortMapping => json!({"method": how.code(), "side": "peer"}),
        ferry_session::FoundBy::OwnPortMapping { protocol } => {
            json!({"method": how.code(), "side": "ours", "protocol": protocol})
        }
        _ => json!({ "method": how.code() }),
    }
}

/// A path failure for JSON: the exact text (the JSON writer escapes what
/// must be), where `Display` escapes for a terminal.
fn failure_json(why: &PathFailure) -> String {
    match why {
        PathFailure::Failed(text) => text.clone(),
        PathFailure::AtPeer(text) => format!("the receiver: {text}"),
        PathFailure::Abandoned(text) => format!("abandoned: {text}"),
        other => other.to_string(),
    }
}

/// Why the relay carries the transfer, in the words of this command line.
fn relay_reason(why: &RelayReason) -> String {
    match why {
        RelayReason::Forced => "--force-path relay".into(),
        other => other.to_string(),
    }
}

/// The closing summary of a file transfer.
pub fn announce_done(
    report: &ferry_transfer::Report,
    path: ferry_connect::PathKind,
    verb: &str,
    out: &mut Output,
) {
    out.finish_progress();
    // Bytes that went over a path the transfer moved away from count as
    // moved this time, not as resumed, and the time as the whole run's.
    let mut report = report.clone();
    if !out.moves.is_empty() {
        let carried = out.carried.min(report.bytes_resumed);
        report.bytes_resumed -= carried;
        report.bytes_transferred += carried;
        if let Some(first) = out.first_progress {
            report.elapsed = report.elapsed.max(first.elapsed());
        }
    }
    let secs = report.elapsed.as_secs_f64();
    out.event(
        "done",
        json!({
            "kind": "files",
            "files": report.files,
            "bytes_total": report.bytes_total,
            "bytes_transferred": report.bytes_transferred,
            "bytes_resumed": report.bytes_resumed,
            "secs": secs,
            "rate_bytes_per_sec": (report.bytes_transferred as f64 / secs.max(1e-3)) as u64,
            "path": path.code(),
            "moves": out.moves,
        }),
    );
    let path = match out.moves.first().and_then(|m| m["from"].as_str()) {
        Some(from) => format!("{from}, then {path}"),
        None => path.to_string(),
    };
    let resumed = if report.bytes_resumed > 0 {
        format!(
            " (resumed: {} were already there)",
            HumanBytes(report.bytes_resumed)
        )
    } else {
        String::new()
    };
    out.say(format!(
        "{verb} {} file{}, {}{resumed} over {path} in {:.1} s at {}; all verified (BLAKE3).",
        report.files,
        if report.files == 1 { "" } else { "s" },
        HumanBytes(report.bytes_total),
        secs,
        rate(report.bytes_transferred, report.elapsed),
    ));
}

/// "0.21 s", or "4 ms" below a tenth of a second.
pub fn short_duration(d: Duration) -> String {
    if d < Duration::from_millis(100) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
