//! The end-to-end tests' library: everything the scenario files under
//! `e2e/` share to start real loopmix processes on loopback and look at
//! them. Nothing here ships in a production crate.
//!
//! * [`bins`]: the workspace binaries the tests run (built once per run);
//! * [`network`]: the one launcher of whole networks, [`network::TestNet`]
//!   (a `loopmix_localnet::network::Localnet`: authorities, mixes,
//!   providers, exit, SOCKS5 proxy; optionally behind fault relays);
//! * [`node`]: single `loopmix-node` processes, the fixed-topology fixture
//!   [`mixnet`] builds on (no directory at all), and [`node::Peer`], an
//!   in-process provider that injects and receives Sphinx packets over the
//!   real transport: the kit `loopmix-node bench` and `demo` run
//!   (`loopmix_node::bench::procs`), not a copy of it;
//! * [`authorities`]: `loopmix-directory` processes alone, k-of-n, for the
//!   authority API's own tests;
//! * [`config`]: the validated config editor (TOML edits, checked by the
//!   binaries' own config loaders), the one localnet uses;
//! * [`http`]: the HTTP fixture: an origin server to fetch through the
//!   mixnet, and the GET every loopmix tool reads `/metrics` with
//!   (`loopmix_net::scrape`);
//! * [`mixnet`], [`socks`], [`authority_api`]: the helpers of each family
//!   of scenarios (fixed-topology node tests, SOCKS5, authority API);
//! * [`histogram`], [`page`]: for the benchmarks: histograms read back
//!   from `/metrics`, and a fixed web page with its server and a headless
//!   `chromium` to load it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod authorities;
pub mod authority_api;
pub mod bins;
pub mod config;
pub mod histogram;
pub mod http;
pub mod mixnet;
pub mod network;
pub mod node;
pub mod page;
pub mod socks;

pub use bins::workspace_bin;
