//! A hand-written SVG plot of requests over time, one panel per strategy.
//!
//! Input: for each panel a title, every request's send time and whether it
//! failed, and marker lines (pod deleted, LB stopped routing, SIGTERM).
//! Output: one self-contained SVG document as a string. Requests are counted
//! in time bins: grey bars are answered requests, red bars failed ones, so a
//! gap in the grey with red in it is users seeing errors. All panels share
//! the time axis and the count axis, so they compare at a glance.

use std::fmt::Write;

/// Kinds of vertical marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// The pod was deleted (its preStop hook starts).
    Deleted,
    /// The load balancer stopped routing new requests to the pod.
    LbStopped,
    /// The pod got SIGTERM and exited.
    Sigterm,
}

impl Marker {
    fn style(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Marker::Deleted => ("#1f77b4", "4 3", "pod deleted"),
            Marker::LbStopped => ("#ff7f0e", "2 2", "LB stops routing to it"),
            Marker::Sigterm => ("#222222", "none", "SIGTERM"),
        }
    }
}

/// One panel.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// Title, e.g. `drainwait: 0 failed of 3120`.
    pub title: String,
    /// (seconds since the load started, failed) per request.
    pub requests: Vec<(f64, bool)>,
    /// (seconds, kind) vertical lines.
    pub markers: Vec<(f64, Marker)>,
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 130.0;
const PANEL_GAP: f64 = 48.0;
const TOP: f64 = 56.0;

/// The SVG document for `panels` under `title`.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let span = panels
        .iter()
        .flat_map(|p| {
            p.requests
                .iter()
                .map(|r| r.0)
                .chain(p.markers.iter().map(|m| m.0))
        })
        .fold(1.0_f64, f64::max);
    // About 200 bins across, never finer than 50 ms.
    let bin = (span / 200.0).max(0.05);
    let nbins = (span / bin).ceil() as usize + 1;
    let counts: Vec<Vec<(u32, u32)>> = panels
        .iter()
        .map(|p| {
            let mut c = vec![(0u32, 0u32); nbins];
            for &(t, failed) in &p.requests {
                let i = ((t.max(0.0) / bin) as usize).min(nbins - 1);
                if failed {
                    c[i].1 += 1;
                } else {
                    c[i].0 += 1;
                }
            }
            c
        })
        .collect();
    let ymax = counts
        .iter()
        .flatten()
        .map(|(ok, bad)| ok + bad)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + plot_w * t / span;
    let height = TOP + panels.len() as f64 * (PANEL_H + PANEL_GAP) + 10.0;

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}</text>
"##,
        esc(title)
    );
    // Legend.
    let mut lx = LEFT;
    let legend_y = 42.0;
    for (color, label) in [("#bbbbbb", "answered"), ("#d62728", "failed")] {
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="10" fill="{color}"/><text x="{}" y="{legend_y}">{label}</text>"#,
            legend_y - 9.0,
            lx + 16.0
        );
        lx += 90.0;
    }
    for m in [Marker::Deleted, Marker::LbStopped, Marker::Sigterm] {
        let (color, dash, label) = m.style();
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{legend_y}">{label}</text>"#,
            legend_y - 4.0,
            lx + 18.0,
            legend_y - 4.0,
            lx + 22.0
        );
        lx += 40.0 + 7.0 * label.len() as f64;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{legend_y}" fill="#555">bars: requests per {:.0} ms</text>"##,
        WIDTH - RIGHT - 160.0,
        bin * 1000.0
    );

    for (pi, (panel, counts)) in panels.iter().zip(&counts).enumerate() {
        let top = TOP + pi as f64 * (PANEL_H + PANEL_GAP) + 20.0;
        let base = top + PANEL_H;
        let y = |n: f64| base - PANEL_H * n / ymax;
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            top - 6.0,
            esc(&panel.title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let bw = (plot_w * bin / span).max(1.0);
        for (i, &(ok, bad)) in counts.iter().enumerate() {
            let x0 = x(i as f64 * bin);
            if bad > 0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#d62728"/>"##,
                    y(f64::from(bad)),
                    base - y(f64::from(bad))
                );
            }
            if ok > 0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#bbbbbb"/>"##,
                    y(f64::from(ok + bad)),
                    y(f64::from(bad)) - y(f64::from(ok + bad))
                );
            }
        }
        for &(t, m) in &panel.markers {
            let (color, dash, _) = m.style();
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{base}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
                x(t)
            );
        }
        // Count axis: 0 and the maximum.
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{base}" text-anchor="end">0</text><text x="{}" y="{}" text-anchor="end">{ymax:.0}</text>"#,
            LEFT - 6.0,
            LEFT - 6.0,
            top + 10.0
        );
        // Time axis.
        let step = nice_step(span / 10.0);
        let mut t = 0.0;
        while t <= span + 1e-9 {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{base}" x2="{0:.1}" y2="{1}" stroke="#999"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                x(t),
                base + 4.0,
                base + 16.0,
                fmt_secs(t)
            );
            t += step;
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#555">seconds since the load started</text>"##,
        WIDTH - RIGHT,
        height - 4.0
    );
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mut p = 0.01;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * p >= raw {
                return m * p;
            }
        }
        p *= 10.0;
        if p > 1e6 {
            return p;
        }
    }
}

fn fmt_secs(t: f64) -> String {
    if (t - t.round()).abs() < 1e-6 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_markers_and_escapes() {
        let panel = Panel {
            title: "none <no hook> & co".into(),
            requests: vec![(0.01, false), (0.02, true), (1.5, false)],
            markers: vec![(0.5, Marker::Deleted), (0.9, Marker::Sigterm)],
        };
        let doc = svg("rollout", &[panel.clone(), Panel::default()]);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("none &lt;no hook&gt; &amp; co"));
        assert!(doc.contains("#d62728"), "a failed bar");
        assert_eq!(
            doc.matches("stroke-width=\"1.5\"").count(),
            2,
            "two markers"
        );
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
    }
}
