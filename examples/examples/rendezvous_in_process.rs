//! Runs a rendezvous server in this process and passes a mailbox message
//! between two clients under a nameplate. The code, commented, is in
//! `examples/src/rendezvous_in_process.rs`.
//!
//! `cargo run -p ferry-examples --example rendezvous_in_process`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let exchanged = ferry_examples::rendezvous_in_process().await?;
    println!(
        "nameplate {} carried {:?}",
        exchanged.nameplate, exchanged.message
    );
    Ok(())
}
