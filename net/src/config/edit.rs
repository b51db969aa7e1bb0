//! Changing a config file that an `init` command wrote, the one way every
//! tool does it (localnet, the container testnet generator, `loopmix-node
//! bench`, the end-to-end tests).
//!
//! Edits are TOML edits (`toml_edit`), never text replacement, so the file
//! keeps its comments and stays the documentation its reader sees, and a
//! changed template cannot silently turn an edit into a no-op. [`save`]
//! then loads the result with the role's own loader (`NodeConfig::load`,
//! `DirectoryConfig::load`, `ClientConfig::load`: unknown keys, wrong types
//! and invalid values are refused there) and puts the old file back if the
//! binary would refuse the new one.
//!
//! [`save`]: ConfigEdit::save

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table, Value};

use super::ConfigError;

/// A config file being edited. `set` calls chain; the first error (a key
/// path through a non-table, a value that is not TOML) is reported by
/// [`save`](Self::save).
pub struct ConfigEdit {
    path: PathBuf,
    doc: DocumentMut,
    error: Option<ConfigError>,
}

impl ConfigEdit {
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let doc = text.parse::<DocumentMut>().map_err(|e| ConfigError::Edit {
            path: path.to_path_buf(),
            key: String::new(),
            reason: format!("not TOML: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            doc,
            error: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets `key`, a dotted path (`"mixing.peer_rate"`, `"version"`), to
    /// `value`, creating the key (and its tables) if the file lacks it.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        let value = value.into();
        self.apply(key, |table, last| {
            set_value(table, last, value);
            Ok(())
        })
    }

    /// [`set`](Self::set) with the value written as TOML (`"\"2s\""`,
    /// `"[\"a\", \"b\"]"`, `"0.5"`).
    pub fn set_toml(&mut self, key: &str, toml: &str) -> &mut Self {
        match toml.parse::<Value>() {
            Ok(v) => self.set(key, v),
            Err(e) => self.fail(key, format!("{toml:?} is not a TOML value: {e}")),
        }
    }

    /// Removes `key` (a dotted path) if present.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.apply(key, |table, last| {
            table.remove(last);
            Ok(())
        })
    }

    /// Writes the file, then checks it with `check` (the role's loader); on
    /// refusal the original file is restored and the loader's error returned.
    pub fn save(
        self,
        check: impl FnOnce(&Path) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let io = |source| ConfigError::Io {
            path: self.path.clone(),
            source,
        };
        let before = std::fs::read(&self.path).map_err(io)?;
        std::fs::write(&self.path, self.doc.to_string()).map_err(io)?;
        if let Err(e) = check(&self.path) {
            std::fs::write(&self.path, before).map_err(io)?;
            return Err(e);
        }
        Ok(())
    }

    fn fail(&mut self, key: &str, reason: String) -> &mut Self {
        if self.error.is_none() {
            self.error = Some(ConfigError::Edit {
                path: self.path.clone(),
                key: key.to_string(),
                reason,
            });
        }
        self
    }

    /// Runs `f` on the table that holds `key`'s last part, creating the
    /// tables on the way.
    fn apply(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut Table, &str) -> Result<(), String>,
    ) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = match parts.pop() {
            Some(l) if !l.is_empty() => l,
            _ => return self.fail(key, "empty key".into()),
        };
        let mut table = self.doc.as_table_mut();
        for p in parts {
            let item = table.entry(p).or_insert_with(|| Item::Table(Table::new()));
            table = match item.as_table_mut() {
                Some(t) => t,
                None => return self.fail(key, format!("{p} is not a table")),
            };
        }
        if let Err(reason) = f(table, last) {
            return self.fail(key, reason);
        }
        self
    }
}

fn set_value(table: &mut Table, key: &str, value: Value) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        // Keep the comment that follows the value on its line.
        Some(v) => {
            let decor = v.decor().clone();
            *v = value;
            *v.decor_mut() = decor;
        }
        None => {
            table.insert(key, Item::Value(value));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: &str = "# top\nversion = 1\n\n[a]\n# the x\nx = 1 # one\n# y = 2\n\n[b]\nw = \"q\"\n";

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    fn ok(_: &Path) -> Result<(), ConfigError> {
        Ok(())
    }

    #[test]
    fn sets_keeps_comments_and_adds_tables() {
        let (_d, p) = file(T);
        let mut e = ConfigEdit::open(&p).unwrap();
        e.set("a.x", 7)
            .set("a.y", 5)
            .set_toml("b.w", "\"2s\"")
            .set("c.d.e", true);
        e.save(ok).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# the x\nx = 7 # one"), "{text}");
        assert!(text.contains("# top"), "{text}");
        let v: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(v["a"]["y"].as_integer(), Some(5));
        assert_eq!(v["b"]["w"].as_str(), Some("2s"));
        assert_eq!(v["c"]["d"]["e"].as_bool(), Some(true));
    }

    #[test]
    fn refused_edits_leave_the_file_as_it_was() {
        let (_d, p) = file(T);
        // The role's loader refuses the result: the old file stays.
        let mut e = ConfigEdit::open(&p).unwrap();
        e.set("a.x", 9);
        let err = e
            .save(|p| Err(ConfigError::invalid(p, "a.x", "too big")))
            .unwrap_err();
        assert!(err.to_string().contains("too big"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), T);
        // A path through a value and a value that is not TOML are refused
        // before anything is written.
        let mut e = ConfigEdit::open(&p).unwrap();
        e.set("version.x", 1);
        let err = e.save(ok).unwrap_err();
        assert!(err.to_string().contains("version is not a table"), "{err}");
        let mut e = ConfigEdit::open(&p).unwrap();
        e.set_toml("a.x", "2s");
        assert!(matches!(e.save(ok), Err(ConfigError::Edit { .. })));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), T);
    }
}
