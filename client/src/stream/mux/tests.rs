//! The stream protocol between a client mux and an exit mux over a
//! simulated network: random delays (so heavy reordering), loss, λ_P slots,
//! reply blocks consumed one per exit packet. No engine, no sockets.

use std::collections::BTreeMap;

use loopmix_core::e2e::{ClientAddress, ReplyBlock};
use loopmix_core::keys::NodeId;
use prometheus::Registry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

const CAP0: usize = 1511;
const BLOCK: usize = 502;
const REPLY_CAP: usize = 1989;

fn exit_address() -> ClientAddress {
    let enc = loopmix_core::e2e::EncryptionKeypair::generate();
    ClientAddress::new(NodeId([1; 32]), enc.public(), NodeId([2; 32]))
}

struct Net {
    rng: StdRng,
    loss: f64,
    /// (arrival time in ms, seq) → (to exit?, body, blocks)
    wire: BTreeMap<(u64, u64), (bool, Vec<u8>, usize)>,
    seq: u64,
    sent: [u64; 2],
}

impl Net {
    fn send(&mut self, now_ms: u64, to_exit: bool, body: Vec<u8>, blocks: usize) {
        self.sent[usize::from(to_exit)] += 1;
        if self.rng.random::<f64>() < self.loss {
            return;
        }
        let delay = self.rng.random_range(150..700);
        self.seq += 1;
        self.wire
            .insert((now_ms + delay, self.seq), (to_exit, body, blocks));
    }
}

fn block() -> ReplyBlock {
    ReplyBlock {
        epoch: 5,
        surb: vec![0; 460],
        key: [0; 32],
    }
}

struct Outcome {
    open: (usize, usize),
    received: Vec<Vec<u8>>,
    upload: Vec<u8>,
    ms: u64,
    exit_packets: u64,
    refused: Vec<u8>,
}

/// `n` streams; each downloads `download` bytes and uploads `upload`.
fn run(seed: u64, loss: f64, n: usize, download: &[u8], upload: &[u8], deny: bool) -> Outcome {
    let r = Registry::new();
    let cfg = StreamConfig::default();
    let mut client = Mux::client(
        exit_address(),
        cfg.clone(),
        StreamMetrics::new(&r).unwrap(),
        &mut rand::rng(),
    );
    let r2 = Registry::new();
    let mut exit = Mux::exit(cfg, StreamMetrics::new(&r2).unwrap());
    let mut net = Net {
        rng: StdRng::seed_from_u64(seed),
        loss,
        wire: BTreeMap::new(),
        seq: 0,
        sent: [0, 0],
    };
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut keys = Vec::new();
    for _ in 0..n {
        keys.push(
            client
                .open(
                    &IsolationKey::NONE,
                    Target::Name("example.org".into(), 80),
                    at(0),
                )
                .unwrap(),
        );
    }
    let mut received: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut fins = 0;
    let mut refused = Vec::new();
    let mut exit_streams: Vec<(StreamKey, usize, bool)> = Vec::new();
    let mut upload_got: BTreeMap<StreamKey, Vec<u8>> = BTreeMap::new();
    let mut client_pushed = vec![0usize; n];
    let mut ms = 0u64;
    let mut done_at: Option<u64> = None;
    // Run on for 60 s after the application is done: both ends must close
    // every stream by themselves (FIN acks and answers can be lost too).
    while done_at.is_none_or(|d| ms < d + 60_000) && ms < 900_000 {
        if done_at.is_none() && fins + refused.len() >= n {
            done_at = Some(ms);
        }
        ms += 10;
        let now = at(ms);
        // Deliveries due.
        let due: Vec<(u64, u64)> = net.wire.range(..(ms + 1, 0)).map(|(k, _)| *k).collect();
        for k in due {
            let Some((to_exit, body, blocks)) = net.wire.remove(&k) else {
                continue;
            };
            if to_exit {
                exit.on_message(&body, (0..blocks).map(|_| block()).collect(), now);
            } else {
                client.on_message(&body, Vec::new(), now);
            }
        }
        // Exit application: accept connects, serve `download`.
        for e in exit.take_events() {
            match e {
                MuxEvent::Connect(k, _) => {
                    let r = if deny { Err(code::NOT_ALLOWED) } else { Ok(()) };
                    exit.connected(k, r, now);
                    exit_streams.push((k, 0, false));
                }
                MuxEvent::Data(k, d) => {
                    exit.written(&k, d.len());
                    upload_got.entry(k).or_default().extend(d);
                }
                _ => {}
            }
        }
        for (k, off, fin) in exit_streams.iter_mut() {
            if *off < download.len() {
                *off += exit.push(k, &download[*off..]).unwrap_or(0);
            }
            if *off == download.len() && !*fin {
                exit.finish(k);
                *fin = true;
            }
        }
        // Client application.
        for e in client.take_events() {
            match e {
                MuxEvent::Data(k, d) => {
                    client.written(&k, d.len());
                    let i = keys.iter().position(|x| *x == k).unwrap();
                    received[i].extend(d);
                }
                MuxEvent::Fin(_) => fins += 1,
                MuxEvent::Refused(_, c) => refused.push(c),
                MuxEvent::Reset(_, c) => panic!("reset {c} at {ms} ms"),
                _ => {}
            }
        }
        for (i, k) in keys.iter().enumerate() {
            if client_pushed[i] < upload.len() {
                client_pushed[i] += client.push(k, &upload[client_pushed[i]..]).unwrap_or(0);
                if client_pushed[i] == upload.len() {
                    client.finish(k);
                }
            }
        }
        // λ_P slots: every 50 ms each.
        if ms.is_multiple_of(50) {
            if let Some(out) = client.client_message(CAP0, BLOCK, now) {
                assert!(out.body.len() + out.blocks * BLOCK <= CAP0);
                client.client_sent(out.session, out.grants, vec![[0; 8]; out.blocks], now);
                net.send(ms, true, out.body, out.blocks);
            }
            if let Some((body, _)) = exit.exit_message(REPLY_CAP, 5, now) {
                assert!(body.len() <= REPLY_CAP);
                net.send(ms, false, body, 0);
            }
        }
        client.tick(now);
        exit.tick(now);
    }
    let upload = upload_got.into_values().next().unwrap_or_default();
    Outcome {
        open: (client.streams_open(), exit.streams_open()),
        received,
        upload,
        ms: done_at.unwrap_or(ms),
        exit_packets: net.sent[0],
        refused,
    }
}

