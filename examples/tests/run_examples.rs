//! Runs each example's logic (the functions the examples call), so that
//! `cargo test -p ferry-examples` proves the examples work; `cargo test`
//! also builds the examples themselves.

use std::time::Duration;

/// Generous: each takes well under a second on loopback.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn send_over_any_stream_delivers_the_folder() {
    let sent = tokio::time::timeout(LIMIT, ferry_examples::send_over_any_stream())
        .await
        .expect("finishes in time")
        .expect("runs");
    assert_eq!(sent.report.files, 2);
    assert_eq!(sent.verified.len(), 2);
}

#[tokio::test]
async fn rendezvous_in_process_passes_the_message() {
    let exchanged = tokio::time::timeout(LIMIT, ferry_examples::rendezvous_in_process())
        .await
        .expect("finishes in time")
        .expect("runs");
    assert!(exchanged.nameplate > 0);
    assert_eq!(exchanged.message, "hello through the mailbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_and_connect_talks_over_the_secure_stream() {
    let talked = tokio::time::timeout(LIMIT, ferry_examples::pair_and_connect())
        .await
        .expect("finishes in time")
        .expect("runs");
    assert_eq!(talked.greeting, "hello, receiver\n");
    assert_eq!(talked.answer, "hello, sender\n");
}
