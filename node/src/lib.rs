//! loopmix-node: the mix node. The binary (`main.rs`) is a thin shell over
//! this library, which the end-to-end tests (`tests/`) and the benchmark share.
//!
//! The packet path is in [`pipeline`]; the sans-IO pieces it drives live in
//! `loopmix_core::mixing`.

pub mod bench;
pub mod config;
pub mod cover;
pub mod demo;
pub mod directory_sync;
pub mod epoch_keys;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod provider;
pub mod topology_source;
