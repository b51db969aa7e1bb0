//! Running the `init` commands of the binaries a network is made of: each
//! writes its commented default config and keys into a directory and prints
//! the new identity, which is all a launcher needs to know.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use loopmix_core::keys::NodeId;
use loopmix_core::topology::Role;

/// A node directory made by `loopmix-node init`.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub id: NodeId,
}

/// Runs `loopmix-directory init` in `dir` (listening on 127.0.0.1:0) with
/// `extra` flags; returns the authority's key.
pub fn init_authority(bin: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<NodeId> {
    let out = Command::new(bin)
        .arg("init")
        .arg("--dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .with_context(|| format!("running {} init", bin.display()))?;
    if !out.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Runs `loopmix-node init --role role` in `dir`, listening (QUIC and
/// metrics) on port 0, with `extra` flags (for a node that registers with
/// directory authorities: `--authority KEY=URL ... --threshold k`). Returns
/// what `init` printed, JSON.
pub fn init_node_raw(
    bin: &Path,
    dir: &Path,
    role: Role,
    extra: &[String],
) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(["init", "--role", &role.to_string()])
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .with_context(|| format!("running {} init", bin.display()))?;
    if !out.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// [`init_node_raw`] for a node that registers with directory authorities
/// (`authority_args`: `--authority KEY=URL ... --threshold k`).
pub fn init_node(
    bin: &Path,
    dir: &Path,
    role: Role,
    authority_args: &[String],
) -> anyhow::Result<NodeDir> {
    #[derive(serde::Deserialize)]
    struct Printed {
        id: NodeId,
    }
    let stdout = init_node_raw(bin, dir, role, authority_args)?;
    let printed: Printed = serde_json::from_slice(&stdout)
        .with_context(|| format!("init printed {:?}", String::from_utf8_lossy(&stdout)))?;
    Ok(NodeDir {
        dir: dir.to_path_buf(),
        config: dir.join("node.toml"),
        id: printed.id,
    })
}
