//! The validated config editor: every change a test makes to a config that
//! an `init` command wrote goes through [`edit`] — TOML edits that keep the
//! comments, checked by the binary's own loader (`NodeConfig::load`,
//! `DirectoryConfig::load`, `ClientConfig::load`), failing the test if the
//! binary would refuse the result. It is the editor localnet itself uses
//! (`loopmix_localnet::configs`, over `loopmix_net::config::ConfigEdit`).

pub use loopmix_localnet::configs::{ConfigKind as Kind, edit};
pub use loopmix_net::config::ConfigEdit as Config;
