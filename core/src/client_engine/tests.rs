//! The engine over an in-memory network of real nodes: providers PA and PB,
//! one mix per layer (L1, L2, L3), each with a [`SphinxProcessor`] holding
//! one Sphinx key per epoch. Client A lives at PA, client B at PB.
//!
//! The [`Net`] driver carries packets hop by hop (delays ignored); at a
//! provider's final hop it runs the provider's own rules (core's
//! [`Delivery`], PROTOCOL.md 6.4) over an in-memory inbox: drop cover
//! addressed to it is counted; a data packet is stored for its client
//! (SURB-ACK zeroed) and then its SURB-ACK is sent; acks, replies and loops
//! are stored as they are. Time is fake: `Instant`s the test advances.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::e2e::{KIND_ACK, KIND_DATA, KIND_REPLY, SEAL_OVERHEAD, payload_plaintext_len};
use crate::e2e::{Payload, data_sealed_len, seal};
use crate::keys::{IdentityKeypair, SphinxKeypair};
use crate::mixing::delivery::{Delivery, FinalPacket, FinalPayload, Outcome, SurbAck};
use crate::mixing::processor::{KeyRing, KeySlot, Processed, SphinxProcessor};
use crate::mixing::replay::ReplayCache;
use crate::testing::MemoryInbox;
use crate::topology::{NetworkParams, NodeEntry, TopologyDocument};
use proptest::prelude::*;

use super::*;

const EPOCHS: u64 = 3;
const SECOND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Loss {
    None,
    /// Every packet (client packets and SURB-ACKs) is lost with this
    /// probability, drawn from the network's seeded RNG.
    Random(f64),
    AcksOnly,
    All,
}

struct Net {
    /// Topology of epoch `e` at index `e - 1`.
    topologies: Vec<Arc<Topology>>,
    processors: HashMap<NodeId, SphinxProcessor>,
    ids: HashMap<&'static str, NodeId>,
    providers: HashSet<NodeId>,
    /// Client identity → its provider.
    clients: HashMap<NodeId, NodeId>,
    in_flight: VecDeque<(NodeId, u64, Vec<u8>)>,
    /// Each provider's inboxes.
    inboxes: HashMap<NodeId, MemoryInbox>,
    loss: Loss,
    /// Hand every data packet to its client twice (a provider that crashed
    /// before the client's confirmation, a client that pulled twice).
    duplicate_data: bool,
    rng: StdRng,
    drops_at: HashMap<NodeId, usize>,
    lost: usize,
    rejected: usize,
    acks_sent: usize,
}

