//! loopmix-localnet: the local-network tools. `loopmix-localnet` runs a whole loopmix network as separate processes on
//! loopback, from one command.
//!
//! It starts directory authorities, mixes, providers, an exit service and a
//! SOCKS5 client (and, with `--service`, a service behind the mixnet) with
//! fresh keys and configs in one directory, waits until
//! the network carries traffic (topology published and every node listed,
//! the clients' loop cover packets coming back), prints how to use it and a
//! live status line, and stops every process it started on Ctrl-C. A
//! member that dies is reported and the rest keeps running;
//! `loopmix-localnet ctl` kills, stops, continues and restarts members of a
//! running localnet.
//!
//! * [`network`]: what gets started, in which order, and when it is ready;
//! * [`init`]: the binaries' `init` commands (authority and node directories);
//! * [`process`]: the child processes and their shutdown;
//! * [`control`]: `ctl` and the socket the running localnet serves it on;
//! * [`status`]: the live status line;
//! * [`configs`]: editing configs, checked by each role's loader (`/metrics` is read with
//!   `loopmix_net::scrape`);
//! * [`compose`]: `loopmix-testnet-gen`, the container testnet's files;
//! * [`faults`]: fault injection without root: a UDP relay that drops,
//!   delays, duplicates and reorders datagrams in front of chosen nodes
//!   (`loopmix-faultrelay`, `tests/faults.rs`);
//! * [`soak`]: a long localnet run under SOCKS5 traffic that checks every
//!   process for memory and file-descriptor growth and every transfer for
//!   lost data (`loopmix-soak`).
//!
//! The parameter presets come from the simulator crate
//! ([`loopmix_sim::presets`]), which predicts what each buys.
//!
//! Tests drive a [`network::Localnet`] as a library too: with
//! [`network::Localnet::use_fault_relays`] every mix and provider sits
//! behind a [`crate::faults`] relay, and members can be killed and
//! restarted (`tests/faults.rs`, `docs/FAULTS.md`).

pub mod compose;
pub mod configs;
pub mod control;
pub mod faults;
pub mod init;
pub mod network;
pub mod process;
pub mod soak;
pub mod status;

pub use loopmix_sim::presets::{PAYLOAD_SIZE, Preset, PresetParams, STREAM_BYTES_PER_PACKET};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Start a whole loopmix network on this machine, one process per \
authority, mix, provider and client, and a SOCKS5 proxy that sends your traffic through it.";

const LONG_ABOUT: &str = "Start a whole loopmix network on this machine: directory \
authorities, layers of mixes, providers, an exit service and a SOCKS5 client, each a \
separate process on 127.0.0.1 with fresh keys and configs. Once the network carries \
traffic it prints the SOCKS5 address, a curl command to try it, and where every \
process serves its metrics; Ctrl-C stops everything. With --service it also publishes \
a local TCP service behind the mixnet and prints how to reach it. A process that dies is reported and the rest keeps running; `loopmix-localnet ctl kill|stop|cont|restart NAME --dir DIR` injects failures into a running localnet (see `loopmix-localnet ctl --help`).

Privacy or speed: every packet waits a random, exponentially distributed time at each \
hop (mean = the per-hop delay), and every client sends at fixed Poisson rates whether \
it has data or not (λ_P payload slots, filled with real data or cover; λ_L loops and \
λ_D drops; mixes send λ_M loops). Longer delays let each mix hold more packets at once \
and more cover traffic hides when and how much a user sends, so the anonymity sets an \
observer has to choose from grow; the price is latency (a request and its answer cross \
about ten delayed hops) and bandwidth spent on cover. Goodput per client is bounded by \
λ_P × ~1990 bytes/s: speed (20 ms per hop, λ_P 50/s) ≈ 100 KB/s, balanced (60 ms, \
30/s) ≈ 60 KB/s, privacy (250 ms, 30/s) ≈ 60 KB/s.";

const CTL_ABOUT: &str = "Kill, stop, continue or restart a member of a running localnet, \
or list the members and their states.";

const CTL_LONG_ABOUT: &str = "Kill, stop, continue or restart a member of a running localnet, \
or list the members and their states. The running loopmix-localnet does it (it owns the \
processes) and shows it in its status line and localnet.json.

  kill     SIGKILL: the member dies as in a crash
  stop     SIGSTOP: the member hangs with its sockets open (a hung node)
  cont     SIGCONT: a stopped member goes on
  restart  start it again with the same config, keys, data and addresses
  status   every member, its state (running, stopped, restarting, exited) and pid

Exit code: 0 done, 1 failed or no localnet running in DIR, 2 unknown member or command.";

/// Subcommands (without one, `loopmix-localnet` starts a network).
#[derive(Debug, Clone, Subcommand)]
pub enum Cmd {
    #[command(about = CTL_ABOUT, long_about = CTL_LONG_ABOUT)]
    Ctl(control::CtlArgs),
}

