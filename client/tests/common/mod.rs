//! A whole network for SOCKS5 tests and the SOCKS5 benchmark: real
//! authority, mix and provider processes, a real `loopmix-client exit`
//! and `loopmix-client socks5`, and a local HTTP server to fetch from.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loopmix_directory::harness::Authorities;
use loopmix_node::harness::{DirectoryNetwork, workspace_bin};

/// Network parameters: the localnet "speed" preset.
pub fn speed_preset(t: String) -> String {
    t.replace("mean_hop_delay_ms = 500.0", "mean_hop_delay_ms = 20.0")
        .replace("lambda_p_per_s = 2.0", "lambda_p_per_s = 50.0")
        .replace("lambda_l_per_s = 1.0", "lambda_l_per_s = 2.0")
        .replace("lambda_d_per_s = 1.0", "lambda_d_per_s = 2.0")
        .replace("lambda_m_per_s = 1.0", "lambda_m_per_s = 2.0")
        .replace("payload_size = 1024", "payload_size = 2048")
}

pub const LAMBDA_P: f64 = 50.0;
pub const PAYLOAD: usize = 2048;

/// A `loopmix-client` subprocess, killed on drop.
pub struct ClientProc {
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    restarts: usize,
}

impl ClientProc {
    fn start(dir: &Path, args: Vec<String>) -> Self {
        let mut p = Self {
            dir: dir.to_path_buf(),
            args,
            child: None,
            restarts: 0,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log =
            std::fs::File::create(self.dir.join(format!("log{}.txt", self.restarts))).unwrap();
        let child = Command::new(workspace_bin("loopmix-client").unwrap())
            .args(&self.args)
            .env("RUST_LOG", "info,loopmix_client=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.restarts += 1;
        self.spawn();
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("log{}.txt", self.restarts)))
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let addr = std::fs::read_to_string(self.dir.join("data/metrics.addr")).unwrap_or_default();
        let Ok(addr) = addr.trim().parse::<SocketAddr>() else {
            return String::new();
        };
        loopmix_node::harness::http_get(addr, "/metrics").unwrap_or_default()
    }

    pub fn metric(&self, series: &str) -> f64 {
        loopmix_node::harness::parse_metric(&self.metrics(), series).unwrap_or(0.0)
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client_init(dir: &Path, provider: &str, auths: &Authorities) {
    let mut args = vec![
        "init".to_string(),
        "--dir".into(),
        dir.display().to_string(),
        "--provider".into(),
        provider.into(),
    ];
    args.extend(auths.node_init_args());
    let out = Command::new(workspace_bin("loopmix-client").unwrap())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.join("client.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("pull_interval = \"500ms\"", "pull_interval = \"100ms\"")
        .replace("# listen = \"127.0.0.1:9190\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(&cfg, text).unwrap();
}

fn address(dir: &Path) -> String {
    let out = Command::new(workspace_bin("loopmix-client").unwrap())
        .args(["address", "--config"])
        .arg(dir.join("client.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct SocksNet {
    pub auths: Authorities,
    pub net: DirectoryNetwork,
    pub exit: ClientProc,
    pub socks: ClientProc,
    pub socks_addr: SocketAddr,
}

impl SocksNet {
    /// 3 authorities, 3 layers × 2 mixes, 2 providers; the exit on provider
    /// 0, the proxy on provider 1. `fault`: mix 0 drops this share of
    /// what it processes.
    pub fn launch(root: &Path, fault: Option<f64>, allow: &[&str]) -> SocksNet {
        let dir_bin = workspace_bin("loopmix-directory").unwrap();
        let node_bin = workspace_bin("loopmix-node").unwrap();
        workspace_bin("loopmix-client").unwrap();
        let auths = Authorities::launch(
            &dir_bin,
            &root.join("auth"),
            3,
            2,
            "20s",
            "5s",
            speed_preset,
        )
        .unwrap();
        let net = DirectoryNetwork::launch(
            &node_bin,
            &root.join("nodes"),
            &auths.node_init_args(),
            6,
            2,
            |i, t| match fault {
                Some(rate) if i == 0 => t.replace(
                    "[mixing]\n",
                    &format!("[mixing]\nfault_drop_rate = {rate}\n"),
                ),
                _ => t,
            },
        )
        .unwrap();
        net.wait_listed(Duration::from_secs(120)).unwrap();
        let (p0, p1) = (
            net.provider_dir(0).id.to_string(),
            net.provider_dir(1).id.to_string(),
        );
        let exit_dir = root.join("exit");
        client_init(&exit_dir, &p0, &auths);
        let mut args = vec!["exit".to_string(), "--config".into()];
        args.push(exit_dir.join("client.toml").display().to_string());
        for a in allow {
            args.push("--allow".into());
            args.push(a.to_string());
        }
        let exit = ClientProc::start(&exit_dir, args);
        let socks_dir = root.join("socks");
        client_init(&socks_dir, &p1, &auths);
        let args = vec![
            "socks5".to_string(),
            "--config".into(),
            socks_dir.join("client.toml").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--exit".into(),
            address(&exit_dir),
        ];
        let mut socks = ClientProc::start(&socks_dir, args);
        let addr_file = socks_dir.join("data/socks5.addr");
        let deadline = Instant::now() + Duration::from_secs(120);
        let socks_addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && let Ok(a) = a.trim().parse()
            {
                break a;
            }
            assert!(socks.alive(), "socks5 exited: {}", socks.log());
            assert!(Instant::now() < deadline, "no socks5.addr: {}", socks.log());
            std::thread::sleep(Duration::from_millis(200));
        };
        // Both clients' loops come back: the network carries their packets.
        for c in [&exit, &socks] {
            let deadline = Instant::now() + Duration::from_secs(120);
            while c.metric("loopmix_client_loop_rtt_seconds_count") < 1.0 {
                assert!(Instant::now() < deadline, "no loop returned: {}", c.log());
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        SocksNet {
            auths,
            net,
            exit,
            socks,
            socks_addr,
        }
    }
}

/// Bytes of the file `/<n>` the HTTP server serves: `n` bytes of a fixed
/// pseudo-random sequence.
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

/// A minimal HTTP/1.0 server: `GET /<n>` answers `n` bytes of
/// [`file_bytes`]; `GET /slow` sends its head and nothing more.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
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
                std::thread::spawn(move || serve(conn));
            }
        });
        HttpServer { addr, stop }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
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
    let n: usize = path.trim_start_matches('/').parse().unwrap_or(0);
    let body = file_bytes(n);
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&body);
}

/// Runs `curl --socks5-hostname` for `url`; (exit code, body, stderr,
/// time to first byte, total time).
pub fn curl(socks: SocketAddr, url: &str, max_secs: u64) -> (i32, Vec<u8>, String, f64, f64) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            &max_secs.to_string(),
            "--socks5-hostname",
        ])
        .arg(socks.to_string())
        .args(["-w", "\n%{time_starttransfer} %{time_total}", url])
        .output()
        .unwrap();
    let mut body = out.stdout;
    // The -w line is after the last newline.
    let pos = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let times = String::from_utf8_lossy(&body[pos + 1..]).to_string();
    body.truncate(pos);
    let mut t = times
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    let (ttfb, total) = (t.next().unwrap_or(0.0), t.next().unwrap_or(0.0));
    (
        out.status.code().unwrap_or(-1),
        body,
        String::from_utf8_lossy(&out.stderr).to_string(),
        ttfb,
        total,
    )
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
