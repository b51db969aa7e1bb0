//! Running the `init` commands of the binaries a network is made of: each
//! writes its commented default config and keys into a directory and prints
//! the new identity, which is all a launcher needs to know.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use loopmix_core::keys::NodeId;
use loopmix_core::topology::Role;
pub use loopmix_node::bench::procs::init_node_raw;

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

/// Inits `dirs.len()` authorities that know each other (each finds the
/// others' HTTP address in their `data/http.addr`), signing with threshold
/// `k`; `schedule` are further `init` flags (`--epoch-length`,
/// `--registration-lead`, `--genesis`). Returns their keys, in `dirs` order.
pub fn init_authorities(
    bin: &Path,
    dirs: &[PathBuf],
    k: usize,
    schedule: &[String],
) -> anyhow::Result<Vec<NodeId>> {
    // Keys first: every authority's flags name all the others' keys.
    let keys = dirs
        .iter()
        .map(|d| init_authority(bin, d, &[]))
        .collect::<anyhow::Result<Vec<NodeId>>>()?;
    for (i, d) in dirs.iter().enumerate() {
        let mut args: Vec<String> = vec!["--force".into(), "--threshold".into(), k.to_string()];
        args.extend_from_slice(schedule);
        for (j, other) in dirs.iter().enumerate() {
            if j != i {
                let addr_file = other
                    .join("data")
                    .join(loopmix_directory::config::ADDR_FILE);
                args.push("--peer".into());
                args.push(format!("{}=file:{}", keys[j], addr_file.display()));
            }
        }
        if init_authority(bin, d, &args)? != keys[i] {
            bail!("init --force changed the key of {}", d.display());
        }
    }
    Ok(keys)
}

/// `loopmix-node init` on port 0 ([`init_node_raw`]) for a node that registers with directory authorities
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
