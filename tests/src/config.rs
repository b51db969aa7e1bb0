//! The validated config editor: every change a test makes to a config that
//! an `init` command wrote goes through [`Config`].
//!
//! Edits are TOML edits (`toml_edit`, so the file keeps its comments and
//! stays the documentation a reader of a failed test's directory sees), never
//! text replacement, so a changed template cannot silently turn an edit into
//! a no-op. [`Config::save`] then loads the result with the binary's own
//! config loader (`NodeConfig::load`, `DirectoryConfig::load`,
//! `ClientConfig::load`: unknown keys, wrong types and invalid values are
//! refused there) and fails the test if the binary would refuse it.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use toml_edit::{DocumentMut, Item, Table, Value};

/// Which binary's config a file is, i.e. which loader validates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Directory,
    Client,
}

impl Kind {
    fn validate(self, path: &Path) -> anyhow::Result<()> {
        match self {
            Kind::Node => loopmix_node::config::NodeConfig::load(path).map(|_| ())?,
            Kind::Directory => {
                loopmix_directory::config::DirectoryConfig::load(path).map(|_| ())?
            }
            Kind::Client => loopmix_client::config::ClientConfig::load(path).map(|_| ())?,
        }
        Ok(())
    }
}

/// A config file being edited. `set` calls chain; the first error (a key
/// path through a non-table) is reported by [`save`](Self::save).
pub struct Config {
    path: PathBuf,
    kind: Kind,
    doc: DocumentMut,
    error: Option<anyhow::Error>,
}

impl Config {
    pub fn open(path: &Path, kind: Kind) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc = text
            .parse::<DocumentMut>()
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            kind,
            doc,
            error: None,
        })
    }

    /// Sets `key`, a dotted path (`"mixing.peer_rate"`, `"version"`), to
    /// `value`, creating the key (and its tables) if the file lacks it.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        if self.error.is_none()
            && let Err(e) = set_path(self.doc.as_table_mut(), key, value.into())
        {
            self.error = Some(e.context(format!("{}: setting {key}", self.path.display())));
        }
        self
    }

    /// Writes the file and loads it with the binary's config loader; on
    /// refusal the original file is restored and the loader's error returned.
    pub fn save(self) -> anyhow::Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let before = std::fs::read(&self.path)?;
        std::fs::write(&self.path, self.doc.to_string())?;
        if let Err(e) = self.kind.validate(&self.path) {
            std::fs::write(&self.path, before)?;
            return Err(e.context(format!(
                "the edited {} is not a valid {:?} config",
                self.path.display(),
                self.kind
            )));
        }
        Ok(())
    }
}

/// Opens `path`, applies `f`, saves (validated).
pub fn edit(path: &Path, kind: Kind, f: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
    let mut c = Config::open(path, kind)?;
    f(&mut c);
    c.save()
}

fn set_path(root: &mut Table, key: &str, value: Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().ok_or_else(|| anyhow!("empty key"))?;
    let mut table = root;
    for p in parts {
        let item = table.entry(p).or_insert_with(|| Item::Table(Table::new()));
        table = match item.as_table_mut() {
            Some(t) => t,
            None => bail!("{p} is not a table"),
        };
    }
    match table.get_mut(last).and_then(Item::as_value_mut) {
        // Keep the comment that follows the value on its line.
        Some(v) => {
            let decor = v.decor().clone();
            *v = value;
            *v.decor_mut() = decor;
        }
        None => {
            table.insert(last, Item::Value(value));
        }
    }
    Ok(())
}
