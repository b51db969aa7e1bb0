//! `loopmix-directory` configuration: a TOML file, strictly parsed.
//!
//! `loopmix-directory init` writes [`DirectoryConfig::template`], which
//! documents every key. Relative paths are relative to the config file.
//!
//! Everything under `[epoch]` and `[network]` must be identical at every
//! authority of a network: it goes into the signed document, and authorities
//! only agree (sign the same bytes) if they build the same document.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::sphinx::{HEADER_SIZE, PAYLOAD_OVERHEAD};
use loopmix_core::topology::{MAX_LAYERS, NetworkParams};
use serde::{Deserialize, Serialize};

pub const CONFIG_VERSION: u32 = 1;
/// Name of the config file `init` writes.
pub const CONFIG_FILE: &str = "directory.toml";
/// Name of the identity key file `init` writes.
pub const IDENTITY_FILE: &str = "identity.pem";
/// File in `data_dir` holding the bound HTTP address (`ip:port`), written at start.
pub const ADDR_FILE: &str = "http.addr";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Config format version, for future migrations.
    pub version: u32,
    pub authority: AuthoritySection,
    pub epoch: EpochSection,
    pub network: NetworkSection,
    #[serde(default)]
    pub limits: LimitsSection,
    /// Probing nodes and publishing the signed liveness ("down") list.
    #[serde(default)]
    pub liveness: LivenessSection,
    /// The other authorities of this network.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySection {
    /// Ed25519 identity key (PKCS#8 PEM): the key this authority signs with.
    pub identity_key: PathBuf,
    /// HTTP listen address. Port 0 picks a free port, written to
    /// `data_dir/http.addr`.
    pub listen: SocketAddr,
    /// Where the database (`directory.redb`) and `http.addr` live.
    pub data_dir: PathBuf,
    /// k: signatures a document needs (this authority's included) before it
    /// is published. Must be in 1..=n where n = 1 + number of peers.
    pub threshold: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSection {
    /// Unix seconds at which epoch 1 starts.
    pub genesis: u64,
    /// Epoch length (whole seconds, at least 2 s).
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// Registration for an epoch closes this long before it starts; then the
    /// authorities merge registrations, build, sign and exchange signatures.
    #[serde(with = "humantime_serde")]
    pub registration_lead: Duration,
    /// How many epochs ahead a node may register (at least 1).
    pub register_ahead: u64,
    /// A document stays valid this long after its epoch ends, so a late next
    /// document does not stop the network.
    #[serde(with = "humantime_serde")]
    pub validity_grace: Duration,
}

/// Network-wide parameters written into every document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    pub layers: u8,
    pub mean_hop_delay_ms: f64,
    pub lambda_p_per_s: f64,
    pub lambda_l_per_s: f64,
    pub lambda_d_per_s: f64,
    pub lambda_m_per_s: f64,
    pub payload_size: usize,
}

impl NetworkSection {
    pub fn params(&self, epoch: u64) -> NetworkParams {
        NetworkParams {
            epoch,
            layers: self.layers,
            mean_hop_delay_ms: self.mean_hop_delay_ms,
            lambda_p_per_s: self.lambda_p_per_s,
            lambda_l_per_s: self.lambda_l_per_s,
            lambda_d_per_s: self.lambda_d_per_s,
            lambda_m_per_s: self.lambda_m_per_s,
            payload_size: self.payload_size,
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            layers: 3,
            // λ/μ = (2 + 1 + 1)/s × 0.5 s = 2 per client: the anonymity
            // floor of docs/THREAT_MODEL.md (the simulator's ε ≈ 0.5; at
            // 50 ms it was ≈ 5.8). Faster networks are a deliberate choice.
            mean_hop_delay_ms: 500.0,
            lambda_p_per_s: 2.0,
            lambda_l_per_s: 1.0,
            lambda_d_per_s: 1.0,
            lambda_m_per_s: 1.0,
            payload_size: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Whole-request timeout (408 beyond).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Registrations per second per client IP, sustained (429 beyond).
    pub registrations_per_ip_per_s: u32,
    /// Registrations per client IP in a burst.
    pub registration_burst_per_ip: u32,
    /// Registrations per second from everyone together.
    pub registrations_per_s: u32,
    /// Registrations from everyone in a burst.
    pub registration_burst: u32,
    /// Descriptors accepted per epoch (503 beyond).
    pub max_descriptors_per_epoch: usize,
    /// Largest document built or accepted from a peer.
    pub max_document_bytes: usize,
    /// Clock-skew allowance for descriptor timestamps and peer documents.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Timeout of one request to a peer authority.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Epochs of descriptors and documents kept in the database.
    pub keep_epochs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            registrations_per_ip_per_s: 2,
            registration_burst_per_ip: 30,
            registrations_per_s: 200,
            registration_burst: 1000,
            max_descriptors_per_epoch: 10_000,
            max_document_bytes: loopmix_core::pki::DEFAULT_MAX_DOCUMENT_BYTES,
            clock_skew: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(5),
            keep_epochs: 48,
        }
    }
}

