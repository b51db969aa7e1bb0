//! The client's messaging engine, sans-IO (PROTOCOL.md section 6).
//!
//! No sockets, no timers, no tasks: the I/O shell (`loopmix_client::runtime`) calls
//! in with the current time and sends what comes out. The same engine runs
//! under the in-memory network of the tests and under QUIC.
//!
//! ```text
//! send/reply ─► Outbox (bounded; retransmissions first, then new fragments round robin)
//! λ_P tick ─► real_or_drop ─► next fragment as a data or reply packet, else a drop packet
//! λ_L tick ─► loop_packet  ─► own provider → L1 → L2 → L3 → own provider (LoopTracker)
//! λ_D tick ─► drop_packet  ─► to a uniformly random provider
//! inbox  ─► on_inbox ─► data: open → Reassembler → Received
//!                      ack:  ack id → RetransmitQueue → Delivered
//!                      reply: identifier → reply key → Reassembler → Received
//!                      loop: LoopTracker → LoopReturned
//! tick ─► ack timeouts (requeue / Failed), expiry of reassembly, loops, reply state
//! ```
//!
//! # Liveness
//!
//! Routes are drawn from the topology given to [`Engine::set_topology`],
//! to which the shell has applied the network's signed down list
//! ([`Topology::with_exclusions`]): new routes, SURB-ACK routes and reply
//! blocks all avoid what the network lists as down. Loops and SURB-ACKs
//! are also probes (`probes.rs`): our own evidence decides only which
//! mixes a retransmission avoids.
//!
//! # Packets
//!
//! * **Data** (6.3, 6.4): one fragment sealed to the recipient's encryption
//!   key, route `own provider → L1 → L2 → L3 → recipient's provider`
//!   (random mix per layer, Exp(μ) delay per hop), plus a SURB-ACK for
//!   fresh mixes `L1' → L2' → L3' → own provider` whose identifier is a
//!   fresh random ack id. The ack timeout is
//!   `multiplier × (sum of both routes' sampled delays) + addition +
//!   pull_interval` (6.4: the ack waits in our inbox until the next pull).
//!   A retransmission is built anew: fresh routes, fresh SURB-ACK, new ack
//!   id; every ack id of a fragment counts.
//! * **Reply** (6.5): one fragment over one reply block, sent through our own
//!   provider like everything else; the block's SURB must start there (its
//!   maker built it for our provider), and the frame carries the block's
//!   key epoch. **Replies are not acknowledged**: a reply packet has no room
//!   for a SURB-ACK of the replier's (a reply block's payload is the whole
//!   packet), so there is no `Delivered` for a reply, and a lost reply
//!   fragment loses the reply. Reply packets still only leave in λ_P slots,
//!   in place of drop packets.
//! * **Loop** and **drop** cover (6.2).
//!
//! Fragments are sized for the largest SURB-ACK (4 hops, 3 layers), so a
//! message never has to be re-cut when the layer count changes. Packets are
//! built when their λ_P slot comes, with the topology in force then: an
//! epoch change needs nothing special (SURB-ACKs and reply blocks made under
//! the previous epoch keep working while nodes hold its keys).
//!
//! # What "delivered" means
//!
//! The recipient's *provider* sends the SURB-ACK once it has durably stored
//! the packet (6.4). `Delivered` therefore means "every fragment is in the
//! recipient's inbox", not "read by the recipient".
//!
//! # Bounds
//!
//! Nothing here panics on any input, and everything is bounded: the send
//! queue (messages and bytes), outstanding fragments, ack ids (per message,
//! freed with it), reassembly ([`ReassemblyLimits`]), pending loops, reply
//! keys and held reply blocks (count limits and a TTL). Inbox items that are
//! not what they claim are counted by label in [`EngineStats::bad_inbox`].

mod build;
mod inbox;
mod outbox;
mod probes;
mod stores;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::e2e::envelope::ENVELOPE_HEADER_LEN;
use crate::e2e::{
    ClientAddress, EncryptionKeypair, Envelope, MAX_REPLY_BLOCKS, REPLY_BLOCK_OVERHEAD, ReplyBlock,
    SURB_LEN, data_fragment_capacity, reply_fragment_capacity,
};
use crate::keys::NodeId;
use crate::message::{
    MessageId, Reassembler, ReassemblyLimits, RetransmitConfig, max_fragment_data, split,
};
use crate::topology::{Role, Topology};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use build::{BuildError, Me, RouteChoice};
use outbox::{Outbox, Slot, Target};
use probes::Probes;
use stores::{HeldBlocks, Recoveries, ReplyKey, ReplyKeys};