impl Net {
    fn new(payload_size: usize, seed: u64) -> Self {
        let names = ["PA", "PB", "L1", "L2", "L3"];
        let ids: HashMap<&'static str, NodeId> = names
            .iter()
            .map(|n| (*n, IdentityKeypair::generate().node_id()))
            .collect();
        let keys: HashMap<(&str, u64), SphinxKeypair> = names
            .iter()
            .flat_map(|n| (1..=EPOCHS).map(move |e| ((*n, e), SphinxKeypair::generate())))
            .collect();
        let mut processors = HashMap::new();
        for n in names {
            let ring = KeyRing::default();
            for e in 1..=EPOCHS {
                let key = SphinxKeypair::from_secret(keys[&(n, e)].secret().clone());
                ring.insert(KeySlot {
                    epoch: e,
                    key,
                    replay: ReplayCache::new(100_000, 1e-9).unwrap(),
                });
            }
            processors.insert(ids[n], SphinxProcessor::new(ring, Duration::from_secs(60)));
        }
        let topologies = (1..=EPOCHS)
            .map(|e| {
                let nodes = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| NodeEntry {
                        id: ids[n],
                        sphinx_key: keys[&(*n, e)].public(),
                        address: format!("127.0.0.1:{}", 4000 + i).parse().unwrap(),
                        role: if n.starts_with('P') {
                            Role::Provider
                        } else {
                            Role::Mix
                        },
                        layer: n.strip_prefix('L').map(|l| l.parse().unwrap()),
                    })
                    .collect();
                let params = NetworkParams {
                    epoch: e,
                    layers: 3,
                    mean_hop_delay_ms: 50.0,
                    lambda_p_per_s: 10.0,
                    lambda_l_per_s: 1.0,
                    lambda_d_per_s: 1.0,
                    lambda_m_per_s: 1.0,
                    payload_size,
                };
                Arc::new(Topology::new(TopologyDocument { params, nodes }).unwrap())
            })
            .collect();
        let providers: HashSet<NodeId> = [ids["PA"], ids["PB"]].into();
        Net {
            topologies,
            processors,
            ids,
            clients: HashMap::new(),
            in_flight: VecDeque::new(),
            inboxes: providers
                .iter()
                .map(|p| (*p, MemoryInbox::new(usize::MAX)))
                .collect(),
            providers,
            loss: Loss::None,
            duplicate_data: false,
            rng: StdRng::seed_from_u64(seed),
            drops_at: HashMap::new(),
            lost: 0,
            rejected: 0,
            acks_sent: 0,
        }
    }

    fn topology(&self, epoch: u64) -> Arc<Topology> {
        self.topologies[(epoch - 1) as usize].clone()
    }

    fn id(&self, name: &str) -> NodeId {
        self.ids[name]
    }

    /// A client at `provider` with an engine on epoch 1.
    fn engine(&mut self, provider: &str, cfg: EngineConfig, seed: u64) -> Engine {
        let identity = IdentityKeypair::generate().node_id();
        let provider = self.id(provider);
        self.clients.insert(identity, provider);
        self.inboxes[&provider].register(identity);
        let mut e = Engine::with_rng(
            identity,
            EncryptionKeypair::generate(),
            provider,
            cfg,
            StdRng::seed_from_u64(seed),
        );
        e.set_topology(self.topology(1));
        e
    }

    fn lose(&mut self, ack: bool) -> bool {
        let lost = match self.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.random_bool(p),
            Loss::AcksOnly => ack,
            Loss::All => true,
        };
        self.lost += usize::from(lost);
        lost
    }

    /// A client hands a packet to its provider.
    fn send(&mut self, out: Outgoing) {
        assert!(self.providers.contains(&out.first_hop), "{out:?}");
        if !self.lose(false) {
            self.in_flight
                .push_back((out.first_hop, out.key_epoch, out.packet));
        }
    }

    /// Carries every packet in flight to its end.
    fn run(&mut self) {
        while let Some((node, epoch, packet)) = self.in_flight.pop_front() {
            let processed = match self.processors[&node].process(epoch, &packet) {
                Ok(p) => p,
                Err(_) => {
                    self.rejected += 1;
                    continue;
                }
            };
            match processed {
                Processed::Forward {
                    next_hop, packet, ..
                } => self.in_flight.push_back((next_hop, epoch, packet)),
                Processed::Final {
                    destination,
                    identifier,
                    payload,
                } => self.final_hop(node, epoch, destination, identifier, payload),
            }
        }
    }

    fn final_hop(
        &mut self,
        node: NodeId,
        epoch: u64,
        destination: NodeId,
        identifier: [u8; 16],
        payload: sphinx_packet::payload::Payload,
    ) {
        assert!(
            self.providers.contains(&node),
            "only providers are final hops"
        );
        let packet = FinalPacket {
            destination,
            identifier,
            key_epoch: epoch,
            payload: FinalPayload::of(payload),
        };
        let ps = self.topology(epoch).params().payload_size;
        let report = Delivery::new(node).deliver(vec![packet], &self.inboxes[&node], 0, ps);
        assert!(report.commit_error.is_none());
        for outcome in report.outcomes {
            match outcome {
                Outcome::CoverDrop => *self.drops_at.entry(node).or_default() += 1,
                Outcome::Stored { ack: None } => {}
                // Stored: now the SURB-ACK, under the frame's key epoch.
                Outcome::Stored {
                    ack: Some(SurbAck::Send(ack)),
                } => {
                    assert_eq!(ack.first_hop, self.id("L1"));
                    assert_eq!(ack.key_epoch, epoch);
                    self.acks_sent += 1;
                    if !self.lose(true) {
                        self.in_flight
                            .push_back((ack.first_hop, ack.key_epoch, ack.packet));
                    }
                }
                // Every packet here is for a client of this provider, well
                // formed, with a usable SURB-ACK.
                other => panic!("{other:?}"),
            }
        }
    }

    /// Everything in `client`'s inbox, handed to its engine.
    fn pull(&mut self, client: &mut Engine, now: Instant) -> Vec<Event> {
        let me = client.address().identity;
        let mut items = self.inboxes[&self.clients[&me]].fetch(&me);
        if self.duplicate_data {
            items = items
                .into_iter()
                .flat_map(|item| {
                    let copies = if item.1.first() == Some(&KIND_DATA) {
                        2
                    } else {
                        1
                    };
                    std::iter::repeat_n(item, copies)
                })
                .collect();
        }
        items
            .into_iter()
            .flat_map(|(id, data)| client.on_inbox(id, &data, now))
            .collect()
    }
}

