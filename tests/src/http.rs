//! The HTTP fixture: a GET for the processes' own endpoints (`/metrics`,
//! status) and the origin server the SOCKS5 scenarios fetch from.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

/// The exact-series query on a Prometheus text exposition.
pub use loopmix_net::scrape::series as parse_metric;

/// The GET every loopmix tool reads a process's endpoints with
/// (`loopmix_net::scrape`: HTTP/1.1, the body of a 200 response, 5 s to
/// connect), with its error as the tests' `anyhow`.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(loopmix_net::scrape::http_get(addr, path)?)
}

/// [`http_get`] with its own connect timeout (reads within twice that).
pub fn http_get_within(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    Ok(loopmix_net::scrape::http_get_within(addr, path, timeout)?)
}

/// `n` bytes of a fixed pseudo-random sequence: what the [`Origin`] answers
/// to `GET /<n>`, so a test checks a download byte for byte.
pub fn file_bytes(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ n as u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// How the [`Origin`] tells where a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A `Content-Length` header.
    ContentLength,
    /// No length: the body ends when the connection closes, so only the
    /// stream's own end-of-data tells the client that it is complete.
    UntilClose,
}

/// The origin server the SOCKS5 scenarios fetch from, through the mixnet:
/// HTTP/1.0 on loopback, stopped when dropped.
///
/// * `GET /<n>`: `n` bytes of [`file_bytes`];
/// * `GET /reset/<n>`: half of `/<n>`, then a TCP reset (a server that
///   crashed mid-response);
/// * `GET /slow`: the head, then nothing for ten minutes.
pub struct Origin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Origin {
    pub fn start(framing: Framing) -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || serve(conn, framing));
            }
        });
        Origin { addr, stop }
    }

    /// `http://127.0.0.1:port<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, framing: Framing) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut w = conn;
    if path == "/slow" {
        let _ = w.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n");
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let (reset, n) = match path.strip_prefix("/reset") {
        Some(rest) => (true, rest),
        None => (false, path.as_str()),
    };
    let n: usize = n.trim_start_matches('/').parse().unwrap_or(0);
    let length = match framing {
        Framing::ContentLength => format!("Content-Length: {n}\r\n"),
        Framing::UntilClose => String::new(),
    };
    let head = format!("HTTP/1.0 200 OK\r\n{length}Content-Type: application/octet-stream\r\n\r\n");
    let _ = w.write_all(head.as_bytes());
    let body = file_bytes(n);
    if reset {
        let _ = w.write_all(&body[..n / 2]);
        std::thread::sleep(Duration::from_millis(500));
        // Linger 0: close() sends RST, not FIN.
        let _ = socket2::SockRef::from(&w).set_linger(Some(Duration::ZERO));
        return;
    }
    let _ = w.write_all(&body);
}

/// What `curl --socks5-hostname` made of one fetch.
#[derive(Debug)]
pub struct Fetched {
    /// curl's exit code (0: complete).
    pub code: i32,
    /// What arrived, even on failure.
    pub body: Vec<u8>,
    /// curl's complaint, if any.
    pub stderr: String,
    /// Seconds to the first byte and in all.
    pub ttfb: f64,
    pub total: f64,
}

const TIMES: &str = "curl-times:";

/// Fetches `url` with `curl --socks5-hostname` through `socks` (the name
/// is resolved by the proxy, as a browser does), giving up after
/// `max_secs`. The body is left exactly as received.
pub fn curl_socks(socks: SocketAddr, url: &str, max_secs: u64) -> anyhow::Result<Fetched> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", &max_secs.to_string()])
        .arg("--socks5-hostname")
        .arg(socks.to_string())
        // Timings go to stderr on a line of their own, so the body stays
        // byte-exact even when the transfer fails.
        .args([
            "-w",
            &format!("%{{stderr}}\n{TIMES} %{{time_starttransfer}} %{{time_total}}\n"),
        ])
        .arg(url)
        .output()
        .context("running curl")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut times = (0.0, 0.0);
    let mut complaint = Vec::new();
    for line in stderr.lines() {
        match line.strip_prefix(TIMES) {
            Some(t) => {
                let mut t = t
                    .split_whitespace()
                    .map(|x| x.parse::<f64>().unwrap_or(0.0));
                times = (t.next().unwrap_or(0.0), t.next().unwrap_or(0.0));
            }
            None if !line.trim().is_empty() => complaint.push(line),
            None => {}
        }
    }
    Ok(Fetched {
        code: out.status.code().unwrap_or(-1),
        body: out.stdout,
        stderr: complaint.join("\n"),
        ttfb: times.0,
        total: times.1,
    })
}
