//! Reading the Prometheus endpoints of the processes a localnet runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail};

/// GET `http://addr/metrics` with short timeouts (a hung process must not
/// stall the status line for long).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    http_get_within(addr, "/metrics", Duration::from_secs(1))
}

/// A plain HTTP/1.1 GET of `path` returning the body of a 200 response:
/// enough for the processes' own `/metrics` and status endpoints. Connects
/// within `timeout` and reads within twice that (a hung process must not
/// stall the caller long).
pub fn http_get_within(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout * 2))?;
    s.set_write_timeout(Some(timeout * 2))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Sum of every series of metric `name` (any labels); `None` if absent.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Every series of metric `name` that has label `label`: (its value of
/// the label, the sample). Lines it cannot read are skipped (a scrape is a
/// best-effort view, never a reason to fail).
pub fn by_label(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(v) = value.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        // Label values here are node ids and names: no commas or escaped
        // quotes, so a plain split is exact for them.
        let found = labels.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == label).then(|| v.trim().trim_matches('"').to_string())
        });
        if let Some(l) = found {
            out.push((l, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labelled_series() {
        let t = "# TYPE d gauge\nd{node=\"abc\"} 1\nd{x=\"1\",node=\"def\"} 0\nd 3\nd_more{node=\"z\"} 1\nd{node=\"bad\"} x\n";
        assert_eq!(
            by_label(t, "d", "node"),
            vec![("abc".to_string(), 1.0), ("def".to_string(), 0.0)]
        );
        assert!(by_label("", "d", "node").is_empty());
    }

    #[test]
    fn sums_series_and_ignores_prefixes() {
        let t = "# HELP x_total x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 9\ny 1.5\n";
        assert_eq!(sum(t, "x_total"), Some(5.0));
        assert_eq!(sum(t, "y"), Some(1.5));
        assert_eq!(sum(t, "z"), None);
    }
}
