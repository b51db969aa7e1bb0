//! The `loopmix-localnet` child: starting it, knowing when it is ready,
//! naming its processes, and stopping it so that nothing is left running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

use super::procfs::{self, ProcId};
use crate::network::{LOCALNET_JSON, Signals};
use crate::process::log_tail;

/// How long a SIGTERMed localnet may take to stop its children (it gives
/// them 10 s, then SIGKILLs them) before the soak kills everything itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `loopmix-localnet` writes to `localnet.json` once the network
/// carries traffic (the fields the soak reads).
#[derive(Debug, Clone, Deserialize)]
pub struct LocalnetJson {
    pub socks5: SocketAddr,
    pub epoch_length_s: u64,
    pub pid: u32,
    pub pids: Vec<u32>,
    /// Process name → `http://ADDR/metrics`.
    pub metrics: BTreeMap<String, String>,
    /// Process name → its log file.
    pub logs: BTreeMap<String, PathBuf>,
}

/// One process of the network, named by its role.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub id: ProcId,
    pub metrics: Option<SocketAddr>,
}

/// A running `loopmix-localnet` and the processes it started. Dropping it
/// stops them all, on every path out of the soak (errors included).
pub struct Localnet {
    child: Child,
    /// The localnet's `--dir`: every member's command line names it.
    pub dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub members: Vec<Member>,
    stopped: bool,
}

impl Localnet {
    /// Starts `bin --dir DIR --socks-listen 127.0.0.1:0 ARGS...` in its own
    /// process group (so a Ctrl-C reaches only the soak, which then stops
    /// it), output to `log`.
    pub fn spawn(bin: &Path, dir: &Path, log: &Path, args: &[String]) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .arg("--dir")
            .arg(dir)
            .args(["--socks-listen", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            members: Vec::new(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `localnet.json` appears, then names every process.
    /// Fails if localnet exits first, on a signal, or after `timeout`.
    pub fn wait_ready(
        &mut self,
        signals: &Signals,
        timeout: Duration,
    ) -> anyhow::Result<LocalnetJson> {
        let path = self.dir.join(LOCALNET_JSON);
        let deadline = Instant::now() + timeout;
        let json: LocalnetJson = loop {
            if signals.count() > 0 {
                bail!("interrupted while the network was starting");
            }
            if let Some(status) = self.exited() {
                bail!(
                    "loopmix-localnet exited ({status}) before the network was ready; last lines of {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log, 30)
                );
            }
            // Written atomically (rename), so a file that exists is whole.
            if let Ok(bytes) = std::fs::read(&path) {
                break serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?;
            }
            if Instant::now() > deadline {
                bail!(
                    "the network was not ready after {}; see {}",
                    humantime::format_duration(timeout),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if json.pid != self.pid() {
            bail!(
                "{} names pid {}, not the localnet started (pid {})",
                path.display(),
                json.pid,
                self.pid()
            );
        }
        self.members = name_members(&json, self.pid())?;
        Ok(json)
    }

    /// SIGTERM to localnet (which stops its children), SIGKILL to it if it
    /// does not exit within [`STOP_TIMEOUT`]; then SIGKILL to anything still
    /// running under its directory. Returns what had to be killed that way
    /// (`name (pid)`): a process that outlived its localnet.
    pub fn stop(&mut self) -> Vec<String> {
        self.stopped = true;
        let mut leftovers = Vec::new();
        if self.exited().is_none() {
            procfs::signal("TERM", &[self.pid()]);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.exited().is_none() {
                leftovers.push(format!("loopmix-localnet ({})", self.pid()));
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Members run in their own process groups: a localnet that was
        // killed leaves them behind, so look for them.
        let mut stray: Vec<u32> = Vec::new();
        for m in &self.members {
            if m.id.alive() {
                leftovers.push(format!("{} ({})", m.name, m.id.pid));
                stray.push(m.id.pid);
            }
        }
        for pid in procfs::running_under(&self.dir) {
            if !stray.contains(&pid) {
                leftovers.push(format!(
                    "pid {pid} ({})",
                    procfs::cmdline(pid).unwrap_or_default().trim()
                ));
                stray.push(pid);
            }
        }
        procfs::signal("KILL", &stray);
        leftovers
    }
}

impl Drop for Localnet {
    fn drop(&mut self) {
        if !self.stopped {
            let left = self.stop();
            if !left.is_empty() {
                eprintln!(
                    "loopmix-soak: killed processes that outlived the network: {}",
                    left.join(", ")
                );
            }
        }
    }
}

/// Names every process of the network by its role, from `localnet.json`:
/// a member's command line contains its config path, which lies in the
/// directory of its log (`nodes/mix0/node.log`, `nodes/mix0/node.toml`).
/// localnet itself is a member too (it scrapes everyone's metrics).
fn name_members(json: &LocalnetJson, localnet_pid: u32) -> anyhow::Result<Vec<Member>> {
    let metrics_addr = |name: &str| -> Option<SocketAddr> {
        let url = json.metrics.get(name)?;
        url.strip_prefix("http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    };
    let mut members = Vec::new();
    let id = ProcId::of(localnet_pid).ok_or_else(|| anyhow!("loopmix-localnet is not running"))?;
    members.push(Member {
        name: "localnet".into(),
        id,
        metrics: None,
    });
    let mut named = Vec::new();
    for &pid in &json.pids {
        let id = ProcId::of(pid)
            .ok_or_else(|| anyhow!("process {pid} of {LOCALNET_JSON} is not running"))?;
        let cmd = procfs::cmdline(pid).unwrap_or_default();
        let name = json
            .logs
            .iter()
            .filter_map(|(name, log)| Some((name, log.parent()?)))
            // The longest matching directory: `clients/exit` must not
            // also claim `clients/exit2`.
            .filter(|(_, dir)| cmd.contains(&format!("{}/", dir.display())))
            .max_by_key(|(_, dir)| dir.as_os_str().len())
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| format!("pid{pid}"));
        named.push((name.clone(), pid));
        members.push(Member {
            metrics: metrics_addr(&name),
            name,
            id,
        });
    }
    // Processes the json does not list (there should be none) are only
    // reported: they may be short-lived helpers.
    let listed: Vec<u32> = json.pids.clone();
    let extra: Vec<u32> = procfs::descendants(localnet_pid)
        .into_iter()
        .filter(|p| !listed.contains(p))
        .collect();
    if !extra.is_empty() {
        eprintln!(
            "loopmix-soak: note: localnet has children it does not list in {LOCALNET_JSON}: {extra:?}"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, pid) in &named {
        if !seen.insert(name) {
            bail!("two processes named {name} (pid {pid})");
        }
    }
    members[1..].sort_by_key(|m| role_order(&m.name));
    Ok(members)
}

/// Authorities, mixes, providers, exit, SOCKS5, in numeric order.
fn role_order(name: &str) -> (u8, u32, String) {
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    let rank = if name.starts_with("auth") {
        0
    } else if name.starts_with("mix") {
        1
    } else if name.starts_with("provider") {
        2
    } else if name == "exit" {
        3
    } else if name.starts_with("socks") {
        4
    } else {
        5
    };
    (rank, digits.parse().unwrap_or(0), name.to_string())
}
