//! Fault injection without root or netem (`tc netem` does not exist on the
//! machines the tests run on).
//!
//! * [`relay`]: a UDP relay in front of a node that drops, delays,
//!   duplicates and reorders datagrams, per direction and per source, with
//!   rules changed at run time and counters of everything it did;
//! * [`RelaySet`]: one relay per named node, as the localnet uses them
//!   (`Localnet::use_fault_relays`): each node publishes its relay's address,
//!   so every peer reaches it through the relay.
//!
//! The scenarios built on them (loss, a killed mix, a restarted provider, an
//! authority down, a partitioned layer) are `tests/e2e/faults.rs`;
//! `docs/FAULTS.md` says how to run them and `loopmix-faultrelay` runs one
//! relay by hand.

pub mod relay;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use relay::{
    Direction, DirectionStats, FaultRelay, Faults, LinkFaults, RelayConfig, RelayError,
    RelayHandle, RelayStats, SIZE_BUCKET, SIZE_BUCKETS, size_bucket,
};

/// Relays in front of named nodes, all running on one tokio runtime.
pub struct RelaySet {
    rt: tokio::runtime::Handle,
    cfg: RelayConfig,
    relays: BTreeMap<String, FaultRelay>,
}

impl RelaySet {
    /// Relays will run on `rt`, which must outlive them.
    pub fn new(rt: tokio::runtime::Handle, cfg: RelayConfig) -> Self {
        Self {
            rt,
            cfg,
            relays: BTreeMap::new(),
        }
    }

    /// Starts a relay for `name` on a free loopback port (upstream set
    /// later, once the node listens); returns the address to publish.
    pub fn add(&mut self, name: &str) -> Result<SocketAddr, RelayError> {
        let mut cfg = self.cfg.clone();
        // Each relay its own random stream, reproducible per name.
        cfg.seed = name
            .bytes()
            .fold(cfg.seed, |h, b| h.rotate_left(5) ^ u64::from(b));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let r = FaultRelay::start(&self.rt, loopback, None, cfg)?;
        let addr = r.public_addr();
        self.relays.insert(name.to_string(), r);
        Ok(addr)
    }

    pub fn get(&self, name: &str) -> Option<RelayHandle> {
        self.relays.get(name).map(FaultRelay::handle)
    }

    /// The relay whose public address is `addr` (as a topology lists it).
    pub fn by_public_addr(&self, addr: SocketAddr) -> Option<(&str, RelayHandle)> {
        self.relays
            .iter()
            .find(|(_, r)| r.public_addr() == addr)
            .map(|(n, r)| (n.as_str(), r.handle()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.relays.keys().map(String::as_str)
    }

    /// Removes every fault from every relay.
    pub fn heal_all(&self) {
        for r in self.relays.values() {
            r.heal();
        }
    }

    /// Every relay's counters, by node name.
    pub fn stats(&self) -> BTreeMap<String, RelayStats> {
        self.relays
            .iter()
            .map(|(n, r)| (n.clone(), r.stats()))
            .collect()
    }
}
