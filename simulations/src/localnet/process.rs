//! The child processes of a localnet, and the guarantee that none outlives it.
//!
//! Every child runs in its own process group, so a Ctrl-C at the terminal
//! reaches only `loopmix-localnet`, which then stops the children itself (in
//! one place, with one grace period) instead of racing their own shutdown
//! against its exit monitor. [`Processes`] stops whatever is still running
//! when it is dropped, so an error half-way through start-up leaves nothing
//! behind either.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Grace period between SIGTERM and SIGKILL when stopping the network.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One started process.
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Supervised {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&self) -> bool {
        self.exited.is_none()
    }

    /// Reaps the child if it exited; returns its status the first time.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            Ok(None) => None,
            Err(_) => None,
        }
    }
}

/// A child that exited although nobody asked it to.
#[derive(Debug)]
pub struct UnexpectedExit {
    pub name: String,
    pub status: ExitStatus,
    pub log: PathBuf,
    pub log_tail: String,
}

impl std::fmt::Display for UnexpectedExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} exited unexpectedly ({}); last lines of {}:\n{}",
            self.name,
            self.status,
            self.log.display(),
            self.log_tail
        )
    }
}

impl std::error::Error for UnexpectedExit {}

/// The last `n` lines of a log file (empty if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every process a localnet started. Dropping it stops them all.
#[derive(Default)]
pub struct Processes {
    children: Vec<Supervised>,
}

impl Processes {
    /// Spawns `cmd` in its own process group with stdin closed and stdout
    /// and stderr appended to `log`.
    pub fn spawn(&mut self, name: &str, cmd: Command, log: &Path) -> anyhow::Result<u32> {
        let child = Self::start(name, cmd, log)?;
        let pid = child.pid();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `name` again with `cmd` (same log, appended) once its last
    /// run has exited.
    pub fn respawn(&mut self, name: &str, cmd: Command) -> anyhow::Result<u32> {
        let Some(c) = self.children.iter_mut().find(|c| c.name == name) else {
            anyhow::bail!("no process named {name}");
        };
        c.poll_exit();
        if c.is_running() {
            anyhow::bail!("{name} is still running");
        }
        *c = Self::start(name, cmd, &c.log.clone())?;
        Ok(c.pid())
    }

    /// SIGKILL to `name` and reap it (so [`check`](Self::check) does not
    /// report it). False if it was not running.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some(c) = self.children.iter_mut().find(|c| c.name == name) else {
            return false;
        };
        if c.poll_exit().is_some() || !c.is_running() {
            return false;
        }
        let _ = c.child.kill();
        if let Ok(status) = c.child.wait() {
            c.exited = Some(status);
        }
        true
    }

    /// SIGTERM to `name`, SIGKILL if it still runs after `grace`; reaps it.
    /// False if it was not running.
    pub fn terminate(&mut self, name: &str, grace: Duration) -> bool {
        let Some(c) = self.children.iter_mut().find(|c| c.name == name) else {
            return false;
        };
        if c.poll_exit().is_some() || !c.is_running() {
            return false;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &c.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while c.is_running() && Instant::now() < deadline {
            if c.poll_exit().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if c.is_running() {
            let _ = c.child.kill();
            if let Ok(status) = c.child.wait() {
                c.exited = Some(status);
            }
        }
        true
    }

    fn start(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Supervised> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain log files, without terminal colour codes.
        cmd.env("NO_COLOR", "1");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Supervised {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            exited: None,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Supervised> {
        self.children.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Supervised> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The first child found to have exited since the last check.
    pub fn check(&mut self) -> Result<(), UnexpectedExit> {
        for c in &mut self.children {
            if let Some(status) = c.poll_exit() {
                return Err(UnexpectedExit {
                    name: c.name.clone(),
                    status,
                    log: c.log.clone(),
                    log_tail: log_tail(&c.log, 20),
                });
            }
        }
        Ok(())
    }

    pub fn running(&mut self) -> usize {
        for c in &mut self.children {
            c.poll_exit();
        }
        self.children.iter().filter(|c| c.is_running()).count()
    }

    /// SIGTERM to every running child, then SIGKILL to those still running
    /// after `grace`; reaps them all. Returns how many needed SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> usize {
        self.signal_running("-TERM");
        let deadline = Instant::now() + grace;
        while self.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_all()
    }

    /// SIGKILL to every running child; reaps them. Returns how many.
    pub fn kill_all(&mut self) -> usize {
        let mut killed = 0;
        for c in &mut self.children {
            if c.poll_exit().is_none() && c.is_running() {
                // std never signals a child it has already reaped.
                let _ = c.child.kill();
                if let Ok(status) = c.child.wait() {
                    c.exited = Some(status);
                }
                killed += 1;
            }
        }
        killed
    }

    /// SIGTERM to every running child (graceful shutdown), without waiting.
    pub fn terminate_all(&mut self) {
        self.signal_running("-TERM");
    }

    /// `kill SIG pid...` for the children not yet reaped: their pids cannot
    /// have been reused, since an unreaped child keeps its pid.
    fn signal_running(&mut self, sig: &str) {
        for c in &mut self.children {
            c.poll_exit();
        }
        let pids: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.is_running())
            .map(|c| c.pid().to_string())
            .collect();
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(sig)
            .args(&pids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
