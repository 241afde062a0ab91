//! A folder sent with [`ferry_transfer::send`] and received with
//! [`ferry_transfer::receive_offer`] + [`ferry_transfer::Incoming::accept`]
//! over [`tokio::io::duplex`], an in-memory pipe. Nothing here connects,
//! encrypts or authenticates: in ferry that is done before, and the stream
//! handed to the transfer is the TLS or QUIC stream to the peer. Any
//! `AsyncRead + AsyncWrite` works the same (a `TcpStream`, a Unix socket).

use std::path::Path;

use anyhow::{Context, ensure};
use ferry_transfer::{Event, Offer, ReceiveOptions, Report, SendOutcome};

/// What [`send_over_any_stream`] moved.
#[derive(Debug)]
pub struct Sent {
    /// The receiver's summary.
    pub report: Report,
    /// Paths of the files received and compared with the originals,
    /// relative to the output folder.
    pub verified: Vec<String>,
}

/// The files of the example folder: (path below the folder, contents).
fn example_files() -> Vec<(&'static str, Vec<u8>)> {
    // 300 KiB of varied bytes: more than one 256 KiB chunk of the protocol.
    let mut hasher = blake3::Hasher::new().update(b"example").finalize_xof();
    let mut photo = vec![0u8; 300 * 1024];
    hasher.fill(&mut photo);
    vec![
        (
            "notes.txt",
            b"ferry moves folders, not just files\n".to_vec(),
        ),
        ("2024/beach.raw", photo),
    ]
}

/// Makes a folder `trip` with a couple of files in a temporary directory,
/// sends it through an in-memory pipe, and checks that every received byte
/// is the sent one.
pub async fn send_over_any_stream() -> anyhow::Result<Sent> {
    let work = tempfile::tempdir().context("making a temporary directory")?;
    let folder = work.path().join("trip");
    for (path, contents) in example_files() {
        let path = folder.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
    }
    let out = work.path().join("received");
    std::fs::create_dir(&out)?;

    // The byte stream: two connected ends, 64 KiB buffered between them.
    let (sender_end, receiver_end) = tokio::io::duplex(64 * 1024);

    // The receiver: read the offer (every path is checked against `out`
    // before anything is written), look at it, accept. `accept` verifies
    // each chunk's and each file's BLAKE3 hash before renaming the file
    // into place.
    let options = ReceiveOptions {
        out_dir: out.clone(),
        ..ReceiveOptions::default()
    };
    let receiver = tokio::spawn(async move {
        let incoming = ferry_transfer::receive_offer(receiver_end, options).await?;
        if let Offer::Files(manifest) = incoming.offer() {
            println!("receiver: offered {} entries", manifest.entries.len());
        }
        incoming
            .accept(|event| {
                if let Event::FileDone { path } = event {
                    println!("receiver: {path} verified");
                }
            })
            .await
    });

    // The sender: scan the folder into a manifest and send it. `send`
    // returns once the receiver confirmed that all was written.
    let source = ferry_transfer::scan(std::slice::from_ref(&folder))?;
    let outcome = ferry_transfer::send(sender_end, source, |_event| {}).await?;
    ensure!(
        matches!(outcome, SendOutcome::Files(_)),
        "the receiver did not take the files: {outcome:?}"
    );
    let report = receiver.await.context("the receiver task")??;

    // The proof: the received folder holds exactly the bytes we made.
    let mut verified = Vec::new();
    for (path, contents) in example_files() {
        let received = Path::new("trip").join(path);
        let bytes = std::fs::read(out.join(&received))
            .with_context(|| format!("reading {}", received.display()))?;
        ensure!(bytes == contents, "{} differs", received.display());
        verified.push(received.display().to_string());
    }
    Ok(Sent { report, verified })
}
