//! `loopmix-localnet` end to end: the real binary starts a whole network of
//! real processes (20-minute epochs, so no recovery comes from an epoch
//! change), reports it in `localnet.json` once it carries traffic, survives
//! failures injected with `loopmix-localnet ctl` (a SIGKILLed mix, a
//! restarted one, a SIGSTOPped one), and on SIGINT stops every process it
//! started, a stopped one included. One network for the whole file: it
//! takes a while to start on a loaded 2-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopmix_tests::http::{Framing, Origin, curl_socks, file_bytes, http_get};
use loopmix_tests::workspace_bin;

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

/// A process's state letter in /proc (`T` = stopped), if it exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
}

/// `loopmix-localnet ctl ARGS`: exit code, stdout, stderr.
fn ctl(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).arg("ctl").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("localnet.json")).unwrap()).unwrap()
}

/// Member `name` of `localnet.json`.
fn member(json: &serde_json::Value, name: &str) -> serde_json::Value {
    json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name} in {json}"))
        .clone()
}

/// Polls `f` every 500 ms until it is true; panics after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `curl --socks5-hostname` of `url` through `socks`: Ok(body) or
/// Err(curl's complaint).
fn fetch(socks: SocketAddr, url: &str, max_s: u64) -> Result<Vec<u8>, String> {
    let out = curl_socks(socks, url, max_s).unwrap();
    if out.code == 0 {
        Ok(out.body)
    } else {
        Err(format!("curl exit {}: {}", out.code, out.stderr.trim()))
    }
}

fn metrics_addr(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected metrics URL {url}"))
        .parse()
        .unwrap()
}

