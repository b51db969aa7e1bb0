//! End-to-end tests of the messaging layer over an in-memory network:
//! providers PA and PB, one mix per layer (L1, L2, L3), clients A (at PA) and
//! B (at PB). Every hop of every packet is a real Sphinx unwrap by that
//! node's [`SphinxProcessor`].

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use sphinx_packet::header::delays::Delay;

use super::*;
use crate::keys::{IdentityKeypair, NodeId, SphinxKeypair};
use crate::message::{FRAGMENT_HEADER_LEN, Fragment, max_fragment_data};
use crate::mixing::delivery::FinalPayload;
use crate::mixing::processor::{KeyRing, KeySlot, Processed, Rejection, SphinxProcessor};
use crate::mixing::replay::ReplayCache;
use crate::sphinx::{HEADER_SIZE, build_packet, destination_of, sample_delays};
use crate::topology::{NodeEntry, Role};

const EPOCH: u64 = 1;

struct Net {
    entries: HashMap<&'static str, NodeEntry>,
    processors: HashMap<NodeId, SphinxProcessor>,
    names: HashMap<NodeId, &'static str>,
}

struct Client {
    identity: IdentityKeypair,
    encryption: EncryptionKeypair,
    address: ClientAddress,
}

/// What the final hop of a packet got.
struct Delivered {
    at: &'static str,
    hops: Vec<&'static str>,
    destination: NodeId,
    identifier: [u8; 16],
    payload: FinalPayload,
}

impl Delivered {
    /// The plaintext the final hop read (a forward packet's).
    fn plain(self) -> Vec<u8> {
        match self.payload {
            FinalPayload::Plain(p) => p,
            FinalPayload::Sealed(_) => panic!("{} could not read it", self.at),
        }
    }

    /// The payload the final hop could not read (a SURB's use).
    fn sealed(&self) -> &[u8] {
        match &self.payload {
            FinalPayload::Sealed(s) => s,
            FinalPayload::Plain(_) => panic!("{} read it", self.at),
        }
    }
}

impl Net {
    fn new() -> Self {
        let mut entries = HashMap::new();
        let mut processors = HashMap::new();
        let mut names = HashMap::new();
        let nodes = [
            ("PA", Role::Provider, None),
            ("PB", Role::Provider, None),
            ("L1", Role::Mix, Some(1)),
            ("L2", Role::Mix, Some(2)),
            ("L3", Role::Mix, Some(3)),
        ];
        for (i, (name, role, layer)) in nodes.into_iter().enumerate() {
            let id = IdentityKeypair::generate().node_id();
            let sphinx = SphinxKeypair::generate();
            let entry = NodeEntry {
                id,
                sphinx_key: sphinx.public(),
                address: format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                role,
                layer,
            };
            let ring = KeyRing::default();
            ring.insert(KeySlot {
                epoch: EPOCH,
                key: sphinx,
                replay: ReplayCache::new(10_000, 1e-9).unwrap(),
            });
            processors.insert(id, SphinxProcessor::new(ring, Duration::from_secs(60)));
            names.insert(id, name);
            entries.insert(name, entry);
        }
        Net {
            entries,
            processors,
            names,
        }
    }

    fn e(&self, name: &str) -> &NodeEntry {
        &self.entries[name]
    }

    fn route(&self, names: &[&str]) -> Vec<&NodeEntry> {
        names.iter().map(|n| self.e(n)).collect()
    }

    fn client(&self, provider: &str) -> Client {
        let identity = IdentityKeypair::generate();
        let encryption = EncryptionKeypair::generate();
        let address =
            ClientAddress::new(identity.node_id(), encryption.public(), self.e(provider).id);
        Client {
            identity,
            encryption,
            address,
        }
    }

    /// Unwraps `packet` at `first` and every following hop until a final hop,
    /// checking each hop's delay against `delays` when given.
    fn deliver(&self, first: NodeId, packet: Vec<u8>, delays: Option<&[Delay]>) -> Delivered {
        self.deliver_with(first, packet, delays, |_, _| {})
            .unwrap_or_else(|(at, r)| panic!("{at} rejected the packet: {r:?}"))
    }

