//! Starting the network, waiting until it carries traffic, watching it, and
//! stopping it.
//!
//! Order, and why:
//! 1. authorities, with epoch 1 starting a few seconds after they are up
//!    (`genesis` in the near future), so the nodes started next register in
//!    time for epoch 1 instead of waiting out a whole epoch;
//! 2. mixes and providers, all at once; ready when every one of them runs a
//!    signed topology that lists it (`loopmix_node_listed` = 1);
//! 3. the exit (on provider 0), the SOCKS5 client (on provider 1) and,
//!    with `--service`, the service (on provider 0): a client needs its
//!    provider in the topology; ready when each sees its own loop cover
//!    packets come back through the mixes.
//!
//! Once it is ready, the network is watched rather than guarded: a member
//! that exits is reported (once, with the end of its log) and shown in the
//! status line and `localnet.json`, and the rest keeps running, so one can
//! watch the network survive it. `loopmix-localnet ctl` requests (see
//! [`super::control`]) are served from the same loop, the only place that
//! touches the children.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use loopmix_core::keys::NodeId;
use loopmix_core::topology::Role;
use loopmix_net::clock::unix_now;
use loopmix_node::node::BoundAddresses;

use super::configs::{ConfigKind, edit_file, toml_str};
use super::control::{Action, ControlServer, RESTART_TIMEOUT, Reply, Request};
use super::process::{Processes, STOP_GRACE, State, UnexpectedExit, log_tail};
use super::status::{Status, Ui};
use super::{Options, PresetParams};
use crate::faults::RelaySet;

/// Name of the file describing a ready network, in its directory.
pub const LOCALNET_JSON: &str = "localnet.json";

/// The loopmix binaries a localnet runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub node: PathBuf,
    pub directory: PathBuf,
    pub client: PathBuf,
}

impl Binaries {
    /// The binaries next to the running executable (`cargo build` puts
    /// every binary of the workspace in one directory).
    pub fn next_to_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding our own executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{name} not found in {} (loopmix-localnet runs the binaries next to it). \
                     Build all of them first:\n    cargo build --release\nthen run \
                     ./target/release/loopmix-localnet",
                    dir.display()
                )
            }
        };
        Ok(Self {
            node: find("loopmix-node")?,
            directory: find("loopmix-directory")?,
            client: find("loopmix-client")?,
        })
    }

    /// Fails clearly when `loopmix-client` predates the exit, SOCKS5 and
    /// service commands (a stale build).
    pub fn check_client_commands(&self) -> anyhow::Result<()> {
        for cmd in ["exit", "socks5", "serve"] {
            let ok = Command::new(&self.client)
                .args([cmd, "--help"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                bail!(
                    "{} has no `{cmd}` command (an old build?). Rebuild every binary:\n    \
                     cargo build --release",
                    self.client.display()
                );
            }
        }
        Ok(())
    }
}

/// SIGINT, SIGTERM and SIGHUP received so far.
#[derive(Clone, Default)]
pub struct Signals(Arc<AtomicUsize>);

impl Signals {
    /// Installs the handlers on `rt` (which must keep running): from now on
    /// these signals no longer kill this process; they are counted.
    pub fn install(rt: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let s = Self::default();
        let count = s.0.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = int.recv() => {}
                    Some(()) = term.recv() => {}
                    Some(()) = hup.recv() => {}
                    else => return,
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(s)
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Start-up stopped by a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// What a member of the network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authority,
    Mix,
    Provider,
    Exit,
    Socks,
    /// `loopmix-client serve`: a service behind the mixnet.
    Service,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Authority => "authority",
            Kind::Mix => "mix",
            Kind::Provider => "provider",
            Kind::Exit => "exit",
            Kind::Socks => "socks5",
            Kind::Service => "service",
        }
    }
}

/// One started process and where to see it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub kind: Kind,
    pub pid: u32,
    pub log: PathBuf,
    /// Its `/metrics` endpoint, once known (an authority's whole HTTP API).
    pub metrics: Option<SocketAddr>,
    /// Its config file (what `run --config` reads; restarts reuse it).
    pub config: Option<PathBuf>,
    /// Mixes and providers: the node id.
    pub id: Option<NodeId>,
    /// Mixes and providers: where the QUIC endpoint listens, once known.
    pub quic: Option<SocketAddr>,
    /// Mixes and providers: the address in its descriptor, which peers dial
    /// (its fault relay's, with [`Localnet::use_fault_relays`]).
    pub public: Option<SocketAddr>,
    /// The exit, the SOCKS5 client and the service: their data directory.
    pub data_dir: Option<PathBuf>,
}

/// A network that is up.
#[derive(Debug, Clone)]
pub struct Ready {
    pub socks5: SocketAddr,
    pub exit_address: String,
    /// With `--service`.
    pub service: Option<Service>,
}

/// The service behind the mixnet (`--service`), and a client ready to
/// reach it: initialised (on the SOCKS5 client's provider) but not started,
/// so the printed command can run as it is.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its mixnet address: what `socks5 --exit` names.
    pub address: String,
    /// The local address it forwards every stream to.
    pub forward: SocketAddr,
    /// The `client.toml` of the client made to reach it.
    pub client_config: PathBuf,
    /// That client's data directory (`socks5.addr` appears there).
    pub client_data_dir: PathBuf,
    /// Where the printed command's proxy listens.
    pub socks_listen: SocketAddr,
}

impl Service {
    /// The command that runs a SOCKS5 proxy to the service.
    pub fn socks5_command(&self) -> String {
        format!(
            "loopmix-client socks5 --config {} --listen {} --exit {}",
            self.client_config.display(),
            self.socks_listen,
            self.address
        )
    }

    /// A fetch through that proxy. Any host name reaches the service (it
    /// ignores the target a stream names); `service` is the convention.
    pub fn curl_command(&self) -> String {
        format!(
            "curl --socks5-hostname {} http://service/",
            self.socks_listen
        )
    }
}

