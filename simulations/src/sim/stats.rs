//! The few statistics the simulator reports: the Gamma (Erlang) law of
//! end-to-end latency and a Kolmogorov–Smirnov test against it.

/// CDF of Gamma(k, rate) for integer shape k (the Erlang law of a sum of k
/// Exp(rate) delays): `1 − e^{−rx} Σ_{i<k} (rx)^i / i!`.
pub fn erlang_cdf(k: u32, rate: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let rx = rate * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..k {
        term *= rx / i as f64;
        sum += term;
    }
    (1.0 - (-rx).exp() * sum).clamp(0.0, 1.0)
}

/// Density of Gamma(k, rate) for integer k.
pub fn erlang_pdf(k: u32, rate: f64, x: f64) -> f64 {
    if x < 0.0 || k == 0 {
        return 0.0;
    }
    let ln_fact: f64 = (1..k).map(|i| (i as f64).ln()).sum();
    let ln = k as f64 * rate.ln() + (k as f64 - 1.0) * x.max(f64::MIN_POSITIVE).ln()
        - rate * x
        - ln_fact;
    ln.exp()
}

/// Result of a one-sample Kolmogorov–Smirnov test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KsTest {
    pub n: usize,
    /// sup |F_n(x) − F(x)|.
    pub statistic: f64,
    /// Asymptotic p-value (Kolmogorov distribution, with the Stephens
    /// small-sample correction).
    pub p_value: f64,
}

/// KS test of `sample` against the continuous CDF `cdf`.
pub fn ks_test(sample: &[f64], cdf: impl Fn(f64) -> f64) -> KsTest {
    let mut xs: Vec<f64> = sample.iter().copied().filter(|x| x.is_finite()).collect();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return KsTest {
            n,
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    let nf = n as f64;
    let d = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / nf).max((i as f64 + 1.0) / nf - f)
        })
        .fold(0.0, f64::max);
    let sqrt_n = nf.sqrt();
    let lambda = (sqrt_n + 0.12 + 0.11 / sqrt_n) * d;
    KsTest {
        n,
        statistic: d,
        p_value: kolmogorov_q(lambda),
    }
}

/// Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} e^{−2 j² λ²}.
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for j in 1..=100 {
        let jf = j as f64;
        let term = (-2.0 * jf * jf * lambda * lambda).exp();
        sum += sign * term;
        if term < 1e-12 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Mean and sample standard deviation (NaN values skipped; sd 0 for n < 2).
pub fn mean_sd(values: impl IntoIterator<Item = f64>) -> (f64, f64, usize) {
    let xs: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    (m, sd, n)
}

/// The q-quantile (0..=1) of `values` by the nearest-rank method.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut xs: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Gamma};

    #[test]
    fn erlang_matches_exponential_and_integrates() {
        // k = 1 is Exp(rate).
        assert!((erlang_cdf(1, 2.0, 0.5) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // The pdf integrates to the cdf.
        let (k, r, x) = (4, 2.0, 1.7);
        let steps = 20_000;
        let h = x / steps as f64;
        let integral: f64 = (0..steps)
            .map(|i| erlang_pdf(k, r, (i as f64 + 0.5) * h) * h)
            .sum();
        assert!((integral - erlang_cdf(k, r, x)).abs() < 1e-6);
    }

    #[test]
    fn ks_accepts_the_right_law_and_rejects_the_wrong_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let g = Gamma::new(4.0, 0.5).unwrap(); // shape 4, scale 1/μ = 0.5
        let xs: Vec<f64> = (0..5000).map(|_| g.sample(&mut rng)).collect();
        let good = ks_test(&xs, |x| erlang_cdf(4, 2.0, x));
        assert!(good.p_value > 0.01, "{good:?}");
        let bad = ks_test(&xs, |x| erlang_cdf(3, 2.0, x));
        assert!(bad.p_value < 1e-6, "{bad:?}");
    }

    #[test]
    fn quantiles_and_moments() {
        let v = [1.0, 2.0, 3.0, 4.0, f64::NAN];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        let (m, sd, n) = mean_sd(v);
        assert_eq!((m, n), (2.5, 4));
        assert!((sd - 1.2909944487358056).abs() < 1e-12);
    }
}
