//! The workspace binaries the end-to-end tests start.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of the package
//! an integration test belongs to, and this crate has none: the binaries are
//! `loopmix-node`, `loopmix-directory`, `loopmix-client` and the localnet
//! tools of other packages. So [`workspace_bin`] asks cargo to build the
//! workspace's binaries with the same profile into the same target
//! directory as the running test, once per test process, and never runs a
//! stale one. It builds all of them (`--workspace --bins`, what
//! `cargo build` builds) rather than the one asked for: cargo unifies
//! dependency features over the packages it builds, so a per-binary build
//! compiles another copy of the dependency graph, and the container
//! testnet's `cargo build` a third.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};

/// The running test's profile directory (`target/<profile>`) and cargo's
/// name for that profile.
fn profile() -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => bail!("unexpected profile dir {}", profile_dir.display()),
    };
    Ok((profile_dir.to_path_buf(), profile.to_string()))
}

/// `cargo build --workspace <what>` with the running test's profile into
/// its target directory; returns the profile directory.
fn cargo_build(what: &str) -> anyhow::Result<PathBuf> {
    let (profile_dir, profile) = profile()?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| anyhow!("no target dir above {}", profile_dir.display()))?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("Cargo.toml"))
        .ok_or_else(|| anyhow!("no workspace manifest"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--workspace",
            what,
            "--profile",
            &profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --workspace {what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(profile_dir)
}

/// The path of workspace binary `name` built with the same profile and
/// target directory as the running test, building it first with cargo.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().map_err(|_| anyhow!("poisoned"))?;
    if !*built {
        cargo_build("--bins").with_context(|| format!("building {name}"))?;
        *built = true;
    }
    let bin = profile()?.0.join(name);
    if !bin.is_file() {
        bail!(
            "{} is not a workspace binary (not at {})",
            name,
            bin.display()
        );
    }
    Ok(bin)
}

/// The directory of the workspace's examples (`client/examples/`), built
/// like [`workspace_bin`]'s binaries (`--workspace`, so dependency features
/// unify as in `cargo build`).
pub fn workspace_examples() -> anyhow::Result<PathBuf> {
    Ok(cargo_build("--examples")?.join("examples"))
}
