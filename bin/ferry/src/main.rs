//! The `ferry` command-line tool: parses arguments, installs logging and
//! calls the subcommand. All protocol logic lives in the library crates.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod advice;
mod cli;
mod config;
mod docs;
use ferry_proto::escape;
mod exit;
mod listing;
mod nat;
mod output;
mod qr;
mod receive;
mod send;
mod serve;
mod session;
mod uri;
use ferry_limits::throttle;

use tracing_subscriber::EnvFilter;

use crate::cli::Command;
use crate::output::Output;

/// Makes glibc's malloc keep one arena instead of one per thread that
/// allocates (up to 8 per core). A transfer allocates its 256 KiB chunks
/// on the disk thread and frees them on a runtime thread (and QUIC's
/// buffers move between threads too), so with an arena per thread each
/// arena keeps its own freed chunks: a QUIC receiver of 1 GiB peaked at
/// 19-21 MB RSS, with one arena at 17-18 MB, at no measurable cost in
/// CPU (the per-thread caches in front of the arena take the small
/// allocations without its lock). The servers keep glibc's default: many
/// connections on every runtime thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a malloc parameter; it is called before
    // the runtime starts any thread, and a refusal (0) leaves the default.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() {
    let cli = config::parse();
    // The servers handle Ctrl-C themselves (graceful shutdown, exit 0).
    let is_server = matches!(cli.command, Command::Serve(_) | Command::Relay(_));
    if !is_server {
        one_malloc_arena();
    }
    install_logging(cli.verbose, is_server, cli.log_format);
    let mut out = Output::new(cli.json);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&format!("cannot start the async runtime: {e}"), exit::OTHER);
            std::process::exit(exit::OTHER);
        }
    };
    let code = runtime.block_on(async {
        let work = async {
            match cli.command {
                Command::Send(args) => send::run(args, &mut out).await,
                Command::Receive(args) => receive::run(args, &mut out).await,
                Command::Serve(args) => serve::run(*args, &mut out).await,
                Command::Relay(args) => serve::run_relay(args, &mut out).await,
                Command::Nat(args) => nat::run(args, &mut out).await,
                Command::Completions(args) => docs::completions(args),
                Command::Man(args) => docs::man(args, &out),
                Command::Config => config::show(&out),
            }
        };
        tokio::pin!(work);
        let finished = |result: anyhow::Result<()>| match result {
            Ok(()) => exit::OK,
            Err(err) => {
                let (code, message) = exit::classify(&err);
                tracing::debug!(?err, "failed");
                Output::new(cli.json).error(&message, code);
                code
            }
        };
        tokio::select! {
            result = &mut work => finished(result),
            _ = tokio::signal::ctrl_c(), if !is_server => {
                // A transfer under way closes its stream gracefully, so the
                // peer knows it was on purpose and does not reconnect.
                match tokio::time::timeout(std::time::Duration::from_secs(2), &mut work).await {
                    Ok(result @ Err(_)) => finished(result),
                    _ => {
                        Output::new(cli.json).error(exit::INTERRUPTED_MESSAGE, exit::INTERRUPTED);
                        exit::INTERRUPTED
                    }
                }
            }
        }
    });
    // Do not wait for stuck blocking tasks (e.g. a prompt on stdin).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

/// Logs go to stderr, as text or JSON lines (`--log-format`). `RUST_LOG`
/// wins; otherwise -v raises the level.
fn install_logging(verbose: u8, server: bool, format: cli::LogFormat) {
    let default = match (verbose, server) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => logs
            // Colours for a person at a terminal only: not in a file or a
            // journal, and never with NO_COLOR.
            .with_ansi(
                std::env::var_os("NO_COLOR").is_none()
                    && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
            .init(),
        cli::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
