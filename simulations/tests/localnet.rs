//! `loopmix-localnet` end to end: the real binary starts a whole network of
//! real processes, reports it in `localnet.json` once it carries traffic,
//! and on SIGINT stops every process it started.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopmix_node::harness::{http_get, workspace_bin};

/// The localnet process; on drop (a failed test) it gets SIGTERM, so it
/// still stops its children, and SIGKILL if it hangs.
struct Localnet {
    child: Child,
    out: PathBuf,
}

impl Localnet {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Localnet {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.wait_exit(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- loopmix-localnet output ----\n{}", self.output());
        }
    }
}

/// A process that exists and is not a zombie, with `dir` in its command line.
fn alive_under(pid: u32, dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    state != Some('Z') && cmdline.contains(&*dir.to_string_lossy())
}

fn metrics_addr(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected metrics URL {url}"))
        .parse()
        .unwrap()
}

#[test]
fn localnet_comes_up_reports_itself_and_stops_everything_on_sigint() {
    let localnet_bin = workspace_bin("loopmix-localnet").unwrap();
    for b in ["loopmix-node", "loopmix-directory", "loopmix-client"] {
        workspace_bin(b).unwrap();
    }
    let help = Command::new(&localnet_bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("anonymity sets") && help.contains("1990"),
        "{help}"
    );
    assert!(!help.contains("--fault-drop-rate"), "test knobs are hidden");

    // Until loopmix-client has `exit` and `socks5`, stand-ins test the rest.
    let client = localnet_bin.with_file_name("loopmix-client");
    let stand_in = !Command::new(&client)
        .args(["socks5", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if stand_in {
        eprintln!("loopmix-client has no socks5 command: testing with stand-in clients");
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let out = tmp.path().join("localnet.out");
    let log = std::fs::File::create(&out).unwrap();
    let started = Instant::now();
    let mut cmd = Command::new(&localnet_bin);
    cmd.arg("--dir")
        .arg(&dir)
        .args(["--socks-listen", "127.0.0.1:0", "--preset", "speed"])
        .args(["--epoch-length", "6s", "--ready-timeout", "100s"]);
    if stand_in {
        cmd.arg("--stand-in-clients");
    }
    let mut net = Localnet {
        child: cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        out,
    };

    // Ready: localnet.json appears (written atomically, once).
    let json_path = dir.join("localnet.json");
    let json: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&json_path) {
            break serde_json::from_slice(&bytes).expect("localnet.json is complete JSON");
        }
        if let Some(status) = net.child.try_wait().unwrap() {
            panic!("loopmix-localnet exited with {status} before it was ready");
        }
        assert!(
            started.elapsed() < Duration::from_secs(110),
            "not ready after 110 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("ready after {:.1} s", started.elapsed().as_secs_f64());
    let banner = net.output();
    assert!(banner.contains("Ctrl-C stops the network"), "{banner}");

    assert_eq!(json["dir"].as_str().unwrap(), dir.to_str().unwrap());
    let socks: SocketAddr = json["socks5"].as_str().unwrap().parse().unwrap();
    assert!(!json["exit_address"].as_str().unwrap().is_empty());
    if !stand_in {
        assert_ne!(socks.port(), 0, "the bound port, not the requested one");
        assert!(banner.contains(&format!("curl --socks5-hostname {socks} ")));
        TcpStream::connect_timeout(&socks, Duration::from_secs(2)).expect("SOCKS5 port open");
    }

    // Every process's metrics answer: 3 authorities, 6 mixes, 2 providers,
    // the exit and the SOCKS5 client.
    let metrics = json["metrics"].as_object().unwrap();
    assert_eq!(metrics.len(), 13, "{metrics:?}");
    for (name, url) in metrics {
        let text = http_get(metrics_addr(url.as_str().unwrap()), "/metrics")
            .unwrap_or_else(|e| panic!("{name} metrics at {url}: {e}"));
        assert!(text.contains("loopmix_"), "{name}: {text}");
    }

    let pids: Vec<u32> = json["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 13);
    for &pid in &pids {
        assert!(alive_under(pid, &dir), "child {pid} not running");
    }

    // SIGINT (Ctrl-C) stops everything within 30 s, and localnet exits 0.
    let t = Instant::now();
    net.signal("-INT");
    let status = net
        .wait_exit(Duration::from_secs(30))
        .expect("localnet still running 30 s after SIGINT");
    eprintln!("stopped in {:.1} s", t.elapsed().as_secs_f64());
    assert!(status.success(), "exit status {status}");
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| alive_under(p, &dir))
        .collect();
    assert!(
        left.is_empty(),
        "still running after localnet exited: {left:?}"
    );
    // --dir is kept, with the logs.
    assert!(dir.join("nodes/mix0/node.log").exists());
}
