//! Fault injection end to end, without root or netem: a localnet of real
//! processes (3 authorities, 3 layers × 2 mixes, 2 providers, an exit and a
//! SOCKS5 client, `speed` preset) with a fault relay in front of every mix
//! and provider, and real `curl --socks5-hostname` downloads checked by
//! SHA-256. Scenarios, in order, on one network:
//!
//! * `origin_reset`: the web server resets its connection mid-response:
//!   curl reports an error (it must never see a clean, short end);
//! * `loss`: 20% of the datagrams dropped both ways on one link (the SOCKS5
//!   client ↔ its provider): a 256 KiB download arrives byte-identical;
//! * `mix_kill`: a mix of the middle layer SIGKILLed mid-download: the
//!   download completes intact or curl reports an error, and the next works;
//! * `provider_restart`: the receiver's provider SIGKILLed and restarted:
//!   messages it acknowledged before are delivered, a message sent while it
//!   was down is delivered or its sender says it failed, SOCKS5 works again;
//! * `partition`: the whole middle layer blackholed for 10 s, then healed:
//!   a download across it and a message sent during it arrive intact or
//!   fail clearly, and traffic afterwards works;
//! * `authority_down`: one authority of 3 SIGKILLed: every node and client
//!   keeps getting new epochs, traffic flows; restarted, it catches up.
//!
//! "Clearly" is checked strictly: the HTTP server closes its connection to
//! end each body (no Content-Length), so a stream that ended early but
//! cleanly would look like a complete download to curl; only a byte-exact
//! body passes as a success. Every scenario also asserts that its fault
//! really happened (relay and node counters) and that no stream is left
//! open. `LOOPMIX_FAULTS=loss,partition` runs only those scenarios.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use loopmix_localnet::faults::{Faults, LinkFaults, RelayHandle, RelayStats};
use loopmix_localnet::network::Kind;
use loopmix_tests::network::*;
use loopmix_tests::workspace_bin;

/// Epoch length: short enough that `authority_down` sees two epochs pass
/// quickly, long enough that a 10 s partition fits inside one epoch (the
/// directory deals mixes into layers anew every epoch).
const EPOCH_S: u64 = 15;

