//! The SOCKS5 side of the tests: `curl --socks5-hostname` and raw SOCKS5
//! requests against a [`TestNet`](crate::network::TestNet)'s proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use crate::http::file_bytes;

/// Runs `curl --socks5-hostname` for `url`; (exit code, body, stderr,
/// time to first byte, total time).
pub fn curl(socks: SocketAddr, url: &str, max_secs: u64) -> (i32, Vec<u8>, String, f64, f64) {
    let f = crate::http::curl_socks(socks, url, max_secs).unwrap();
    (f.code, f.body, f.stderr, f.ttfb, f.total)
}

/// `curl --socks5-hostname user:pass@proxy` for `url`, as a user who wants
/// this stream isolated under that username and password (RFC 1929); (exit
/// code, body, stderr).
pub fn curl_as(
    socks: SocketAddr,
    user: &str,
    pass: &str,
    url: &str,
    max_secs: u64,
) -> (i32, Vec<u8>, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", &max_secs.to_string()])
        .arg("--socks5-hostname")
        .arg(format!("{user}:{pass}@{socks}"))
        .arg(url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, err)
}

/// Sends `bytes` to the proxy, then nothing more (the write half is shut),
/// and reads until it closes (at most `max` bytes, 30 s): what a client
/// sending garbage is answered.
pub fn socks_answer(socks: SocketAddr, bytes: &[u8], max: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(socks).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.take(max as u64).read_to_end(&mut buf);
    buf
}

/// A raw SOCKS5 CONNECT to `host:port` (an IPv4 address as such, else by
/// name); the reply code.
pub fn socks_connect_code(socks: SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = TcpStream::connect(socks).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    let mut req = vec![5, 1, 0];
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.extend_from_slice(&[3, host.len() as u8]);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    rep[1]
}
