//! `ferry send`.

use anyhow::{Context, Result};
use ferry_session::Upgrade;
use ferry_transfer::{Event, SendOutcome, Source, TransferError};
use indicatif::HumanBytes;
use serde_json::json;

use crate::cli::SendArgs;
use crate::escape;
use crate::exit::Failure;
use crate::output::{self, Output};
use crate::session::{self, Reconnect};
use ferry_limits::Throttled;

/// Runs `ferry send`.
pub async fn run(args: SendArgs, out: &mut Output) -> Result<()> {
    let server = session::server_spec(&args.server)?;
    let options = ferry_session::SessionOptions {
        proxy: session::proxy_rules(&args.server.proxy)?,
        ..args.path.options()
    };
    let source = match args.text {
        Some(text) => Source::Text(text),
        None => ferry_transfer::scan(&args.paths).context("cannot send")?,
    };
    match &source {
        Source::Text(text) => out.say(format!("Sending a text message ({} bytes)", text.len())),
        Source::Files { manifest, .. } => out.say(format!(
            "Sending {} file{} and {} folder{}, {}",
            manifest.file_count(),
            plural(manifest.file_count()),
            manifest.dir_count(),
            plural(manifest.dir_count()),
            HumanBytes(manifest.total_bytes())
        )),
    }

    let code = session::given_code(
        args.code.as_deref(),
        args.code_file.as_deref(),
        std::env::var(session::CODE_VARIABLE).ok(),
    )?;
    let mut link = session::sender(&server, code.as_deref(), options, args.qr, out).await?;
    output::announce_path(&link, out);
    // Relay first with direct attempts still on: the server hears the
    // path once the transfer moved or ended.
    let report = link.report.take();
    let mut mending = Reconnect::new(&mut link, args.path.retries);
    let (outcome, path) = loop {
        let path = link.path;
        let mut stream = link.stream;
        // A direct path that comes up behind the relay: the transfer moves
        // onto it at the next chunk boundary.
        let mut upgrade = link.upgrade;
        let events = |event| show_event(out, event);
        let move_when = async {
            match upgrade.as_mut() {
                Some(upgrade) => upgrade.arrived().await,
                None => std::future::pending().await,
            }
        };
        let transfer = async {
            match args.limit_rate {
                Some(rate) => {
                    let throttled = Throttled::new(&mut stream, rate);
                    ferry_transfer::send_moving(throttled, source.clone(), events, move_when).await
                }
                None => {
                    ferry_transfer::send_moving(&mut stream, source.clone(), events, move_when)
                        .await
                }
            }
        };
        let Some(result) = session::unless_interrupted(transfer).await else {
            return Err(session::interrupted(stream, false).await);
        };
        match result {
            Ok(outcome) => {
                stream.close().await;
                break (outcome, path);
            }
            Err(TransferError::Moved) => {
                // The relay's part is over: Move went out, then our end.
                session::close_moved(stream);
                let moved = upgrade.as_mut().and_then(Upgrade::take);
                let Some(moved) = moved else {
                    // send_moving moves only once the upgrade arrived.
                    return Err(anyhow::anyhow!(
                        "internal error: the transfer moved, but to no path"
                    ));
                };
                link = moved;
                mending.moved(&link, path, out);
            }
            Err(error) if mending.may_mend(&error) => {
                drop(stream);
                link = mending.mend(error, out).await?;
                output::announce_path(&link, out);
            }
            Err(error) => {
                let error = anyhow::Error::new(error).context("the transfer failed");
                return session::fail_closing(stream, error).await;
            }
        }
    };
    if let Some(report) = report {
        report.finish().await;
    }
    out.finish_progress();
    match outcome {
        SendOutcome::TextDelivered => {
            out.event("done", json!({"kind": "text", "path": path.code()}));
            out.say("Text message delivered.");
            Ok(())
        }
        SendOutcome::Declined(reason) => Err(Failure::peer_gone(format!(
            "the receiver declined the offer ({})",
            escape::line(&reason)
        ))),
        SendOutcome::Files(report) => {
            output::announce_done(&report, path, "Sent", out);
            Ok(())
        }
    }
}

/// Progress events to the output (both sides).
pub fn show_event(out: &mut Output, event: Event) {
    match event {
        Event::Progress {
            bytes_done,
            bytes_total,
        } => out.progress(bytes_done, bytes_total),
        Event::FileStarted {
            path, resumed_from, ..
        } if resumed_from > 0 => {
            out.event("resume", json!({"path": path, "offset": resumed_from}));
            out.say(format!(
                "Resuming {} from {} already received",
                escape::line(&path),
                HumanBytes(resumed_from)
            ));
        }
        _ => {}
    }
}

/// "s" for plurals.
pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
