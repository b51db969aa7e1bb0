//! How much anonymity a Poisson mix provides right now: the Shannon entropy
//! of its input→output link (Loopix, USENIX Security 2017, Appendix A.1,
//! Eq. 5) and its time-averaged pool size, in O(1) time and memory per event.
//!
//! A Poisson mix is memoryless (Loopix Lemma 2): whatever the arrival times,
//! every packet in the pool is equally likely to be the next to leave. So an
//! observer who sees arrivals and departures (but not inside the mix) knows,
//! at a departure, only this: `k` packets arrived since the last departure
//! (each a distinct input) and `l` packets were already in the pool, each of
//! which is distributed over older inputs exactly like the previous output
//! (entropy `H_{t-1}`). The output is uniform over those `k + l`, hence
//!
//! ```text
//! H_t = H(k/(k+l), l/(k+l)) + k/(k+l) · log2 k + l/(k+l) · H_{t-1},   H_0 = 0
//! ```
//!
//! in bits. The node feeds this from its delay queue (one [`MixEntropy::arrive`]
//! per packet queued, one [`MixEntropy::depart`] per packet leaving, whether
//! forwarded or dropped); the simulator feeds it from the very same queue in
//! virtual time. A packet that leaves without an observable output (dropped
//! late) is still a departure: the packets that remain are distributed like
//! the one that left, which is exactly what `H_t` describes.
//!
//! The mean pool size of an M/M/∞ mix with input rate λ and delay Exp(μ) is
//! λ/μ (Lemma 1); [`EntropyWindow::mean_pool_size`] is the measured
//! time average to compare it with.

use std::time::Duration;

fn log2(n: u64) -> f64 {
    (n as f64).log2()
}

/// One step of Loopix Eq. 5: the entropy of an output drawn uniformly from
/// `fresh` new inputs and `carried` older packets whose distribution has
/// entropy `previous` bits. An empty pool (`fresh + carried == 0`) has no
/// output; the previous value is returned unchanged.
///
/// With `k` fresh, `l` carried and `n = k + l`, Eq. 5's
/// `H(k/n, l/n) + (k/n)·log2 k + (l/n)·H_{t-1}` has its `k·log2 k` terms
/// cancel: it is `log2 n + (l/n)·(H_{t-1} − log2 l)`, two logarithms of
/// integers (one when nothing is carried), and exactly `H_{t-1}` without
/// fresh inputs. (A test checks it against the formula as written.)
pub fn eq5_step(fresh: u64, carried: u64, previous: f64) -> f64 {
    let n = fresh + carried;
    if fresh == 0 {
        return previous;
    }
    if carried == 0 {
        return log2(n);
    }
    log2(n) + carried as f64 / n as f64 * (previous - log2(carried))
}

/// What a mix measured over one window (since the last
/// [`MixEntropy::take_window`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EntropyWindow {
    /// Length of the window.
    pub duration: Duration,
    /// Packets that entered the pool.
    pub arrivals: u64,
    /// Packets that left the pool (each one an Eq. 5 step).
    pub departures: u64,
    /// Mean of `H_t` over the departures, in bits; `None` without departures.
    pub mean_entropy_bits: Option<f64>,
    /// Time-averaged number of packets in the pool; `None` for an empty window.
    pub mean_pool_size: Option<f64>,
}

/// Incremental Eq. 5 entropy and pool-size time average of one mix, over an
/// abstract clock `T` (`Instant` in the node, virtual time in the simulator).
#[derive(Clone, Debug)]
pub struct MixEntropy<T> {
    /// `H_t` after the latest departure, bits.
    entropy_bits: f64,
    /// `k`: arrivals since the latest departure.
    fresh: u64,
    /// Packets in the pool now.
    pool: u64,
    /// When the pool size last changed (or the window started).
    last_change: Option<T>,
    window_start: Option<T>,
    /// ∫ pool dt over the window, in packet·seconds.
    pool_area: f64,
    arrivals: u64,
    departures: u64,
    entropy_sum: f64,
}

impl<T> Default for MixEntropy<T>
where
    T: Copy + Ord + std::ops::Sub<Output = Duration>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<T> MixEntropy<T>
