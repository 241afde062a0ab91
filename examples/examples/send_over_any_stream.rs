//! Sends a folder over an in-memory pipe with ferry-transfer alone: the
//! transfer needs only a byte stream. The code, commented, is in
//! `examples/src/send_over_any_stream.rs`.
//!
//! `cargo run -p ferry-examples --example send_over_any_stream`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sent = ferry_examples::send_over_any_stream().await?;
    println!(
        "{} files, {} bytes received and verified: {}",
        sent.report.files,
        sent.report.bytes_total,
        sent.verified.join(", ")
    );
    Ok(())
}
