//! The authorities a node or client pins in its configuration
//! (`loopmix_net::directory::DirectoryClientConfig::pinned` makes a client
//! from them).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::keys::NodeId;

/// One pinned authority: its signing key and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// The authority's Ed25519 public key (base58), pinned.
    pub key: NodeId,
    /// Its base URL, e.g. `http://192.0.2.1:8700`.
    pub url: String,
}

impl FromStr for AuthorityEntry {
    type Err = String;

    /// `KEY=URL`, as the command lines take it.
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=URL"))?;
        let entry = Self {
            key: key.parse().map_err(|e| format!("{key:?}: {e}"))?,
            url: url.trim_end_matches('/').to_string(),
        };
        check_url(&entry.url)?;
        Ok(entry)
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("url {url:?}: expected http://host:port"))
    }
}

/// Checks a pinned set: non-empty, distinct keys, URLs, `1 <= k <= n`.
/// The error names the offending field (`authorities` or `threshold`).
pub fn validate_pinned(
    entries: &[AuthorityEntry],
    threshold: usize,
) -> Result<(), (&'static str, String)> {
    if entries.is_empty() {
        return Err(("authorities", "at least one authority".into()));
    }
    let mut keys = std::collections::BTreeSet::new();
    for a in entries {
        if !keys.insert(a.key) {
            return Err(("authorities", format!("key {} listed twice", a.key)));
        }
        check_url(&a.url).map_err(|e| ("authorities", e))?;
    }
    if threshold == 0 || threshold > entries.len() {
        return Err((
            "threshold",
            format!(
                "must be in 1..={} (the number of authorities)",
                entries.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;

    #[test]
    fn parses_and_validates() {
        let k = IdentityKeypair::generate().node_id();
        let e: AuthorityEntry = format!("{k}=http://127.0.0.1:8700/").parse().unwrap();
        assert_eq!(e.url, "http://127.0.0.1:8700");
        assert!(format!("{k}=ftp://x").parse::<AuthorityEntry>().is_err());
        assert!("nokey".parse::<AuthorityEntry>().is_err());
        assert_eq!(
            validate_pinned(std::slice::from_ref(&e), 2).unwrap_err().0,
            "threshold"
        );
        assert_eq!(
            validate_pinned(&[e.clone(), e.clone()], 1).unwrap_err().0,
            "authorities"
        );
        assert!(validate_pinned(std::slice::from_ref(&e), 1).is_ok());
    }
}