fn cfg() -> EngineConfig {
    EngineConfig::default()
}

/// A λ_P slot for each engine, the network run to the end, both inboxes
/// pulled. Returns the kinds sent and both engines' events.
fn round(net: &mut Net, a: &mut Engine, b: &mut Engine, now: Instant) -> Round {
    let mut r = Round::default();
    r.a.extend(a.tick(now));
    r.b.extend(b.tick(now));
    for (e, kinds) in [(&mut *a, &mut r.a_sent), (&mut *b, &mut r.b_sent)] {
        let out = e.real_or_drop(now).unwrap();
        kinds.push(out.kind);
        net.send(out);
    }
    net.run();
    r.a.extend(net.pull(a, now));
    r.b.extend(net.pull(b, now));
    r
}

#[derive(Default, Debug)]
struct Round {
    a: Vec<Event>,
    b: Vec<Event>,
    a_sent: Vec<OutKind>,
    b_sent: Vec<OutKind>,
}

fn received(events: &[Event]) -> Vec<(MessageId, Vec<u8>, Option<ReplyHandle>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received {
                message,
                body,
                reply,
            } => Some((*message, body.clone(), *reply)),
            _ => None,
        })
        .collect()
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// A body whose envelope (no reply blocks) needs exactly `n` fragments.
fn body_of(n: usize, fragment_size: usize, seed: u8) -> Vec<u8> {
    let len = n * fragment_size - ENVELOPE_HEADER_LEN - 100;
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn five_fragment_message_is_received_once_and_delivered() {
    for ps in [1024, 2048] {
        let mut net = Net::new(ps, 1);
        let mut a = net.engine("PA", cfg(), 10);
        let mut b = net.engine("PB", cfg(), 11);
        let size = data_fragment_size(ps);
        assert_eq!(size, ps - 17 - 3 - 396 - 48 - 22);
        let body = body_of(5, size, 7);
        let now = Instant::now();
        let id = a.send(&b.address(), body.clone(), 0, now).unwrap();
        let s = a.stats();
        assert_eq!((s.messages, s.queued_fragments), (1, 5));

        let (mut ea, mut eb, mut sent) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let r = round(&mut net, &mut a, &mut b, now);
            ea.extend(r.a);
            eb.extend(r.b);
            sent.extend(r.a_sent);
        }
        use OutKind::*;
        assert_eq!(sent, [Real, Real, Real, Real, Real, Drop, Drop]);
        assert_eq!(received(&eb), [(id, body, None)]);
        assert_eq!(ea, [Event::Delivered { message: id }]);
        assert_eq!(net.acks_sent, 5);
        let s = a.stats();
        assert_eq!(
            (
                s.messages,
                s.queued_fragments,
                s.outstanding_fragments,
                s.queued_bytes
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(s.sent.get("real"), Some(&5));
        assert!(s.bad_inbox.is_empty() && b.stats().bad_inbox.is_empty());
        assert_eq!(net.rejected, 0);
    }
}

#[test]
fn loss_costs_latency_not_data() {
    for seed in [2, 12, 22] {
        loss_scenario(seed);
    }
}

fn loss_scenario(seed: u64) {
    let mut net = Net::new(1024, seed);
    net.loss = Loss::Random(0.3);
    let c = EngineConfig {
        max_attempts: 20,
        ..cfg()
    };
    let mut a = net.engine("PA", c.clone(), seed + 100);
    let mut b = net.engine("PB", c, seed + 200);
    let size = data_fragment_size(1024);
    let now0 = Instant::now();
    let to_b = a.send(&b.address(), body_of(5, size, 1), 0, now0).unwrap();
    let to_a = b.send(&a.address(), body_of(3, size, 2), 0, now0).unwrap();
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let mut now = now0;
    for _ in 0..2000 {
        now += Duration::from_millis(250);
        let r = round(&mut net, &mut a, &mut b, now);
        ea.extend(r.a);
        eb.extend(r.b);
        let done = |e: &[Event], id| e.contains(&Event::Delivered { message: id });
        if done(&ea, to_b) && done(&eb, to_a) {
            break;
        }
    }
    assert!(net.lost > 0);
    assert_eq!(received(&eb), [(to_b, body_of(5, size, 1), None)]);
    assert_eq!(received(&ea), [(to_a, body_of(3, size, 2), None)]);
    assert_eq!(count(&ea, |e| matches!(e, Event::Delivered { .. })), 1);
    assert_eq!(count(&eb, |e| matches!(e, Event::Delivered { .. })), 1);
    assert!(
        !ea.iter()
            .chain(&eb)
            .any(|e| matches!(e, Event::Failed { .. }))
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.retransmissions > 0, "{sa:?}");
    assert_eq!(sa.sent.get("retransmission"), Some(&sa.retransmissions));
    assert_eq!((sa.messages, sa.outstanding_fragments), (0, 0));
    assert_eq!((sb.messages, sb.outstanding_fragments), (0, 0));
    assert!(sa.bad_inbox.is_empty(), "{sa:?}");
    eprintln!(
        "seed {seed}: lost {} packets; retransmissions A {} B {}; duplicate fragments A {} B {}; \
         {:?} of fake time",
        net.lost,
        sa.retransmissions,
        sb.retransmissions,
        sa.duplicate_fragments,
        sb.duplicate_fragments,
        now - now0
    );
}

#[test]
fn engine_is_send() {
    fn send<T: Send>() {}
    send::<Engine>();
    send::<Event>();
}

#[test]
fn duplicates_are_received_once() {
    let mut net = Net::new(1024, 3);
    let mut a = net.engine("PA", cfg(), 30);
    let mut b = net.engine("PB", cfg(), 31);
    let size = data_fragment_size(1024);
    let now = Instant::now();

    // Every data packet stored twice.
    net.duplicate_data = true;
    let id = a.send(&b.address(), body_of(5, size, 3), 0, now).unwrap();
    let mut eb = Vec::new();
    let mut ea = Vec::new();
    for _ in 0..6 {
        let r = round(&mut net, &mut a, &mut b, now);
        ea.extend(r.a);
        eb.extend(r.b);
    }
    assert_eq!(received(&eb).len(), 1);
    assert_eq!(b.stats().duplicate_fragments, 5);
    assert_eq!(ea, [Event::Delivered { message: id }]);

    // Acks lost: the fragment is retransmitted over a fresh route and
    // arrives twice; once its ack gets through the message is delivered.
    net.duplicate_data = false;
    net.loss = Loss::AcksOnly;
    let id = a.send(&b.address(), body_of(1, size, 4), 0, now).unwrap();
    let r = round(&mut net, &mut a, &mut b, now);
    assert_eq!(received(&r.b).len(), 1);
    net.loss = Loss::None;
    let later = now + 60 * SECOND;
    let r = round(&mut net, &mut a, &mut b, later);
    assert_eq!(r.a_sent, [OutKind::Retransmission]);
    assert!(received(&r.b).is_empty(), "the copy is a duplicate");
    assert_eq!(r.a, [Event::Delivered { message: id }]);
    assert_eq!(b.stats().duplicate_fragments, 6);
    // A late ack of the first copy would now be ignored; nothing is
    // outstanding.
    assert_eq!(a.stats().outstanding_fragments, 0);
}

#[test]
fn replies_travel_over_reply_blocks_without_revealing_the_sender() {
    let mut net = Net::new(1024, 4);
    let mut a = net.engine("PA", cfg(), 40);
    let mut b = net.engine("PB", cfg(), 41);
    let now = Instant::now();
    let id = a
        .send(&b.address(), b"please answer".to_vec(), 3, now)
        .unwrap();
    assert_eq!(a.stats().reply_keys, 3);
    let mut eb = Vec::new();
    for _ in 0..6 {
        eb.extend(round(&mut net, &mut a, &mut b, now).b);
    }
    let got = received(&eb);
    assert_eq!(got.len(), 1);
    let (mid, body, handle) = got[0].clone();
    assert_eq!((mid, body.as_slice()), (id, &b"please answer"[..]));
    let handle = handle.unwrap();

    // Nothing B holds names A: not the event, not the handle, not the
    // blocks behind it (their SURBs name only PB in the clear).
    let aa = a.address();
    let shown = format!("{eb:?} {handle:?}");
    for secret in [
        aa.identity.to_string(),
        aa.encryption.to_string(),
        aa.provider.to_string(),
        aa.to_string(),
    ] {
        assert!(!shown.contains(&secret));
    }
    let blocks = b.held.blocks(&handle).unwrap();
    assert_eq!(blocks.len(), 3);
    for block in blocks {
        assert_eq!(block.epoch, 1);
        assert_eq!(build::surb_first_hop(&block.surb), Some(net.id("PB")));
        for needle in [aa.identity.0, aa.encryption.0, net.id("PA").0] {
            assert!(!block.surb.windows(32).any(|w| w == needle));
        }
    }

    // B answers with two fragments: two reply packets through PB.
    let size = reply_fragment_size(1024);
    assert_eq!(size, 1024 - 17 - 1 - 16 - 22);
    let answer = body_of(2, size, 9);
    let rid = b.reply(handle, answer.clone(), now).unwrap();
    assert_eq!(b.reply_blocks_left(&handle), 1);
    let mut ea = Vec::new();
    let mut b_sent = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..3 {
        let out = b.real_or_drop(now).unwrap();
        b_sent.push(out.kind);
        outs.push((out.first_hop, out.key_epoch));
        net.send(out);
        net.run();
        ea.extend(net.pull(&mut a, now));
    }
    use OutKind::*;
    assert_eq!(b_sent, [Reply, Reply, Drop]);
    assert_eq!(&outs[..2], [(net.id("PB"), 1), (net.id("PB"), 1)]);
    assert_eq!(received(&ea), [(rid, answer, None)]);
    assert_eq!(a.stats().reply_keys, 1, "used keys are forgotten");
    assert_eq!(b.stats().messages, 0, "replies are not acknowledged");

    // One block left: a two-fragment answer does not fit, a short one does,
    // and then the handle is used up.
    assert_eq!(
        b.reply(handle, body_of(2, size, 1), now),
        Err(SendError::NotEnoughReplyBlocks {
            needed: 2,
            available: 1
        })
    );
    b.reply(handle, b"ok".to_vec(), now).unwrap();
    assert_eq!(
        b.reply(handle, b"again".to_vec(), now),
        Err(SendError::UnknownReplyHandle)
    );
    let out = b.real_or_drop(now).unwrap();
    assert_eq!(out.kind, Reply);
    net.send(out);
    net.run();
    let ea = net.pull(&mut a, now);
    assert_eq!(received(&ea)[0].1, b"ok");
    assert_eq!(a.stats().reply_keys, 0);
    assert_eq!(b.stats().reply_handles, 0);
}

#[test]
fn gives_up_after_max_attempts() {
    let mut net = Net::new(1024, 5);
    net.loss = Loss::All;
    let c = EngineConfig {
        max_attempts: 3,
        ..cfg()
    };
    let mut a = net.engine("PA", c.clone(), 50);
    let mut b = net.engine("PB", c, 51);
    let mut now = Instant::now();
    let id = a
        .send(&b.address(), b"into the void".to_vec(), 0, now)
        .unwrap();
    let (mut ea, mut sent) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let r = round(&mut net, &mut a, &mut b, now);
        ea.extend(r.a);
        sent.extend(r.a_sent);
        now += 30 * SECOND;
    }
    use OutKind::*;
    let real: Vec<OutKind> = sent.into_iter().filter(|k| *k != Drop).collect();
    assert_eq!(real, [Real, Retransmission, Retransmission]);
    let failed: Vec<&Event> = ea
        .iter()
        .filter(|e| matches!(e, Event::Failed { .. }))
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        matches!(failed[0], Event::Failed { message, reason } if *message == id && reason.contains("3 attempts"))
    );
    let s = a.stats();
    assert_eq!(
        (s.messages, s.outstanding_fragments, s.queued_bytes),
        (0, 0, 0)
    );
}

