//! The environments of a project, an environment's deployment history (with its verification
//! measurements drawn as small charts against their thresholds) and the rollback's confirmation.

use gantry_api::deployments::{Deployment, DeploymentStatus, Environment, Measurement};
use maud::{Markup, html};

use crate::chart::{Area, at, num, polyline, span};
use crate::pages::{pager, project_nav, short};
use crate::{Viewer, badge, enc, page, time};

/// The chart's size and inner margin, in pixels.
const W: f64 = 160.0;
const H: f64 = 48.0;
const PAD: f64 = 6.0;

/// A deployment's status as a badge (`rolled_back` included).
fn deployment_badge(s: DeploymentStatus) -> Markup {
    badge(s.as_str())
}

/// The path of an environment's page.
fn env_path(project: &str, env: &str) -> String {
    format!("/projects/{}/environments/{}", enc(project), enc(env))
}

/// The environments of a project, each with its current deployment (or, when none succeeded, its
/// newest).
#[must_use]
pub fn environments(viewer: &Viewer, project: &str, envs: &[Environment]) -> Markup {
    let live = envs
        .iter()
        .any(|e| e.last.status == DeploymentStatus::Running);
    page(
        &format!("Environments of {project}"),
        Some(viewer),
        live,
        &html! {
            h1 { "Environments of " (project) }
            (project_nav(project))
            @if envs.is_empty() { p { "No deployment yet." } }
            @else {
                table.environments {
                    thead { tr { th { "Environment" } th { "Status" } th { "Version" } th { "Deployed" } th { "By" } th { "Deployments" } } }
                    tbody {
                        @for e in envs {
                            @let d = e.current.as_ref().unwrap_or(&e.last);
                            tr {
                                td {
                                    a href=(env_path(project, &e.name)) { (e.name) }
                                    @if let Some(u) = e.url.as_deref().filter(|u| u.starts_with("https://") || u.starts_with("http://")) {
                                        " " a.ext href=(u) rel="noopener noreferrer" { "open" }
                                    }
                                }
                                td {
                                    (deployment_badge(d.status))
                                    @if e.current.is_none() { " " span.mark { "nothing deployed successfully" } }
                                    @if e.last.id != d.id { " " span.mark { "newest #" (e.last.id) ": " (e.last.status.as_str()) } }
                                }
                                td { (version(d)) }
                                td { (time(&d.created_at)) }
                                td { (d.triggered_by) }
                                td { (e.deployments) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A deployment's commit, short, linked to its pipeline, with its ref.
fn version(d: &Deployment) -> Markup {
    html! {
        a.version href={ "/pipelines/" (d.pipeline_id) } title={ "pipeline #" (d.pipeline_id) } { code { (short(&d.sha)) } }
        " " code { (d.git_ref) }
    }
}

/// A page of an environment's deployments, newest first.
#[derive(Debug, Clone)]
pub struct DeploymentList {
    /// The project.
    pub project: String,
    /// The environment.
    pub environment: String,
    /// This page's deployments.
    pub rows: Vec<Deployment>,
    /// The environment's newest deployment, which is never offered as a rollback's target.
    pub newest: Option<i64>,
    /// This page, from 1.
    pub page: i64,
    /// How many pages.
    pub pages: i64,
}

/// An environment's deployment history; `error` is what the last rollback was refused with.
#[must_use]
pub fn environment(viewer: &Viewer, list: &DeploymentList, error: Option<&str>) -> Markup {
    let live = list
        .rows
        .iter()
        .any(|d| d.status == DeploymentStatus::Running);
    let (project, env) = (&list.project, &list.environment);
    let here = env_path(project, env);
    page(
        &format!("{env} · {project}"),
        Some(viewer),
        live,
        &html! {
            h1 { "Environment " (env) }
            (project_nav(project))
            @if let Some(e) = error { p.error role="alert" { "The rollback was refused: " (e) } }
            @if list.rows.is_empty() { p { "No deployment." } }
            @for d in &list.rows {
                section.deployment data-deployment=(d.id) aria-labelledby={ "d" (d.id) } {
                    h2 #{ "d" (d.id) } {
                        "Deployment #" (d.id) " " (deployment_badge(d.status))
                        @if let Some(of) = d.rollback_of { " " span.mark.rollback-of { "rollback of #" (of) } }
                        @if let Some(by) = d.rolled_back_by { " " span.mark.rolled-back-by { "rolled back by #" (by) } }
                    }
                    dl.facts {
                        dt { "Version" } dd { (version(d)) }
                        dt { "Job" } dd { a href={ "/jobs/" (d.job_id) } { (d.job) } }
                        dt { "Pipeline" } dd { a href={ "/pipelines/" (d.pipeline_id) } { "#" (d.pipeline_id) } }
                        dt { "By" } dd { (d.triggered_by) }
                        dt { "Started" } dd { (time(&d.created_at)) }
                        dt { "Ended" } dd { @match &d.finished_at { Some(t) => (time(t)), None => "—" } }
                    }
                    @if viewer.can_write && d.status == DeploymentStatus::Success && list.newest != Some(d.id) {
                        form.inline method="get" action={ (here) "/rollback" } {
                            input type="hidden" name="to" value=(d.id);
                            button type="submit" aria-label={ "Roll back to #" (d.id) } { "Rollback" }
                        }
                    }
                    @if !d.measurements.is_empty() {
                        div.charts { @for (check, ms) in by_check(&d.measurements) { (chart(check, &ms)) } }
                    }
                }
            }
            (pager(list.page, list.pages))
        },
    )
}

/// The rollback's confirmation: what is rolled back (`from`, the newest) and to what (`to`).
#[must_use]
pub fn rollback_confirm(
    viewer: &Viewer,
    project: &str,
    env: &str,
    from: Option<&Deployment>,
    to: &Deployment,
) -> Markup {
    let here = env_path(project, env);
    page(
        &format!("Roll back {env}"),
        Some(viewer),
        false,
        &html! {
            h1 { "Roll back " (env) "?" }
            (project_nav(project))
            p {
                "This re-deploys deployment #" (to.id) " (" (version(to)) ", job " (to.job) ")"
                @if let Some(f) = from { " in place of deployment #" (f.id) " (" (version(f)) ")" }
                "."
            }
            form.confirm method="post" action={ (here) "/rollback" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="to" value=(to.id);
                button type="submit" { "Roll back to #" (to.id) }
                " " a href=(here) { "Cancel" }
            }
        },
    )
}

/// Measurements grouped by check, in the order the checks first appear.
fn by_check(ms: &[Measurement]) -> Vec<(&str, Vec<&Measurement>)> {
    let mut out: Vec<(&str, Vec<&Measurement>)> = Vec::new();
    for m in ms {
        match out.iter_mut().find(|(c, _)| *c == m.check) {
            Some((_, v)) => v.push(m),
            None => out.push((&m.check, vec![m])),
        }
    }
    out
}

/// The number a threshold is drawn at: its last word, after any comparison (`<= 0.05`, `>= 1`,
/// `status 200`, `<0.5`).
fn threshold_value(t: &str) -> Option<f64> {
    t.split_whitespace()
        .last()?
        .trim_start_matches(['<', '>', '=', '!'])
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
}

/// A chart's geometry: each measurement's point (`x`, `y`, passed), and the threshold's `y`.
#[derive(Debug, PartialEq)]
struct Plot {
    points: Vec<(f64, f64, bool)>,
    threshold: Option<f64>,
}

/// Lays out the measurements of one check: left to right in order, values scaled between the
/// lowest and highest of them and the threshold (higher up). A measurement without a value has
/// no point.
fn plot(ms: &[&Measurement]) -> Plot {
    let threshold = ms.first().and_then(|m| threshold_value(&m.threshold));
    let range = span(ms.iter().filter_map(|m| m.value).chain(threshold));
    let area = Area::inside(W, H, PAD);
    Plot {
        points: ms
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let v = m.value.filter(|v| v.is_finite())?;
                Some((area.x(i, ms.len()), area.y(v, range), m.passed))
            })
            .collect(),
        threshold: threshold.map(|t| area.y(t, range)),
    }
}

/// One check's measurements: a small chart (decoration) and the same values as a list (for
/// everyone, screen readers included).
fn chart(check: &str, ms: &[&Measurement]) -> Markup {
    let p = plot(ms);
    let threshold = ms.first().map_or("", |m| m.threshold.as_str());
    let line = polyline(p.points.iter().map(|&(x, y, _)| (x, y)));
    html! {
        figure.chart data-check=(check) {
            figcaption { code { (check) } " against " code { (threshold) } }
            svg width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } aria-hidden="true" {
                @if let Some(t) = p.threshold {
                    line.threshold x1="0" x2=(W) y1=(at(t)) y2=(at(t)) {}
                }
                @if p.points.len() > 1 { polyline.values points=(line) {} }
                @for (x, y, passed) in &p.points {
                    @if *passed {
                        circle.pass cx=(at(*x)) cy=(at(*y)) r="2.5" {}
                    } @else {
                        // A failed point is a cross, not only a colour.
                        path.fail d=(format!("M{:.1},{:.1}l6,6m0,-6l-6,6", x - 3.0, y - 3.0)) {}
                    }
                }
            }
            ol.values {
                @for m in ms {
                    li class=(if m.passed { "pass" } else { "fail" }) {
                        @match m.value { Some(v) => (num(v)), None => "no value" }
                        " " (if m.passed { "passed" } else { "failed" })
                        @if let Some(w) = m.weight { " at " (w) "%" }
                        @if let Some(d) = &m.detail { ": " (d) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::viewer;

    fn m(check: &str, value: Option<f64>, threshold: &str, passed: bool) -> Measurement {
        Measurement {
            kind: "prometheus".into(),
            check: check.into(),
            value,
            threshold: threshold.into(),
            passed,
            phase: if passed { "pass" } else { "fail" }.into(),
            detail: None,
            elapsed_ms: 0,
            weight: None,
        }
    }

    fn dep(id: i64, status: DeploymentStatus) -> Deployment {
        Deployment {
            id,
            project: "web".into(),
            environment: "review/<x>".into(),
            url: None,
            tier: None,
            status,
            job_id: id * 10,
            job: "deploy".into(),
            pipeline_id: id * 100,
            sha: "0123456789abcdef".into(),
            git_ref: "main".into(),
            triggered_by: "push by <b>mallory</b>".into(),
            variables: vec![],
            artifacts: vec![],
            created_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            rollback_of: None,
            rolled_back_by: None,
            measurements: vec![],
        }
    }

    fn list(rows: Vec<Deployment>) -> DeploymentList {
        DeploymentList {
            project: "web".into(),
            environment: "review/<x>".into(),
            newest: rows.first().map(|d| d.id),
            rows,
            page: 1,
            pages: 1,
        }
    }

    #[test]
    fn thresholds_are_read_from_their_last_number() {
        assert_eq!(threshold_value("<= 0.05"), Some(0.05));
        assert_eq!(threshold_value(">= 1"), Some(1.0));
        assert_eq!(threshold_value("status 200"), Some(200.0));
        assert_eq!(threshold_value("<0.5"), Some(0.5));
        assert_eq!(threshold_value("p < alpha"), None);
        assert_eq!(threshold_value(""), None);
    }

    #[test]
    fn the_chart_scales_values_and_threshold_together() {
        let ms = [
            m("errors", Some(0.0), "<= 0.05", true),
            m("errors", None, "<= 0.05", false),
            m("errors", Some(0.1), "<= 0.05", false),
        ];
        let refs: Vec<&Measurement> = ms.iter().collect();
        let p = plot(&refs);
        // 0 is the lowest (bottom), 0.1 the highest (top), 0.05 half way; the second has no value.
        assert_eq!(p.points, vec![(PAD, H - PAD, true), (W - PAD, PAD, false)]);
        assert_eq!(p.threshold, Some(H / 2.0));
        // One value on its threshold: both in the middle.
        let one = m("up", Some(200.0), "status 200", true);
        let p = plot(&[&one]);
        assert_eq!(p.points, vec![(W / 2.0, H / 2.0, true)]);
        assert_eq!(p.threshold, Some(H / 2.0));
    }

    #[test]
    fn charts_mark_failures_and_say_the_values_in_text() {
        let mut d = dep(2, DeploymentStatus::Failed);
        d.measurements = vec![
            m("errors", Some(0.01), "<= 0.05", true),
            m("latency", Some(1.5), "<= 1", false),
            m("errors", Some(0.2), "<= 0.05", false),
        ];
        let html = environment(&viewer(true), &list(vec![d]), None).into_string();
        assert_eq!(html.matches("<figure class=\"chart\"").count(), 2, "{html}");
        assert!(html.contains("<code>errors</code> against <code>&lt;= 0.05</code>"));
        assert!(
            html.contains("<li class=\"pass\">0.01 passed</li><li class=\"fail\">0.2 failed</li>")
        );
        assert!(html.contains("<li class=\"fail\">1.5 failed</li>"));
        assert_eq!(html.matches("<path class=\"fail\"").count(), 2);
        assert_eq!(html.matches("<circle class=\"pass\"").count(), 1);
        assert_eq!(html.matches("<line class=\"threshold\"").count(), 2);
    }

    #[test]
    fn rollback_is_offered_on_earlier_successes_to_writers_only() {
        let mut newest = dep(3, DeploymentStatus::Success);
        newest.rollback_of = Some(2);
        let mut rolled = dep(2, DeploymentStatus::RolledBack);
        rolled.rolled_back_by = Some(3);
        let rows = vec![
            newest,
            rolled,
            dep(1, DeploymentStatus::Success),
            dep(0, DeploymentStatus::Failed),
        ];
        let html = environment(&viewer(true), &list(rows.clone()), None).into_string();
        assert!(html.contains("rollback of #2") && html.contains("rolled back by #3"));
        assert!(html.contains("<span class=\"stext\">rolled_back</span>"));
        assert_eq!(html.matches(">Rollback</button>").count(), 1, "{html}");
        assert!(html.contains(
            "action=\"/projects/web/environments/review%2F%3Cx%3E/rollback\"><input type=\"hidden\" name=\"to\" value=\"1\">"
        ));
        let html = environment(&viewer(false), &list(rows), None).into_string();
        assert!(!html.contains("Rollback</button>") && !html.contains("/rollback\""));
        // While one runs, the page refreshes itself.
        assert!(!html.contains("data-live"));
        let html = environment(
            &viewer(true),
            &list(vec![dep(4, DeploymentStatus::Running)]),
            None,
        )
        .into_string();
        assert!(html.contains("data-live=\"1\""));
    }

    #[test]
    fn the_confirmation_posts_with_the_csrf_token() {
        let html = rollback_confirm(
            &viewer(true),
            "web",
            "prod",
            Some(&dep(2, DeploymentStatus::Success)),
            &dep(1, DeploymentStatus::Success),
        )
        .into_string();
        assert!(html.contains("<form class=\"confirm\" method=\"post\" action=\"/projects/web/environments/prod/rollback\"><input type=\"hidden\" name=\"csrf\" value=\"c5rf\"><input type=\"hidden\" name=\"to\" value=\"1\">"), "{html}");
        assert!(html.contains("in place of deployment #2"));
    }

    #[test]
    fn everything_from_users_is_escaped() {
        let mut d = dep(1, DeploymentStatus::Success);
        d.measurements = vec![m("<script>x</script>", Some(1.0), "<= 2", true)];
        d.measurements[0].detail = Some("<img src=x>".into());
        let html =
            environment(&viewer(true), &list(vec![d.clone()]), Some("<b>no</b>")).into_string();
        for bad in ["<script>x", "<img", "<b>"] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(html.contains("Environment review/&lt;x&gt;"));
        assert!(html.contains("push by &lt;b&gt;mallory&lt;/b&gt;"));
        assert!(html.contains("refused: &lt;b&gt;no&lt;/b&gt;"));
        let env = Environment {
            name: "a\"><script>".into(),
            url: Some("javascript:alert(1)\"".into()),
            tier: None,
            deployments: 1,
            last: d.clone(),
            current: Some(d),
        };
        let html = environments(&viewer(true), "web", &[env]).into_string();
        // Only the page's own script; a URL that is not http(s) is no link.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("javascript:"));
        assert!(html.contains("a&quot;&gt;&lt;script&gt;"));
        assert!(html.contains("href=\"/projects/web/environments/a%22%3E%3Cscript%3E\""));
        assert!(html.contains("href=\"/pipelines/100\""));
    }
}