fn bytes(n: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(n as u64);
    (0..n).map(|_| rng.random()).collect()
}

#[test]
fn download_without_loss_uses_most_slots() {
    let data = bytes(300_000);
    let o = run(1, 0.0, 1, &data, b"GET / HTTP/1.0\r\n\r\n", false);
    assert_eq!(o.received[0], data);
    assert_eq!(o.upload, b"GET / HTTP/1.0\r\n\r\n");
    // Goodput relative to the exit's slots over the whole run (which
    // includes the opening round trip).
    let slots = o.ms / 50;
    let per_slot = data.len() as f64 / slots as f64;
    eprintln!(
        "{} ms, {per_slot:.0} B per exit slot, {} exit packets",
        o.ms, o.exit_packets
    );
    assert!(per_slot > 0.8 * 1900.0, "{per_slot} bytes per slot");
}

#[test]
fn loss_and_reordering_lose_nothing() {
    let data = bytes(120_000);
    let up = bytes(30_000);
    let o = run(2, 0.1, 3, &data, &up, false);
    for r in &o.received {
        assert_eq!(r, &data);
    }
    assert_eq!(o.upload, up);
    assert_eq!(o.open, (0, 0), "streams left open");
}

#[test]
fn concurrent_streams_share_slots() {
    let data = bytes(60_000);
    let o = run(3, 0.0, 8, &data, b"x", false);
    for r in &o.received {
        assert_eq!(r, &data);
    }
}

#[test]
fn refused_targets_get_the_code() {
    let o = run(4, 0.0, 2, b"", b"", true);
    assert_eq!(o.refused, vec![code::NOT_ALLOWED, code::NOT_ALLOWED]);
    // With heavy loss the refusal is asked for again (a repeated OPEN)
    // and answered again: nobody waits for the open timeout.
    let o = run(5, 0.4, 6, b"", b"", true);
    assert_eq!(o.refused, vec![code::NOT_ALLOWED; 6]);
    assert!(o.ms < 30_000, "took {} ms", o.ms);
}

#[test]
fn garbage_messages_are_counted_not_fatal() {
    let r = Registry::new();
    let m = StreamMetrics::new(&r).unwrap();
    let mut exit = Mux::exit(StreamConfig::default(), m.clone());
    let now = Instant::now();
    exit.on_message(b"", Vec::new(), now);
    exit.on_message(&[1; 10], Vec::new(), now);
    let mut msg = Message::new([9; 16]);
    msg.frames.push(Frame::Opened { stream: 1 });
    msg.frames.push(Frame::Ack {
        stream: 7,
        next: 1_000,
        sack: u32::MAX,
        window: 0,
    });
    exit.on_message(&msg.encode().unwrap(), vec![block()], now);
    assert_eq!(m.bad.with_label_values(&["short"]).get(), 2);
    assert_eq!(m.bad.with_label_values(&["wrong_direction"]).get(), 1);
    // The ack for an unknown stream is answered with a RESET.
    let (body, _) = exit.exit_message(REPLY_CAP, 5, now).unwrap();
    let reply = Message::decode(&body).unwrap();
    assert_eq!(
        reply.frames,
        vec![Frame::Reset {
            stream: 7,
            code: code::GENERAL_FAILURE
        }]
    );
}

