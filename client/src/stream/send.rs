//! The sending half of a stream: segments, a window, cumulative and
//! selective acknowledgements, and retransmission after a timeout derived
//! from measured round trips (RFC 6298's estimator with Karn's rule).
//!
//! Segments are cut when a packet has room (their size is whatever the
//! packet can take) and numbered; a FIN takes a sequence number of its own
//! data-less segment, or rides on the last one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Round-trip estimator (RFC 6298 §2).
#[derive(Debug, Clone)]
pub struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rto: Duration,
    max_rto: Duration,
    /// Doublings after timeouts; reset by the next valid sample.
    backoff: u32,
}

impl Rtt {
    pub fn new(min_rto: Duration, max_rto: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rto,
            max_rto,
            backoff: 0,
        }
    }

    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(s * 7 / 8 + r / 8);
            }
        }
        self.backoff = 0;
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The retransmission timeout now: `srtt + 4·rttvar`, clamped, doubled
    /// per unanswered timeout. Before any sample: 3 s (RFC 6298 §2.1).
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => Duration::from_secs(3),
            Some(s) => s + 4 * self.rttvar,
        };
        let base = base.clamp(self.min_rto, self.max_rto);
        base.saturating_mul(1 << self.backoff.min(6))
            .min(self.max_rto)
    }

    fn timed_out(&mut self) {
        self.backoff = (self.backoff + 1).min(6);
    }
}

#[derive(Debug)]
struct Segment {
    data: Vec<u8>,
    fin: bool,
    sent_at: Instant,
    /// Transmissions so far.
    sends: u32,
}

/// A segment to put in a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub seq: u32,
    pub fin: bool,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Sender {
    unsent: VecDeque<u8>,
    buffer_limit: usize,
    fin_queued: bool,
    fin_sent: bool,
    next_seq: u32,
    inflight: BTreeMap<u32, Segment>,
    /// Every segment below this is acknowledged.
    acked: u32,
    peer_window: u16,
    max_window: u16,
    pub rtt: Rtt,
    max_sends: u32,
    last_ack_at: Option<Instant>,
    /// A segment went `max_sends` times without an acknowledgement.
    pub failed: bool,
    pub retransmissions: u64,
    /// Segments sent before this went over routes now known broken: they
    /// are due at once (see [`Sender::reroute`]).
    rerouted: Option<Instant>,
    /// New segments are numbered below this only (see
    /// [`Sender::limit_new`]).
    seq_limit: u32,
}

impl Sender {
    /// `buffer_limit`: bytes accepted from the application and not yet
    /// acknowledged at most (unsent plus in flight). `max_window`: segments
    /// in flight at most, whatever the peer allows.
    pub fn new(buffer_limit: usize, max_window: u16, rtt: Rtt, max_sends: u32) -> Self {
        Self {
            unsent: VecDeque::new(),
            buffer_limit,
            fin_queued: false,
            fin_sent: false,
            next_seq: 0,
            inflight: BTreeMap::new(),
            acked: 0,
            peer_window: max_window,
            max_window,
            rtt,
            max_sends,
            last_ack_at: None,
            failed: false,
            retransmissions: 0,
            rerouted: None,
            seq_limit: u32::MAX,
        }
    }

    /// Sends no new segment numbered `limit` or above until
    /// [`Sender::lift_limit`] (optimistic data before a stream is answered
    /// is bounded by what the peer holds for it: PROTOCOL.md 7.3).
    /// Retransmissions are not limited.
    pub fn limit_new(&mut self, limit: u32) {
        self.seq_limit = limit;
    }

    pub fn lift_limit(&mut self) {
        self.seq_limit = u32::MAX;
    }

    fn buffered(&self) -> usize {
        self.unsent.len() + self.inflight.values().map(|s| s.data.len()).sum::<usize>()
    }

    /// Bytes the application may still push.
    pub fn room(&self) -> usize {
        if self.fin_queued {
            return 0;
        }
        self.buffer_limit.saturating_sub(self.buffered())
    }

