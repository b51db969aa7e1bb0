//! SVG charts with plotters. SVG only, and on purpose: plotters without its
//! `ttf` feature lays text out with a built-in estimate and the SVG backend
//! writes `<text>` elements for the viewer to render, so no system font
//! library is needed. (Its bitmap backend would have to rasterise glyphs
//! itself, which needs `ttf` and fontconfig/freetype.) Charts are rendered
//! into a string, so the same data gives byte-identical files.

use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("drawing {what}: {message}")]
pub struct PlotError {
    what: &'static str,
    message: String,
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError {
        what,
        message: e.to_string(),
    }
}

const SIZE: (u32, u32) = (860, 560);

/// Latency histogram (density) with the Gamma(k, μ) density over it.
/// `bins`: `(start, end, count, density, gamma density)`.
pub fn latency_svg(
    title: &str,
    k: u32,
    mu: f64,
    bins: &[(f64, f64, u64, f64, f64)],
) -> Result<String, PlotError> {
    let e = err("latency chart");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let x_max = bins.last().map(|b| b.1).unwrap_or(1.0);
        let y_max = bins
            .iter()
            .map(|b| b.3.max(b.4))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("end-to-end latency (s)")
            .y_desc("density")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(
                bins.iter()
                    .map(|b| Rectangle::new([(b.0, 0.0), (b.1, b.3)], BLUE.mix(0.35).filled())),
            )
            .map_err(&e)?
            .label("simulated")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], BLUE.mix(0.35).filled())
            });
        chart
            .draw_series(LineSeries::new(
                bins.iter().map(|b| ((b.0 + b.1) / 2.0, b.4)),
                RED.stroke_width(2),
            ))
            .map_err(&e)?
            .label(format!("Gamma({k}, {mu})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(svg)
}

/// One point of a sweep chart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SweepPoint {
    pub x: f64,
    pub epsilon: f64,
    pub epsilon_sd: f64,
    pub delta: f64,
    pub delta_sd: f64,
}

/// ε (mean ± sd over repetitions) against the swept parameter, with δ (the
/// share of fully linked messages) in a second panel below.
pub fn sweep_svg(title: &str, x_label: &str, points: &[SweepPoint]) -> Result<String, PlotError> {
    let e = err("sweep chart");
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(&e)?;
        let (top, bottom) = root.split_vertically(480);
        let (x_min, x_max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.x), hi.max(p.x))
        });
        let pad = ((x_max - x_min) * 0.05).max(0.05);
        let (x_lo, x_hi) = if points.is_empty() {
            (0.0, 1.0)
        } else {
            (x_min - pad, x_max + pad)
        };
        let eps_max = points
            .iter()
            .map(|p| finite(p.epsilon) + finite(p.epsilon_sd))
            .fold(0.0, f64::max)
            .max(0.05)
            * 1.1;

        let mut chart = ChartBuilder::on(&top)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(x_lo..x_hi, 0f64..eps_max)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("epsilon = |ln(p0/p1)|, mean ± sd")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(&e)?;
        let eps: Vec<&SweepPoint> = points.iter().filter(|p| p.epsilon.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(
                eps.iter().map(|p| (p.x, p.epsilon)),
                BLUE.stroke_width(2),
            ))
            .map_err(&e)?;
        chart
            .draw_series(eps.iter().map(|p| {
                ErrorBar::new_vertical(
                    p.x,
                    (p.epsilon - finite(p.epsilon_sd)).max(0.0),
                    p.epsilon,
                    p.epsilon + finite(p.epsilon_sd),
                    BLUE.filled(),
                    10,
                )
            }))
            .map_err(&e)?;
        chart
            .draw_series(
                eps.iter()
                    .map(|p| Circle::new((p.x, p.epsilon), 4, BLUE.filled())),
            )
            .map_err(&e)?;

        let delta_max = points
            .iter()
            .map(|p| finite(p.delta) + finite(p.delta_sd))
            .fold(0.0, f64::max)
            .clamp(0.05, 1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(x_lo..x_hi, 0f64..delta_max)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("delta (share fully linked)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .y_labels(5)
            .draw()
            .map_err(&e)?;
        let del: Vec<&SweepPoint> = points.iter().filter(|p| p.delta.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(
                del.iter().map(|p| (p.x, p.delta)),
                RED.stroke_width(2),
            ))
            .map_err(&e)?;
        chart
            .draw_series(
                del.iter()
                    .map(|p| Circle::new((p.x, p.delta), 4, RED.filled())),
            )
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(svg)
}

/// One parameter set of a frontier chart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrontierPoint {
    pub latency_s: f64,
    pub epsilon: f64,
    pub on_frontier: bool,
}

/// ε against median latency for every simulated parameter set; the
/// frontier's points in red, joined in latency order, the rest grey.
pub fn frontier_svg(title: &str, points: &[FrontierPoint]) -> Result<String, PlotError> {
    let e = err("frontier chart");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(&e)?;
        let x_max = points.iter().map(|p| p.latency_s).fold(0.1, f64::max) * 1.1;
        let y_max = points.iter().map(|p| p.epsilon).fold(0.05, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("median end-to-end latency of the delayed hops, s")
            .y_desc("epsilon = |ln(p0/p1)|, mean")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(points.iter().filter(|p| !p.on_frontier).map(|p| {
                Circle::new(
                    (p.latency_s, p.epsilon),
                    3,
                    RGBColor(160, 160, 160).filled(),
                )
            }))
            .map_err(&e)?;
        let mut front: Vec<&FrontierPoint> = points.iter().filter(|p| p.on_frontier).collect();
        front.sort_by(|a, b| a.latency_s.total_cmp(&b.latency_s));
        chart
            .draw_series(LineSeries::new(
                front.iter().map(|p| (p.latency_s, p.epsilon)),
                RED.stroke_width(1),
            ))
            .map_err(&e)?;
        chart
            .draw_series(
                front
                    .iter()
                    .map(|p| Circle::new((p.latency_s, p.epsilon), 4, RED.filled())),
            )
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(svg)
}