#[test]
fn a_vanished_client_leaves_nothing_at_the_exit() {
    let r = Registry::new();
    let m = StreamMetrics::new(&r).unwrap();
    let mut exit = Mux::exit(StreamConfig::default(), m.clone());
    let t0 = Instant::now();
    let mut msg = Message::new([3; 16]);
    msg.frames.push(Frame::Open {
        stream: 1,
        target: Target::Name("example.org".into(), 80),
    });
    exit.on_message(&msg.encode().unwrap(), vec![block(), block()], t0);
    let key = match exit.take_events().as_slice() {
        [MuxEvent::Connect(k, _)] => *k,
        other => panic!("{other:?}"),
    };
    exit.connected(key, Ok(()), t0);
    exit.push(&key, &[7; 100_000]);
    // The client is gone (killed): nothing more arrives from it.
    let mut t = t0;
    let mut reset = false;
    while t < t0 + Duration::from_secs(400) {
        t += Duration::from_millis(500);
        let _ = exit.exit_message(REPLY_CAP, 5, t);
        exit.tick(t);
        reset |= exit
            .take_events()
            .iter()
            .any(|e| matches!(e, MuxEvent::Reset(k, _) if *k == key));
    }
    assert!(reset, "the target's socket must be closed");
    assert_eq!(exit.streams_open(), 0);
    assert_eq!(m.sessions.get(), 0);
    assert_eq!(m.blocks.get(), 0);
}

#[test]
fn revoked_reply_blocks_leave_the_exit_pool() {
    let r = Registry::new();
    let cm = StreamMetrics::new(&r).unwrap();
    let mut client = Mux::client(
        exit_address(),
        StreamConfig::default(),
        cm.clone(),
        &mut rand::rng(),
    );
    let r2 = Registry::new();
    let em = StreamMetrics::new(&r2).unwrap();
    let mut exit = Mux::exit(StreamConfig::default(), em.clone());
    let t0 = Instant::now();
    let ck = client
        .open(
            &IsolationKey::NONE,
            Target::Name("example.org".into(), 80),
            t0,
        )
        .unwrap();
    // Four blocks with distinct keys reach the exit with the OPEN.
    let keyed = |k: u8| {
        let mut b = block();
        b.key = [k; 32];
        b
    };
    let out = client.client_message(CAP0, BLOCK, t0).unwrap();
    let tags = (1..=4).map(|k| block_tag(&[k; 32])).collect();
    client.client_sent(out.session, out.grants, tags, t0);
    exit.on_message(&out.body, (1..=4).map(keyed).collect(), t0);
    assert_eq!(em.blocks.get(), 4);
    // Blocks 2 and 4 cross a mix now listed down; one tag no session was
    // granted (dropped: it names no block of ours at this exit).
    client.revoke(vec![block_tag(&[2; 32]), block_tag(&[4; 32]), [9; 8]], t0);
    let t1 = t0 + Duration::from_millis(10);
    let out = client.client_message(CAP0, BLOCK, t1).unwrap();
    let msg = Message::decode(&out.body).unwrap();
    assert!(
        msg.frames
            .iter()
            .any(|f| matches!(f, Frame::Revoke { tags } if tags.len() == 2))
    );
    exit.on_message(&out.body, Vec::new(), t1);
    assert_eq!(
        em.blocks_revoked.with_label_values(&["dropped"]).get(),
        2,
        "exactly the named blocks are dropped"
    );
    assert_eq!(cm.blocks_revoked.with_label_values(&["sent"]).get(), 2);
    // The survivors are the ones used next.
    let key = match exit.take_events().as_slice() {
        [MuxEvent::Connect(k, _)] => *k,
        other => panic!("{other:?}"),
    };
    exit.connected(key, Ok(()), t1);
    let (_, b) = exit.exit_message(REPLY_CAP, 5, t1).unwrap();
    assert!(b.key == [1; 32] || b.key == [3; 32]);
    // A REVOKE sent to a client is refused and counted, not obeyed.
    let mut m = Message::new(ck.session);
    m.frames.push(Frame::Revoke { tags: vec![[1; 8]] });
    client.on_message(&m.encode().unwrap(), Vec::new(), t1);
    assert_eq!(cm.bad.with_label_values(&["unexpected_revoke"]).get(), 1);
}

fn target() -> Target {
    Target::Name("example.org".into(), 80)
}

fn creds(user: &str) -> IsolationKey {
    IsolationKey::credentials(user.as_bytes().to_vec(), b"pw".to_vec())
}

