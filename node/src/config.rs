//! `loopmix-node` configuration: a TOML file, strictly parsed.
//!
//! `loopmix-node init` writes [`NodeConfig::template`], which documents every
//! key. Relative paths are relative to the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopmix_core::pki::{AuthorityEntry, validate_pinned};
use loopmix_core::topology::Role;
use serde::{Deserialize, Serialize};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Config format version, for future migrations.
    pub version: u32,
    pub node: NodeSection,
    /// Where the topology comes from: exactly one of `[directory]` (a
    /// network) or `[topology]` (a fixed file, for closed test setups).
    #[serde(default)]
    pub directory: Option<DirectorySection>,
    #[serde(default)]
    pub topology: Option<TopologySection>,
    pub metrics: MetricsSection,
    #[serde(default)]
    pub mixing: MixingSection,
    #[serde(default)]
    pub replay: ReplaySection,
    #[serde(default)]
    pub cover: CoverSection,
    /// Only read when `node.role = "provider"`.
    #[serde(default)]
    pub provider: ProviderSection,
}

/// A provider's inboxes and its link with clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSection {
    /// Registered clients (inboxes) at most.
    pub max_clients: usize,
    /// Messages one inbox holds at most; beyond, packets drop as `inbox_full`
    /// (unacknowledged, so their senders retry later).
    pub inbox_max_messages: usize,
    /// Bytes one inbox holds at most.
    pub inbox_max_bytes: u64,
    /// Messages older than this are deleted unread.
    #[serde(with = "humantime_serde")]
    pub inbox_max_age: Duration,
    /// Messages per pull answer, padded with dummies to exactly this many.
    pub pull_slots: usize,
    /// Final-hop packets waiting to be stored; beyond, dropped as `overload`.
    pub delivery_queue: usize,
    /// Sphinx packets per second one client (one client key) may send us;
    /// beyond, dropped as `rate_limited` before any Sphinx work. 0 = no limit.
    pub client_rate: u32,
    /// Packets a client may send at once after being idle.
    pub client_burst: u32,
}

