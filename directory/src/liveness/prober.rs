//! Probing nodes: one pinned QUIC handshake per node per probe interval,
//! and the per-node hysteresis that turns probe results into this
//! authority's own up/down observation.
//!
//! [`ProbeTable`] is sans-IO (time is a parameter) so the hysteresis and
//! the flap damping are tested without sockets; [`probe`] is the I/O.
//!
//! * A node is *down* after `down_after` consecutive failed probes, *up*
//!   again after `up_after` consecutive successes.
//! * Flap damping: every down transition within the last
//!   [`FLAP_WINDOW_MS`] doubles the successes needed to come back (the
//!   first costs nothing extra), up to `max(16, up_after)`. A node that
//!   dies every minute therefore stays listed down instead of oscillating,
//!   which would make every client's routes churn with it.
//! * State exists only for nodes of the published topologies
//!   ([`ProbeTable::retain`]); a node never probed is up (no evidence), so
//!   an authority restarting with empty state accuses nobody.
//! * A node that has never answered gets [`NEW_NODE_GRACE_MS`] before its
//!   failures count: nodes register before their endpoint is up, and
//!   authorities probe the next epoch's nodes too, so without it a network
//!   that is starting would list every node down for its first seconds. A
//!   node that registered but is unreachable is still listed down, once
//!   the grace has passed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use loopmix_core::keys::NodeId;
use loopmix_net::transport::Transport;

/// Down transitions older than this no longer slow a node's return.
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Cap of the successes needed to come back (unless `up_after` is larger).
pub const MAX_UP_AFTER: u32 = 16;
/// How long failures of a node that never answered a probe are ignored.
pub const NEW_NODE_GRACE_MS: u64 = 30 * 1000;
/// Down transitions remembered per node (more cannot raise the cap).
const MAX_REMEMBERED_DOWNS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeParams {
    pub down_after: u32,
    pub up_after: u32,
}

/// A change of this authority's observation of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

impl Transition {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Transition::Down => "down",
            Transition::Up => "up",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct NodeState {
    /// When (ms) it was first probed, and whether any probe succeeded.
    first_probe: Option<u64>,
    ever_up: bool,
    down: bool,
    failures: u32,
    successes: u32,
    /// When (ms) the recent down transitions happened, oldest first.
    downs: VecDeque<u64>,
}

/// One node as this authority's probes see it (the status page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Answering (or not yet failed enough times to be observed down).
    Up,
    Down,
    /// Never answered, still within [`NEW_NODE_GRACE_MS`] or its failures.
    NeverAnswered,
}

/// Per-node probe state, bounded by the nodes of the published topologies.
#[derive(Debug)]
pub struct ProbeTable {
    params: ProbeParams,
    nodes: HashMap<NodeId, NodeState>,
}

impl ProbeTable {
    pub fn new(params: ProbeParams) -> Self {
        Self {
            params,
            nodes: HashMap::new(),
        }
    }

