//! Files that must never be seen half-written: address files that launchers
//! poll, `localnet.json`, topology files nodes reload.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that a reader sees the old file or the new
/// one, never a part: a temporary file beside it (`<path>.tmp`), flushed to
/// disk, renamed over `path`, and the directory flushed so the rename
/// survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // Best effort: some filesystems refuse to open a directory for sync.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `<path>.tmp` (appended, so `a.json` and `a.toml` do not share one).
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.addr");
        write_atomic(&p, b"127.0.0.1:1\n").unwrap();
        write_atomic(&p, b"127.0.0.1:22\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"127.0.0.1:22\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(tmp_path(&p), dir.path().join("metrics.addr.tmp"));
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
    }
}
