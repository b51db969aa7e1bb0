//! Why a node could not start or had to stop: one typed error for the
//! library's API (the binary adds context with `anyhow`).

use std::path::PathBuf;

use loopmix_core::keys::KeyError;
use loopmix_core::mixing::replay::ReplayCacheError;
use loopmix_core::pki::TrustError;
use loopmix_net::directory::DirectoryError;
use loopmix_net::metrics::MetricError;
use loopmix_net::transport::TransportError;

use crate::provider::control::ControlSetupError;
use crate::provider::inbox::InboxError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("key: {0}")]
    Key(#[from] KeyError),
    #[error("replay filter: {0}")]
    Replay(#[from] ReplayCacheError),
    /// The topology file is unreadable, invalid, or does not list this
    /// node as configured.
    #[error("refusing to start: {file}: {reason}")]
    BadTopologyFile { file: PathBuf, reason: String },
    #[error("pinned authorities: {0}")]
    Trust(#[from] TrustError),
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricError),
    #[error("inbox: {0}")]
    Inbox(#[from] InboxError),
    #[error("provider control: {0}")]
    Control(#[from] ControlSetupError),
    /// A setting that parsed but cannot work with the rest.
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A directory to create, a port to bind, a file to write.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}