where
    T: Copy + Ord + std::ops::Sub<Output = Duration>,
{
    /// An empty mix; the first window starts at the first event.
    pub fn new() -> Self {
        Self {
            entropy_bits: 0.0,
            fresh: 0,
            pool: 0,
            last_change: None,
            window_start: None,
            pool_area: 0.0,
            arrivals: 0,
            departures: 0,
            entropy_sum: 0.0,
        }
    }

    /// Accounts the pool size held since the last change, up to `now`.
    /// Clocks never run backwards here; a stale `now` just adds nothing.
    fn advance(&mut self, now: T) {
        match self.last_change {
            Some(last) if now > last => {
                self.pool_area += self.pool as f64 * (now - last).as_secs_f64();
                self.last_change = Some(now);
            }
            Some(_) => {}
            None => {
                self.last_change = Some(now);
                self.window_start.get_or_insert(now);
            }
        }
    }

    /// A packet entered the pool at `now`.
    pub fn arrive(&mut self, now: T) {
        self.advance(now);
        self.pool = self.pool.saturating_add(1);
        self.fresh = self.fresh.saturating_add(1);
        self.arrivals = self.arrivals.saturating_add(1);
    }

    /// A packet left the pool at `now`; returns `H_t` in bits. Leaving an
    /// empty pool is a caller bug: it is ignored and the last value returned.
    pub fn depart(&mut self, now: T) -> f64 {
        self.advance(now);
        if self.pool == 0 {
            return self.entropy_bits;
        }
        let carried = self.pool - self.fresh.min(self.pool);
        self.entropy_bits = eq5_step(self.fresh, carried, self.entropy_bits);
        self.pool -= 1;
        self.fresh = 0;
        self.departures = self.departures.saturating_add(1);
        self.entropy_sum += self.entropy_bits;
        self.entropy_bits
    }

    /// `H_t` after the latest departure, bits (0 before the first one).
    pub fn entropy_bits(&self) -> f64 {
        self.entropy_bits
    }

    /// Packets in the pool now.
    pub fn pool_size(&self) -> u64 {
        self.pool
    }

    /// The measurements since the window started, up to `now`.
    pub fn window(&self, now: T) -> EntropyWindow {
        let mut area = self.pool_area;
        if let Some(last) = self.last_change
            && now > last
        {
            area += self.pool as f64 * (now - last).as_secs_f64();
        }
        let duration = match self.window_start {
            Some(start) if now > start => now - start,
            _ => Duration::ZERO,
        };
        let secs = duration.as_secs_f64();
        EntropyWindow {
            duration,
            arrivals: self.arrivals,
            departures: self.departures,
            mean_entropy_bits: (self.departures > 0)
                .then(|| self.entropy_sum / self.departures as f64),
            mean_pool_size: (secs > 0.0).then(|| area / secs),
        }
    }

    /// Returns [`Self::window`] and starts a new window at `now`. The Eq. 5
    /// state and the pool carry over: only the averages restart.
    pub fn take_window(&mut self, now: T) -> EntropyWindow {
        let w = self.window(now);
        self.advance(now);
        self.window_start = Some(now);
        self.last_change = Some(now);
        self.pool_area = 0.0;
        self.arrivals = 0;
        self.departures = 0;
        self.entropy_sum = 0.0;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// An independent computation: enumerate every history of which pooled
    /// packet left at each departure (all equally likely in a Poisson mix),
    /// and return, per departure, the entropy of "which input is this
    /// output". `events`: `true` = arrival, `false` = departure.
    fn brute_force(events: &[bool]) -> Vec<f64> {
        let inputs = events.iter().filter(|&&a| a).count();
        let departures = events.len() - inputs;
        // dist[d][i]: probability that departure d carried input i.
        let mut dist = vec![vec![0.0f64; inputs]; departures];
        fn walk(
            events: &[bool],
            pool: &mut Vec<usize>,
            next_input: usize,
            departure: usize,
            prob: f64,
            dist: &mut [Vec<f64>],
        ) {
            let Some((&arrival, rest)) = events.split_first() else {
                return;
            };
            if arrival {
                pool.push(next_input);
                walk(rest, pool, next_input + 1, departure, prob, dist);
                pool.pop();
                return;
            }
            let n = pool.len();
            for pick in 0..n {
                let input = pool.remove(pick);
                dist[departure][input] += prob / n as f64;
                walk(rest, pool, next_input, departure + 1, prob / n as f64, dist);
                pool.insert(pick, input);
            }
        }
        walk(events, &mut Vec::new(), 0, 0, 1.0, &mut dist);
        dist.iter()
            .map(|d| d.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.log2()).sum())
            .collect()
    }

    fn eq5(events: &[bool]) -> Vec<f64> {
        let mut m: MixEntropy<Duration> = MixEntropy::new();
        let mut out = Vec::new();
        for (i, &arrival) in events.iter().enumerate() {
            let now = Duration::from_millis(i as u64);
            if arrival {
                m.arrive(now);
            } else {
                out.push(m.depart(now));
            }
        }
        out
    }

    /// A random valid sequence: departures only from a non-empty pool.
    fn random_events(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> Vec<bool> {
        let mut pool = 0usize;
        let mut ev = Vec::with_capacity(len);
        for _ in 0..len {
            let arrival = pool == 0 || (pool < 4 && rng.random_bool(0.55));
            pool = if arrival { pool + 1 } else { pool - 1 };
            ev.push(arrival);
        }
        ev
    }

    #[test]
    fn eq5_matches_brute_force_enumeration() {
        // A hand-written case first: A A D A D D A A A D D D.
        let hand = [
            true, true, false, true, false, false, true, true, true, false, false, false,
        ];
        let (got, want) = (eq5(&hand), brute_force(&hand));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "eq5 {got:?} vs brute force {want:?}");
        }
        // Two arrivals then a departure: one bit.
        assert!((got[0] - 1.0).abs() < 1e-12);

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let ev = random_events(&mut rng, 16);
            let (got, want) = (eq5(&ev), brute_force(&ev));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-9, "{ev:?}: eq5 {got:?} vs {want:?}");
            }
        }
    }

    /// Eq. 5 as the paper writes it.
    fn eq5_as_written(fresh: u64, carried: u64, previous: f64) -> f64 {
        let n = (fresh + carried) as f64;
        if n == 0.0 {
            return previous;
        }
        let h = |x: f64| if x > 0.0 { -x * x.log2() } else { 0.0 };
        let (p, q) = (fresh as f64 / n, carried as f64 / n);
        let log_fresh = if fresh > 0 {
            (fresh as f64).log2()
        } else {
            0.0
        };
        h(p) + h(q) + p * log_fresh + q * previous
    }

    #[test]
    fn the_rearranged_step_is_eq5() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..100_000 {
            let fresh = rng.random_range(0..20u64);
            let carried = match rng.random_range(0..3) {
                0 => rng.random_range(0..20),
                1 => rng.random_range(0..5000),
                _ => rng.random_range(0..1u64 << 40),
            };
            let previous = rng.random_range(0.0..40.0);
            let (got, want) = (
                eq5_step(fresh, carried, previous),
                eq5_as_written(fresh, carried, previous),
            );
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "k {fresh} l {carried} H {previous}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn one_in_one_out_has_no_entropy() {
        let ev: Vec<bool> = (0..20).map(|i| i % 2 == 0).collect();
        assert!(eq5(&ev).iter().all(|&h| h == 0.0));
    }

    #[test]
    fn pool_average_is_time_weighted() {
        let mut m: MixEntropy<Duration> = MixEntropy::new();
        let s = Duration::from_secs;
        m.arrive(s(0));
        m.arrive(s(1)); // pool 1 for 1 s
        m.depart(s(3)); // pool 2 for 2 s
        let w = m.window(s(4)); // pool 1 for 1 s
        assert_eq!(w.duration, s(4));
        assert!((w.mean_pool_size.unwrap_or(0.0) - 6.0 / 4.0).abs() < 1e-12);
        assert_eq!((w.arrivals, w.departures), (2, 1));
        let w = m.take_window(s(4));
        assert_eq!(w.departures, 1);
        // The new window starts with the pool that carried over.
        let w = m.window(s(6));
        assert!((w.mean_pool_size.unwrap_or(0.0) - 1.0).abs() < 1e-12);
        assert_eq!(w.mean_entropy_bits, None);
    }

    #[test]
    fn departing_an_empty_pool_is_ignored() {
        let mut m: MixEntropy<Duration> = MixEntropy::new();
        assert_eq!(m.depart(Duration::ZERO), 0.0);
        assert_eq!(m.pool_size(), 0);
        assert_eq!(m.window(Duration::from_secs(1)).departures, 0);
    }
}
