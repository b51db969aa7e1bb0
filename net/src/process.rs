//! What every loopmix binary sets up the same way: logs and stop signals.
//!
//! * Logs go to **stderr**, always: stdout is for what a command prints on
//!   purpose (`init`'s JSON, `show`, `receive`'s messages), so scripts can
//!   read it. `RUST_LOG` overrides the default level; colour only on a
//!   terminal; `json` for log shippers.
//! * A process stops cleanly on SIGINT (Ctrl-C) or SIGTERM (systemd,
//!   Docker, localnet): both are the same request.

use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber: `RUST_LOG` if set, else
/// `default_level`; to stderr; JSON lines if `json`. A second call in the
/// same process is ignored (tests may start several commands).
pub fn init_logging(default_level: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Resolves on the first SIGINT or SIGTERM. If SIGTERM cannot be watched
/// (it always can on Linux), SIGINT alone still works.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C still stops");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

/// Cancels `shutdown` on SIGINT or SIGTERM (spawn it next to the work).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    shutdown_signal().await;
    shutdown.cancel();
}