#[derive(Clone)]
struct Authority {
    key: NodeId,
    url: String,
}

/// A client directory made by `loopmix-client init`.
struct ClientDir {
    config: PathBuf,
    data_dir: PathBuf,
    /// Metrics port chosen up front (stand-in clients, which do not report
    /// the port they bound).
    fixed_metrics: Option<SocketAddr>,
}

/// A localnet being started, running or stopped.
pub struct Localnet {
    opts: Options,
    preset: PresetParams,
    bins: Binaries,
    root: PathBuf,
    signals: Signals,
    ui: Ui,
    pub members: Vec<Member>,
    procs: Processes,
    deadline: Instant,
    genesis: u64,
    /// Fault relays in front of the mixes and providers, if asked for.
    relays: Option<RelaySet>,
    /// The authorities, once started (clients added later pin them too).
    auths: Vec<Authority>,
    /// Set by [`announce`](Self::announce).
    ready: Option<Ready>,
    /// With `--service`, once started.
    service: Option<Service>,
    /// The `ctl` socket, if served.
    control_socket: Option<PathBuf>,
}

/// `ip:port` from a file, if it holds one.
fn read_addr(path: &Path, need_newline: bool) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    if need_newline && !text.ends_with('\n') {
        return None;
    }
    let t = text.trim();
    t.strip_prefix("http://").unwrap_or(t).parse().ok()
}

fn metric(addr: Option<SocketAddr>, name: &str) -> Option<f64> {
    let text = loopmix_net::scrape::scrape(addr?).ok()?;
    loopmix_net::scrape::sum(&text, name)
}