    /// Like `deliver`, but lets `tamper` change the packet before each hop
    /// (given the hop's index) and reports a rejection instead of panicking.
    fn deliver_with(
        &self,
        first: NodeId,
        mut packet: Vec<u8>,
        delays: Option<&[Delay]>,
        mut tamper: impl FnMut(usize, &mut Vec<u8>),
    ) -> Result<Delivered, (&'static str, Rejection)> {
        let mut node = first;
        let mut hops = Vec::new();
        for i in 0..crate::sphinx::MAX_PATH_LENGTH {
            let name = self.names[&node];
            hops.push(name);
            tamper(i, &mut packet);
            let processed = self.processors[&node]
                .process(EPOCH, &packet)
                .map_err(|r| (name, r))?;
            match processed {
                Processed::Forward {
                    next_hop,
                    packet: next,
                    delay,
                    clamped,
                } => {
                    assert_eq!(next.len(), packet.len(), "packets keep their size");
                    assert!(!clamped);
                    if let Some(d) = delays {
                        assert_eq!(delay, d[i].to_duration(), "hop {i} delay");
                    }
                    node = next_hop;
                    packet = next;
                }
                Processed::Final {
                    destination,
                    identifier,
                    payload,
                } => {
                    return Ok(Delivered {
                        at: name,
                        hops,
                        destination,
                        identifier,
                        payload: FinalPayload::of(payload),
                    });
                }
            }
        }
        panic!(
            "no final hop within {} hops",
            crate::sphinx::MAX_PATH_LENGTH
        )
    }
}

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(rand::rng().random())
}

fn delays(r: &mut impl rand::Rng, hops: usize) -> Vec<Delay> {
    sample_delays(r, hops, Duration::from_millis(20))
}

fn fragment(r: &mut impl rand::Rng, data_len: usize) -> Fragment {
    Fragment {
        message: r.random(),
        index: 0,
        count: 1,
        data: (0..data_len).map(|_| r.random()).collect(),
    }
}

/// A data packet as A sent it.
struct Sent {
    ack_id: [u8; 16],
    /// What only A keeps, to open the ack.
    ack_recovery: ReplyRecovery,
    forward: Vec<Delay>,
    packet: Vec<u8>,
}

/// A sends `frag` to B as a data packet.
fn data_packet(
    net: &Net,
    a: &Client,
    b: &ClientAddress,
    frag: &[u8],
    payload_size: usize,
    r: &mut rand_chacha::ChaCha20Rng,
) -> Sent {
    let ack_id: [u8; 16] = r.random();
    let ack_route = net.route(&["L1", "L2", "L3", "PA"]);
    let (surb_ack, ack_recovery) =
        make_surb(&ack_route, a.address.identity, ack_id, &delays(r, 4)).unwrap();
    assert_eq!(surb_ack.len(), SURB_LEN);
    let sealed = seal(
        &b.encryption,
        KIND_DATA,
        frag,
        data_sealed_len(payload_size, surb_ack.len()),
        r,
    )
    .unwrap();
    let plaintext = Payload::Data { surb_ack, sealed }
        .encode(payload_plaintext_len(payload_size))
        .unwrap();
    let forward = delays(r, 5);
    let dest = destination_of(&b.identity, r.random());
    let packet = build_packet(
        &plaintext,
        &net.route(&["PA", "L1", "L2", "L3", provider_name(net, b)]),
        &dest,
        &forward,
        payload_size,
    )
    .unwrap();
    assert_eq!(packet.len(), HEADER_SIZE + payload_size);
    Sent {
        ack_id,
        ack_recovery,
        forward,
        packet,
    }
}

fn provider_name(net: &Net, c: &ClientAddress) -> &'static str {
    net.names[&c.provider]
}

