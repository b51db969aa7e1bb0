//! Reading the Prometheus endpoints of the processes a localnet runs.

use std::net::SocketAddr;
use std::time::Duration;

/// GET `http://addr/metrics` with short timeouts (a hung process must not
/// stall the status line for long).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    loopmix_node::harness::http_get_within(addr, "/metrics", Duration::from_secs(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_and_ignores_prefixes() {
        let t = "# HELP x_total x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_more 9\ny 1.5\n";
        assert_eq!(sum(t, "x_total"), Some(5.0));
        assert_eq!(sum(t, "y"), Some(1.5));
        assert_eq!(sum(t, "z"), None);
    }
}
