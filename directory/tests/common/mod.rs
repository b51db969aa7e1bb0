//! Harness for end-to-end tests: real `loopmix-directory` processes on
//! 127.0.0.1 with OS-chosen ports, killed when the guard drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopmix_core::keys::{IdentityKeypair, NodeId, SphinxKeypair};
use loopmix_core::pki::{
    Descriptor, DirectoryClient, DirectoryClientConfig, SignedDescriptor, TrustAnchors, unix_now,
};
use loopmix_core::topology::Role;
use prometheus::Registry;

pub const BIN: &str = env!("CARGO_BIN_EXE_loopmix-directory");

/// One authority process (or its directory while stopped).
pub struct Authority {
    pub dir: PathBuf,
    pub key: NodeId,
    pub url: String,
    child: Option<Child>,
}

impl Authority {
    pub fn addr_file(&self) -> PathBuf {
        self.dir.join("data").join("http.addr")
    }

    /// Starts `run` and waits until it has written its bound address.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.addr_file());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log.txt"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.dir.join("directory.toml"))
            .env("RUST_LOG", "info,loopmix_directory=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = std::fs::read_to_string(self.addr_file())
                && s.ends_with('\n')
            {
                self.url = format!("http://{}", s.trim());
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "{} exited early: {status}\n{}",
                    self.dir.display(),
                    self.log_tail()
                );
            }
            assert!(Instant::now() < deadline, "authority did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no graceful shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("log.txt")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.kill();
        // LOOPMIX_TEST_LOGS=1 shows the authorities' logs of passing tests too.
        if std::thread::panicking() || std::env::var_os("LOOPMIX_TEST_LOGS").is_some() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.dir.display(),
                self.log_tail()
            );
        }
    }
}

/// `n` authorities with threshold `k`, each knowing the others.
pub struct Net {
    pub auths: Vec<Authority>,
    pub k: usize,
    // Dropped after `auths` (field order), so processes die first.
    _tmp: tempfile::TempDir,
}

pub fn init(dir: &Path, extra: &[String]) -> NodeId {
    let out = Command::new(BIN)
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Net {
    pub fn start(n: usize, k: usize, epoch_length: &str, lead: &str) -> Net {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| tmp.path().join(format!("auth{i}")))
            .collect();
        let keys: Vec<NodeId> = dirs.iter().map(|d| init(d, &[])).collect();
        for (i, d) in dirs.iter().enumerate() {
            let mut args: Vec<String> = vec![
                "--force".into(),
                "--threshold".into(),
                k.to_string(),
                "--epoch-length".into(),
                epoch_length.into(),
                "--registration-lead".into(),
                lead.into(),
            ];
            for (j, other) in dirs.iter().enumerate() {
                if j != i {
                    args.push("--peer".into());
                    args.push(format!(
                        "{}=file:{}",
                        keys[j],
                        other.join("data").join("http.addr").display()
                    ));
                }
            }
            assert_eq!(init(d, &args), keys[i], "init --force must keep the key");
        }
        let mut auths: Vec<Authority> = dirs
            .into_iter()
            .zip(&keys)
            .map(|(dir, key)| Authority {
                dir,
                key: *key,
                url: String::new(),
                child: None,
            })
            .collect();
        for a in &mut auths {
            a.start();
        }
        Net {
            auths,
            k,
            _tmp: tmp,
        }
    }

    pub fn trust(&self) -> TrustAnchors {
        TrustAnchors::new(self.auths.iter().map(|a| a.key), self.k).unwrap()
    }

    pub fn urls(&self) -> Vec<String> {
        self.auths.iter().map(|a| a.url.clone()).collect()
    }

    pub fn client(&self, registry: &Registry) -> DirectoryClient {
        let mut cfg = DirectoryClientConfig::new(self.urls(), self.trust());
        cfg.request_timeout = Duration::from_secs(10);
        DirectoryClient::new(cfg, registry).unwrap()
    }
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
        let target = *info.open_epochs.last().unwrap();
        let closes = info.epoch_start + (target - info.epoch) * info.epoch_length_s
            - info.registration_lead_s;
        let left = closes.saturating_sub(info.now);
        if left >= margin_s {
            return target;
        }
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}