/// A's reply block for B: a SURB for PB → L1 → L2 → L3 → PA and a key;
/// with its identifier and the recovery A keeps.
fn reply_block(
    net: &Net,
    a: &Client,
    r: &mut rand_chacha::ChaCha20Rng,
) -> ([u8; 16], ReplyRecovery, ReplyBlock) {
    let id: [u8; 16] = r.random();
    let (surb, recovery) = make_surb(
        &net.route(&["PB", "L1", "L2", "L3", "PA"]),
        a.address.identity,
        id,
        &delays(r, 5),
    )
    .unwrap();
    assert_eq!(surb.len(), SURB_LEN);
    (
        id,
        recovery,
        ReplyBlock {
            epoch: EPOCH,
            surb,
            key: r.random(),
        },
    )
}

/// B answers over `block` with `frag`; returns the first hop and packet.
fn reply_packet(block: &ReplyBlock, frag: &[u8], payload_size: usize) -> (NodeId, Vec<u8>) {
    let ciphertext = seal_reply(&block.key, frag, reply_ciphertext_len(payload_size)).unwrap();
    let plaintext = Payload::Reply { ciphertext }
        .encode(payload_plaintext_len(payload_size))
        .unwrap();
    use_surb(&block.surb, &plaintext, payload_size).unwrap()
}

#[test]
fn data_packet_is_delivered_opened_and_acknowledged() {
    let net = Net::new();
    let (a, b) = (net.client("PA"), net.client("PB"));
    let mut r = rng();
    let ps = 1024;
    let frag = fragment(&mut r, 300);
    let sent = data_packet(&net, &a, &b.address, &frag.encode(), ps, &mut r);

    // A hands the packet to PA; it crosses the mixes to PB.
    let got = net.deliver(net.e("PA").id, sent.packet, Some(&sent.forward));
    assert_eq!(got.hops, ["PA", "L1", "L2", "L3", "PB"]);
    assert_eq!(got.at, "PB");
    assert_eq!(got.destination, b.identity.node_id());
    let plaintext = got.plain();
    assert_eq!(plaintext.len(), payload_plaintext_len(ps));
    let Payload::Data { surb_ack, sealed } = Payload::decode(&plaintext).unwrap() else {
        panic!("not a data payload");
    };

    // B (after pulling it from PB) opens the sealed part.
    let opened = open(&b.encryption, KIND_DATA, &sealed).unwrap();
    assert_eq!(Fragment::decode(&opened).unwrap(), frag);
    // Nobody else can: not A, not with another kind.
    assert_eq!(
        open(&a.encryption, KIND_DATA, &sealed),
        Err(SealError::Authentication)
    );
    assert_eq!(
        open(&b.encryption, KIND_REPLY, &sealed),
        Err(SealError::Authentication)
    );
    let mut flipped = sealed.clone();
    flipped[100] ^= 4;
    assert_eq!(
        open(&b.encryption, KIND_DATA, &flipped),
        Err(SealError::Authentication)
    );

    // PB stores it and sends the SURB-ACK with a loop payload straight to L1.
    let ack = Payload::Loop.encode(payload_plaintext_len(ps)).unwrap();
    let (first, ack_packet) = use_surb(&surb_ack, &ack, ps).unwrap();
    assert_eq!(first, net.e("L1").id);
    assert_eq!(ack_packet.len(), HEADER_SIZE + ps);
    let got = net.deliver(first, ack_packet, None);
    assert_eq!(got.hops, ["L1", "L2", "L3", "PA"]);
    assert_eq!(got.destination, a.identity.node_id());
    assert_eq!(got.identifier, sent.ack_id);
    // PA cannot read it; A opens it with what it kept.
    assert_eq!(got.sealed().len(), ps);
    let opened = sent.ack_recovery.open(got.sealed()).unwrap();
    assert_eq!(Payload::decode(&opened).unwrap(), Payload::Loop);
}

