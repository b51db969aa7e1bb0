//! The sender's side: every fragment waits for its end-to-end
//! acknowledgement; one whose ack does not come in time is handed back to
//! the caller for retransmission over a fresh route, and after
//! `max_attempts` sends it is given up.
//!
//! The ack timeout of a packet is Nym's rule: `multiplier × (sum of the
//! Sphinx delays the sender sampled for that packet) + addition`. The
//! sampled delays are the bulk of a mixnet round trip and vary a lot from
//! packet to packet (each is exponential), so a timeout derived from them
//! fits each packet, where one fixed timeout would be either too eager for
//! slow routes or too slow for fast ones; the addition covers the links,
//! queueing, and the ack's own way back.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Ack timeouts are capped here so that `now + timeout` cannot overflow the
/// clock (`Instant + Duration::MAX` panics) whatever the configuration or
/// sampled delays.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long to wait for acks and how often to try.
#[derive(Debug, Clone, PartialEq)]
pub struct RetransmitConfig {
    /// Factor on the sum of the sampled Sphinx delays. Default 1.5.
    pub multiplier: f64,
    /// Added to the scaled delays: links, queues, the ack's way back.
    /// Default 1.5 s.
    pub addition: Duration,
    /// Sends in total (first one included) before giving up. Default 10;
    /// 0 counts as 1.
    pub max_attempts: u32,
    /// Fragments awaiting an ack at once; `sent` refuses more. Default 4096.
    pub max_outstanding: usize,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            multiplier: 1.5,
            addition: Duration::from_millis(1500),
            max_attempts: 10,
            max_outstanding: 4096,
        }
    }
}

impl RetransmitConfig {
    /// `multiplier × sum_of_sampled_delays + addition` (Nym's rule), capped
    /// at [`MAX_ACK_TIMEOUT`]. A negative or NaN multiplier counts as 0.
    pub fn ack_timeout(&self, sum_of_sampled_delays: Duration) -> Duration {
        let scaled = sum_of_sampled_delays.as_secs_f64() * self.multiplier;
        // `try_from_secs_f64` fails on negative, NaN and too large values;
        // `mul_f64` would panic on them.
        let scaled = Duration::try_from_secs_f64(scaled).unwrap_or(if scaled > 0.0 {
            MAX_ACK_TIMEOUT
        } else {
            Duration::ZERO
        });
        scaled.saturating_add(self.addition).min(MAX_ACK_TIMEOUT)
    }
}

/// `sent` refused a new key: `max_outstanding` fragments await acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retransmit queue full: {limit} fragments already await acknowledgement")]
pub struct Full {
    pub limit: usize,
}

/// What an ack resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    /// How many times the fragment was sent.
    pub attempts: u32,
    /// Time from the latest send to the ack. When `attempts > 1` the ack may
    /// answer an earlier copy, so this is no clean round-trip sample (Karn's
    /// rule: estimate round trips from `attempts == 1` only).
    pub rtt_since_last_send: Duration,
}

/// A timeout that [`RetransmitQueue::due`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due<K> {
    /// Send the fragment again, over a fresh route, then call
    /// [`RetransmitQueue::sent`] with the new route's delays. The key stays
    /// outstanding meanwhile, so a late ack for an earlier copy still counts.
    Retransmit(K),
    /// `max_attempts` sends went unacknowledged: the key is removed; report
    /// the message as failed to whoever sent it.
    GiveUp(K),
}

impl<K> Due<K> {
    pub fn key(&self) -> &K {
        match self {
            Self::Retransmit(k) | Self::GiveUp(k) => k,
        }
    }

    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Retransmit(_) => "retransmit",
            Self::GiveUp(_) => "give_up",
        }
    }
}

struct Entry<T> {
    attempts: u32,
    last_sent: T,
    /// Key in `deadlines`; `None` once due and until sent again.
    deadline: Option<(T, u64)>,
}

/// Fragments awaiting acks, keyed by `K` (e.g. [`super::FragmentKey`]).
/// Sans-IO and deterministic: the caller passes `now` (non-decreasing),
/// polls [`RetransmitQueue::due`] at [`RetransmitQueue::next_deadline`], and
/// does the sending.
pub struct RetransmitQueue<K, T> {
    config: RetransmitConfig,
    entries: BTreeMap<K, Entry<T>>,
    /// Armed deadlines, earliest first, ties in send order. Each send gets a
    /// fresh sequence number and a re-send removes the old deadline, so a
    /// key has at most one armed deadline and never fires twice per send.
    deadlines: BTreeMap<(T, u64), K>,
    seq: u64,
}

