//! The coverage trend of a project's default branch on a pipeline's reports page: a line
//! saying this pipeline's coverage and its change since the previous pipeline of the branch, and
//! a small chart of the branch's last pipelines (oldest left), named in text for screen readers
//! and as a table.

use gantry_api::Pipeline;
use gantry_api::reports::CoverageTrendPoint;
use maud::{Markup, html};

use crate::chart::{Area, at, num, polyline};
use crate::text::{short, time};

/// How many pipelines the trend shows at most.
pub const TREND_LEN: i64 = 30;

/// The chart's size, and the room left of it for the axis's labels, in pixels.
const W: f64 = 360.0;
const H: f64 = 100.0;
const PAD: f64 = 8.0;
const LABELS: f64 = 44.0;

/// The coverage trend of a project's default branch.
#[derive(Debug, Clone)]
pub struct CoverageTrend {
    /// The default branch.
    pub branch: String,
    /// Its newest pipelines with coverage (at most [`TREND_LEN`]), oldest first.
    pub points: Vec<CoverageTrendPoint>,
}

/// The percent scale of the chart: whole percents around the values, within 0 and 100 unless a
/// value is outside them; equal values get one percent above them (below, at 100).
fn percent_range(values: &[f64]) -> (f64, f64) {
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let lo = min.floor().max(0.0).min(min);
    let hi = max.ceil().min(100.0).max(max);
    match (lo < hi, hi >= 100.0) {
        (true, _) => (lo, hi),
        (false, false) => (lo, lo + 1.0),
        (false, true) => (hi - 1.0, hi),
    }
}

/// The chart's geometry: its scale and each pipeline's point, left to right.
#[derive(Debug, PartialEq)]
struct Plot {
    range: (f64, f64),
    points: Vec<(f64, f64)>,
}

fn plot(points: &[CoverageTrendPoint]) -> Plot {
    let values: Vec<f64> = points.iter().map(|p| p.coverage).collect();
    let range = percent_range(&values);
    let area = Area {
        left: LABELS,
        ..Area::inside(W, H, PAD)
    };
    Plot {
        range,
        points: values
            .iter()
            .enumerate()
            .map(|(i, v)| (area.x(i, values.len()), area.y(*v, range)))
            .collect(),
    }
}

/// A percent as text: `81.25%`.
fn pct(v: f64) -> String {
    format!("{}%", num(v))
}

/// A change in percentage points as text: `+0.4`, `-1.25`, `±0`.
fn change(d: f64) -> String {
    match num(d).as_str() {
        "0" => "±0".into(),
        s if s.starts_with('-') => s.into(),
        s => format!("+{s}"),
    }
}

/// The chart's text alternative: how many pipelines, the first and last value, the lowest and
/// the highest.
fn summary(t: &CoverageTrend) -> String {
    let values: Vec<f64> = t.points.iter().map(|p| p.coverage).collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    format!(
        "Coverage of {} over its last {} pipelines with coverage, oldest first: first {}, last {}, lowest {}, highest {}",
        t.branch,
        values.len(),
        pct(values[0]),
        pct(values[values.len() - 1]),
        pct(lo),
        pct(hi),
    )
}

/// The coverage trend part of pipeline `p`'s reports: `own` is its coverage (the mean of its
/// jobs', as the trend counts it), if any.
pub(crate) fn trend(p: &Pipeline, own: Option<f64>, t: &CoverageTrend) -> Markup {
    let on_branch = !p.tag && p.git_ref == t.branch;
    // The trend's value of this pipeline is the stored one; the previous is the newest older.
    let own = t
        .points
        .iter()
        .find(|c| on_branch && c.pipeline_id == p.id)
        .map(|c| c.coverage)
        .or(own);
    let previous = t.points.iter().rev().find(|c| c.pipeline_id < p.id);
    html! {
        h3 #trend { "Trend of " code { (t.branch) } }
        @if let Some(c) = own {
            p.covline {
                "coverage " strong { (pct(c)) }
                @if let Some(prev) = previous {
                    " (" (change(c - prev.coverage)) " since the previous pipeline on " (t.branch) ", "
                    a href={ "/pipelines/" (prev.pipeline_id) "/reports" } { "#" (prev.pipeline_id) } ")"
                }
            }
        }
        @match t.points.as_slice() {
            [] => p { "No pipeline of " code { (t.branch) } " has coverage yet." },
            [only] => p {
                "Only one pipeline of " code { (t.branch) } " has coverage so far ("
                a href={ "/pipelines/" (only.pipeline_id) "/reports" } { "#" (only.pipeline_id) } ": " (pct(only.coverage))
                "): a trend needs two."
            },
            points => (chart(p.id, t, points)),
        }
    }
}