pub use stores::{BlockTag, ReplyHandle, block_tag};

/// Revocations held per holder at most (each reply key is revoked once, so
/// the reply-key limit bounds them too).
const MAX_PENDING_REVOCATIONS: usize = 4096;

/// Events buffered between `tick`/`on_inbox` calls at most (`Failed`
/// events are bounded by the send queue and always kept).
const MAX_BUFFERED_EVENTS: usize = 4096;

/// Loop timeouts and TTLs are capped here so that `Instant + timeout`
/// never overflows whatever the configuration says.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Engine settings. Rates and delays are network parameters and come from
/// the topology instead.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Largest message body [`Engine::send`] and [`Engine::reply`] accept.
    /// Default 1 MiB.
    pub max_message_bytes: usize,
    /// Messages queued or awaiting acknowledgement at most; `send` and
    /// `reply` refuse more ([`SendError::QueueFull`]). Default 256.
    pub send_queue: usize,
    /// Bytes of unsent or unacknowledged fragments at most. Default 64 MiB.
    pub send_queue_bytes: usize,
    /// Sends of one fragment (the first included) before its message is
    /// reported failed. Overrides `retransmit.max_attempts`. Default 10.
    pub max_attempts: u32,
    /// How often the shell pulls the inbox; added to every ack timeout,
    /// because an ack waits in the inbox until the next pull. The runtime
    /// sets it from the client config (`messages.pull_interval`, 250 ms by
    /// default); 500 ms here only for engines built without one (tests).
    pub pull_interval: Duration,
    /// Ack timeout rule and outstanding limit ([`RetransmitConfig`]).
    pub retransmit: RetransmitConfig,
    /// Receive-side limits. `max_message_bytes` is raised, if needed, to
    /// fit a message of our own `max_message_bytes` with the most reply
    /// blocks.
    pub reassembly: ReassemblyLimits,
    /// Loops awaiting their return at most (the oldest counts as lost).
    /// Default 1024.
    pub loop_pending_limit: usize,
    /// A loop not back after this long is lost. Default 60 s.
    pub loop_timeout: Duration,
    /// Reply keys kept for blocks we handed out (the oldest is forgotten).
    /// Default 4096.
    pub reply_key_limit: usize,
    /// Recovery material kept for SURB-ACKs we sent (one per data packet,
    /// each about 100 bytes; the oldest is forgotten, and with it the
    /// chance to read its ack), kept at most 10 minutes. Default 16384.
    pub ack_recovery_limit: usize,
    /// Received messages whose reply blocks are kept (the oldest are
    /// forgotten). Default 1024.
    pub reply_handle_limit: usize,
    /// How long reply keys and received reply blocks are kept. Default 1 h.
    pub reply_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            send_queue: 256,
            send_queue_bytes: 64 << 20,
            max_attempts: 10,
            pull_interval: Duration::from_millis(500),
            retransmit: RetransmitConfig::default(),
            reassembly: ReassemblyLimits::default(),
            loop_pending_limit: 1024,
            loop_timeout: Duration::from_secs(60),
            reply_key_limit: 4096,
            ack_recovery_limit: 16384,
            reply_handle_limit: 1024,
            reply_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a packet is, for metrics only: on the wire they all look the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutKind {
    /// A fragment's first transmission.
    Real,
    /// A fragment sent again after its ack timed out.
    Retransmission,
    /// A fragment over a reply block.
    Reply,
    Drop,
    Loop,
}

impl OutKind {
    pub fn label(&self) -> &'static str {
        match self {
            OutKind::Real => "real",
            OutKind::Retransmission => "retransmission",
            OutKind::Reply => "reply",
            OutKind::Drop => "drop",
            OutKind::Loop => "loop",
        }
    }
}

