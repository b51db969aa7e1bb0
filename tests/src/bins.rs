//! The workspace binaries the end-to-end tests start.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of the package
//! an integration test belongs to, and this crate has none: the binaries are
//! `loopmix-node`, `loopmix-directory`, `loopmix-client` and the localnet
//! tools of other packages. So [`workspace_bin`] asks cargo to build the
//! binary with the same profile into the same target directory as the
//! running test (a no-op when `cargo test --workspace` already built it),
//! once per test process, and never runs a stale one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};

/// The path of workspace binary `name` built with the same profile and
/// target directory as the running test, building it first with cargo.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("no target dir above {}", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => bail!("unexpected profile dir {}", profile_dir.display()),
    };
    let bin = profile_dir.join(name);
    let mut built = BUILT.lock().map_err(|_| anyhow!("poisoned"))?;
    if !built.iter().any(|b| b == name) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.join("Cargo.toml"))
            .ok_or_else(|| anyhow!("no workspace manifest"))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "--bin", name, "--profile", profile])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .output()
            .context("running cargo build")?;
        if !out.status.success() {
            bail!(
                "cargo build --bin {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        built.push(name.to_string());
    }
    Ok(bin)
}
