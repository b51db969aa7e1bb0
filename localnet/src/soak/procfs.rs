//! What the soak reads from `/proc` about a process: resident memory, open
//! file descriptors, threads, and enough identity to notice a pid reused.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};

/// One process being watched: its pid and the start time the kernel gave
/// it, so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcId {
    /// The process `pid` as it is now, if it exists and is not a zombie.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = Stat::read(pid)?;
        (stat.state != 'Z').then_some(Self {
            pid,
            start_ticks: stat.start_ticks,
        })
    }

    /// Still the same, living process.
    pub fn alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|p| p == *self)
    }
}

/// The fields of `/proc/PID/stat` the soak needs.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub start_ticks: u64,
}

impl Stat {
    pub fn read(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// `pid (comm) state ppid ... starttime ...`: `comm` may hold spaces and
    /// parentheses, so fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); starttime is field 22.
        Some(Self {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }
}

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    /// The anonymous part of it (heap, stacks): where a leak shows.
    pub anon_kib: u64,
    /// The file-backed part (mostly the executable's code, paged in as
    /// code paths run for the first time; the kernel may evict it).
    pub file_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

impl Usage {
    /// `VmRSS` and `Threads` from `/proc/PID/status`, entries of
    /// `/proc/PID/fd`; `None` once the process is gone.
    pub fn read(id: ProcId) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", id.pid)).ok()?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", id.pid))
            .ok()?
            .filter(|e| e.is_ok())
            .count() as u64;
        // Read identity last: if the pid was recycled in between, drop it.
        if !id.alive() {
            return None;
        }
        Some(Self {
            rss_kib: status_field(&status, "VmRSS:")?,
            anon_kib: status_field(&status, "RssAnon:").unwrap_or(0),
            file_kib: status_field(&status, "RssFile:").unwrap_or(0),
            threads: status_field(&status, "Threads:").unwrap_or(0),
            fds,
        })
    }
}

/// The number after `key` in `/proc/PID/status` (`VmRSS:  1234 kB` → 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Every numeric entry of `/proc`.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every living descendant of `root` (children, grandchildren, ...).
pub fn descendants(root: u32) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(s) = Stat::read(pid)
            && s.state != 'Z'
        {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut out = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

/// Living processes other than this one whose command line mentions `dir`.
pub fn running_under(dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy();
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| ProcId::of(p).is_some())
        .filter(|&p| cmdline(p).is_some_and(|c| c.contains(&*dir)))
        .collect()
}

/// `kill -SIG pid...` (the crate forbids `unsafe`, so no `libc::kill`).
pub fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 987654 1000 20";
        let st = Stat::parse(s).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 7);
        assert_eq!(st.start_ticks, 987654);
    }

    #[test]
    fn reads_itself() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let u = Usage::read(me).unwrap();
        assert!(u.rss_kib > 0 && u.fds > 0 && u.threads > 0);
        assert_eq!(status_field("VmRSS:\t  1234 kB\n", "VmRSS:"), Some(1234));
    }
}
