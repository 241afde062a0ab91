//! `ferry receive`.

use std::collections::HashSet;
use std::io::BufRead;

use anyhow::{Context, Result};
use ferry_proto::code::Code;
use ferry_session::MOVE_WAIT;
use ferry_transfer::{Event, Offer, ReceiveOptions, TransferError};
use serde_json::json;

use crate::cli::ReceiveArgs;
use crate::escape;
use crate::exit::Failure;
use crate::listing;
use crate::output::{self, Output};
use crate::send::show_event;
use crate::session::{self, Reconnect};

/// Runs `ferry receive`.
pub async fn run(args: ReceiveArgs, out: &mut Output) -> Result<()> {
    let given = session::receiver_code(args.code.as_deref(), args.code_file.as_deref()).await?;
    let (server, code): (String, Code) = session::receiver_target(&args.server, &given, out)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output folder {}", args.out.display()))
        .map_err(|e| Failure::local(format!("{e:#}")))?;

    let options = ferry_session::SessionOptions {
        proxy: session::proxy_rules(&args.server.proxy)?,
        ..args.path.options()
    };
    let mut link = session::receiver(&server, &code, options, out).await?;
    output::announce_path(&link, out);
    // Relay first with direct attempts still on: the server hears the
    // path once the transfer moved or ended.
    let path_report = link.report.take();
    let mut mending = Reconnect::new(&mut link, args.path.retries);
    let mut upgrade = link.upgrade.take();
    let mut path = link.path;
    let mut stream = link.stream;
    let options = ReceiveOptions {
        out_dir: args.out.clone(),
        overwrite: args.overwrite,
        allow_git: args.allow_git,
        ..Default::default()
    };
    let incoming = match ferry_transfer::receive_offer(&mut stream, options.clone()).await {
        Ok(incoming) => incoming,
        Err(error) => {
            let error = anyhow::Error::new(error).context("cannot take the offer");
            return session::fail_closing(stream, error).await;
        }
    };

    match incoming.offer() {
        Offer::Text(text) => {
            let text = text.clone();
            if let Err(error) = incoming.accept(|_| {}).await {
                return session::fail_closing(stream, error.into()).await;
            }
            stream.close().await;
            if let Some(path_report) = path_report {
                path_report.finish().await;
            }
            out.event("text", json!({"text": text}));
            if out.is_json() {
                out.event("done", json!({"kind": "text", "path": path.code()}));
            } else {
                println!("{}", escape::text(&text));
            }
            Ok(())
        }
        Offer::Files(manifest) => {
            let listing = listing::summarize(manifest);
            let names: Vec<String> = manifest
                .entries
                .iter()
                .take(20)
                .map(|e| e.path.clone())
                .collect();
            let (top, flagged) = listing::to_json(&listing);
            out.event(
                "offer",
                json!({
                    "kind": "files",
                    "files": manifest.file_count(),
                    "dirs": manifest.dir_count(),
                    "bytes": manifest.total_bytes(),
                    "names": names,
                    "top": top,
                    "flagged": flagged,
                }),
            );
            for line in listing::render(manifest, &listing, args.list) {
                out.say(line);
            }
            if !args.yes {
                let question = format!("Accept into {}? [y/N] ", args.out.display());
                if !ask(question).await? {
                    incoming.decline("the receiver said no").await?;
                    stream.close().await;
                    return Err(Failure::peer_gone(
                        "declined: nothing was written (use --yes to accept without asking)",
                    ));
                }
            }
            let offered = Offer::Files(manifest.clone());
            let mut finished = HashSet::new();
            let accepted = incoming.accept(|event| note_event(out, &mut finished, event));
            let Some(mut result) = session::unless_interrupted(accepted).await else {
                return Err(session::interrupted(stream, true).await);
            };
            let report = loop {
                let link = match result {
                    Ok(report) => break report,
                    Err(TransferError::Moved) => {
                        session::close_moved(stream);
                        // The sender nominated the direct path before it
                        // moved: its word is here, or on its way.
                        let moved = match upgrade.as_mut() {
                            Some(upgrade) => upgrade.within(MOVE_WAIT).await,
                            None => None,
                        };
                        if let Some(link) = &moved {
                            mending.moved(link, path, out);
                        }
                        moved
                    }
                    Err(error) if mending.may_mend(&error) => {
                        drop(stream);
                        let link = mending.mend(error, out).await?;
                        output::announce_path(&link, out);
                        Some(link)
                    }
                    Err(error) => {
                        let error = anyhow::Error::new(error).context("the transfer failed");
                        return session::fail_closing(stream, error).await;
                    }
                };
                let mut link = match link {
                    Some(link) => link,
                    None => {
                        // Moved, but the direct path did not reach us:
                        // find the sender again as after a break.
                        let lost = TransferError::Stream(std::io::Error::other(
                            "the sender moved to a direct path that did not reach us",
                        ));
                        let link = mending.mend(lost, out).await?;
                        output::announce_path(&link, out);
                        link
                    }
                };
                upgrade = link.upgrade.take();
                path = link.path;
                stream = link.stream;
                let options = ReceiveOptions {
                    finished: finished.clone(),
                    ..options.clone()
                };
                let incoming =
                    match ferry_transfer::resume_offer(&mut stream, options, &offered).await {
                        Ok(incoming) => incoming,
                        Err(error @ ferry_transfer::TransferError::OfferChanged) => {
                            stream.close().await;
                            return Err(Failure::peer_gone(error.to_string()));
                        }
                        Err(error) => {
                            let error = anyhow::Error::new(error)
                                .context("cannot take the offer after reconnecting");
                            return session::fail_closing(stream, error).await;
                        }
                    };
                let accepted = incoming.accept(|event| note_event(out, &mut finished, event));
                let Some(again) = session::unless_interrupted(accepted).await else {
                    return Err(session::interrupted(stream, true).await);
                };
                result = again;
            };
            stream.close().await;
            if let Some(path_report) = path_report {
                path_report.finish().await;
            }
            output::announce_done(&report, path, "Received", out);
            Ok(())
        }
    }
}

/// Shows `event`, and notes the files that are complete (kept as they are
/// if the path breaks and the transfer resumes).
fn note_event(out: &mut Output, finished: &mut HashSet<String>, event: Event) {
    if let Event::FileDone { path } = &event {
        finished.insert(path.clone());
    }
    show_event(out, event);
}

/// Asks a yes/no question on the terminal; no answer (end of input) is no.
async fn ask(question: String) -> Result<bool> {
    eprint!("{question}");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
