//! The network status page served at `/`: plain server-rendered HTML for
//! operators (no script, no external asset, inline CSS only).
//!
//! * this module: *what* the page shows, as a [`StatusView`] snapshot of
//!   the authority (documents, signatures, registrations), its liveness
//!   service and its configuration; and how often it is built (a rendered
//!   page is reused for [`CACHE_MS`]; page views are rate limited per
//!   client IP and overall).
//! * [`render`]: the HTML, with maud, which escapes every interpolated
//!   string: node-supplied text (a descriptor's `software`) can never
//!   become markup. The response carries a Content-Security-Policy that
//!   forbids scripts and images besides.
//! * [`prediction`]: ε and latency for the configured parameters, from one
//!   bounded run of the simulator at start-up.

pub mod prediction;
pub mod render;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;

use axum::body::Bytes;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use loopmix_core::keys::NodeId;
use loopmix_core::pki::api::EpochInfo;
use loopmix_core::pki::{EpochDocument, SignedTopology};
use loopmix_core::topology::Role;

use crate::authority::Authority;
use crate::config::NetworkSection;
use crate::liveness::Liveness;
use crate::liveness::prober::Observed;
pub use prediction::{Prediction, PredictionState};

/// Page views per second per client IP, sustained (429 beyond).
pub const VIEWS_PER_IP_PER_S: u32 = 2;
/// Page views per client IP in a burst.
pub const VIEW_BURST_PER_IP: u32 = 20;
/// Page views per second from everyone together.
pub const VIEWS_PER_S: u32 = 20;
/// Page views from everyone in a burst.
pub const VIEW_BURST: u32 = 100;
/// A rendered page is served again for this long (so at most one page is
/// built per second, however many views the limits let through).
pub const CACHE_MS: u64 = 1000;
/// `Content-Security-Policy` of the page: nothing but its own inline CSS.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One node of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: NodeId,
    pub address: SocketAddr,
    pub role: Role,
    /// From the node's own descriptor (free text it chose): escape it.
    pub software: Option<String>,
    /// In the published (k-signed) liveness list: `None` without a valid
    /// list (or with liveness disabled).
    pub listed_down: Option<bool>,
    /// This authority's own probes (`None`: not probed).
    pub observed: Option<Observed>,
}

/// A published topology document.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochView {
    pub epoch: u64,
    pub valid_from: u64,
    pub valid_until: u64,
    /// Authorities whose signatures the document carries.
    pub signers: Vec<NodeId>,
    /// Mixes by layer (index 0 is layer 1).
    pub layers: Vec<Vec<NodeRow>>,
    pub providers: Vec<NodeRow>,
}

/// The next epoch's document at this authority.
#[derive(Debug, Clone, PartialEq)]
pub enum NextView {
    Published(EpochView),
    /// Built and signed here, waiting for peers' signatures.
    Signing {
        have: usize,
    },
    NotBuilt,
}

/// The liveness service's state.
#[derive(Debug, Clone, PartialEq)]
pub enum LivenessView {
    Disabled,
    /// Enabled, but no k-signed list is valid now.
    NoList,
    List {
        round: u64,
        valid_until: u64,
        down: usize,
    },
}

/// One pinned authority.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorityRow {
    pub id: NodeId,
    /// This authority, or where its peer is reached (from the config).
    pub this_one: bool,
    pub url: Option<String>,
}

/// Everything the page shows, taken at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub authority: NodeId,
    /// Unix seconds.
    pub now: u64,
    pub k: usize,
    pub authorities: Vec<AuthorityRow>,
    pub epoch: EpochInfo,
    /// The document in force, or why there is none.
    pub current: Result<EpochView, String>,
    pub next_epoch: u64,
    pub next: NextView,
    /// Descriptors registered here for the next epoch (what its document
    /// is built from), sorted by id.
    pub registered_next: Vec<NodeRow>,
    pub liveness: LivenessView,
    pub network: NetworkSection,
    /// Parameters below the anonymity floors (docs/THREAT_MODEL.md).
    pub warnings: Vec<String>,
    pub prediction: PredictionState,
}

/// The page's limits, cache and prediction (shared by every request).
pub struct StatusPage {
    prediction: Prediction,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    cache: Mutex<Option<(u64, Bytes)>>,
}

