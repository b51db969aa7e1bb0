//! End-to-end with the directory: three real authority processes (k = 2),
//! six real mix processes that register, follow the signed topology and
//! rotate their Sphinx keys per epoch, and a test peer playing the provider
//! at both ends of a steady packet stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use loopmix_core::pki::{SignedTopology, VerifiedTopology, b64_decode, b64_encode};
use loopmix_core::sphinx::{build_packet, destination_of, sample_delays};
use loopmix_core::topology::Role;
use loopmix_net::directory::DirectoryClient;
use loopmix_tests::authorities::Authorities;
use loopmix_tests::http::parse_metric;
use loopmix_tests::node::{NodeDir, NodeProcess, Peer, edit_config, init_directory_node};
use loopmix_tests::workspace_bin;
use prometheus::Registry;
use rand::RngExt;

fn node_bin() -> PathBuf {
    loopmix_tests::workspace_bin("loopmix-node").unwrap()
}

/// An HTTP front for one authority that corrupts the first `corrupt`
/// topology documents it relays (one flipped byte, or signatures cut to one,
/// below k = 2) and relays everything else intact.
async fn tampering_proxy(upstream: String, corrupt: u64) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let tampered = Arc::new(AtomicU64::new(0));
    let count = tampered.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let (http, upstream, count) = (http.clone(), upstream.clone(), count.clone());
        async move {
            if method != Method::GET {
                // Registrations pass through untouched.
                let Ok(resp) = http
                    .post(format!("{upstream}{}", uri.path()))
                    .header("content-type", "application/json")
                    .body(body.to_vec())
                    .send()
                    .await
                else {
                    return StatusCode::BAD_GATEWAY.into_response();
                };
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let body = resp.bytes().await.unwrap_or_default().to_vec();
                return (status, body).into_response();
            }
            let Ok(resp) = http.get(format!("{upstream}{}", uri.path())).send().await else {
                return StatusCode::BAD_GATEWAY.into_response();
            };
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let body = resp.bytes().await.unwrap_or_default().to_vec();
            if status != StatusCode::OK || !uri.path().starts_with("/v1/topology/") {
                return (status, body).into_response();
            }
            let n = count.fetch_add(1, Ordering::Relaxed);
            if n >= corrupt {
                return (status, body).into_response();
            }
            let mut doc: SignedTopology = serde_json::from_slice(&body).unwrap();
            if n % 2 == 0 {
                let mut bytes = b64_decode(&doc.document).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                doc.document = b64_encode(&bytes);
            } else {
                doc.signatures.truncate(1);
            }
            (status, serde_json::to_vec(&doc).unwrap()).into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), tampered)
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_until<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the test peer registered for every open epoch and its view of the
/// topology current (the way a provider would), every 250 ms.
fn follow_directory(client: Arc<DirectoryClient>, peer: Arc<Peer>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut registered = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(info) = client.epoch_info().await {
                for e in info.open_epochs {
                    if !registered.contains(&e) {
                        let out = client.register(&peer.descriptor(e).unwrap()).await;
                        if out.iter().any(|o| o.result.is_ok()) {
                            registered.insert(e);
                        }
                    }
                }
            }
            client.refresh().await;
            for v in client.upcoming().into_iter().chain(client.current()) {
                peer.adopt_verified(&v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// Sends a packet every 40 ms through one mix per layer to the peer, built
/// for whatever document the client holds as current at that moment.
fn send_steadily(
    client: Arc<DirectoryClient>,
    peer: Arc<Peer>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<[u8; 16], u64>> {
    tokio::spawn(async move {
        let mut sent = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let Some(doc) = client.current() else {
                continue;
            };
            let t = doc.topology();
            let Some(me) = t.get(&peer.id()) else {
                continue;
            };
            let (id, pkt, first) = {
                let mut rng = rand::rng();
                let id: [u8; 16] = rng.random();
                let mut route = t.random_mix_path(&mut rng);
                route.push(me);
                let mean = Duration::from_secs_f64(t.params().mean_hop_delay_ms / 1000.0);
                let delays = sample_delays(&mut rng, route.len(), mean);
                let dest = destination_of(&peer.id(), id);
                let pkt =
                    build_packet(&id, &route, &dest, &delays, t.params().payload_size).unwrap();
                (id, pkt, route[0].clone())
            };
            if peer.send(&first, doc.epoch(), pkt).is_ok() {
                sent.insert(id, doc.epoch());
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixes_follow_the_directory_rotate_keys_and_survive_an_authority_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir_bin = workspace_bin("loopmix-directory").unwrap();
    let mut auths =
        Authorities::launch(&dir_bin, &tmp.path().join("auth"), 3, 2, "8s", "3s", |c| {
            // Short hops keep packets inside one 8 s key epoch.
            c.set("network.mean_hop_delay_ms", 50.0);
        })
        .unwrap();
    // Mix 0 fetches documents only through proxies, each of which corrupts
    // the first two it relays: its first fetches must be refused.
    let mut proxies = Vec::new();
    let mut tampered = Vec::new();
    for a in &auths.auths {
        let (url, count) = tampering_proxy(a.url.clone(), 2).await;
        proxies.push(url);
        tampered.push(count);
    }

    // Six mixes; mix 0 reaches the authorities' documents only via proxies.
    let mut dirs: Vec<NodeDir> = Vec::new();
    for i in 0..6 {
        let mut args = auths.node_init_args();
        if i == 0 {
            for (j, a) in auths.auths.iter().enumerate() {
                args[2 * j + 1] = format!("{}={}", a.key, proxies[j]);
            }
        }
        let nd = init_directory_node(
            &node_bin(),
            &tmp.path().join(format!("mix{i}")),
            Role::Mix,
            &args,
        )
        .unwrap();
        edit_config(&nd, |c| {
            c.set("directory.key_overlap", "3s");
        })
        .unwrap();
        dirs.push(nd);
    }
    let mixes: Vec<NodeProcess> = dirs
        .iter()
        .map(|d| NodeProcess::start(&node_bin(), d).unwrap())
        .collect();

    // A seventh mix whose authorities are unreachable: it runs, waits, and
    // says so in its metrics.
    let mut args = auths.node_init_args();
    for (i, a) in auths.auths.iter().enumerate() {
        args[2 * i + 1] = format!("{}=http://127.0.0.1:9", a.key);
    }
    let lonely_dir =
        init_directory_node(&node_bin(), &tmp.path().join("lonely"), Role::Mix, &args).unwrap();
    let lonely = NodeProcess::start(&node_bin(), &lonely_dir).unwrap();

    let registry = Registry::new();
    let client = Arc::new(auths.client(&registry).unwrap());
    let peer = Arc::new(Peer::bind(0, true).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    follow_directory(client.clone(), peer.clone(), stop.clone());

    // A document listing all six mixes and the peer comes into force.
    let first: Arc<VerifiedTopology> =
        wait_until(90, "a document listing every node", async || {
            client.current().filter(|c| c.topology().nodes().len() == 7)
        })
        .await;
    let e0 = first.epoch();
    let layers: BTreeSet<Option<u8>> = first.topology().nodes().iter().map(|n| n.layer).collect();
    assert_eq!(
        layers.len(),
        4,
        "three mix layers plus providers: {layers:?}"
    );

    // Every authority serves the same bytes for it.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut served = BTreeSet::new();
    for url in auths.urls() {
        let body = http
            .get(format!("{url}/v1/topology/{e0}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let d: SignedTopology = serde_json::from_slice(&body).unwrap();
        served.insert(d.document);
    }
    assert_eq!(served.len(), 1, "authorities disagree on epoch {e0}");

    // Every mix runs it and knows it is listed.
    for m in &mixes {
        m.wait_metric("loopmix_topology_epoch", Duration::from_secs(30), |v| {
            v >= e0 as f64
        })
        .unwrap();
        m.wait_metric("loopmix_node_listed", Duration::from_secs(30), |v| v == 1.0)
            .unwrap();
    }

    // Packets flow across two epoch boundaries.
    let sender = send_steadily(client.clone(), peer.clone(), stop.clone());
    let mut docs: BTreeMap<u64, Arc<VerifiedTopology>> = BTreeMap::new();
    wait_until(60, "two epoch boundaries", async || {
        if let Some(c) = client.current() {
            docs.insert(c.epoch(), c);
        }
        (docs.keys().max() >= Some(&(e0 + 2))).then_some(())
    })
    .await;
    // Keys rotate: each mix publishes a fresh Sphinx key every epoch.
    let (a, b) = (&docs[&(e0 + 1)], &docs[&(e0 + 2)]);
    for d in &dirs {
        let ka = a.topology().get(&d.id).unwrap().sphinx_key;
        let kb = b.topology().get(&d.id).unwrap().sphinx_key;
        assert_ne!(ka, kb, "mix {} kept its Sphinx key across epochs", d.id);
    }

    // One authority down: a later epoch is still published (2 of 3 sign)
    // and every mix adopts it.
    auths.auths[2].kill();
    let down_at = client.current().unwrap().epoch();
    for m in &mixes {
        m.wait_metric("loopmix_topology_epoch", Duration::from_secs(60), |v| {
            v >= (down_at + 2) as f64
        })
        .unwrap();
    }
    let late = client.current().unwrap();
    assert!(late.signers().len() >= 2 && !late.signers().contains(&auths.auths[2].key));

    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    let epochs: BTreeSet<u64> = sent.values().copied().collect();
    assert!(epochs.len() >= 3, "packets of only {epochs:?}");
    let got = peer
        .wait_deliveries(sent.len(), Duration::from_secs(30))
        .await;
    let delivered: BTreeSet<[u8; 16]> = got.iter().map(|d| d.identifier).collect();
    let lost: Vec<u64> = sent
        .iter()
        .filter(|(id, _)| !delivered.contains(*id))
        .map(|(_, e)| *e)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} packets lost (their epochs: {lost:?})",
        lost.len(),
        sent.len()
    );

    eprintln!(
        "{} packets over key epochs {epochs:?}, all delivered; first epoch with every node: {e0}",
        sent.len()
    );

    for (m, d) in mixes.iter().zip(&dirs) {
        let text = m.metrics_text().unwrap();
        for reason in ["unknown_key", "replay", "malformed"] {
            let series = format!("loopmix_packets_dropped_total{{reason=\"{reason}\"}}");
            assert_eq!(
                parse_metric(&text, &series),
                Some(0.0),
                "{series}\n{}",
                m.log()
            );
        }
        // Old keys and their replay filters are gone; at most the previous
        // (overlap), current and registered upcoming ones remain.
        let keys = parse_metric(&text, "loopmix_node_sphinx_keys").unwrap();
        assert!((1.0..=4.0).contains(&keys), "{keys} keys held");
        assert!(!d.dir.join(format!("data/sphinx/epoch-{e0}.pem")).exists());
    }

    lonely
        .wait_metric(
            "loopmix_node_registration_failures_total",
            Duration::from_secs(10),
            |v| v >= 1.0,
        )
        .unwrap();
    assert_eq!(lonely.metric("loopmix_node_registered_epoch").unwrap(), 0.0);

    // The mix behind the tampering proxy refused what it relayed and still
    // follows the network.
    let relayed: u64 = tampered.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert!(relayed > 0, "proxies never asked");
    let text = mixes[0].metrics_text().unwrap();
    let rejected = metric_sum(&text, "loopmix_directory_documents_rejected_total{");
    assert!(rejected > 0.0, "tampered documents not counted:\n{text}");
    assert_eq!(parse_metric(&text, "loopmix_node_listed"), Some(1.0));
}