/// The chart of two or more points, and the same values as a table.
fn chart(current: i64, t: &CoverageTrend, points: &[CoverageTrendPoint]) -> Markup {
    let g = plot(points);
    let (lo, hi) = g.range;
    let text = summary(t);
    html! {
        figure.chart.trend {
            svg width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(text) {
                title { (text) }
                @for v in [hi, lo] {
                    @let y = at(Area::inside(W, H, PAD).y(v, g.range));
                    line.grid x1=(LABELS) x2=(W - PAD) y1=(y) y2=(y) {}
                    text.axis x=(LABELS - 4.0) y=(y) dy="4" text-anchor="end" { (pct(v)) }
                }
                polyline.values points=(polyline(g.points.iter().copied())) {}
                @for (c, (x, y)) in points.iter().zip(&g.points) {
                    @if c.pipeline_id == current {
                        circle.current cx=(at(*x)) cy=(at(*y)) r="5" { title { "#" (c.pipeline_id) " (this pipeline): " (pct(c.coverage)) } }
                    } @else {
                        circle.point cx=(at(*x)) cy=(at(*y)) r="2.5" { title { "#" (c.pipeline_id) ": " (pct(c.coverage)) } }
                    }
                }
            }
            details {
                summary { "The trend as a table" }
                table {
                    thead { tr { th { "Pipeline" } th { "Commit" } th { "Created" } th { "Coverage" } } }
                    tbody {
                        @for c in points {
                            tr class=[(c.pipeline_id == current).then_some("current")] {
                                td {
                                    a href={ "/pipelines/" (c.pipeline_id) "/reports" } { "#" (c.pipeline_id) }
                                    @if c.pipeline_id == current { " (this pipeline)" }
                                }
                                td { code { (short(&c.sha)) } }
                                td { (time(&c.created_at)) }
                                td { (pct(c.coverage)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: i64, coverage: f64) -> CoverageTrendPoint {
        CoverageTrendPoint {
            pipeline_id: id,
            sha: format!("{id:040}"),
            created_at: "2026-01-01T00:00:00Z".into(),
            coverage,
        }
    }

    fn trend_of(branch: &str, points: &[(i64, f64)]) -> CoverageTrend {
        CoverageTrend {
            branch: branch.into(),
            points: points.iter().map(|&(id, c)| point(id, c)).collect(),
        }
    }

    fn pipe(id: i64, git_ref: &str) -> Pipeline {
        let mut p = crate::tests::pipe(vec![]);
        p.id = id;
        p.git_ref = git_ref.into();
        p
    }

    #[test]
    fn the_scale_is_whole_percents_around_the_values() {
        assert_eq!(percent_range(&[70.5, 72.25]), (70.0, 73.0));
        assert_eq!(percent_range(&[81.0, 81.0]), (81.0, 82.0));
        assert_eq!(percent_range(&[100.0, 100.0]), (99.0, 100.0));
        assert_eq!(percent_range(&[0.0, 0.0]), (0.0, 1.0));
    }

    #[test]
    fn points_go_oldest_left_and_higher_up() {
        let t = trend_of("main", &[(1, 70.0), (2, 73.0), (3, 71.5)]);
        let g = plot(&t.points);
        assert_eq!(g.range, (70.0, 73.0));
        let (mid_x, mid_y) = ((LABELS + W - PAD) / 2.0, (H - PAD + PAD) / 2.0);
        assert_eq!(
            g.points,
            vec![(LABELS, H - PAD), (mid_x, PAD), (W - PAD, mid_y)]
        );
    }

    #[test]
    fn the_chart_marks_this_pipeline_and_names_its_points_in_text() {
        let t = trend_of("main", &[(1, 70.0), (2, 73.0), (4, 72.6)]);
        let html = trend(&pipe(4, "main"), Some(99.0), &t).into_string();
        // Its stored value, not the one given, and the change since #2.
        assert!(
            html.contains("coverage <strong>72.6%</strong> (-0.4 since the previous pipeline on main, <a href=\"/pipelines/2/reports\">#2</a>)"),
            "{html}"
        );
        assert!(html.contains("aria-label=\"Coverage of main over its last 3 pipelines with coverage, oldest first: first 70%, last 72.6%, lowest 70%, highest 73%\""));
        assert!(html.contains("<title>Coverage of main over"));
        assert_eq!(html.matches("<circle class=\"point\"").count(), 2);
        assert_eq!(html.matches("<circle class=\"current\"").count(), 1);
        assert!(html.contains("<title>#4 (this pipeline): 72.6%</title>"));
        assert!(html.contains(">73%</text>") && html.contains(">70%</text>"));
        assert!(html.contains(
            "<tr class=\"current\"><td><a href=\"/pipelines/4/reports\">#4</a> (this pipeline)</td>"
        ));
        assert!(html.contains("<polyline class=\"values\" points=\""));
        // Another branch's pipeline: no point is its own; its change is since main's newest
        // older pipeline.
        let html = trend(&pipe(3, "feature"), Some(70.0), &t).into_string();
        assert!(!html.contains("class=\"current\""));
        assert!(html.contains("coverage <strong>70%</strong> (-3 since the previous pipeline on main, <a href=\"/pipelines/2/reports\">#2</a>)"), "{html}");
        let html = trend(&pipe(1, "main"), Some(70.0), &t).into_string();
        assert!(html.contains("coverage <strong>70%</strong></p>"), "{html}");
        // No coverage of its own: no line.
        let html = trend(&pipe(5, "main"), None, &t).into_string();
        assert!(!html.contains("covline"));
    }

    #[test]
    fn few_points_are_said_in_text() {
        let html = trend(&pipe(1, "main"), None, &trend_of("main", &[])).into_string();
        assert!(html.contains("No pipeline of <code>main</code> has coverage yet."));
        assert!(!html.contains("<svg"));
        let html = trend(
            &pipe(1, "main"),
            Some(80.0),
            &trend_of("main", &[(1, 80.0)]),
        )
        .into_string();
        assert!(html.contains("Only one pipeline of <code>main</code> has coverage so far (<a href=\"/pipelines/1/reports\">#1</a>: 80%): a trend needs two."), "{html}");
        assert!(!html.contains("<svg"));
        assert_eq!(change(0.0), "±0");
        assert_eq!(change(0.4000000001), "+0.4");
    }

    #[test]
    fn the_branch_is_escaped() {
        let t = trend_of("<b>x\"", &[(1, 70.0), (2, 71.0)]);
        let html = trend(&pipe(2, "<b>x\""), Some(71.0), &t).into_string();
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("Coverage of &lt;b&gt;x&quot; over"));
        assert!(html.contains("<code>&lt;b&gt;x&quot;</code>"));
        assert_eq!(html.matches("<circle class=\"current\"").count(), 1);
    }
}
