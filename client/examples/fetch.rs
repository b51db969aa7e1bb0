//! Fetches a URL through the mixnet: an HTTP/1.0 GET over a stream that
//! an exit service connects to the URL's host (`open_stream`), body to
//! stdout. The exit resolves the name; it never learns who asks.
//!
//! Run it against a localnet, whose exit's address is in `localnet.json`
//! (its default policy allows loopback and ports 80 and 443):
//!
//! ```sh
//! cargo build --release && export PATH="$PWD/target/release:$PATH"
//! loopmix-localnet --dir /tmp/lm --preset speed --socks-listen 127.0.0.1:0 > /tmp/lm.log 2>&1 &
//! until [ -f /tmp/lm/localnet.json ]; do sleep 1; done
//! AUTHORITIES=$(jq -r '(.authorities[] | "--authority \(.key)=\(.url)"), "--threshold \(.threshold)"' /tmp/lm/localnet.json)
//! PROVIDER1=$(jq -r '.members[] | select(.name == "provider1") | .node_id' /tmp/lm/localnet.json)
//! EXIT=$(jq -r .exit_address /tmp/lm/localnet.json)
//! loopmix-client init --dir /tmp/fetcher --provider "$PROVIDER1" $AUTHORITIES
//! (cd /tmp && python3 -m http.server 8000 --bind 127.0.0.1 &)   # something to fetch
//! cargo run --release -p loopmix-client --example fetch -- /tmp/fetcher "$EXIT" http://127.0.0.1:8000/
//! ```
//!
//! Plain HTTP only (no TLS here); the status line goes to stderr.

use loopmix_client::sdk::MixnetClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: fetch CLIENT_DIR EXIT_ADDRESS http://HOST[:PORT]/PATH";
    let dir = args.next().ok_or(usage)?;
    let exit = args.next().ok_or(usage)?;
    let url = args.next().ok_or(usage)?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // `host:port`, port 80 when absent (an IPv6 literal keeps its brackets).
    let target = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };

    let client = MixnetClient::connect_dir(&dir).await?;
    let mut stream = client.open_stream(&exit, &target).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // An error here (a reset stream) is never taken for the end of the body.
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header in the answer")?;
    let head = String::from_utf8_lossy(&response[..split]);
    eprintln!("{}", head.lines().next().unwrap_or_default());
    let mut out = tokio::io::stdout();
    out.write_all(&response[split + 4..]).await?;
    out.flush().await?;
    drop(stream);
    client.shutdown().await;
    Ok(())
}