/// Waits for a background download, sampling every second how many stream
/// bytes the proxy received and which epoch it is in; returns its outcome
/// and that timeline ("KiB per 5 s: ...; epoch e from t s"), so a report
/// shows when traffic stalled and when it recovered.
fn follow(
    f: &TestNet,
    dl: std::thread::JoinHandle<anyhow::Result<Download>>,
    t0: Instant,
) -> anyhow::Result<(Download, String)> {
    let bytes = |f: &TestNet| {
        f.metric("socks5", "loopmix_stream_bytes_total")
            .unwrap_or(0.0)
    };
    let mut last = bytes(f);
    let mut windows: Vec<f64> = Vec::new();
    let mut epochs: Vec<(f64, f64)> = Vec::new();
    let mut next = Instant::now() + Duration::from_secs(5);
    while !dl.is_finished() {
        if Instant::now() >= next {
            next += Duration::from_secs(5);
            let b = bytes(f);
            windows.push((b - last) / 1024.0);
            last = b;
        }
        let e = f.metric("socks5", "loopmix_directory_epoch").unwrap_or(0.0);
        if epochs.last().is_none_or(|(_, x)| *x != e) {
            epochs.push((t0.elapsed().as_secs_f64(), e));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    windows.push((bytes(f) - last) / 1024.0);
    let outcome = dl
        .join()
        .map_err(|_| anyhow!("download thread panicked"))??;
    let w: Vec<String> = windows.iter().map(|k| format!("{k:.0}")).collect();
    let e: Vec<String> = epochs
        .iter()
        .map(|(t, e)| format!("{e} from {t:.0} s"))
        .collect();
    Ok((
        outcome,
        format!("KiB per 5 s: {}; epoch {}", w.join(" "), e.join(", ")),
    ))
}

// ---- scenarios ---------------------------------------------------------

/// 20% loss in both directions on one link: the SOCKS5 client ↔ provider1.
fn loss(f: &mut TestNet) -> anyhow::Result<String> {
    let relay = f.relay("provider1")?;
    let nodes: BTreeSet<SocketAddr> = f.net.members.iter().filter_map(|m| m.quic).collect();
    // The sources that are no node: the proxy's QUIC endpoint.
    let clients: Vec<SocketAddr> = relay
        .sources()
        .into_iter()
        .filter(|s| !nodes.contains(s))
        .collect();
    ensure!(
        !clients.is_empty(),
        "the proxy's link to provider1 is not through the relay"
    );
    for c in &clients {
        relay.set_source_faults(*c, LinkFaults::both(Faults::loss(0.2)))?;
    }
    let before: Vec<RelayStats> = clients
        .iter()
        .filter_map(|c| relay.source_stats(*c))
        .collect();
    let n = 256 * 1024;
    let result = f.download(n, 240);
    let after: Vec<RelayStats> = clients
        .iter()
        .filter_map(|c| relay.source_stats(*c))
        .collect();
    relay.heal();
    let secs = match result? {
        Download::Intact { secs } => secs,
        d => bail!(
            "a 256 KiB download over a 20% lossy link must arrive: {}",
            describe(&d, n)
        ),
    };
    let d = after
        .iter()
        .zip(&before)
        .fold(RelayStats::default(), |d, (a, b)| d + (*a - *b));
    let (seen, dropped) = (
        d.inbound.received + d.outbound.received,
        d.inbound.dropped + d.outbound.dropped,
    );
    ensure!(
        seen >= 500,
        "too little traffic on the lossy link to judge: {d}"
    );
    let share = dropped as f64 / seen as f64;
    ensure!(
        (0.15..0.25).contains(&share),
        "dropped {share:.3} of the link's datagrams, not ~20%: {d}"
    );
    ensure!(
        d.inbound.dropped > 0 && d.outbound.dropped > 0,
        "loss in one direction only: {d}"
    );
    f.streams_closed(Duration::from_secs(60))?;
    Ok(format!(
        "20% loss on socks5↔provider1 ({} source(s)): {dropped} of {seen} datagrams dropped \
         ({} of {} towards the provider, {} of {} back), 256 KiB intact in {secs:.1} s",
        clients.len(),
        d.inbound.dropped,
        d.inbound.received,
        d.outbound.dropped,
        d.outbound.received
    ))
}

/// A mix of the middle layer SIGKILLed mid-download.
fn mix_kill(f: &mut TestNet) -> anyhow::Result<String> {
    let mut doc = f.current_topology()?;
    // Killed in the epoch whose layer 2 it is in.
    if ((doc.valid_from + doc.epoch_length_s) as f64 - unix_now_f64()) < 6.0 {
        doc = wait_epoch_start(f)?;
    }
    let victim = f
        .layer(&doc, 2)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("layer 2 is empty"))?;
    let relay = f.relay(&victim)?;
    let retx = |f: &TestNet| {
        f.metric("socks5", "loopmix_stream_retransmissions_total")
            .unwrap_or(0.0)
            + f.metric("exit", "loopmix_stream_retransmissions_total")
                .unwrap_or(0.0)
    };
    let retx0 = retx(f);
    let bytes0 = f
        .metric("socks5", "loopmix_stream_bytes_total")
        .unwrap_or(0.0);
    let n = 768 * 1024;
    let t = Instant::now();
    let dl = download_in_background(f, n, 240);
    wait_stream_bytes(f, bytes0, 128.0 * 1024.0, Duration::from_secs(60))?;
    f.net.kill(&victim)?;
    let killed_at = t.elapsed().as_secs_f64();
    let after_kill = relay.stats();
    let (outcome, timeline) = follow(f, dl, t)?;
    // Peers kept sending to the dead mix until they noticed: the fault hit
    // real traffic.
    let lost = relay.stats() - after_kill;
    ensure!(
        lost.inbound.forwarded > 0,
        "nothing was sent to {victim} after it was killed: the kill hit no traffic"
    );
    let next = f
        .download_intact(64 * 1024, 180)
        .context("the download after the kill")?;
    f.streams_closed(Duration::from_secs(90))?;
    let retransmitted = retx(f) - retx0;
    // Back to full strength for the next scenarios.
    f.net.restart(&victim, Duration::from_secs(60))?;
    Ok(format!(
        "killed {victim} (layer 2 of epoch {}) {killed_at:.1} s into a {} KiB download: {}; \
         {} datagrams went to the dead mix; {retransmitted} stream segments retransmitted; \
         the next 64 KiB intact in {next:.1} s ({timeline})",
        doc.epoch(),
        n / 1024,
        describe(&outcome, n),
        lost.inbound.forwarded
    ))
}

/// The receiver's provider SIGKILLed and restarted.
fn provider_restart(f: &mut TestNet) -> anyhow::Result<String> {
    let provider = "provider1";
    let receiver = f.net.add_client("receiver", 1)?;
    let sender = f.net.add_client("sender", 0)?;
    let (receiver_s, sender_s) = (receiver.display().to_string(), sender.display().to_string());
    let to = f.client_address(&receiver)?;
    // Registers the receiver's inbox at provider1.
    let out = f.client(&["receive", "--config", &receiver_s, "--timeout", "5"])?;
    ensure!(
        out.status.success(),
        "receive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::process::id();
    let mut acked = Vec::new();
    for i in 1..=3 {
        let m = format!("before-{run}-{i}");
        let out = f.client(&["send", "--config", &sender_s, "--to", &to, "--message", &m])?;
        ensure!(
            out.status.success(),
            "send {m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.push(m);
    }
    // The inbox gauge is sampled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(12);
    let stored = loop {
        let v = f
            .metric(provider, "loopmix_provider_inbox_messages")
            .unwrap_or(0.0);
        if v >= 3.0 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(
        stored >= 3.0,
        "{provider} holds {stored} messages after acknowledging 3"
    );

    // A download through the provider that is about to crash.
    let bytes0 = f
        .metric("socks5", "loopmix_stream_bytes_total")
        .unwrap_or(0.0);
    let n = 512 * 1024;
    let dl = download_in_background(f, n, 240);
    wait_stream_bytes(f, bytes0, 64.0 * 1024.0, Duration::from_secs(60))?;
    f.net.kill(provider)?;
    let relay = f.relay(provider)?;
    let down_stats = relay.stats();
    // Sent while the provider is down: the sender retries until it is back
    // (and then reports delivery), or reports failure.
    let during = format!("during-{run}");
    let cmd = {
        let bin = f.net.binaries().client.clone();
        let args = [
            "send",
            "--config",
            &sender_s,
            "--to",
            &to,
            "--message",
            &during,
        ]
        .map(String::from);
        std::thread::spawn(move || {
            Command::new(bin)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let lost = relay.stats() - down_stats;
    f.net.restart(provider, Duration::from_secs(60))?;
    let outcome = dl
        .join()
        .map_err(|_| anyhow!("download thread panicked"))??;
    let during_out = cmd.join().map_err(|_| anyhow!("send thread panicked"))??;
    let during_ok = during_out.status.success();
    let during_err = String::from_utf8_lossy(&during_out.stderr)
        .trim()
        .to_string();
    if !during_ok {
        ensure!(
            !during_err.is_empty(),
            "the send during the outage failed silently"
        );
    } else {
        acked.push(during.clone());
    }
    // Everything acknowledged arrives (plus, at most, the message whose
    // sender gave up — its ack may have been the part that was lost).
    let out = f.client(&[
        "receive",
        "--config",
        &receiver_s,
        "--count",
        &acked.len().to_string(),
        "--timeout",
        "90",
    ])?;
    let got: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let want: BTreeSet<String> = acked.iter().cloned().collect();
    ensure!(
        want.is_subset(&got),
        "acknowledged messages lost: want {want:?}, got {got:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    let next = f
        .download_intact(64 * 1024, 180)
        .context("SOCKS5 after the provider restart")?;
    f.streams_closed(Duration::from_secs(90))?;
    Ok(format!(
        "{provider} SIGKILLed mid-download and restarted: {} of 3 acknowledged messages kept \
         ({} in its inbox before the crash); sent during the outage: {}; download: {}; \
         {} datagrams reached the dead provider in 5 s; the next 64 KiB intact in {next:.1} s",
        acked
            .iter()
            .filter(|m| m.starts_with("before") && got.contains(*m))
            .count(),
        stored,
        if during_ok {
            "delivered".to_string()
        } else {
            format!("sender reported: {during_err}")
        },
        describe(&outcome, n),
        lost.inbound.received
    ))
}

/// The whole middle layer blackholed for 10 s, then healed.
fn partition(f: &mut TestNet) -> anyhow::Result<String> {
    // The partition must fall inside one epoch (layers are dealt anew
    // every epoch): it starts just after a boundary, with a download
    // started just before it.
    let doc0 = f.current_topology()?;
    let end = doc0.valid_from + doc0.epoch_length_s;
    sleep_until_unix(end as f64 - 2.5);

    let receiver = f.net.root().join("clients/receiver/client.toml");
    let sender = f.net.root().join("clients/sender/client.toml");
    let have_clients = receiver.exists() && sender.exists();

    let bytes0 = f
        .metric("socks5", "loopmix_stream_bytes_total")
        .unwrap_or(0.0);
    let n = 768 * 1024;
    let dl = download_in_background(f, n, 240);
    wait_stream_bytes(f, bytes0, 16.0 * 1024.0, Duration::from_secs(60))?;
    let doc = wait_epoch_start(f)?;
    let left = (doc.valid_from + doc.epoch_length_s) as f64 - unix_now_f64();
    ensure!(
        left >= 11.0,
        "could not start the partition early in an epoch ({left:.1} s left)"
    );
    let layer = f.layer(&doc, 2)?;
    ensure!(!layer.is_empty(), "layer 2 is empty");
    let relays: Vec<RelayHandle> = layer
        .iter()
        .map(|m| f.relay(m))
        .collect::<anyhow::Result<_>>()?;
    for r in &relays {
        r.set_faults(LinkFaults::both(Faults::blackhole()))?;
    }
    let t = Instant::now();
    // Counted from here: a datagram the relay took just before the rule
    // changed may still leave it in the next instant.
    std::thread::sleep(Duration::from_millis(100));
    let before: Vec<RelayStats> = relays.iter().map(|r| r.stats()).collect();
    let message = format!("partition-{}", std::process::id());
    let send = have_clients.then(|| {
        let bin = f.net.binaries().client.clone();
        let to = f.client_address(&receiver);
        let sender = sender.display().to_string();
        let message = message.clone();
        std::thread::spawn(move || {
            let to = to?;
            Ok::<_, anyhow::Error>(
                Command::new(bin)
                    .args([
                        "send",
                        "--config",
                        &sender,
                        "--to",
                        &to,
                        "--message",
                        &message,
                    ])
                    .env("RUST_LOG", "warn")
                    .output()?,
            )
        })
    });
    std::thread::sleep(Duration::from_secs(10).saturating_sub(t.elapsed()));
    let during: Vec<RelayStats> = relays
        .iter()
        .zip(&before)
        .map(|(r, b)| r.stats() - *b)
        .collect();
    for r in &relays {
        r.heal();
    }
    let healed_at = Instant::now();
    for (m, d) in layer.iter().zip(&during) {
        ensure!(
            d.inbound.forwarded == 0 && d.outbound.forwarded == 0,
            "{m}'s relay let datagrams through during the partition: {d}"
        );
        ensure!(
            d.inbound.dropped > 0,
            "nothing tried to reach {m} during the partition: {d}"
        );
    }
    let (outcome, timeline) = follow(f, dl, healed_at)?;
    let message_note = match send {
        Some(h) => {
            let out = h.join().map_err(|_| anyhow!("send thread panicked"))??;
            if out.status.success() {
                // Everything in the inbox (it is stored: one pull gets it).
                let got = f.client(&[
                    "receive",
                    "--config",
                    &receiver.display().to_string(),
                    "--timeout",
                    "15",
                ])?;
                let text = String::from_utf8_lossy(&got.stdout);
                ensure!(
                    text.lines().any(|l| l == message),
                    "message acknowledged during the partition not received: {text:?}"
                );
                "a message sent during it was acknowledged and received".to_string()
            } else {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                ensure!(
                    !err.is_empty(),
                    "the send during the partition failed silently"
                );
                format!("a message sent during it failed clearly: {err}")
            }
        }
        None => "no message clients (run provider_restart first)".to_string(),
    };
    let next = f
        .download_intact(64 * 1024, 180)
        .context("the download after healing")?;
    let recovered = healed_at.elapsed().as_secs_f64();
    f.streams_closed(Duration::from_secs(90))?;
    let dropped: u64 = during
        .iter()
        .map(|d| d.inbound.dropped + d.outbound.dropped)
        .sum();
    Ok(format!(
        "layer 2 of epoch {} ({}) blackholed for 10 s: {dropped} datagrams dropped, none passed; \
         download across it: {}; {message_note}; the next 64 KiB intact in {next:.1} s, \
         {recovered:.1} s after healing (after healing: {timeline})",
        doc.epoch(),
        layer.join(", "),
        describe(&outcome, n)
    ))
}

/// One authority of three SIGKILLed; later restarted.
fn authority_down(f: &mut TestNet) -> anyhow::Result<String> {
    let victim = "auth2";
    let epoch_of = |f: &TestNet, m: &str, name: &str| f.metric(m, name).unwrap_or(0.0);
    let nodes: Vec<String> = f
        .names(Kind::Mix)
        .into_iter()
        .chain(f.names(Kind::Provider))
        .collect();
    let e0 = epoch_of(f, "provider0", "loopmix_topology_epoch");
    ensure!(e0 >= 1.0, "no epoch in force");
    let failures = |f: &TestNet| -> f64 {
        nodes
            .iter()
            .map(|n| epoch_of(f, n, "loopmix_node_registration_failures_total"))
            .sum()
    };
    let failures0 = failures(f);
    f.net.kill(victim)?;
    let t = Instant::now();
    let target = e0 + 2.0;
    let deadline = Instant::now() + Duration::from_secs(3 * EPOCH_S + 30);
    loop {
        let mut behind: Vec<&str> = nodes
            .iter()
            .filter(|n| epoch_of(f, n, "loopmix_topology_epoch") < target)
            .map(String::as_str)
            .collect();
        for c in ["socks5", "exit"] {
            if epoch_of(f, c, "loopmix_directory_epoch") < target {
                behind.push(c);
            }
        }
        if behind.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "with {victim} down, not at epoch {target} after {:?}: {behind:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let waited = t.elapsed().as_secs_f64();
    // The other two accepted every registration: no node may count a
    // failed one (retrying at the live authorities too would run into
    // their rate limits — all nodes of a localnet share one IP).
    let failed = failures(f) - failures0;
    ensure!(
        failed == 0.0,
        "{failed} registration rounds failed with only {victim} down"
    );
    for m in &nodes {
        ensure!(
            f.metric(m, "loopmix_node_listed") == Some(1.0),
            "{m} is not listed in epoch {target}"
        );
    }
    let doc = f.current_topology()?;
    let secs = f
        .download_intact(256 * 1024, 180)
        .context("a download with an authority down")?;
    f.streams_closed(Duration::from_secs(60))?;

    // Back: it catches up with the others' epoch.
    f.net.restart(victim, Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(2 * EPOCH_S + 20);
    let now_epoch = epoch_of(f, "auth0", "loopmix_authority_published_epoch");
    loop {
        let e = epoch_of(f, victim, "loopmix_authority_published_epoch");
        if e >= now_epoch + 1.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "restarted {victim} publishes epoch {e}, others {now_epoch}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(format!(
        "{victim} SIGKILLed at epoch {e0}: every node and both clients reached epoch {target} \
         after {waited:.1} s (the authorities serve epoch {}); 256 KiB intact in {secs:.1} s; \
         restarted, it published epoch {}",
        doc.epoch(),
        epoch_of(f, victim, "loopmix_authority_published_epoch")
    ))
}

/// The web server resets its connection half-way through a response: the
/// exit sees the reset, and the user must see an error too — a clean end
/// of stream would make the half response look complete.
fn origin_reset(f: &mut TestNet) -> anyhow::Result<String> {
    let n = 128 * 1024;
    let resets0 = f
        .metric("exit", "loopmix_stream_resets_total")
        .unwrap_or(0.0);
    let d = download_path(f.socks, f.origin.addr, &format!("/reset/{n}"), n, 120)?;
    let Download::Failed { code, stderr, got } = d else {
        bail!("a half response cannot be complete: {d:?}");
    };
    f.streams_closed(Duration::from_secs(60))?;
    let resets = f
        .metric("exit", "loopmix_stream_resets_total")
        .unwrap_or(0.0)
        - resets0;
    Ok(format!(
        "server reset after {} of {n} bytes: curl failed clearly after {got} bytes \
         (curl {code}: {stderr}); {resets} stream reset(s) counted at the exit",
        n / 2
    ))
}

type Scenario = fn(&mut TestNet) -> anyhow::Result<String>;

#[test]
fn faults_cost_latency_or_a_clear_error_never_data() {
    let which: Option<BTreeSet<String>> = std::env::var("LOOPMIX_FAULTS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let scenarios: [(&str, Scenario); 6] = [
        ("origin_reset", origin_reset),
        ("loss", loss),
        ("mix_kill", mix_kill),
        ("provider_restart", provider_restart),
        ("partition", partition),
        ("authority_down", authority_down),
    ];
    let tmp = tempfile::Builder::new()
        .prefix("loopmix-faults-")
        .tempdir()
        .unwrap();
    // Built (if stale) before the clock starts.
    for b in ["loopmix-node", "loopmix-directory", "loopmix-client"] {
        workspace_bin(b).unwrap();
    }
    let t0 = Instant::now();
    let mut f = match TestNet::start(tmp.path(), "speed", &format!("{EPOCH_S}s")) {
        Ok(f) => f,
        Err(e) => {
            let kept = tmp.keep();
            panic!(
                "the network did not start: {e:#}\n(logs kept in {})",
                kept.display()
            );
        }
    };
    eprintln!(
        "network ready in {:.1} s; relays in front of {:?}",
        t0.elapsed().as_secs_f64(),
        f.net.relays().map(|r| r.names().collect::<Vec<_>>())
    );

    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (name, run) in scenarios {
        if which.as_ref().is_some_and(|w| !w.contains(name)) {
            continue;
        }
        eprintln!("\n==== {name} ====");
        let t = Instant::now();
        let relays_before = f.relay_snapshot();
        // Healthy before: a failure here belongs to the previous scenario.
        let result = f
            .download_intact(32 * 1024, 120)
            .context("the network was not healthy before this scenario")
            .and_then(|_| run(&mut f));
        if let Some(r) = f.net.relays() {
            r.heal_all();
        }
        let took = t.elapsed().as_secs_f64();
        let died = f.net.check().err().map(|e| e.to_string());
        match (result, died) {
            (Ok(summary), None) => {
                eprintln!("ok ({took:.0} s): {summary}");
                report.push(format!("{name} ({took:.0} s): {summary}"));
            }
            (r, died) => {
                let why = match r {
                    Err(e) => format!("{e:#}"),
                    Ok(s) => s,
                };
                eprintln!(
                    "FAILED ({took:.0} s): {why}\n{}\nrelays:\n{}\n{}",
                    died.unwrap_or_default(),
                    f.relay_deltas(&relays_before),
                    f.tails(&["socks5", "exit", "provider0", "provider1"])
                );
                failed.push(format!("{name}: {why}"));
            }
        }
    }
    summarize(t0, &report, &failed, tmp, f);
}
