//! The child processes of a localnet, and the guarantee that none outlives it.
//!
//! Every child runs in its own process group, so a Ctrl-C at the terminal
//! reaches only `loopmix-localnet`, which then stops the children itself (in
//! one place, with one grace period) instead of racing their own shutdown
//! against its exit monitor. [`Processes`] stops whatever is still running
//! when it is dropped, so an error half-way through start-up leaves nothing
//! behind either.
//!
//! A child that dies on its own is reported once by
//! [`Processes::check`] and stays in the list as exited; it can be started
//! again ([`Processes::respawn`]). Children can also be paused
//! ([`Processes::pause`], SIGSTOP: a hung process that keeps its sockets
//! open) and resumed. Stopping the network resumes paused children before
//! SIGTERM, since a stopped process would only act on SIGTERM once
//! continued.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Grace period between SIGTERM and SIGKILL when stopping the network.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a child is doing, as far as its parent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// SIGSTOPped by us (see [`Processes::pause`]).
    Stopped,
    /// Being started again (set by the caller while it waits).
    Restarting,
    Exited(ExitStatus),
}

impl State {
    /// One word: `running`, `stopped`, `restarting`, `exited`.
    pub fn word(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Restarting => "restarting",
            State::Exited(_) => "exited",
        }
    }

    /// How it exited, e.g. `code 1` or `signal 9, SIGKILL`.
    pub fn exit(&self) -> Option<String> {
        match self {
            State::Exited(s) => Some(describe_exit(*s)),
            _ => None,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exit() {
            Some(e) => write!(f, "exited ({e})"),
            None => f.write_str(self.word()),
        }
    }
}

/// `code N` or `signal N, SIGNAME`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("code {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                1 => ", SIGHUP",
                2 => ", SIGINT",
                3 => ", SIGQUIT",
                4 => ", SIGILL",
                6 => ", SIGABRT",
                7 => ", SIGBUS",
                8 => ", SIGFPE",
                9 => ", SIGKILL",
                11 => ", SIGSEGV",
                13 => ", SIGPIPE",
                15 => ", SIGTERM",
                _ => "",
            };
            format!("signal {sig}{name}")
        }
        None => status.to_string(),
    }
}

/// One started process.
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
    /// SIGSTOPped by [`Processes::pause`] and not continued since.
    paused: bool,
    restarting: bool,
    /// Its exit was reported by [`Processes::check`] or asked for (a
    /// kill or terminate by the caller): not to be reported again.
    reported: bool,
    /// How many times it was started again.
    pub restarts: u32,
    /// The program and arguments it was started with (restarts reuse them).
    program: OsString,
    args: Vec<OsString>,
}

impl Supervised {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&self) -> bool {
        self.exited.is_none()
    }

    pub fn state(&self) -> State {
        match self.exited {
            Some(s) => State::Exited(s),
            None if self.restarting => State::Restarting,
            None if self.paused => State::Stopped,
            None => State::Running,
        }
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Sends `sig` unless the child has been reaped (then its pid may
    /// belong to another process by now).
    fn signal(&mut self, sig: rustix::process::Signal) -> anyhow::Result<()> {
        self.poll_exit();
        if !self.is_running() {
            anyhow::bail!("{} is not running ({})", self.name, self.state());
        }
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| anyhow::anyhow!("{}: bad pid {}", self.name, self.pid()))?;
        rustix::process::kill_process(pid, sig)
            .with_context(|| format!("signalling {} (pid {})", self.name, self.pid()))?;
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill_and_reap(&mut self) {
        // std never signals a child it has already reaped.
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exited = Some(status);
        }
        self.paused = false;
        self.reported = true;
    }

    /// Reaps the child if it exited; returns its status the first time.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                self.paused = false;
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
        let restarts = c.restarts + 1;
        *c = Self::start(name, cmd, &c.log.clone())?;
        c.restarts = restarts;
        Ok(c.pid())
    }

    /// If `name` has exited: its status, and its exit counts as reported
    /// (the caller deals with it; [`check`](Self::check) will not).
    pub fn exited_now(&mut self, name: &str) -> Option<ExitStatus> {
        let c = self.children.iter_mut().find(|c| c.name == name)?;
        c.poll_exit();
        let status = c.exited?;
        c.reported = true;
        Some(status)
    }

    /// Marks `name` as being restarted (or not any more), for
    /// [`Supervised::state`].
    pub fn set_restarting(&mut self, name: &str, on: bool) {
        if let Some(c) = self.children.iter_mut().find(|c| c.name == name) {
            c.restarting = on;
        }
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
        c.kill_and_reap();
        true
    }

    /// SIGSTOP to `name`: it keeps its sockets open but does nothing (a
    /// hung process). Err if it is not running.
    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        let c = self.find(name)?;
        c.signal(rustix::process::Signal::STOP)?;
        c.paused = true;
        Ok(())
    }

    /// SIGCONT to `name`. Err if it is not running.
    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        let c = self.find(name)?;
        c.signal(rustix::process::Signal::CONT)?;
        c.paused = false;
        Ok(())
    }

    fn find(&mut self, name: &str) -> anyhow::Result<&mut Supervised> {
        self.children
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow::anyhow!("no process named {name}"))
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
        // A stopped process acts on SIGTERM only once continued.
        let _ = c.signal(rustix::process::Signal::TERM);
        let _ = c.signal(rustix::process::Signal::CONT);
        c.paused = false;
        let deadline = Instant::now() + grace;
        while c.is_running() && Instant::now() < deadline {
            if c.poll_exit().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if c.is_running() {
            c.kill_and_reap();
        }
        c.reported = true;
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
        let program = cmd.get_program().to_os_string();
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
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
            paused: false,
            restarting: false,
            reported: false,
            restarts: 0,
            program,
            args,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Supervised> {
        self.children.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Supervised> {
        self.children.iter().find(|c| c.name == name)
    }

    /// A command that runs `name` the way it was last started, with
    /// `args` in place of its arguments if given.
    pub fn same_command(&self, name: &str, args: Option<Vec<OsString>>) -> Option<Command> {
        let c = self.get(name)?;
        let mut cmd = Command::new(&c.program);
        cmd.args(args.unwrap_or_else(|| c.args.clone()));
        Some(cmd)
    }

    /// The first child found to have exited, on its own, since the last
    /// check (each exit is reported once).
    pub fn check(&mut self) -> Result<(), UnexpectedExit> {
        for c in &mut self.children {
            c.poll_exit();
            if let Some(status) = c.exited
                && !c.reported
            {
                c.reported = true;
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
        self.terminate_all();
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
                c.kill_and_reap();
                killed += 1;
            }
        }
        killed
    }

    /// SIGTERM to every running child (graceful shutdown), without waiting.
    /// Stopped children are continued too, or they would not act on it.
    pub fn terminate_all(&mut self) {
        self.signal_running(rustix::process::Signal::TERM);
        self.signal_running(rustix::process::Signal::CONT);
        for c in &mut self.children {
            c.paused = false;
        }
    }

    /// `sig` to the children not yet reaped: their pids cannot have been
    /// reused, since an unreaped child keeps its pid.
    fn signal_running(&mut self, sig: rustix::process::Signal) {
        for c in &mut self.children {
            // Errors (it exited meanwhile) are caught by the next poll.
            let _ = c.signal(sig);
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}