/// A free TCP port on loopback right now (may be taken by the time it is
/// used; only for stand-in clients).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs `cmd`; its trimmed stdout, or an error with its stderr.
pub(super) fn run_output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Localnet {
    pub fn new(opts: Options, bins: Binaries, root: PathBuf, signals: Signals) -> Self {
        let deadline = Instant::now() + opts.ready_timeout;
        Self {
            preset: opts.preset.params(),
            opts,
            bins,
            root,
            signals,
            ui: Ui::new(),
            members: Vec::new(),
            procs: Processes::default(),
            deadline,
            genesis: 0,
            relays: None,
            auths: Vec::new(),
            ready: None,
            service: None,
            control_socket: None,
        }
    }

    /// The service behind the mixnet (`--service`), once started.
    pub fn service(&self) -> Option<&Service> {
        self.service.as_ref()
    }

    /// Puts a fault relay from `relays` in front of every mix and provider
    /// started later: the node publishes the relay's address, so all its
    /// peers (and clients) reach it through the relay. Call before
    /// [`start`](Self::start).
    pub fn use_fault_relays(&mut self, relays: RelaySet) {
        self.relays = Some(relays);
    }

    /// The relays of [`use_fault_relays`](Self::use_fault_relays), by node name.
    pub fn relays(&self) -> Option<&RelaySet> {
        self.relays.as_ref()
    }

    /// Where every key, config, database and log is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Err if a process exited that nobody stopped (reported once).
    pub fn check(&mut self) -> Result<(), UnexpectedExit> {
        self.procs.check()
    }

    /// SIGKILL to member `name` (a crash); waits until it is gone.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        if !self.procs.kill(name) {
            bail!("{name} is not running");
        }
        Ok(())
    }

    /// SIGTERM to member `name` (a graceful stop), SIGKILL after `grace`.
    pub fn terminate(&mut self, name: &str, grace: Duration) -> anyhow::Result<()> {
        if !self.procs.terminate(name, grace) {
            bail!("{name} is not running");
        }
        Ok(())
    }

    /// Member `name`'s process state.
    pub fn state(&self, name: &str) -> Option<State> {
        self.procs.get(name).map(|c| c.state())
    }

    /// SIGSTOP to member `name`: it hangs with its sockets open.
    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        self.procs.pause(name)
    }

    /// SIGCONT to member `name`.
    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        self.procs.resume(name)
    }

    /// Starts a stopped member again with the same command, config, keys
    /// and data, on the same addresses (so the published topology, the
    /// clients' authority URLs and the SOCKS5 users still reach it); waits
    /// until it listens.
    pub fn restart(&mut self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let i = self
            .members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| anyhow!("no member {name}"))?;
        let m = self.members[i].clone();
        let (Some(config), Some(metrics)) = (m.config.clone(), m.metrics) else {
            bail!("{name} has not started yet");
        };
        let dir = config
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", config.display()))?
            .to_path_buf();
        let stand_in = self.opts.stand_in_clients;
        let mut args = None;
        // How to tell that the new process listens: a file it writes once
        // it does (removed first, so a fresh one is the sign), or, for
        // stand-in clients on a fixed port, its metrics answering.
        let ready_file = match m.kind {
            Kind::Authority => {
                edit_file(
                    &config,
                    ConfigKind::Directory,
                    &[("authority", "listen", toml_str(&metrics.to_string()))],
                )?;
                Some(dir.join("data").join(loopmix_directory::config::ADDR_FILE))
            }
            Kind::Mix | Kind::Provider => {
                let quic = m
                    .quic
                    .ok_or_else(|| anyhow!("{name}: QUIC address unknown"))?;
                edit_file(
                    &config,
                    ConfigKind::Node,
                    &[
                        ("node", "listen", toml_str(&quic.to_string())),
                        ("metrics", "listen", toml_str(&metrics.to_string())),
                    ],
                )?;
                Some(dir.join("data").join("bound.json"))
            }
            Kind::Exit | Kind::Socks | Kind::Service if stand_in => None,
            Kind::Exit | Kind::Socks | Kind::Service => {
                let data_dir = m
                    .data_dir
                    .clone()
                    .ok_or_else(|| anyhow!("{name}: data directory unknown"))?;
                edit_file(
                    &config,
                    ConfigKind::Client,
                    &[("metrics", "listen", toml_str(&metrics.to_string()))],
                )?;
                if m.kind == Kind::Socks {
                    // The proxy's port may have been chosen by the system
                    // (`--socks-listen 127.0.0.1:0`): ask for the same one.
                    let socks = self
                        .ready
                        .as_ref()
                        .map(|r| r.socks5)
                        .ok_or_else(|| anyhow!("{name}: SOCKS5 address unknown"))?;
                    let mut a = self
                        .procs
                        .get(name)
                        .map(|c| c.args().to_vec())
                        .unwrap_or_default();
                    if let Some(p) = a.iter().position(|x| x == "--listen")
                        && let Some(v) = a.get_mut(p + 1)
                    {
                        *v = socks.to_string().into();
                    }
                    args = Some(a);
                    Some(data_dir.join("socks5.addr"))
                } else {
                    Some(data_dir.join("metrics.addr"))
                }
            }
        };
        if let Some(f) = &ready_file {
            let _ = std::fs::remove_file(f);
        }
        let cmd = self
            .procs
            .same_command(name, args)
            .ok_or_else(|| anyhow!("no process named {name}"))?;
        let pid = self.procs.respawn(name, cmd)?;
        self.members[i].pid = pid;
        let deadline = Instant::now() + timeout;
        loop {
            if self.signals.count() > 0 {
                return Err(Interrupted.into());
            }
            let listens = match &ready_file {
                Some(f) => std::fs::metadata(f).is_ok_and(|m| m.len() > 0),
                None => loopmix_net::scrape::scrape(metrics).is_ok(),
            };
            if listens {
                return Ok(());
            }
            if let Some(status) = self.procs.exited_now(name) {
                bail!(
                    "{name} exited again ({}); last lines of {}:\n{}",
                    super::process::describe_exit(status),
                    m.log.display(),
                    log_tail(&m.log, 20)
                );
            }
            if Instant::now() > deadline {
                let what = ready_file.as_ref().map_or_else(
                    || format!("its metrics at {metrics}"),
                    |f| format!("writing {}", f.display()),
                );
                bail!(
                    "timed out waiting for {name} to listen again ({what}); its log is {}",
                    m.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `loopmix-client init` for a new client `name` of provider number
    /// `provider`, pinning the network's authorities, with the preset's
    /// pull interval; returns its `client.toml`.
    pub fn add_client(&self, name: &str, provider: usize) -> anyhow::Result<PathBuf> {
        let id = self
            .members
            .iter()
            .filter(|m| m.kind == Kind::Provider)
            .nth(provider)
            .and_then(|m| m.id)
            .ok_or_else(|| anyhow!("no provider {provider}"))?;
        Ok(self.init_client(name, id, &self.auths.clone())?.config)
    }

    fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        cmd: Command,
        log: PathBuf,
    ) -> anyhow::Result<usize> {
        let pid = self.procs.spawn(name, cmd, &log)?;
        self.members.push(Member {
            name: name.to_string(),
            kind,
            pid,
            log,
            metrics: None,
            config: None,
            id: None,
            quic: None,
            public: None,
            data_dir: None,
        });
        Ok(self.members.len() - 1)
    }

    /// Polls `probe` until it yields, watching for signals, dead children
    /// and the ready deadline. `what` says what is awaited, for errors.
    fn wait<T>(
        &mut self,
        what: impl Fn() -> String,
        probe: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        self.wait_until(self.deadline, what, probe)
    }

    /// [`wait`](Self::wait) with its own deadline.
    fn wait_until<T>(
        &mut self,
        deadline: Instant,
        what: impl Fn() -> String,
        mut probe: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            if self.signals.count() > 0 {
                return Err(Interrupted.into());
            }
            self.procs.check()?;
            if let Some(v) = probe() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                if deadline != self.deadline {
                    bail!(
                        "timed out waiting for {}; the logs are under {}",
                        what(),
                        self.root.display()
                    );
                }
                bail!(
                    "the network was not ready within {} (--ready-timeout): still waiting for {}; \
                     the logs are under {}",
                    humantime::format_duration(self.opts.ready_timeout),
                    what(),
                    self.root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts everything and waits until the network carries traffic.
    pub fn start(&mut self) -> anyhow::Result<Ready> {
        let auths = self.start_authorities()?;
        self.auths = auths.clone();
        let nodes = self.start_nodes(&auths)?;
        self.wait_listed()?;
        self.start_clients(&auths, &nodes)
    }

    fn start_authorities(&mut self) -> anyhow::Result<Vec<Authority>> {
        let n = usize::from(self.opts.authorities);
        let k = n / 2 + 1;
        self.ui.stage(format!("creating {n} directory authorities"));
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| self.root.join("authorities").join(format!("auth{i}")))
            .collect();
        let e = self.opts.epoch_length.as_secs();
        // Long enough for the authorities to exchange signatures, short
        // enough not to delay the first epoch much.
        let lead = (e / 10).clamp(2, 10).min(e / 2);
        // Epoch 1 starts once everything is started and registered (a few
        // hundred ms per process on a busy machine). A node that misses the
        // window joins one epoch later.
        let processes = n + self.mix_count() + usize::from(self.opts.providers);
        let margin = 2 + processes as u64 / 3;
        self.genesis = unix_now() + lead + margin;
        let net = self.preset;
        let schedule = [
            "--epoch-length".to_string(),
            format!("{e}s"),
            "--registration-lead".into(),
            format!("{lead}s"),
            "--genesis".into(),
            self.genesis.to_string(),
        ];
        let keys = crate::init::init_authorities(&self.bins.directory, &dirs, k, &schedule)?;
        for d in &dirs {
            let mut edits = if self.opts.directory_defaults {
                vec![("network", "layers", self.opts.layers.to_string())]
            } else {
                super::directory_edits(&net, self.opts.layers)
            };
            // The production default keeps 48 epochs (16 hours of the
            // default 20-minute epochs). With localnet's epochs of seconds
            // that is a history nobody reads, and the authorities' memory
            // (about 40 KB an epoch here) would keep filling for half an
            // hour: keep about
            // two minutes, never under four epochs (nodes and clients only
            // ever fetch the current and the next).
            let keep = (120 / e).max(4);
            edits.push(("limits", "keep_epochs", keep.to_string()));
            edit_file(
                &d.join(loopmix_directory::config::CONFIG_FILE),
                ConfigKind::Directory,
                &edits,
            )?;
        }
        let mut started = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let mut cmd = Command::new(&self.bins.directory);
            cmd.args(["run", "--config"])
                .arg(d.join(loopmix_directory::config::CONFIG_FILE));
            let m = self.spawn(
                &format!("auth{i}"),
                Kind::Authority,
                cmd,
                d.join("authority.log"),
            )?;
            self.members[m].config = Some(d.join(loopmix_directory::config::CONFIG_FILE));
            started.push((m, d.join("data").join(loopmix_directory::config::ADDR_FILE)));
        }
        let mut auths = Vec::new();
        for (i, (m, addr_file)) in started.into_iter().enumerate() {
            self.ui.stage(format!("starting authority {}/{n}", i + 1));
            let name = self.members[m].name.clone();
            let addr = self.wait(
                || format!("{name} to listen"),
                || read_addr(&addr_file, true),
            )?;
            self.members[m].metrics = Some(addr);
            auths.push(Authority {
                key: keys[i],
                url: format!("http://{addr}"),
            });
        }
        Ok(auths)
    }

    fn mix_count(&self) -> usize {
        usize::from(self.opts.layers) * usize::from(self.opts.mixes_per_layer)
    }

    fn authority_args(&self, auths: &[Authority]) -> Vec<String> {
        let mut args = Vec::new();
        for a in auths {
            args.push("--authority".into());
            args.push(format!("{}={}", a.key, a.url));
        }
        args.push("--threshold".into());
        args.push((auths.len() / 2 + 1).to_string());
        args
    }

    /// Inits and starts every mix and provider; returns the providers' ids.
    fn start_nodes(&mut self, auths: &[Authority]) -> anyhow::Result<Vec<NodeId>> {
        let mixes = self.mix_count();
        let providers = usize::from(self.opts.providers);
        self.ui
            .stage(format!("creating {mixes} mixes and {providers} providers"));
        let auth_args = self.authority_args(auths);
        // The first mix of the middle layer, in start order (the directory
        // reshuffles layers every epoch).
        let faulty = usize::from(self.opts.layers / 2) * usize::from(self.opts.mixes_per_layer);
        let mut started = Vec::new();
        let mut provider_ids = Vec::new();
        for i in 0..mixes + providers {
            let (role, name, kind) = if i < mixes {
                (Role::Mix, format!("mix{i}"), Kind::Mix)
            } else {
                let p = i - mixes;
                (Role::Provider, format!("provider{p}"), Kind::Provider)
            };
            let nd = crate::init::init_node(
                &self.bins.node,
                &self.root.join("nodes").join(&name),
                role,
                &auth_args,
            )?;
            // A localnet is thrown away when it stops: no need to forward
            // delayed packets for the default 10 s.
            edit_file(
                &nd.config,
                ConfigKind::Node,
                &[("mixing", "shutdown_drain", toml_str("1s"))],
            )?;
            if i == faulty
                && let Some(rate) = self.opts.fault_drop_rate
            {
                edit_file(
                    &nd.config,
                    ConfigKind::Node,
                    &[("mixing", "fault_drop_rate", format!("{rate:?}"))],
                )?;
                self.ui
                    .note(format!("test knob: {name} drops {rate} of its packets"));
            }
            if kind == Kind::Provider {
                provider_ids.push(nd.id);
            }
            let relay = match self.relays.as_mut() {
                Some(r) => {
                    let addr = r.add(&name)?;
                    edit_file(
                        &nd.config,
                        ConfigKind::Node,
                        &[("node", "public_address", toml_str(&addr.to_string()))],
                    )?;
                    Some(addr)
                }
                None => None,
            };
            let mut cmd = Command::new(&self.bins.node);
            cmd.args(["run", "--config"]).arg(&nd.config);
            let m = self.spawn(&name, kind, cmd, nd.dir.join("node.log"))?;
            let member = &mut self.members[m];
            member.config = Some(nd.config.clone());
            member.id = Some(nd.id);
            member.public = relay;
            started.push((m, nd.dir.join("data").join("bound.json")));
        }
        let total = started.len();
        for (i, (m, bound)) in started.into_iter().enumerate() {
            self.ui.stage(format!("starting nodes {}/{total}", i + 1));
            let name = self.members[m].name.clone();
            let addrs = self.wait(
                || format!("{name} to listen"),
                || {
                    let bytes = std::fs::read(&bound).ok()?;
                    serde_json::from_slice::<BoundAddresses>(&bytes).ok()
                },
            )?;
            let member = &mut self.members[m];
            member.metrics = Some(addrs.metrics);
            member.quic = Some(addrs.quic);
            match &self.relays {
                Some(r) => {
                    if let Some(relay) = r.get(&name) {
                        relay.set_upstream(addrs.quic);
                    }
                }
                None => member.public = Some(addrs.quic),
            }
        }
        Ok(provider_ids)
    }

    /// Until every mix and provider runs a topology listing it.
    fn wait_listed(&mut self) -> anyhow::Result<()> {
        let nodes: Vec<(String, Option<SocketAddr>)> = self
            .members
            .iter()
            .filter(|m| matches!(m.kind, Kind::Mix | Kind::Provider))
            .map(|m| (m.name.clone(), m.metrics))
            .collect();
        let total = nodes.len();
        let genesis = self.genesis;
        let ui = self.ui.clone();
        let unlisted = std::cell::RefCell::new(Vec::<String>::new());
        let mut next = Instant::now();
        self.wait(
            || format!("nodes to be listed: {}", unlisted.borrow().join(", ")),
            || {
                if Instant::now() < next {
                    return None;
                }
                next = Instant::now() + Duration::from_millis(500);
                let missing: Vec<String> = nodes
                    .iter()
                    .filter(|(_, addr)| metric(*addr, "loopmix_node_listed") != Some(1.0))
                    .map(|(n, _)| n.clone())
                    .collect();
                let now = unix_now();
                let when = if now < genesis {
                    format!("; first epoch in {} s", genesis - now)
                } else {
                    String::new()
                };
                ui.stage(format!(
                    "waiting for the signed topology: {}/{total} nodes listed{when}",
                    total - missing.len()
                ));
                let done = missing.is_empty();
                *unlisted.borrow_mut() = missing;
                done.then_some(())
            },
        )
    }

    fn init_client(
        &self,
        name: &str,
        provider: NodeId,
        auths: &[Authority],
    ) -> anyhow::Result<ClientDir> {
        let dir = self.root.join("clients").join(name);
        let mut cmd = Command::new(&self.bins.client);
        cmd.arg("init")
            .arg("--dir")
            .arg(&dir)
            .args(["--provider", &provider.to_string()]);
        for a in auths {
            cmd.args(["--authority", &format!("{}={}", a.key, a.url)]);
        }
        cmd.args(["--threshold", &(auths.len() / 2 + 1).to_string()]);
        run_output(&mut cmd, "loopmix-client init")?;
        let config = dir.join("client.toml");
        let fixed_metrics = if self.opts.stand_in_clients {
            Some(free_port()?)
        } else {
            None
        };
        let listen = fixed_metrics.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut edits = vec![("metrics", "listen", toml_str(&listen))];
        if !self.opts.directory_defaults {
            edits.push((
                "messages",
                "pull_interval",
                toml_str(&humantime::format_duration(self.preset.pull_interval).to_string()),
            ));
        }
        edit_file(&config, ConfigKind::Client, &edits)?;
        let text = std::fs::read_to_string(&config)?;
        let table: toml::Table = toml::from_str(&text)?;
        let data_dir = table
            .get("client")
            .and_then(|c| c.get("data_dir"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| anyhow!("{}: no [client] data_dir", config.display()))?;
        Ok(ClientDir {
            data_dir: dir.join(data_dir),
            config,
            fixed_metrics,
        })
    }

    fn start_clients(
        &mut self,
        auths: &[Authority],
        providers: &[NodeId],
    ) -> anyhow::Result<Ready> {
        self.ui.stage(if self.opts.service.is_some() {
            "starting the exit, the SOCKS5 client and the service"
        } else {
            "starting the exit and the SOCKS5 client"
        });
        let (Some(&p_exit), Some(&p_socks)) =
            (providers.first(), providers.get(1).or(providers.first()))
        else {
            bail!("no provider");
        };
        let exit = self.init_client("exit", p_exit, auths)?;
        let socks = self.init_client("socks5", p_socks, auths)?;
        if let Some(when) = self.opts.socks_early_reply {
            edit_file(
                &socks.config,
                ConfigKind::Client,
                &[("socks", "early_reply", toml_str(when.name()))],
            )?;
        }
        let exit_address = self.client_address(&exit)?;
        let stand_in = self.opts.stand_in_clients;
        let mut cmd = Command::new(&self.bins.client);
        if stand_in {
            cmd.args(["receive", "--config"]).arg(&exit.config);
        } else {
            cmd.args(["exit", "--config"]).arg(&exit.config);
            for p in self.opts.exit_policy() {
                cmd.args(["--allow", &p]);
            }
        }
        let log = exit.config.with_file_name("client.log");
        let m_exit = self.spawn("exit", Kind::Exit, cmd, log)?;
        self.members[m_exit].config = Some(exit.config.clone());
        self.members[m_exit].data_dir = Some(exit.data_dir.clone());
        let mut cmd = Command::new(&self.bins.client);
        if stand_in {
            cmd.args(["receive", "--config"]).arg(&socks.config);
        } else {
            cmd.args(["socks5", "--config"])
                .arg(&socks.config)
                .args(["--listen", &self.opts.socks_listen.to_string()])
                .args(["--exit", &exit_address]);
        }
        let log = socks.config.with_file_name("client.log");
        let m_socks = self.spawn("socks5", Kind::Socks, cmd, log)?;
        self.members[m_socks].config = Some(socks.config.clone());
        self.members[m_socks].data_dir = Some(socks.data_dir.clone());
        let socks_addr_file = socks.data_dir.join("socks5.addr");
        let mut started = vec![(m_exit, exit), (m_socks, socks)];
        if let Some(forward) = self.opts.service {
            let (m, dir, service) = self.start_service(forward, p_exit, p_socks, auths)?;
            self.service = Some(service);
            started.push((m, dir));
        }

        for (m, c) in &started {
            let m = *m;
            let name = self.members[m].name.clone();
            let file = c.data_dir.join("metrics.addr");
            let fixed = c.fixed_metrics;
            let addr = self.wait(
                || format!("{name} to serve its metrics (writing {})", file.display()),
                || match fixed {
                    Some(a) => loopmix_net::scrape::scrape(a).ok().map(|_| a),
                    None => read_addr(&file, false),
                },
            )?;
            self.members[m].metrics = Some(addr);
        }
        let socks5 = if stand_in {
            self.opts.socks_listen
        } else {
            let file = socks_addr_file;
            self.wait(
                || format!("the SOCKS5 proxy to listen (writing {})", file.display()),
                || read_addr(&file, false),
            )?
        };
        let clients: Vec<(String, Option<SocketAddr>)> = started
            .iter()
            .map(|&(m, _)| (self.members[m].name.clone(), self.members[m].metrics))
            .collect();
        let total = clients.len();
        let ui = self.ui.clone();
        let waiting = std::cell::RefCell::new(String::new());
        let mut next = Instant::now();
        self.wait(
            || format!("loop cover packets to return to {}", waiting.borrow()),
            || {
                if Instant::now() < next {
                    return None;
                }
                next = Instant::now() + Duration::from_millis(300);
                let missing: Vec<&str> = clients
                    .iter()
                    .filter(|(_, a)| {
                        metric(*a, "loopmix_client_loop_rtt_seconds_count").unwrap_or(0.0) <= 0.0
                    })
                    .map(|(n, _)| n.as_str())
                    .collect();
                ui.stage(format!(
                    "waiting for the clients' loop cover packets to come back ({} of {total})",
                    total - missing.len()
                ));
                *waiting.borrow_mut() = missing.join(" and ");
                missing.is_empty().then_some(())
            },
        )?;
        Ok(Ready {
            socks5,
            exit_address,
            service: self.service.clone(),
        })
    }

    /// The mixnet address of an `init`-ed client, as `loopmix-client
    /// address` prints it.
    fn client_address(&self, dir: &ClientDir) -> anyhow::Result<String> {
        run_output(
            Command::new(&self.bins.client)
                .arg("address")
                .arg("--config")
                .arg(&dir.config),
            "loopmix-client address",
        )
    }

    /// Inits and spawns the service (`loopmix-client serve --forward`) on
    /// provider `p_service`, and inits the client that reaches it, on
    /// `p_user` (so its streams cross the network from one provider to the
    /// other), without starting it: the banner prints its command.
    fn start_service(
        &mut self,
        forward: SocketAddr,
        p_service: NodeId,
        p_user: NodeId,
        auths: &[Authority],
    ) -> anyhow::Result<(usize, ClientDir, Service)> {
        let dir = self.init_client("service", p_service, auths)?;
        let user = self.init_client("service-user", p_user, auths)?;
        let address = self.client_address(&dir)?;
        let mut cmd = Command::new(&self.bins.client);
        cmd.args(["serve", "--config"])
            .arg(&dir.config)
            .args(["--forward", &forward.to_string()]);
        let log = dir.config.with_file_name("client.log");
        let m = self.spawn("service", Kind::Service, cmd, log)?;
        self.members[m].config = Some(dir.config.clone());
        self.members[m].data_dir = Some(dir.data_dir.clone());
        // Next to the localnet's own proxy, which has 1080 by default.
        let mut socks_listen = SocketAddr::from(([127, 0, 0, 1], 1081));
        if socks_listen == self.opts.socks_listen {
            socks_listen.set_port(1082);
        }
        let service = Service {
            address,
            forward,
            client_config: user.config,
            client_data_dir: user.data_dir,
            socks_listen,
        };
        Ok((m, dir, service))
    }

    /// Writes `localnet.json` (atomically): how to reach the network, and
    /// every member with its current state. Rewritten whenever a state
    /// changes; nothing before [`announce`](Self::announce).
    pub fn write_json(&self) -> anyhow::Result<()> {
        let Some(ready) = &self.ready else {
            return Ok(());
        };
        let mut metrics = BTreeMap::new();
        let mut logs = BTreeMap::new();
        let mut members = Vec::new();
        for m in &self.members {
            let url = m.metrics.map(|a| format!("http://{a}/metrics"));
            if let Some(u) = &url {
                metrics.insert(m.name.clone(), u.clone());
            }
            logs.insert(m.name.clone(), m.log.display().to_string());
            let proc = self.procs.get(&m.name);
            let state = proc.map(|c| c.state());
            members.push(serde_json::json!({
                "name": m.name,
                "kind": m.kind.word(),
                "pid": m.pid,
                "state": state.map_or("unknown", |s| s.word()),
                "exit": state.and_then(|s| s.exit()),
                "restarts": proc.map_or(0, |c| c.restarts),
                "node_id": m.id.map(|i| i.to_string()),
                "metrics": url,
                "log": m.log.display().to_string(),
            }));
        }
        let json = serde_json::json!({
            "socks5": ready.socks5.to_string(),
            "exit_address": ready.exit_address,
            // With --service: its address (what `socks5 --exit` names), the
            // local address it forwards to, and the client made to reach it.
            "service_address": ready.service.as_ref().map(|s| s.address.clone()),
            "service": ready.service.as_ref().map(|s| serde_json::json!({
                "address": s.address,
                "forward": s.forward.to_string(),
                "client_config": s.client_config.display().to_string(),
                "socks5_command": s.socks5_command(),
                "curl_command": s.curl_command(),
            })),
            "dir": self.root.display().to_string(),
            "preset": self.opts.preset.name(),
            "epoch_length_s": self.opts.epoch_length.as_secs(),
            "pid": std::process::id(),
            "control_socket": self.control_socket.as_ref().map(|p| p.display().to_string()),
            "pids": self.members.iter().map(|m| m.pid).collect::<Vec<_>>(),
            "metrics": metrics,
            "logs": logs,
            "members": members,
            // What a client of this network pins (`loopmix-client init
            // --authority KEY=URL ... --threshold K`).
            "authorities": self.auths.iter().map(|a| serde_json::json!({
                "key": a.key.to_string(),
                "url": a.url,
            })).collect::<Vec<_>>(),
            "threshold": self.auths.len() / 2 + 1,
        });
        let path = self.root.join(LOCALNET_JSON);
        loopmix_net::files::write_atomic(&path, &serde_json::to_vec_pretty(&json)?)?;
        Ok(())
    }

    /// Writes `localnet.json` and prints how to use the network.
    /// `control`: the `ctl` socket being served, or why there is none.
    pub fn announce(
        &mut self,
        ready: &Ready,
        took: Duration,
        control: Result<&Path, &str>,
    ) -> anyhow::Result<()> {
        self.ready = Some(ready.clone());
        self.control_socket = control.ok().map(Path::to_path_buf);
        self.write_json()?;

        let p = &self.preset;
        let mut out = String::new();
        out.push_str(&format!(
            "\nloopmix localnet is up after {:.1} s: {} authorities, {} layers x {} mixes, {} providers.\n",
            took.as_secs_f64(),
            self.opts.authorities,
            self.opts.layers,
            self.opts.mixes_per_layer,
            self.opts.providers,
        ));
        let predicted = self.opts.preset.prediction();
        out.push_str(&format!(
            "preset {}: {} ms per hop, λ_P {}/s (goodput at most ~{:.0} KB/s per client), \
             cover λ_L {}/s λ_D {}/s λ_M {}/s\n\
             predicted (simulator, this shape with 100 clients): ε {:.2}, mixing latency \
             median {:.0} ms, p95 {:.0} ms one way\n\n",
            self.opts.preset.name(),
            p.mean_hop_delay_ms,
            p.lambda_p_per_s,
            p.goodput_bound() / 1000.0,
            p.lambda_l_per_s,
            p.lambda_d_per_s,
            p.lambda_m_per_s,
            predicted.epsilon,
            predicted.median_s * 1000.0,
            predicted.p95_s * 1000.0,
        ));
        if self.opts.stand_in_clients {
            out.push_str("  (stand-in clients: no SOCKS5 proxy is running)\n");
        } else {
            out.push_str(&format!("  SOCKS5 proxy   {}\n", ready.socks5));
            out.push_str(&format!(
                "  try it        curl --socks5-hostname {} http://example.com/\n",
                ready.socks5
            ));
        }
        out.push_str(&format!("  exit address   {}\n", ready.exit_address));
        if let Some(s) = &ready.service {
            out.push_str(&format!(
                "\n  service        {} (forwards to {}; reached only over reply blocks)\n",
                s.address, s.forward
            ));
            out.push_str(&format!("  reach it       {}\n", s.socks5_command()));
            out.push_str(&format!("  then           {}\n\n", s.curl_command()));
        }
        out.push_str(&format!(
            "  files          {} (keys, configs, logs; {LOCALNET_JSON})\n\n  metrics\n",
            self.root.display()
        ));
        for m in &self.members {
            if let Some(a) = m.metrics {
                out.push_str(&format!("    {:<11} http://{a}/metrics\n", m.name));
            }
        }
        match control {
            Ok(_) => {
                // A middle-layer mix as the example: the one whose failure
                // is the most interesting to watch.
                let example = self
                    .members
                    .iter()
                    .filter(|m| m.kind == Kind::Mix)
                    .nth(usize::from(self.opts.mixes_per_layer))
                    .or_else(|| self.members.iter().find(|m| m.kind == Kind::Mix))
                    .map_or("mix0", |m| m.name.as_str());
                out.push_str(&format!(
                    "\nInject failures (kill | stop | cont | restart NAME; `status` lists names and states):\n  \
                     loopmix-localnet ctl stop {example} --dir {}\n",
                    self.root.display()
                ));
            }
            Err(why) => out.push_str(&format!("\n(ctl is unavailable: {why})\n")),
        }
        out.push_str("\nCtrl-C stops the network.\n");
        self.ui.print_stdout(&out);
        Ok(())
    }

    /// Shows the status line and serves `ctl` requests until a signal. A
    /// member that exits is reported once and the rest keeps running.
    pub fn watch(&mut self, control: Option<&ControlServer>) -> anyhow::Result<()> {
        let mut status = Status::new(&self.members, |n| self.state_or_running(n));
        let every = if self.ui.is_tty() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let mut next = Instant::now() + every.min(Duration::from_secs(1));
        loop {
            if self.signals.count() > 0 {
                return Ok(());
            }
            let mut changed = false;
            while let Err(e) = self.procs.check() {
                self.ui.note(format!(
                    "loopmix-localnet: {e}\nloopmix-localnet: the rest of the network keeps \
                     running; to start {} again: loopmix-localnet ctl restart {} --dir {}",
                    e.name,
                    e.name,
                    self.root.display()
                ));
                changed = true;
            }
            while let Some(pending) = control.and_then(|c| c.try_next()) {
                let reply = self.act(&pending.request);
                // localnet.json shows the change before `ctl` returns, so
                // a script can read it right after.
                if let Err(e) = self.write_json() {
                    self.ui
                        .note(format!("loopmix-localnet: writing {LOCALNET_JSON}: {e:#}"));
                }
                pending.answer(reply);
                changed = true;
            }
            if changed {
                if let Err(e) = self.write_json() {
                    self.ui
                        .note(format!("loopmix-localnet: writing {LOCALNET_JSON}: {e:#}"));
                }
                // Show the change now, not at the next tick.
                next = Instant::now();
            }
            if Instant::now() >= next {
                next = Instant::now() + every;
                let line = status.sample(&self.members, |n| self.state_or_running(n));
                self.ui.status(&line);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn state_or_running(&self, name: &str) -> State {
        self.state(name).unwrap_or(State::Running)
    }

    /// Every member: name, kind, state, pid, restarts (for `ctl status`).
    pub fn status_table(&self) -> String {
        let mut out = format!(
            "{:<11} {:<9} {:<28} {:>8}  {}",
            "NAME", "KIND", "STATE", "PID", "RESTARTS"
        );
        for m in &self.members {
            let state = self
                .state(&m.name)
                .map_or("-".to_string(), |s| s.to_string());
            let restarts = self.procs.get(&m.name).map_or(0, |c| c.restarts);
            out.push_str(&format!(
                "\n{:<11} {:<9} {:<28} {:>8}  {restarts}",
                m.name,
                m.kind.word(),
                state,
                m.pid
            ));
        }
        out
    }

    /// Does what a `ctl` request asks, to the child this localnet owns.
    pub fn act(&mut self, req: &Request) -> Reply {
        if req.action == Action::Status {
            return Reply::Ok(self.status_table());
        }
        let Some(name) = req.name.as_deref() else {
            return Reply::Unknown(format!("{} needs a member name", req.action.verb()));
        };
        let Some(pid) = self.member(name).map(|m| m.pid) else {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            return Reply::Unknown(format!(
                "no member named {name:?}; members: {}",
                names.join(", ")
            ));
        };
        let state = self.state_or_running(name);
        let verb = req.action.verb();
        let result = match req.action {
            Action::Status => Ok(String::new()),
            Action::Kill => self
                .kill(name)
                .map(|()| format!("killed {name} (pid {pid}) with SIGKILL"))
                .map_err(|_| anyhow!("{name} is not running ({state})")),
            Action::Stop if state == State::Stopped => Ok(format!("{name} is already stopped")),
            Action::Stop => self.pause(name).map(|()| {
                format!(
                    "stopped {name} (pid {pid}) with SIGSTOP: it keeps its sockets open and \
                     does nothing until `ctl cont {name}`"
                )
            }),
            Action::Cont => self
                .resume(name)
                .map(|()| format!("continued {name} (pid {pid}) with SIGCONT")),
            Action::Restart => self.restart_member(name, state),
        };
        match result {
            Ok(msg) => {
                self.ui.note(format!("loopmix-localnet: ctl {verb}: {msg}"));
                Reply::Ok(msg)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.ui
                    .note(format!("loopmix-localnet: ctl {verb} {name} failed: {msg}"));
                Reply::Error(msg)
            }
        }
    }

    /// `ctl restart`: stops `name` if it still runs (SIGTERM, SIGKILL after
    /// [`STOP_GRACE`]), then starts it again.
    fn restart_member(&mut self, name: &str, state: State) -> anyhow::Result<String> {
        if !matches!(state, State::Exited(_)) {
            self.terminate(name, STOP_GRACE)?;
        }
        self.procs.set_restarting(name, true);
        // Shows `restarting` while the new process starts.
        let _ = self.write_json();
        let result = self.restart(name, RESTART_TIMEOUT);
        self.procs.set_restarting(name, false);
        result?;
        let pid = self.member(name).map_or(0, |m| m.pid);
        Ok(format!("restarted {name} (pid {pid}); it listens again"))
    }

    /// Stops every process: SIGTERM, SIGKILL after [`STOP_GRACE`] or at
    /// once on another signal.
    pub fn stop(&mut self) {
        let running = self.procs.running();
        if running == 0 {
            self.ui.clear();
            return;
        }
        self.ui.stage(format!(
            "stopping {running} processes (Ctrl-C again to kill them at once)"
        ));
        let signals_before = self.signals.count();
        self.procs.terminate_all();
        let deadline = Instant::now() + STOP_GRACE;
        while self.procs.running() > 0
            && Instant::now() < deadline
            && self.signals.count() == signals_before
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let killed = self.procs.kill_all();
        self.ui.clear();
        if killed > 0 {
            eprintln!("loopmix-localnet: killed {killed} processes that did not stop in time");
        }
        eprintln!("loopmix-localnet: stopped {running} processes");
    }
}

/// A run directory: `dir`, which must be empty or not exist (a network
/// needs fresh keys), or a new temporary one named `prefix*` whose guard is
/// returned (dropping it removes the directory; `TempDir::keep` keeps it).
pub fn prepare_dir(
    dir: Option<&Path>,
    prefix: &str,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(d)
                    .with_context(|| format!("reading {}", d.display()))?
                    .next()
                    .is_some()
            {
                bail!(
                    "{} is not empty: a network needs fresh keys (choose a new --dir)",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Ok((std::path::absolute(d)?, None))
        }
        None => {
            let t = tempfile::Builder::new().prefix(prefix).tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// The whole command: start, announce, watch, stop.
pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    opts.validate()?;
    let bins = Binaries::next_to_current_exe()?;
    if !opts.stand_in_clients {
        bins.check_client_commands()?;
    }
    let (root, tmp) = prepare_dir(opts.dir.as_deref(), "loopmix-localnet-")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let signals = Signals::install(&rt)?;
    let started = Instant::now();
    // Declared after `tmp`: dropped (every process stopped) before the
    // temporary directory is removed.
    let mut net = Localnet::new(opts, bins, root.clone(), signals);
    let result = net.start().and_then(|ready| {
        // Served from when the network is ready (and localnet.json names
        // it) until it stops. A network without it still runs: the socket
        // is a convenience (its path can be too long for a Unix socket).
        let control = ControlServer::bind(&root);
        let why = control.as_ref().err().map(|e| format!("{e:#}"));
        let socket = match (&control, &why) {
            (Ok(c), _) => Ok(c.path()),
            (Err(_), Some(w)) => Err(w.as_str()),
            (Err(_), None) => Err("unknown error"),
        };
        net.announce(&ready, started.elapsed(), socket)?;
        net.watch(control.as_ref().ok())
        // `control` dropped here: the socket is gone before the network
        // stops, so no request arrives that nobody would act on.
    });
    net.stop();
    // Final states (kept with --dir): nothing runs any more.
    let _ = net.write_json();
    drop(net);
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("loopmix-localnet: interrupted during start-up");
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            let what = if e.is::<UnexpectedExit>() {
                "stopped the network"
            } else {
                "start-up failed"
            };
            if let Some(t) = tmp {
                let kept = t.keep();
                eprintln!("loopmix-localnet: {what}; logs kept in {}", kept.display());
            }
            Err(e)
        }
    }
}
