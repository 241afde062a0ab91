//! ferry-examples: ferry's library API in three small, runnable steps, all
//! on 127.0.0.1. Each module is one example; `examples/NAME.rs` runs it
//! (`cargo run -p ferry-examples --example NAME`) and
//! `tests/run_examples.rs` runs all three (`cargo test -p ferry-examples`).
//!
//! - [`send_over_any_stream`]: `ferry-transfer` alone. A folder goes over
//!   an in-memory pipe: the transfer needs nothing but a byte stream.
//! - [`rendezvous_in_process`]: `ferry-rendezvous` alone. A server in this
//!   process, two clients meeting under a nameplate and passing a message.
//! - [`pair_and_connect`]: `ferry-session` on top. A sender and a receiver
//!   pair with a code through that server and get a secure stream to each
//!   other.
//!
//! The `ferry` binary does the same in full: `ferry send` is
//! [`pair_and_connect`] followed by [`send_over_any_stream`] on the secure
//! stream.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod pair_and_connect;
pub mod rendezvous_in_process;
pub mod send_over_any_stream;

pub use pair_and_connect::pair_and_connect;
pub use rendezvous_in_process::rendezvous_in_process;
pub use send_over_any_stream::send_over_any_stream;

/// A rendezvous server running in this process on 127.0.0.1, as the
/// examples start it. Stop it with [`LocalServer::stop`].
pub struct LocalServer {
    /// Where it listens, `127.0.0.1:PORT`: what `--server` would say.
    pub addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalServer {
    /// Binds 127.0.0.1 on a free port and serves there with the default
    /// configuration (no relay, no STUN responder: the STUN responder is
    /// `ferry serve`'s, not the library's).
    pub async fn start() -> anyhow::Result<LocalServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // `serve` runs until the future it is given resolves.
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(ferry_rendezvous::serve(
            listener,
            ferry_rendezvous::ServerConfig::default(),
            shutdown,
        ));
        Ok(LocalServer { addr, stop, task })
    }

    /// Stops the server and waits until it has closed its connections.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
