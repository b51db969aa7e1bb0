//! The authorities' network status page (`/`, issue 19 item 4) against a
//! running localnet of real processes (2 authorities, 3 layers × 1 mix,
//! 2 providers, `speed` preset):
//!
//! * over plain HTTP: HTML with a CSP that allows no script, every mix and
//!   provider of the network listed by id, the epoch in force shown, the
//!   liveness list and the simulator's prediction filled in; the API
//!   routes next to it unchanged;
//! * in a real headless browser (Debian's `chromium`): the DOM as the
//!   browser built it holds the same content and no script, and a
//!   screenshot is saved — to `docs/figures/status_page.png` with
//!   `LOOPMIX_UPDATE_SCREENSHOT=1`, to the test's temporary directory
//!   otherwise (so CI leaves the tree clean).
//!
//! Without chromium the test installs it with apt-get when it runs as root
//! (CI), and otherwise skips the browser part with a message saying so.
//! That a node's descriptor cannot inject markup is proven in the
//! directory's unit tests (`status::tests`, `status::render::tests`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use loopmix_core::pki::api::EpochInfo;
use loopmix_localnet::network::Kind;
use loopmix_tests::http::http_get;
use loopmix_tests::network::{Relays, TestNet};
use loopmix_tests::page::{chromium, run_bounded};

/// Status, headers (lower-cased names) and body of one response.
type Response = (u16, Vec<(String, String)>, String);

/// A raw HTTP/1.0 GET: status line and headers (lower-cased names) and body.
fn get_with_headers(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers"))?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no status line"))?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The epoch the authority at `addr` is in.
fn epoch(addr: SocketAddr) -> anyhow::Result<u64> {
    Ok(serde_json::from_str::<EpochInfo>(&http_get(addr, "/v1/epoch")?)?.epoch)
}

/// What a complete page must show: every node id, the epoch in force
/// (`epochs` holds the epochs seen just before and after the fetch), a
/// published liveness list and a finished prediction. `Err` says what is
/// missing.
fn complete(html: &str, ids: &[String], epochs: &[u64]) -> Result<(), String> {
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !html.contains(id.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("nodes missing: {missing:?}"));
    }
    if !epochs
        .iter()
        .any(|e| html.contains(&format!("Epoch <strong>{e}</strong>")))
    {
        return Err(format!("none of epochs {epochs:?} shown"));
    }
    if !html.contains("k-signed list of round") {
        return Err("no liveness list yet".into());
    }
    if html.contains("computing…") {
        return Err("prediction still computing".into());
    }
    if !html.contains("ε (sender–receiver unlinkability)") {
        return Err("no ε prediction".into());
    }
    Ok(())
}

fn browser(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> anyhow::Result<Output> {
    let out = run_bounded(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url),
        Duration::from_secs(120),
    )?;
    ensure!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

#[test]
fn status_page_lists_the_network_and_renders_in_a_real_browser() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let net = TestNet::start_with(
        tmp.path(),
        Relays::Off,
        &[
            "--preset",
            "speed",
            "--epoch-length",
            "30s",
            "--authorities",
            "2",
            "--mixes-per-layer",
            "1",
            "--providers",
            "2",
        ],
    )?;
    let ids: Vec<String> = net
        .net
        .members
        .iter()
        .filter(|m| matches!(m.kind, Kind::Mix | Kind::Provider))
        .map(|m| m.id.map(|id| id.to_string()).context("node without an id"))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(ids.len(), 5, "3 mixes and 2 providers");
    let authority = net
        .names(Kind::Authority)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no authority"))?;
    let addr = net.addr(&authority)?;

    // Plain HTTP first: headers, then the content once the network's
    // liveness list and the prediction are in (seconds after start-up).
    let deadline = Instant::now() + Duration::from_secs(90);
    let html = loop {
        let before = epoch(addr)?;
        let (status, headers, body) = get_with_headers(addr, "/")?;
        let after = epoch(addr)?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = header(&headers, "content-security-policy").unwrap_or_default();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'"),
            "CSP: {csp:?}"
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert!(!body.contains("<script"), "no script on the page");
        match complete(&body, &ids, &[before, after]) {
            Ok(()) => break body,
            Err(why) if Instant::now() > deadline => {
                bail!("page incomplete after 90 s: {why}\n{body}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    };
    eprintln!(
        "status page: {} bytes, every node and the epoch shown",
        html.len()
    );

    // The API next to it is unchanged.
    let (status, headers, body) = get_with_headers(addr, "/v1/topology/current")?;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert!(body.starts_with("{\"document\""), "{body}");
    let (status, _, body) = get_with_headers(addr, "/no/such/page")?;
    assert_eq!((status, body.contains("\"not_found\"")), (404, true));
    let views = net
        .labelled(
            &authority,
            "loopmix_authority_status_page_views_total",
            "result",
            "served",
        )
        .unwrap_or(0.0);
    assert!(views >= 1.0, "views counted: {views}");

    // A real browser.
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return Ok(());
        }
    };
    let url = format!("http://{addr}/");
    let profile = tmp.path().join("chromium-profile");
    let before = epoch(addr)?;
    let dom = String::from_utf8(browser(&chromium, &profile, &["--dump-dom"], &url)?.stdout)?;
    let after = epoch(addr)?;
    complete(&dom, &ids, &[before, after])
        .map_err(|why| anyhow!("the DOM chromium built is incomplete: {why}\n{dom}"))?;
    assert!(!dom.contains("<script"), "no script in the DOM");

    let shot = if std::env::var("LOOPMIX_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/figures/status_page.png")
    } else {
        tmp.path().join("status_page.png")
    };
    let _ = std::fs::remove_file(&shot);
    browser(
        &chromium,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
        &url,
    )?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "screenshot of {} bytes: blank?",
        png.len()
    );
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    Ok(())
}