#[test]
fn isolation_keys_get_sessions_of_their_own() {
    let r = Registry::new();
    let m = StreamMetrics::new(&r).unwrap();
    let cfg = StreamConfig {
        max_sessions: 3,
        session_idle: Duration::from_secs(60),
        // Streams stay until the test ends them.
        open_timeout: Duration::from_secs(10_000),
        ..StreamConfig::default()
    };
    let mut c = Mux::client(exit_address(), cfg, m.clone(), &mut rand::rng());
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let (alice, bob) = (creds("alice"), creds("bob"));
    let a1 = c.open(&alice, target(), t0).unwrap();
    let b1 = c.open(&bob, target(), t0).unwrap();
    let a2 = c.open(&alice, target(), t0).unwrap();
    let n1 = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    let n2 = c
        .open(
            &IsolationKey::credentials(Vec::new(), Vec::new()),
            target(),
            t0,
        )
        .unwrap();
    // Two keys, two sessions; one key, one session; empty = none.
    assert_ne!(a1.session, b1.session);
    assert_eq!(a1.session, a2.session);
    assert_ne!(a1.stream, a2.stream);
    assert_eq!(n1.session, n2.session);
    assert!(n1.session != a1.session && n1.session != b1.session);
    assert_eq!((m.client_sessions.get(), m.sessions_opened.get()), (3, 3));
    // Every session speaks for itself: three messages, three session ids,
    // each carrying only its own OPENs.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let out = c.client_message(CAP0, BLOCK, t0).unwrap();
        let msg = Message::decode(&out.body).unwrap();
        assert_eq!(msg.session, out.session);
        let opens: Vec<u32> = msg.frames.iter().map(|f| f.stream()).collect();
        seen.insert(msg.session, opens);
    }
    assert_eq!(seen[&a1.session], vec![a1.stream, a2.stream]);
    assert_eq!(seen[&b1.session], vec![b1.stream]);
    assert_eq!(seen[&n1.session], vec![n1.stream, n2.stream]);
    // The bound: a fourth key while every session has streams is refused.
    assert_eq!(
        c.open(&creds("carol"), target(), t0),
        Err("too many sessions")
    );

    // Idle expiry: alice's streams end; her session stays for the idle
    // time, then her next stream gets a new one. Bob's (busy) stays.
    c.abort(&a1, code::GENERAL_FAILURE, "test");
    c.abort(&a2, code::GENERAL_FAILURE, "test");
    c.tick(t0 + s(30));
    let again = c.open(&alice, target(), t0 + s(30)).unwrap();
    assert_eq!(again.session, a1.session);
    c.abort(&again, code::GENERAL_FAILURE, "test");
    c.tick(t0 + s(89));
    assert_eq!(m.client_sessions.get(), 3, "idle only 59 s");
    c.tick(t0 + s(91));
    assert_eq!(m.client_sessions.get(), 2);
    let a3 = c.open(&alice, target(), t0 + s(91)).unwrap();
    assert!(a3.session != a1.session && a3.session != b1.session);
    assert_eq!(
        c.open(&bob, target(), t0 + s(91)).unwrap().session,
        b1.session
    );
    // A late answer to the closed session is counted, not obeyed.
    let mut late = Message::new(a1.session);
    late.frames.push(Frame::Opened { stream: a1.stream });
    c.on_message(&late.encode().unwrap(), Vec::new(), t0 + s(91));
    assert_eq!(m.bad.with_label_values(&["unknown_session"]).get(), 1);

    // Streams without credentials are replaced the same way.
    c.abort(&n1, code::GENERAL_FAILURE, "test");
    c.abort(&n2, code::GENERAL_FAILURE, "test");
    c.tick(t0 + s(200));
    let n3 = c.open(&IsolationKey::NONE, target(), t0 + s(200)).unwrap();
    assert_ne!(n3.session, n1.session);
    assert_eq!(m.sessions_opened.get(), 5);

    // Full again (alice, bob, none, all busy) until one is idle: then a
    // new key takes the place of the longest-idle session.
    assert!(c.open(&creds("carol"), target(), t0 + s(200)).is_err());
    c.abort(&n3, code::GENERAL_FAILURE, "test");
    let carol = c.open(&creds("carol"), target(), t0 + s(201)).unwrap();
    assert_eq!(m.client_sessions.get(), 3);
    assert!(![a3.session, b1.session, n3.session].contains(&carol.session));
}

