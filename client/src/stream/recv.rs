//! The receiving half of a stream: a bounded reorder buffer that hands the
//! application bytes in order, and the acknowledgement to send back.

use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Receiver {
    /// The next sequence number the application needs.
    next: u32,
    buffered: BTreeMap<u32, (Vec<u8>, bool)>,
    /// Segments accepted beyond `next` at most.
    window: u16,
    fin_delivered: bool,
    /// Something arrived since the last acknowledgement went out.
    pub ack_due: bool,
    pub duplicates: u64,
}

/// What a segment gave the application, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub data: Vec<u8>,
    pub fin: bool,
}

impl Receiver {
    pub fn new(window: u16) -> Self {
        Self {
            next: 0,
            buffered: BTreeMap::new(),
            window,
            fin_delivered: false,
            ack_due: false,
            duplicates: 0,
        }
    }

    pub fn fin_delivered(&self) -> bool {
        self.fin_delivered
    }

    /// Takes a segment; returns the bytes (and FIN) now deliverable in
    /// order. Duplicates and segments beyond the window are dropped (the
    /// acknowledgement tells the sender what is missing).
    pub fn on_data(&mut self, seq: u32, data: Vec<u8>, fin: bool, window: u16) -> Delivered {
        self.accept(seq, data, fin, window);
        self.release()
    }

    /// Takes a segment of a stream that may not deliver yet (optimistic
    /// data before the exit's connect, PROTOCOL.md 7.3) and keeps it, in
    /// order or not, if its sequence number is below `limit`; anything at
    /// or beyond `limit` is dropped like out-of-window data, so what is
    /// held stays bounded by `limit` segments. [`Receiver::release`] hands
    /// it over once the stream may deliver.
    pub fn hold(&mut self, seq: u32, data: Vec<u8>, fin: bool, limit: u32) {
        let room = limit.saturating_sub(self.next);
        if room == 0 {
            self.ack_due = true;
            self.duplicates += 1;
            return;
        }
        self.accept(seq, data, fin, u16::try_from(room).unwrap_or(u16::MAX));
    }

    /// Stores a segment unless it is a duplicate or beyond `window`
    /// segments from `next`.
    fn accept(&mut self, seq: u32, data: Vec<u8>, fin: bool, window: u16) {
        self.ack_due = true;
        if self.fin_delivered
            || seq < self.next
            || seq >= self.next.saturating_add(u32::from(window.max(1)))
            || self.buffered.contains_key(&seq)
        {
            self.duplicates += 1;
            return;
        }
        self.buffered.insert(seq, (data, fin));
    }

    /// The bytes (and FIN) held that are now in order.
    pub fn release(&mut self) -> Delivered {
        let mut out = Delivered::default();
        while let Some((data, fin)) = self.buffered.remove(&self.next) {
            self.next = self.next.wrapping_add(1);
            out.data.extend_from_slice(&data);
            if fin {
                self.fin_delivered = true;
                out.fin = true;
                self.buffered.clear();
                break;
            }
        }
        out
    }

    /// `(next, sack)`: bit `i` of `sack` says `next + 1 + i` is here.
    pub fn ack(&self) -> (u32, u32) {
        let mut sack = 0u32;
        for seq in self.buffered.keys() {
            let off = seq.wrapping_sub(self.next).wrapping_sub(1);
            if off < 32 {
                sack |= 1 << off;
            }
        }
        (self.next, sack)
    }

    /// Out-of-order segments held.
    pub fn held(&self) -> usize {
        self.buffered.len()
    }

    pub fn max_window(&self) -> u16 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reorders_and_acks_selectively() {
        let mut r = Receiver::new(8);
        assert!(r.on_data(1, b"b".to_vec(), false, 8).data.is_empty());
        assert!(r.on_data(3, b"d".to_vec(), true, 8).data.is_empty());
        assert_eq!(r.ack(), (0, 0b101));
        let d = r.on_data(0, b"a".to_vec(), false, 8);
        assert_eq!(d.data, b"ab");
        assert_eq!(r.ack(), (2, 0b1));
        let d = r.on_data(2, b"c".to_vec(), false, 8);
        assert_eq!((d.data.as_slice(), d.fin), (&b"cd"[..], true));
        // After FIN nothing more is taken.
        assert!(r.on_data(4, b"x".to_vec(), false, 8).data.is_empty());
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn window_bounds_the_buffer() {
        let mut r = Receiver::new(4);
        for seq in 1..100 {
            r.on_data(seq, vec![0; 10], false, 4);
        }
        assert_eq!(r.held(), 3);
    }

    #[test]
    fn held_segments_wait_for_release_and_stay_bounded() {
        let mut r = Receiver::new(64);
        r.hold(1, b"b".to_vec(), false, 4);
        r.hold(0, b"a".to_vec(), false, 4);
        // Beyond the limit, or again: dropped.
        r.hold(4, b"x".to_vec(), false, 4);
        r.hold(0, b"a".to_vec(), false, 4);
        r.hold(3, b"d".to_vec(), true, 4);
        assert_eq!((r.held(), r.duplicates), (3, 2));
        assert_eq!(r.ack(), (0, 0b101), "nothing delivered yet");
        let d = r.release();
        assert_eq!((d.data.as_slice(), d.fin), (&b"ab"[..], false));
        let d = r.on_data(2, b"c".to_vec(), false, 64);
        assert_eq!((d.data.as_slice(), d.fin), (&b"cd"[..], true));
        // Holding with nothing left below the limit takes nothing.
        let mut r = Receiver::new(64);
        for seq in 0..4 {
            r.hold(seq, vec![0; 10], false, 4);
        }
        r.release();
        r.hold(4, vec![0; 10], false, 4);
        assert_eq!(r.held(), 0);
    }

    proptest! {
        /// Any arrival order with duplicates gives the bytes in order.
        #[test]
        fn delivers_in_order(order in proptest::collection::vec(0u32..20, 0..200)) {
            let mut r = Receiver::new(32);
            let mut got = Vec::new();
            let mut seen_all = order.clone();
            seen_all.extend(0..20);
            for seq in seen_all {
                let d = r.on_data(seq, vec![seq as u8; 3], seq == 19, 32);
                got.extend(d.data);
            }
            let want: Vec<u8> = (0..20u8).flat_map(|s| [s; 3]).collect();
            prop_assert_eq!(got, want);
            prop_assert!(r.fin_delivered());
        }
    }
}
