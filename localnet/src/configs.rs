//! Changing the commented configs the `init` commands write: every edit
//! localnet, the testnet generator and the end-to-end tests make goes
//! through [`edit`], a [`ConfigEdit`] that keeps the comments and is
//! checked by the role's own loader before it counts.

use std::path::Path;

use anyhow::Context;
use loopmix_net::config::{ConfigEdit, ConfigError};

/// Which binary's config a file is, i.e. which loader checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Node,
    Directory,
    Client,
}

impl ConfigKind {
    /// Loads `path` as this role's binary would, refusing what it refuses.
    pub fn check(self, path: &Path) -> Result<(), ConfigError> {
        match self {
            ConfigKind::Node => loopmix_node::config::NodeConfig::load(path).map(|_| ()),
            ConfigKind::Directory => {
                loopmix_directory::config::DirectoryConfig::load(path).map(|_| ())
            }
            ConfigKind::Client => loopmix_client::config::ClientConfig::load(path).map(|_| ()),
        }
    }
}

/// Opens `path`, applies `f`, saves; fails (leaving the file as it was) if
/// an edit is malformed or `kind`'s loader refuses the result.
pub fn edit(path: &Path, kind: ConfigKind, f: impl FnOnce(&mut ConfigEdit)) -> anyhow::Result<()> {
    let mut c = ConfigEdit::open(path)?;
    f(&mut c);
    c.save(|p| kind.check(p))
        .with_context(|| format!("editing the {kind:?} config {}", path.display()))
}

/// [`edit`] setting `section.key` to a TOML-encoded value for every
/// `(section, key, value)`.
pub fn edit_file(
    path: &Path,
    kind: ConfigKind,
    edits: &[(&str, &str, String)],
) -> anyhow::Result<()> {
    edit(path, kind, |c| {
        for (section, key, value) in edits {
            c.set_toml(&format!("{section}.{key}"), value);
        }
    })
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
