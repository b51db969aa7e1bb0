//! The epoch driver: when to build, collect signatures, mirror and prune.
//! A sans-IO state machine: it reads no clock and does no I/O.
//!
//! Timeline of epoch `e` (start `S`, registration lead `L`, all in Unix ms):
//!
//! ```text
//! registration for e open ........ S-L ─ vote: S-L+L/4 ───────── S-L/4 ─── S ──────── S+length
//!                                  │      │ Build: merge peers'     │          │             │
//!                                  │      │ registrations, build,   │          │             │
//!                                  │      │ sign once, persist      │          │             │
//!                                  │      │ CollectSignatures every tick until all n signed ─┤
//!                                  │      │                         │ Mirror every tick      │
//!                                  │      │                         │ while below k ─────────┤
//!                                  closed: 400 epoch_not_open                    driving e stops
//! ```
//!
//! Only the current epoch and the next are driven, and `Prune` is issued
//! once each time the current epoch changes: whatever the clock does (a
//! suspended VM, an NTP step in either direction), one call to
//! [`EpochDriver::poll`] at one instant yields a handful of actions, never
//! a backlog of missed epochs.
//!
//! * A failed `Build` (not enough mixes yet, peers unreachable) is retried
//!   after `L/4`, clamped to 1–30 s, so peers are not asked every tick.
//! * `CollectSignatures` and `Mirror` are retried once per tick
//!   (`length/24`, clamped to 100 ms–1 s): they are cheap GETs, and the
//!   epoch must be published before `S`.
//! * `CollectSignatures` goes on after k until all n signed: every extra
//!   signature lets the document survive one more authority key being
//!   distrusted by a client.
//! * `Mirror` starts at `S-L/4`: by then an authority whose own document
//!   is below k most likely missed registrations the others merged, and
//!   serving the others' k-signed document beats serving none.
//!
//! The caller (`Authority::run_scheduler`, and the tests below on a fake
//! clock) loops: read the clock once, [`poll`](EpochDriver::poll) until
//! `None`, executing each [`Action`] and reporting its [`Outcome`] with
//! [`on_outcome`](EpochDriver::on_outcome), then sleep until
//! [`next_wakeup`](EpochDriver::next_wakeup). Retry pacing is measured from
//! the instant passed to `poll`, and the caller's sleep from the same
//! instant, so a slow round (peers timing out) is still followed by a full
//! pause: peers are never asked back to back.

use std::collections::BTreeMap;

use loopmix_core::pki::EpochSchedule;

/// Work for the I/O shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Merge own and peers' registrations for `epoch`, build the document,
    /// sign it and persist it. Must not replace a document already held:
    /// an authority never signs two documents for one epoch.
    Build { epoch: u64 },
    /// Fetch the signatures still missing on the document held for `epoch`.
    CollectSignatures { epoch: u64 },
    /// Adopt a peer's k-signed document for `epoch`.
    Mirror { epoch: u64 },
    /// Forget registrations and documents of epochs before `below`.
    Prune { below: u64 },
}

/// What an action left behind. `signatures` is the number of valid
/// signatures on the document this authority now holds for `epoch`
/// (`None`: it holds none): the shell reports the truth, so the driver can
/// never drift from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A `Build` finished; `None` means no valid document could be built
    /// yet (retried after the backoff).
    Built {
        epoch: u64,
        signatures: Option<usize>,
    },
    /// A `CollectSignatures` round finished (peers that failed are retried
    /// next tick).
    Collected {
        epoch: u64,
        signatures: Option<usize>,
    },
    /// A `Mirror` finished; `adopted` if a peer's k-signed document
    /// replaced ours (otherwise retried next tick while below k).
    Mirrored {
        epoch: u64,
        signatures: Option<usize>,
        adopted: bool,
    },
}

