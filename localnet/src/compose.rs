//! `loopmix-testnet-gen`: keys and configs for the container testnet of
//! `deploy/docker/docker-compose.yml`, from one command.
//!
//! Where `loopmix-localnet` starts processes on loopback with ephemeral
//! ports, a container testnet needs every address fixed before anything
//! starts: each service has its own container, hostname and IPv4 address on
//! a private network. Authorities name each other and are named by URL with
//! their Compose hostname (`http://auth0:8700`); a node's descriptor carries
//! an `ip:port` (`[node] public_address`), so mixes and providers get static
//! addresses on the network's subnet. QUIC identities are pinned by key; the
//! addresses come from the signed topology document.
//!
//! The output directory holds one sub-directory per service (mounted at
//! `/loopmix` in its container), `testnet.env` (the variables the Compose
//! file needs: `docker-compose --env-file`), and `testnet.json` (ids,
//! addresses and metrics URLs, for scripts and people).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;

use super::Preset;
use super::configs::{ConfigKind, edit_file, toml_str};
use super::network::{Binaries, run_output};

/// Port of every authority's HTTP API (and its `/metrics`).
pub const AUTHORITY_PORT: u16 = 8700;
/// UDP port QUIC listens on in every mix and provider.
pub const NODE_PORT: u16 = 1789;
/// HTTP port of a node's `/metrics`.
pub const NODE_METRICS_PORT: u16 = 9189;
/// HTTP port of a client's `/metrics` (exit, SOCKS5 client).
pub const CLIENT_METRICS_PORT: u16 = 9190;
/// The SOCKS5 port inside the SOCKS5 client's container.
pub const SOCKS_PORT: u16 = 1080;
/// The file server's HTTP port.
pub const FILESERVER_PORT: u16 = 8000;

const ABOUT: &str = "Generate keys and configs for the loopmix container testnet \
(deploy/docker/docker-compose.yml): 3 directory authorities, 3 layers x 2 mixes, \
2 providers, an exit service, a SOCKS5 client, a file server, and two spare clients \
(sender at provider0, receiver at provider1) for messaging tests.";

const LONG_ABOUT: &str = "Generate keys and configs for the loopmix container testnet \
(deploy/docker/docker-compose.yml). Every service gets a directory under --out, mounted \
at /loopmix in its container: 3 directory authorities (auth0-2, http://authN:8700), \
3 layers x 2 mixes (mix0-5) and 2 providers (provider0-1) on static addresses of the \
--subnet network (QUIC on UDP 1789, metrics on 9189), an exit service at provider0 and a \
SOCKS5 client at provider1 (metrics on 9190), a file server's document root (www/), and \
two spare clients: sender (provider0) and receiver (provider1).

Also written: testnet.env (the variables the Compose file reads; pass it with \
`docker-compose --env-file`) and testnet.json (ids, addresses, metrics URLs).

Then:
    docker-compose -p loopmix-testnet --env-file OUT/testnet.env \\
        -f deploy/docker/docker-compose.yml up -d";

#[derive(Debug, Clone, Parser)]
#[command(name = "loopmix-testnet-gen", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct GenOptions {
    /// Output directory (must be empty or not exist). Keys are written
    /// here, mode 0600: keep it private.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The private network's /24, as its first three octets. Services get
    /// fixed addresses .10-.50 in it; `docker-compose run` containers get
    /// addresses from .128/25.
    #[arg(long, value_name = "A.B.C", default_value = "10.77.0")]
    pub subnet: String,

    /// Epoch length (whole seconds, at least 4 s): every epoch the
    /// directory reshuffles layers and nodes change Sphinx keys. Short
    /// epochs make a testnet react fast to nodes that come and go.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub epoch_length: Duration,

    /// Privacy/speed preset (as `loopmix-localnet --preset`).
    #[arg(long, value_enum, default_value_t = Preset::Balanced)]
    pub preset: Preset,

    /// Host port (on 127.0.0.1) the SOCKS5 proxy is published on; empty:
    /// any free port (`docker-compose port socks5 1080` tells which).
    #[arg(long, value_name = "PORT", default_value = "")]
    pub socks_port: String,
}

/// One service of the testnet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub role: &'static str,
    /// Its static address on the network (none for the spare clients,
    /// which run with `docker-compose run` / `docker run`).
    pub ip: Option<String>,
    /// Node id or authority key (base58), or client address.
    pub id: String,
    /// Its `/metrics` URL inside the network.
    pub metrics: Option<String>,
}

fn check_subnet(s: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u8>().is_err()) {
        bail!("--subnet must be the first three octets of a /24, e.g. 10.77.0 (got {s:?})");
    }
    Ok(())
}

