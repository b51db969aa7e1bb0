//! A whole network for SOCKS5 tests and the SOCKS5 benchmark: real
//! authority, mix and provider processes, a real `loopmix-client exit`
//! and `loopmix-client socks5`, and a local HTTP server to fetch from.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::authorities::Authorities;
use crate::bins::workspace_bin;
use crate::config::{self, Config, Kind};
use crate::node::DirectoryNetwork;

/// Network parameters: the localnet "speed" preset.
pub fn speed_preset(c: &mut Config) {
    c.set("network.mean_hop_delay_ms", 20.0)
        .set("network.lambda_p_per_s", LAMBDA_P)
        .set("network.lambda_l_per_s", 2.0)
        .set("network.lambda_d_per_s", 2.0)
        .set("network.lambda_m_per_s", 2.0)
        .set("network.payload_size", PAYLOAD as i64);
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
        crate::http::http_get(addr, "/metrics").unwrap_or_default()
    }

    pub fn metric(&self, series: &str) -> f64 {
        crate::http::parse_metric(&self.metrics(), series).unwrap_or(0.0)
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
    config::edit(&dir.join("client.toml"), Kind::Client, |c| {
        c.set("messages.pull_interval", "100ms")
            .set("metrics.listen", "127.0.0.1:0");
    })
    .unwrap();
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
            |i, c| {
                if let Some(rate) = fault
                    && i == 0
                {
                    c.set("mixing.fault_drop_rate", rate);
                }
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

pub use crate::http::file_bytes;

/// Runs `curl --socks5-hostname` for `url`; (exit code, body, stderr,
/// time to first byte, total time).
pub fn curl(socks: SocketAddr, url: &str, max_secs: u64) -> (i32, Vec<u8>, String, f64, f64) {
    let f = crate::http::curl_socks(socks, url, max_secs).unwrap();
    (f.code, f.body, f.stderr, f.ttfb, f.total)
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
