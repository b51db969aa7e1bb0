//! The run as a pipeline of stages over slices of virtual time, so that
//! independent senders and independent mixes can run on different cores.
//!
//! Why this is exact: a packet's route and every hop's delay are fixed by
//! its sender (as in Sphinx), pools never overflow or drop late packets in
//! virtual time, and links take no time. So a packet reaches hop `i` at its
//! creation time plus the first `i` delays, whatever else happens; what
//! flows between nodes is only the challenge senders' probability mass,
//! and it flows one way through the layers: first provider (layer 0) →
//! layer 1 → … → layer L → delivery (the last hop, a provider or a looping
//! mix, holds nothing). For each slice `[t0, t1)` of virtual time the
//! senders make their packets, then layer 0's nodes process every arrival
//! and release before `t1`, then layer 1's, and so on; packets still held
//! at `t1` wait in their pool for the next slice. Within a stage every
//! sender, or every node, depends on nobody else in it, so the stage is
//! split across threads.
//!
//! Why the output does not depend on the threads: each node processes its
//! arrivals sorted by (time, packet uid), a key that scheduling cannot
//! change; per-part tallies are integer sums; and deliveries, whose order
//! float sums and the latency reservoir see, are sorted by the same key
//! before they are counted. The slice length does not matter either (a
//! test runs the same scenario with different slices and thread counts).

use loopmix_core::mixing::entropy::EntropyWindow;
use loopmix_core::mixing::mix::Decision;

use super::sources::{Client, Ctx, LoopSource, Outcome, Setup, Tally};
use super::{EngineError, MixPool, Packet, Progress, SimTime};

/// Packets the senders make per slice, about: large enough that per-slice
/// costs (thread hand-offs, sorting set-up) vanish, small enough that
/// memory stays at a few hundred MB at Nym scale.
const PACKETS_PER_SLICE: f64 = 200_000.0;

/// What a whole run measured, before it becomes a `RunResult`.
pub(super) struct Measured {
    pub tally: Tally,
    pub outcome: Outcome,
    pub windows: Vec<EntropyWindow>,
}

/// One node's pool and the packets it holds.
struct Stage<const H: usize> {
    /// The node's index.
    node: u32,
    layer: u8,
    pool: MixPool,
    /// Held packets; the pool holds their slots.
    slab: Vec<Packet<H>>,
    free: Vec<u32>,
    /// 0: before the window, 1: in it, 2: after it.
    marks: u8,
    window: EntropyWindow,
}

/// Where a stage finds its arriving packets.
#[derive(Clone, Copy)]
struct Inputs<'a, const H: usize> {
    made: &'a [Out<H>],
    prev: &'a [Out<H>],
}

impl<'a, const H: usize> Inputs<'a, H> {
    /// Every list of packets for `node`, each in time order.
    fn lists(&self, node: u32) -> impl Iterator<Item = &'a [(SimTime, Packet<H>)]> {
        self.made
            .iter()
            .chain(self.prev)
            .filter_map(move |o| o.to.get(node as usize))
            .map(Vec::as_slice)
    }

    /// How many packets arrive at `node` (to share out the work).
    fn count(&self, node: u32) -> usize {
        self.lists(node).map(<[_]>::len).sum()
    }
}

/// A part's working space for one node at a time, kept across nodes and
/// slices so its memory is allocated once: the node's arrivals copied side
/// by side (the event loop then reads one small array, not the previous
/// stage's buffers) and the order to take them in.
#[derive(Default)]
struct Scratch<const H: usize> {
    arrivals: Vec<(SimTime, Packet<H>)>,
    /// Indexes into `arrivals` in (time, uid) order. Each sits in the low
    /// bits (`index`) under the time since the earliest arrival, so the
    /// sort compares plain integers; the rare equal times are then put in
    /// uid order.
    order: Vec<u64>,
    index: u64,
}

impl<const H: usize> Scratch<H> {
    /// Takes `node`'s arrivals from `from` and sorts them.
    fn gather(&mut self, from: Inputs<'_, H>, node: u32) {
        self.arrivals.clear();
        self.order.clear();
        for list in from.lists(node) {
            self.arrivals.extend_from_slice(list);
        }
        let n = self.arrivals.len() as u64;
        let (Some(lo), Some(hi)) = (
            self.arrivals.iter().map(|a| a.0).min(),
            self.arrivals.iter().map(|a| a.0).max(),
        ) else {
            return;
        };
        let bits = u64::BITS - n.saturating_sub(1).leading_zeros();
        let span = hi.0 - lo.0;
        if bits == 0 || span < 1 << (u64::BITS - bits) {
            self.index = (1 << bits) - 1;
            self.order.extend(
                self.arrivals
                    .iter()
                    .enumerate()
                    .map(|(i, a)| ((a.0.0 - lo.0) << bits) | i as u64),
            );
            self.order.sort_unstable();
            self.uid_order_ties(bits);
        } else {
            // Too long a slice for the packed keys: sort by the key itself.
            self.index = u64::MAX;
            self.order.extend(0..n);
            let arrivals = &self.arrivals;
            self.order
                .sort_unstable_by_key(|&i| arrivals.get(i as usize).map(|(t, p)| (*t, p.uid)));
        }
    }

