//! loopmix-net: the I/O shell every loopmix process shares, around the pure
//! protocol in `loopmix-core`.
//!
//! * [`clock`]: the wall clock (`unix_now`, `unix_now_ms`), read only here.
//! * [`config`]: reading a role's TOML config, one [`ConfigError`](config::ConfigError).
//! * [`transport`]: QUIC with pinned raw public keys, ingress and egress.
//! * [`directory`]: [`DirectoryClient`](directory::DirectoryClient), the
//!   fetch/verify/cache/register client of the signed directory.
//! * [`routing`]: route choice with the network's signed liveness list
//!   applied, and the metrics that show it.
//! * [`provider_control`]: one client ↔ provider control message over a QUIC
//!   stream, with a size limit and a timeout.
//! * [`metrics`]: per-process Prometheus registries and the `/metrics`
//!   endpoint.
//! * [`scrape`]: reading a process's `/metrics` back (localnet status,
//!   bench, tests).
//! * [`files`]: files written whole or not at all (`write_atomic`).
//! * [`process`]: what every binary sets up alike: logs to stderr, stop on
//!   SIGINT or SIGTERM.
//! * [`sleep_until`]: the timer every driver loop around a sans-IO state
//!   machine selects on.

pub mod clock;
pub mod config;
pub mod directory;
pub mod files;
pub mod metrics;
pub mod process;
pub mod provider_control;
pub mod routing;
pub mod scrape;
pub mod transport;

/// Sleeps until `deadline` (a ticker's next event), or forever when there is
/// none: the shape every `select!` over a [`PoissonTicker`](loopmix_core::poisson::PoissonTicker) or a delay queue
/// needs.
pub async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