impl Default for ProviderSection {
    fn default() -> Self {
        Self {
            max_clients: 100_000,
            inbox_max_messages: 10_000,
            inbox_max_bytes: 64 * 1024 * 1024,
            inbox_max_age: Duration::from_secs(7 * 24 * 3600),
            pull_slots: loopmix_core::provider_control::DEFAULT_PULL_SLOTS,
            delivery_queue: 4096,
            // A client sends lambda_P + lambda_L + lambda_D packets/s in all
            // (4 at the directory's defaults, 54 in the fastest localnet
            // preset); 200 is ~4x that. The burst covers a client flushing
            // its whole link queue (1024) after a reconnect.
            client_rate: 200,
            client_burst: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub role: Role,
    pub identity_key: PathBuf,
    /// Static X25519 Sphinx key; only with `[topology]`. With `[directory]`
    /// the node makes one key per epoch under `data_dir/sphinx/`.
    #[serde(default)]
    pub sphinx_key: Option<PathBuf>,
    /// UDP address for QUIC. Port 0 picks a free port (see `bound.json`).
    pub listen: SocketAddr,
    /// Address peers dial, published in descriptors. Defaults to the bound
    /// address when `listen` names a specific IP.
    #[serde(default)]
    pub public_address: Option<SocketAddr>,
    /// State directory: `bound.json`, replay filters, per-epoch keys.
    pub data_dir: PathBuf,
}

/// The directory authorities this node registers with and trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySection {
    /// Pinned authorities: their Ed25519 keys sign topology documents.
    pub authorities: Vec<AuthorityEntry>,
    /// k: valid signatures from pinned keys a document needs.
    pub threshold: usize,
    /// Timeout of one HTTP request to an authority.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// After a new epoch starts, the previous epoch's Sphinx key (and its
    /// replay filter) is kept this long, so packets built just before the
    /// boundary and still in flight are processed. Then both are deleted.
    #[serde(default = "default_key_overlap", with = "humantime_serde")]
    pub key_overlap: Duration,
}

impl Default for DirectorySection {
    fn default() -> Self {
        Self {
            authorities: Vec::new(),
            threshold: 1,
            request_timeout: default_request_timeout(),
            key_overlap: default_key_overlap(),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_key_overlap() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySection {
    /// JSON topology document (see docs/PROTOCOL.md).
    pub file: PathBuf,
    /// How often the file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// HTTP address serving GET /metrics. Keep it private (loopback/VPN).
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixingSection {
    /// Header delays above this are clamped to it.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// A packet forwarded later than its deadline plus this is dropped as `late`.
    #[serde(with = "humantime_serde")]
    pub late_tolerance: Duration,
    /// Sphinx worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Async I/O (QUIC) threads; 0 means half the cores, at least one. The
    /// Sphinx workers already use every core; more I/O threads only add
    /// context switches.
    pub io_threads: usize,
    /// Packets waiting for a Sphinx worker; beyond it they drop as `overload`.
    pub ingress_queue: usize,
    /// A packet that waited longer than this for a Sphinx worker is dropped
    /// as `overload` without being unwrapped, so sustained overload costs
    /// drops, not seconds of queueing delay. 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub ingress_max_wait: Duration,
    /// Sphinx packets per second one topology node may send us; beyond,
    /// dropped as `rate_limited` before any Sphinx work, so one neighbour
    /// cannot take the whole ingress queue. 0 = no limit.
    pub peer_rate: u32,
    /// Packets a node may send at once after being idle (bucket size).
    pub peer_burst: u32,
    /// Packets held in the delay queue; beyond it they drop as `overload`.
    pub delay_queue_limit: usize,
    /// Packets queued per next hop; beyond it they drop as `overload`/`link_down`.
    pub egress_queue: usize,
    /// On SIGINT/SIGTERM, keep forwarding delayed packets at their deadline for
    /// at most this long; what is still queued then is counted as `shutdown`.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
    /// TESTING ONLY: drop this fraction of processed packets at random
    /// (counted as `fault_injected`), to show that clients recover from loss.
    /// Not in the template; never set it on a real network.
    pub fault_drop_rate: f64,
}

impl Default for MixingSection {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_secs(10),
            late_tolerance: Duration::from_millis(500),
            workers: 0,
            io_threads: 0,
            ingress_queue: 16_384,
            // Under sustained overload every accepted packet waits about
            // this long, so it is the extra per-hop delay an overloaded node
            // adds; a burst of capacity x 100 ms passes untouched.
            ingress_max_wait: Duration::from_millis(100),
            // One neighbour legitimately sends about (its layer's traffic) /
            // (nodes in our layer): a few thousand packets/s even for
            // 10,000 clients at the directory's default rates. 10,000 is
            // generous for that and still below what one 2-core node
            // unwraps (see `loopmix-node bench`).
            peer_rate: 10_000,
            // 0.2 s at peer_rate: many egress batches (256) of an honest
            // neighbour, yet a flooder's first gulp after being idle stays
            // near what the node unwraps within ingress_max_wait.
            peer_burst: 2_000,
            delay_queue_limit: 500_000,
            egress_queue: 16_384,
            shutdown_drain: Duration::from_secs(10),
            fault_drop_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplaySection {
    /// Replay tags one Sphinx key's filter is sized for.
    pub capacity: usize,
    /// False-positive rate at that capacity (an honest packet wrongly dropped).
    pub fp_rate: f64,
    /// How often the filter is saved to `data_dir/replay/<key>.bloom` (also saved
    /// on shutdown), so a restart with the same key does not forget tags.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for ReplaySection {
    fn default() -> Self {
        Self {
            capacity: 10_000_000,
            fp_rate: 1e-6,
            flush_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoverSection {
    /// Send loop cover at the topology's λ_M. Turning it off weakens the
    /// node's anonymity and its (n−1)-attack detection; use for benchmarks only.
    pub enabled: bool,
    /// A loop not back after this is counted lost; 0 means derive it from the
    /// topology (3 × expected route delay + 5 s).
    #[serde(with = "humantime_serde")]
    pub loop_timeout: Duration,
    /// Loops awaiting return; the oldest is counted lost beyond this.
    pub pending_limit: usize,
}

impl Default for CoverSection {
    fn default() -> Self {
        Self {
            enabled: true,
            loop_timeout: Duration::ZERO,
            pending_limit: 10_000,
        }
    }
}

pub use loopmix_net::config::ConfigError;

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: NodeConfig = loopmix_net::config::read_toml(path)?;
        let invalid = |field: &str, reason: String| ConfigError::invalid(path, field, reason);
        loopmix_net::config::check_version(path, cfg.version, CONFIG_VERSION)?;
        if !(0.0..1.0).contains(&cfg.mixing.fault_drop_rate) {
            return Err(invalid(
                "mixing.fault_drop_rate",
                "must be in [0, 1)".into(),
            ));
        }
        for (field, rate, burst) in [
            (
                "mixing.peer_burst",
                cfg.mixing.peer_rate,
                cfg.mixing.peer_burst,
            ),
            (
                "provider.client_burst",
                cfg.provider.client_rate,
                cfg.provider.client_burst,
            ),
        ] {
            // A zero bucket would let nothing through: refuse it by name
            // rather than silently cut the node off.
            if rate > 0 && burst == 0 {
                return Err(invalid(
                    field,
                    "must be > 0 when the rate is set (it is the bucket size)".into(),
                ));
            }
        }
        if !(cfg.replay.fp_rate > 0.0 && cfg.replay.fp_rate < 1.0) {
            return Err(invalid("replay.fp_rate", "must be in (0, 1)".into()));
        }
        for (field, v) in [
            ("mixing.ingress_queue", cfg.mixing.ingress_queue),
            ("mixing.delay_queue_limit", cfg.mixing.delay_queue_limit),
            ("mixing.egress_queue", cfg.mixing.egress_queue),
            ("replay.capacity", cfg.replay.capacity),
            ("provider.max_clients", cfg.provider.max_clients),
            (
                "provider.inbox_max_messages",
                cfg.provider.inbox_max_messages,
            ),
            ("provider.pull_slots", cfg.provider.pull_slots),
            ("provider.delivery_queue", cfg.provider.delivery_queue),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be > 0".into()));
            }
        }
        // A pull confirms at most this many messages, one answer's worth.
        let max_slots = loopmix_core::provider_control::MAX_PULL_SLOTS;
        if cfg.provider.pull_slots > max_slots {
            return Err(invalid(
                "provider.pull_slots",
                format!("at most {max_slots}"),
            ));
        }
        match (&cfg.directory, &cfg.topology) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "directory",
                    "set either [directory] or [topology], not both".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "directory",
                    "missing: set [directory] (authorities to register with) or [topology] (a fixed file)".into(),
                ));
            }
            (Some(d), None) => {
                if cfg.node.sphinx_key.is_some() {
                    return Err(invalid(
                        "node.sphinx_key",
                        "not used with [directory]: Sphinx keys are made per epoch in data_dir/sphinx/".into(),
                    ));
                }
                validate_directory(d).map_err(|(f, r)| invalid(f, r))?;
            }
            (None, Some(_)) => {
                if cfg.node.sphinx_key.is_none() {
                    return Err(invalid(
                        "node.sphinx_key",
                        "required with [topology]".into(),
                    ));
                }
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut cfg.node.identity_key);
        rebase(&mut cfg.node.data_dir);
        if let Some(p) = cfg.node.sphinx_key.as_mut() {
            rebase(p);
        }
        if let Some(t) = cfg.topology.as_mut() {
            rebase(&mut t.file);
        }
        Ok(cfg)
    }

    pub fn worker_threads(&self) -> usize {
        if self.mixing.workers > 0 {
            self.mixing.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    pub fn io_threads(&self) -> usize {
        if self.mixing.io_threads > 0 {
            self.mixing.io_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        }
    }

    /// The commented default config `init` writes.
    ///
    /// With `directory`, the node registers with those authorities and makes
    /// a Sphinx key per epoch; without, it reads a fixed `topology.json` and
    /// uses one static key `sphinx.pem`.
    pub fn template(
        role: Role,
        listen: SocketAddr,
        metrics: SocketAddr,
        directory: Option<&DirectorySection>,
    ) -> String {
        let (sphinx, source) = match directory {
            Some(d) => {
                let mut auth = String::new();
                for a in &d.authorities {
                    auth.push_str(&format!(
                        "\n[[directory.authorities]]\nkey = \"{}\"\nurl = \"{}\"\n",
                        a.key, a.url
                    ));
                }
                (
                    String::new(),
                    format!(
                        r#"[directory]
# A topology document is accepted only with at least `threshold` valid
# signatures from the pinned authority keys below. The node registers a
# signed descriptor (identity, this epoch's Sphinx key, public_address, role)
# with every authority for each upcoming epoch.
threshold = {k}
request_timeout = "{rt}"
# The previous epoch's Sphinx key and replay filter are kept this long after
# an epoch boundary so packets in flight are still processed, then deleted.
key_overlap = "{ko}"
{auth}"#,
                        k = d.threshold,
                        rt = humantime::format_duration(d.request_timeout),
                        ko = humantime::format_duration(d.key_overlap),
                    ),
                )
            }
            None => (
                "# X25519 Sphinx key (PKCS#8 PEM, mode 0600); its public half is in the topology.\n\
                 sphinx_key = \"sphinx.pem\"\n"
                    .to_string(),
                r#"[topology]
# A fixed topology document (JSON), for closed test setups. The node must be
# listed in it with this identity and Sphinx key, or it refuses to start.
file = "topology.json"
# How often the file is checked for changes; a change that does not validate
# is logged and counted, and the last valid topology stays in force.
reload_interval = "2s"
"#
                .to_string(),
            ),
        };
        let provider = if role == Role::Provider {
            let p = ProviderSection::default();
            format!(
                r#"
[provider]
# Inboxes live in data_dir/inbox.redb (every write fsync'd before the
# packet is acknowledged). Full inboxes refuse (and do not acknowledge) new
# packets; old messages are deleted unread after inbox_max_age.
max_clients = {mc}
inbox_max_messages = {mm}
inbox_max_bytes = {mb}
inbox_max_age = "{age}"
# Each pull answer holds exactly this many messages (dummies pad it), so its
# size does not tell how much mail there was (at most 32). A client pulling
# every pull_interval receives at most pull_slots / pull_interval messages/s.
pull_slots = {ps}
delivery_queue = {dq}
# Per-client packet limit (token bucket per client key), applied before any
# Sphinx work; the excess is dropped (reason "rate_limited") and the client
# named in the log once per 10 s. An honest client sends
# lambda_p + lambda_l + lambda_d packets/s (see the directory's [network]);
# keep client_rate several times that, and client_burst above the client's
# link queue (1024). 0 = no limit.
client_rate = {cr}
client_burst = {cb}
"#,
                mc = p.max_clients,
                mm = p.inbox_max_messages,
                mb = p.inbox_max_bytes,
                age = humantime::format_duration(p.inbox_max_age),
                ps = p.pull_slots,
                dq = p.delivery_queue,
                cr = p.client_rate,
                cb = p.client_burst,
            )
        } else {
            String::new()
        };
        let m = MixingSection::default();
        let r = ReplaySection::default();
        let c = CoverSection::default();
        format!(
            r#"# loopmix-node configuration. Paths are relative to this file.
version = {CONFIG_VERSION}

[node]
# "mix" forwards between layers; "provider" is a client's first/last hop.
role = "{role}"
# Ed25519 identity (PKCS#8 PEM, mode 0600): node id, Sphinx address, TLS pin.
identity_key = "identity.pem"
{sphinx}# UDP address for QUIC. Port 0 picks a free port, written to data_dir/bound.json.
listen = "{listen}"
# The address peers dial, published in descriptors; needed when `listen` is
# 0.0.0.0 or [::]. Defaults to the bound address.
# public_address = "192.0.2.10:1789"
data_dir = "data"

{source}
[metrics]
# Prometheus text format at GET /metrics. Do not expose it publicly.
listen = "{metrics}"

[mixing]
# Header delays above this are clamped to it.
max_delay = "{max_delay}"
# Packets forwarded later than deadline + this are dropped (reason "late"):
# forwarding late leaks timing.
late_tolerance = "{late}"
# Sphinx worker threads; 0 = one per CPU core.
workers = 0
# QUIC/async I/O threads; 0 = half the cores (at least 1).
io_threads = 0
# Bounded queues; overflow is dropped and counted (reason "overload").
ingress_queue = {iq}
delay_queue_limit = {dq}
egress_queue = {eq}
# Packets that waited longer than this for a Sphinx worker are dropped unread
# (reason "overload"): under overload, what is accepted still leaves on time.
# Keep it below late_tolerance. "0s" = no limit.
ingress_max_wait = "{imw}"
# Per-neighbour packet limit (token bucket per node id), applied before any
# Sphinx work, so one flooding peer cannot take the queue everyone shares; the
# excess is dropped (reason "rate_limited") and the peer named in the log once
# per 10 s. Size peer_rate above the most one neighbour legitimately sends
# (about the previous layer's total packets/s divided by the nodes in this
# layer; providers: the traffic one provider forwards) and below this node's
# capacity (`loopmix-node bench --overload`), e.g. half of it. peer_burst is
# what a neighbour may send at once after being idle: a fraction of a second
# at peer_rate (a larger gulp only waits and is shed by ingress_max_wait).
# peer_rate = 0: no limit.
peer_rate = {pr}
peer_burst = {pb}
# On SIGINT/SIGTERM delayed packets are still forwarded at their deadline for
# up to this long; the rest are counted as dropped (reason "shutdown").
shutdown_drain = "{drain}"

[replay]
# One Bloom filter per Sphinx key, sized for `capacity` tags at `fp_rate`
# (about capacity * 3.6 bytes at 1e-6).
capacity = {rc}
fp_rate = {rf:e}
# The filter is saved to data_dir/replay/<key>.bloom this often and on shutdown, so
# a restarted node still refuses packets it saw before (after a crash, tags
# from the last interval are lost).
flush_interval = "{rfl}"

[cover]
# Loop cover at the topology's lambda_m_per_s. Disable only for benchmarks.
enabled = {ce}
# "0s" = derive from the topology: 3 x expected route delay + 5 s.
loop_timeout = "0s"
pending_limit = {cp}
{provider}"#,
            max_delay = humantime::format_duration(m.max_delay),
            late = humantime::format_duration(m.late_tolerance),
            iq = m.ingress_queue,
            dq = m.delay_queue_limit,
            eq = m.egress_queue,
            imw = humantime::format_duration(m.ingress_max_wait),
            pr = m.peer_rate,
            pb = m.peer_burst,
            drain = humantime::format_duration(m.shutdown_drain),
            rc = r.capacity,
            rf = r.fp_rate,
            rfl = humantime::format_duration(r.flush_interval),
            sphinx = sphinx,
            source = source,
            provider = provider,
            ce = c.enabled,
            cp = c.pending_limit,
        )
    }
}

fn validate_directory(d: &DirectorySection) -> Result<(), (&'static str, String)> {
    validate_pinned(&d.authorities, d.threshold).map_err(|(field, reason)| match field {
        "threshold" => ("directory.threshold", reason),
        _ => ("directory.authorities", reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let t = NodeConfig::template(
            Role::Mix,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        std::fs::write(&p, t).unwrap();
        let c = NodeConfig::load(&p).unwrap();
        assert_eq!(c.mixing, MixingSection::default());
        assert_eq!(c.replay, ReplaySection::default());
        assert_eq!(c.cover, CoverSection::default());
        assert_eq!(c.node.identity_key, dir.path().join("identity.pem"));
        assert_eq!(c.node.sphinx_key, Some(dir.path().join("sphinx.pem")));
        assert!(c.directory.is_none());
    }

    fn directory_section(n: usize, k: usize) -> DirectorySection {
        DirectorySection {
            authorities: (0..n)
                .map(|i| AuthorityEntry {
                    key: loopmix_core::keys::IdentityKeypair::generate().node_id(),
                    url: format!("http://127.0.0.1:{}", 8700 + i),
                })
                .collect(),
            threshold: k,
            request_timeout: default_request_timeout(),
            key_overlap: default_key_overlap(),
        }
    }

    #[test]
    fn directory_template_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let d = directory_section(3, 2);
        let t = NodeConfig::template(
            Role::Mix,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            Some(&d),
        );
        std::fs::write(&p, &t).unwrap();
        let c = NodeConfig::load(&p).unwrap();
        assert_eq!(c.directory, Some(d));
        assert!(c.topology.is_none() && c.node.sphinx_key.is_none());

        // Threshold above n, duplicate keys and both sources are refused by name.
        std::fs::write(&p, t.replace("threshold = 2", "threshold = 4")).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("directory.threshold"), "{e}");
        let both = format!("{t}\n[topology]\nfile = \"t.json\"\nreload_interval = \"1s\"\n");
        std::fs::write(&p, both).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn provider_template_parses_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let t = NodeConfig::template(
            Role::Provider,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        assert!(t.contains("[provider]"));
        std::fs::write(&p, t).unwrap();
        let c = NodeConfig::load(&p).unwrap();
        assert_eq!(c.provider, ProviderSection::default());
    }

    #[test]
    fn errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let t = NodeConfig::template(
            Role::Mix,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        std::fs::write(&p, t.replace("fp_rate = 1e-6", "fp_rate = 2.0")).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("replay.fp_rate") && e.contains("node.toml"),
            "{e}"
        );
        std::fs::write(&p, "version = 1\n[node]\nrole = \"dragon\"\n").unwrap();
        assert!(NodeConfig::load(&p).is_err());
    }

    #[test]
    fn rate_limits_are_in_the_template_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let t = NodeConfig::template(
            Role::Provider,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        let m = MixingSection::default();
        assert!(
            t.contains(&format!("\npeer_rate = {}\n", m.peer_rate)),
            "{t}"
        );
        assert!(t.contains("\ningress_max_wait = \"100ms\"\n"), "{t}");
        assert!(t.contains("\nclient_rate = 200\n"), "{t}");

        // A zero bucket with a rate would let nothing through: refused by name.
        let bad = t.replace(&format!("peer_burst = {}", m.peer_burst), "peer_burst = 0");
        std::fs::write(&p, bad).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("mixing.peer_burst"), "{e}");
        std::fs::write(&p, t.replace("client_burst = 2000", "client_burst = 0")).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("provider.client_burst"), "{e}");
        // Off is fine, with any burst; so is no stale-packet limit.
        let off = t
            .replace(&format!("peer_rate = {}", m.peer_rate), "peer_rate = 0")
            .replace(&format!("peer_burst = {}", m.peer_burst), "peer_burst = 0")
            .replace("ingress_max_wait = \"100ms\"", "ingress_max_wait = \"0s\"");
        std::fs::write(&p, off).unwrap();
        let c = NodeConfig::load(&p).unwrap();
        assert_eq!(
            (c.mixing.peer_rate, c.mixing.ingress_max_wait),
            (0, Duration::ZERO)
        );
        // Negative or non-integer rates are type errors.
        std::fs::write(&p, t.replace("client_rate = 200", "client_rate = -1")).unwrap();
        assert!(NodeConfig::load(&p).is_err());
    }
}