/// The configuration the driver needs (all shared by the authorities).
#[derive(Debug, Clone, Copy)]
pub struct DriverParams {
    pub schedule: EpochSchedule,
    /// Registration lead `L` in ms: registration for epoch `e` closes at
    /// `S-L`.
    pub lead_ms: u64,
    /// Signatures needed to publish (k).
    pub threshold: usize,
    /// Pinned authorities, this one included (n).
    pub authorities: usize,
    /// Epochs of registrations and documents kept before the current one.
    pub keep_epochs: u64,
}

/// What the driver knows about one epoch it drives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochProgress {
    signatures: Option<usize>,
    mirrored: bool,
    last_build: Option<u64>,
    last_collect: Option<u64>,
    last_mirror: Option<u64>,
}

impl EpochProgress {
    /// Signatures on the document held for the epoch; `None` before one
    /// was built (or restored, or mirrored).
    pub fn signatures(&self) -> Option<usize> {
        self.signatures
    }

    /// Whether a peer's document was adopted for this epoch.
    pub fn mirrored(&self) -> bool {
        self.mirrored
    }
}

/// The per-epoch state machine; see the module docs.
#[derive(Debug, Clone)]
pub struct EpochDriver {
    p: DriverParams,
    tick_ms: u64,
    build_backoff_ms: u64,
    /// Only the current epoch and the next: see [`Self::poll`].
    epochs: BTreeMap<u64, EpochProgress>,
    /// The current epoch for which `Prune` was issued.
    pruned_for: Option<u64>,
}

impl EpochDriver {
    pub fn new(p: DriverParams) -> Self {
        Self {
            tick_ms: (p.schedule.length_s.saturating_mul(1000) / 24).clamp(100, 1000),
            build_backoff_ms: (p.lead_ms / 4).clamp(1000, 30_000),
            p,
            epochs: BTreeMap::new(),
            pruned_for: None,
        }
    }

    /// Records a document held from before a restart (from the store), so
    /// it is not built again and collection resumes where it stopped.
    pub fn restore(&mut self, epoch: u64, signatures: usize) {
        self.epochs.entry(epoch).or_default().signatures = Some(signatures);
    }

    /// Retry interval of `CollectSignatures` and `Mirror`.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Retry interval of a failed `Build`.
    pub fn build_backoff_ms(&self) -> u64 {
        self.build_backoff_ms
    }

    pub fn progress(&self, epoch: u64) -> Option<&EpochProgress> {
        self.epochs.get(&epoch)
    }

    /// Epochs the driver holds state for (at most two after a `poll`).
    pub fn tracked(&self) -> usize {
        self.epochs.len()
    }

    fn start_ms(&self, epoch: u64) -> u64 {
        self.p.schedule.start(epoch).saturating_mul(1000)
    }

    /// When building `epoch` starts: a quarter of the lead after
    /// registration closed, so late registrations have reached every
    /// authority before anyone merges.
    pub fn vote_at(&self, epoch: u64) -> u64 {
        self.start_ms(epoch).saturating_sub(self.p.lead_ms) + self.p.lead_ms / 4
    }

    /// From when an authority below k adopts a peer's document.
    pub fn mirror_from(&self, epoch: u64) -> u64 {
        self.start_ms(epoch).saturating_sub(self.p.lead_ms / 4)
    }

    /// When driving `epoch` stops (its end).
    pub fn end_ms(&self, epoch: u64) -> u64 {
        self.p.schedule.end(epoch).saturating_mul(1000)
    }

    /// Epochs driven at `now`: the current one and the next (never 0, the
    /// time before genesis).
    fn window(&self, now: u64) -> impl Iterator<Item = u64> + use<> {
        let cur = self.p.schedule.epoch_at(now / 1000);
        let next = cur.saturating_add(1);
        [Some(cur), (next != cur).then_some(next)]
            .into_iter()
            .flatten()
            .filter(|&e| e != 0)
    }

    fn active(&self, epoch: u64, now: u64) -> bool {
        self.vote_at(epoch) <= now && now < self.end_ms(epoch)
    }

