//! Prometheus plumbing: registration helpers and the `/metrics` endpoint.
//!
//! Every node owns its own `Registry` (never the global one): tests and the
//! simulator run many nodes in one process, and the global registry refuses
//! a second metric of the same name.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("metric {name}: {source}")]
pub struct MetricError {
    name: String,
    #[source]
    source: prometheus::Error,
}

fn reg<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &str,
    m: Result<M, prometheus::Error>,
) -> Result<M, MetricError> {
    let err = |source| MetricError {
        name: name.to_string(),
        source,
    };
    let m = m.map_err(err)?;
    r.register(Box::new(m.clone())).map_err(err)?;
    Ok(m)
}

pub fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricError> {
    reg(r, name, IntCounter::new(name, help))
}

pub fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricError> {
    reg(r, name, IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricError> {
    reg(r, name, IntGauge::new(name, help))
}

pub fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricError> {
    reg(r, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

pub fn float_gauge(r: &Registry, name: &str, help: &str) -> Result<prometheus::Gauge, MetricError> {
    reg(r, name, prometheus::Gauge::new(name, help))
}

pub fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, MetricError> {
    reg(
        r,
        name,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    )
}

/// Renders the registry in the Prometheus text format.
pub fn render(r: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&r.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until `cancel` fires.
pub async fn serve(
    registry: Registry,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&registry);
            async move { ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], body) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Binds the metrics listener (separately, so a port conflict is reported at
/// start-up rather than in a background task).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_registries_hold_the_same_names() {
        let a = Registry::new();
        let b = Registry::new();
        counter(&a, "loopmix_x_total", "x").unwrap().inc();
        counter(&b, "loopmix_x_total", "x").unwrap();
        assert!(counter(&a, "loopmix_x_total", "x").is_err());
        assert!(render(&a).contains("loopmix_x_total 1"));
    }
}