fn quota(rate: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

impl StatusPage {
    pub fn new(network: NetworkSection) -> Self {
        Self {
            prediction: Prediction::new(network),
            per_ip: RateLimiter::keyed(quota(VIEWS_PER_IP_PER_S, VIEW_BURST_PER_IP)),
            global: RateLimiter::direct(quota(VIEWS_PER_S, VIEW_BURST)),
            cache: Mutex::new(None),
        }
    }

    pub fn prediction(&self) -> &Prediction {
        &self.prediction
    }

    /// Whether a view from `ip` is within the limits (and counts it).
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.per_ip.check_key(&ip).is_ok() && self.global.check().is_ok()
    }

    /// Forgets per-IP limiter entries back to a full bucket.
    pub fn shrink(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
    }

    /// The page at `now_ms`, rendered at most once per [`CACHE_MS`].
    /// Blocking work (parses the document): call off the async runtime.
    pub fn page(&self, authority: &Authority, liveness: Option<&Liveness>, now_ms: u64) -> Bytes {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, page)) = cache.as_ref()
            && now_ms >= *at
            && now_ms - at < CACHE_MS
        {
            return page.clone();
        }
        let view = snapshot(authority, liveness, self.prediction.state(), now_ms);
        let page = Bytes::from(render::page(&view));
        *cache = Some((now_ms, page.clone()));
        page
    }
}

/// The nodes of `signed` as table rows, mixes by layer and providers;
/// `software` from the descriptors registered here for its epoch.
fn doc_view(
    signed: &SignedTopology,
    authority: &Authority,
    liveness: Option<&Liveness>,
    listed: Option<&BTreeSet<NodeId>>,
) -> Result<EpochView, String> {
    let bytes = signed
        .document_bytes()
        .map_err(|e| format!("document is not base64: {e}"))?;
    let doc: EpochDocument =
        serde_json::from_slice(&bytes).map_err(|e| format!("document does not parse: {e}"))?;
    let software = authority.registered(doc.epoch());
    let ids: Vec<NodeId> = doc.topology.nodes.iter().map(|n| n.id).collect();
    let observed = liveness.map(|l| l.observed(&ids));
    let mut layers = vec![Vec::new(); usize::from(doc.topology.params.layers)];
    let mut providers = Vec::new();
    for (i, n) in doc.topology.nodes.iter().enumerate() {
        let row = NodeRow {
            id: n.id,
            address: n.address,
            role: n.role,
            software: software.get(&n.id).map(|d| d.software.clone()),
            listed_down: listed.map(|l| l.contains(&n.id)),
            observed: observed.as_ref().and_then(|o| o.get(i).copied().flatten()),
        };
        match (n.role, n.layer) {
            (Role::Mix, Some(l)) => {
                if let Some(layer) = layers.get_mut(usize::from(l).saturating_sub(1)) {
                    layer.push(row);
                }
            }
            _ => providers.push(row),
        }
    }
    Ok(EpochView {
        epoch: doc.epoch(),
        valid_from: doc.valid_from,
        valid_until: doc.valid_until,
        signers: signed.signatures.iter().map(|s| s.authority).collect(),
        layers,
        providers,
    })
}

