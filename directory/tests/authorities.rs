//! End-to-end: real authority processes, real HTTP, real signatures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::*;
use loopmix_core::keys::IdentityKeypair;
use loopmix_core::pki::api::{DescriptorList, EpochInfo};
use loopmix_core::pki::{
    SignedDescriptor, SignedTopology, VerifyError, b64_decode, b64_encode, unix_now,
};
use loopmix_core::topology::Role;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Registers 6 mixes + 1 provider for `epoch`. The mixes go to every
/// authority through the client; the provider only to the first authority,
/// so the others must pick it up by merging registrations.
async fn register_all(
    net: &Net,
    client: &loopmix_core::pki::DirectoryClient,
    nodes: &[IdentityKeypair],
    epoch: u64,
    live: usize,
) {
    for (i, k) in nodes.iter().enumerate().take(6) {
        let sd = descriptor(k, epoch, 41_000 + i as u16, Role::Mix);
        let out = client.register(&sd).await;
        let ok = out.iter().filter(|o| o.result.is_ok()).count();
        assert_eq!(ok, live, "{out:?}");
    }
    let sd = descriptor(&nodes[6], epoch, 42_000, Role::Provider);
    let url = format!("{}/v1/descriptors", net.auths[0].url);
    let (status, body) = post(&http(), &url, serde_json::to_vec(&sd).unwrap()).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_authorities_publish_one_document_and_survive_one_down() {
    let (mut net, _tmp) = start_net(3, 2, "6s", "3s");
    let registry = Registry::new();
    let client = std::sync::Arc::new(net.client(&registry).unwrap());
    let nodes: Vec<IdentityKeypair> = (0..7).map(|_| IdentityKeypair::generate()).collect();

    let target = open_epoch(&client, 5).await;
    register_all(&net, &client, &nodes, target, 3).await;

    // All three publish the same bytes, each with >= k valid signatures.
    let http = http();
    let urls = net.urls();
    let docs: Vec<SignedTopology> = wait_for(60, "all three to publish", || {
        let http = http.clone();
        let urls = urls.clone();
        async move {
            let mut docs = Vec::new();
            for u in &urls {
                let (s, b) = get(&http, &format!("{u}/v1/topology/{target}")).await;
                if s != 200 {
                    return None;
                }
                docs.push(serde_json::from_slice::<SignedTopology>(&b).unwrap());
            }
            Some(docs)
        }
    })
    .await;
    let trust = net.trust().unwrap();
    for d in &docs {
        assert_eq!(d.document, docs[0].document, "byte-identical documents");
        let v = trust.verify_upcoming(d, unix_now(), 60).unwrap();
        assert!(v.signers().len() >= 2);
    }

    // The client fetches and verifies it; layers are balanced.
    let v = client.fetch_epoch(target).await.unwrap();
    assert_eq!(v.epoch(), target);
    let t = v.topology();
    assert_eq!(t.nodes().len(), 7);
    for layer in 1..=3 {
        assert_eq!(t.layer(layer).count(), 2, "layer {layer}");
    }
    assert_eq!(t.providers().count(), 1, "merged from the first authority");

    // The refresh loop brings it into force when its epoch starts.
    let cancel = CancellationToken::new();
    let runner = tokio::spawn({
        let c = client.clone();
        let cancel = cancel.clone();
        async move { c.run(cancel).await }
    });
    wait_for(60, "the client to adopt the first epoch", || {
        let c = client.clone();
        async move { c.current().filter(|v| v.epoch() >= target).map(|_| ()) }
    })
    .await;

    // One authority down: the network keeps publishing.
    net.auths[2].kill();
    let down = net.auths[2].key;
    let target2 = open_epoch(&client, 5).await;
    assert!(target2 > target);
    register_all(&net, &client, &nodes, target2, 2).await;
    let v2 = wait_for(90, "a new epoch with one authority down", || {
        let c = client.clone();
        async move { c.current().filter(|v| v.epoch() >= target2) }
    })
    .await;
    assert_eq!(v2.epoch(), target2);
    assert_eq!(v2.topology().nodes().len(), 7);
    let signers: BTreeSet<_> = v2.signers().iter().copied().collect();
    assert_eq!(signers.len(), 2);
    assert!(!signers.contains(&down));
    cancel.cancel();
    runner.await.unwrap();

    // Tampering is refused and the last valid document stays.
    let (s, b) = get(
        &http,
        &format!("{}/v1/topology/{target2}", net.auths[0].url),
    )
    .await;
    assert_eq!(s, 200);
    let genuine: SignedTopology = serde_json::from_slice(&b).unwrap();
    assert!(trust.verify(&genuine, unix_now()).is_ok());

    let mut bytes = b64_decode(&genuine.document).unwrap();
    let i = bytes.len() / 3;
    bytes[i] = bytes[i].wrapping_add(1);
    let mut tampered = genuine.clone();
    tampered.document = b64_encode(&bytes);
    assert!(matches!(
        trust.verify(&tampered, unix_now()),
        Err(VerifyError::BadSignature { .. })
    ));
    assert!(client.offer(&tampered).is_err());

    let mut stripped = genuine.clone();
    stripped.signatures.truncate(1);
    assert!(matches!(
        trust.verify(&stripped, unix_now()),
        Err(VerifyError::BelowThreshold {
            valid: 1,
            threshold: 2
        })
    ));
    assert!(client.offer(&stripped).is_err());
    assert_eq!(client.current().unwrap().epoch(), target2);
    assert_eq!(client.current().unwrap().bytes(), v2.bytes());

    let text = loopmix_core::metrics::render(&registry);
    assert!(text.contains("reason=\"bad_signature\""), "{text}");
    assert!(text.contains("reason=\"below_threshold\""), "{text}");
    assert!(
        text.contains("loopmix_directory_registrations_total{result=\"unreachable\"} 6"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart() {
    let (mut net, _tmp) = start_net(1, 1, "12s", "3s");
    let registry = Registry::new();
    let client = net.client(&registry).unwrap();
    let nodes: Vec<IdentityKeypair> = (0..7).map(|_| IdentityKeypair::generate()).collect();
    let target = open_epoch(&client, 8).await;
    let signed: Vec<SignedDescriptor> = nodes
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let role = if i < 6 { Role::Mix } else { Role::Provider };
            descriptor(k, target, 43_000 + i as u16, role)
        })
        .collect();
    for sd in &signed {
        let out = client.register(sd).await;
        assert!(out[0].result.is_ok(), "{out:?}");
    }
    let http = http();
    let list_url = |net: &Net| format!("{}/v1/descriptors/{target}", net.auths[0].url);
    let (_, before) = get(&http, &list_url(&net)).await;
    let before: DescriptorList = serde_json::from_slice(&before).unwrap();
    assert_eq!(before.descriptors.len(), 7);

    // Crash (SIGKILL) and restart on a new port.
    net.auths[0].kill();
    net.auths[0].start().unwrap();
    let (_, after) = get(&http, &list_url(&net)).await;
    let after: DescriptorList = serde_json::from_slice(&after).unwrap();
    assert_eq!(after, before);
    // The authority still knows them: re-sending one is "unchanged".
    let url = format!("{}/v1/descriptors", net.auths[0].url);
    let (status, body) = post(&http, &url, serde_json::to_vec(&signed[0]).unwrap()).await;
    assert!(
        (status == 200 && body["status"] == "unchanged") || body["error"] == "epoch_not_open",
        "{status} {body}"
    );

    // And the document for that epoch lists all seven.
    let client = net.client(&Registry::new()).unwrap();
    let v = wait_for(60, "the document after restart", || {
        let c = &client;
        async move { c.fetch_epoch(target).await.ok() }
    })
    .await;
    assert_eq!(v.topology().nodes().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_specific_answers() {
    let (net, _tmp) = start_net(1, 1, "60s", "5s");
    let http = http();
    let base = net.auths[0].url.clone();
    let url = format!("{base}/v1/descriptors");
    let (_, b) = get(&http, &format!("{base}/v1/epoch")).await;
    let info: EpochInfo = serde_json::from_slice(&b).unwrap();
    let epoch = *info.open_epochs.last().unwrap();

    // Malformed JSON.
    let (s, b) = post(&http, &url, b"{not json".to_vec()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("malformed_json")),
        "{b}"
    );

    // Signature over different bytes.
    let k = IdentityKeypair::generate();
    let good = descriptor(&k, epoch, 44_000, Role::Mix);
    let other = descriptor(&k, epoch, 44_001, Role::Mix);
    let forged = SignedDescriptor {
        signature: other.signature.clone(),
        ..good.clone()
    };
    let (s, b) = post(&http, &url, serde_json::to_vec(&forged).unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("bad_signature")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains(&k.node_id().to_string())
    );

    // Accepted, then idempotent.
    let (s, b) = post(&http, &url, serde_json::to_vec(&good).unwrap()).await;
    assert_eq!((s, b["status"].as_str()), (201, Some("created")), "{b}");
    let (s, b) = post(&http, &url, serde_json::to_vec(&good).unwrap()).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("unchanged")), "{b}");

    // Same address, different identity.
    let k2 = IdentityKeypair::generate();
    let dup = descriptor(&k2, epoch, 44_000, Role::Mix);
    let (s, b) = post(&http, &url, serde_json::to_vec(&dup).unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("duplicate_address")),
        "{b}"
    );

    // Unknown role, correctly signed.
    let mut v: serde_json::Value = serde_json::from_slice(
        &b64_decode(&descriptor(&k2, epoch, 44_002, Role::Mix).descriptor).unwrap(),
    )
    .unwrap();
    v["role"] = serde_json::json!("dragon");
    let sd = SignedDescriptor::sign_bytes(&serde_json::to_vec(&v).unwrap(), &k2);
    let (s, b) = post(&http, &url, serde_json::to_vec(&sd).unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("malformed")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("dragon"), "{b}");

    // Unusable address.
    v["role"] = serde_json::json!("mix");
    v["address"] = serde_json::json!("0.0.0.0:44003");
    let sd = SignedDescriptor::sign_bytes(&serde_json::to_vec(&v).unwrap(), &k2);
    let (s, b) = post(&http, &url, serde_json::to_vec(&sd).unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("address"), "{b}");

    // An epoch that is not open (the current one).
    let sd = descriptor(&k2, info.epoch, 44_004, Role::Mix);
    let (s, b) = post(&http, &url, serde_json::to_vec(&sd).unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("epoch_not_open")),
        "{b}"
    );

    // Oversized body (own client: the server answers 413 without reading
    // the body and closes the connection, which must not be reused).
    let (s, _) = post(&common::http(), &url, vec![b' '; 64 * 1024]).await;
    assert_eq!(s, 413);

    // GETs.
    assert_eq!(get(&http, &format!("{base}/v1/topology/abc")).await.0, 400);
    assert_eq!(
        get(&http, &format!("{base}/v1/topology/12345")).await.0,
        404
    );
    assert_eq!(
        get(&http, &format!("{base}/v1/signature/12345")).await.0,
        404
    );
    assert_eq!(get(&http, &format!("{base}/nope")).await.0, 404);

    // A flood is cut off with 429, and the authority keeps serving.
    let mut limited = 0;
    for _ in 0..80 {
        let (s, _) = post(&http, &url, b"{}".to_vec()).await;
        if s == 429 {
            limited += 1;
        } else {
            assert_eq!(s, 400);
        }
    }
    assert!(limited >= 30, "only {limited} of 80 rate limited");
    assert_eq!(get(&http, &format!("{base}/v1/epoch")).await.0, 200);
    let (s, m) = get(&http, &format!("{base}/metrics")).await;
    assert_eq!(s, 200);
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("loopmix_authority_registrations_total{result=\"rate_limited\"}"),
        "{m}"
    );
    assert!(m.contains("result=\"duplicate_address\"} 1"), "{m}");

    // Nothing bad was stored.
    let (_, b) = get(&http, &format!("{base}/v1/descriptors/{epoch}")).await;
    let list: DescriptorList = serde_json::from_slice(&b).unwrap();
    assert_eq!(list.descriptors, vec![good]);
}
