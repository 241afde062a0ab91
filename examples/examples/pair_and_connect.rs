//! Pairs a sender and a receiver with a code through an in-process
//! rendezvous server and passes a line each way over the secure stream
//! they get. The code, commented, is in `examples/src/pair_and_connect.rs`.
//!
//! `cargo run -p ferry-examples --example pair_and_connect`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let talked = ferry_examples::pair_and_connect().await?;
    println!("code {} paired; path {}", talked.code, talked.path);
    Ok(())
}