    /// Forgets every node not in `listed`; returns the ids forgotten (so
    /// their metric series can be removed).
    pub fn retain(&mut self, listed: &HashSet<NodeId>) -> Vec<NodeId> {
        let gone: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|id| !listed.contains(*id))
            .copied()
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }

    /// Records one probe of `id` at `now_ms`; returns the transition it
    /// caused, if any.
    pub fn record(&mut self, id: NodeId, ok: bool, now_ms: u64) -> Option<Transition> {
        let p = self.params;
        let s = self.nodes.entry(id).or_default();
        let first = *s.first_probe.get_or_insert(now_ms);
        s.ever_up |= ok;
        if !ok && !s.ever_up && now_ms.saturating_sub(first) < NEW_NODE_GRACE_MS {
            return None;
        }
        while s
            .downs
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) > FLAP_WINDOW_MS)
        {
            s.downs.pop_front();
        }
        if ok {
            s.failures = 0;
            if !s.down {
                return None;
            }
            s.successes = s.successes.saturating_add(1);
            if s.successes < needed(p.up_after, s.downs.len()) {
                return None;
            }
            s.down = false;
            s.successes = 0;
            Some(Transition::Up)
        } else {
            s.successes = 0;
            if s.down {
                return None;
            }
            s.failures = s.failures.saturating_add(1);
            if s.failures < p.down_after {
                return None;
            }
            s.down = true;
            s.failures = 0;
            if s.downs.len() >= MAX_REMEMBERED_DOWNS {
                s.downs.pop_front();
            }
            s.downs.push_back(now_ms);
            Some(Transition::Down)
        }
    }

    pub fn is_down(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|s| s.down)
    }

    /// The nodes observed down, sorted (an observation's `down` field).
    pub fn down(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.down)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    /// What the probes say about `id` now (`None`: not probed).
    pub fn observed(&self, id: &NodeId) -> Option<Observed> {
        self.nodes.get(id).map(|s| {
            if s.down {
                Observed::Down
            } else if s.ever_up {
                Observed::Up
            } else {
                Observed::NeverAnswered
            }
        })
    }

    /// Successes a down node needs now to come back up.
    pub fn successes_needed(&self, id: &NodeId) -> u32 {
        let n = self.nodes.get(id).map_or(0, |s| s.downs.len());
        needed(self.params.up_after, n)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// `up_after`, doubled for each recent down transition after the first,
/// capped at `max(MAX_UP_AFTER, up_after)`.
fn needed(up_after: u32, recent_downs: usize) -> u32 {
    let doublings = u32::try_from(recent_downs.saturating_sub(1)).unwrap_or(u32::MAX);
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    up_after
        .saturating_mul(factor)
        .min(MAX_UP_AFTER.max(up_after))
}

/// The outcome of one probe; [`ProbeResult::label`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The node completed a handshake with the pinned key.
    Ok,
    /// No handshake within the timeout (stopped, overloaded, unreachable
    /// without an error).
    Timeout,
    /// The handshake failed: refused, wrong key, unreachable.
    Failed(String),
}

impl ProbeResult {
    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Ok => "ok",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Failed(_) => "failed",
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeResult::Ok)
    }
}

/// Close code of a probe connection (the node's ingress ignores it).
const CLOSE_PROBE_DONE: u32 = 0;