    /// Puts each run of arrivals at the same instant in uid order.
    fn uid_order_ties(&mut self, bits: u32) {
        let arrivals = &self.arrivals;
        let index = self.index;
        let uid = |k: &u64| arrivals.get((k & index) as usize).map(|a| a.1.uid);
        let mut rest = self.order.as_mut_slice();
        while let [first, ..] = rest {
            let t = *first >> bits;
            let same = rest.iter().take_while(|&&k| k >> bits == t).count();
            let (run, tail) = rest.split_at_mut(same);
            if run.len() > 1 {
                run.sort_unstable_by_key(uid);
            }
            rest = tail;
        }
    }

    /// The `i`-th arrival in order.
    fn arrival(&self, i: usize) -> Option<&(SimTime, Packet<H>)> {
        let k = self.order.get(i)?;
        self.arrivals.get((k & self.index) as usize)
    }
}

/// What one part of a stage produced.
#[derive(Default)]
struct Out<const H: usize> {
    /// Per next node: (arrival time, packet), in the order made. Writing
    /// straight into the next node's list keeps the next stage's reads
    /// close together in memory.
    to: Vec<Vec<(SimTime, Packet<H>)>>,
    /// Measured deliveries.
    delivered: Vec<(SimTime, Packet<H>)>,
    tally: Tally,
    /// A packet was sent to a node of this or an earlier layer.
    unordered: bool,
}

impl<const H: usize> Out<H> {
    /// `p`, at hop `hop`, arrives at `node` at `t`.
    fn push(&mut self, node: u32, t: SimTime, p: &Packet<H>, hop: u8) {
        let n = node as usize;
        if self.to.len() <= n {
            self.to.resize_with(n + 1, Vec::new);
        }
        let list = &mut self.to[n];
        list.push((t, *p));
        if let Some(last) = list.last_mut() {
            last.1.hop = hop;
        }
    }

    fn clear(&mut self) {
        for l in &mut self.to {
            l.clear();
        }
    }
}

impl<const H: usize> Stage<H> {
    fn new(node: u32, layer: u8, mixes_mass: bool) -> Self {
        Stage {
            node,
            layer,
            pool: MixPool::simulated(mixes_mass),
            slab: Vec::new(),
            free: Vec::new(),
            marks: 0,
            window: EntropyWindow::default(),
        }
    }

    /// Every arrival and release of this node before `t1`, in time order;
    /// the arriving packets are in `from`, the previous stage's buffers.
    fn process(
        &mut self,
        ctx: &Ctx,
        t1: SimTime,
        from: Inputs<'_, H>,
        scratch: &mut Scratch<H>,
        out: &mut Out<H>,
    ) {
        scratch.gather(from, self.node);
        warm(&self.slab);
        self.pool.warm();
        let mut next = 0;
        loop {
            let due = self.pool.next_deadline().filter(|&d| d < t1);
            let arrival = scratch.arrival(next);
            // A release before an arrival at the same instant.
            let (t, release) = match (due, arrival.map(|a| a.0)) {
                (None, None) => break,
                (Some(d), Some(a)) if a < d => (a, false),
                (Some(d), _) => (d, true),
                (None, Some(a)) => (a, false),
            };
            self.marks_through(ctx, t, true);
            if release {
                self.release(ctx, t, out);
            } else if let Some((t, p)) = arrival {
                next += 1;
                self.arrive(ctx, *t, p, out);
            }
        }
        self.marks_through(ctx, t1, false);
    }

    /// The measurement window opens (and closes) before anything else
    /// happens at its instant: apply the marks at or before `t`
    /// (`inclusive`) or strictly before it.
    fn marks_through(&mut self, ctx: &Ctx, t: SimTime, inclusive: bool) {
        let passed = |m: SimTime| if inclusive { m <= t } else { m < t };
        if self.marks == 0 && passed(ctx.burn_in) {
            self.pool.take_entropy_window(ctx.burn_in);
            self.marks = 1;
        }
        if self.marks == 1 && passed(ctx.window_end) {
            self.window = self.pool.take_entropy_window(ctx.window_end);
            self.marks = 2;
        }
    }

