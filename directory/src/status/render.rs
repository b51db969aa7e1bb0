//! The status page's HTML. maud escapes every `(expression)` it
//! interpolates (`&`, `<`, `>`, `"`), in text and in attribute values
//! alike; the only unescaped text is the constant stylesheet below.
//! Nothing here reads state: [`page`] renders a [`StatusView`].

use std::time::{Duration, UNIX_EPOCH};

use loopmix_core::keys::NodeId;
use loopmix_core::pki::api;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::prediction::{EVENT_BUDGET, PredictionState};
use super::{EpochView, LivenessView, NextView, NodeRow, StatusView};
use crate::liveness::prober::Observed;

const CSS: &str = "\
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:76em;padding:0 1em;color:#1b1b1b;background:#fff}\
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}\
h3{font-size:1em;margin:1em 0 .3em}\
table{border-collapse:collapse;margin:.3em 0 1em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.num{text-align:right}code,.id{font-family:ui-monospace,monospace;font-size:.92em}\
.id{word-break:break-all}.up{color:#176117}.down{color:#b00020;font-weight:bold}.muted{color:#666}\
.warn{background:#fff4e5;border-left:4px solid #e08a00;padding:.3em .8em;margin:.3em 0}\
p.small{font-size:.9em;color:#444}summary{cursor:pointer;margin:.5em 0}";

fn utc(unix_s: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_s)).to_string()
}

fn short(id: &NodeId) -> String {
    let s = id.to_string();
    if s.len() > 12 {
        format!("{}…", &s[..12])
    } else {
        s
    }
}

fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "n/a".to_string()
    }
}

/// The whole page.
pub fn page(v: &StatusView) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "loopmix network status — epoch " (v.epoch.epoch) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "loopmix network status" }
                p.small {
                    "Served by directory authority " span.id { (v.authority) }
                    " at " (utc(v.now)) ". Plain HTML: reload for fresh numbers."
                }
                (epochs(v))
                (layers(v))
                (parameters(v))
                (documents(v))
            }
        }
    }
    .into_string()
}

fn signer_list(signers: &[NodeId]) -> Markup {
    html! {
        @for (i, s) in signers.iter().enumerate() {
            @if i > 0 { ", " }
            span.id title=(s) { (short(s)) }
        }
    }
}

fn epochs(v: &StatusView) -> Markup {
    let n = v.authorities.len();
    html! {
        h2 { "Epochs" }
        p {
            "Epoch " strong { (v.epoch.epoch) } " started " (utc(v.epoch.epoch_start))
            "; epochs last " (v.epoch.epoch_length_s) " s. "
            "A document is published once " strong { (v.k) " of " (n) } " authorities sign it (k = " (v.k) ")."
        }
        table {
            tr { th { "document" } th { "epoch" } th { "valid (UTC)" } th { "signers" } th { "nodes" } }
            tr {
                td { "in force" }
                @match &v.current {
                    Ok(d) => {
                        td.num { (d.epoch) }
                        td { (utc(d.valid_from)) " – " (utc(d.valid_until)) }
                        td { (d.signers.len()) " of " (n) ": " (signer_list(&d.signers)) }
                        td.num { (d.layers.iter().map(Vec::len).sum::<usize>() + d.providers.len()) }
                    }
                    Err(why) => {
                        td.num { (v.epoch.epoch) }
                        td colspan="3" .down { "none: " (why) }
                    }
                }
            }
            tr {
                td { "next" }
                td.num { (v.next_epoch) }
                @match &v.next {
                    NextView::Published(d) => {
                        td { (utc(d.valid_from)) " – " (utc(d.valid_until)) }
                        td { (d.signers.len()) " of " (n) ": " (signer_list(&d.signers)) }
                        td.num { (d.layers.iter().map(Vec::len).sum::<usize>() + d.providers.len()) }
                    }
                    NextView::Signing { have } => {
                        td colspan="3" { "built and signed here; " (have) " of the " (v.k) " signatures it needs" }
                    }
                    NextView::NotBuilt => {
                        td colspan="3" .muted {
                            "not built yet ("
                            (v.registered_next.len()) " nodes registered here; registration open for "
                            @if v.epoch.open_epochs.is_empty() { "no epoch" }
                            @else {
                                "epoch"
                                @for e in &v.epoch.open_epochs { " " (e) }
                            }
                            ")"
                        }
                    }
                }
            }
        }
        h3 { "Authorities" }
        table {
            tr { th { "authority" } th { "where" } th { "signed the document in force" } th { "signed the next" } }
            @for a in &v.authorities {
                tr {
                    td.id { (a.id) }
                    td {
                        @if a.this_one { "this authority" }
                        @else if let Some(u) = &a.url { code { (u) } }
                        @else { span.muted { "unknown" } }
                    }
                    td { (signed(v.current.as_ref().ok(), &a.id)) }
                    td {
                        @match &v.next {
                            NextView::Published(d) => { (signed(Some(d), &a.id)) }
                            _ => { span.muted { "—" } }
                        }
                    }
                }
            }
        }
    }
}

