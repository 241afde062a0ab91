//! A rendezvous server in this process ([`ferry_rendezvous::serve`] on a
//! 127.0.0.1:0 listener) and two [`ferry_rendezvous::SignalClient`]s: one
//! allocates a nameplate, the other claims it, and a mailbox message goes
//! from the second to the first. This is all the server does for ferry:
//! it never sees the code words, only nameplates and opaque mailbox bodies
//! (which ferry fills with SPAKE2 messages, then sealed ones).

use anyhow::{bail, ensure};
use ferry_rendezvous::{SignalClient, SignalEvent};

use crate::LocalServer;

/// What the first client received.
#[derive(Debug)]
pub struct Exchanged {
    /// The nameplate the server gave out.
    pub nameplate: u32,
    /// The mailbox body that arrived.
    pub message: String,
}

/// Starts a server, pairs two clients under a nameplate, passes one
/// message, and stops the server.
pub async fn rendezvous_in_process() -> anyhow::Result<Exchanged> {
    let server = LocalServer::start().await?;
    println!("server: listening on {}", server.addr);

    // Both clients say hello; the welcome tells each its address as the
    // server saw it (used for NAT traversal, 127.0.0.1 here).
    let (mut first, welcome) = SignalClient::connect(&server.addr).await?;
    println!("first: connected, seen as {}", welcome.observed_addr);
    let (mut second, _) = SignalClient::connect(&server.addr).await?;

    // The first side asks for a fresh nameplate (the `7` of a code such as
    // `7-orbit-lantern`); the second claims it, and the first hears so.
    let nameplate = first.allocate().await?;
    println!("first: holds nameplate {nameplate}");
    second.claim(nameplate).await?;
    match first.recv().await? {
        SignalEvent::PeerJoined => println!("first: the second side joined"),
        other => bail!("expected the peer to join, got {other:?}"),
    }

    // One mailbox message, second -> first. The body is any string.
    let sent = "hello through the mailbox".to_string();
    second.send(sent.clone()).await?;
    let message = match first.recv().await? {
        SignalEvent::Message(body) => body,
        other => bail!("expected a message, got {other:?}"),
    };
    println!("first: received {message:?}");
    ensure!(message == sent, "the message changed on the way");

    // Both leave the nameplate; the server forgets it.
    second.release(None).await?;
    first.release(None).await?;
    server.stop().await?;
    Ok(Exchanged { nameplate, message })
}