#[derive(Debug, Clone, Parser)]
#[command(name = "loopmix-localnet", version, about = ABOUT, long_about = LONG_ABOUT)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Options {
    #[command(subcommand)]
    pub command: Option<Cmd>,

    /// Directory for every key, config, database and log (kept afterwards;
    /// must be empty or not exist). Default: a fresh temporary directory,
    /// removed when the network stops (kept if start-up fails, for its logs).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Privacy/speed preset: per-hop delay and sending rates (see above); ε and
    /// the one-way mixing latency are the simulator's for this shape with 100
    /// clients (docs/SIMULATIONS.md, "The presets").
    #[arg(long, value_enum, default_value_t = Preset::Balanced)]
    pub preset: Preset,

    /// Directory authorities. A topology needs signatures from a majority.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub authorities: u16,

    /// Mix layers every route crosses.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub layers: u8,

    /// Mixes in each layer.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub mixes_per_layer: u16,

    /// Providers. The exit service uses the first, the SOCKS5 client the
    /// second (so its traffic crosses the network from one to the other).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub providers: u16,

    /// Where the SOCKS5 proxy listens (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
    pub socks_listen: SocketAddr,

    /// Also publish the local TCP service at ADDR (`127.0.0.1:8000`) behind
    /// the mixnet: a `loopmix-client serve --forward ADDR` member on the
    /// first provider, reachable only over reply blocks. The banner and
    /// `localnet.json` give its address and the SOCKS5 command to reach it
    /// (see docs/SERVICES.md).
    #[arg(long, value_name = "ADDR", conflicts_with = "stand_in_clients")]
    pub service: Option<SocketAddr>,

    /// Give up if the network is not ready within this time.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,

    /// Test knob: one mix (the first of the middle layer as started; layers
    /// are reshuffled every epoch) drops this fraction of the packets it
    /// processes (`[mixing] fault_drop_rate`).
    #[arg(long, hide = true, value_name = "RATE")]
    pub fault_drop_rate: Option<f64>,

    /// Directory epoch length (whole seconds, at least 4 s). Every epoch
    /// nodes get new Sphinx keys and layers are reshuffled: 30 s shows that
    /// quickly; the directory's production default is 20m (use it to watch
    /// the network survive a failure without an epoch change).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub epoch_length: Duration,

    /// Test knob: exit policy pattern (`host:port`, `*` wildcards), passed
    /// to the exit as `--allow`; repeatable. Default: loopback (where the
    /// local file server listens) on any port, named explicitly because `*`
    /// never reaches it, and any public host on ports 80 and 443.
    #[arg(long = "exit-allow", hide = true, value_name = "PATTERN")]
    pub exit_allow: Vec<String>,

    /// When the SOCKS5 proxy answers a CONNECT (`[socks] early_reply` of
    /// its config): never (after the exit's answer), known (at once for a
    /// target it reached before), always. Default: the client's (known).
    #[arg(long, value_enum, value_name = "WHEN")]
    pub socks_early_reply: Option<loopmix_client::config::EarlyReply>,

    /// Test knob: run `loopmix-client receive` in place of the exit and the
    /// SOCKS5 client (for a loopmix-client without those commands). No
    /// SOCKS5 proxy then.
    #[arg(long, hide = true)]
    pub stand_in_clients: bool,

    /// Test knob: keep the production defaults of `loopmix-directory init`
    /// (rates, per-hop delay, payload size) and of `loopmix-client init`
    /// (pull interval) in place of the preset's, to measure what the
    /// defaults cost.
    #[arg(long, hide = true)]
    pub directory_defaults: bool,
}

impl Options {
    /// The exit policy: `--exit-allow`, or the default.
    pub fn exit_policy(&self) -> Vec<String> {
        if self.exit_allow.is_empty() {
            // `127.0.0.0/8:*` also lets `localhost` be resolved and reached.
            ["127.0.0.0/8:*", "[::1]:*", "*:80", "*:443"]
                .map(String::from)
                .to_vec()
        } else {
            self.exit_allow.clone()
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(r) = self.fault_drop_rate
            && !(0.0..=1.0).contains(&r)
        {
            anyhow::bail!("--fault-drop-rate must be in 0..=1");
        }
        let e = self.epoch_length;
        if e < Duration::from_secs(4) || e.subsec_nanos() != 0 {
            anyhow::bail!("--epoch-length must be whole seconds, at least 4s");
        }
        Ok(())
    }
}

/// Runs `loopmix-localnet` with `opts`; returns the process exit code.
pub fn main(opts: Options) -> std::process::ExitCode {
    if let Some(Cmd::Ctl(args)) = opts.command {
        return control::main(args);
    }
    match network::run(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loopmix-localnet: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `[network]` keys of an authority's `directory.toml` that `params`
/// sets (for [`configs::edit_file`]).
pub fn directory_edits(
    params: &PresetParams,
    layers: u8,
) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("network", "layers", layers.to_string()),
        (
            "network",
            "mean_hop_delay_ms",
            format!("{:?}", params.mean_hop_delay_ms),
        ),
        (
            "network",
            "lambda_p_per_s",
            format!("{:?}", params.lambda_p_per_s),
        ),
        (
            "network",
            "lambda_l_per_s",
            format!("{:?}", params.lambda_l_per_s),
        ),
        (
            "network",
            "lambda_d_per_s",
            format!("{:?}", params.lambda_d_per_s),
        ),
        (
            "network",
            "lambda_m_per_s",
            format!("{:?}", params.lambda_m_per_s),
        ),
        ("network", "payload_size", PAYLOAD_SIZE.to_string()),
    ]
}