/// `[liveness]`: probing every listed node and publishing, every
/// `publish_interval`, the k-of-n signed list of nodes that are down.
///
/// `publish_interval` and `valid_for` go into the signed document and must
/// be identical at every authority (like `[epoch]`); the probe settings are
/// local and may differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessSection {
    /// Probe nodes and publish liveness lists at all.
    pub enabled: bool,
    /// Every node of the current and the next published topology is probed
    /// (a pinned QUIC handshake) this often.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// A handshake not done within this is a failed probe.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Consecutive failed probes before this authority observes a node down.
    pub down_after: u32,
    /// Consecutive successful probes before it observes the node up again
    /// (doubled for every further down transition within 10 minutes, up
    /// to 16 or `up_after`, so a flapping node stays down).
    pub up_after: u32,
    /// Round length: one observation, one signed list per round (whole
    /// seconds, at least 1 s).
    #[serde(with = "humantime_serde")]
    pub publish_interval: Duration,
    /// A list is valid this long after its round starts (whole seconds, at
    /// least twice `publish_interval`): if the authorities stop publishing,
    /// clients stop excluding nodes after this.
    #[serde(with = "humantime_serde")]
    pub valid_for: Duration,
}

impl Default for LivenessSection {
    fn default() -> Self {
        Self {
            enabled: true,
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_millis(1500),
            down_after: 3,
            up_after: 2,
            publish_interval: Duration::from_secs(5),
            valid_for: Duration::from_secs(30),
        }
    }
}

/// Another authority: its pinned key and where to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's Ed25519 identity key (base58).
    pub key: NodeId,
    /// Base URL, e.g. `http://192.0.2.7:8700`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Instead of `url`: a file holding the peer's `ip:port` (its
    /// `data_dir/http.addr`), re-read on every use. For local testnets whose
    /// authorities bind port 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr_file: Option<PathBuf>,
}

impl PeerConfig {
    /// The peer's base URL now.
    pub fn base_url(&self) -> Result<String, String> {
        if let Some(u) = &self.url {
            return Ok(u.trim_end_matches('/').to_string());
        }
        let Some(f) = &self.addr_file else {
            return Err("peer has neither url nor addr_file".into());
        };
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("reading peer address file {}: {e}", f.display()))?;
        let addr: SocketAddr = text
            .trim()
            .parse()
            .map_err(|e| format!("peer address file {}: {e}", f.display()))?;
        Ok(format!("http://{addr}"))
    }
}

pub use loopmix_net::config::ConfigError;