    /// What `epoch` (active at `now`) wants next, in the order the shell
    /// must do it, each with the earliest instant it is due.
    fn wanted(&self, epoch: u64, now: u64) -> [Option<(Action, u64)>; 3] {
        let default = EpochProgress::default();
        let p = self.epochs.get(&epoch).unwrap_or(&default);
        let published = p.signatures.is_some_and(|s| s >= self.p.threshold);
        [
            p.signatures.is_none().then(|| {
                let due = due_at(p.last_build, self.build_backoff_ms, now);
                (Action::Build { epoch }, due)
            }),
            p.signatures
                .is_some_and(|s| s < self.p.authorities)
                .then(|| {
                    let due = due_at(p.last_collect, self.tick_ms, now);
                    (Action::CollectSignatures { epoch }, due)
                }),
            (!published).then(|| {
                let due = due_at(p.last_mirror, self.tick_ms, now).max(self.mirror_from(epoch));
                (Action::Mirror { epoch }, due)
            }),
        ]
    }

    /// The next action due at `now`, or `None` when nothing is (then sleep
    /// until [`Self::next_wakeup`]). Call again after each action's
    /// outcome: one instant yields at most one build, one collection and
    /// one mirror per driven epoch, and one prune.
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        let cur = self.p.schedule.epoch_at(now / 1000);
        // Only the current epoch and the next are ever driven; older state
        // would only matter if the clock went back, and then `Build` finds
        // the stored document and reports it (`Outcome::Built`).
        self.epochs
            .retain(|&e, _| e == cur || e == cur.saturating_add(1));
        for epoch in self.window(now) {
            if !self.active(epoch, now) {
                continue;
            }
            let Some((action, _)) = self
                .wanted(epoch, now)
                .into_iter()
                .flatten()
                .find(|&(_, due)| due <= now)
            else {
                continue;
            };
            let p = self.epochs.entry(epoch).or_default();
            match action {
                Action::Build { .. } => p.last_build = Some(now),
                Action::CollectSignatures { .. } => p.last_collect = Some(now),
                Action::Mirror { .. } => p.last_mirror = Some(now),
                Action::Prune { .. } => {}
            }
            return Some(action);
        }
        if self.pruned_for != Some(cur) {
            self.pruned_for = Some(cur);
            let below = cur.saturating_sub(self.p.keep_epochs);
            if below > 0 {
                return Some(Action::Prune { below });
            }
        }
        None
    }

    /// Feeds back what an action did. Outcomes for epochs no longer driven
    /// (the clock moved on while the action ran) are ignored.
    pub fn on_outcome(&mut self, outcome: Outcome) {
        let (epoch, signatures, adopted) = match outcome {
            Outcome::Built { epoch, signatures } | Outcome::Collected { epoch, signatures } => {
                (epoch, signatures, false)
            }
            Outcome::Mirrored {
                epoch,
                signatures,
                adopted,
            } => (epoch, signatures, adopted),
        };
        if let Some(p) = self.epochs.get_mut(&epoch) {
            p.signatures = signatures;
            p.mirrored |= adopted;
        }
    }

    /// When to poll next: the earliest instant something may be due, and
    /// at most one tick after `now` — sleeps are on a monotonic timer and
    /// the schedule is on the wall clock, so a wall-clock step is noticed
    /// within a tick. Greater than `now` once `poll(now)` returned `None`
    /// (unless `now` is near `u64::MAX`).
    pub fn next_wakeup(&self, now: u64) -> u64 {
        let mut at = now.saturating_add(self.tick_ms);
        let cur = self.p.schedule.epoch_at(now / 1000);
        if self.pruned_for != Some(cur) && cur.saturating_sub(self.p.keep_epochs) > 0 {
            return now;
        }
        // The next epoch's vote, and the current epoch's end (the window
        // moves and a prune is due), may come before the next tick.
        for epoch in [cur, cur.saturating_add(1), cur.saturating_add(2)] {
            for t in [
                self.vote_at(epoch),
                self.mirror_from(epoch),
                self.end_ms(epoch),
            ] {
                if t > now {
                    at = at.min(t);
                }
            }
        }
        for epoch in self.window(now) {
            if self.active(epoch, now) {
                for (_, due) in self.wanted(epoch, now).into_iter().flatten() {
                    at = at.min(due.max(now));
                }
            }
        }
        at
    }
}

