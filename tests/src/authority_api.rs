//! Harness for end-to-end tests: real `loopmix-directory` processes on
//! 127.0.0.1 with OS-chosen ports, killed when the guard drops.

use std::time::{Duration, Instant};

use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
use loopmix_core::pki::{Descriptor, SignedDescriptor};
use loopmix_core::topology::Role;
use loopmix_net::clock::unix_now;
use loopmix_net::directory::DirectoryClient;

pub fn bin() -> std::path::PathBuf {
    crate::workspace_bin("loopmix-directory").unwrap()
}

pub use crate::authorities::Authorities as Net;

/// `n` authorities with threshold `k` under a fresh temporary directory
/// (kept alive by the returned guard, dropped after the processes).
pub fn start_net(n: usize, k: usize, epoch_length: &str, lead: &str) -> (Net, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    // These tests use epochs of seconds, where one epoch ahead leaves only
    // `length - lead` to register: give them the second epoch back.
    let net = Net::launch(bin().as_ref(), tmp.path(), n, k, epoch_length, lead, |c| {
        c.set("epoch.register_ahead", 2);
    })
    .unwrap();
    (net, tmp)
}

/// A node's signed descriptor with a fresh Sphinx key.
pub fn descriptor(key: &IdentityKeypair, epoch: u64, port: u16, role: Role) -> SignedDescriptor {
    Descriptor {
        identity: key.node_id(),
        sphinx_key: SphinxKeypair::generate().public(),
        epoch,
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        role,
        software: "loopmix-test/0.1.0".into(),
        published_at: unix_now(),
    }
    .sign(key)
    .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

pub async fn get(http: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = match http.get(url).send().await {
        Ok(r) => r,
        Err(e) => panic!("GET {url}: {e:?}"),
    };
    let s = r.status().as_u16();
    (s, r.bytes().await.unwrap().to_vec())
}

pub async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let b = r.bytes().await.unwrap();
    (
        s,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `f` every 200 ms until it returns `Some`, or panics after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The furthest epoch open for registration, chosen so that at least
/// `margin_s` seconds remain before its registration closes (waits for the
/// next epoch otherwise): keeps tests robust on a loaded machine.
pub async fn open_epoch(client: &DirectoryClient, margin_s: u64) -> u64 {
    loop {
        let info = client.epoch_info().await.unwrap();
        // With register_ahead = 1 nothing is open during the last
        // registration_lead of an epoch: wait for the next one to open.
        let Some(&target) = info.open_epochs.last() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let closes = info.epoch_start + (target - info.epoch) * info.epoch_length_s
            - info.registration_lead_s;
        let left = closes.saturating_sub(info.now);
        if left >= margin_s {
            return target;
        }
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}