fn signed(doc: Option<&EpochView>, id: &NodeId) -> Markup {
    html! {
        @match doc {
            Some(d) if d.signers.contains(id) => { span.up { "yes" } }
            Some(_) => { span.down { "no" } }
            None => { span.muted { "—" } }
        }
    }
}

fn liveness_cell(r: &NodeRow) -> Markup {
    html! {
        td {
            @match r.listed_down {
                Some(true) => { span.down { "listed down" } }
                Some(false) => { span.up { "up" } }
                None => { span.muted { "no list" } }
            }
        }
        td {
            @match r.observed {
                Some(Observed::Up) => { span.up { "answers" } }
                Some(Observed::Down) => { span.down { "down" } }
                Some(Observed::NeverAnswered) => { span.muted { "never answered yet" } }
                None => { span.muted { "not probed" } }
            }
        }
    }
}

fn node_row(place: &str, r: &NodeRow) -> Markup {
    html! {
        tr {
            td { (place) }
            td.id { (r.id) }
            td { code { (r.address) } }
            td {
                @match &r.software {
                    Some(s) => { code { (s) } }
                    None => { span.muted { "not registered here" } }
                }
            }
            (liveness_cell(r))
        }
    }
}

fn layers(v: &StatusView) -> Markup {
    html! {
        h2 { "Layers" }
        p.small {
            @match &v.liveness {
                LivenessView::Disabled => { "Liveness probing is disabled at this authority ([liveness] enabled = false)." }
                LivenessView::NoList => { "No k-signed liveness list is valid now (the network is starting, or the authorities miss rounds)." }
                LivenessView::List { round, valid_until, down } => {
                    "Liveness as the network measured it: the k-signed list of round " (round)
                    " (valid until " (utc(*valid_until)) ") lists " (down) " node(s) down. "
                    "Mixes it lists are left out of new routes (at most half of a layer); providers are listed, never excluded. "
                    "The last column is this authority's own probes (its vote)."
                }
            }
        }
        @match &v.current {
            Ok(d) => {
                table {
                    tr {
                        th { "layer" } th { "node id" } th { "address" } th { "software (node-supplied)" }
                        th { "liveness (k-signed list)" } th { "this authority's probes" }
                    }
                    @for (i, layer) in d.layers.iter().enumerate() {
                        @if layer.is_empty() {
                            tr { td { (i + 1) } td colspan="5" .down { "no mix" } }
                        }
                        @for r in layer { (node_row(&(i + 1).to_string(), r)) }
                    }
                    @for r in &d.providers { (node_row("provider", r)) }
                }
            }
            Err(why) => { p.down { "No document in force: " (why) } }
        }
        details {
            summary { "Registered here for epoch " (v.next_epoch) " (" (v.registered_next.len()) " nodes)" }
            @if v.registered_next.is_empty() {
                p.muted { "None yet." }
            } @else {
                table {
                    tr { th { "node id" } th { "role" } th { "address" } th { "software (node-supplied)" } }
                    @for r in &v.registered_next {
                        tr {
                            td.id { (r.id) }
                            td { (r.role) }
                            td { code { (r.address) } }
                            td { code { (r.software.as_deref().unwrap_or("")) } }
                        }
                    }
                }
            }
        }
    }
}