    /// Takes as much of `bytes` as there is room for; how much.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.unsent.extend(&bytes[..n]);
        n
    }

    /// The application has no more to send.
    pub fn finish(&mut self) {
        self.fin_queued = true;
    }

    pub fn fin_queued(&self) -> bool {
        self.fin_queued
    }

    /// Everything, FIN included, is sent and acknowledged.
    pub fn done(&self) -> bool {
        self.fin_sent && self.inflight.is_empty()
    }

    fn window_end(&self) -> u32 {
        let w = self.peer_window.min(self.max_window);
        self.acked.saturating_add(u32::from(w))
    }

    /// When `s` is due for retransmission.
    fn due_at(&self, s: &Segment, rto: Duration) -> Instant {
        match self.rerouted {
            Some(r) if s.sent_at < r => r,
            _ => s.sent_at + rto,
        }
    }

    fn due(&self, s: &Segment, now: Instant) -> bool {
        now >= self.due_at(s, self.rtt.rto())
    }

    /// The routes under the segments in flight changed at `now` (a mix on
    /// them is now listed down, or the reply blocks that carried them were
    /// revoked), so many of them are lost: every segment sent before `now`
    /// is due at once, and the timeouts' backoff, which grew while packets
    /// vanished into the dead node, starts over. Each resend still counts
    /// towards `max_sends`.
    pub fn reroute(&mut self, now: Instant) {
        self.rerouted = Some(now);
        self.rtt.backoff = 0;
    }

    /// Whether a new segment may go now (window open, or a probe when the
    /// peer closed it and said nothing for an RTO).
    fn may_send_new(&self, now: Instant) -> bool {
        let has_new = !self.unsent.is_empty() || (self.fin_queued && !self.fin_sent);
        if !has_new || self.next_seq >= self.seq_limit {
            return false;
        }
        if self.next_seq < self.window_end() {
            return true;
        }
        self.inflight.is_empty() && self.last_ack_at.is_none_or(|t| now >= t + self.rtt.rto())
    }

    /// Whether a segment (new or retransmission) would go now.
    pub fn wants_to_send(&self, now: Instant) -> bool {
        !self.failed && (self.may_send_new(now) || self.inflight.values().any(|s| self.due(s, now)))
    }

    /// Segments that would go now if every slot were ours: new data within
    /// the window (in segments of `mss` bytes) plus due retransmissions.
    pub fn backlog(&self, now: Instant, mss: usize) -> usize {
        let due = self.inflight.values().filter(|s| self.due(s, now)).count();
        let end = self.window_end().min(self.seq_limit);
        let room = end.saturating_sub(self.next_seq) as usize;
        let mut new = self.unsent.len().div_ceil(mss.max(1));
        if self.fin_queued && !self.fin_sent && new == 0 {
            new = 1;
        }
        due + new.min(room.max(1))
    }

    /// The next segment for a packet with `room` bytes of segment data:
    /// the oldest due retransmission if it fits, else new data.
    pub fn next_segment(&mut self, now: Instant, room: usize) -> Option<Out> {
        if self.failed {
            return None;
        }
        let rto = self.rtt.rto();
        let due = self
            .inflight
            .iter()
            .find(|(_, s)| now >= self.due_at(s, rto))
            .map(|(seq, s)| (*seq, s.data.len()));
        if let Some((seq, len)) = due {
            if len > room {
                return None;
            }
            let oldest = self.inflight.keys().next() == Some(&seq);
            let rerouted = self.rerouted;
            let s = self.inflight.get_mut(&seq)?;
            if s.sends >= self.max_sends {
                self.failed = true;
                return None;
            }
            let rerouted = rerouted.is_some_and(|r| s.sent_at < r);
            s.sends += 1;
            s.sent_at = now;
            self.retransmissions += 1;
            // One doubling per timeout of the oldest segment (TCP's single
            // timer), not per segment: with a window of segments lost
            // together, per-segment doubling would hit `max_rto` at once.
            // A rerouted resend is no timeout at all.
            if oldest && !rerouted {
                self.rtt.timed_out();
            }
            return Some(Out {
                seq,
                fin: s.fin,
                data: s.data.clone(),
            });
        }
        if !self.may_send_new(now) || (room == 0 && !self.unsent.is_empty()) {
            return None;
        }
        let n = room.min(self.unsent.len());
        let data: Vec<u8> = self.unsent.drain(..n).collect();
        let fin = self.fin_queued && self.unsent.is_empty();
        if data.is_empty() && !fin {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.fin_sent |= fin;
        self.inflight.insert(
            seq,
            Segment {
                data: data.clone(),
                fin,
                sent_at: now,
                sends: 1,
            },
        );
        Some(Out { seq, fin, data })
    }

    /// An acknowledgement: everything below `next`, and `next + 1 + i` for
    /// each bit `i` of `sack`. Returns whether it freed buffer room.
    pub fn on_ack(&mut self, next: u32, sack: u32, window: u16, now: Instant) -> bool {
        // An ack for data never sent is a lie or a bug: ignore it whole.
        if next > self.next_seq {
            return false;
        }
        self.last_ack_at = Some(now);
        if next >= self.acked {
            self.peer_window = window;
        }
        let mut acked: Vec<u32> = self.inflight.range(..next).map(|(s, _)| *s).collect();
        for i in 0..32u32 {
            if sack & (1 << i) != 0 {
                let s = next.saturating_add(1 + i);
                if self.inflight.contains_key(&s) {
                    acked.push(s);
                }
            }
        }
        self.acked = self.acked.max(next);
        // Karn: only segments sent once give a sample; the newest is the
        // most current.
        let mut sample = None;
        for s in &acked {
            if let Some(seg) = self.inflight.remove(s)
                && seg.sends == 1
            {
                sample = Some(now.saturating_duration_since(seg.sent_at));
            }
        }
        if let Some(r) = sample {
            self.rtt.sample(r);
        }
        !acked.is_empty()
    }

    /// When the oldest in-flight segment times out.
    pub fn next_timeout(&self) -> Option<Instant> {
        let rto = self.rtt.rto();
        self.inflight.values().map(|s| self.due_at(s, rto)).min()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        sender_with(3)
    }

    /// A 4-segment window, 200 ms..30 s RTO, `max_sends` tries per segment.
    fn sender_with(max_sends: u32) -> Sender {
        Sender::new(
            10_000,
            4,
            Rtt::new(Duration::from_millis(200), Duration::from_secs(30)),
            max_sends,
        )
    }

    #[test]
    fn window_sack_and_retransmission() {
        let t0 = Instant::now();
        let mut s = sender();
        assert_eq!(s.push(&[1; 250]), 250);
        let segs: Vec<Out> = (0..5).filter_map(|_| s.next_segment(t0, 50)).collect();
        // The window is 4 segments.
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[3].seq, 3);
        // Segment 0 lost; 1 and 2 arrived (sack bits 0 and 1 after next=0).
        assert!(s.on_ack(0, 0b011, 4, t0 + Duration::from_millis(400)));
        assert_eq!(s.in_flight(), 2);
        // Before the RTO nothing is due, and the window (0..4) is full.
        assert!(
            s.next_segment(t0 + Duration::from_millis(500), 50)
                .is_none()
        );
        // After it, segment 0 goes again, identical.
        let later = t0 + Duration::from_secs(5);
        let r = s.next_segment(later, 50).unwrap();
        assert_eq!((r.seq, r.data.len()), (0, 50));
        assert_eq!(s.retransmissions, 1);
        s.on_ack(4, 0, 4, later + Duration::from_millis(300));
        assert_eq!(s.in_flight(), 0);
        let last = s.next_segment(later, 50).unwrap();
        assert_eq!(last.seq, 4);
        s.finish();
        let fin = s.next_segment(later, 50).unwrap();
        assert!(fin.fin && fin.data.is_empty());
        s.on_ack(6, 0, 4, later);
        assert!(s.done());
    }

    #[test]
    fn karn_and_rto_from_samples() {
        let t0 = Instant::now();
        let mut s = sender();
        s.push(&[0; 10]);
        s.next_segment(t0, 100).unwrap();
        s.on_ack(1, 0, 4, t0 + Duration::from_millis(800));
        assert_eq!(s.rtt.srtt(), Some(Duration::from_millis(800)));
        // rto = 800 + 4 * 400
        assert_eq!(s.rtt.rto(), Duration::from_millis(2400));
    }

    #[test]
    fn a_lost_window_backs_off_once_not_per_segment() {
        let t0 = Instant::now();
        let mut s = sender();
        s.push(&[1; 200]);
        for _ in 0..4 {
            s.next_segment(t0, 50).unwrap();
        }
        let rto0 = s.rtt.rto();
        // All four time out together: the oldest goes and doubles the
        // RTO, the other three go one doubled RTO after their first send…
        assert_eq!(s.next_segment(t0 + rto0, 50).unwrap().seq, 0);
        assert!(s.next_segment(t0 + rto0, 50).is_none());
        let t = t0 + 2 * rto0;
        for seq in 1..4 {
            assert_eq!(s.next_segment(t, 50).unwrap().seq, seq);
        }
        // …without doubling it again (per-segment doubling made it 16×).
        assert_eq!(s.retransmissions, 4);
        assert_eq!(s.rtt.rto(), rto0 * 2);
    }

    #[test]
    fn rerouting_makes_what_is_in_flight_due_at_once_without_backoff() {
        let t0 = Instant::now();
        let mut s = sender_with(4);
        s.push(&[1; 100]);
        s.next_segment(t0, 50).unwrap();
        // Timed out twice: the RTO has doubled twice.
        let rto0 = s.rtt.rto();
        let mut t = t0 + rto0;
        s.next_segment(t, 50).unwrap();
        t += s.rtt.rto();
        s.next_segment(t, 50).unwrap();
        assert_eq!(s.rtt.rto(), rto0 * 4);
        s.next_segment(t, 50).unwrap(); // segment 1, sent once
        // A mix on the routes is listed down a moment later.
        let t1 = t + Duration::from_millis(10);
        assert!(!s.wants_to_send(t1));
        s.reroute(t1);
        assert_eq!(s.rtt.rto(), rto0, "backoff forgotten");
        assert_eq!(s.next_timeout(), Some(t1));
        assert!(s.wants_to_send(t1));
        assert_eq!(s.next_segment(t1, 50).unwrap().seq, 0);
        // Segment 1 counts as too, but reaching max_sends still fails.
        assert_eq!(s.next_segment(t1, 50).unwrap().seq, 1);
        assert!(s.next_segment(t1, 50).is_none(), "sent again only once");
        assert_eq!(s.rtt.rto(), rto0, "a rerouted resend is no timeout");
        s.reroute(t1 + Duration::from_millis(1));
        assert!(s.next_segment(t1 + Duration::from_millis(1), 50).is_none());
        assert!(s.failed, "segment 0 had its 4 sends");
    }

    #[test]
    fn gives_up_after_max_sends() {
        let t0 = Instant::now();
        let mut s = sender();
        s.push(&[0; 10]);
        let mut t = t0;
        for _ in 0..3 {
            assert!(s.next_segment(t, 100).is_some());
            t += Duration::from_secs(60);
        }
        assert!(s.next_segment(t, 100).is_none());
        assert!(s.failed);
    }

    #[test]
    fn a_limit_bounds_new_segments_not_retransmissions() {
        let t0 = Instant::now();
        let mut s = sender();
        s.limit_new(2);
        s.push(&[1; 200]);
        assert_eq!(s.next_segment(t0, 50).unwrap().seq, 0);
        assert_eq!(s.next_segment(t0, 50).unwrap().seq, 1);
        assert!(s.next_segment(t0, 50).is_none(), "limit reached");
        assert!(!s.wants_to_send(t0));
        // A lost segment still goes again after its timeout.
        let later = t0 + s.rtt.rto();
        assert_eq!(s.next_segment(later, 50).unwrap().seq, 0);
        s.lift_limit();
        assert_eq!(s.next_segment(later, 50).unwrap().seq, 2);
    }

    #[test]
    fn lying_acks_are_ignored_and_buffer_is_bounded() {
        let t0 = Instant::now();
        let mut s = Sender::new(
            100,
            4,
            Rtt::new(Duration::from_secs(1), Duration::from_secs(9)),
            3,
        );
        assert_eq!(s.push(&[0; 150]), 100);
        assert_eq!(s.room(), 0);
        s.next_segment(t0, 40).unwrap();
        assert!(!s.on_ack(5, 0, 4, t0));
        assert_eq!(s.in_flight(), 1);
    }
}
