//! `loopmix-localnet`: a whole loopmix network on this machine, one process
//! per role, and a SOCKS5 proxy through it. See `loopmix-localnet --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    loopmix_localnet::main(loopmix_localnet::Options::parse())
}