fn parameters(v: &StatusView) -> Markup {
    let w = &v.network;
    let mu = if w.mean_hop_delay_ms > 0.0 {
        1000.0 / w.mean_hop_delay_ms
    } else {
        f64::INFINITY
    };
    let lambda = w.lambda_p_per_s + w.lambda_l_per_s + w.lambda_d_per_s;
    html! {
        h2 { "Parameters" }
        p.small { "From this authority's [network] configuration (identical at every authority: it is signed into every document)." }
        table {
            tr { th { "parameter" } th { "value" } th { "meaning" } }
            tr { td { "L" } td.num { (w.layers) } td { "mix layers every route crosses" } }
            tr { td { "λ_P" } td.num { (num(w.lambda_p_per_s, 2)) " /s" } td { "client payload rate (real message or drop)" } }
            tr { td { "λ_L" } td.num { (num(w.lambda_l_per_s, 2)) " /s" } td { "client loop cover rate" } }
            tr { td { "λ_D" } td.num { (num(w.lambda_d_per_s, 2)) " /s" } td { "client drop cover rate" } }
            tr { td { "λ_M" } td.num { (num(w.lambda_m_per_s, 2)) " /s" } td { "mix loop cover rate" } }
            tr { td { "μ" } td.num { (num(mu, 2)) " /s" } td { "per-hop delay rate: mean delay 1/μ = " (num(w.mean_hop_delay_ms, 0)) " ms" } }
            tr { td { "λ/μ per client" } td.num { (num(lambda / mu, 2)) } td { "docs/THREAT_MODEL.md asks for at least 2" } }
            tr { td { "packet size" } td.num { (w.payload_size + loopmix_core::sphinx::HEADER_SIZE) " B" } td { "every Sphinx packet on the wire" } }
        }
        @for warning in &v.warnings {
            p.warn { (warning) }
        }
        h3 { "What the simulator predicts for these parameters" }
        @match &v.prediction {
            PredictionState::Computing => {
                p.muted { "computing… (one bounded simulation run at start-up; reload in a few seconds)" }
            }
            PredictionState::NotSimulated(why) => { p.muted { "Not simulated: " (why) } }
            PredictionState::Done(p) => {
                table {
                    tr { th { "prediction" } th { "value" } th { "how" } }
                    tr {
                        td { "ε (sender–receiver unlinkability)" }
                        td.num { (num(p.epsilon, 2)) }
                        td { "mean |ln(p0/p1)| over " (p.challenge_messages) " challenge messages; 0 is perfect. δ (linked outright) = " (num(p.delta, 3)) }
                    }
                    tr {
                        td { "end-to-end latency" }
                        td.num { (num(p.latency_mean_s, 2)) " s" }
                        td { "simulated mean; Gamma(L+1, μ) says (L+1)/μ = " (num(p.latency_analytic_s, 2)) " s (mixing delay only: no link or processing time)" }
                    }
                }
                @let s = &p.scenario;
                p.small {
                    "Obtained with loopmix-sim (docs/SIMULATIONS.md) on a reference network, not this one: "
                    (s.clients) " clients, " (s.layers) " layers × " (s.mixes_per_layer) " mixes, "
                    (s.providers) " providers, no corrupt mix, seed " (s.seed) ", one repetition, "
                    (num(s.duration_s, 0)) " s of virtual time measured after " (num(s.burn_in_s, 1))
                    " s of burn-in (" (p.events) " events, at most " (num(EVENT_BUDGET, 0)) ", in "
                    (num(p.took_s, 2)) " s). ε falls as more clients send: a larger network hides better than this."
                }
            }
        }
    }
}

