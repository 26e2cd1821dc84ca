//! The web UI's pages, rendered on the server: `gantry-api` values in, HTML out (`maud`, whose
//! templates are checked at compile time and escape every value by default), plus the UI's two
//! assets ([`STYLE`], [`SCRIPT`]), embedded so that the UI works offline and needs no build step.
//!
//! No IO and no state: the server reads the data and the session, and hands them here with a
//! [`Viewer`]. Every page names each status in text beside its icon, works with the keyboard, and
//! reads without JavaScript except for its live parts (the script refreshes a page's `main` while
//! something runs, and renders a job's log in chunks, following it over Server-Sent Events).

mod chart;
mod coverage;
mod environments;
mod graph;
pub mod log;
mod pages;
mod text;

use gantry_api::{JobStatus, PipelineStatus, TokenScope};
pub use maud::Markup;
use maud::{DOCTYPE, html};
use text::time;

pub use coverage::{CoverageTrend, TREND_LEN};
pub use environments::{DeploymentList, environment, environments, rollback_confirm};
pub use pages::{
    PipelineList, PipelineRow, ProjectRow, agents, deliveries, error, job, pipeline, pipelines,
    projects, reports, signin,
};

/// The style sheet, served at `/assets/style.css`: light, and dark under `prefers-color-scheme`.
pub const STYLE: &str = include_str!("../assets/style.css");
/// The script, served at `/assets/app.js`: relative ages, live refresh, the log's chunks and
/// sections.
pub const SCRIPT: &str = include_str!("../assets/app.js");

/// Who looks at a page, and what they may do.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// `admin`, or the project token's name and project.
    pub who: String,
    /// The token every form that changes something carries (`csrf`).
    pub csrf: String,
    /// Whether cancel, retry and play are offered (not to a token of scope `read`).
    pub can_write: bool,
    /// A project token's scope, shown beside the sign-out; the admin has none.
    pub scope: Option<TokenScope>,
    /// Whether this is the admin (who sees the agents).
    pub admin: bool,
}

/// A page: the head, the navigation, `main` (with `data-live` while something runs, which the
/// script refreshes), and the script.
fn page(title: &str, viewer: Option<&Viewer>, live: bool, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Gantry" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/" { "Gantry" }
                        @if let Some(v) = viewer {
                            a href="/" { "Projects" }
                            @if v.admin { a href="/agents" { "Agents" } }
                            span.who {
                                "Signed in as " (v.who)
                                @if let Some(scope) = v.scope { " · scope " span.scope { (scope) } }
                                @if !v.can_write { " (read only)" }
                            }
                            form.inline method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main data-live=[live.then_some("1")] {
                    (body)
                }
            }
        }
    }
}

/// The icon glyph and CSS class of a status, named by `text` beside it.
fn badge(text: &str) -> Markup {
    let glyph = match text {
        "success" => "✓",
        "failed" => "✗",
        "running" => "●",
        "pending" | "created" | "waiting_for_resource" | "preparing" => "○",
        "canceled" => "⊘",
        "skipped" => "»",
        "manual" => "▶",
        "scheduled" => "◷",
        "rolled_back" => "↶",
        _ => "?",
    };
    html! {
        span class={ "badge st-" (text) } {
            span.icon aria-hidden="true" { (glyph) }
            " " span.stext { (text) }
        }
    }
}

/// A job status as a badge.
fn job_badge(s: JobStatus) -> Markup {
    badge(&s.to_string())
}

/// A pipeline status as a badge.
fn pipeline_badge(s: PipelineStatus) -> Markup {
    badge(&s.to_string())
}

/// A duration in seconds, as `1h 02m`, `3m 05s` or `12s`.
#[must_use]
pub fn duration(secs: Option<f64>) -> String {
    let Some(s) = secs else {
        return "—".to_string();
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `s` percent-encoded for a URL path segment or query value.
#[must_use]
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A form that posts to `action` with the CSRF token: one button.
fn action(viewer: &Viewer, action: &str, label: &str, aria: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(viewer.csrf);
            button type="submit" aria-label=(aria) { (label) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin, who may write or not, for tests.
    pub(crate) fn viewer(can_write: bool) -> Viewer {
        Viewer {
            who: "admin".into(),
            csrf: "c5rf".into(),
            can_write,
            scope: None,
            admin: true,
        }
    }

    #[test]
    fn a_project_token_s_scope_is_shown_beside_the_sign_out() {
        let v = Viewer {
            who: "viewer (web)".into(),
            csrf: "c5rf".into(),
            can_write: false,
            scope: Some(TokenScope::Read),
            admin: false,
        };
        let html = page("t", Some(&v), false, &html! {}).into_string();
        assert!(
            html.contains(
                "Signed in as viewer (web) · scope <span class=\"scope\">read</span> (read only)"
            ),
            "{html}"
        );
        let html = page("t", Some(&viewer(true)), false, &html! {}).into_string();
        assert!(!html.contains("class=\"scope\""), "{html}");
    }

    /// A job for tests.
    pub(crate) fn job(id: i64, name: &str, stage: &str) -> gantry_api::Job {
        gantry_api::Job {
            id,
            pipeline_id: 1,
            name: name.to_string(),
            stage: stage.to_string(),
            status: JobStatus::Success,
            when: "on_success".into(),
            allow_failure: false,
            needs: None,
            tags: vec![],
            attempt: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            queued_at: None,
            started_at: None,
            finished_at: None,
            duration: Some(65.0),
            agent: None,
            exit_code: None,
            failure_reason: None,
            coverage: None,
            log_size: 0,
            has_artifacts: false,
        }
    }

    /// A running pipeline of `jobs` whose project and ref hold markup, for tests.
    pub(crate) fn pipe(jobs: Vec<gantry_api::Job>) -> gantry_api::Pipeline {
        gantry_api::Pipeline {
            id: 7,
            project: "<p>".into(),
            git_ref: "main\"><script>".into(),
            tag: false,
            sha: "0123456789abcdef".into(),
            before_sha: None,
            source: "push".into(),
            status: PipelineStatus::Running,
            trace_id: "t1".into(),
            errors: vec![],
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            duration: None,
            fork: None,
            jobs,
        }
    }

    #[test]
    fn durations_and_encoding() {
        assert_eq!(duration(Some(5.4)), "5s");
        assert_eq!(duration(Some(65.0)), "1m 05s");
        assert_eq!(duration(Some(3720.0)), "1h 02m");
        assert_eq!(duration(None), "—");
        assert_eq!(enc("feature/a b&c"), "feature%2Fa%20b%26c");
    }

    #[test]
    fn statuses_are_named_in_text() {
        let b = badge("failed").into_string();
        assert!(b.contains("aria-hidden=\"true\""));
        assert!(b.contains("<span class=\"stext\">failed</span>"));
    }
}
