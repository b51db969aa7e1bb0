//! The reference: the same run as one plain discrete-event loop (a core
//! [`DelayQueue`] of every tick, release and arrival, in time order). It is
//! what the engine was before the pipeline, kept for the tests, which show
//! the pipeline gives the same results on any number of threads.
//!
//! Events at the same nanosecond (rare, but a long run has a few) happen in
//! a fixed order both engines follow: the window marks, then ticks, then
//! releases, then arrivals by packet uid; deliveries count in (time, uid)
//! order. Before the pipeline, ties went by insertion order instead.

use loopmix_core::mixing::delay_queue::DelayQueue;
use loopmix_core::mixing::entropy::EntropyWindow;
use loopmix_core::mixing::mix::Decision;

use super::pipeline::Measured;
use super::sources::{Outcome, Setup, Tally};
use super::{Departure, MixPool, Packet, SimTime};

#[derive(Clone, Copy, Debug)]
enum Ev {
    WindowStart,
    WindowEnd,
    Tick { client: u32, stream: u8 },
    MixLoop { node: u32 },
    Release { node: u32 },
    Arrive { node: u32, id: u32 },
}

/// When, then which class of event first (see the module doc), then a
/// tie-break within the class.
type Key = (SimTime, u8, u64);
const MARK: u8 = 0;
const TICK: u8 = 1;
const RELEASE: u8 = 2;
const ARRIVE: u8 = 3;

struct World<const H: usize> {
    pools: Vec<MixPool>,
    windows: Vec<EntropyWindow>,
    packets: Vec<Packet<H>>,
    free: Vec<u32>,
    sched: DelayQueue<Key, Ev>,
    delivered: Vec<(SimTime, Packet<H>)>,
    departures: Vec<Departure>,
    tally: Tally,
    outcome: Outcome,
}

/// Runs `setup` as one event loop.
pub(super) fn run<const H: usize>(setup: Setup) -> Measured {
    let Setup {
        ctx,
        mut loops,
        mut clients,
        reservoir_rng,
        ..
    } = setup;
    let mut sched = DelayQueue::new(usize::MAX);
    // Pushed first, so they run before anything else due at the same time.
    let _ = sched.push((ctx.burn_in, MARK, 0), Ev::WindowStart);
    let _ = sched.push((ctx.window_end, MARK, 0), Ev::WindowEnd);
    for (i, l) in loops.iter().enumerate() {
        if let Some(t) = l.next_tick() {
            let _ = sched.push((t, TICK, 0), Ev::MixLoop { node: i as u32 });
        }
    }
    for (c, cl) in clients.iter().enumerate() {
        for stream in 0..3 {
            if let Some(t) = cl.stream_deadline(stream) {
                let client = c as u32;
                let _ = sched.push((t, TICK, 0), Ev::Tick { client, stream });
            }
        }
    }
    let mut w = World::<H> {
        pools: ctx
            .nodes
            .iter()
            .map(|n| MixPool::simulated(n.mixes_mass()))
            .collect(),
        windows: vec![EntropyWindow::default(); ctx.nodes.len()],
        packets: Vec::new(),
        free: Vec::new(),
        sched,
        delivered: Vec::new(),
        departures: Vec::new(),
        tally: Tally::default(),
        outcome: Outcome::new(reservoir_rng),
    };
    while let Some(due) = w.sched.next_deadline() {
        if due.0 > ctx.end {
            break;
        }
        let Some(((now, _, _), ev)) = w.sched.pop_due(due) else {
            break;
        };
        match ev {
            Ev::WindowStart => {
                w.tally.events += 1;
                for p in &mut w.pools {
                    p.take_entropy_window(now);
                }
            }
            Ev::WindowEnd => {
                w.tally.events += 1;
                for (p, win) in w.pools.iter_mut().zip(&mut w.windows) {
                    *win = p.take_entropy_window(now);
                }
            }
            Ev::Tick { client, stream } => {
                let c = &mut clients[client as usize];
                let p = ctx.client_tick(client, c, stream, now, &mut w.tally);
                if let Some(next) = c.stream_deadline(stream) {
                    let _ = w.sched.push((next, TICK, 0), Ev::Tick { client, stream });
                }
                if let Some((first, p)) = p {
                    w.launch(first, p, now);
                }
            }
            Ev::MixLoop { node } => {
                let src = &mut loops[node as usize];
                let p = ctx.loop_tick(node, src, now, &mut w.tally);
                if let Some(next) = src.next_tick() {
                    let _ = w.sched.push((next, TICK, 0), Ev::MixLoop { node });
                }
                if let Some((first, p)) = p {
                    w.launch(first, p, now);
                }
            }
            Ev::Release { node } => {
                w.tally.events += 1;
                w.release(node, now);
            }
            Ev::Arrive { node, id } => w.arrive(node, id, now),
        }
    }
    w.delivered.sort_unstable_by_key(|(t, p)| (*t, p.uid));
    for (_, p) in std::mem::take(&mut w.delivered) {
        w.outcome.deliver(&p);
    }
    Measured {
        tally: w.tally,
        outcome: w.outcome,
        windows: w.windows,
    }
}

impl<const H: usize> World<H> {
    fn launch(&mut self, first: u32, p: Packet<H>, now: SimTime) {
        let id = match self.free.pop() {
            Some(i) => {
                self.packets[i as usize] = p;
                i
            }
            None => {
                self.packets.push(p);
                (self.packets.len() - 1) as u32
            }
        };
        self.schedule_arrival(first, id, now);
    }

    fn schedule_arrival(&mut self, node: u32, id: u32, now: SimTime) {
        let uid = self.packets[id as usize].uid;
        let _ = self.sched.push((now, ARRIVE, uid), Ev::Arrive { node, id });
    }

    fn arrive(&mut self, node: u32, id: u32, now: SimTime) {
        let p = &self.packets[id as usize];
        let delay = p.delay();
        let mass = p.mass;
        match self.pools[node as usize].arrive(id, now, delay, now, mass) {
            None => {
                let key = (now + delay, RELEASE, u64::from(node));
                let _ = self.sched.push(key, Ev::Release { node });
            }
            Some(Decision::Forward { .. }) => self.hop(id, now),
            Some(Decision::Drop { .. }) => self.free.push(id),
        }
    }

    fn release(&mut self, node: u32, now: SimTime) {
        let mut out = std::mem::take(&mut self.departures);
        self.pools[node as usize].release_due(now, &mut out);
        for d in out.drain(..) {
            match d.decision {
                Decision::Forward { item, .. } => {
                    if let Some(mass) = d.mass {
                        self.packets[item as usize].mass = mass;
                    }
                    self.hop(item, now);
                }
                Decision::Drop { item, .. } => self.free.push(item),
            }
        }
        self.departures = out;
    }

    /// Packet `id` leaves for its next hop: delivered there if it is the
    /// last, else it arrives (after the releases due at `now`).
    fn hop(&mut self, id: u32, now: SimTime) {
        let p = &mut self.packets[id as usize];
        let next = p.next_node();
        p.hop += 1;
        if p.last_leg() {
            let p = *p;
            self.free.push(id);
            if Outcome::counts(&p) {
                self.delivered.push((now, p));
            }
            return;
        }
        if let Some(next) = next {
            self.schedule_arrival(next, id, now);
        }
    }
}