#[test]
fn reply_over_a_reply_block_reaches_the_sender_only() {
    let net = Net::new();
    // B needs no keys of its own to answer: the reply block is all it uses.
    let a = net.client("PA");
    let mut r = rng();
    let ps = 1024;

    // A's message to B carries a reply block (it travels in data packets;
    // here the envelope is handed over directly).
    let (block_id, recovery, block) = reply_block(&net, &a, &mut r);
    let envelope = Envelope {
        reply_blocks: vec![block],
        body: b"please answer".to_vec(),
    };
    let received = Envelope::decode(&envelope.encode().unwrap()).unwrap();
    assert_eq!(received, envelope);
    let block = &received.reply_blocks[0];

    // B answers with one fragment; B sends the packet to its provider PB.
    let frag = fragment(&mut r, 500);
    let (first, packet) = reply_packet(block, &frag.encode(), ps);
    assert_eq!(first, net.e("PB").id);
    let got = net.deliver(first, packet, None);
    assert_eq!(got.hops, ["PB", "L1", "L2", "L3", "PA"]);
    assert_eq!(got.destination, a.identity.node_id());
    assert_eq!(got.identifier, block_id);

    // PA cannot even read the payload (version 260); A unseals it, and
    // the reply key keeps it A's alone even from anyone with the seeds.
    let opened = recovery.open(got.sealed()).unwrap();
    let Payload::Reply { ciphertext } = Payload::decode(&opened).unwrap() else {
        panic!("not a reply payload");
    };
    let opened = open_reply(&envelope.reply_blocks[0].key, &ciphertext).unwrap();
    assert_eq!(Fragment::decode(&opened).unwrap(), frag);
    assert_eq!(
        open_reply(&[0; 32], &ciphertext),
        Err(SealError::Authentication)
    );
    let mut flipped = ciphertext.clone();
    flipped[0] ^= 1;
    assert_eq!(
        open_reply(&envelope.reply_blocks[0].key, &flipped),
        Err(SealError::Authentication)
    );
}

#[test]
fn message_with_reply_block_travels_in_data_packets() {
    // The envelope is split into fragments that each fill a data packet, is
    // reassembled by B, and B answers over the reply block inside it.
    let net = Net::new();
    let (a, b) = (net.client("PA"), net.client("PB"));
    let mut r = rng();
    let ps = 1024;
    let (block_id, recovery, block) = reply_block(&net, &a, &mut r);
    let key = block.key;
    let envelope = Envelope {
        reply_blocks: vec![block],
        body: vec![0x5a; 700],
    };
    let bytes = envelope.encode().unwrap();
    let max_data = max_fragment_data(data_fragment_capacity(ps, SURB_LEN));
    let frags = crate::message::split(r.random(), &bytes, max_data, 64).unwrap();
    assert!(frags.len() > 1);

    let mut joined = Vec::new();
    for f in &frags {
        let packet = data_packet(&net, &a, &b.address, &f.encode(), ps, &mut r).packet;
        let got = net.deliver(net.e("PA").id, packet, None);
        let Payload::Data { sealed, .. } = Payload::decode(&got.plain()).unwrap() else {
            panic!("not data");
        };
        let back = Fragment::decode(&open(&b.encryption, KIND_DATA, &sealed).unwrap()).unwrap();
        assert_eq!(&back, f);
        joined.extend_from_slice(&back.data);
    }
    let received = Envelope::decode(&joined).unwrap();
    assert_eq!(received, envelope);

    let (first, packet) = reply_packet(&received.reply_blocks[0], b"thanks", ps);
    let got = net.deliver(first, packet, None);
    assert_eq!(got.identifier, block_id);
    let opened = recovery.open(got.sealed()).unwrap();
    let Payload::Reply { ciphertext } = Payload::decode(&opened).unwrap() else {
        panic!("not a reply");
    };
    assert_eq!(&open_reply(&key, &ciphertext).unwrap()[..6], b"thanks");
}