#[test]
fn garbage_in_the_inbox_is_counted_and_never_panics() {
    let mut net = Net::new(1024, 6);
    let mut a = net.engine("PA", cfg(), 60);
    let b = net.engine("PB", cfg(), 61);
    let now = Instant::now();
    let id = a.send(&b.address(), b"x".to_vec(), 1, now).unwrap();
    let out = a.real_or_drop(now).unwrap();
    assert_eq!(out.kind, OutKind::Real);
    let len = payload_plaintext_len(1024);
    let mut r = StdRng::seed_from_u64(6);
    let mut random = |n: usize| -> Vec<u8> { (0..n).map(|_| r.random()).collect() };
    let ack = Payload::Ack.encode(len).unwrap();
    let mut nonzero_ack = ack.clone();
    nonzero_ack[100] = 1;
    let mut bad_ack_len = vec![KIND_DATA, 0x01, 0x00];
    bad_ack_len.resize(len, 0);
    // Well-formed data sealed to someone else.
    let stranger = EncryptionKeypair::generate();
    let sealed = seal(
        &stranger.public(),
        KIND_DATA,
        b"hi",
        data_sealed_len(1024, 0),
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let mut foreign = vec![KIND_DATA, 0, 0];
    foreign.extend_from_slice(&sealed);
    // Data sealed to A whose plaintext is no fragment.
    let not_fragment = {
        let s = seal(
            &a.address().encryption,
            KIND_DATA,
            &[0xff; 10],
            SEAL_OVERHEAD + 10,
            &mut StdRng::seed_from_u64(2),
        )
        .unwrap();
        let mut d = vec![KIND_DATA, 0, 0];
        d.extend_from_slice(&s);
        d
    };
    let mut reply = vec![KIND_REPLY];
    reply.extend(random(len - 1));
    let cases: Vec<([u8; 16], Vec<u8>)> = vec![
        ([0; 16], vec![]),
        ([0; 16], {
            let mut x = random(len);
            x[0] = 0x99;
            x
        }),
        ([0; 16], vec![7; len]),
        ([1; 16], ack.clone()), // a forged ack: unknown id
        ([1; 16], nonzero_ack),
        ([0; 16], bad_ack_len),
        ([0; 16], vec![KIND_DATA]),
        ([0; 16], foreign),
        ([0; 16], not_fragment),
        ([2; 16], reply.clone()),
        ([3; 16], Payload::Loop.encode(len).unwrap()),
        ([4; 16], Payload::Drop.encode(len).unwrap()),
        // An ack payload cut short is still an ack; its id is unknown.
        ([5; 16], vec![KIND_ACK]),
    ];
    for (identifier, data) in &cases {
        assert_eq!(a.on_inbox(*identifier, data, now), []);
    }
    // A reply for one of our real reply keys, but not opening under it.
    let reply_id = a.reply_keys.ids()[0];
    assert_eq!(a.on_inbox(reply_id, &reply, now), []);
    assert_eq!(a.stats().reply_keys, 1, "a forgery does not burn the key");
    // Nor under our data packet's ack id.
    let ack_id = *a.recoveries.acks_ids().first().unwrap();
    assert_eq!(a.on_inbox(ack_id, &random(1024), now), []);
    assert_eq!(a.stats().recoveries, 1, "nor the ack's recovery");

    let s = a.stats();
    let expect = [
        ("payload:empty", 1),
        ("payload:unknown_kind", 2),
        // Acks, replies and loops only ever come sealed.
        ("unsealed:ack", 2),
        ("unsealed:reply", 1),
        ("unsealed:loop", 1),
        ("unsealed:drop", 1),
        ("payload:nonzero_padding", 1),
        ("payload:bad_ack_len", 1),
        ("payload:truncated", 1),
        ("data:open", 1),
        ("fragment:short_header", 1),
        ("sealed:open", 2),
        ("payload:ciphertext_too_short", 0),
    ];
    for (label, n) in expect {
        assert_eq!(
            s.bad_inbox.get(label).copied().unwrap_or(0),
            n,
            "{label}: {s:?}"
        );
    }
    assert_eq!(
        s.messages, 1,
        "the message is still waiting for its real ack"
    );
    assert_eq!(s.outstanding_fragments, 1);
    let _ = id;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the inbox holds, the engine neither panics nor reports a
    /// message.
    #[test]
    fn on_inbox_never_panics(
        kind in 0u8..8,
        body in proptest::collection::vec(any::<u8>(), 0..1100),
        identifier in any::<[u8; 16]>(),
    ) {
        let (me, provider) = (IdentityKeypair::generate().node_id(), IdentityKeypair::generate().node_id());
        let mut e = Engine::new(me, EncryptionKeypair::generate(), provider, cfg());
        let mut data = vec![kind];
        data.extend(body);
        let events = e.on_inbox(identifier, &data, Instant::now());
        prop_assert!(events.is_empty());
        prop_assert_eq!(e.stats().bad_inbox.values().sum::<u64>(), 1);
    }
}

#[test]
fn cover_traffic_drops_and_loops() {
    let mut net = Net::new(1024, 7);
    let mut a = net.engine("PA", cfg(), 70);
    let now = Instant::now();
    for _ in 0..20 {
        let out = a.real_or_drop(now).unwrap();
        assert_eq!(out.kind, OutKind::Drop);
        assert_eq!((out.first_hop, out.key_epoch), (net.id("PA"), 1));
        assert_eq!(out.packet.len(), 348 + 1024);
        net.send(out);
        let out = a.drop_packet().unwrap();
        assert_eq!(out.kind, OutKind::Drop);
        net.send(out);
    }
    net.run();
    let (pa, pb) = (net.id("PA"), net.id("PB"));
    assert_eq!(net.drops_at.values().sum::<usize>(), 40);
    assert!(
        net.drops_at[&pa] > 0 && net.drops_at[&pb] > 0,
        "uniform over providers"
    );
    assert!(net.inboxes.values().all(MemoryInbox::is_empty));

    for _ in 0..5 {
        let out = a.loop_packet(now).unwrap();
        assert_eq!(out.kind, OutKind::Loop);
        net.send(out);
    }
    assert_eq!(a.stats().loops_pending, 5);
    net.run();
    let later = now + Duration::from_millis(700);
    let events = net.pull(&mut a, later);
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| *e
        == Event::LoopReturned {
            rtt: Duration::from_millis(700)
        }));
    // A loop comes back once.
    assert_eq!(a.stats().loop_return_ratio, Some(1.0));

    net.loss = Loss::All;
    let out = a.loop_packet(now).unwrap();
    net.send(out);
    net.run();
    // Lost after 3 × the expected delays of its 5 hops (50 ms each) + 2 s
    // + the pull interval: 3.25 s, not the 60 s configured as the ceiling,
    // so the liveness estimator hears of it quickly.
    assert!(a.tick(now + 3 * SECOND).is_empty());
    assert_eq!(a.tick(now + 4 * SECOND), [Event::LoopLost]);
    let s = a.stats();
    assert_eq!(s.loop_return_ratio, Some(5.0 / 6.0));
    assert_eq!(s.sent.get("drop"), Some(&40));
    assert_eq!(s.sent.get("loop"), Some(&6));
}

