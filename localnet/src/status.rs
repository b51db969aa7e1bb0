//! The start-up progress and the live status line, on stderr.
//!
//! On a terminal one line is redrawn in place (indicatif); otherwise (a log
//! file, CI) every update is a plain line of its own.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::network::{Kind, Member};
use super::process::State;
use loopmix_net::scrape::{by_label, scrape, sum};

/// The gauge an authority exports for every node of the signed "down" list
/// it published (1 = down), and every node process for the list it applied.
pub const LIVENESS_DOWN: &str = "loopmix_liveness_down";

/// Where progress, notes and the status line go.
#[derive(Clone)]
pub struct Ui {
    bar: ProgressBar,
    tty: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

impl Ui {
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            ProgressBar::hidden()
        };
        Self { bar, tty }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// What start-up (or shutdown) is doing now.
    pub fn stage(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.tty {
            self.bar.set_message(msg);
        } else if shape(&self.bar.message()) != shape(&msg) {
            // Plain output: each stage once, not every count or countdown.
            self.bar.set_message(msg.clone());
            eprintln!("loopmix-localnet: {msg}");
        }
    }

    /// The live status line.
    pub fn status(&self, line: &str) {
        if self.tty {
            self.bar.set_message(line.to_string());
        } else {
            eprintln!("loopmix-localnet: {line}");
        }
    }

    /// A line of its own above the progress line.
    pub fn note(&self, msg: impl AsRef<str>) {
        self.bar.suspend(|| eprintln!("{}", msg.as_ref()));
    }

    /// Text on stdout (the banner), without tearing the progress line.
    pub fn print_stdout(&self, text: &str) {
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        });
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// `msg` without its digits.
fn shape(msg: &str) -> String {
    msg.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// Samples the network's metrics into one status line.
pub struct Status {
    started: Instant,
    /// Mixes' forwarded-packet total at the previous sample.
    prev: Option<(Instant, f64)>,
}

/// The nodes that a scrape of an authority's metrics says are down, by
/// member name (a node id localnet did not start is shown shortened).
/// `None` if the text has no [`LIVENESS_DOWN`] series at all (an
/// authority without liveness): nothing to say then.
pub fn down_nodes(text: &str, members: &[Member]) -> Option<Vec<String>> {
    let series = by_label(text, LIVENESS_DOWN, "node");
    if series.is_empty() {
        return None;
    }
    let mut down: Vec<String> = series
        .into_iter()
        .filter(|(_, v)| *v >= 1.0)
        .map(|(id, _)| {
            members
                .iter()
                .find(|m| m.id.is_some_and(|i| i.to_string() == id))
                .map_or_else(
                    || id.chars().take(8).collect::<String>() + "…",
                    |m| m.name.clone(),
                )
        })
        .collect();
    down.sort();
    down.dedup();
    Some(down)
}

impl Status {
    /// Takes a first sample, so the first line already has a rate.
    pub fn new(members: &[Member], state: impl Fn(&str) -> State) -> Self {
        let mut s = Self {
            started: Instant::now(),
            prev: None,
        };
        s.sample(members, state);
        s
    }

    /// Packets/s through the mixes, loops returned to the clients, streams
    /// open, which processes do not answer, which are exited or stopped,
    /// and which nodes the network itself considers down (the signed list
    /// of the first authority that answers). `state` is each member's
    /// process state, by name: only running members are scraped (a stopped
    /// one would cost a scrape timeout on every line).
    pub fn sample(&mut self, members: &[Member], state: impl Fn(&str) -> State) -> String {
        let now = Instant::now();
        let mut forwarded = 0.0;
        let mut epoch: Option<f64> = None;
        let mut loops = 0.0;
        let mut ratios = Vec::new();
        let mut streams: Option<f64> = None;
        let mut silent = Vec::new();
        let mut not_running = Vec::new();
        let mut down: Option<Vec<String>> = None;
        for m in members {
            let st = state(&m.name);
            if st != State::Running {
                not_running.push(match st.exit() {
                    Some(e) => format!("{} exited ({e})", m.name),
                    None => format!("{} {st}", m.name),
                });
                continue;
            }
            let Some(addr) = m.metrics else { continue };
            let Ok(text) = scrape(addr) else {
                silent.push(m.name.as_str());
                continue;
            };
            match m.kind {
                Kind::Mix => {
                    forwarded += sum(&text, "loopmix_packets_forwarded_total").unwrap_or(0.0)
                }
                Kind::Exit | Kind::Socks | Kind::Service => {
                    loops += sum(&text, "loopmix_client_loop_rtt_seconds_count").unwrap_or(0.0);
                    if let Some(r) = sum(&text, "loopmix_client_loop_return_ratio") {
                        ratios.push(r);
                    }
                    if m.kind == Kind::Socks {
                        streams = sum(&text, "loopmix_streams_open");
                    }
                }
                Kind::Authority => {
                    if down.is_none() {
                        down = down_nodes(&text, members);
                    }
                }
                Kind::Provider => {}
            }
            if matches!(m.kind, Kind::Mix | Kind::Provider)
                && let Some(e) = sum(&text, "loopmix_topology_epoch")
            {
                epoch = Some(epoch.map_or(e, |x: f64| x.max(e)));
            }
        }
        let rate = match self.prev {
            Some((t, prev)) if now > t => (forwarded - prev).max(0.0) / (now - t).as_secs_f64(),
            _ => 0.0,
        };
        self.prev = Some((now, forwarded));
        let up = humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs()));
        let mut line = format!("up {up}");
        if let Some(e) = epoch {
            line.push_str(&format!(" · epoch {e}"));
        }
        line.push_str(&format!(
            " · mixes {rate:.0} pkt/s · loops returned {loops}"
        ));
        if !ratios.is_empty() {
            let r = ratios.iter().sum::<f64>() / ratios.len() as f64;
            line.push_str(&format!(" ({:.0}%)", r * 100.0));
        }
        match streams {
            Some(s) => line.push_str(&format!(" · streams open {s}")),
            None => line.push_str(" · streams open -"),
        }
        if !not_running.is_empty() {
            line.push_str(&format!(" · {}", not_running.join(", ")));
        }
        if !silent.is_empty() {
            line.push_str(&format!(" · not answering: {}", silent.join(", ")));
        }
        match down {
            Some(d) if d.is_empty() => line.push_str(" · down: none"),
            Some(d) => line.push_str(&format!(" · down: {}", d.join(", "))),
            None => {}
        }
        line
    }
}