    fn arrive(&mut self, ctx: &Ctx, now: SimTime, p: &Packet<H>, out: &mut Out<H>) {
        let delay = p.delay();
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = *p;
                i
            }
            None => {
                self.slab.push(*p);
                (self.slab.len() - 1) as u32
            }
        };
        // Virtual time has no queue in front of the pool: received now.
        match self.pool.arrive(slot, now, delay, now, p.mass) {
            None => {}
            // A zero delay: the node forwards it at once, unmixed.
            Some(Decision::Forward { .. }) => {
                self.free.push(slot);
                forward(ctx, self.layer, p, now, out);
            }
            Some(Decision::Drop { .. }) => self.free.push(slot),
        }
    }

    fn release(&mut self, ctx: &Ctx, now: SimTime, out: &mut Out<H>) {
        while let Some(d) = self.pool.release_next(now) {
            // One scheduler event per held packet, as the event loop counts.
            out.tally.events += 1;
            match d.decision {
                Decision::Forward { item, .. } => {
                    self.free.push(item);
                    // Straight from the slab into the next node's list:
                    // one copy of the packet per hop.
                    let Some(p) = self.slab.get_mut(item as usize) else {
                        continue;
                    };
                    if let Some(mass) = d.mass {
                        p.mass = mass;
                    }
                    forward(ctx, self.layer, p, now, out);
                }
                Decision::Drop { item, .. } => self.free.push(item),
            }
        }
    }
}

/// Reads both ends of every held packet, in order, so that they are in
/// cache before the node's events touch them at random: the node's state
/// was last used a whole slice ago, and a stream of reads costs far less
/// than one miss per released packet.
fn warm<const H: usize>(slab: &[Packet<H>]) {
    let acc = slab.iter().fold(0u64, |a, p| a ^ p.uid ^ p.hops[0]);
    std::hint::black_box(acc);
}

/// `p`, at a node of `layer`, leaves for its next hop at `now`: delivered
/// there if it is the last, else an arrival for that node's stage (in a
/// later layer). The copy that moves on is `p` one hop further.
fn forward<const H: usize>(ctx: &Ctx, layer: u8, p: &Packet<H>, now: SimTime, out: &mut Out<H>) {
    if p.leaving_last_leg() {
        if Outcome::counts(p) {
            out.delivered.push((now, *p));
            if let Some(d) = out.delivered.last_mut() {
                d.1.hop += 1;
            }
        }
        return;
    }
    let hop = p.hop + 1;
    let Some(next) = p.next_node() else {
        out.unordered = true;
        return;
    };
    if ctx
        .nodes
        .get(next as usize)
        .is_none_or(|n| n.layer <= layer)
    {
        out.unordered = true;
        return;
    }
    out.push(next, now, p, hop);
}

/// Runs `setup` on `threads` threads (at least 1).
pub(super) fn run<const H: usize>(
    setup: Setup,
    threads: usize,
    progress: Progress<'_>,
) -> Result<Measured, EngineError> {
    run_sliced::<H>(setup, threads, None, progress)
}