/// One Sphinx packet to hand to our provider.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The Sphinx first hop. Always our provider for packets built here.
    pub first_hop: NodeId,
    /// The frame's `key_epoch`: the epoch whose keys built the packet.
    pub key_epoch: u64,
    pub packet: Vec<u8>,
    pub kind: OutKind,
    /// For a fragment's first transmission ([`OutKind::Real`],
    /// [`OutKind::Reply`]): when its message was queued, so the shell can
    /// time the wait for the λ_P slot that carries it.
    pub queued_at: Option<Instant>,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("first_hop", &self.first_hop)
            .field("key_epoch", &self.key_epoch)
            .field("len", &self.packet.len())
            .field("kind", &self.kind)
            .field("queued_at", &self.queued_at)
            .finish()
    }
}

/// What the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete message. `reply` is set if it carried reply blocks we can
    /// answer over ([`Engine::reply`]); it reveals nothing about the sender.
    Received {
        message: MessageId,
        body: Vec<u8>,
        reply: Option<ReplyHandle>,
    },
    /// Every fragment of a message we sent is in the recipient's inbox.
    Delivered { message: MessageId },
    /// A message we sent will not arrive: a fragment went unacknowledged
    /// `max_attempts` times, or its packets cannot be built any more (the
    /// recipient's provider left the topology, a reply block is unusable).
    Failed { message: MessageId, reason: String },
    /// One of our loops came back after `rtt` (including the wait for the
    /// pull).
    LoopReturned { rtt: Duration },
    /// One of our loops did not come back in time.
    LoopLost,
}

/// Why `send` or `reply` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("message of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("send queue full ({0})")]
    QueueFull(&'static str),
    #[error("{0} is not a provider of the topology in force")]
    UnknownProvider(NodeId),
    #[error("our provider {0} is not in the topology in force")]
    OwnProviderUnknown(NodeId),
    #[error("no topology yet")]
    NoTopology,
    #[error("{requested} reply blocks requested, at most {MAX_REPLY_BLOCKS}")]
    TooManyReplyBlocks { requested: usize },
    #[error("unknown or expired reply handle")]
    UnknownReplyHandle,
    #[error("the reply needs {needed} reply blocks, {available} left")]
    NotEnoughReplyBlocks { needed: usize, available: usize },
    #[error("cannot build reply blocks: {0}")]
    Build(String),
}

impl SendError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::QueueFull(_) => "queue_full",
            Self::UnknownProvider(_) => "unknown_provider",
            Self::OwnProviderUnknown(_) => "own_provider_unknown",
            Self::NoTopology => "no_topology",
            Self::TooManyReplyBlocks { .. } => "too_many_reply_blocks",
            Self::UnknownReplyHandle => "unknown_reply_handle",
            Self::NotEnoughReplyBlocks { .. } => "not_enough_reply_blocks",
            Self::Build(_) => "build",
        }
    }
}

/// A snapshot of the engine's state and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Messages queued or awaiting acknowledgement.
    pub messages: usize,
    /// Fragments waiting for a λ_P slot (retransmissions included).
    pub queued_fragments: usize,
    /// Fragments sent and not acknowledged yet.
    pub outstanding_fragments: usize,
    /// Bytes of fragments held for sending or retransmission.
    pub queued_bytes: usize,
    /// Incomplete messages being reassembled.
    pub pending_reassemblies: usize,
    /// Keys of reply blocks we handed out.
    pub reply_keys: usize,
    /// Recovery material held for our SURB-ACKs and loops.
    pub recoveries: usize,
    /// Received messages whose reply blocks we hold.
    pub reply_handles: usize,
    /// Loops awaiting their return.
    pub loops_pending: usize,
    /// Returned / resolved loops over the recent window.
    pub loop_return_ratio: Option<f64>,
    /// Packets built, by [`OutKind::label`].
    pub sent: BTreeMap<&'static str, u64>,
    pub retransmissions: u64,
    /// Fragments received again (retransmissions, re-pulled inbox items).
    pub duplicate_fragments: u64,
    /// Acks for fragments already acknowledged.
    pub duplicate_acks: u64,
    /// Inbox items that were refused, as `"what:label"`, e.g.
    /// `"payload:unknown_kind"`, `"data:open"`, `"ack:unknown"`.
    pub bad_inbox: BTreeMap<String, u64>,
    /// Incomplete messages dropped by the reassembly timeout.
    pub reassembly_expired: u64,
    /// Nodes our own loops and acks say are down (they only steer
    /// retransmissions), sorted.
    pub suspects: Vec<NodeId>,
    /// Retransmissions built while we suspected some node: their routes
    /// avoided the suspects where the per-layer cap allowed.
    pub routes_avoiding: u64,
}