#[test]
fn revocations_stay_in_their_session() {
    let r = Registry::new();
    let m = StreamMetrics::new(&r).unwrap();
    let mut c = Mux::client(exit_address(), StreamConfig::default(), m, &mut rand::rng());
    let t0 = Instant::now();
    c.open(&creds("alice"), target(), t0).unwrap();
    c.open(&creds("bob"), target(), t0).unwrap();
    let mut granted = std::collections::BTreeMap::new();
    for k in [1u8, 2] {
        let out = c.client_message(CAP0, BLOCK, t0).unwrap();
        let tag = block_tag(&[k; 32]);
        c.client_sent(out.session, out.grants, vec![tag], t0);
        granted.insert(out.session, tag);
    }
    assert_eq!(granted.len(), 2, "one grant in each session");
    // Both blocks cross a mix now listed down: each session is told of
    // its own block only (one REVOKE naming both would link them).
    c.revoke(vec![block_tag(&[1; 32]), block_tag(&[2; 32]), [9; 8]], t0);
    let mut revoked = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let out = c.client_message(CAP0, BLOCK, t0).unwrap();
        let msg = Message::decode(&out.body).unwrap();
        for f in msg.frames {
            if let Frame::Revoke { tags } = f {
                revoked.insert(msg.session, tags);
            }
        }
    }
    for (session, tag) in &granted {
        assert_eq!(revoked.get(session), Some(&vec![*tag]), "{revoked:?}");
    }
}

// ---- optimistic data (PROTOCOL.md 7.3) ----

/// A client mux and an exit mux, with the exit's metrics.
fn pair() -> (Mux, Mux, StreamMetrics) {
    let client = Mux::client(
        exit_address(),
        StreamConfig::default(),
        StreamMetrics::new(&Registry::new()).unwrap(),
        &mut rand::rng(),
    );
    let em = StreamMetrics::new(&Registry::new()).unwrap();
    (client, Mux::exit(StreamConfig::default(), em.clone()), em)
}

/// The client's next message: its frames, and its body and block count
/// for the exit (the engine's part, granting blocks, done here).
fn client_out(c: &mut Mux, now: Instant) -> (Vec<Frame>, Vec<u8>, usize) {
    let out = c.client_message(CAP0, BLOCK, now).unwrap();
    c.client_sent(out.session, out.grants, vec![[0; 8]; out.blocks], now);
    let frames = Message::decode(&out.body).unwrap().frames;
    (frames, out.body, out.blocks)
}

fn to_exit(exit: &mut Mux, body: &[u8], blocks: usize, now: Instant) {
    exit.on_message(body, (0..blocks).map(|_| block()).collect(), now);
}

fn connect_event(exit: &mut Mux) -> StreamKey {
    match exit.take_events().as_slice() {
        [MuxEvent::Connect(k, _)] => *k,
        other => panic!("{other:?}"),
    }
}

/// What the exit holds for a stream it is connecting.
fn held(exit: &Mux, key: &StreamKey) -> usize {
    exit.sessions[&key.session].streams[&key.stream]
        .receiver
        .held()
}

const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n";

#[test]
fn a_request_written_after_open_travels_with_the_open() {
    let (mut c, mut exit, _) = pair();
    let t0 = Instant::now();
    let k = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    assert_eq!(c.push(&k, REQUEST), Some(REQUEST.len()));
    let (frames, body, blocks) = client_out(&mut c, t0);
    assert!(blocks > 0, "the exit needs a reply block to answer");
    assert_eq!(
        frames,
        vec![
            Frame::Open {
                stream: k.stream,
                target: target()
            },
            Frame::Data {
                stream: k.stream,
                seq: 0,
                fin: false,
                data: REQUEST.to_vec()
            },
        ]
    );
    // One message is the whole request: the exit has it all on connect.
    to_exit(&mut exit, &body, blocks, t0);
    let ek = connect_event(&mut exit);
    exit.connected(ek, Ok(()), t0);
    assert_eq!(
        exit.take_events(),
        vec![MuxEvent::Data(ek, REQUEST.to_vec())]
    );
}

#[test]
fn the_exit_holds_early_data_until_connected() {
    let (mut c, mut exit, em) = pair();
    let t0 = Instant::now();
    let k = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    // Longer than one message has room for: several messages, each with
    // the OPEN, arriving in reverse order.
    let request = bytes(2_000);
    c.push(&k, &request);
    c.finish(&k);
    let mut out = Vec::new();
    for i in 0..8u64 {
        let now = t0 + Duration::from_millis(50 * i);
        let Some(o) = c.client_message(CAP0, BLOCK, now) else {
            continue;
        };
        c.client_sent(o.session, o.grants, vec![[0; 8]; o.blocks], now);
        let frames = Message::decode(&o.body).unwrap().frames;
        if frames.iter().any(|f| matches!(f, Frame::Data { .. })) {
            assert!(
                matches!(frames.first(), Some(Frame::Open { .. })),
                "DATA before OPENED only behind its OPEN: {frames:?}"
            );
        }
        out.push((o.body, o.blocks));
    }
    assert!(out.len() > 2, "the request took {} messages", out.len());
    let t1 = t0 + Duration::from_secs(1);
    for (body, blocks) in out.iter().rev() {
        to_exit(&mut exit, body, *blocks, t1);
    }
    // One Connect; nothing delivered, nothing acknowledged yet.
    let ek = connect_event(&mut exit);
    assert!(exit.take_events().is_empty());
    assert!(held(&exit, &ek) > 2);
    assert!(
        exit.exit_message(REPLY_CAP, 5, t1).is_none(),
        "no reply yet"
    );
    // Connected: the request in order, then its end; OPENED and an ACK
    // for all of it in one reply.
    exit.connected(ek, Ok(()), t1);
    assert_eq!(
        exit.take_events(),
        vec![MuxEvent::Data(ek, request.clone()), MuxEvent::Fin(ek)]
    );
    assert_eq!(held(&exit, &ek), 0);
    assert_eq!(
        em.bytes.with_label_values(&["received"]).get(),
        request.len() as u64
    );
    let (body, _) = exit.exit_message(REPLY_CAP, 5, t1).unwrap();
    let reply = Message::decode(&body).unwrap();
    assert!(matches!(reply.frames[0], Frame::Opened { stream } if stream == k.stream));
    assert!(
        matches!(reply.frames[1], Frame::Ack { sack: 0, .. }),
        "{:?}",
        reply.frames
    );
    // The client takes it: opened, everything acknowledged.
    c.on_message(&body, Vec::new(), t1);
    assert_eq!(
        c.take_events(),
        vec![MuxEvent::Opened(k), MuxEvent::Room(k)]
    );
    let s = &c.sessions[&k.session].streams[&k.stream];
    assert!(s.sender.done(), "request and FIN acknowledged");
}

