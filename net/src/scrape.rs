//! Reading a loopmix process's own Prometheus endpoint back: what the
//! localnet status line, the soak, `loopmix-node bench` and the end-to-end
//! tests use to see inside the processes they run. A plain HTTP/1.1 GET (the
//! endpoint is ours and serves `Connection: close` text) and three queries
//! on the text exposition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a GET of a process's endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("GET {path} from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {path} from {addr}: not an HTTP response")]
    NotHttp { addr: SocketAddr, path: String },
    #[error("GET {path} from {addr}: {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: String,
    },
}

/// GET `http://addr/metrics` with short timeouts (a hung process must not
/// stall the status line for long).
pub fn scrape(addr: SocketAddr) -> Result<String, ScrapeError> {
    http_get_within(addr, "/metrics", Duration::from_secs(1))
}

/// [`http_get_within`] with a 5 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, ScrapeError> {
    http_get_within(addr, path, Duration::from_secs(5))
}

/// A plain HTTP/1.1 GET of `path` returning the body of a 200 response:
/// enough for the processes' own `/metrics` and status endpoints. Connects
/// within `timeout` and reads within twice that (a hung process must not
/// stall the caller long).
pub fn http_get_within(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    let io = |source| ScrapeError::Io {
        addr,
        path: path.to_string(),
        source,
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout * 2)).map_err(io)?;
    s.set_write_timeout(Some(timeout * 2)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        return Err(ScrapeError::NotHttp {
            addr,
            path: path.to_string(),
        });
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(ScrapeError::Status {
            addr,
            path: path.to_string(),
            status: head.lines().next().unwrap_or("").to_string(),
        });
    }
    Ok(body.to_string())
}

/// The value of one exact series, labels included as they are exposed,
/// e.g. `loopmix_packets_dropped_total{reason="replay"}`.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
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
    fn reads_one_exact_series() {
        let t = "# HELP d x\nd{r=\"a\"} 2\nd{r=\"ab\"} 5\nd 7\n";
        assert_eq!(series(t, "d{r=\"a\"}"), Some(2.0));
        assert_eq!(series(t, "d{r=\"ab\"}"), Some(5.0));
        assert_eq!(series(t, "d"), Some(7.0));
        assert_eq!(series(t, "d{r=\"b\"}"), None);
    }

    #[test]
    fn sums_series_and_ignores_prefixes() {
        let t = "# HELP x_total x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 9\ny 1.5\n";
        assert_eq!(sum(t, "x_total"), Some(5.0));
        assert_eq!(sum(t, "y"), Some(1.5));
        assert_eq!(sum(t, "z"), None);
    }
}