#[test]
fn epoch_change_needs_nothing_special() {
    let mut net = Net::new(1024, 8);
    let mut a = net.engine("PA", cfg(), 80);
    let mut b = net.engine("PB", cfg(), 81);
    let size = data_fragment_size(1024);
    let now = Instant::now();
    let body = body_of(2, size, 5);
    let id = a.send(&b.address(), body.clone(), 2, now).unwrap();
    // The envelope with two reply blocks needs more fragments.
    let n = a.stats().queued_fragments;
    assert!(n > 2);
    // Half of it under epoch 1, the rest under epoch 2; the SURB-ACKs of
    // epoch 1 are used after the switch.
    let mut epochs = Vec::new();
    for i in 0..n {
        if i == n / 2 {
            a.set_topology(net.topology(2));
            b.set_topology(net.topology(2));
        }
        let out = a.real_or_drop(now).unwrap();
        epochs.push(out.key_epoch);
        net.send(out);
    }
    assert!(epochs.contains(&1) && epochs.contains(&2));
    net.run();
    let eb = net.pull(&mut b, now);
    let ea = net.pull(&mut a, now);
    assert_eq!(ea, [Event::Delivered { message: id }]);
    let got = received(&eb);
    assert_eq!((got[0].0, &got[0].1), (id, &body));
    let handle = got[0].2.unwrap();

    // Blocks of epoch 1 still work in epoch 2 (frame key_epoch 1) ...
    b.reply(handle, b"still here".to_vec(), now).unwrap();
    let out = b.real_or_drop(now).unwrap();
    assert_eq!((out.kind, out.key_epoch), (OutKind::Reply, 1));
    net.send(out);
    net.run();
    assert_eq!(received(&net.pull(&mut a, now))[0].1, b"still here");
    // ... but not two epochs later.
    b.set_topology(net.topology(3));
    assert_eq!(
        b.reply(handle, b"too late".to_vec(), now),
        Err(SendError::NotEnoughReplyBlocks {
            needed: 1,
            available: 0
        })
    );
}

