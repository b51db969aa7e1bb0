//! `loopmix-testnet-gen`: keys and configs for the container testnet in
//! `deploy/docker/`. See `loopmix-testnet-gen --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    loopmix_localnet::compose::main(loopmix_localnet::compose::GenOptions::parse())
}
