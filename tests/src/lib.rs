//! The end-to-end tests' library: everything the scenario files under
//! `e2e/` share to start real loopmix processes on loopback and look at
//! them. Nothing here ships in a production crate.
//!
//! * [`bins`]: the workspace binaries the tests run (built once per run);
//! * [`node`]: `loopmix-node` processes (fixed-topology mixnets and
//!   directory-run networks) and [`node::Peer`], an in-process provider
//!   that injects and receives Sphinx packets over the real transport;
//! * [`authorities`]: `loopmix-directory` processes, k-of-n;
//! * [`config`]: the validated config editor (TOML edits, checked by the
//!   binaries' own config loaders);
//! * [`http`]: the HTTP fixture: an origin server to fetch through the
//!   mixnet and a GET for `/metrics`;
//! * [`mixnet`], [`socks`], [`authority_api`], [`faultnet`]: the networks and
//!   helpers of each family of scenarios (node, SOCKS5, authority API,
//!   faults and liveness on a `loopmix_localnet::network::Localnet`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod authorities;
pub mod authority_api;
pub mod bins;
pub mod config;
pub mod faultnet;
pub mod http;
pub mod mixnet;
pub mod node;
pub mod socks;

pub use bins::workspace_bin;
