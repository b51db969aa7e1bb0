//! Prometheus histograms read back from `/metrics` text, and the
//! difference of two scrapes: what a benchmark observed between them
//! (mean, and quantiles interpolated within buckets as Prometheus's
//! `histogram_quantile` does).

use loopmix_net::scrape;

/// One unlabelled histogram: cumulative bucket counts by upper bound
/// (`+Inf` last), sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// Histogram `name` in exposition `text`; `None` if it is not there.
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, value)) = rest.split_once("\"}") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, value.trim().parse().ok()?));
        }
        if buckets.is_empty() {
            return None;
        }
        Some(Histogram {
            buckets,
            sum: scrape::series(text, &format!("{name}_sum"))?,
            count: scrape::series(text, &format!("{name}_count"))?,
        })
    }

    /// What was observed after `before` (same buckets: the same process).
    pub fn since(&self, before: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let was = before
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |b| b.1);
                (le, n - was)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// Adds another process's observations of the same histogram.
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        for (le, n) in &mut self.buckets {
            *n += other
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |b| b.1);
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile, linear within its bucket (from 0 for the first);
    /// the last finite bound if it falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank && n > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (n - below));
            }
            if le.is_finite() {
                lower = le;
            }
            below = n;
        }
        Some(lower)
    }
}

/// The `q` quantile of `xs` (nearest rank on the sorted values).
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied()
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
        x_seconds_bucket{le=\"0.1\"} 2\n\
        x_seconds_bucket{le=\"0.2\"} 6\n\
        x_seconds_bucket{le=\"+Inf\"} 8\n\
        x_seconds_sum 1.2\n\
        x_seconds_count 8\n";

    #[test]
    fn parses_and_interpolates() {
        let h = Histogram::parse(TEXT, "x_seconds").unwrap();
        assert_eq!(h.buckets.len(), 3);
        assert_eq!((h.sum, h.count), (1.2, 8.0));
        assert!((h.mean().unwrap() - 0.15).abs() < 1e-12);
        // Rank 4 of 8 lies halfway through the (0.1, 0.2] bucket.
        assert!((h.quantile(0.5).unwrap() - 0.15).abs() < 1e-12);
        assert!((h.quantile(0.125).unwrap() - 0.05).abs() < 1e-12);
        // In +Inf: the last finite bound.
        assert_eq!(h.quantile(0.99), Some(0.2));
        assert!(Histogram::parse(TEXT, "y_seconds").is_none());
    }

    #[test]
    fn differences_and_merges() {
        let after = Histogram::parse(TEXT, "x_seconds").unwrap();
        let before = Histogram {
            buckets: vec![(0.1, 1.0), (0.2, 1.0), (f64::INFINITY, 1.0)],
            sum: 0.05,
            count: 1.0,
        };
        let d = after.since(&before);
        assert_eq!(d.buckets, [(0.1, 1.0), (0.2, 5.0), (f64::INFINITY, 7.0)]);
        assert_eq!(d.count, 7.0);
        let mut m = Histogram::default();
        m.merge(&d);
        m.merge(&before);
        assert_eq!(m.buckets, after.buckets);
        assert_eq!(m.count, after.count);
        assert_eq!(Histogram::default().mean(), None);
    }

    #[test]
    fn sample_quantiles() {
        let xs = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&xs, 0.5), Some(3.0));
        assert_eq!(quantile(&xs, 0.95), Some(5.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(mean(&xs), Some(3.0));
    }
}
