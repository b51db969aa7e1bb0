//! Real `loopmix-directory` processes on 127.0.0.1 with OS-chosen ports,
//! for the end-to-end tests. Processes are killed (SIGKILL,
//! like a crash) when their handle drops.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, Kind};
use anyhow::{Context, bail};
use loopmix_core::keys::NodeId;
use loopmix_core::pki::TrustAnchors;
use loopmix_localnet::init::init_authorities;
use loopmix_net::directory::{DirectoryClient, DirectoryClientConfig};
use prometheus::Registry;

/// One authority process (or its directory while stopped).
pub struct AuthorityProcess {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub key: NodeId,
    /// `http://ip:port` once started.
    pub url: String,
    child: Option<Child>,
}

impl AuthorityProcess {
    pub fn addr_file(&self) -> PathBuf {
        self.dir
            .join("data")
            .join(loopmix_directory::config::ADDR_FILE)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join(loopmix_directory::config::CONFIG_FILE)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `run` and waits until it has written its bound address.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} already running", self.dir.display());
        }
        let _ = std::fs::remove_file(self.addr_file());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log.txt"))?;
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(self.config())
            .env(
                "RUST_LOG",
                std::env::var("LOOPMIX_TEST_LOG")
                    .unwrap_or_else(|_| "info,loopmix_directory=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = std::fs::read_to_string(self.addr_file())
                && s.ends_with('\n')
            {
                self.url = format!("http://{}", s.trim());
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!(
                    "{} exited early: {status}\n{}",
                    self.dir.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("authority in {} did not start", self.dir.display());
            }
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

impl Drop for AuthorityProcess {
    fn drop(&mut self) {
        self.kill();
        // LOOPMIX_TEST_LOGS=1 shows the logs of passing tests too.
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
pub struct Authorities {
    pub auths: Vec<AuthorityProcess>,
    pub k: usize,
}

impl Authorities {
    /// Inits `n` authorities under `root/auth{i}` (epoch length and
    /// registration lead in humantime, e.g. `"6s"`), lets `edit` change each
    /// `directory.toml` (network parameters), and starts them.
    pub fn launch(
        bin: &Path,
        root: &Path,
        n: usize,
        k: usize,
        epoch_length: &str,
        lead: &str,
        edit: impl Fn(&mut Config),
    ) -> anyhow::Result<Self> {
        let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("auth{i}"))).collect();
        let schedule = [
            "--epoch-length".to_string(),
            epoch_length.into(),
            "--registration-lead".into(),
            lead.into(),
        ];
        let keys = init_authorities(bin, &dirs, k, &schedule)?;
        for d in &dirs {
            let config = d.join(loopmix_directory::config::CONFIG_FILE);
            crate::config::edit(&config, Kind::Directory, &edit)?;
        }
        let mut auths: Vec<AuthorityProcess> = dirs
            .into_iter()
            .zip(&keys)
            .map(|(dir, key)| AuthorityProcess {
                bin: bin.to_path_buf(),
                dir,
                key: *key,
                url: String::new(),
                child: None,
            })
            .collect();
        for a in &mut auths {
            a.start()?;
        }
        Ok(Self { auths, k })
    }

    pub fn trust(&self) -> anyhow::Result<TrustAnchors> {
        Ok(TrustAnchors::new(self.auths.iter().map(|a| a.key), self.k)?)
    }

    pub fn urls(&self) -> Vec<String> {
        self.auths.iter().map(|a| a.url.clone()).collect()
    }

    /// A verifying client pinning these authorities.
    pub fn client(&self, registry: &Registry) -> anyhow::Result<DirectoryClient> {
        let mut cfg = DirectoryClientConfig::new(self.urls(), self.trust()?);
        cfg.request_timeout = Duration::from_secs(10);
        Ok(DirectoryClient::new(cfg, registry)?)
    }

    /// `--authority KEY=URL ... --threshold k`, for `loopmix-node init`.
    pub fn node_init_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for a in &self.auths {
            args.push("--authority".into());
            args.push(format!("{}={}", a.key, a.url));
        }
        args.push("--threshold".into());
        args.push(self.k.to_string());
        args
    }
}
