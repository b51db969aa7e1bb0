//! What can stop a client, a SOCKS5 proxy or an exit from starting: one
//! typed error for the library's public API (the binary adds context with
//! `anyhow`).

use std::path::PathBuf;

use loopmix_core::keys::{KeyError, NodeId};
use loopmix_core::pki::TrustError;
use loopmix_net::config::ConfigError;
use loopmix_net::directory::DirectoryError;
use loopmix_net::metrics::MetricError;
use loopmix_net::transport::TransportError;

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("client key: {0}")]
    Key(#[from] KeyError),
    #[error("pinned authorities: {0}")]
    Trust(#[from] TrustError),
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    /// No verified topology listing our provider within the start-up wait.
    #[error("no usable topology: {0}")]
    NoTopology(String),
    #[error("provider {provider} is not in the topology of epoch {epoch}")]
    ProviderNotListed { provider: NodeId, epoch: u64 },
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricError),
    /// A port to listen on or a file to write.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| ClientError::Io { what, source }
    }

    pub(crate) fn writing(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        Self::io(format!("writing {}", PathBuf::from(path).display()))
    }
}