/// [`run`] with slices of `slice_ns` (default: [`slice_ns`]).
pub(super) fn run_sliced<const H: usize>(
    setup: Setup,
    threads: usize,
    slice: Option<u64>,
    progress: Progress<'_>,
) -> Result<Measured, EngineError> {
    let Setup {
        ctx,
        mut loops,
        mut clients,
        reservoir_rng,
        ..
    } = setup;
    let threads = threads.max(1);
    let mut stages: Vec<Stage<H>> = ctx
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Stage::new(i as u32, n.layer, n.mixes_mass()))
        .collect();
    let by_layer = layers(&stages)?;
    let mut tally = Tally::default();
    let outcome = Outcome::new(reservoir_rng);
    // The event loop counts opening and closing the window as events.
    tally.events += u64::from(ctx.burn_in <= ctx.end) + u64::from(ctx.window_end <= ctx.end);

    let stop = SimTime(ctx.end.0.saturating_add(1));
    let slice = slice
        .unwrap_or_else(|| slice_ns(&ctx, clients.len(), loops.len()))
        .max(1);
    let mut t0 = SimTime(0);
    let mut delivered = Vec::new();
    // One buffer per part (and one for the mixes' loops), twice: a stage
    // reads what the previous one wrote into one set and writes into the
    // other. Kept across slices so their memory is allocated once.
    let mut bufs: Vec<Out<H>> = (0..=threads).map(|_| Out::default()).collect();
    let mut prev: Vec<Out<H>> = (0..=threads).map(|_| Out::default()).collect();
    // What the senders made: it feeds layer 0 and (mix loops) layer 1, so
    // it stays for the whole slice.
    let mut made: Vec<Out<H>> = (0..=threads).map(|_| Out::default()).collect();
    let mut scratch: Vec<Scratch<H>> = (0..threads).map(|_| Scratch::default()).collect();
    // A slice's deliveries are counted on a thread of their own while the
    // next slice runs (counting is in time order, so it is one thread's
    // work, and it would otherwise leave the other cores idle). At most
    // one slice's deliveries wait for it; their buffers come back.
    let (batches, incoming) = std::sync::mpsc::sync_channel::<Vec<(SimTime, Packet<H>)>>(1);
    let (recycle, recycled) = std::sync::mpsc::channel();
    let (outcome, looped) = std::thread::scope(|sc| {
        let counter = sc.spawn(move || count_deliveries(outcome, &incoming, &recycle));
        let looped = (|| -> Result<(), EngineError> {
            while t0 < stop {
                let t1 = SimTime(t0.0.saturating_add(slice).min(stop.0));
                for b in &mut made {
                    b.clear();
                }
                make_packets(&ctx, &mut clients, &mut loops, t1, &mut made);
                collect(&mut made, &mut tally, &mut delivered)?;
                for (layer, nodes) in by_layer.iter().enumerate() {
                    std::mem::swap(&mut bufs, &mut prev);
                    for b in &mut bufs {
                        b.clear();
                    }
                    // Senders feed the providers (clients) and layer 1 (mix
                    // loops); every later layer takes only what the one
                    // before it sent.
                    let from = Inputs {
                        made: if layer <= 1 { &made } else { &[] },
                        prev: if layer >= 1 { &prev } else { &[] },
                    };
                    let outs = &mut bufs[..threads];
                    process_layer(&ctx, &mut stages, nodes, t1, from, outs, &mut scratch);
                    collect(&mut bufs, &mut tally, &mut delivered)?;
                }
                let empty = recycled.try_recv().unwrap_or_default();
                if batches
                    .send(std::mem::replace(&mut delivered, empty))
                    .is_err()
                {
                    // The counting thread is gone: its panic is resumed below.
                    break;
                }
                progress(t1.as_secs_f64() / stop.as_secs_f64().max(1e-9));
                t0 = t1;
            }
            Ok(())
        })();
        drop(batches);
        let outcome = counter
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (outcome, looped)
    });
    looped?;
    Ok(Measured {
        tally,
        outcome,
        windows: stages.into_iter().map(|s| s.window).collect(),
    })
}

/// Counts each slice's deliveries, as they come, in (time, uid) order,
/// and hands their emptied buffers back; returns when the slices end.
fn count_deliveries<const H: usize>(
    mut outcome: Outcome,
    incoming: &std::sync::mpsc::Receiver<Vec<(SimTime, Packet<H>)>>,
    recycle: &std::sync::mpsc::Sender<Vec<(SimTime, Packet<H>)>>,
) -> Outcome {
    let mut by_time: Vec<(u64, u64, usize)> = Vec::new();
    for mut delivered in incoming {
        // Sorting small keys, not the packets. (time, uid) is unique, so
        // the order is the same on any threads.
        by_time.clear();
        by_time.extend(
            delivered
                .iter()
                .enumerate()
                .map(|(i, (t, p))| (t.0, p.uid, i)),
        );
        by_time.sort_unstable();
        for &(_, _, i) in &by_time {
            if let Some((_, p)) = delivered.get(i) {
                outcome.deliver(p);
            }
        }
        delivered.clear();
        // The run may have ended and stopped taking buffers back.
        let _ = recycle.send(delivered);
    }
    outcome
}

/// Each layer's nodes as a range of node indexes, layer 0 (providers)
/// first. The topology lists nodes layer by layer; a stage relies on it.
fn layers<const H: usize>(stages: &[Stage<H>]) -> Result<Vec<std::ops::Range<usize>>, EngineError> {
    let deepest = stages.iter().map(|s| s.layer).max().unwrap_or(0);
    let mut out = Vec::with_capacity(usize::from(deepest) + 1);
    let mut start = 0;
    for l in 0..=deepest {
        let n = stages[start..].iter().take_while(|s| s.layer == l).count();
        out.push(start..start + n);
        start += n;
    }
    if start != stages.len() {
        return Err(EngineError::Unordered);
    }
    Ok(out)
}