/// One probe: a QUIC handshake with `addr` that accepts only `id`'s key,
/// then an immediate close. Proves that the node's endpoint runs and holds
/// its key — not that its packet path works (clients' own loops cover that).
pub async fn probe(
    transport: &Transport,
    id: NodeId,
    addr: SocketAddr,
    timeout: Duration,
) -> ProbeResult {
    match tokio::time::timeout(timeout, transport.connect(id, addr)).await {
        Ok(Ok(conn)) => {
            conn.close(CLOSE_PROBE_DONE.into(), b"probe");
            ProbeResult::Ok
        }
        Ok(Err(e)) => ProbeResult::Failed(e.to_string()),
        // Dropping the handshake future abandons the connection attempt.
        Err(_) => ProbeResult::Timeout,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use loopmix_core::keys::IdentityKeypair;

    fn table() -> ProbeTable {
        ProbeTable::new(ProbeParams {
            down_after: 3,
            up_after: 2,
        })
    }

    #[test]
    fn down_after_consecutive_failures_up_after_successes() {
        let mut t = table();
        let n = IdentityKeypair::generate().node_id();
        assert!(!t.is_down(&n), "unknown nodes are up");
        assert_eq!(t.record(n, false, 0), None);
        assert_eq!(t.record(n, false, 1), None);
        // A success in between resets the count.
        assert_eq!(t.record(n, true, 2), None);
        assert_eq!(t.record(n, false, 3), None);
        assert_eq!(t.record(n, false, 4), None);
        assert_eq!(t.record(n, false, 5), Some(Transition::Down));
        assert!(t.is_down(&n));
        assert_eq!(t.down(), vec![n]);
        assert_eq!(t.record(n, false, 6), None, "one transition only");
        assert_eq!(t.record(n, true, 7), None);
        assert_eq!(t.record(n, false, 8), None, "a failure resets successes");
        assert_eq!(t.record(n, true, 9), None);
        assert_eq!(t.record(n, true, 10), Some(Transition::Up));
        assert!(t.down().is_empty());
    }

    #[test]
    fn flapping_nodes_need_more_and_more_successes() {
        let mut t = table();
        let n = IdentityKeypair::generate().node_id();
        let mut now = 0;
        t.record(n, true, now);
        let cycle = |t: &mut ProbeTable, now: &mut u64| -> u32 {
            for _ in 0..3 {
                *now += 2000;
                t.record(n, false, *now);
            }
            assert!(t.is_down(&n));
            let mut ok = 0;
            loop {
                *now += 2000;
                ok += 1;
                if t.record(n, true, *now) == Some(Transition::Up) {
                    return ok;
                }
            }
        };
        // 2, then doubled per further down within 10 min, capped at 16.
        let needed: Vec<u32> = (0..6).map(|_| cycle(&mut t, &mut now)).collect();
        assert_eq!(needed, vec![2, 4, 8, 16, 16, 16]);
        // Ten quiet minutes later the history has aged out.
        now += FLAP_WINDOW_MS + 1;
        assert_eq!(cycle(&mut t, &mut now), 2);
    }

    #[test]
    fn a_node_that_never_answered_gets_a_grace_period() {
        let mut t = table();
        let (starting, dead) = (
            IdentityKeypair::generate().node_id(),
            IdentityKeypair::generate().node_id(),
        );
        // Probed before its endpoint is up: no accusation, then it answers.
        for now in (0..NEW_NODE_GRACE_MS).step_by(2000) {
            assert_eq!(t.record(starting, false, now), None);
            assert_eq!(t.record(dead, false, now), None);
        }
        assert_eq!(t.record(starting, true, NEW_NODE_GRACE_MS), None);
        assert!(t.down().is_empty());
        // The one that never answers is listed after the grace…
        let mut now = NEW_NODE_GRACE_MS;
        let mut tr = None;
        while tr.is_none() {
            tr = t.record(dead, false, now);
            now += 2000;
        }
        assert_eq!(tr, Some(Transition::Down));
        assert_eq!(now - NEW_NODE_GRACE_MS, 3 * 2000);
        // …and one that answered once is judged at once from then on.
        for k in 1..=3 {
            let tr = t.record(starting, false, NEW_NODE_GRACE_MS + k);
            assert_eq!(tr, (k == 3).then_some(Transition::Down));
        }
    }

    #[test]
    fn state_is_bounded_by_the_listed_nodes() {
        let mut t = table();
        let ids: Vec<NodeId> = (0..100)
            .map(|_| IdentityKeypair::generate().node_id())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            t.record(*id, true, 0);
            for k in 1..=3 {
                t.record(*id, i % 2 == 0, k);
            }
        }
        assert_eq!(t.len(), 100);
        let keep: HashSet<NodeId> = ids[..10].iter().copied().collect();
        let gone = t.retain(&keep);
        assert_eq!(gone.len(), 90);
        assert_eq!(t.len(), 10);
        assert!(t.down().iter().all(|d| keep.contains(d)));
        // Flap history is bounded per node too.
        let n = ids[0];
        for i in 0..1000u64 {
            t.record(n, i % 4 == 3, i);
        }
        assert!(t.successes_needed(&n) <= MAX_UP_AFTER);
    }

    #[test]
    fn needed_never_overflows() {
        assert_eq!(needed(2, 0), 2);
        assert_eq!(needed(2, 1), 2);
        assert_eq!(needed(2, 2), 4);
        assert_eq!(needed(2, 100), 16);
        assert_eq!(needed(1000, 100), 1000);
        assert_eq!(needed(u32::MAX, usize::MAX), u32::MAX);
    }
}