impl<K, T> RetransmitQueue<K, T>
where
    K: Ord + Clone,
    T: Copy + Ord + Add<Duration, Output = T> + Sub<T, Output = Duration>,
{
    pub fn new(config: RetransmitConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            seq: 0,
        }
    }

    pub fn config(&self) -> &RetransmitConfig {
        &self.config
    }

    /// Same as [`RetransmitConfig::ack_timeout`].
    pub fn ack_timeout(&self, sum_of_sampled_delays: Duration) -> Duration {
        self.config.ack_timeout(sum_of_sampled_delays)
    }

    /// Keys outstanding: awaiting an ack or a retransmission.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The key was sent at `now` on a route whose sampled Sphinx delays add
    /// up to `sum_delays`: arms its deadline at `now + ack_timeout`.
    /// Returns the attempt number (1 for a new key). Re-sending a key
    /// replaces its armed deadline, so it fires once, for the latest send.
    /// A new key is refused when `max_outstanding` keys are outstanding;
    /// re-sends are always accepted.
    pub fn sent(&mut self, key: K, sum_delays: Duration, now: T) -> Result<u32, Full> {
        self.seq += 1;
        let deadline = (now + self.config.ack_timeout(sum_delays), self.seq);
        let attempts = match self.entries.get_mut(&key) {
            Some(e) => {
                if let Some(old) = e.deadline.take() {
                    self.deadlines.remove(&old);
                }
                e.attempts = e.attempts.saturating_add(1);
                e.last_sent = now;
                e.deadline = Some(deadline);
                e.attempts
            }
            None => {
                if self.entries.len() >= self.config.max_outstanding {
                    return Err(Full {
                        limit: self.config.max_outstanding,
                    });
                }
                self.entries.insert(
                    key.clone(),
                    Entry {
                        attempts: 1,
                        last_sent: now,
                        deadline: Some(deadline),
                    },
                );
                1
            }
        };
        self.deadlines.insert(deadline, key);
        Ok(attempts)
    }

    /// An ack for `key` arrived at `now`. `None` if the key is not
    /// outstanding (a duplicate ack, or one for a key given up or unknown).
    pub fn acked(&mut self, key: &K, now: T) -> Option<AckInfo> {
        let e = self.entries.remove(key)?;
        if let Some(d) = e.deadline {
            self.deadlines.remove(&d);
        }
        Some(AckInfo {
            attempts: e.attempts,
            // Guarded: `Duration - Duration` panics below zero.
            rtt_since_last_send: if now > e.last_sent {
                now - e.last_sent
            } else {
                Duration::ZERO
            },
        })
    }

    /// Stops tracking `key` (e.g. its stream was closed). Whether it was
    /// outstanding.
    pub fn cancel(&mut self, key: &K) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        if let Some(d) = e.deadline {
            self.deadlines.remove(&d);
        }
        true
    }

    /// Timeouts at or before `now`, earliest deadline first (ties in send
    /// order). `Retransmit` keys stay outstanding without a deadline until
    /// sent again; `GiveUp` keys (after `max_attempts` sends) are removed.
    pub fn due(&mut self, now: T) -> Vec<Due<K>> {
        let mut out = Vec::new();
        while let Some(armed) = self.deadlines.first_entry() {
            if armed.key().0 > now {
                break;
            }
            let key = armed.remove();
            let Some(e) = self.entries.get_mut(&key) else {
                continue; // Not reachable: removal clears the deadline.
            };
            e.deadline = None;
            if e.attempts >= self.config.max_attempts.max(1) {
                self.entries.remove(&key);
                out.push(Due::GiveUp(key));
            } else {
                out.push(Due::Retransmit(key));
            }
        }
        out
    }

    /// When `due` next has something to report.
    pub fn next_deadline(&self) -> Option<T> {
        self.deadlines.first_key_value().map(|(&(t, _), _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn queue(max_attempts: u32, max_outstanding: usize) -> RetransmitQueue<u32, Duration> {
        RetransmitQueue::new(RetransmitConfig {
            multiplier: 1.0,
            addition: S,
            max_attempts,
            max_outstanding,
        })
    }

    #[test]
    fn ack_timeout_is_nyms_rule() {
        let c = RetransmitConfig::default();
        assert_eq!(c.ack_timeout(Duration::ZERO), 1500 * MS);
        assert_eq!(c.ack_timeout(2 * S), 4500 * MS);
        let odd = |multiplier| RetransmitConfig {
            multiplier,
            ..RetransmitConfig::default()
        };
        assert_eq!(odd(f64::NAN).ack_timeout(S), 1500 * MS);
        assert_eq!(odd(-3.0).ack_timeout(S), 1500 * MS);
        assert_eq!(odd(f64::INFINITY).ack_timeout(S), MAX_ACK_TIMEOUT);
        assert_eq!(c.ack_timeout(Duration::MAX), MAX_ACK_TIMEOUT);
        // A capped timeout still fits an Instant.
        let mut q = RetransmitQueue::new(odd(f64::INFINITY));
        let now = std::time::Instant::now();
        assert_eq!(q.sent(1u8, Duration::MAX, now), Ok(1));
        assert_eq!(q.next_deadline(), Some(now + MAX_ACK_TIMEOUT));
        let info = q.acked(&1, now + S).unwrap();
        assert_eq!(info.rtt_since_last_send, S);
    }

    #[test]
    fn ack_before_deadline() {
        let mut q = queue(3, 10);
        assert_eq!(q.sent(7, 2 * S, Duration::ZERO), Ok(1));
        assert_eq!(q.next_deadline(), Some(3 * S));
        assert!(q.due(3 * S - MS).is_empty());
        assert_eq!(
            q.acked(&7, 2 * S),
            Some(AckInfo {
                attempts: 1,
                rtt_since_last_send: 2 * S
            })
        );
        assert_eq!(q.acked(&7, 2 * S), None, "a duplicate ack resolves nothing");
        assert_eq!(q.next_deadline(), None);
        assert!(q.due(10 * S).is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn retransmits_then_gives_up() {
        let mut q = queue(3, 10);
        let mut now = Duration::ZERO;
        assert_eq!(q.sent(1, Duration::ZERO, now), Ok(1));
        now += S;
        assert_eq!(q.due(now), vec![Due::Retransmit(1)]);
        assert_eq!(q.next_deadline(), None, "no deadline until re-sent");
        assert_eq!(q.len(), 1);
        assert!(q.due(now + 10 * S).is_empty(), "fires once per send");
        assert_eq!(q.sent(1, Duration::ZERO, now), Ok(2));
        now += S;
        assert_eq!(q.due(now), vec![Due::Retransmit(1)]);
        assert_eq!(q.sent(1, Duration::ZERO, now), Ok(3));
        now += S;
        let due = q.due(now);
        assert_eq!(due, vec![Due::GiveUp(1)]);
        assert_eq!(due[0].label(), "give_up");
        assert_eq!(due[0].key(), &1);
        assert!(q.is_empty());
        assert_eq!(q.acked(&1, now), None);
    }

    #[test]
    fn late_ack_after_timeout_counts() {
        let mut q = queue(5, 10);
        q.sent(1, Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(q.due(S), vec![Due::Retransmit(1)]);
        q.sent(1, Duration::ZERO, 2 * S).unwrap();
        let info = q.acked(&1, 2 * S + 300 * MS).unwrap();
        assert_eq!(info.attempts, 2);
        assert_eq!(info.rtt_since_last_send, 300 * MS);
        // Awaiting retransmission, then acked: nothing is due.
        q.sent(2, Duration::ZERO, 3 * S).unwrap();
        assert_eq!(q.due(4 * S), vec![Due::Retransmit(2)]);
        assert!(q.acked(&2, 4 * S).is_some());
        assert!(q.due(100 * S).is_empty());
        // A clock that went backwards does not panic.
        q.sent(3, Duration::ZERO, 5 * S).unwrap();
        assert_eq!(q.acked(&3, S).unwrap().rtt_since_last_send, Duration::ZERO);
    }

    #[test]
    fn early_resend_replaces_the_deadline() {
        let mut q = queue(10, 10);
        q.sent(1, 5 * S, Duration::ZERO).unwrap(); // deadline 6 s
        q.sent(1, Duration::ZERO, S).unwrap(); // deadline 2 s
        assert_eq!(q.next_deadline(), Some(2 * S));
        assert_eq!(q.due(10 * S), vec![Due::Retransmit(1)]);
        // Re-sent later than its old deadline: only the new one fires.
        q.sent(2, Duration::ZERO, 10 * S).unwrap(); // 11 s
        q.sent(2, 5 * S, 10 * S).unwrap(); // 16 s
        assert!(q.due(15 * S).is_empty());
        assert_eq!(q.due(16 * S), vec![Due::Retransmit(2)]);
    }

    #[test]
    fn due_in_deadline_order_ties_by_send_order() {
        let mut q = queue(10, 10);
        q.sent(1, 3 * S, Duration::ZERO).unwrap();
        q.sent(2, S, Duration::ZERO).unwrap();
        q.sent(3, 3 * S, Duration::ZERO).unwrap();
        q.sent(0, 2 * S, Duration::ZERO).unwrap();
        let keys: Vec<_> = q.due(10 * S).iter().map(|d| *d.key()).collect();
        assert_eq!(keys, [2, 0, 1, 3]);
    }

    #[test]
    fn bounded_outstanding() {
        let mut q = queue(10, 2);
        q.sent(1, S, Duration::ZERO).unwrap();
        q.sent(2, S, Duration::ZERO).unwrap();
        let err = q.sent(3, S, Duration::ZERO).unwrap_err();
        assert_eq!(err, Full { limit: 2 });
        assert!(err.to_string().contains("full"));
        assert_eq!(q.sent(2, S, S), Ok(2), "re-sends are accepted when full");
        assert!(q.cancel(&1));
        assert!(!q.cancel(&1));
        assert_eq!(q.sent(3, S, S), Ok(1));
        assert_eq!(q.len(), 2);
        assert!(q.contains(&3) && !q.contains(&1));
    }

    #[test]
    fn zero_max_attempts_means_one() {
        let mut q = queue(0, 10);
        q.sent(1, S, Duration::ZERO).unwrap();
        assert_eq!(q.due(10 * S), vec![Due::GiveUp(1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Send (or re-send) key with this sum of delays, in ms.
        Send(u8, u64),
        Ack(u8),
        /// Advance the clock by ms, then poll `due`.
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..8, 0u64..3000).prop_map(|(k, d)| Op::Send(k, d)),
            2 => (0u8..8).prop_map(Op::Ack),
            3 => (0u64..4000).prop_map(Op::Advance),
        ]
    }

    /// The model's view of one key.
    #[derive(Debug, Clone, Copy)]
    struct Model {
        attempts: u32,
        /// Armed deadline of the latest send, if it has not fired.
        deadline: Option<Duration>,
    }

    /// Polls `due` at `now` and checks it against the model.
    fn check_due(
        q: &mut RetransmitQueue<u8, Duration>,
        model: &mut BTreeMap<u8, Model>,
        now: Duration,
        max_attempts: u32,
    ) -> Result<(), TestCaseError> {
        let due = q.due(now);
        let mut last = Duration::ZERO;
        for d in &due {
            let Some(m) = model.get(d.key()).copied() else {
                return Err(TestCaseError::fail(format!("unknown key due: {d:?}")));
            };
            let Some(deadline) = m.deadline else {
                return Err(TestCaseError::fail(format!(
                    "due twice for one send: {d:?}"
                )));
            };
            prop_assert!(deadline <= now, "due early");
            prop_assert!(deadline >= last, "not in deadline order");
            last = deadline;
            if m.attempts >= max_attempts {
                prop_assert_eq!(d, &Due::GiveUp(*d.key()));
                model.remove(d.key());
            } else {
                prop_assert_eq!(d, &Due::Retransmit(*d.key()));
                if let Some(m) = model.get_mut(d.key()) {
                    m.deadline = None;
                }
            }
        }
        // Nothing armed at or before `now` was left behind.
        for (k, m) in model.iter() {
            prop_assert!(m.deadline.is_none_or(|d| d > now), "key {} missed", k);
        }
        let next = model.values().filter_map(|m| m.deadline).min();
        prop_assert_eq!(q.next_deadline(), next);
        prop_assert_eq!(q.len(), model.len());
        Ok(())
    }

    proptest! {
        /// (d) Against a model (a BTreeMap of key → deadline): each send is
        /// resolved exactly once, by an ack or by coming due at its
        /// deadline, in deadline order, never both and never twice;
        /// `GiveUp` exactly at `max_attempts`.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..200), max_attempts in 1u32..5) {
            let config = RetransmitConfig {
                multiplier: 1.5,
                addition: 500 * MS,
                max_attempts,
                max_outstanding: 5,
            };
            let mut q: RetransmitQueue<u8, Duration> = RetransmitQueue::new(config.clone());
            let mut model: BTreeMap<u8, Model> = BTreeMap::new();
            let mut now = Duration::ZERO;
            for op in ops {
                match op {
                    Op::Send(k, ms) => {
                        let sum = Duration::from_millis(ms);
                        let deadline = now + config.ack_timeout(sum);
                        let got = q.sent(k, sum, now);
                        let full = model.len() >= 5;
                        match model.get_mut(&k) {
                            Some(m) => {
                                m.attempts += 1;
                                m.deadline = Some(deadline);
                                prop_assert_eq!(got, Ok(m.attempts));
                            }
                            None if full => {
                                prop_assert_eq!(got, Err(Full { limit: 5 }));
                            }
                            None => {
                                model.insert(k, Model { attempts: 1, deadline: Some(deadline) });
                                prop_assert_eq!(got, Ok(1));
                            }
                        }
                    }
                    Op::Ack(k) => {
                        let got = q.acked(&k, now);
                        match model.remove(&k) {
                            Some(m) => prop_assert_eq!(got.map(|i| i.attempts), Some(m.attempts)),
                            None => prop_assert_eq!(got, None),
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        check_due(&mut q, &mut model, now, max_attempts)?;
                    }
                }
            }
            // Eventually every armed key comes due; acked ones never do.
            now += MAX_ACK_TIMEOUT;
            check_due(&mut q, &mut model, now, max_attempts)?;
            prop_assert!(model.values().all(|m| m.deadline.is_none()));
            prop_assert!(q.due(now + MAX_ACK_TIMEOUT).is_empty());
        }
    }
}
