//! Loading a role's TOML config file, the same way for every binary: read,
//! parse, check the version, and one error type that names the file and the
//! field. Each role's config module (`loopmix_node::config`,
//! `loopmix_client::config`, `loopmix_directory::config`) adds its own
//! validation rules on top and reports them as [`ConfigError::Invalid`].
//! [`ConfigEdit`] is the one way tools change a config an `init` command
//! wrote: TOML edits that keep the comments, checked by the role's loader.

use std::path::{Path, PathBuf};

mod edit;
pub use edit::ConfigEdit;

use serde::de::DeserializeOwned;

/// Why a config file was refused: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: cannot set `{key}`: {reason}")]
    Edit {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    /// A value that parsed but breaks a rule.
    pub fn invalid(path: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses `path` (unknown keys are refused where the type says
/// `deny_unknown_fields`, which every loopmix config does).
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses a config written for another version of its format.
pub fn check_version(path: &Path, found: u32, expected: u32) -> Result<(), ConfigError> {
    if found == expected {
        return Ok(());
    }
    Err(ConfigError::invalid(
        path,
        "version",
        format!("unsupported version {found}, expected {expected}"),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        version: u32,
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        let e = read_toml::<Sample>(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e}");
        std::fs::write(&p, "version = 1\nbogus = 2\n").unwrap();
        let e = read_toml::<Sample>(&p).unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("bogus"),
            "{e}"
        );
        std::fs::write(&p, "version = 2\n").unwrap();
        let s: Sample = read_toml(&p).unwrap();
        let e = check_version(&p, s.version, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("field `version`: unsupported version 2, expected 1"),
            "{e}"
        );
        assert!(check_version(&p, 1, 1).is_ok());
    }
}
