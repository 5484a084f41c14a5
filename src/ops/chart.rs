//! `usage report --chart FILE.svg`: usage per scenario per day of a period
//! as a line chart, written as plain SVG (no fonts or scripts to load).

use std::collections::BTreeMap;
use std::fmt::Write;

const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const W: f64 = 960.0;
const H: f64 = 440.0;

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v`: the y axis's top.
fn nice_ceiling(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `series`: per scenario, usage records per day (index 0 = day 1).
pub fn svg(title: &str, series: &BTreeMap<String, Vec<u64>>, days: usize) -> String {
    let (left, right, top, bottom) = (60.0, 230.0, 40.0, 40.0);
    let (pw, ph) = (W - left - right, H - top - bottom);
    let max = nice_ceiling(series.values().flatten().copied().max().unwrap_or(0).max(1));
    let x = |day: usize| left + pw * (day as f64 - 1.0) / ((days.max(2) - 1) as f64);
    let y = |v: u64| top + ph - ph * v as f64 / max as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">{}</text>\n",
        escape(title)
    );
    // Gridlines at whole values: 5, 4, 2 or 1 steps, whichever divides.
    let steps = [5, 4, 2, 1].into_iter().find(|n| max.is_multiple_of(*n)).unwrap_or(1);
    for i in 0..=steps {
        let v = max * i / steps;
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>",
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for day in (1..=days).filter(|d| *d == 1 || d % 5 == 0) {
        let _ =
            writeln!(out, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{day}</text>", x(day), H - bottom + 18.0);
    }
    for (i, (scenario, counts)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<String> =
            (1..=days).map(|d| format!("{:.1},{:.1}", x(d), y(counts.get(d - 1).copied().unwrap_or(0)))).collect();
        let total: u64 = counts.iter().sum();
        let ly = top + 18.0 * i as f64;
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>\n\
             <rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"{:.1}\">{} ({total})</text>",
            points.join(" "),
            escape(scenario),
            W - right + 16.0,
            ly,
            W - right + 34.0,
            ly + 10.0,
            escape(scenario)
        );
    }
    out.push_str("</svg>\n");
    out
}
