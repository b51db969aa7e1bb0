//! Exponential sampling and Poisson processes, always from an injected RNG.
//!
//! Every Loopix stream (λ_P, λ_L, λ_D, λ_M) is a Poisson process: the gaps
//! between events are i.i.d. Exp(λ). [`PoissonTicker`] schedules the next
//! event from the *previous deadline*, not from "now", so a late wake-up does
//! not stretch the process (and make the rate visibly drop under load).

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp1};

/// One draw from Exp with the given mean. A zero mean gives zero.
pub fn sample_exp_duration<R: Rng + ?Sized>(rng: &mut R, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    let unit: f64 = Exp1.sample(rng);
    // Cap at an hour: a pathological draw must not overflow Instants.
    Duration::from_secs_f64((unit * mean.as_secs_f64()).min(3600.0))
}

/// Mean gap of a Poisson process with `rate_per_s` events per second, or
/// `None` when the rate is zero (the stream is off).
pub fn mean_gap(rate_per_s: f64) -> Option<Duration> {
    if rate_per_s.is_finite() && rate_per_s > 0.0 {
        Some(Duration::from_secs_f64(1.0 / rate_per_s))
    } else {
        None
    }
}

/// A Poisson process over an abstract clock `T` (an `Instant` in the node,
/// virtual time in the simulator).
#[derive(Debug, Clone)]
pub struct PoissonTicker<T> {
    mean: Option<Duration>,
    next: Option<T>,
}

impl<T> PoissonTicker<T>
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T>,
{
    /// A ticker at `rate_per_s`; the first event is one Exp gap after `start`.
    pub fn new<R: Rng + ?Sized>(rng: &mut R, rate_per_s: f64, start: T) -> Self {
        let mean = mean_gap(rate_per_s);
        let next = mean.map(|m| start + sample_exp_duration(rng, m));
        Self { mean, next }
    }

    /// When the next event is due; `None` if the stream is off.
    pub fn next_deadline(&self) -> Option<T> {
        self.next
    }

    /// If an event is due at `now`, consume it and return its scheduled time.
    /// Call repeatedly: after a long stall several events may be due.
    pub fn poll<R: Rng + ?Sized>(&mut self, rng: &mut R, now: T) -> Option<T> {
        let (due, mean) = (self.next?, self.mean?);
        if due > now {
            return None;
        }
        self.next = Some(due + sample_exp_duration(rng, mean));
        Some(due)
    }

    /// Change the rate; the next gap is drawn fresh from `now`.
    pub fn set_rate<R: Rng + ?Sized>(&mut self, rng: &mut R, rate_per_s: f64, now: T) {
        *self = Self::new(rng, rate_per_s, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn exp_mean_matches() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(42);
        let n = 200_000;
        let mean = Duration::from_millis(50);
        let total: f64 = (0..n)
            .map(|_| sample_exp_duration(&mut rng, mean).as_secs_f64())
            .sum();
        let got = total / n as f64;
        assert!((got - 0.05).abs() < 0.05 * 0.02, "mean {got}");
    }

    #[test]
    fn ticker_rate_matches_and_does_not_drift() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let start = Duration::ZERO;
        let mut t = PoissonTicker::new(&mut rng, 20.0, start);
        // Poll only once a second: the ticker must still yield every event.
        let mut events = 0u64;
        for s in 1..=1000u64 {
            while t.poll(&mut rng, Duration::from_secs(s)).is_some() {
                events += 1;
            }
        }
        let rate = events as f64 / 1000.0;
        assert!((rate - 20.0).abs() < 0.5, "rate {rate}");
    }

    #[test]
    fn zero_rate_is_off() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut t = PoissonTicker::new(&mut rng, 0.0, Duration::ZERO);
        assert!(t.next_deadline().is_none());
        assert!(t.poll(&mut rng, Duration::from_secs(10)).is_none());
        assert_eq!(
            sample_exp_duration(&mut rng, Duration::ZERO),
            Duration::ZERO
        );
    }
}
