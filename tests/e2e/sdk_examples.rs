//! The SDK's examples (`client/examples/`), run as a user runs them,
//! against one localnet (speed preset) for the whole file: two chat
//! processes exchange a line, a chat with a reply block gets its line back
//! from the echo service, and fetch downloads a file from a local HTTP
//! origin through the exit, byte for byte.
//!
//! `open_stream_throughput_against_socks` (ignored: it measures, and
//! machines are noisy) downloads the same file through the SOCKS5 proxy and
//! through `MixnetClient::open_stream` on one localnet and prints both
//! rates and their ratio:
//! `cargo test -p loopmix-tests --test sdk_examples -- --ignored --nocapture`
//! (`SDK_THROUGHPUT_BYTES` sets the size, 256 KiB by default, and
//! `SDK_THROUGHPUT_ROUNDS` the downloads each way, 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopmix_client::SdkError;
use loopmix_client::sdk::{ClientAddress, MixnetClient};
use loopmix_tests::http::{Framing, Origin, file_bytes};
use loopmix_tests::network::{Relays, TestNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The examples, built with the running test's profile.
fn build_examples() -> PathBuf {
    loopmix_tests::bins::workspace_examples().unwrap()
}

/// One running example: stdout line by line, stderr in a file; killed on
/// drop.
struct Example {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl Example {
    fn start(dir: &Path, logs: &Path, name: &str, example: &str, args: &[&str]) -> Example {
        let stderr = logs.join(format!("{name}.stderr"));
        let mut child = Command::new(dir.join(example))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Example {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first stdout line (from now on) that `f` accepts.
    fn line_where(&mut self, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if f(&l) => {
                    self.seen.push(l.clone());
                    return l;
                }
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "{}: no such line within {timeout:?}; stdout {:?}, stderr:\n{}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    fn wait_stderr(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{}: no {what:?} on stderr within {timeout:?}:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What it printed so far: stdout lines (as read), then stderr.
    fn transcript(&self) -> String {
        format!(
            "---- {} stdout ----\n{}\n---- {} stderr ----\n{}",
            self.name,
            self.seen.join("\n"),
            self.name,
            self.stderr().trim_end()
        )
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (if still running) when the test ends early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The localnet's exit service's address (its client directory is
/// `clients/exit`).
fn exit_address(net: &TestNet, root: &Path) -> String {
    net.client_address(&root.join("clients").join("exit").join("client.toml"))
        .unwrap()
}

/// The exit may reach the test's origin on loopback.
fn start_net(root: &Path) -> TestNet {
    TestNet::start_with(
        root,
        Relays::Off,
        &["--preset", "speed", "--exit-allow", "127.0.0.1:*"],
    )
    .unwrap()
}

fn client_dir(net: &TestNet, name: &str, provider: usize) -> String {
    let config = net.net.add_client(name, provider).unwrap();
    config.parent().unwrap().display().to_string()
}

#[test]
fn chat_echo_and_fetch_examples_work_against_a_localnet() {
    let t0 = Instant::now();
    let builder = std::thread::spawn(build_examples);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("net");
    let logs = tmp.path();
    let net = start_net(&root);
    let examples = builder.join().unwrap();
    eprintln!("localnet up and examples built after {:?}", t0.elapsed());
    let exit = exit_address(&net, &root);
    let http = Origin::start(Framing::UntilClose);
    let (alice, bob, carol, echo, fetcher) = (
        client_dir(&net, "alice", 0),
        client_dir(&net, "bob", 1),
        client_dir(&net, "carol", 1),
        client_dir(&net, "echo", 0),
        client_dir(&net, "fetcher", 1),
    );
    let address = |dir: &str| {
        net.client_address(&Path::new(dir).join("client.toml"))
            .unwrap()
    };
    let (alice_addr, bob_addr) = (address(&alice), address(&bob));

    // Everything at once: the fetch, the echo service, three chats.
    let n = 64 * 1024;
    let url = http.url(&format!("/{n}"));
    // Binary on stdout: to a file, not through the line reader.
    let mut fetch = Reaped(
        Command::new(examples.join("fetch"))
            .args([&fetcher, &exit, &url])
            .stdout(std::fs::File::create(logs.join("fetch.stdout")).unwrap())
            .stderr(std::fs::File::create(logs.join("fetch.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut echo_svc = Example::start(&examples, logs, "echo", "echo", &[&echo]);
    let mut a = Example::start(&examples, logs, "alice", "chat", &[&alice, &bob_addr]);
    let mut b = Example::start(&examples, logs, "bob", "chat", &[&bob, &alice_addr]);
    let echo_addr = echo_svc.line_where(Duration::from_secs(60), |l| l.contains('@'));
    let mut c = Example::start(&examples, logs, "carol", "chat", &[&carol, &echo_addr, "1"]);
    for x in [&a, &b, &c] {
        x.wait_stderr("chatting as", Duration::from_secs(60));
    }
    // Each inbox exists once its client has registered (its first pull).
    std::thread::sleep(Duration::from_secs(1));
    a.say("hi Bob, Alice here");
    c.say("echo this, please");
    b.line_where(Duration::from_secs(90), |l| l == "hi Bob, Alice here");
    b.say("hi Alice, Bob here");
    c.line_where(Duration::from_secs(90), |l| l == "echo this, please");
    echo_svc.line_where(Duration::from_secs(10), |l| {
        l == "echoed: echo this, please"
    });
    a.line_where(Duration::from_secs(90), |l| l == "hi Alice, Bob here");
    a.wait_stderr("(delivered)", Duration::from_secs(60));
    eprintln!("chat and echo done after {:?}", t0.elapsed());
    for x in [&a, &b, &c, &echo_svc] {
        eprintln!("{}", x.transcript());
    }

    // fetch: the body on stdout, byte for byte; the status on stderr.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = fetch.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "fetch still running:\n{}",
            std::fs::read_to_string(logs.join("fetch.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(logs.join("fetch.stderr")).unwrap();
    assert!(status.success(), "fetch failed:\n{stderr}");
    assert!(stderr.contains("200 OK"), "{stderr}");
    let body = std::fs::read(logs.join("fetch.stdout")).unwrap();
    assert_eq!(body.len(), n, "fetched body length");
    assert!(body == file_bytes(n), "fetched body differs");
    eprintln!(
        "fetch done after {:?}: {} bytes on stdout, stderr {stderr:?}",
        t0.elapsed(),
        body.len()
    );

    // Misuse is a typed error, never a panic.
    let misuse = client_dir(&net, "misuse", 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = MixnetClient::connect_dir(&misuse).await.unwrap();
        assert!(
            c.wait_registered(Duration::from_secs(60)).await,
            "the provider did not confirm a new client's inbox"
        );
        let me = c.address();
        let r = c.send("not an address", b"x".to_vec());
        assert!(matches!(r, Err(SdkError::BadAddress(_))), "{r:?}");
        let r = c.send(me, vec![0u8; (1 << 20) + 1]);
        assert!(matches!(r, Err(SdkError::TooLarge { .. })), "{r:?}");
        let nowhere = ClientAddress {
            provider: me.identity,
            ..me
        };
        let r = c.send(nowhere, b"x".to_vec());
        assert!(matches!(r, Err(SdkError::UnknownProvider(_))), "{r:?}");
        let r = c.open_stream(&exit, "no-port").await;
        assert!(matches!(r, Err(SdkError::BadTarget(_))), "{r:?}");
        // Outside the exit's policy (only 127.0.0.1 here): SOCKS5 code 2.
        let r = c.open_stream(&exit, "10.1.2.3:80").await;
        assert!(
            matches!(r, Err(SdkError::StreamRefused { code: 2 })),
            "{r:?}"
        );
        c.shutdown().await;
        let r = c.send(me, b"x".to_vec());
        assert!(matches!(r, Err(SdkError::Shutdown)), "{r:?}");
        let r = c.open_stream(&exit, "127.0.0.1:80").await;
        assert!(matches!(r, Err(SdkError::Shutdown)), "{r:?}");
        assert!(c.messages().recv().await.is_none());
    });
    eprintln!("misuse checked after {:?}", t0.elapsed());
}

/// Seconds to download `GET /<n>` through `open_stream`, checked byte for
/// byte.
async fn sdk_download(client: &MixnetClient, exit: &str, origin: &Origin, n: usize) -> f64 {
    let t = Instant::now();
    let mut s = client
        .open_stream(exit, &origin.addr.to_string())
        .await
        .unwrap();
    s.write_all(format!("GET /{n} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(got[split + 4..] == file_bytes(n)[..], "SDK body differs");
    secs
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn open_stream_throughput_against_socks() {
    let tmp = tempfile::tempdir().unwrap();
    let net = start_net(tmp.path());
    let exit = exit_address(&net, tmp.path());
    // The SOCKS5 proxy's provider and pull interval (add_client uses the
    // preset's).
    let config = net.net.add_client("sdk", 1).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let cfg = loopmix_client::config::ClientConfig::load(&config).unwrap();
        MixnetClient::connect(cfg).await.unwrap()
    });
    let n: usize = std::env::var("SDK_THROUGHPUT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 * 1024);
    let rounds: usize = std::env::var("SDK_THROUGHPUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // Warm-up of each path: sessions and reply-block pools exist.
    net.download_intact(16 * 1024, 120).unwrap();
    rt.block_on(sdk_download(&client, &exit, &net.origin, 16 * 1024));
    let (mut socks_s, mut sdk_s) = (0.0, 0.0);
    for round in 0..rounds {
        // Alternate which path goes first, so drift in the machine's load
        // does not favour one. The exit's retransmissions during each
        // download tell a stalled stream from a slow machine.
        let retx = || {
            net.metric("exit", "loopmix_stream_retransmissions_total")
                .unwrap_or(f64::NAN)
        };
        let socks = || {
            let r0 = retx();
            let s = net.download_intact(n, 600).unwrap();
            (s, retx() - r0)
        };
        let sdk = || {
            let r0 = retx();
            let s = rt.block_on(sdk_download(&client, &exit, &net.origin, n));
            (s, retx() - r0)
        };
        let ((a, ra), (b, rb)) = if round % 2 == 0 {
            let a = socks();
            (a, sdk())
        } else {
            let b = sdk();
            (socks(), b)
        };
        eprintln!(
            "round {round}: SOCKS5 {a:.1} s ({ra} exit retransmissions), open_stream {b:.1} s ({rb}) for {n} bytes"
        );
        socks_s += a;
        sdk_s += b;
    }
    let mib = (n * rounds) as f64 / (1024.0 * 1024.0);
    let (socks_rate, sdk_rate) = (mib / socks_s, mib / sdk_s);
    println!(
        "stream throughput, speed preset, {rounds} x {n} bytes each way: SOCKS5 {:.1} KiB/s, open_stream {:.1} KiB/s, ratio open_stream/SOCKS5 = {:.3}",
        socks_rate * 1024.0,
        sdk_rate * 1024.0,
        sdk_rate / socks_rate
    );
    rt.block_on(client.shutdown());
}
