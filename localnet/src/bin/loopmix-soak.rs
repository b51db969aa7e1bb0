//! `loopmix-soak`: a whole localnet under steady SOCKS5 traffic for minutes,
//! checking every process for memory and file-descriptor growth and every
//! transfer for lost data. See `loopmix-soak --help` and `docs/OPERATING.md`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    loopmix_localnet::soak::main(loopmix_localnet::soak::Options::parse())
}