#[test]
fn tampered_packets_and_surbs_fail() {
    let net = Net::new();
    let (a, b) = (net.client("PA"), net.client("PB"));
    let mut r = rng();
    let ps = 1024;
    let frag = fragment(&mut r, 10).encode();

    // A payload byte flipped on the L2 → L3 link: Lioness garbles the whole
    // payload, and the final hop cannot recover a plaintext (to it, the
    // packet looks sealed; B finds nothing that opens it).
    let packet = data_packet(&net, &a, &b.address, &frag, ps, &mut r).packet;
    let got = net
        .deliver_with(net.e("PA").id, packet, None, |i, p| {
            if i == 3 {
                p[HEADER_SIZE + 200] ^= 1;
            }
        })
        .unwrap();
    assert_eq!(got.at, "PB");
    assert_eq!(got.sealed().len(), ps);

    // A header byte flipped: the next hop's MAC check drops it.
    let packet = data_packet(&net, &a, &b.address, &frag, ps, &mut r).packet;
    let rejected = net
        .deliver_with(net.e("PA").id, packet, None, |i, p| {
            if i == 2 {
                p[40] ^= 1;
            }
        })
        .err();
    assert_eq!(rejected, Some(("L2", Rejection::Malformed)));

    // A SURB whose seed was changed: the packet arrives but does not open.
    let (_, recovery, block) = reply_block(&net, &a, &mut r);
    let mut bad_seed = block.clone();
    let last = bad_seed.surb.len() - 1;
    bad_seed.surb[last] ^= 1;
    let (first, packet) = reply_packet(&bad_seed, &frag, ps);
    let got = net.deliver(first, packet, None);
    assert_eq!(recovery.open(got.sealed()).unwrap_err().label(), "open");
    // Nor does anything else: garbage, the wrong length.
    assert!(recovery.open(&vec![7; ps]).is_err());
    assert!(recovery.open(&[]).is_err());
    assert!(recovery.open(&got.sealed()[1..]).is_err());

    // A SURB whose header was changed: its first hop drops the packet.
    let mut bad_header = block.clone();
    bad_header.surb[100] ^= 1;
    let (first, packet) = reply_packet(&bad_header, &frag, ps);
    assert_eq!(
        net.deliver_with(first, packet, None, |_, _| {}).err(),
        Some(("PB", Rejection::Malformed))
    );

    // Truncated, extended, or empty SURBs are errors.
    let ack = Payload::Ack.encode(payload_plaintext_len(ps)).unwrap();
    for len in [0, 1, 380, SURB_LEN - 1, SURB_LEN + 1, SURB_LEN + 16] {
        let mut s = block.surb.clone();
        s.resize(len, 7);
        assert_eq!(
            use_surb(&s, &ack, ps).unwrap_err().label(),
            "malformed",
            "{len}"
        );
    }
    // A plaintext that does not fit is an error, not a panic.
    let err = use_surb(&block.surb, &vec![0; ps - 16], ps).unwrap_err();
    assert_eq!(err.label(), "plaintext_too_long");
    assert!(use_surb(&block.surb, &ack, ps - 1).is_err());
    assert!(use_surb(&block.surb, b"", 10).is_err());
}

#[test]
fn make_surb_rejects_bad_routes() {
    let net = Net::new();
    let id = net.e("PA").id;
    let mut r = rng();
    assert_eq!(
        make_surb(&[], id, [1; 16], &[]).err(),
        Some(SurbError::RouteLength(0))
    );
    let six = net.route(&["PA", "L1", "L2", "L3", "PB", "PA"]);
    assert_eq!(
        make_surb(&six, id, [1; 16], &delays(&mut r, 6)).err(),
        Some(SurbError::RouteLength(6))
    );
    let three = net.route(&["L1", "L2", "L3"]);
    assert_eq!(
        make_surb(&three, id, [1; 16], &delays(&mut r, 2)).err(),
        Some(SurbError::DelayCount { hops: 3, delays: 2 })
    );
}