/// The most an envelope adds to a body: its header and
/// [`MAX_REPLY_BLOCKS`] blocks of 5-hop SURBs.
pub const MAX_ENVELOPE_OVERHEAD: usize =
    ENVELOPE_HEADER_LEN + MAX_REPLY_BLOCKS * (REPLY_BLOCK_OVERHEAD + SURB_LEN);

/// Fragment data per data packet for a Sphinx `payload_size`.
pub fn data_fragment_size(payload_size: usize) -> usize {
    max_fragment_data(data_fragment_capacity(payload_size, SURB_LEN))
}

/// Fragment data per reply packet for a Sphinx `payload_size`.
pub fn reply_fragment_size(payload_size: usize) -> usize {
    max_fragment_data(reply_fragment_capacity(payload_size))
}

#[derive(Default)]
struct Counters {
    sent: BTreeMap<&'static str, u64>,
    retransmissions: u64,
    duplicate_fragments: u64,
    duplicate_acks: u64,
    bad: BTreeMap<(&'static str, &'static str), u64>,
    reassembly_expired: u64,
    routes_avoiding: u64,
}

/// The messaging engine of one client. See the module documentation.
pub struct Engine {
    me: Me,
    encryption: EncryptionKeypair,
    cfg: EngineConfig,
    topology: Option<Arc<Topology>>,
    rng: StdRng,
    outbox: Outbox,
    reassembler: Reassembler<Instant>,
    probes: Probes,
    reply_keys: ReplyKeys,
    recoveries: Recoveries,
    /// Revoked reply blocks per holder, not yet handed to the mux.
    revoked: BTreeMap<NodeId, Vec<BlockTag>>,
    held: HeldBlocks,
    /// Events found outside `tick` and `on_inbox` (failures while building,
    /// loops evicted), handed out by the next of those calls.
    events: Vec<Event>,
    counters: Counters,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("address", &self.address())
            .field("epoch", &self.topology.as_ref().map(|t| t.epoch()))
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for the client `identity` at `provider`, with a CSPRNG
    /// seeded from the thread-local one.
    pub fn new(
        identity: NodeId,
        encryption: EncryptionKeypair,
        provider: NodeId,
        cfg: EngineConfig,
    ) -> Self {
        Self::with_rng(
            identity,
            encryption,
            provider,
            cfg,
            StdRng::from_rng(&mut rand::rng()),
        )
    }

