//! Measurement, not a CI test (ignored): CPU used by an idle client process
//! at the default network rates (λ_P = 2, λ_L = 1, λ_D = 1 per second,
//! pull every 250 ms). Run with
//! `cargo test --release -p loopmix-tests --test idle_cpu -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use loopmix_tests::network::{Relays, TestNet};
use loopmix_tests::workspace_bin;

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[test]
#[ignore = "measurement; prints the idle client's CPU share"]
fn idle_client_cpu_at_default_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let client_bin = workspace_bin("loopmix-client").unwrap();
    // The production defaults of `init`, not a localnet preset.
    let net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        &[
            "--directory-defaults",
            "--authorities",
            "1",
            "--mixes-per-layer",
            "1",
        ],
    )
    .unwrap();
    let config = net.net.add_client("idle", 0).unwrap();
    let mut child = Command::new(&client_bin)
        .args(["receive", "--timeout", "70", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let t0 = cpu_ticks(child.id()).unwrap();
    std::thread::sleep(Duration::from_secs(50));
    let t1 = cpu_ticks(child.id()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let hz = 100.0; // USER_HZ on Linux
    let share = (t1 - t0) as f64 / hz / 50.0 * 100.0;
    eprintln!("idle client CPU at default rates: {share:.2}% of one core over 50 s");
    assert!(share < 25.0, "idle client uses {share:.1}% of a core");
}