#[test]
fn localnet_survives_injected_failures_and_stops_everything_on_sigint() {
    let t0 = Instant::now();
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
    assert!(
        help.contains("--epoch-length") && help.contains("ctl"),
        "{help}"
    );
    let help = Command::new(&localnet_bin)
        .args(["ctl", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("SIGSTOP") && help.contains("--dir"), "{help}");

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
    let dir_s = dir.to_str().unwrap().to_string();

    // ctl without a running localnet: a clear error, exit code 1.
    let (code, _, err) = ctl(&localnet_bin, &["status", "--dir", &dir_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a directory"), "{err}");

    let out = tmp.path().join("localnet.out");
    let log = std::fs::File::create(&out).unwrap();
    let started = Instant::now();
    let mut cmd = Command::new(&localnet_bin);
    // The directory's production epoch length: whatever the network does
    // about a failure below, an epoch change is not it.
    cmd.arg("--dir")
        .arg(&dir)
        .args(["--socks-listen", "127.0.0.1:0", "--preset", "speed"])
        .args(["--epoch-length", "20m", "--ready-timeout", "150s"]);
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

    // Ready: localnet.json appears (written atomically).
    let json_path = dir.join("localnet.json");
    let json: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&json_path) {
            break serde_json::from_slice(&bytes).expect("localnet.json is complete JSON");
        }
        if let Some(status) = net.child.try_wait().unwrap() {
            panic!("loopmix-localnet exited with {status} before it was ready");
        }
        assert!(
            started.elapsed() < Duration::from_secs(160),
            "not ready after 160 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("ready after {:.1} s", started.elapsed().as_secs_f64());
    let banner = net.output();
    assert!(banner.contains("Ctrl-C stops the network"), "{banner}");
    assert!(
        banner.contains(&format!("loopmix-localnet ctl stop mix2 --dir {dir_s}")),
        "the banner says how to inject a failure: {banner}"
    );

    assert_eq!(json["dir"].as_str().unwrap(), dir.to_str().unwrap());
    assert_eq!(json["epoch_length_s"], 1200);
    assert_eq!(
        json["control_socket"].as_str().unwrap(),
        dir.join("localnet.sock").to_str().unwrap()
    );
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

    let mut pids: Vec<u32> = json["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 13);
    for &pid in &pids {
        assert!(alive_under(pid, &dir), "child {pid} not running");
    }
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 13);
    for m in members {
        assert_eq!(m["state"], "running", "{m}");
        assert!(m["exit"].is_null(), "{m}");
    }
    assert!(member(&json, "mix2")["node_id"].as_str().is_some());

    let (code, status, err) = ctl(&localnet_bin, &["status", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    assert!(
        status.contains("NAME") && status.contains("socks5"),
        "{status}"
    );

    let n = 48 * 1024;
    let body = file_bytes(n);
    let origin = Origin::start(Framing::ContentLength);
    let url = origin.url(&format!("/{n}"));
    if !stand_in {
        let t = Instant::now();
        let got = fetch(socks, &url, 120).expect("a fetch before any failure");
        assert!(got == body, "{} bytes, not the body", got.len());
        eprintln!("healthy fetch: {:.1} s", t.elapsed().as_secs_f64());
    }

    // A mix dies (SIGKILL): reported, the rest keeps running.
    let old_mix2 = member(&json, "mix2")["pid"].as_u64().unwrap() as u32;
    let (code, said, err) = ctl(&localnet_bin, &["kill", "mix2", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("killed mix2"), "{said}");
    let m = member(&read_json(&dir), "mix2");
    assert_eq!(m["state"], "exited", "{m}");
    assert!(m["exit"].as_str().unwrap().contains("SIGKILL"), "{m}");
    assert!(!alive_under(old_mix2, &dir));
    let (_, status, _) = ctl(&localnet_bin, &["status", "--dir", &dir_s]);
    let line = status.lines().find(|l| l.starts_with("mix2 ")).unwrap();
    assert!(line.contains("exited (signal 9, SIGKILL)"), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        net.child.try_wait().unwrap().is_none(),
        "localnet stopped when a mix died:\n{}",
        net.output()
    );
    for (&pid, m) in pids.iter().zip(members) {
        if m["name"] != "mix2" {
            assert!(alive_under(pid, &dir), "{} ({pid}) not running", m["name"]);
        }
    }
    if !stand_in {
        // Packets routed through the dead mix are lost; the stream
        // retransmits them over other routes.
        let t = Instant::now();
        let got = fetch(socks, &url, 240).expect("a fetch with mix2 dead");
        assert!(got == body, "{} bytes, not the body", got.len());
        eprintln!("fetch with mix2 dead: {:.1} s", t.elapsed().as_secs_f64());
    }
    // The network's own view, once authorities publish liveness: the
    // status line names the dead mix. Nothing to check without it.
    let auth0 = metrics_addr(json["metrics"]["auth0"].as_str().unwrap());
    let liveness = http_get(auth0, "/metrics")
        .unwrap()
        .contains("loopmix_liveness_down");
    if liveness {
        let t = Instant::now();
        wait_for(
            "the status line to say down: mix2",
            Duration::from_secs(120),
            || {
                net.output()
                    .lines()
                    .rev()
                    .take(5)
                    .any(|l| l.contains("down: mix2"))
            },
        );
        eprintln!(
            "status line says down: mix2 after {:.1} s",
            t.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("authorities export no loopmix_liveness_down: not checking the down list");
    }

    // Restarted: same config, keys and addresses; it rejoins the topology.
    let t = Instant::now();
    let (code, said, err) = ctl(&localnet_bin, &["restart", "mix2", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("restarted mix2"), "{said}");
    let m = member(&read_json(&dir), "mix2");
    assert_eq!(m["state"], "running", "{m}");
    assert_eq!(m["restarts"], 1, "{m}");
    assert_eq!(m["metrics"], json["metrics"]["mix2"], "same address");
    let new_mix2 = m["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_mix2, old_mix2);
    assert!(alive_under(new_mix2, &dir));
    pids.push(new_mix2);
    let mix2 = metrics_addr(m["metrics"].as_str().unwrap());
    wait_for(
        "the restarted mix2 to be listed",
        Duration::from_secs(120),
        || {
            http_get(mix2, "/metrics").is_ok_and(|t| {
                t.lines()
                    .any(|l| l.starts_with("loopmix_node_listed ") && l.ends_with(" 1"))
            })
        },
    );
    eprintln!(
        "mix2 restarted and listed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // stop / cont: a hung mix, then a live one again.
    let mix4 = member(&json, "mix4")["pid"].as_u64().unwrap() as u32;
    let (code, _, err) = ctl(&localnet_bin, &["stop", "mix4", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(member(&read_json(&dir), "mix4")["state"], "stopped");
    assert_eq!(proc_state(mix4), Some('T'), "SIGSTOPped");
    let (code, _, err) = ctl(&localnet_bin, &["cont", "mix4", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(member(&read_json(&dir), "mix4")["state"], "running");
    wait_for("mix4 to run again", Duration::from_secs(10), || {
        proc_state(mix4).is_some_and(|s| s != 'T')
    });

    // An unknown member: a clear error naming the valid ones, exit code 2.
    let (code, _, err) = ctl(&localnet_bin, &["kill", "mix99", "--dir", &dir_s]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mix99") && err.contains("members: auth0"),
        "{err}"
    );
    let (code, _, err) = ctl(&localnet_bin, &["kill", "--dir", &dir_s]);
    assert_eq!(code, 2, "{err}");

    // SIGINT (Ctrl-C) with a SIGSTOPped child: everything stops within
    // 40 s, and localnet exits 0.
    let (code, _, err) = ctl(&localnet_bin, &["stop", "mix0", "--dir", &dir_s]);
    assert_eq!(code, 0, "{err}");
    let mix0 = member(&json, "mix0")["pid"].as_u64().unwrap() as u32;
    assert_eq!(proc_state(mix0), Some('T'));
    let t = Instant::now();
    net.signal("-INT");
    let status = net
        .wait_exit(Duration::from_secs(40))
        .expect("localnet still running 40 s after SIGINT");
    eprintln!("stopped in {:.1} s", t.elapsed().as_secs_f64());
    assert!(status.success(), "exit status {status}\n{}", net.output());
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| alive_under(p, &dir))
        .collect();
    assert!(
        left.is_empty(),
        "still running after localnet exited: {left:?}"
    );
    // --dir is kept, with the logs; the socket is gone, and ctl says so.
    assert!(dir.join("nodes/mix0/node.log").exists());
    assert!(!dir.join("localnet.sock").exists());
    let (code, _, err) = ctl(&localnet_bin, &["status", "--dir", &dir_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not running"), "{err}");
    eprintln!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}