fn documents(v: &StatusView) -> Markup {
    let e = v.epoch.epoch;
    let links: Vec<(String, String)> = vec![
        (
            api::PATH_TOPOLOGY_CURRENT.to_string(),
            "the topology document in force (k-signed)".into(),
        ),
        (api::path_topology(e), format!("the document of epoch {e}")),
        (
            api::path_topology(v.next_epoch),
            format!("the document of epoch {} (once published)", v.next_epoch),
        ),
        (
            api::path_signature(e),
            format!("this authority's signature on epoch {e}"),
        ),
        (
            api::path_descriptors(v.next_epoch),
            format!(
                "signed descriptors registered here for epoch {}",
                v.next_epoch
            ),
        ),
        (
            api::PATH_LIVENESS_CURRENT.to_string(),
            "the liveness list in force (k-signed)".into(),
        ),
        (api::PATH_EPOCH.to_string(), "the epoch schedule".into()),
        ("/metrics".to_string(), "Prometheus metrics".into()),
    ];
    html! {
        h2 { "Signed documents" }
        p.small { "JSON, signed end to end: verify them against the pinned authority keys, not this page (docs/PROTOCOL.md)." }
        ul {
            @for (href, what) in &links {
                li { a href=(href) { code { (href) } } " — " (what) }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use loopmix_core::keys::IdentityKeypair;
    use loopmix_core::pki::api::EpochInfo;
    use loopmix_core::topology::Role;

    use super::super::{AuthorityRow, NodeRow, StatusView};
    use super::*;
    use crate::config::NetworkSection;

    pub(crate) const HOSTILE: [&str; 3] = [
        "<script>alert(1)</script>",
        "\"><img/src=x/onerror=alert(1)>",
        "'><svg/onload=alert(1)>&amp;",
    ];

    fn row(software: &str, role: Role) -> NodeRow {
        NodeRow {
            id: IdentityKeypair::generate().node_id(),
            address: "127.0.0.1:4000".parse().unwrap(),
            role,
            software: Some(software.to_string()),
            listed_down: Some(false),
            observed: Some(Observed::Up),
        }
    }

    fn view() -> StatusView {
        let me = IdentityKeypair::generate().node_id();
        let mix = |s: &str| row(s, Role::Mix);
        let doc = EpochView {
            epoch: 7,
            valid_from: 1_700_000_000,
            valid_until: 1_700_000_060,
            signers: vec![me],
            layers: vec![
                vec![mix(HOSTILE[0])],
                vec![mix(HOSTILE[1])],
                vec![mix(HOSTILE[2])],
            ],
            providers: vec![row(HOSTILE[1], Role::Provider)],
        };
        StatusView {
            authority: me,
            now: 1_700_000_010,
            k: 1,
            authorities: vec![
                AuthorityRow {
                    id: me,
                    this_one: true,
                    url: None,
                },
                AuthorityRow {
                    id: IdentityKeypair::generate().node_id(),
                    this_one: false,
                    url: Some("http://x/\"><script>x</script>".into()),
                },
            ],
            epoch: EpochInfo {
                now: 1_700_000_010,
                epoch: 7,
                epoch_start: 1_700_000_000,
                epoch_length_s: 30,
                genesis: 0,
                registration_lead_s: 3,
                open_epochs: vec![8],
            },
            current: Ok(doc.clone()),
            next_epoch: 8,
            next: NextView::Published(doc),
            registered_next: vec![row(HOSTILE[0], Role::Mix), row(HOSTILE[1], Role::Provider)],
            liveness: LivenessView::List {
                round: 3,
                valid_until: 1_700_000_030,
                down: 0,
            },
            network: NetworkSection::default(),
            warnings: vec!["<b>warning</b>".into()],
            prediction: PredictionState::Computing,
        }
    }

    /// Every tag the page may contain: anything else in the output is
    /// injected markup.
    const OWN_TAGS: &[&str] = &[
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span", "strong",
        "table", "tr", "th", "td", "code", "ul", "li", "a", "details", "summary",
    ];

    pub(crate) fn assert_no_injected_markup(html: &str) {
        for bad in ["<script", "<img", "<svg", "<b>"] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
        for (i, _) in html.match_indices('<') {
            let rest = &html[i + 1..];
            // No event handler inside any tag (escaped text may say
            // "onerror=", but never inside `<...>`).
            let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
            assert!(
                !tag.contains("onerror") && !tag.contains("onload"),
                "handler in <{tag}>"
            );
            let name: String = rest
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(
                rest.starts_with("!DOCTYPE") || OWN_TAGS.contains(&name.as_str()),
                "unexpected tag <{name}> at {i}"
            );
        }
    }

    #[test]
    fn node_supplied_strings_are_escaped_never_markup() {
        let html = page(&view());
        assert_no_injected_markup(&html);
        // The escaped forms are there, verbatim.
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;&gt;&lt;img/src=x/onerror=alert(1)&gt;"));
        assert!(html.contains("'&gt;&lt;svg/onload=alert(1)&gt;&amp;amp;"));
        assert!(html.contains("&lt;b&gt;warning&lt;/b&gt;"));
        // In an attribute too (the peer URL is shown as text; the only
        // attributes with variable values are hrefs and titles).
        assert!(html.contains("http://x/&quot;&gt;&lt;script&gt;x&lt;/script&gt;"));
    }

    #[test]
    fn page_shows_epochs_nodes_parameters_and_links() {
        let v = view();
        let html = page(&v);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("Epoch <strong>7</strong>"));
        for layer in v.current.as_ref().unwrap().layers.iter() {
            assert!(html.contains(&layer[0].id.to_string()));
        }
        assert!(html.contains("k = 1"));
        assert!(html.contains("computing…"));
        assert!(html.contains("href=\"/v1/topology/current\""));
        assert!(html.contains("href=\"/v1/topology/8\""));
        assert!(html.contains("href=\"/v1/liveness/current\""));
        assert!(!html.contains("<script"));
    }
}