/// Generates the testnet described in [`LONG_ABOUT`].
pub fn generate(opts: &GenOptions) -> anyhow::Result<Vec<Service>> {
    check_subnet(&opts.subnet)?;
    let e = opts.epoch_length;
    if e < Duration::from_secs(4) || e.subsec_nanos() != 0 {
        bail!("--epoch-length must be whole seconds, at least 4s");
    }
    if !opts.socks_port.is_empty() && opts.socks_port.parse::<u16>().is_err() {
        bail!("--socks-port must be a port number or empty");
    }
    let bins = Binaries::next_to_current_exe()?;
    bins.check_client_commands()?;
    let out = &opts.out;
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty: a testnet needs fresh keys", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(out)?;
    let net = &opts.subnet;
    let preset = opts.preset.params();
    let mut services = Vec::new();

    // Authorities: keys first, then configs naming the others.
    let auth_names: Vec<String> = (0..3).map(|i| format!("auth{i}")).collect();
    let mut auth_keys = Vec::new();
    for name in &auth_names {
        let key = run_output(
            Command::new(&bins.directory)
                .arg("init")
                .arg("--dir")
                .arg(out.join(name)),
            "loopmix-directory init",
        )?;
        auth_keys.push(key);
    }
    let url = |name: &str| format!("http://{name}:{AUTHORITY_PORT}");
    let threshold = auth_names.len() / 2 + 1;
    let secs = e.as_secs();
    let lead = (secs / 10).clamp(2, 10).min(secs / 2);
    let genesis = loopmix_net::clock::unix_now();
    for (i, name) in auth_names.iter().enumerate() {
        let mut cmd = Command::new(&bins.directory);
        cmd.arg("init")
            .arg("--dir")
            .arg(out.join(name))
            .args(["--listen", &format!("0.0.0.0:{AUTHORITY_PORT}")])
            .args(["--threshold", &threshold.to_string()])
            .args(["--epoch-length", &format!("{secs}s")])
            .args(["--registration-lead", &format!("{lead}s")])
            .args(["--genesis", &genesis.to_string()])
            .arg("--force");
        for (j, other) in auth_names.iter().enumerate() {
            if j != i {
                cmd.args(["--peer", &format!("{}={}", auth_keys[j], url(other))]);
            }
        }
        if run_output(&mut cmd, "loopmix-directory init")? != auth_keys[i] {
            bail!("init --force changed the key of {name}");
        }
        edit_file(
            &out.join(name).join(loopmix_directory::config::CONFIG_FILE),
            ConfigKind::Directory,
            &super::directory_edits(&preset, 3),
        )?;
        services.push(Service {
            name: name.clone(),
            role: "authority",
            ip: Some(format!("{net}.{}", 10 + i)),
            id: auth_keys[i].clone(),
            metrics: Some(format!("{}/metrics", url(name))),
        });
    }
    let mut auth_args = Vec::new();
    for (name, key) in auth_names.iter().zip(&auth_keys) {
        auth_args.push("--authority".to_string());
        auth_args.push(format!("{key}={}", url(name)));
    }
    auth_args.push("--threshold".into());
    auth_args.push(threshold.to_string());

    // Mixes .20-.25, providers .30-.31.
    let mut nodes: Vec<(String, &'static str, String)> = (0..6)
        .map(|i| (format!("mix{i}"), "mix", format!("{net}.{}", 20 + i)))
        .collect();
    nodes.extend((0..2).map(|i| {
        (
            format!("provider{i}"),
            "provider",
            format!("{net}.{}", 30 + i),
        )
    }));
    let mut provider_ids = Vec::new();
    for (name, role, ip) in &nodes {
        let dir = out.join(name);
        let printed = run_output(
            Command::new(&bins.node)
                .arg("init")
                .arg("--dir")
                .arg(&dir)
                .args(["--role", role])
                .args(["--listen", &format!("0.0.0.0:{NODE_PORT}")])
                .args(["--metrics", &format!("0.0.0.0:{NODE_METRICS_PORT}")])
                .args(&auth_args),
            "loopmix-node init",
        )?;
        let entry: serde_json::Value = serde_json::from_str(&printed)
            .with_context(|| format!("loopmix-node init printed {printed:?}"))?;
        let id = entry
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("loopmix-node init printed no id: {printed}"))?
            .to_string();
        edit_file(
            &dir.join("node.toml"),
            ConfigKind::Node,
            &[(
                "node",
                "public_address",
                toml_str(&format!("{ip}:{NODE_PORT}")),
            )],
        )?;
        if *role == "provider" {
            provider_ids.push(id.clone());
        }
        services.push(Service {
            name: name.clone(),
            role,
            ip: Some(ip.clone()),
            id,
            metrics: Some(format!("http://{name}:{NODE_METRICS_PORT}/metrics")),
        });
    }

    // Clients: exit at provider0, SOCKS5 at provider1 (their streams cross
    // the whole network); spare sender/receiver for messaging tests.
    let clients: [(&str, &str, usize, Option<String>); 4] = [
        ("exit", "exit", 0, Some(format!("{net}.40"))),
        ("socks5", "socks5", 1, Some(format!("{net}.41"))),
        ("sender", "client", 0, None),
        ("receiver", "client", 1, None),
    ];
    let mut exit_address = String::new();
    let mut receiver_address = String::new();
    for (name, role, provider, ip) in clients {
        let dir = out.join(name);
        let provider_id = provider_ids
            .get(provider)
            .ok_or_else(|| anyhow!("no provider{provider}"))?;
        run_output(
            Command::new(&bins.client)
                .arg("init")
                .arg("--dir")
                .arg(&dir)
                .args(["--provider", provider_id])
                .args(&auth_args),
            "loopmix-client init",
        )?;
        let config = dir.join("client.toml");
        let mut edits = vec![(
            "messages",
            "pull_interval",
            toml_str(&humantime::format_duration(preset.pull_interval).to_string()),
        )];
        if ip.is_some() {
            edits.push((
                "metrics",
                "listen",
                toml_str(&format!("0.0.0.0:{CLIENT_METRICS_PORT}")),
            ));
        }
        edit_file(&config, ConfigKind::Client, &edits)?;
        let address = run_output(
            Command::new(&bins.client)
                .arg("address")
                .arg("--config")
                .arg(&config),
            "loopmix-client address",
        )?;
        match name {
            "exit" => exit_address = address.clone(),
            "receiver" => receiver_address = address.clone(),
            _ => {}
        }
        services.push(Service {
            name: name.to_string(),
            role,
            metrics: ip
                .as_ref()
                .map(|_| format!("http://{name}:{CLIENT_METRICS_PORT}/metrics")),
            ip,
            id: address,
        });
    }
    std::fs::create_dir_all(out.join("www"))?;
    services.push(Service {
        name: "fileserver".into(),
        role: "fileserver",
        ip: Some(format!("{net}.50")),
        id: String::new(),
        metrics: None,
    });

    write_env(&out, opts, &exit_address)?;
    let json = serde_json::json!({
        "subnet": format!("{net}.0/24"),
        "epoch_length_s": secs,
        "genesis": genesis,
        "preset": opts.preset.name(),
        "exit_address": exit_address,
        "receiver_address": receiver_address,
        "fileserver_url": format!("http://fileserver:{FILESERVER_PORT}/"),
        "services": services,
    });
    std::fs::write(out.join("testnet.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(services)
}

/// `testnet.env`: what the Compose file substitutes.
fn write_env(out: &Path, opts: &GenOptions, exit_address: &str) -> anyhow::Result<()> {
    // Containers run as the owner of the generated files, so they can read
    // the keys (0600) and write their state, without running as root when
    // the files are not root's.
    let meta = std::fs::metadata(out)?;
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("LOOPMIX_TESTNET_DIR", out.display().to_string()),
        ("LOOPMIX_SUBNET", opts.subnet.clone()),
        ("LOOPMIX_EXIT_ADDRESS", exit_address.to_string()),
        ("LOOPMIX_SOCKS_PORT", opts.socks_port.clone()),
        ("LOOPMIX_UID", meta.uid().to_string()),
        ("LOOPMIX_GID", meta.gid().to_string()),
    ]);
    let mut text = String::from(
        "# Generated by loopmix-testnet-gen: docker-compose --env-file this-file ...\n",
    );
    for (k, v) in vars {
        if v.contains(char::is_whitespace) || v.contains('#') {
            bail!("{k} value {v:?} cannot go in an env file (whitespace or #)");
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(out.join("testnet.env"), text)?;
    Ok(())
}

/// Runs `loopmix-testnet-gen`; returns the process exit code.
pub fn main(opts: GenOptions) -> std::process::ExitCode {
    match generate(&opts) {
        Ok(services) => {
            let dir: PathBuf = std::path::absolute(&opts.out).unwrap_or(opts.out.clone());
            println!(
                "testnet configs for {} services in {}",
                services.len(),
                dir.display()
            );
            println!(
                "start it: docker-compose -p loopmix-testnet --env-file {}/testnet.env \
                 -f deploy/docker/docker-compose.yml up -d",
                dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopmix-testnet-gen: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_is_three_octets() {
        assert!(check_subnet("10.77.0").is_ok());
        assert!(check_subnet("10.77").is_err());
        assert!(check_subnet("10.77.0.0").is_err());
        assert!(check_subnet("10.777.0").is_err());
    }
}
