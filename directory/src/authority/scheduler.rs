//! The I/O shell around the [`EpochDriver`]: one async loop that reads the
//! clock, executes the driver's actions against the peers and the store,
//! feeds the outcomes back and sleeps. *When* anything happens is decided
//! in `driver.rs`; this file only knows *how*.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use loopmix_core::pki::api::{self, DescriptorList};
use loopmix_core::pki::{
    AuthoritySignature, DOCUMENT_VERSION, Descriptor, EpochDocument, SignedTopology, build_document,
};
use loopmix_core::topology::Topology;
use tokio_util::sync::CancellationToken;

use super::driver::{Action, DriverParams, EpochDriver, Outcome};
use super::state::Doc;
use super::{Authority, now_ms};

impl Authority {
    /// Drives building, signing, signature exchange and pruning until `cancel`.
    pub async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        let mut driver = self.epoch_driver();
        loop {
            let now = now_ms();
            while let Some(action) = driver.poll(now) {
                if let Some(outcome) = self.clone().execute(action, now).await {
                    driver.on_outcome(outcome);
                }
            }
            self.update_gauges();
            // From the round's start, not from now: a slow round (peers
            // timing out) is still followed by a full pause.
            let wait = driver.next_wakeup(now).saturating_sub(now);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    /// A driver that knows the documents restored from the store, so none
    /// is built twice across a restart.
    fn epoch_driver(&self) -> EpochDriver {
        let mut driver = EpochDriver::new(DriverParams {
            schedule: self.schedule,
            lead_ms: self.lead_ms,
            threshold: self.trust.threshold(),
            authorities: self.trust.authorities().len(),
            keep_epochs: self.cfg.limits.keep_epochs,
        });
        for (&epoch, d) in &self.state().docs {
            driver.restore(epoch, d.sigs.len());
        }
        driver
    }

    /// Executes one action; `now` is the round's clock reading.
    async fn execute(self: Arc<Self>, action: Action, now: u64) -> Option<Outcome> {
        match action {
            Action::Build { epoch } => {
                self.clone().build(epoch).await;
                Some(Outcome::Built {
                    epoch,
                    signatures: self.signatures(epoch),
                })
            }
            Action::CollectSignatures { epoch } => {
                self.clone().collect_signatures(epoch).await;
                Some(Outcome::Collected {
                    epoch,
                    signatures: self.signatures(epoch),
                })
            }
            Action::Mirror { epoch } => {
                let adopted = self.clone().mirror(epoch, now).await;
                Some(Outcome::Mirrored {
                    epoch,
                    signatures: self.signatures(epoch),
                    adopted,
                })
            }
            Action::Prune { below } => {
                self.prune(below).await;
                None
            }
        }
    }

    /// Merges registrations (own + peers'), builds, signs and persists.
    /// Does nothing if a document is already held: one document per epoch.
    async fn build(self: Arc<Self>, target: u64) {
        let mut descriptors: Vec<Descriptor> = {
            let st = self.state();
            if st.docs.contains_key(&target) {
                return;
            }
            st.regs
                .get(&target)
                .map(|r| r.by_id.values().map(|v| v.descriptor.clone()).collect())
                .unwrap_or_default()
        };
        let own = descriptors.len();
        let max = self.cfg.limits.max_descriptors_per_epoch;
        let path = api::path_descriptors(target);
        for (peer, result) in self
            .ask(&self.cfg.peers, &path, max.saturating_mul(1024))
            .await
        {
            let list = match result.and_then(|(status, body)| {
                if status != 200 {
                    return Err(format!("HTTP {status}"));
                }
                serde_json::from_slice::<DescriptorList>(&body).map_err(|e| e.to_string())
            }) {
                Ok(l) if l.epoch == target => l,
                Ok(_) => {
                    tracing::warn!(peer = %peer.key, "peer answered for another epoch");
                    continue;
                }
                Err(e) => {
                    self.peer_failed(&peer, target, "descriptors", &e);
                    continue;
                }
            };
            let mut bad = 0;
            for sd in list.descriptors.into_iter().take(max) {
                match sd.verify() {
                    Ok(v) if v.descriptor.epoch == target => descriptors.push(v.descriptor),
                    _ => bad += 1,
                }
            }
            if bad > 0 {
                tracing::warn!(peer = %peer.key, epoch = target, bad, "peer served descriptors that do not verify; ignored");
            }
        }
        let topology = build_document(target, &self.cfg.network.params(target), &descriptors);
        if let Err(e) = Topology::validate(&topology) {
            if self.warn_once(target, "build") {
                self.metrics.build_failures.inc();
                tracing::warn!(
                    epoch = target,
                    registered = own,
                    merged = topology.nodes.len(),
                    error = %e,
                    "cannot build a valid document for this epoch yet; retrying"
                );
            }
            return;
        }
        let doc = EpochDocument {
            version: DOCUMENT_VERSION,
            valid_from: self.schedule.start(target),
            valid_until: self
                .schedule
                .end(target)
                .saturating_add(self.cfg.epoch.validity_grace.as_secs()),
            epoch_length_s: self.schedule.length_s,
            topology,
        };
        let bytes = match doc.canonical_bytes() {
            Ok(b) if b.len() <= self.cfg.limits.max_document_bytes => b,
            Ok(b) => {
                if self.warn_once(target, "size") {
                    self.metrics.build_failures.inc();
                    tracing::error!(
                        epoch = target,
                        len = b.len(),
                        "document exceeds limits.max_document_bytes"
                    );
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "serialising document");
                return;
            }
        };
        let sig = AuthoritySignature::sign(&bytes, &self.identity);
        let Some(raw) = sig.raw() else { return };
        let this = self.clone();
        let stored = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || {
                this.store
                    .put_document(target, &bytes, &[(*this.id.as_bytes(), raw)])
            })
            .await
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "persisting document; not signing");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "persisting document");
                return;
            }
        }
        let nodes = doc.topology.nodes.len();
        {
            let mut st = self.state();
            st.docs.insert(
                target,
                Doc {
                    bytes: Arc::new(bytes),
                    valid_from: doc.valid_from,
                    valid_until: doc.valid_until,
                    sigs: BTreeMap::from([(self.id, raw)]),
                },
            );
        }
        self.metrics.built.inc();
        tracing::info!(
            epoch = target,
            nodes,
            registered_here = own,
            "built and signed topology document"
        );
    }

    /// Fetches each missing peer's signature and keeps those that verify over
    /// our bytes.
    async fn collect_signatures(self: Arc<Self>, target: u64) {
        let (bytes, have) = {
            let st = self.state();
            let Some(d) = st.docs.get(&target) else {
                return;
            };
            (
                d.bytes.clone(),
                d.sigs.keys().copied().collect::<HashSet<_>>(),
            )
        };
        let missing = self.peers_missing(&have);
        if missing.is_empty() {
            return;
        }
        let path = api::path_signature(target);
        for (peer, result) in self.ask(&missing, &path, 4096).await {
            let sig = match result {
                Ok((200, body)) => match serde_json::from_slice::<AuthoritySignature>(&body) {
                    Ok(s) => s,
                    Err(e) => {
                        self.peer_failed(&peer, target, "signature", &e.to_string());
                        continue;
                    }
                },
                // Not signed yet (or it could not build): normal, retry later.
                Ok((404, _)) => continue,
                Ok((status, _)) => {
                    self.peer_failed(&peer, target, "signature", &format!("HTTP {status}"));
                    continue;
                }
                Err(e) => {
                    self.peer_failed(&peer, target, "signature", &e);
                    continue;
                }
            };
            let raw = sig.raw();
            if sig.authority != peer.key || !sig.verify(&bytes) || raw.is_none() {
                self.metrics
                    .signature_mismatches
                    .with_label_values(&[peer.key.to_string().as_str()])
                    .inc();
                if self.warn_once(target, &format!("mismatch {}", peer.key)) {
                    tracing::warn!(
                        epoch = target,
                        peer = %peer.key,
                        "peer's signature does not verify over our document: it built different bytes (different registrations or configuration)"
                    );
                }
                continue;
            }
            let Some(raw) = raw else { continue };
            let this = self.clone();
            let key = *peer.key.as_bytes();
            let stored =
                tokio::task::spawn_blocking(move || this.store.put_signature(target, key, raw))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(epoch = target, "persisting a peer signature failed");
                continue;
            }
            let count = {
                let mut st = self.state();
                let Some(d) = st.docs.get_mut(&target) else {
                    continue;
                };
                // Only if the document was not replaced meanwhile.
                if !Arc::ptr_eq(&d.bytes, &bytes) {
                    continue;
                }
                d.sigs.insert(peer.key, raw);
                d.sigs.len()
            };
            tracing::info!(epoch = target, peer = %peer.key, signatures = count, "peer signature added");
            if count == self.trust.threshold() {
                tracing::info!(
                    epoch = target,
                    signatures = count,
                    "topology document published"
                );
            }
        }
    }

    /// Adopts a peer's k-signed document when ours did not reach k; `now`
    /// (ms) checks its validity window. Returns whether one was adopted.
    async fn mirror(self: Arc<Self>, target: u64, now: u64) -> bool {
        let path = api::path_topology(target);
        let max = self.cfg.limits.max_document_bytes.div_ceil(3) * 4 + 64 * 1024;
        for (peer, result) in self.ask(&self.cfg.peers, &path, max).await {
            let Ok((200, body)) = result else { continue };
            let Ok(signed) = serde_json::from_slice::<SignedTopology>(&body) else {
                continue;
            };
            let ahead = self.schedule.length_s;
            let v = match self.trust.verify_upcoming(&signed, now / 1000, ahead) {
                Ok(v) if v.epoch() == target => v,
                Ok(_) => continue,
                Err(e) => {
                    if self.warn_once(target, &format!("mirror {}", peer.key)) {
                        tracing::warn!(epoch = target, peer = %peer.key, error = %e, "peer's document does not verify; not mirrored");
                    }
                    continue;
                }
            };
            let mut sigs = BTreeMap::new();
            for s in &signed.signatures {
                if v.signers().contains(&s.authority)
                    && let Some(raw) = s.raw()
                {
                    sigs.insert(s.authority, raw);
                }
            }
            let bytes = v.bytes().to_vec();
            let rows: Vec<([u8; 32], [u8; 64])> =
                sigs.iter().map(|(a, s)| (*a.as_bytes(), *s)).collect();
            let this = self.clone();
            let stored = {
                let bytes = bytes.clone();
                tokio::task::spawn_blocking(move || this.store.put_document(target, &bytes, &rows))
                    .await
            };
            if !matches!(stored, Ok(Ok(()))) {
                tracing::error!(epoch = target, "persisting a mirrored document failed");
                return false;
            }
            {
                let mut st = self.state();
                st.docs.insert(
                    target,
                    Doc {
                        bytes: Arc::new(bytes),
                        valid_from: v.valid_from(),
                        valid_until: v.valid_until(),
                        sigs,
                    },
                );
            }
            self.metrics.mirrored.inc();
            tracing::warn!(
                epoch = target,
                from = %peer.key,
                signers = v.signers().len(),
                "our document did not reach the threshold; serving the peers' k-signed document"
            );
            return true;
        }
        false
    }

    /// Forgets registrations and documents of epochs before `below`, in
    /// memory and in the store.
    async fn prune(self: &Arc<Self>, below: u64) {
        {
            let mut st = self.state();
            st.regs = st.regs.split_off(&below);
            st.docs = st.docs.split_off(&below);
            st.warned.retain(|(e, _)| *e >= below);
        }
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.store.prune_before(below)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the database"),
            Err(e) => tracing::warn!(error = %e, "pruning the database"),
        }
    }
}
