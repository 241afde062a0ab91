//! Pairing and connecting with [`ferry_session`]: a rendezvous server in
//! this process, a sender ([`ferry_session::Sender::start`], then
//! [`ferry_session::Sender::connect`]) on one task and a receiver
//! ([`ferry_session::receive`]) on another. Between them they run SPAKE2
//! on the code, exchange certificate fingerprints and candidates under the
//! shared key, race the direct paths and return a secure stream (TLS 1.3
//! or QUIC, certificates pinned both ways): a [`ferry_session::PeerLink`].
//! Here a line goes through it each way.
//!
//! Everything stays on this machine: the server listens on 127.0.0.1, and
//! the peers offer their host addresses (this machine's interfaces, and
//! loopback, allowed because both reached the server over loopback), so a
//! direct TCP path between two local addresses wins the race.

use anyhow::{Context, ensure};
use ferry_session::SessionOptions;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::LocalServer;

/// What the two sides said to each other.
#[derive(Debug)]
pub struct Talked {
    /// The code the sender showed and the receiver typed.
    pub code: String,
    /// The path that won the race, as ferry shows it (e.g. `direct TCP on
    /// the LAN`).
    pub path: String,
    /// The line the receiver read from the sender.
    pub greeting: String,
    /// The line the sender read back from the receiver.
    pub answer: String,
}

/// Starts a server, pairs a sender and a receiver through it, passes a
/// line each way over the secure stream, and stops the server.
pub async fn pair_and_connect() -> anyhow::Result<Talked> {
    let server = LocalServer::start().await?;
    // No UPnP: there is no router to ask on loopback.
    let options = SessionOptions {
        no_upnp: true,
        ..SessionOptions::default()
    };

    // The sender connects to the server, allocates a nameplate and makes a
    // code; it would show the code to its user now.
    let sender = ferry_session::Sender::start(&server.addr, None, options).await?;
    let code = sender.code().clone();
    println!("sender: the code is {code}");

    // The receiver, given the code, on its own task (in real use: another
    // computer). It reads the sender's line and answers.
    let receiver = {
        let server = server.addr.clone();
        let code = code.clone();
        tokio::spawn(async move {
            let link = ferry_session::receive(&server, &code, options).await?;
            println!("receiver: connected over {} to {}", link.path, link.remote);
            let mut stream = BufReader::new(link.stream);
            let mut greeting = String::new();
            stream.read_line(&mut greeting).await?;
            stream.write_all(b"hello, sender\n").await?;
            stream.flush().await?;
            // Close our side cleanly (TLS close_notify / QUIC finish).
            stream.shutdown().await?;
            anyhow::Ok(greeting)
        })
    };

    // The sender waits for the receiver, pairs and races; `on_wait` hears
    // when the receiver has claimed the nameplate.
    let link = sender
        .connect(|waiting| println!("sender: {waiting:?}"))
        .await?;
    println!("sender: connected over {} to {}", link.path, link.remote);
    let path = link.path.to_string();
    let mut stream = BufReader::new(link.stream);
    stream.write_all(b"hello, receiver\n").await?;
    stream.flush().await?;
    let mut answer = String::new();
    stream.read_line(&mut answer).await?;
    stream.shutdown().await?;

    let greeting = receiver.await.context("the receiver task")??;
    println!(
        "receiver read {:?}, sender read {:?}",
        greeting.trim_end(),
        answer.trim_end()
    );
    ensure!(
        greeting == "hello, receiver\n",
        "the receiver read {greeting:?}"
    );
    ensure!(answer == "hello, sender\n", "the sender read {answer:?}");
    server.stop().await?;
    Ok(Talked {
        code: code.to_string(),
        path,
        greeting,
        answer,
    })
}