#[test]
fn a_refused_stream_drops_its_optimistic_data() {
    let (mut c, mut exit, _) = pair();
    let t0 = Instant::now();
    let k = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    c.push(&k, REQUEST);
    let (_, body, blocks) = client_out(&mut c, t0);
    to_exit(&mut exit, &body, blocks, t0);
    let ek = connect_event(&mut exit);
    exit.connected(ek, Err(code::NOT_ALLOWED), t0);
    assert!(exit.take_events().is_empty(), "nothing reaches a socket");
    assert_eq!(exit.streams_open(), 0);
    let (reply, _) = exit.exit_message(REPLY_CAP, 5, t0).unwrap();
    c.on_message(&reply, Vec::new(), t0);
    assert_eq!(
        c.take_events(),
        vec![MuxEvent::Refused(k, code::NOT_ALLOWED)]
    );
    assert_eq!(c.streams_open(), 0);
    assert_eq!(c.push(&k, b"more"), None, "the stream is gone");
    // The same OPEN and DATA again (a copy that was late): refused again,
    // nothing held, no connect.
    let t1 = t0 + Duration::from_secs(1);
    to_exit(&mut exit, &body, 0, t1);
    assert!(exit.take_events().is_empty());
    assert_eq!(exit.streams_open(), 0);
    let (reply, _) = exit.exit_message(REPLY_CAP, 5, t1).unwrap();
    let frames = Message::decode(&reply).unwrap().frames;
    assert_eq!(
        frames[0],
        Frame::Refused {
            stream: k.stream,
            code: code::NOT_ALLOWED
        }
    );
    c.on_message(&reply, Vec::new(), t1);
    assert!(c.take_events().is_empty());
    // The client has nothing more for that stream, however long it waits.
    let later = t0 + Duration::from_secs(30);
    if let Some(out) = c.client_message(CAP0, BLOCK, later) {
        let frames = Message::decode(&out.body).unwrap().frames;
        assert!(frames.iter().all(|f| f.stream() != k.stream), "{frames:?}");
    }
}

#[test]
fn a_lost_open_and_its_data_go_again_together() {
    let (mut c, mut exit, _) = pair();
    let t0 = Instant::now();
    let k = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    c.push(&k, REQUEST);
    let (first, _, _) = client_out(&mut c, t0);
    assert_eq!(first.len(), 2);
    // Lost. Before the timeout (3 s before any round trip is measured)
    // neither goes again.
    let t1 = t0 + Duration::from_secs(2);
    if let Some(out) = c.client_message(CAP0, BLOCK, t1) {
        c.client_sent(out.session, out.grants, vec![[0; 8]; out.blocks], t1);
        assert!(Message::decode(&out.body).unwrap().frames.is_empty());
    }
    let t2 = t0 + Duration::from_secs(3);
    let (again, body, blocks) = client_out(&mut c, t2);
    assert_eq!(again, first, "OPEN and DATA again, in one message");
    assert_eq!(
        c.sessions[&k.session].streams[&k.stream]
            .sender
            .retransmissions,
        1
    );
    to_exit(&mut exit, &body, blocks, t2);
    let ek = connect_event(&mut exit);
    exit.connected(ek, Ok(()), t2);
    assert_eq!(
        exit.take_events(),
        vec![MuxEvent::Data(ek, REQUEST.to_vec())]
    );
    // The answer arrives: the client stops repeating itself.
    let (reply, _) = exit.exit_message(REPLY_CAP, 5, t2).unwrap();
    c.on_message(&reply, Vec::new(), t2 + Duration::from_millis(500));
    assert_eq!(
        c.take_events(),
        vec![MuxEvent::Opened(k), MuxEvent::Room(k)]
    );
    let t3 = t2 + Duration::from_secs(20);
    if let Some(out) = c.client_message(CAP0, BLOCK, t3) {
        let frames = Message::decode(&out.body).unwrap().frames;
        assert!(frames.iter().all(|f| f.stream() != k.stream), "{frames:?}");
    }
}