/// The slice length: about [`PACKETS_PER_SLICE`] packets made per slice.
fn slice_ns(ctx: &Ctx, clients: usize, nodes: usize) -> u64 {
    let p = ctx.topology.params();
    let rate = clients as f64 * (p.lambda_p_per_s + p.lambda_l_per_s + p.lambda_d_per_s)
        + nodes as f64 * p.lambda_m_per_s;
    let secs = (PACKETS_PER_SLICE / rate.max(1e-3)).clamp(0.01, 60.0);
    (secs * 1e9) as u64
}

/// Every packet the senders make before `t1`: the clients split over
/// all but the last buffer (one thread each), the mixes' loops (few) into
/// the last, on this thread.
fn make_packets<const H: usize>(
    ctx: &Ctx,
    clients: &mut [Client],
    loops: &mut [LoopSource],
    t1: SimTime,
    bufs: &mut [Out<H>],
) {
    let Some((loop_buf, client_bufs)) = bufs.split_last_mut() else {
        return;
    };
    let per = clients.len().div_ceil(client_bufs.len().max(1)).max(1);
    std::thread::scope(|sc| {
        let mut first = 0u32;
        for (part, out) in clients.chunks_mut(per).zip(client_bufs.iter_mut()) {
            let base = first;
            first += part.len() as u32;
            sc.spawn(move || {
                for (i, c) in part.iter_mut().enumerate() {
                    let id = base + i as u32;
                    while let Some((t, stream)) = c.next_tick().filter(|&(t, _)| t < t1) {
                        if let Some((first, p)) = ctx.client_tick(id, c, stream, t, &mut out.tally)
                        {
                            out.push(first, t, &p, 0);
                        }
                    }
                }
            });
        }
        for (i, src) in loops.iter_mut().enumerate() {
            while let Some(t) = src.next_tick().filter(|&t| t < t1) {
                if let Some((first, p)) = ctx.loop_tick(i as u32, src, t, &mut loop_buf.tally) {
                    loop_buf.push(first, t, &p, 0);
                }
            }
        }
    });
}

/// Processes the nodes of one layer up to `t1`, split into one part per
/// buffer, of about equal work.
fn process_layer<const H: usize>(
    ctx: &Ctx,
    stages: &mut [Stage<H>],
    nodes: &std::ops::Range<usize>,
    t1: SimTime,
    from: Inputs<'_, H>,
    bufs: &mut [Out<H>],
    scratch: &mut [Scratch<H>],
) {
    let Some(layer) = stages.get_mut(nodes.clone()) else {
        return;
    };
    let threads = bufs.len().max(1);
    let load = |s: &Stage<H>| from.count(s.node) + s.pool.len();
    let work: usize = layer.iter().map(load).sum();
    let target = work.div_ceil(threads).max(1);
    let mut parts: Vec<&mut [Stage<H>]> = Vec::with_capacity(threads);
    let mut rest = layer;
    while !rest.is_empty() {
        let mut n = 0;
        let mut w = 0;
        while n < rest.len() && (w < target || n == 0) {
            w += load(&rest[n]);
            n += 1;
        }
        if parts.len() + 1 == threads {
            n = rest.len();
        }
        let (a, b) = std::mem::take(&mut rest).split_at_mut(n);
        parts.push(a);
        rest = b;
    }
    let run_part = |part: &mut [Stage<H>], out: &mut Out<H>, scratch: &mut Scratch<H>| {
        for s in part.iter_mut() {
            s.process(ctx, t1, from, scratch, out);
        }
    };
    if let ([part], [out, ..], [scratch, ..]) = (parts.as_mut_slice(), &mut *bufs, &mut *scratch) {
        run_part(part, out, scratch);
        return;
    }
    std::thread::scope(|sc| {
        for ((part, out), scratch) in parts.into_iter().zip(bufs.iter_mut()).zip(scratch) {
            sc.spawn(move || run_part(part, out, scratch));
        }
    });
}

/// Counts what a stage's parts tallied and takes their deliveries.
fn collect<const H: usize>(
    bufs: &mut [Out<H>],
    tally: &mut Tally,
    delivered: &mut Vec<(SimTime, Packet<H>)>,
) -> Result<(), EngineError> {
    for out in bufs {
        tally.add(&std::mem::take(&mut out.tally));
        delivered.append(&mut out.delivered);
        if std::mem::take(&mut out.unordered) {
            return Err(EngineError::Unordered);
        }
    }
    Ok(())
}
