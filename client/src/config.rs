//! `loopmix-client` configuration: a TOML file, strictly parsed.
//!
//! `loopmix-client init` writes [`ClientConfig::template`], which documents
//! every key. Relative paths are relative to the config file's directory.
//! Sending rates (λ_P, λ_L, λ_D) and the per-hop delay (μ) are not here: they
//! are network parameters, taken from the signed topology, so every client
//! of a network looks the same on the wire.

use std::path::{Path, PathBuf};
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_core::pki::{AuthorityEntry, validate_pinned};
use serde::{Deserialize, Serialize};

pub const CONFIG_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "client.toml";
pub const IDENTITY_FILE: &str = "identity.pem";
pub const ENCRYPTION_FILE: &str = "encryption.pem";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub version: u32,
    pub client: ClientSection,
    pub directory: DirectorySection,
    #[serde(default)]
    pub messages: MessagesSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub socks: SocksSection,
}

/// The SOCKS5 proxy's stream isolation (`loopmix-client socks5`). Each
/// SOCKS5 username/password (RFC 1929, never checked) is an isolation
/// key with its own session at the exit; streams without credentials
/// share one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocksSection {
    /// A session with no streams for this long is closed; the next stream
    /// of its key (or of no credentials) starts a new, unlinkable one.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session opened this long ago takes no new streams: its key's next
    /// stream starts a new one, while streams already open carry on (Tor's
    /// `MaxCircuitDirtiness`), so a key that is never idle still changes
    /// sessions.
    #[serde(with = "humantime_serde")]
    pub session_max_age: Duration,
    /// Keys with a session at once; beyond it, the longest-idle session
    /// without streams is closed, and if none is idle the stream is
    /// refused (reply 0x01).
    pub max_sessions: usize,
    /// When the proxy answers its SOCKS5 client's CONNECT.
    pub early_reply: EarlyReply,
}

/// When the SOCKS5 proxy tells its client a CONNECT succeeded.
///
/// SOCKS5 clients (curl, browsers) send nothing until they have the
/// reply, so waiting for the exit's OPENED costs every connection a round
/// trip through the mixnet before its request can leave. Answering at
/// once lets the request travel with the OPEN (optimistic data,
/// PROTOCOL.md 7.3); the price is that a refusal after all can only be
/// shown as a reset connection, not as the SOCKS5 reply code that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EarlyReply {
    /// Wait for the exit's answer on every connection.
    Never,
    /// Answer at once when this session's exit has opened the same target
    /// before (and not refused it since); wait otherwise.
    #[default]
    Known,
    /// Answer at once on every connection.
    Always,
}

impl EarlyReply {
    pub fn name(self) -> &'static str {
        match self {
            EarlyReply::Never => "never",
            EarlyReply::Known => "known",
            EarlyReply::Always => "always",
        }
    }
}

/// Default of `socks.max_sessions`.
pub const DEFAULT_SOCKS_SESSIONS: usize = 64;

impl Default for SocksSection {
    fn default() -> Self {
        Self {
            session_idle: crate::stream::mux::DEFAULT_SESSION_IDLE,
            session_max_age: crate::stream::mux::DEFAULT_SESSION_MAX_AGE,
            max_sessions: DEFAULT_SOCKS_SESSIONS,
            early_reply: EarlyReply::default(),
        }
    }
}

/// Prometheus metrics of the client (packets per stream, loop round trips,
/// retransmissions, loop return ratio).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve GET /metrics here; off when unset. Keep it on loopback.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// Ed25519 identity: inbox id, Sphinx destination, TLS key to the provider.
    pub identity_key: PathBuf,
    /// X25519 key fragments are sealed to.
    pub encryption_key: PathBuf,
    /// Node id of the provider holding this client's inbox.
    pub provider: NodeId,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySection {
    pub authorities: Vec<AuthorityEntry>,
    pub threshold: usize,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesSection {
    /// Largest message `send` accepts.
    pub max_message_bytes: usize,
    /// Messages queued for sending at most; `send` refuses beyond.
    pub send_queue: usize,
    /// How often the inbox is pulled.
    #[serde(with = "humantime_serde")]
    pub pull_interval: Duration,
    /// Transmissions of one fragment before the message is reported failed.
    pub max_attempts: u32,
}

impl Default for MessagesSection {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            send_queue: 256,
            // With the providers' default 8 slots per answer: 32 messages/s
            // of receive capacity, half a pull interval (125 ms) of added
            // delay on average.
            pull_interval: Duration::from_millis(250),
            max_attempts: 10,
        }
    }
}

