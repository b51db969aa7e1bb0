//! An echo service reached only over reply blocks: it answers every
//! message with the same bytes, over the reply blocks the message carried,
//! so it never learns who writes to it, and they never learn where it
//! runs (only its address, which names its provider).
//!
//! Run it against a localnet (`jq` reads the network's `localnet.json`):
//!
//! ```sh
//! cargo build --release && export PATH="$PWD/target/release:$PATH"
//! loopmix-localnet --dir /tmp/lm --preset speed --socks-listen 127.0.0.1:0 > /tmp/lm.log 2>&1 &
//! until [ -f /tmp/lm/localnet.json ]; do sleep 1; done
//! AUTHORITIES=$(jq -r '(.authorities[] | "--authority \(.key)=\(.url)"), "--threshold \(.threshold)"' /tmp/lm/localnet.json)
//! PROVIDER0=$(jq -r '.members[] | select(.name == "provider0") | .node_id' /tmp/lm/localnet.json)
//! loopmix-client init --dir /tmp/echo --provider "$PROVIDER0" $AUTHORITIES
//! cargo run --release -p loopmix-client --example echo -- /tmp/echo
//! ```
//!
//! It prints its address first; talk to it with the chat example, which
//! sends reply blocks when given a count:
//! `cargo run --release -p loopmix-client --example chat -- /tmp/alice ECHO_ADDRESS 1`.
//! Stop it with Ctrl-C.

use std::time::Duration;

use loopmix_client::sdk::MixnetClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: echo CLIENT_DIR (a directory made by `loopmix-client init`)")?;
    let client = MixnetClient::connect_dir(&dir).await?;
    // Mail that reaches the provider before it holds our inbox is dropped:
    // give the address out once it does.
    if !client.wait_registered(Duration::from_secs(60)).await {
        return Err("the provider did not confirm the inbox within 60 s".into());
    }
    println!("{}", client.address());
    let mut messages = client.messages();
    loop {
        tokio::select! {
            m = messages.recv() => {
                let Some(m) = m else { break };
                let text = String::from_utf8_lossy(&m.body).into_owned();
                match m.reply {
                    Some(handle) => match client.reply(handle, m.body) {
                        Ok(_) => println!("echoed: {text}"),
                        Err(e) => eprintln!("cannot answer {text:?}: {e}"),
                    },
                    None => eprintln!("no reply blocks, not answered: {text:?}"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.shutdown().await;
    Ok(())
}