#[test]
fn early_data_beyond_the_bound_is_not_kept() {
    let (_, mut exit, _) = pair();
    let t0 = Instant::now();
    let session = [4; 16];
    // A client that ignores the bound: 200 segments before OPENED, in
    // order and far out of it, over several messages.
    for chunk in 0..20u32 {
        let mut m = Message::new(session);
        m.frames.push(Frame::Open {
            stream: 1,
            target: target(),
        });
        for i in 0..10 {
            let seq = chunk * 10 + i;
            m.frames.push(Frame::Data {
                stream: 1,
                seq: if seq == 199 { u32::MAX } else { seq },
                fin: false,
                data: vec![seq as u8; 100],
            });
        }
        to_exit(&mut exit, &m.encode().unwrap(), 1, t0);
    }
    let ek = connect_event(&mut exit);
    assert_eq!(held(&exit, &ek), OPTIMISTIC_SEGMENTS as usize);
    // Connected: exactly the first segments, in order; the rest must come
    // again, within the window, like any data the exit did not take.
    exit.connected(ek, Ok(()), t0);
    let want: Vec<u8> = (0..OPTIMISTIC_SEGMENTS)
        .flat_map(|s| vec![s as u8; 100])
        .collect();
    assert_eq!(exit.take_events(), vec![MuxEvent::Data(ek, want)]);
    let (reply, _) = exit.exit_message(REPLY_CAP, 5, t0).unwrap();
    let frames = Message::decode(&reply).unwrap().frames;
    assert!(
        frames.contains(&Frame::Ack {
            stream: 1,
            next: OPTIMISTIC_SEGMENTS,
            sack: 0,
            window: 64 - (OPTIMISTIC_SEGMENTS as u16 * 100).div_ceil(1024),
        }),
        "{frames:?}"
    );
}

#[test]
fn a_target_opened_before_in_the_session_may_be_answered_at_once() {
    let (mut c, _, _) = pair();
    let t0 = Instant::now();
    let answer = |c: &mut Mux, k: StreamKey, f: Frame| {
        let mut m = Message::new(k.session);
        m.frames.push(f);
        c.on_message(&m.encode().unwrap(), Vec::new(), t0);
    };
    let a = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    assert!(!c.opened_before(&a), "never opened: wait for the answer");
    answer(&mut c, a, Frame::Opened { stream: a.stream });
    assert!(!c.opened_before(&a), "answered already");
    let b = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    assert!(c.opened_before(&b));
    // Another target, or another session (it must not learn what this
    // one opened), waits.
    let other = c
        .open(
            &IsolationKey::NONE,
            Target::Name("example.net".into(), 80),
            t0,
        )
        .unwrap();
    assert!(!c.opened_before(&other));
    let alice = c.open(&creds("alice"), target(), t0).unwrap();
    assert!(!c.opened_before(&alice));
    // Refused this time: the next stream to it waits for the answer again.
    answer(
        &mut c,
        b,
        Frame::Refused {
            stream: b.stream,
            code: code::CONNECTION_REFUSED,
        },
    );
    let d = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    assert!(!c.opened_before(&d));
}

// ---- session lifetimes ----

/// One exchange each way at `now`: the client's next message to the exit
/// and the exit's next answer back. The exit's connects succeed.
fn exchange(c: &mut Mux, exit: &mut Mux, now: Instant) -> Vec<MuxEvent> {
    if let Some(out) = c.client_message(CAP0, BLOCK, now) {
        c.client_sent(out.session, out.grants, vec![[0; 8]; out.blocks], now);
        to_exit(exit, &out.body, out.blocks, now);
    }
    for e in exit.take_events() {
        if let MuxEvent::Connect(k, _) = e {
            exit.connected(k, Ok(()), now);
        }
    }
    if let Some((body, _)) = exit.exit_message(REPLY_CAP, 5, now) {
        c.on_message(&body, Vec::new(), now);
    }
    c.tick(now);
    exit.tick(now);
    c.take_events()
}