pub use loopmix_net::config::ConfigError;

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: ClientConfig = loopmix_net::config::read_toml(path)?;
        let invalid = |field: &str, reason: String| ConfigError::invalid(path, field, reason);
        loopmix_net::config::check_version(path, cfg.version, CONFIG_VERSION)?;
        validate_pinned(&cfg.directory.authorities, cfg.directory.threshold)
            .map_err(|(f, r)| invalid(&format!("directory.{f}"), r))?;
        let m = &cfg.messages;
        if m.max_message_bytes == 0 || m.send_queue == 0 || m.max_attempts == 0 {
            return Err(invalid(
                "messages",
                "max_message_bytes, send_queue and max_attempts must be > 0".into(),
            ));
        }
        if m.pull_interval < Duration::from_millis(10) {
            return Err(invalid("messages.pull_interval", "at least 10ms".into()));
        }
        if cfg.socks.session_idle < Duration::from_secs(1) {
            return Err(invalid("socks.session_idle", "at least 1s".into()));
        }
        if cfg.socks.session_max_age < Duration::from_secs(1) {
            return Err(invalid("socks.session_max_age", "at least 1s".into()));
        }
        if !(1..=4096).contains(&cfg.socks.max_sessions) {
            return Err(invalid("socks.max_sessions", "1 to 4096".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.client.identity_key,
            &mut cfg.client.encryption_key,
            &mut cfg.client.data_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// The commented default config `init` writes.
    pub fn template(provider: NodeId, authorities: &[AuthorityEntry], threshold: usize) -> String {
        let m = MessagesSection::default();
        let so = SocksSection::default();
        let mut auth = String::new();
        for a in authorities {
            auth.push_str(&format!(
                "\n[[directory.authorities]]\nkey = \"{}\"\nurl = \"{}\"\n",
                a.key, a.url
            ));
        }
        format!(
            r#"# loopmix-client configuration. Paths are relative to this file.
version = {CONFIG_VERSION}

[client]
# Ed25519 identity (PKCS#8 PEM, 0600): inbox id and TLS key to the provider.
identity_key = "{IDENTITY_FILE}"
# X25519 key (PKCS#8 PEM, 0600) other clients seal fragments to.
encryption_key = "{ENCRYPTION_FILE}"
# The provider holding this client's inbox (node id, base58). It is part of
# the client's address.
provider = "{provider}"
data_dir = "data"

[directory]
# Topology documents are accepted only with `threshold` valid signatures from
# the pinned authorities below. Sending rates and delays come from there.
threshold = {threshold}
request_timeout = "10s"
{auth}
[messages]
max_message_bytes = {mb}
send_queue = {sq}
# How often the inbox is pulled, busy or idle. Every pull has the same size
# and confirms the previous answer's messages; every answer has the
# provider's pull_slots slots (8 by default), so this client receives at
# most pull_slots / pull_interval messages/s (32 at the defaults), and an
# idle client downloads pull_slots x (slot size) / pull_interval bytes/s.
pull_interval = "{pi}"
# Transmissions of one fragment before the message is reported failed.
max_attempts = {ma}

[metrics]
# Prometheus text at GET /metrics (packets per stream, loop round trips,
# retransmissions, loop return ratio). Off unless set; keep it on loopback.
# listen = "127.0.0.1:9190"

[socks]
# Stream isolation of `loopmix-client socks5`: each SOCKS5 username and
# password (any, never checked: `curl --socks5-hostname user:pass@host:port`)
# gets its own session at the exit, which cannot link sessions; streams
# without credentials share one. A session with no streams for this long is
# closed, and its key's next stream gets a new one.
session_idle = "{si}"
# A session opened this long ago takes no new streams (streams already open
# carry on): its key's next stream gets a new one, however busy the key is.
session_max_age = "{sa}"
# Sessions at once; beyond it the longest-idle one without streams closes.
max_sessions = {ms}
# When a CONNECT is answered: "never" waits for the exit's answer (a round
# trip through the mixnet before the request can leave, every refusal
# reported with its SOCKS5 code); "known" answers at once when this session
# has reached the same target before, so the request travels with the open;
# "always" answers every CONNECT at once. An early answer reports a later
# refusal as a reset connection.
early_reply = "{er}"
"#,
            mb = m.max_message_bytes,
            sq = m.send_queue,
            pi = humantime::format_duration(m.pull_interval),
            ma = m.max_attempts,
            si = humantime::format_duration(so.session_idle),
            sa = humantime::format_duration(so.session_max_age),
            ms = so.max_sessions,
            er = so.early_reply.name(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopmix_core::keys::IdentityKeypair;

    #[test]
    fn template_round_trips_and_errors_name_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONFIG_FILE);
        let auths: Vec<AuthorityEntry> = (0..3)
            .map(|i| AuthorityEntry {
                key: IdentityKeypair::generate().node_id(),
                url: format!("http://127.0.0.1:{}", 8700 + i),
            })
            .collect();
        let provider = IdentityKeypair::generate().node_id();
        let t = ClientConfig::template(provider, &auths, 2);
        std::fs::write(&p, &t).unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(c.client.provider, provider);
        assert_eq!(c.directory.authorities, auths);
        assert_eq!(c.messages, MessagesSection::default());
        assert_eq!(c.socks, SocksSection::default());
        assert_eq!(c.client.identity_key, dir.path().join(IDENTITY_FILE));

        // Each bad value is refused with the key that holds it.
        for (good, bad, key) in [
            ("threshold = 2", "threshold = 5", "directory.threshold"),
            (
                "session_idle = \"10m\"",
                "session_idle = \"0s\"",
                "socks.session_idle",
            ),
            (
                "session_max_age = \"10m\"",
                "session_max_age = \"0s\"",
                "socks.session_max_age",
            ),
        ] {
            assert!(t.contains(good), "{good}");
            std::fs::write(&p, t.replace(good, bad)).unwrap();
            let e = ClientConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