impl DirectoryConfig {
    /// Reads, parses and validates; relative paths become relative to the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: DirectoryConfig = loopmix_net::config::read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut cfg.authority.identity_key);
        abs(&mut cfg.authority.data_dir);
        for p in &mut cfg.peers {
            if let Some(f) = &mut p.addr_file {
                abs(f);
            }
        }
        cfg.validate()
            .map_err(|(field, reason)| ConfigError::invalid(path, field, reason))?;
        Ok(cfg)
    }

    /// Settings that are valid but below the anonymity floors of
    /// docs/THREAT_MODEL.md: the network works, but hides little. The
    /// authority logs each at start-up (a test network may want them).
    pub fn privacy_warnings(&self) -> Vec<String> {
        let w = &self.network;
        let mut out = Vec::new();
        let lambda = w.lambda_p_per_s + w.lambda_l_per_s + w.lambda_d_per_s;
        let ratio = lambda * w.mean_hop_delay_ms / 1000.0;
        if ratio < 2.0 {
            out.push(format!(
                "per-client rate x mean hop delay = {ratio:.2} < 2: mixes hold too few \
                 packets to hide who sent what (raise network.mean_hop_delay_ms to at \
                 least {:.0})",
                if lambda > 0.0 {
                    2000.0 / lambda
                } else {
                    f64::INFINITY
                }
            ));
        }
        if w.layers < 3 {
            out.push(format!(
                "network.layers = {} < 3: one corrupt mix sees much more of a route",
                w.layers
            ));
        }
        if w.lambda_l_per_s == 0.0 || w.lambda_m_per_s == 0.0 {
            out.push(
                "loop cover is off (lambda_l_per_s or lambda_m_per_s = 0): dropping \
                 attacks go unnoticed"
                    .into(),
            );
        }
        if w.lambda_d_per_s == 0.0 {
            out.push("drop cover is off (lambda_d_per_s = 0)".into());
        }
        out
    }

    /// Every semantic rule; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        if self.version != CONFIG_VERSION {
            return bad(
                "version",
                format!("unsupported {}, expected {CONFIG_VERSION}", self.version),
            );
        }
        let n = 1 + self.peers.len();
        if self.authority.threshold == 0 || self.authority.threshold > n {
            return bad(
                "authority.threshold",
                format!("must be in 1..={n} (this authority plus {} peers)", n - 1),
            );
        }
        let e = &self.epoch;
        if e.length < Duration::from_secs(2) || e.length.subsec_nanos() != 0 {
            return bad("epoch.length", "must be whole seconds, at least 2s".into());
        }
        if e.registration_lead < Duration::from_millis(500) || e.registration_lead >= e.length {
            return bad(
                "epoch.registration_lead",
                "must be at least 500ms and shorter than epoch.length".into(),
            );
        }
        if e.register_ahead == 0 {
            return bad("epoch.register_ahead", "must be at least 1".into());
        }
        let w = &self.network;
        if w.layers == 0 || w.layers > MAX_LAYERS {
            return bad("network.layers", format!("must be 1..={MAX_LAYERS}"));
        }
        for (name, v) in [
            ("network.mean_hop_delay_ms", w.mean_hop_delay_ms),
            ("network.lambda_p_per_s", w.lambda_p_per_s),
            ("network.lambda_l_per_s", w.lambda_l_per_s),
            ("network.lambda_d_per_s", w.lambda_d_per_s),
            ("network.lambda_m_per_s", w.lambda_m_per_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, "must be a finite number >= 0".into());
            }
        }
        let max_payload = u16::MAX as usize - HEADER_SIZE;
        if w.payload_size < 32 + PAYLOAD_OVERHEAD || w.payload_size > max_payload {
            return bad(
                "network.payload_size",
                format!("must be {}..={max_payload}", 32 + PAYLOAD_OVERHEAD),
            );
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            (
                "limits.registrations_per_ip_per_s",
                l.registrations_per_ip_per_s as usize,
            ),
            (
                "limits.registration_burst_per_ip",
                l.registration_burst_per_ip as usize,
            ),
            ("limits.registrations_per_s", l.registrations_per_s as usize),
            ("limits.registration_burst", l.registration_burst as usize),
            (
                "limits.max_descriptors_per_epoch",
                l.max_descriptors_per_epoch,
            ),
            ("limits.max_document_bytes", l.max_document_bytes),
        ] {
            if v == 0 {
                return bad(name, "must be > 0".into());
            }
        }
        if l.request_timeout.is_zero() || l.peer_timeout.is_zero() {
            return bad("limits", "timeouts must be > 0".into());
        }
        let lv = &self.liveness;
        if lv.publish_interval < Duration::from_secs(1) || lv.publish_interval.subsec_nanos() != 0 {
            return bad(
                "liveness.publish_interval",
                "must be whole seconds, at least 1s".into(),
            );
        }
        if lv.valid_for < lv.publish_interval * 2 || lv.valid_for.subsec_nanos() != 0 {
            return bad(
                "liveness.valid_for",
                "must be whole seconds, at least twice liveness.publish_interval".into(),
            );
        }
        if lv.probe_interval < Duration::from_millis(100) {
            return bad("liveness.probe_interval", "must be at least 100ms".into());
        }
        if lv.probe_timeout.is_zero() || lv.probe_timeout > Duration::from_secs(60) {
            return bad("liveness.probe_timeout", "must be in (0, 60s]".into());
        }
        for (name, v) in [
            ("liveness.down_after", lv.down_after),
            ("liveness.up_after", lv.up_after),
        ] {
            if v == 0 || v > 1000 {
                return bad(name, "must be 1..=1000".into());
            }
        }
        let mut keys = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.key.verifying_key().is_none() {
                return bad(&format!("peers[{i}].key"), "not an Ed25519 key".into());
            }
            if !keys.insert(p.key) {
                return bad(&format!("peers[{i}].key"), "listed twice".into());
            }
            match (&p.url, &p.addr_file) {
                (None, Some(_)) => {}
                (Some(u), None) if u.starts_with("http://") => {}
                (Some(_), None) => {
                    return bad(&format!("peers[{i}].url"), "must start with http://".into());
                }
                _ => {
                    return bad(
                        &format!("peers[{i}]"),
                        "needs exactly one of `url` and `addr_file`".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The commented default config `init` writes.
    pub fn template(
        listen: SocketAddr,
        threshold: usize,
        epoch: &EpochSection,
        peers: &[PeerConfig],
    ) -> String {
        let l = LimitsSection::default();
        let w = NetworkSection::default();
        let lv = LivenessSection::default();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut peers_toml = String::new();
        for p in peers {
            peers_toml.push_str("\n[[peers]]\n");
            peers_toml.push_str(&format!("key = \"{}\"\n", p.key));
            if let Some(u) = &p.url {
                peers_toml.push_str(&format!("url = {}\n", toml_str(u)));
            }
            if let Some(f) = &p.addr_file {
                peers_toml.push_str(&format!(
                    "addr_file = {}\n",
                    toml_str(&f.display().to_string())
                ));
            }
        }
        if peers.is_empty() {
            peers_toml.push_str(
                "\n# [[peers]]\n# key = \"<peer authority key, base58>\"\n# url = \"http://192.0.2.7:8700\"\n",
            );
        }
        format!(
            r#"# loopmix-directory configuration. Paths are relative to this file.
# Everything in [epoch] and [network] must be identical at every authority of
# the network: authorities sign the same document only if they build it from
# the same inputs.
version = {CONFIG_VERSION}

[authority]
# Ed25519 identity key (PKCS#8 PEM, mode 0600). Its public key is what nodes
# and clients pin; `loopmix-directory init` prints it.
identity_key = "{IDENTITY_FILE}"
# HTTP API (descriptors, topology, signatures, /metrics). Port 0 picks a free
# port, written to data_dir/{ADDR_FILE}.
listen = "{listen}"
# Database (directory.redb: registrations, documents, signatures) and {ADDR_FILE}.
data_dir = "data"
# k: a document is published once k authorities (this one included) signed
# it. n = 1 + number of [[peers]]. Use a majority (k > n/2) so two disjoint
# groups can never publish different documents for one epoch.
threshold = {threshold}

[epoch]
# Unix seconds at which epoch 1 starts; epoch e starts at genesis + (e-1)*length.
genesis = {genesis}
# Epoch length: one topology document and one Sphinx key per node per epoch.
length = "{length}"
# Registration for an epoch closes this long before it starts. In that time
# the authorities merge each other's registrations, build the document, sign
# it and collect each other's signatures.
registration_lead = "{lead}"
# Nodes may register this many epochs ahead. A node that dies stays listed
# until the last epoch it registered for ends (at most register_ahead + 1
# epochs; the signed liveness list keeps it out of routes meanwhile); more
# epochs ahead let nodes ride out longer authority outages.
register_ahead = {ahead}
# A document stays valid this long after its epoch ends (used only if the
# next document is late).
validity_grace = "{grace}"

[network]
# Network-wide parameters every node and client must share (Loopix).
# Mix layers (1..={MAX_LAYERS}); each needs at least one registered mix.
layers = {layers}
# Mean per-hop delay 1/mu, milliseconds. Anonymity needs each mix to hold
# packets of several clients at once: keep (lambda_p + lambda_l + lambda_d)
# x mean_hop_delay_ms / 1000 >= 2 (docs/THREAT_MODEL.md); below that the
# simulator shows senders becoming linkable.
mean_hop_delay_ms = {mu:?}
# Client rates, packets per second: payload (real or drop), loop, drop.
lambda_p_per_s = {lp:?}
lambda_l_per_s = {ll:?}
lambda_d_per_s = {ld:?}
# Mix loop cover rate, packets per second.
lambda_m_per_s = {lm:?}
# Sphinx payload bytes (every packet is 348 + payload_size bytes).
payload_size = {ps}

[limits]
# Request bodies above this get 413.
max_body_bytes = {mb}
# Requests taking longer get 408.
request_timeout = "{rt}"
# Registration rate limits (429 beyond): per client IP and overall.
registrations_per_ip_per_s = {rip}
registration_burst_per_ip = {bip}
registrations_per_s = {rg}
registration_burst = {bg}
# Descriptors accepted per epoch (503 beyond).
max_descriptors_per_epoch = {mde}
# Largest topology document built or accepted from a peer.
max_document_bytes = {mdb}
# Clock-skew allowance (descriptor timestamps, peer documents).
clock_skew = "{skew}"
# Timeout of one request to a peer authority.
peer_timeout = "{pt}"
# Epochs of registrations and documents kept in the database.
keep_epochs = {ke}

[liveness]
# Probe every node of the current and next topology (a QUIC handshake
# pinning the node's key) and publish, every publish_interval, the list of
# nodes at least `threshold` authorities observe down, signed k-of-n.
# Clients leave those nodes out of new routes. publish_interval and
# valid_for must be identical at every authority (they are signed).
enabled = {lv_on}
probe_interval = "{lv_pi}"
# A handshake slower than this is a failed probe.
probe_timeout = "{lv_pt}"
# Consecutive failed probes before this authority observes a node down, and
# successes before up again (doubled per further down transition within 10
# minutes, up to 16, so a flapping node stays down).
down_after = {lv_da}
up_after = {lv_ua}
# Round length (whole seconds): one signed list per round.
publish_interval = "{lv_int}"
# How long a list stays valid (at least 2 x publish_interval).
valid_for = "{lv_vf}"

# Other authorities of this network: their pinned key and base URL (or, for
# local testnets binding port 0, `addr_file` = the peer's data_dir/{ADDR_FILE}).
{peers_toml}"#,
            genesis = epoch.genesis,
            length = d(epoch.length),
            lead = d(epoch.registration_lead),
            ahead = epoch.register_ahead,
            grace = d(epoch.validity_grace),
            layers = w.layers,
            mu = w.mean_hop_delay_ms,
            lp = w.lambda_p_per_s,
            ll = w.lambda_l_per_s,
            ld = w.lambda_d_per_s,
            lm = w.lambda_m_per_s,
            ps = w.payload_size,
            mb = l.max_body_bytes,
            rt = d(l.request_timeout),
            rip = l.registrations_per_ip_per_s,
            bip = l.registration_burst_per_ip,
            rg = l.registrations_per_s,
            bg = l.registration_burst,
            mde = l.max_descriptors_per_epoch,
            mdb = l.max_document_bytes,
            skew = d(l.clock_skew),
            pt = d(l.peer_timeout),
            ke = l.keep_epochs,
            lv_on = lv.enabled,
            lv_pi = d(lv.probe_interval),
            lv_pt = d(lv.probe_timeout),
            lv_da = lv.down_after,
            lv_ua = lv.up_after,
            lv_int = d(lv.publish_interval),
            lv_vf = d(lv.valid_for),
        )
    }
}

impl EpochSection {
    /// Production defaults: 20-minute epochs (Katzenpost's default),
    /// registration closing 2 minutes before.
    pub fn with_length(length: Duration, registration_lead: Option<Duration>) -> Self {
        Self {
            genesis: 0,
            length,
            registration_lead: registration_lead.unwrap_or_else(|| {
                (length / 10).clamp(Duration::from_secs(1), Duration::from_secs(120))
            }),
            // One epoch: a node that stops registering (it died) drops out
            // of the topology after the epoch it last registered for, at
            // most two epochs after it died; the signed liveness list keeps
            // it out of routes within seconds meanwhile. More epochs ahead
            // only help nodes survive an authority outage longer than one
            // registration window, at the price of listing dead nodes
            // longer (docs/OPERATING.md, "Registration").
            register_ahead: 1,
            validity_grace: length,
        }
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join(CONFIG_FILE);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn template_parses_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerConfig {
            key: loopmix_core::keys::IdentityKeypair::generate().node_id(),
            url: None,
            addr_file: Some("../b/data/http.addr".into()),
        };
        let e = EpochSection::with_length(Duration::from_secs(1200), None);
        let t = DirectoryConfig::template("127.0.0.1:0".parse().unwrap(), 2, &e, &[peer]);
        let c = DirectoryConfig::load(&write(dir.path(), &t)).unwrap();
        assert_eq!(c.limits, LimitsSection::default());
        assert_eq!(c.liveness, LivenessSection::default());
        assert_eq!(c.network, NetworkSection::default());
        assert_eq!(c.epoch, e);
        assert_eq!(c.epoch.registration_lead, Duration::from_secs(120));
        assert_eq!(c.authority.data_dir, dir.path().join("data"));
        assert_eq!(c.peers.len(), 1);
        assert!(c.peers[0].addr_file.as_ref().unwrap().is_absolute());

        // No peers: the commented example must not parse as a peer.
        let t = DirectoryConfig::template("127.0.0.1:0".parse().unwrap(), 1, &e, &[]);
        let c = DirectoryConfig::load(&write(dir.path(), &t)).unwrap();
        assert!(c.peers.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let e = EpochSection::with_length(Duration::from_secs(60), None);
        let t = DirectoryConfig::template("127.0.0.1:0".parse().unwrap(), 1, &e, &[]);
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("threshold = 1", "threshold = 2"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("authority.threshold"), "{err}");
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("length = \"1m\"", "length = \"1500ms\""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("epoch.length"), "{err}");
        let err = DirectoryConfig::load(&write(dir.path(), &format!("{t}\nsurprise = 1\n")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise") || err.contains("unknown"), "{err}");
        let err = DirectoryConfig::load(&write(dir.path(), &t.replace("layers = 3", "layers = 4")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("network.layers"), "{err}");
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("valid_for = \"30s\"", "valid_for = \"8s\""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("liveness.valid_for"), "{err}");
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("publish_interval = \"5s\"", "publish_interval = \"500ms\""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("liveness.publish_interval"), "{err}");
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("down_after = 3", "down_after = 0"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("liveness.down_after"), "{err}");
        let err = DirectoryConfig::load(&write(
            dir.path(),
            &t.replace("up_after = 2", "up_after = 2\nsurprise = 1"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("surprise") || err.contains("unknown"), "{err}");
    }

    #[test]
    fn defaults_meet_the_privacy_floors_and_weak_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = EpochSection::with_length(Duration::from_secs(60), None);
        let t = DirectoryConfig::template("127.0.0.1:0".parse().unwrap(), 1, &e, &[]);
        let c = DirectoryConfig::load(&write(dir.path(), &t)).unwrap();
        assert_eq!(c.privacy_warnings(), Vec::<String>::new());
        let weak = t
            .replace("mean_hop_delay_ms = 500.0", "mean_hop_delay_ms = 50.0")
            .replace("layers = 3", "layers = 2")
            .replace("lambda_d_per_s = 1.0", "lambda_d_per_s = 0.0");
        let c = DirectoryConfig::load(&write(dir.path(), &weak)).unwrap();
        let w = c.privacy_warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("0.15 < 2") && w[0].contains("at least 667"),
            "{w:?}"
        );
    }
}
