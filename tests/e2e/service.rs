//! A service behind the mixnet, end to end: `loopmix-localnet --service`
//! publishes a local HTTP server through a real `loopmix-client serve`, and
//! real `curl --socks5-hostname` fetches from it through the
//! `loopmix-client socks5 --exit <service address>` the localnet prints,
//! across 3 layers of real mix processes (speed preset, one mix per layer). Then: a request
//! naming another local port still reaches only the forward address (a
//! service is not an open exit), and with the target down every stream is
//! refused cleanly (SOCKS5 0x05, curl 97), counted, logged once, and
//! nothing panics or hangs. One network for the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopmix_localnet::network::Ready;
use loopmix_tests::http::{Fetched, Framing, Origin, curl_socks, file_bytes};
use loopmix_tests::network::{Relays, TestNet};

/// The proxy to the service, started as the localnet's banner says;
/// killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Proxy {
    fn start(net: &TestNet, dir: &Path) -> Proxy {
        let service = net.net.service().expect("the localnet started no service");
        let log = dir.join("service-proxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&net.net.binaries().client)
            .args(["socks5", "--config"])
            .arg(&service.client_config)
            .args(["--listen", "127.0.0.1:0", "--exit", &service.address])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let file = service.client_data_dir.join("socks5.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Some(a) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break a;
            }
            assert!(Instant::now() < deadline, "the proxy never listened");
            std::thread::sleep(Duration::from_millis(100));
        };
        Proxy { child, addr, log }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(proxy: &Proxy, url: &str) -> Fetched {
    curl_socks(proxy.addr, url, 120).unwrap()
}

/// A one-request HTTP server on `addr` answering `body`, on a thread.
fn serve_once(addr: SocketAddr, body: &'static [u8]) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = l.accept().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        let mut w = conn;
        let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(body);
    });
}

fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn a_service_behind_the_mixnet() {
    // Built (or found up to date) before the clock starts.
    loopmix_tests::workspace_bin("loopmix-client").unwrap();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let target = Origin::start(Framing::ContentLength);
    let forward = target.addr;
    let mut net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        // Small (one authority, one mix per layer: every route still
        // crosses three mixes) so that it starts quickly on a busy machine.
        &[
            "--preset",
            "speed",
            "--authorities",
            "1",
            "--mixes-per-layer",
            "1",
            "--service",
            &forward.to_string(),
        ],
    )
    .unwrap();
    let service = net.net.service().unwrap().clone();
    eprintln!(
        "network up after {:.0} s; service {} -> {forward}\n  {}\n  {}",
        t0.elapsed().as_secs_f64(),
        service.address,
        service.socks5_command(),
        service.curl_command()
    );
    assert_eq!(service.forward, forward);
    assert!(service.socks5_command().contains(&service.address));
    // The banner and localnet.json, as `loopmix-localnet` writes them once
    // the network is up (the test launcher does not print them itself).
    let exit_config = net.net.member("exit").unwrap().config.clone().unwrap();
    let ready = Ready {
        socks5: net.socks,
        exit_address: net.client_address(&exit_config).unwrap(),
        service: Some(service.clone()),
    };
    net.net
        .announce(&ready, t0.elapsed(), Err("not served in this test"))
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("localnet.json")).unwrap()).unwrap();
    assert_eq!(json["service_address"], service.address.as_str());
    assert_eq!(json["service"]["forward"], forward.to_string().as_str());
    assert_eq!(
        json["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["kind"] == "service")
            .count(),
        1
    );
    let proxy = Proxy::start(&net, tmp.path());
    let service_log = net.net.member("service").unwrap().log.clone();
    let tails = |net: &TestNet| {
        format!(
            "{}---- service proxy ----\n{}",
            net.tails(&["service"]),
            loopmix_localnet::process::log_tail(&proxy.log, 25)
        )
    };

    // (a) The conventional name reaches the target: every byte.
    let f = curl(&proxy, "http://service/60000");
    assert_eq!(f.code, 0, "curl failed: {}\n{}", f.stderr, tails(&net));
    assert_eq!(f.body, file_bytes(60_000));
    eprintln!("(a) 60000 bytes through the service in {:.1} s", f.total);

    // (c) Not an open exit: a stream naming another local port (where a
    // listener would notice a connection) or a public host still reaches
    // the forward address, and nothing else is connected to.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let other_port = other.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{other_port}/3000"),
        format!("http://localhost:{other_port}/3000"),
        "http://example.org/3000".to_string(),
    ] {
        let f = curl(&proxy, &url);
        assert_eq!(f.code, 0, "{url}: {}\n{}", f.stderr, tails(&net));
        assert_eq!(f.body, file_bytes(3000), "{url} answered by another server");
    }
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the service connected to a target other than its forward address"
    );
    eprintln!("(c) other targets all went to the forward address");

    // (b) The target down: a clean refusal, quickly, each time; counted,
    // logged once.
    drop(target);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(forward).is_ok() {
        assert!(Instant::now() < deadline, "the target did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The session has reached `service` before, so with `socks.early_reply
    // = "known"` (the default) the proxy answers the first CONNECT at
    // once and the refusal can only come as a reset connection; that
    // refusal makes the target unknown again, and the second CONNECT waits
    // and gets the SOCKS5 code.
    for i in 0..2 {
        let f = curl(&proxy, "http://service/1000");
        if i == 0 {
            // 52: empty reply, 56: receive failure (connection reset).
            assert!(
                f.code == 52 || f.code == 56,
                "early-answered refusal: {} {}\n{}",
                f.code,
                f.stderr,
                tails(&net)
            );
        } else {
            // 97: CURLE_PROXY (curl ≥ 7.73); "(5)": SOCKS5 connection refused.
            assert_eq!(f.code, 97, "refusal {i}: {}\n{}", f.stderr, tails(&net));
            assert!(f.stderr.contains("(5)"), "refusal {i}: {}", f.stderr);
        }
        assert!(f.body.is_empty());
        assert!(f.total < 60.0, "refusal {i} took {:.1} s", f.total);
        eprintln!("(b) refusal {i} in {:.1} s: {}", f.total, f.stderr);
    }
    let refused = net.labelled(
        "service",
        "loopmix_service_connect_failures_total",
        "reason",
        "refused",
    );
    assert_eq!(refused, Some(2.0), "{}", tails(&net));
    assert_eq!(
        count_lines(&service_log, "does not take connections"),
        1,
        "{}",
        tails(&net)
    );

    // The target back: streams reach it again, and that is logged once.
    serve_once(forward, b"back up\n");
    let f = curl(&proxy, "http://service/");
    assert_eq!(f.code, 0, "after the target came back: {}", f.stderr);
    assert_eq!(f.body, b"back up\n");
    assert_eq!(count_lines(&service_log, "answers again"), 1);

    // Nothing died, nothing panicked.
    net.all_running().unwrap();
    let mut logs: Vec<_> = net.net.members.iter().map(|m| m.log.clone()).collect();
    logs.push(proxy.log.clone());
    for log in &logs {
        assert_eq!(count_lines(log, "panicked"), 0, "{}", log.display());
    }
    eprintln!("done in {:.0} s", t0.elapsed().as_secs_f64());
}