#[test]
fn send_errors_and_limits() {
    let mut net = Net::new(1024, 9);
    let c = EngineConfig {
        send_queue: 2,
        max_message_bytes: 5000,
        ..cfg()
    };
    let mut a = net.engine("PA", c.clone(), 90);
    let b = net.engine("PB", cfg(), 91);
    let now = Instant::now();
    let to = b.address();

    let mut fresh = Engine::new(to.identity, EncryptionKeypair::generate(), to.provider, c);
    assert_eq!(fresh.send(&to, vec![], 0, now), Err(SendError::NoTopology));
    assert!(fresh.real_or_drop(now).is_none());
    assert!(fresh.loop_packet(now).is_none() && fresh.drop_packet().is_none());

    assert_eq!(
        a.send(&to, vec![0; 5001], 0, now),
        Err(SendError::TooLarge {
            len: 5001,
            max: 5000
        })
    );
    assert_eq!(
        a.send(&to, vec![], 17, now),
        Err(SendError::TooManyReplyBlocks { requested: 17 })
    );
    let mut elsewhere = to;
    elsewhere.provider = IdentityKeypair::generate().node_id();
    assert_eq!(
        a.send(&elsewhere, vec![], 0, now),
        Err(SendError::UnknownProvider(elsewhere.provider))
    );
    elsewhere.provider = net.id("L2");
    assert_eq!(
        a.send(&elsewhere, vec![], 0, now),
        Err(SendError::UnknownProvider(elsewhere.provider))
    );
    a.send(&to, vec![1; 5000], 0, now).unwrap();
    a.send(&to, vec![], 0, now).unwrap();
    assert_eq!(
        a.send(&to, vec![], 0, now),
        Err(SendError::QueueFull("messages"))
    );
    assert_eq!(
        a.reply(ReplyHandle(99), vec![], now),
        Err(SendError::UnknownReplyHandle)
    );
    assert_eq!(a.stats().reply_keys, 0, "refused sends leave no reply keys");
}