/// Earliest instant a retry of something last done at `last` is due; a
/// clock that went back makes it due at once (waiting for the old instant
/// could stall the epoch for as long as the step).
fn due_at(last: Option<u64>, interval: u64, now: u64) -> u64 {
    match last {
        Some(t) if t <= now => t.saturating_add(interval),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Epoch 1 starts at 1000 s; 60 s epochs, 8 s lead: tick 1 s, build
    /// backoff 2 s; 3 authorities, k = 2.
    const GENESIS_S: u64 = 1000;

    fn params(keep_epochs: u64) -> DriverParams {
        DriverParams {
            schedule: EpochSchedule {
                genesis: GENESIS_S,
                length_s: 60,
            },
            lead_ms: 8000,
            threshold: 2,
            authorities: 3,
            keep_epochs,
        }
    }

    fn start_ms(epoch: u64) -> u64 {
        (GENESIS_S + (epoch - 1) * 60) * 1000
    }

    /// The authority and its peers, as the driver's actions see them.
    #[derive(Default)]
    struct World {
        /// Epoch → signatures on the document held.
        docs: BTreeMap<u64, usize>,
        cannot_build: bool,
        /// Peers that hand out a matching signature when asked.
        peers_signing: usize,
        /// Signers of a k-signed peer document available to mirror.
        peer_document: Option<usize>,
        pruned_below: u64,
    }

    impl World {
        fn run(&mut self, a: Action) -> Option<Outcome> {
            match a {
                Action::Build { epoch } => {
                    if !self.docs.contains_key(&epoch) && !self.cannot_build {
                        self.docs.insert(epoch, 1);
                    }
                    let signatures = self.docs.get(&epoch).copied();
                    Some(Outcome::Built { epoch, signatures })
                }
                Action::CollectSignatures { epoch } => {
                    if let Some(s) = self.docs.get_mut(&epoch) {
                        *s = (*s).max(1 + self.peers_signing);
                    }
                    let signatures = self.docs.get(&epoch).copied();
                    Some(Outcome::Collected { epoch, signatures })
                }
                Action::Mirror { epoch } => {
                    let adopted = self.peer_document.is_some();
                    if let Some(s) = self.peer_document {
                        self.docs.insert(epoch, s);
                    }
                    let signatures = self.docs.get(&epoch).copied();
                    Some(Outcome::Mirrored {
                        epoch,
                        signatures,
                        adopted,
                    })
                }
                Action::Prune { below } => {
                    self.docs.retain(|&e, _| e >= below);
                    self.pruned_below = below;
                    None
                }
            }
        }
    }

    /// The driver under a fake clock, looping exactly like
    /// `Authority::run_scheduler`.
    struct Sim {
        driver: EpochDriver,
        world: World,
        now: u64,
        log: Vec<(u64, Action)>,
    }

    impl Sim {
        fn new(keep_epochs: u64, now: u64) -> Self {
            Self {
                driver: EpochDriver::new(params(keep_epochs)),
                world: World::default(),
                now,
                log: Vec::new(),
            }
        }

        /// One round at the current instant: every due action, executed.
        fn round(&mut self) -> Vec<Action> {
            let mut done = Vec::new();
            while let Some(a) = self.driver.poll(self.now) {
                done.push(a);
                assert!(done.len() <= 8, "unbounded round at {}: {done:?}", self.now);
                self.log.push((self.now, a));
                if let Some(o) = self.world.run(a) {
                    self.driver.on_outcome(o);
                }
            }
            done
        }

        /// Rounds at each wake-up until `until` (inclusive).
        fn run_until(&mut self, until: u64) {
            loop {
                self.round();
                let next = self.driver.next_wakeup(self.now);
                assert!(next > self.now, "wake-up {next} not after {}", self.now);
                assert!(
                    next <= self.now + self.driver.tick_ms(),
                    "slept over a tick"
                );
                if next > until {
                    return;
                }
                self.now = next;
            }
        }

        fn actions_for(&self, epoch: u64) -> Vec<(u64, Action)> {
            self.log
                .iter()
                .copied()
                .filter(|(_, a)| match a {
                    Action::Build { epoch: e }
                    | Action::CollectSignatures { epoch: e }
                    | Action::Mirror { epoch: e } => *e == epoch,
                    Action::Prune { .. } => false,
                })
                .collect()
        }

        fn times_of(&self, wanted: Action) -> Vec<u64> {
            self.log
                .iter()
                .filter(|(_, a)| *a == wanted)
                .map(|(t, _)| *t)
                .collect()
        }
    }

    /// A sim in epoch 1 whose document is fully signed, so only epoch 2
    /// makes noise.
    fn sim_before_epoch_2(keep_epochs: u64) -> Sim {
        let mut s = Sim::new(keep_epochs, start_ms(1) + 1000);
        s.world.docs.insert(1, 3);
        s.driver.restore(1, 3);
        s
    }

    #[test]
    fn timeline_of_one_epoch_build_at_vote_then_collect_until_all_signed_then_prune() {
        let mut s = sim_before_epoch_2(1);
        s.world.peers_signing = 2;
        let vote = s.driver.vote_at(2);
        assert_eq!(vote, start_ms(2) - 8000 + 2000);
        s.run_until(vote - 1);
        assert!(s.log.is_empty(), "nothing before the vote: {:?}", s.log);
        s.run_until(start_ms(3) + 5000);
        assert_eq!(
            s.actions_for(2),
            vec![
                (vote, Action::Build { epoch: 2 }),
                (vote, Action::CollectSignatures { epoch: 2 }),
            ],
            "built at the vote, all signatures in one round, nothing after"
        );
        // Epoch 3 follows the same timeline; the prune comes exactly at each
        // epoch boundary, once.
        assert_eq!(
            s.actions_for(3)[0],
            (s.driver.vote_at(3), Action::Build { epoch: 3 })
        );
        assert_eq!(
            s.log
                .iter()
                .filter(|(_, a)| matches!(a, Action::Prune { .. }))
                .copied()
                .collect::<Vec<_>>(),
            vec![
                (start_ms(2), Action::Prune { below: 1 }),
                (start_ms(3), Action::Prune { below: 2 }),
            ]
        );
        assert_eq!(s.world.pruned_below, 2);
        assert!(s.world.docs.keys().all(|&e| e >= 2));
    }

    #[test]
    fn collects_every_tick_past_k_until_all_n_and_never_mirrors_once_published() {
        let mut s = sim_before_epoch_2(1);
        let vote = s.driver.vote_at(2);
        s.run_until(vote + 3000);
        let collect = Action::CollectSignatures { epoch: 2 };
        assert_eq!(
            s.times_of(collect),
            vec![vote, vote + 1000, vote + 2000, vote + 3000],
            "one collection per tick while no peer signs"
        );
        s.world.peers_signing = 1; // k = 2 reached at the next round
        s.run_until(start_ms(2) + 2000);
        assert_eq!(s.driver.progress(2).unwrap().signatures(), Some(2));
        assert!(s.times_of(Action::Mirror { epoch: 2 }).is_empty());
        assert_eq!(
            s.times_of(collect).last(),
            Some(&(start_ms(2) + 2000)),
            "published at k, still collecting towards n"
        );
        s.world.peers_signing = 2;
        s.run_until(start_ms(2) + 10_000);
        assert_eq!(s.times_of(collect).last(), Some(&(start_ms(2) + 3000)));
        assert_eq!(s.driver.progress(2).unwrap().signatures(), Some(3));
    }

    #[test]
    fn a_failing_peer_costs_one_request_per_tick_and_mirroring_from_s_minus_l_over_4() {
        // Neither peer answers with a signature over our bytes (down, or it
        // built different bytes): our document stays at 1 of k = 2.
        let mut s = sim_before_epoch_2(48);
        let (vote, mirror_from) = (s.driver.vote_at(2), s.driver.mirror_from(2));
        assert_eq!(mirror_from, start_ms(2) - 2000);
        s.run_until(mirror_from - 1);
        assert!(s.times_of(Action::Mirror { epoch: 2 }).is_empty());
        s.run_until(mirror_from + 2500);
        let mirrors = s.times_of(Action::Mirror { epoch: 2 });
        assert_eq!(
            mirrors,
            vec![mirror_from, mirror_from + 1000, mirror_from + 2000],
            "mirror from S-L/4, retried every tick while no peer serves a k-signed document"
        );
        // A peer publishes its k-signed document: adopted at the next
        // round, then no more mirroring; collection goes on towards n.
        s.world.peer_document = Some(2);
        s.run_until(start_ms(2) + 10_000);
        let p = s.driver.progress(2).unwrap();
        assert!(p.mirrored());
        assert_eq!(p.signatures(), Some(2));
        assert_eq!(
            s.times_of(Action::Mirror { epoch: 2 }).last(),
            Some(&(mirror_from + 3000))
        );
        // The failing peer is asked once per tick, no more, until the
        // epoch ends; then epoch 2 is no longer driven.
        s.run_until(start_ms(3) + 5000);
        let collects = s.times_of(Action::CollectSignatures { epoch: 2 });
        assert_eq!(collects.len() as u64, (start_ms(3) - vote) / 1000);
        assert!(collects.windows(2).all(|w| w[1] - w[0] >= 1000));
        assert!(collects.iter().all(|&t| t < start_ms(3)));
        assert!(
            s.log
                .iter()
                .all(|(_, a)| !matches!(a, Action::Prune { .. }))
        );
    }

    #[test]
    fn a_failed_build_is_retried_after_the_backoff_and_mirroring_does_not_wait_for_it() {
        let mut s = sim_before_epoch_2(48);
        s.world.cannot_build = true;
        let vote = s.driver.vote_at(2);
        let mirror_from = s.driver.mirror_from(2);
        s.run_until(mirror_from - 1);
        assert_eq!(s.driver.build_backoff_ms(), 2000);
        assert_eq!(
            s.times_of(Action::Build { epoch: 2 }),
            vec![vote, vote + 2000]
        );
        assert!(
            s.times_of(Action::CollectSignatures { epoch: 2 })
                .is_empty()
        );
        assert!(s.times_of(Action::Mirror { epoch: 2 }).is_empty());
        // Still nothing built at S-L/4: a peer's document is the way out.
        s.run_until(mirror_from);
        assert_eq!(
            s.times_of(Action::Build { epoch: 2 }),
            vec![vote, vote + 2000, vote + 4000]
        );
        assert_eq!(s.times_of(Action::Mirror { epoch: 2 }), vec![mirror_from]);
        s.world.cannot_build = false;
        s.world.peers_signing = 2;
        s.run_until(start_ms(2));
        let built = *s.times_of(Action::Build { epoch: 2 }).last().unwrap();
        assert_eq!((built - vote) % 2000, 0, "retries keep the backoff");
        assert_eq!(
            s.times_of(Action::CollectSignatures { epoch: 2 }),
            vec![built],
            "collected in the round that built"
        );
        assert_eq!(s.driver.progress(2).unwrap().signatures(), Some(3));
    }

    #[test]
    fn a_restart_mid_epoch_resumes_collecting_without_building_again() {
        let mut s = sim_before_epoch_2(1);
        let vote = s.driver.vote_at(2);
        s.run_until(vote + 1500);
        assert_eq!(s.world.docs.get(&2), Some(&1));

        // Restart: a new driver, restored from the store, a little later.
        let mut r = Sim::new(1, vote + 2600);
        r.world = std::mem::take(&mut s.world);
        for (&e, &sigs) in &r.world.docs {
            r.driver.restore(e, sigs);
        }
        assert_eq!(
            r.round(),
            vec![Action::CollectSignatures { epoch: 2 }],
            "the stored document is reused, never rebuilt (one document per epoch)"
        );
        // A restart with a published (k) document: no mirror, collection
        // towards n continues.
        let mut r = Sim::new(48, start_ms(2) - 500);
        r.world.docs.insert(2, 2);
        r.driver.restore(2, 2);
        r.run_until(start_ms(2) + 1000);
        assert!(r.times_of(Action::Build { epoch: 2 }).is_empty());
        assert!(r.times_of(Action::Mirror { epoch: 2 }).is_empty());
        assert_eq!(r.times_of(Action::CollectSignatures { epoch: 2 }).len(), 2);
        // Even a driver that lost track (no restore) only asks to build,
        // and the store's answer stops it.
        let mut r = Sim::new(48, start_ms(2) - 500);
        r.world.docs.insert(2, 3);
        r.run_until(start_ms(2) + 3000);
        assert_eq!(
            r.actions_for(2),
            vec![(start_ms(2) - 500, Action::Build { epoch: 2 })]
        );
    }

    #[test]
    fn a_jump_over_many_epochs_yields_one_bounded_round() {
        let mut s = sim_before_epoch_2(3);
        s.world.peers_signing = 2;
        s.run_until(start_ms(2) + 1000);
        // Suspended for an hour and a half.
        s.now = start_ms(92) - 1000;
        let round = s.round();
        assert_eq!(
            round,
            vec![
                Action::Build { epoch: 91 },
                Action::CollectSignatures { epoch: 91 },
                Action::Build { epoch: 92 },
                Action::CollectSignatures { epoch: 92 },
                Action::Prune { below: 88 },
            ],
            "the current and next epochs only, one prune"
        );
        assert_eq!(s.driver.tracked(), 2);
        assert_eq!(s.driver.next_wakeup(s.now), s.now + 1000);
        assert!(s.round().is_empty());
    }

    #[test]
    fn a_clock_going_back_neither_panics_nor_rebuilds_nor_stalls() {
        let mut s = sim_before_epoch_2(1);
        let vote = s.driver.vote_at(2);
        s.run_until(vote + 5000);
        let collects = s.times_of(Action::CollectSignatures { epoch: 2 }).len();
        // An NTP step back of 4 s within the epoch: collection is due at
        // once (not after the 4 s are lived again); no second build.
        s.now = vote + 1000;
        assert_eq!(s.round(), vec![Action::CollectSignatures { epoch: 2 }]);
        s.run_until(vote + 3000);
        assert_eq!(
            s.times_of(Action::CollectSignatures { epoch: 2 }).len(),
            collects + 3
        );
        assert_eq!(s.times_of(Action::Build { epoch: 2 }).len(), 1);
        // Back before genesis, to zero and to the end of time: bounded
        // rounds, no panic.
        for now in [GENESIS_S * 1000 - 1, 0, u64::MAX - 1, u64::MAX, 5, u64::MAX] {
            s.now = now;
            assert!(s.round().len() <= 7);
            assert!(s.driver.next_wakeup(now) >= now);
            assert!(s.driver.tracked() <= 2);
        }
    }

    #[test]
    fn the_wakeup_is_never_later_than_the_vote() {
        // Long epochs: the tick is 1 s, the vote falls between ticks.
        let mut d = EpochDriver::new(DriverParams {
            lead_ms: 1234,
            ..params(48)
        });
        d.restore(1, 3);
        let vote = d.vote_at(2);
        let mut now = start_ms(1) + 777;
        while now < vote {
            assert_eq!(d.poll(now), None);
            now = d.next_wakeup(now);
        }
        assert_eq!(now, vote, "woken exactly at the vote");
        assert_eq!(d.poll(now), Some(Action::Build { epoch: 2 }));
    }
}