    /// Like [`Engine::new`] with the given RNG (routes, delays, identifiers,
    /// keys and ephemeral keys come from it; sphinx-packet adds OS
    /// randomness of its own to every header).
    pub fn with_rng(
        identity: NodeId,
        encryption: EncryptionKeypair,
        provider: NodeId,
        mut cfg: EngineConfig,
        rng: StdRng,
    ) -> Self {
        cfg.retransmit.max_attempts = cfg.max_attempts.max(1);
        cfg.loop_timeout = cfg.loop_timeout.min(MAX_TIMEOUT);
        cfg.reply_ttl = cfg.reply_ttl.min(MAX_TIMEOUT);
        let fits = cfg.max_message_bytes.saturating_add(MAX_ENVELOPE_OVERHEAD);
        cfg.reassembly.max_message_bytes = cfg.reassembly.max_message_bytes.max(fits);
        let mut retransmit = cfg.retransmit.clone();
        retransmit.addition = retransmit.addition.saturating_add(cfg.pull_interval);
        Self {
            me: Me { identity, provider },
            encryption,
            outbox: Outbox::new(retransmit),
            reassembler: Reassembler::new(cfg.reassembly.clone()),
            probes: Probes::new(cfg.loop_pending_limit, cfg.loop_timeout, cfg.pull_interval),
            reply_keys: ReplyKeys::new(cfg.reply_key_limit, cfg.reply_ttl),
            recoveries: Recoveries::new(
                cfg.ack_recovery_limit,
                cfg.loop_pending_limit,
                cfg.loop_timeout,
            ),
            revoked: BTreeMap::new(),
            held: HeldBlocks::new(cfg.reply_handle_limit, cfg.reply_ttl),
            cfg,
            topology: None,
            rng,
            events: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Our address: identity, encryption key, provider.
    pub fn address(&self) -> ClientAddress {
        ClientAddress::new(self.me.identity, self.encryption.public(), self.me.provider)
    }

    /// The effective configuration (after the adjustments `new` documents).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The verified topology in force: packets are built with its keys, and
    /// carry its epoch as `key_epoch`. Routes are drawn from its routable
    /// mixes: pass it through [`Topology::with_exclusions`] with the
    /// network's signed liveness list first (the shell does).
    pub fn set_topology(&mut self, t: Arc<Topology>) {
        self.probes.set_topology(&t);
        // Reply blocks we handed out that cross a mix now listed down
        // would carry their replies into it: tell their holders.
        if !t.excluded().is_empty() {
            for (holder, tag) in self.reply_keys.revoke_crossing(t.excluded()) {
                let pending = self.revoked.entry(holder).or_default();
                if pending.len() < MAX_PENDING_REVOCATIONS {
                    pending.push(tag);
                }
            }
        }
        self.topology = Some(t);
    }

    /// Tags of reply blocks we gave `holder` that it must not use any more
    /// (their routes cross a mix the network lists down), at most `max`;
    /// the rest stay for the next call. The stream mux sends them to the
    /// exit in a REVOKE frame (PROTOCOL.md 7.4).
    pub fn take_revocations(&mut self, holder: &NodeId, max: usize) -> Vec<BlockTag> {
        let Some(pending) = self.revoked.get_mut(holder) else {
            return Vec::new();
        };
        let n = pending.len().min(max);
        let out: Vec<BlockTag> = pending.drain(..n).collect();
        if pending.is_empty() {
            self.revoked.remove(holder);
        }
        out
    }

    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    fn topology_or_err(&self) -> Result<Arc<Topology>, SendError> {
        let t = self.topology.clone().ok_or(SendError::NoTopology)?;
        if t.get(&self.me.provider)
            .is_none_or(|e| e.role != Role::Provider)
        {
            return Err(SendError::OwnProviderUnknown(self.me.provider));
        }
        Ok(t)
    }

    fn fresh_message_id(&mut self) -> MessageId {
        loop {
            let id: MessageId = self.rng.random();
            if !self.outbox.contains(&id) {
                return id;
            }
        }
    }

    fn check_room(&self, bytes: usize) -> Result<(), SendError> {
        if self.outbox.messages() >= self.cfg.send_queue {
            return Err(SendError::QueueFull("messages"));
        }
        if self.outbox.bytes().saturating_add(bytes) > self.cfg.send_queue_bytes {
            return Err(SendError::QueueFull("bytes"));
        }
        Ok(())
    }

    /// Cuts `envelope` into encoded fragments of `size` data bytes, at most
    /// `u16::MAX` of them.
    fn fragments(
        envelope: &Envelope,
        id: MessageId,
        size: usize,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, SendError> {
        let bytes = envelope
            .encode()
            .map_err(|e| SendError::Build(e.to_string()))?;
        let too_large = SendError::TooLarge {
            len: envelope.body.len(),
            max,
        };
        let frags = split(id, &bytes, size, u16::MAX).map_err(|_| too_large)?;
        Ok(frags.iter().map(|f| f.encode()).collect())
    }

    /// Queues `body` for `to`, with `reply_blocks` reply blocks `to` can
    /// answer over. Its fragments leave in the next λ_P slots.
    pub fn send(
        &mut self,
        to: &ClientAddress,
        body: Vec<u8>,
        reply_blocks: usize,
        now: Instant,
    ) -> Result<MessageId, SendError> {
        self.send_tagged(to, body, reply_blocks, now)
            .map(|(id, _)| id)
    }

    /// [`Engine::send`], also returning the tags of the reply blocks
    /// attached: a holder with several sessions of ours (the exit, one per
    /// SOCKS isolation key) must be told of a revoked block only in the
    /// session that holds it, or the revocation would link the sessions.
    pub fn send_tagged(
        &mut self,
        to: &ClientAddress,
        body: Vec<u8>,
        reply_blocks: usize,
        now: Instant,
    ) -> Result<(MessageId, Vec<BlockTag>), SendError> {
        let t = self.topology_or_err()?;
        let max = self.cfg.max_message_bytes;
        if body.len() > max {
            return Err(SendError::TooLarge {
                len: body.len(),
                max,
            });
        }
        if reply_blocks > MAX_REPLY_BLOCKS {
            return Err(SendError::TooManyReplyBlocks {
                requested: reply_blocks,
            });
        }
        if t.get(&to.provider).is_none_or(|e| e.role != Role::Provider) {
            return Err(SendError::UnknownProvider(to.provider));
        }
        let size = data_fragment_size(t.params().payload_size);
        if size == 0 {
            return Err(SendError::TooLarge {
                len: body.len(),
                max: 0,
            });
        }
        self.check_room(body.len())?;
        let mut keys = Vec::with_capacity(reply_blocks);
        let mut blocks = Vec::with_capacity(reply_blocks);
        for _ in 0..reply_blocks {
            let build::NewBlock {
                id,
                block,
                recovery,
                mixes,
            } = build::reply_block(&t, &mut self.rng, &self.me, &to.provider)
                .map_err(|e| SendError::Build(e.to_string()))?;
            keys.push((
                id,
                ReplyKey {
                    key: block.key,
                    recovery,
                    mixes,
                    holder: to.identity,
                    revoked: false,
                },
            ));
            blocks.push(block);
        }
        let envelope = Envelope {
            reply_blocks: blocks,
            body,
        };
        let id = self.fresh_message_id();
        let fragments = Self::fragments(&envelope, id, size, max)?;
        self.check_room(fragments.iter().map(Vec::len).sum())?;
        let tags = keys.iter().map(|(_, k)| block_tag(&k.key)).collect();
        for (rid, key) in keys {
            self.reply_keys.insert(rid, key, now);
        }
        self.outbox.push(id, Target::Data(*to), fragments, now);
        Ok((id, tags))
    }

    /// Reply blocks left behind `handle` that a reply could use now.
    pub fn reply_blocks_left(&mut self, handle: &ReplyHandle) -> usize {
        let epoch = self.topology.as_ref().map_or(0, |t| t.epoch());
        self.held
            .retain(handle, |b| b.epoch.saturating_add(1) >= epoch)
    }

    /// Answers a received message over its reply blocks, one block per
    /// fragment. The blocks are used up; the handle stays valid for the
    /// blocks left. Replies are not acknowledged (module docs).
    pub fn reply(
        &mut self,
        to: ReplyHandle,
        body: Vec<u8>,
        now: Instant,
    ) -> Result<MessageId, SendError> {
        let t = self.topology_or_err()?;
        if self.held.blocks(&to).is_none() {
            return Err(SendError::UnknownReplyHandle);
        }
        let max = self.cfg.max_message_bytes;
        if body.len() > max {
            return Err(SendError::TooLarge {
                len: body.len(),
                max,
            });
        }
        let size = reply_fragment_size(t.params().payload_size);
        if size == 0 {
            return Err(SendError::TooLarge {
                len: body.len(),
                max: 0,
            });
        }
        self.check_room(body.len())?;
        // A block of an epoch before the previous one is unusable: no node
        // holds its keys any more.
        let available = self.reply_blocks_left(&to);
        let id = self.fresh_message_id();
        let fragments = Self::fragments(&Envelope::new(body), id, size, max)?;
        if fragments.len() > available {
            return Err(SendError::NotEnoughReplyBlocks {
                needed: fragments.len(),
                available,
            });
        }
        let blocks = self.held.take(&to, fragments.len());
        if blocks.len() != fragments.len() {
            return Err(SendError::NotEnoughReplyBlocks {
                needed: fragments.len(),
                available: blocks.len(),
            });
        }
        let blocks = blocks.into_iter().map(Some).collect();
        self.outbox.push(id, Target::Reply(blocks), fragments, now);
        Ok(id)
    }

    /// Whether fragments wait for a λ_P slot (new or retransmissions).
    pub fn has_queued(&self) -> bool {
        self.outbox.queued_fragments() > 0
    }

    /// The longest body [`Engine::send`] fits in **one** packet together
    /// with `reply_blocks` reply blocks, under the topology in force (0
    /// without one). Stream traffic sizes its frames with this, so every
    /// stream message is exactly one packet.
    pub fn send_capacity(&self, reply_blocks: usize) -> usize {
        let Some(t) = &self.topology else { return 0 };
        // A SURB has one length whatever its route.
        let block = REPLY_BLOCK_OVERHEAD + SURB_LEN;
        data_fragment_size(t.params().payload_size)
            .saturating_sub(ENVELOPE_HEADER_LEN)
            .saturating_sub(reply_blocks.saturating_mul(block))
    }

    /// The longest body [`Engine::reply_over`] fits in one reply packet.
    pub fn reply_capacity(&self) -> usize {
        let Some(t) = &self.topology else { return 0 };
        reply_fragment_size(t.params().payload_size).saturating_sub(ENVELOPE_HEADER_LEN)
    }

    /// Takes every reply block behind `handle` out of the engine, for an
    /// application that pools blocks itself (the exit service keeps one
    /// pool per client session). Blocks of epochs no node holds keys for
    /// any more are dropped.
    pub fn take_reply_blocks(&mut self, handle: &ReplyHandle) -> Vec<ReplyBlock> {
        let n = self.reply_blocks_left(handle);
        self.held.take(handle, n)
    }

    /// Sends `body` as a one-packet reply over `block` (which the caller
    /// took with [`Engine::take_reply_blocks`]). Like [`Engine::reply`],
    /// not acknowledged: the application acknowledges end to end.
    pub fn reply_over(
        &mut self,
        block: ReplyBlock,
        body: Vec<u8>,
        now: Instant,
    ) -> Result<MessageId, SendError> {
        let t = self.topology_or_err()?;
        let max = self.reply_capacity();
        if body.len() > max {
            return Err(SendError::TooLarge {
                len: body.len(),
                max,
            });
        }
        self.check_room(body.len())?;
        let size = reply_fragment_size(t.params().payload_size);
        let id = self.fresh_message_id();
        let fragments = Self::fragments(&Envelope::new(body), id, size, max)?;
        if fragments.len() != 1 {
            return Err(SendError::Build(format!(
                "reply cut into {} fragments",
                fragments.len()
            )));
        }
        self.outbox
            .push(id, Target::Reply(vec![Some(block)]), fragments, now);
        Ok(id)
    }

    fn count_sent(&mut self, kind: OutKind) {
        *self.counters.sent.entry(kind.label()).or_default() += 1;
    }

    fn fail(&mut self, message: MessageId, reason: String) {
        if self.outbox.remove(&message) {
            self.events.push(Event::Failed { message, reason });
        }
    }

    /// The packet for a λ_P tick: the next queued fragment (retransmissions
    /// first, then new fragments round robin across messages), else a drop
    /// packet. `None` only without a topology that lists our provider.
    pub fn real_or_drop(&mut self, now: Instant) -> Option<Outgoing> {
        // Without our provider nothing can leave: keep the queue as it is.
        let t = self.topology_or_err().ok()?;
        while let Some(slot) = self.outbox.next() {
            match self.build_slot(&t, slot, now) {
                Ok(Some(out)) => return Some(out),
                Ok(None) => {}
                Err(e) => self.fail(slot.key.0, e.to_string()),
            }
        }
        self.drop_packet()
    }

    /// Builds the packet of one fragment. `Ok(None)`: nothing to send for
    /// it after all (its message is gone).
    fn build_slot(
        &mut self,
        t: &Topology,
        slot: Slot,
        now: Instant,
    ) -> Result<Option<Outgoing>, BuildError> {
        let Some((target, bytes)) = self.outbox.fragment(&slot.key) else {
            return Ok(None);
        };
        match target {
            Target::Data(to) => {
                let to = *to;
                // Local evidence steers retransmissions only (module docs).
                let suspects = self.probes.suspects();
                let choice = if slot.retransmission && !suspects.is_empty() {
                    self.counters.routes_avoiding += 1;
                    RouteChoice {
                        avoid: Some(suspects),
                    }
                } else {
                    RouteChoice::NETWORK
                };
                let built = build::data_packet(t, &mut self.rng, choice, &self.me, &to, bytes)?;
                self.probes.data_sent(built.ack_id, built.route, now);
                self.recoveries
                    .ack_sent(built.ack_id, built.ack_recovery, now);
                let attempts = self
                    .outbox
                    .sent_data(slot.key, built.ack_id, built.delays, now)
                    .ok_or_else(|| BuildError::Other("retransmit queue full".into()))?;
                let kind = if attempts > 1 || slot.retransmission {
                    self.counters.retransmissions += 1;
                    OutKind::Retransmission
                } else {
                    OutKind::Real
                };
                self.count_sent(kind);
                Ok(Some(Outgoing {
                    first_hop: self.me.provider,
                    key_epoch: t.epoch(),
                    packet: built.packet,
                    kind,
                    queued_at: (kind == OutKind::Real).then_some(slot.queued_at),
                }))
            }
            Target::Reply(_) => {
                let bytes = bytes.to_vec();
                let block = self
                    .outbox
                    .take_block(&slot.key)
                    .ok_or_else(|| BuildError::Other("reply block already used".into()))?;
                let packet = build::reply_packet(t, &self.me, &block, &bytes)?;
                self.outbox.sent_reply(&slot.key);
                self.count_sent(OutKind::Reply);
                Ok(Some(Outgoing {
                    first_hop: self.me.provider,
                    key_epoch: block.epoch,
                    packet,
                    kind: OutKind::Reply,
                    queued_at: Some(slot.queued_at),
                }))
            }
        }
    }

    /// A loop for a λ_L tick: our provider → L1 → L2 → L3 → our provider,
    /// destination us, tracked until it returns or times out.
    pub fn loop_packet(&mut self, now: Instant) -> Option<Outgoing> {
        let t = self.topology.clone()?;
        let id: [u8; 16] = self.rng.random();
        let (packet, recovery, route) = build::loop_packet(&t, &mut self.rng, &self.me, id).ok()?;
        self.recoveries.loop_sent(id, recovery, now);
        for _ in 0..self.probes.loop_sent(id, route, now) {
            // Bounded even if nobody calls `tick`: beyond the limit the
            // loss still shows in the return ratio.
            if self.events.len() < MAX_BUFFERED_EVENTS {
                self.events.push(Event::LoopLost);
            }
        }
        self.count_sent(OutKind::Loop);
        Some(Outgoing {
            first_hop: self.me.provider,
            key_epoch: t.epoch(),
            packet,
            kind: OutKind::Loop,
            queued_at: None,
        })
    }

    /// A drop packet for a λ_D tick: to a uniformly random provider, whose
    /// own id is the destination.
    pub fn drop_packet(&mut self) -> Option<Outgoing> {
        let t = self.topology.clone()?;
        let packet = build::drop_packet(&t, &mut self.rng, &self.me).ok()?;
        self.count_sent(OutKind::Drop);
        Some(Outgoing {
            first_hop: self.me.provider,
            key_epoch: t.epoch(),
            packet,
            kind: OutKind::Drop,
            queued_at: None,
        })
    }

    /// Timers: ack timeouts (the fragment is queued for retransmission, or
    /// after `max_attempts` its message fails), reassembly, loop and reply
    /// state expiry. Call it often (every 100 ms is plenty).
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.events);
        for (message, reason) in self.outbox.due(now, self.cfg.max_attempts.max(1)) {
            events.push(Event::Failed { message, reason });
        }
        self.counters.reassembly_expired = self
            .counters
            .reassembly_expired
            .saturating_add(self.reassembler.expire(now) as u64);
        for _ in 0..self.probes.expire(now) {
            events.push(Event::LoopLost);
        }
        self.reply_keys.expire(now);
        self.recoveries.expire(now);
        self.held.expire(now);
        events
    }

    /// When `tick` next has an ack timeout to handle.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.outbox.next_deadline()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            messages: self.outbox.messages(),
            queued_fragments: self.outbox.queued_fragments(),
            outstanding_fragments: self.outbox.outstanding(),
            queued_bytes: self.outbox.bytes(),
            pending_reassemblies: self.reassembler.pending_messages(),
            reply_keys: self.reply_keys.len(),
            recoveries: self.recoveries.len(),
            reply_handles: self.held.len(),
            loops_pending: self.probes.loops.pending(),
            loop_return_ratio: self.probes.loops.return_ratio(),
            sent: self.counters.sent.clone(),
            retransmissions: self.counters.retransmissions,
            duplicate_fragments: self.counters.duplicate_fragments,
            duplicate_acks: self.counters.duplicate_acks,
            bad_inbox: self
                .counters
                .bad
                .iter()
                .map(|((what, label), n)| (format!("{what}:{label}"), *n))
                .collect(),
            reassembly_expired: self.counters.reassembly_expired,
            suspects: {
                let mut v: Vec<NodeId> = self.probes.suspects().iter().copied().collect();
                v.sort();
                v
            },
            routes_avoiding: self.counters.routes_avoiding,
        }
    }
}