/// Everything the page shows at `now_ms`.
pub fn snapshot(
    authority: &Authority,
    liveness: Option<&Liveness>,
    prediction: PredictionState,
    now_ms: u64,
) -> StatusView {
    let cfg = authority.config();
    let epoch = authority.epoch_info(now_ms);
    let published = liveness.and_then(|l| l.published_down(now_ms));
    let listed = published.as_ref().map(|(_, _, down)| down);
    let liveness_view = match (liveness, &published) {
        (None, _) => LivenessView::Disabled,
        (Some(_), None) => LivenessView::NoList,
        (Some(_), Some((round, valid_until, down))) => LivenessView::List {
            round: *round,
            valid_until: *valid_until,
            down: down.len(),
        },
    };
    let current = authority
        .current(now_ms)
        .map_err(|e| e.to_string())
        .and_then(|signed| doc_view(&signed, authority, liveness, listed));
    let next_epoch = epoch.epoch + 1;
    let next = match authority.published(next_epoch) {
        Ok(signed) => doc_view(&signed, authority, liveness, listed)
            .map(NextView::Published)
            .unwrap_or(NextView::NotBuilt),
        Err(_) => match authority.signatures(next_epoch) {
            Some(have) => NextView::Signing { have },
            None => NextView::NotBuilt,
        },
    };
    let registered_next = authority
        .registered(next_epoch)
        .values()
        .map(|d| NodeRow {
            id: d.identity,
            address: d.address,
            role: d.role,
            software: Some(d.software.clone()),
            listed_down: None,
            observed: None,
        })
        .collect();
    let authorities = std::iter::once(AuthorityRow {
        id: authority.id(),
        this_one: true,
        url: None,
    })
    .chain(cfg.peers.iter().map(|p| AuthorityRow {
        id: p.key,
        this_one: false,
        url: p.base_url().ok(),
    }))
    .collect();
    StatusView {
        authority: authority.id(),
        now: now_ms / 1000,
        k: authority.trust().threshold(),
        authorities,
        epoch,
        current,
        next_epoch,
        next,
        registered_next,
        liveness: liveness_view,
        network: cfg.network.clone(),
        warnings: cfg.privacy_warnings(),
        prediction,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use loopmix_core::keys::{IdentityKeypair, SphinxKeypair};
    use loopmix_core::pki::Descriptor;

    use super::*;
    use crate::config::{CONFIG_FILE, DirectoryConfig, EpochSection};

    /// A one-authority network (k = 1) with 60 s epochs, stored in `dir`.
    pub(crate) fn authority(dir: &std::path::Path) -> Authority {
        let e = EpochSection::with_length(Duration::from_secs(60), None);
        let t = DirectoryConfig::template("127.0.0.1:0".parse().unwrap(), 1, &e, &[]);
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, t).unwrap();
        let cfg = DirectoryConfig::load(&path).unwrap();
        Authority::new(cfg, IdentityKeypair::generate()).unwrap()
    }

    /// The whole path a node's text takes: a signed descriptor registered
    /// over the authority's own rules, snapshot, page. Whatever HTML a
    /// node puts in its `software` field comes out as text.
    #[test]
    fn hostile_descriptors_registered_here_render_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let a = authority(dir.path());
        // One second into an epoch: the next one is open for registration.
        let now_ms = a.schedule().start(1000) * 1000 + 1000;
        let next = a.open_epochs(now_ms)[0];
        for (i, hostile) in render::tests::HOSTILE.iter().enumerate() {
            let key = IdentityKeypair::generate();
            let mut d = Descriptor::new(
                key.node_id(),
                SphinxKeypair::generate().public(),
                next,
                format!("127.0.0.1:{}", 4000 + i).parse().unwrap(),
                if i == 0 { Role::Provider } else { Role::Mix },
                now_ms / 1000,
            );
            d.software = (*hostile).to_string();
            a.register(&d.sign(&key).unwrap(), now_ms).unwrap();
        }
        let view = snapshot(&a, None, PredictionState::Computing, now_ms);
        assert_eq!(view.registered_next.len(), 3);
        assert_eq!(view.next_epoch, next);
        let html = render::page(&view);
        render::tests::assert_no_injected_markup(&html);
        assert!(html.contains("<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>"));
        assert!(html.contains("<code>&quot;&gt;&lt;img/src=x/onerror=alert(1)&gt;</code>"));
        // No document yet: said, not hidden.
        assert!(html.contains("No document in force"), "{html}");
    }

    #[test]
    fn views_are_rate_limited_per_ip_and_pages_cached() {
        let dir = tempfile::tempdir().unwrap();
        let a = authority(dir.path());
        let page = StatusPage::new(a.config().network.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..VIEW_BURST_PER_IP + 5)
            .filter(|_| page.admit(ip))
            .count();
        assert_eq!(admitted, VIEW_BURST_PER_IP as usize);
        assert!(page.admit("192.0.2.2".parse().unwrap()), "another IP");

        let now = a.schedule().start(1000) * 1000;
        let first = page.page(&a, None, now);
        assert_eq!(page.page(&a, None, now + CACHE_MS - 1), first);
        // A new page after CACHE_MS (its clock shows the new second).
        assert_ne!(page.page(&a, None, now + CACHE_MS + 1000), first);
    }
}