/// The client keeps a session without streams for ten minutes
/// (`session_idle`, for its key's next stream) while the exit forgets a
/// silent one after three (`session_timeout`). A stream opened in between
/// must still work: its OPEN goes with fresh reply blocks (the exit has
/// been silent), so the exit, seeing the session as new, can answer.
#[test]
fn a_session_the_exit_forgot_still_opens_streams() {
    let (mut c, mut exit, _) = pair();
    let cfg = StreamConfig::default();
    assert!(cfg.session_timeout < cfg.session_idle);
    let t0 = Instant::now();
    let ms = |n: u64| Duration::from_millis(n);
    let k1 = c.open(&IsolationKey::NONE, target(), t0).unwrap();
    c.finish(&k1);
    let mut now = t0;
    let mut opened = false;
    for _ in 0..100 {
        now += ms(100);
        opened |= exchange(&mut c, &mut exit, now).contains(&MuxEvent::Opened(k1));
        if let Some(ek) = exit
            .sessions
            .values()
            .flat_map(|s| s.streams.keys().map(|&stream| (s.id, stream)))
            .next()
            .map(|(session, stream)| StreamKey { session, stream })
        {
            exit.finish(&ek);
        }
    }
    assert!(opened);
    assert_eq!((c.streams_open(), exit.streams_open()), (0, 0));
    // Silence past the exit's timeout, short of the client's.
    now += cfg.session_timeout + ms(1);
    exit.tick(now);
    c.tick(now);
    assert!(exit.sessions.is_empty(), "the exit forgot the session");
    let k2 = c.open(&IsolationKey::NONE, target(), now).unwrap();
    assert_eq!(k2.session, k1.session, "the client kept it");
    let (frames, body, blocks) = client_out(&mut c, now);
    assert!(frames.contains(&Frame::Open {
        stream: k2.stream,
        target: target()
    }));
    assert!(blocks > 0, "fresh reply blocks go with the OPEN");
    to_exit(&mut exit, &body, blocks, now);
    let ek = connect_event(&mut exit);
    exit.connected(ek, Ok(()), now);
    let (answer, _) = exit
        .exit_message(REPLY_CAP, 5, now)
        .expect("the exit can answer");
    c.on_message(&answer, Vec::new(), now);
    assert!(c.take_events().contains(&MuxEvent::Opened(k2)));
}

/// A key that is never idle still changes sessions: one opened
/// `session_max_age` ago takes no new streams (as Tor's
/// `MaxCircuitDirtiness`), its open streams carry on, and it closes a
/// short while after its last one.
#[test]
fn a_busy_key_moves_to_a_new_session_after_max_age() {
    let r = Registry::new();
    let m = StreamMetrics::new(&r).unwrap();
    let cfg = StreamConfig {
        max_sessions: 2,
        session_idle: Duration::from_secs(60),
        session_max_age: Duration::from_secs(100),
        open_timeout: Duration::from_secs(10_000),
        idle_timeout: Duration::from_secs(10_000),
        ..StreamConfig::default()
    };
    let mut c = Mux::client(exit_address(), cfg, m.clone(), &mut rand::rng());
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let alice = creds("alice");
    let k1 = c.open(&alice, target(), t0).unwrap();
    c.tick(t0 + s(50));
    let k2 = c.open(&alice, target(), t0 + s(50)).unwrap();
    assert_eq!(k2.session, k1.session);
    c.tick(t0 + s(99));
    assert_eq!(
        c.open(&alice, target(), t0 + s(99)).unwrap().session,
        k1.session,
        "99 s old: still takes streams"
    );
    c.tick(t0 + s(100));
    let k3 = c.open(&alice, target(), t0 + s(100)).unwrap();
    assert_ne!(k3.session, k1.session, "100 s old: a new session");
    assert_eq!(
        c.open(&alice, target(), t0 + s(101)).unwrap().session,
        k3.session
    );
    // The old session's streams are untouched, and it still speaks.
    assert_eq!(c.streams_open(), 5);
    assert_eq!((m.client_sessions.get(), m.sessions_opened.get()), (2, 2));
    let mut speakers = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let out = c.client_message(CAP0, BLOCK, t0 + s(101)).unwrap();
        speakers.insert(out.session);
    }
    assert_eq!(
        speakers,
        [k1.session, k3.session].into_iter().collect(),
        "both sessions send"
    );
    // Its streams end (last seen at the tick of 101 s): it lingers 30 s
    // for late answers, then closes, well before the idle time.
    c.tick(t0 + s(101));
    let old: Vec<StreamKey> = c.sessions[&k1.session]
        .streams
        .keys()
        .map(|&stream| StreamKey {
            session: k1.session,
            stream,
        })
        .collect();
    for k in &old {
        c.abort(k, code::GENERAL_FAILURE, "test");
    }
    c.tick(t0 + s(110));
    c.tick(t0 + s(130));
    assert!(c.has_session(&k1.session), "lingers for late answers");
    c.tick(t0 + s(132));
    assert!(!c.has_session(&k1.session));
    assert_eq!(m.client_sessions.get(), 1);
    assert_eq!(
        c.open(&alice, target(), t0 + s(132)).unwrap().session,
        k3.session
    );
}
