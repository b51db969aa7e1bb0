//! A two-party chat: every line typed is sent to the peer, and every
//! message received is printed as a line.
//!
//! Run two of them against a localnet, each with a client directory of its
//! own (`jq` reads the network's `localnet.json`):
//!
//! ```sh
//! cargo build --release && export PATH="$PWD/target/release:$PATH"
//! loopmix-localnet --dir /tmp/lm --preset speed --socks-listen 127.0.0.1:0 > /tmp/lm.log 2>&1 &
//! until [ -f /tmp/lm/localnet.json ]; do sleep 1; done
//! AUTHORITIES=$(jq -r '(.authorities[] | "--authority \(.key)=\(.url)"), "--threshold \(.threshold)"' /tmp/lm/localnet.json)
//! PROVIDER0=$(jq -r '.members[] | select(.name == "provider0") | .node_id' /tmp/lm/localnet.json)
//! PROVIDER1=$(jq -r '.members[] | select(.name == "provider1") | .node_id' /tmp/lm/localnet.json)
//! ALICE=$(loopmix-client init --dir /tmp/alice --provider "$PROVIDER0" $AUTHORITIES)
//! BOB=$(loopmix-client init --dir /tmp/bob --provider "$PROVIDER1" $AUTHORITIES)
//! cargo run --release -p loopmix-client --example chat -- /tmp/alice "$BOB"   # one terminal
//! cargo run --release -p loopmix-client --example chat -- /tmp/bob "$ALICE"   # another
//! ```
//!
//! A third argument, a count of reply blocks, goes with every line so the
//! peer can answer without knowing our address (the echo example needs
//! one: `chat -- /tmp/alice ECHO_ADDRESS 1`). Delivery reports go to
//! stderr; end with Ctrl-D (waits for the last acknowledgements).

use loopmix_client::sdk::MixnetClient;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: chat CLIENT_DIR PEER_ADDRESS [REPLY_BLOCKS]";
    let dir = args.next().ok_or(usage)?;
    let peer = args.next().ok_or(usage)?;
    let blocks: usize = args.next().map_or(Ok(0), |n| n.parse())?;
    let client = MixnetClient::connect_dir(&dir).await?;
    eprintln!("chatting as {}", client.address());
    let mut messages = client.messages();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                match client.send_with_reply_blocks(&peer, line, blocks) {
                    Ok(d) => {
                        deliveries.spawn(async move {
                            match d.await {
                                Ok(()) => eprintln!("(delivered)"),
                                Err(e) => eprintln!("(not delivered: {e})"),
                            }
                        });
                    }
                    Err(e) => eprintln!("(not sent: {e})"),
                }
            }
            m = messages.recv() => {
                let Some(m) = m else { break };
                println!("{}", String::from_utf8_lossy(&m.body));
            }
        }
    }
    // The last lines' acknowledgements; messages meanwhile are still shown.
    loop {
        tokio::select! {
            d = deliveries.join_next() => if d.is_none() { break },
            Some(m) = messages.recv() => println!("{}", String::from_utf8_lossy(&m.body)),
        }
    }
    client.shutdown().await;
    Ok(())
}