#[test]
fn retransmissions_first_then_round_robin() {
    let mut net = Net::new(1024, 10);
    let mut a = net.engine("PA", cfg(), 100);
    let mut b = net.engine("PB", cfg(), 101);
    let size = data_fragment_size(1024);
    let now = Instant::now();

    // A short message queued behind a long one leaves second.
    let long = a.send(&b.address(), body_of(10, size, 1), 0, now).unwrap();
    let short = a.send(&b.address(), b"short".to_vec(), 0, now).unwrap();
    let r1 = round(&mut net, &mut a, &mut b, now);
    let r2 = round(&mut net, &mut a, &mut b, now);
    assert!(received(&r1.b).is_empty());
    assert_eq!(received(&r2.b)[0].0, short);
    assert_eq!(r2.a, [Event::Delivered { message: short }]);

    // A lost fragment of the long message goes before its new fragments.
    net.loss = Loss::All;
    let r3 = round(&mut net, &mut a, &mut b, now);
    assert_eq!(r3.a_sent, [OutKind::Real]);
    net.loss = Loss::None;
    let later = now + 60 * SECOND;
    let r4 = round(&mut net, &mut a, &mut b, later);
    assert_eq!(r4.a_sent, [OutKind::Retransmission]);
    let mut eb = Vec::new();
    let mut ea = Vec::new();
    for _ in 0..10 {
        let r = round(&mut net, &mut a, &mut b, later);
        ea.extend(r.a);
        eb.extend(r.b);
    }
    assert_eq!(received(&eb)[0].0, long);
    assert_eq!(ea, [Event::Delivered { message: long }]);
}

/// A first transmission carries when its message was queued (the shell
/// times the λ_P slot wait from it); cover and retransmissions do not.
#[test]
fn first_transmissions_carry_their_queue_time() {
    let mut net = Net::new(2048, 1);
    let mut a = net.engine("PA", cfg(), 20);
    let b = net.engine("PB", cfg(), 21);
    let t0 = Instant::now();
    a.send(&b.address(), b"hi".to_vec(), 0, t0).unwrap();
    let later = t0 + Duration::from_millis(70);
    let out = a.real_or_drop(later).unwrap();
    assert_eq!((out.kind, out.queued_at), (OutKind::Real, Some(t0)));
    let drop = a.real_or_drop(later).unwrap();
    assert_eq!((drop.kind, drop.queued_at), (OutKind::Drop, None));
    assert_eq!(a.loop_packet(later).unwrap().queued_at, None);
    // Unacknowledged: after the ack timeout it goes again, untimed.
    let much_later = later + Duration::from_secs(3600);
    a.tick(much_later);
    let again = a.real_or_drop(much_later).unwrap();
    assert_eq!(
        (again.kind, again.queued_at),
        (OutKind::Retransmission, None)
    );
}
