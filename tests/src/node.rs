//! Node processes in the end-to-end tests: the kit `loopmix-node bench` and
//! `demo` use (`loopmix_node::bench::procs`: `loopmix-node init` and `run`
//! on loopback with port 0, a fixed topology written once the nodes report
//! their ports, and [`Peer`], a minimal in-process peer that injects and
//! receives Sphinx packets over the real transport), plus
//! [`init_directory_node`] for nodes that register with authorities.

use std::path::Path;

use loopmix_core::topology::Role;

pub use loopmix_node::bench::procs::{
    Delivery, Mixnet, NodeDir, NodeProcess, Peer, edit_config, init_node, launch_mixnet,
    write_topology,
};

/// Runs `loopmix-node init` for a node that registers with directory
/// authorities; `authority_args` are `--authority KEY=URL ... --threshold k`.
pub fn init_directory_node(
    bin: &Path,
    dir: &Path,
    role: Role,
    authority_args: &[String],
) -> anyhow::Result<NodeDir> {
    let nd = loopmix_localnet::init::init_node(bin, dir, role, authority_args)?;
    Ok(NodeDir {
        dir: nd.dir,
        config: nd.config,
        id: nd.id,
        entry: None,
    })
}