#[test]
fn capacities_are_exact() {
    let net = Net::new();
    let (a, b) = (net.client("PA"), net.client("PB"));
    let mut r = rng();
    for ps in [1024, 2048] {
        // Data: a fragment of exactly the capacity crosses the network.
        let cap = data_fragment_capacity(ps, SURB_LEN);
        assert_eq!(cap, ps - 17 - 3 - 396 - 48);
        let frag = fragment(&mut r, cap - FRAGMENT_HEADER_LEN);
        assert_eq!(frag.encoded_len(), cap);
        assert_eq!(max_fragment_data(cap), cap - FRAGMENT_HEADER_LEN);
        let packet = data_packet(&net, &a, &b.address, &frag.encode(), ps, &mut r).packet;
        let got = net.deliver(net.e("PA").id, packet, None);
        let Payload::Data { sealed, .. } = Payload::decode(&got.plain()).unwrap() else {
            panic!("not data");
        };
        let opened = open(&b.encryption, KIND_DATA, &sealed).unwrap();
        assert_eq!(opened.len(), cap, "no padding left at full capacity");
        assert_eq!(Fragment::decode(&opened).unwrap(), frag);
        // One byte more does not fit.
        let sealed_len = data_sealed_len(ps, SURB_LEN);
        assert_eq!(
            seal(
                &b.address.encryption,
                KIND_DATA,
                &vec![0; cap + 1],
                sealed_len,
                &mut r
            ),
            Err(SealError::PlaintextTooLong {
                len: cap + 1,
                max: cap
            })
        );

        // Reply: the same for a reply block.
        let cap = reply_fragment_capacity(ps);
        assert_eq!(cap, ps - 17 - 1 - 16);
        let frag = fragment(&mut r, cap - FRAGMENT_HEADER_LEN);
        let (_, recovery, block) = reply_block(&net, &a, &mut r);
        let (first, packet) = reply_packet(&block, &frag.encode(), ps);
        let got = net.deliver(first, packet, None);
        let opened = recovery.open(got.sealed()).unwrap();
        let Payload::Reply { ciphertext } = Payload::decode(&opened).unwrap() else {
            panic!("not a reply");
        };
        let opened = open_reply(&block.key, &ciphertext).unwrap();
        assert_eq!(opened.len(), cap);
        assert_eq!(Fragment::decode(&opened).unwrap(), frag);
        assert_eq!(
            seal_reply(&block.key, &vec![0; cap + 1], reply_ciphertext_len(ps)),
            Err(SealError::PlaintextTooLong {
                len: cap + 1,
                max: cap
            })
        );

        // The encoded payloads are exactly what a packet carries: one byte
        // more is refused by Sphinx.
        let plen = payload_plaintext_len(ps);
        assert!(use_surb(&block.surb, &vec![0; plen], ps).is_ok());
        assert!(use_surb(&block.surb, &vec![0; plen + 1], ps).is_err());
    }
}

#[test]
fn every_kind_survives_the_network() {
    // Drop and loop payloads decode at the final hop too.
    let net = Net::new();
    let a = net.client("PA");
    let mut r = rng();
    let ps = 2048;
    for p in [Payload::Drop, Payload::Loop] {
        let bytes = p.encode(payload_plaintext_len(ps)).unwrap();
        let (dest, to) = match p {
            Payload::Drop => (net.e("PB").id, "PB"),
            _ => (a.identity.node_id(), "PA"),
        };
        let id: [u8; 16] = r.random();
        let packet = build_packet(
            &bytes,
            &net.route(&["PA", "L1", "L2", "L3", to]),
            &destination_of(&dest, id),
            &delays(&mut r, 5),
            ps,
        )
        .unwrap();
        let got = net.deliver(net.e("PA").id, packet, None);
        assert_eq!((got.at, got.destination, got.identifier), (to, dest, id));
        assert_eq!(Payload::decode(&got.plain()).unwrap(), p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn use_surb_never_panics_on_garbage(
        surb in proptest::collection::vec(any::<u8>(), 0..600),
        plaintext in proptest::collection::vec(any::<u8>(), 0..100),
        payload_size in 0usize..2000,
    ) {
        let _ = use_surb(&surb, &plaintext, payload_size);
    }

    /// Random bytes of a SURB's length parse (a SURB has nothing to check
    /// before its first hop's MAC), but the packet they give is dropped.
    #[test]
    fn random_surb_of_valid_length_gives_a_rejected_packet(
        seed in any::<u64>(),
    ) {
        let mut r = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let surb: Vec<u8> = (0..SURB_LEN).map(|_| r.random()).collect();
        match use_surb(&surb, b"x", 256) {
            Ok((_, packet)) => {
                prop_assert_eq!(packet.len(), HEADER_SIZE + 256);
                let ring = KeyRing::default();
                ring.insert(KeySlot {
                    epoch: EPOCH,
                    key: SphinxKeypair::generate(),
                    replay: ReplayCache::new(10, 1e-6).unwrap(),
                });
                let p = SphinxProcessor::new(ring, Duration::from_secs(1));
                prop_assert_eq!(p.process(EPOCH, &packet).err(), Some(Rejection::Malformed));
            }
            Err(e) => prop_assert_eq!(e.label(), "malformed"),
        }
    }

    #[test]
    fn address_parse_never_panics(s in "\\PC{0,200}") {
        let _ = s.parse::<ClientAddress>();
    }

    #[test]
    fn address_parse_of_near_addresses(
        a in "[1-9A-HJ-NP-Za-km-z]{0,50}",
        b in "[1-9A-HJ-NP-Za-km-z]{0,50}",
        c in "[1-9A-HJ-NP-Za-km-z.@]{0,50}",
    ) {
        let _ = format!("{a}.{b}@{c}").parse::<ClientAddress>();
    }
}

/// What the user of a reply block can compute of the reply's payload as
/// each hop will see it: starting from the payload it sent, remove one
/// layer per hop with the seeds the block gave it, in route order. With a
/// 259 block (every hop's seed) that is exactly the payload at every hop;
/// with a 260 block (only the last hop's seed) the user has nothing for the
/// first hop, so it can only try its one seed at every position.
fn predicted_payloads(sent: &[u8], seeds: &[[u8; 16]], hops: usize) -> Vec<Vec<Vec<u8>>> {
    use sphinx_packet::payload::Payload as SphinxPayload;
    use sphinx_packet::payload::key::derive_payload_key;
    let mut guesses = vec![vec![sent.to_vec()]];
    for hop in 1..hops {
        let mut next = Vec::new();
        for prev in &guesses[hop - 1] {
            // 259: hop i's seed is seeds[i]. 260: any seed, anywhere.
            let candidates: Vec<&[u8; 16]> = if seeds.len() == hops {
                vec![&seeds[hop - 1]]
            } else {
                seeds.iter().collect()
            };
            for seed in candidates {
                let p = SphinxPayload::from_bytes(prev).unwrap();
                next.push(
                    p.unwrap(derive_payload_key(seed))
                        .unwrap()
                        .as_bytes()
                        .to_vec(),
                );
            }
        }
        // And the payload unchanged, for a user who guesses a hop did nothing.
        next.extend(guesses[hop - 1].iter().cloned());
        guesses.push(next);
    }
    guesses
}

/// The payload as each hop of the reply's route receives it.
fn payloads_seen(net: &Net, first: NodeId, packet: Vec<u8>) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    net.deliver_with(first, packet, None, |_, p| {
        seen.push(p[HEADER_SIZE..].to_vec())
    })
    .unwrap();
    seen
}

/// Issue 17 item 3: a reply block's user (e.g. an exit answering a SOCKS
/// client) colluding with a mix on the block's route must not recognise
/// the reply there. The 259 baseline shows the attack works when the block
/// carries every seed; a 260 block (what `make_surb` makes) defeats it at
/// every mix, and the header is re-blinded at every hop as always.
#[test]
fn a_block_user_and_a_mix_can_match_a_259_reply_but_not_a_260_one() {
    use sphinx_packet::SURBMaterial;
    use sphinx_packet::constants::NODE_ADDRESS_LENGTH;
    use sphinx_packet::version::PAYLOAD_KEYS_SEEDS_VERSION;

    let net = Net::new();
    let a = net.client("PA");
    let mut r = rng();
    let ps = 1024;
    let route = net.route(&["PB", "L1", "L2", "L3", "PA"]);
    let hops = route.len();
    let reply = Payload::Reply {
        ciphertext: vec![0x42; reply_ciphertext_len(ps)],
    }
    .encode(payload_plaintext_len(ps))
    .unwrap();
    let seeds_of = |surb: &[u8]| -> Vec<[u8; 16]> {
        surb[HEADER_SIZE + NODE_ADDRESS_LENGTH..]
            .chunks(16)
            .map(|c| c.try_into().unwrap())
            .collect()
    };
    let mixes = ["L1", "L2", "L3"];

    // 259: the user holds every seed and predicts the payload at each mix.
    let old = SURBMaterial::new(
        route
            .iter()
            .map(|e| crate::sphinx::sphinx_node(e))
            .collect(),
        delays(&mut r, hops),
        destination_of(&a.identity.node_id(), r.random()),
        PAYLOAD_KEYS_SEEDS_VERSION,
    )
    .construct_SURB()
    .unwrap()
    .to_bytes();
    assert_eq!(seeds_of(&old).len(), hops);
    let (first, packet) = use_surb_any_version(&old, &reply, ps);
    let sent = packet[HEADER_SIZE..].to_vec();
    let seen = payloads_seen(&net, first, packet);
    let predicted = predicted_payloads(&sent, &seeds_of(&old), hops);
    for (i, name) in ["PB", "L1", "L2", "L3", "PA"].iter().enumerate() {
        assert!(
            predicted[i].contains(&seen[i]),
            "259: the user predicts what {name} sees"
        );
    }

    // 260: one seed; no mix sees anything the user can compute.
    let (new, recovery) = make_surb(
        &route,
        a.identity.node_id(),
        r.random(),
        &delays(&mut r, hops),
    )
    .unwrap();
    assert_eq!(seeds_of(&new).len(), 1);
    let (first, packet) = use_surb(&new, &reply, ps).unwrap();
    let sent = packet[HEADER_SIZE..].to_vec();
    let headers_sent = packet[..HEADER_SIZE].to_vec();
    let mut headers = Vec::new();
    let mut seen = Vec::new();
    let got = net
        .deliver_with(first, packet, None, |_, p| {
            headers.push(p[..HEADER_SIZE].to_vec());
            seen.push(p[HEADER_SIZE..].to_vec());
        })
        .unwrap();
    let predicted = predicted_payloads(&sent, &seeds_of(&new), hops);
    for (i, name) in ["PB", "L1", "L2", "L3", "PA"].iter().enumerate() {
        if mixes.contains(name) {
            assert!(
                !predicted.iter().flatten().any(|g| *g == seen[i]),
                "260: the user cannot predict what {name} sees"
            );
            assert_ne!(headers[i], headers_sent, "{name} sees a re-blinded header");
        }
    }
    // And still only A opens it.
    assert_eq!(recovery.open(got.sealed()).unwrap(), reply);
}

/// `use_surb` for a SURB of any version (the 259 baseline above).
fn use_surb_any_version(surb: &[u8], plaintext: &[u8], ps: usize) -> (NodeId, Vec<u8>) {
    let (packet, first) = sphinx_packet::SURB::from_bytes(surb)
        .unwrap()
        .use_surb(plaintext, ps)
        .unwrap();
    (crate::sphinx::node_id_of(&first), packet.to_bytes())
}
