//! One function per page.

use gantry_api::reports::ReportsSummary;
use gantry_api::{Agent, Delivery, Job, JobStatus, Pipeline, PipelineStatus};
use maud::{Markup, html};

use crate::coverage::{CoverageTrend, trend};
use crate::graph::{BOX_H, BOX_W, layout};
use crate::{Viewer, action, badge, duration, enc, job_badge, page, pipeline_badge, time};

/// The sign-in page; `error` says why the last attempt failed; `csrf` is the form's token.
#[must_use]
pub fn signin(error: Option<&str>, csrf: &str) -> Markup {
    page(
        "Sign in",
        None,
        false,
        &html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.signin method="post" action="/signin" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Token (the admin token or a project token)" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A project on the projects page.
#[derive(Debug, Clone)]
pub struct ProjectRow {
    /// Its name.
    pub name: String,
    /// Its default branch.
    pub default_branch: String,
    /// The last pipeline of its default branch.
    pub last: Option<Pipeline>,
}

/// The projects page.
#[must_use]
pub fn projects(viewer: &Viewer, rows: &[ProjectRow]) -> Markup {
    let live = rows
        .iter()
        .any(|r| r.last.as_ref().is_some_and(|p| !p.status.is_final()));
    page(
        "Projects",
        Some(viewer),
        live,
        &html! {
            h1 { "Projects" }
            @if rows.is_empty() { p { "No project yet." } }
            @else {
                table {
                    thead { tr { th { "Project" } th { "Default branch" } th { "Last pipeline" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { a href={ "/projects/" (enc(&r.name)) } { (r.name) } }
                                td { code { (r.default_branch) } }
                                td {
                                    @match &r.last {
                                        Some(p) => { (pipeline_badge(p.status)) " " a href={ "/pipelines/" (p.id) } { "#" (p.id) } }
                                        None => { "none" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A pipeline of the list, with its commit's title.
#[derive(Debug, Clone)]
pub struct PipelineRow {
    /// The pipeline (its jobs need not be loaded).
    pub pipeline: Pipeline,
    /// The commit's title, when the server knows it.
    pub title: Option<String>,
}

/// A page of a project's pipelines, and its filters.
#[derive(Debug, Clone)]
pub struct PipelineList {
    /// The project.
    pub project: String,
    /// The rows.
    pub rows: Vec<PipelineRow>,
    /// The ref filter.
    pub git_ref: Option<String>,
    /// The status filter.
    pub status: Option<PipelineStatus>,
    /// This page, from 1.
    pub page: i64,
    /// How many pages.
    pub pages: i64,
}

pub(crate) use crate::text::short;

pub(crate) fn project_nav(project: &str) -> Markup {
    html! {
        nav.sub aria-label="Project" {
            a href={ "/projects/" (enc(project)) } { "Pipelines" }
            a href={ "/projects/" (enc(project)) "/environments" } { "Environments" }
            a href={ "/projects/" (enc(project)) "/deliveries" } { "Deliveries" }
        }
    }
}

/// The pipelines of a project.
#[must_use]
pub fn pipelines(viewer: &Viewer, list: &PipelineList) -> Markup {
    let live = list.rows.iter().any(|r| !r.pipeline.status.is_final());
    let link = |page: i64| {
        let mut q = format!("?page={page}");
        if let Some(r) = &list.git_ref {
            q.push_str(&format!("&ref={}", enc(r)));
        }
        if let Some(s) = list.status {
            q.push_str(&format!("&status={s}"));
        }
        q
    };
    page(
        &list.project,
        Some(viewer),
        live,
        &html! {
            h1 { (list.project) }
            (project_nav(&list.project))
            form.filters method="get" role="search" {
                label for="ref" { "Ref" }
                input #ref type="text" name="ref" value=[list.git_ref.as_deref()];
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for s in gantry_api::ALL_PIPELINE_STATUSES {
                        option value=(s) selected[list.status == Some(s)] { (s) }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if list.rows.is_empty() { p { "No pipeline." } }
            @else {
                table.pipelines {
                    thead { tr { th { "Status" } th { "Pipeline" } th { "Ref" } th { "Commit" } th { "Source" } th { "Duration" } th { "Created" } } }
                    tbody {
                        @for r in &list.rows {
                            @let p = &r.pipeline;
                            tr {
                                td { (pipeline_badge(p.status)) }
                                td { a href={ "/pipelines/" (p.id) } { "#" (p.id) } }
                                td { code { (p.git_ref) } }
                                td { code { (short(&p.sha)) } @if let Some(t) = &r.title { " " span.title { (t) } } }
                                td { (p.source) }
                                td { (duration(p.duration)) }
                                td { (time(&p.created_at)) }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if list.page > 1 { a rel="prev" href=(link(list.page - 1)) { "← Newer" } }
                span { "Page " (list.page) " of " (list.pages.max(1)) }
                @if list.page < list.pages { a rel="next" href=(link(list.page + 1)) { "Older →" } }
            }
        },
    )
}

/// The manual or delayed state, and allowed failure, of a job, in words.
fn job_marks(j: &Job) -> Markup {
    html! {
        @if j.allow_failure { span.mark { "allowed to fail" } }
        @if j.when == "manual" { span.mark { "manual" } }
        @if j.when == "delayed" { span.mark { "delayed" } }
    }
}

/// A pipeline: its facts, its graph and its actions.
#[must_use]
pub fn pipeline(viewer: &Viewer, p: &Pipeline, title: Option<&str>) -> Markup {
    let l = layout(&p.jobs);
    page(
        &format!("Pipeline #{}", p.id),
        Some(viewer),
        !p.status.is_final(),
        &html! {
            h1 { "Pipeline #" (p.id) " " (pipeline_badge(p.status)) }
            (project_nav(&p.project))
            dl.facts {
                dt { "Project" } dd { a href={ "/projects/" (enc(&p.project)) } { (p.project) } }
                dt { "Ref" } dd { code { (p.git_ref) } }
                dt { "Commit" } dd { code { (short(&p.sha)) } @if let Some(t) = title { " " span.title { (t) } } }
                dt { "Trigger" } dd { (p.source) }
                dt { "Duration" } dd { (duration(p.duration)) }
                dt { "Created" } dd { (time(&p.created_at)) }
                dt { "Trace ID" } dd { code { (p.trace_id) } }
            }
            @if !p.errors.is_empty() {
                ul.errors role="alert" {
                    @for e in &p.errors { li { (e.file) ":" (e.line) ":" (e.column) ": " (e.message) } }
                }
            }
            p.actions {
                a href={ "/pipelines/" (p.id) "/reports" } { "Reports" }
                // A finished pipeline may still hold a running rollback, which cancel stops.
                @if viewer.can_write && (!p.status.is_final() || p.jobs.iter().any(|j| matches!(j.status, JobStatus::Pending | JobStatus::Running))) {
                    " " (action(viewer, &format!("/pipelines/{}/cancel", p.id), "Cancel pipeline", "Cancel pipeline"))
                }
            }
            div.graphwrap {
                div.graph style={ "width:" (l.width) "px;height:" (l.height) "px" } {
                    svg.edges width=(l.width) height=(l.height) aria-hidden="true" {
                        @for e in &l.edges {
                            path d=(e.path) data-from=(e.from) data-to=(e.to) {}
                        }
                    }
                    @for (s, x) in &l.stages {
                        h2.stage style={ "left:" (x) "px;width:" (BOX_W) "px" } { (s) }
                    }
                    @for j in &l.jobs {
                        div class={ "job st-" (j.job.status) } data-job=(j.job.name)
                            style={ "left:" (j.x) "px;top:" (j.y) "px;width:" (BOX_W) "px;height:" (BOX_H) "px" } {
                            a.jname href={ "/jobs/" (j.job.id) } { (j.job.name) }
                            div.jline { (job_badge(j.job.status)) " " span.dur { (duration(j.job.duration)) } }
                            div.jmarks { (job_marks(j.job)) }
                            @if viewer.can_write {
                                @if j.job.status == JobStatus::Manual {
                                    (action(viewer, &format!("/jobs/{}/play", j.job.id), "Play", &format!("Play {}", j.job.name)))
                                } @else if j.job.status.is_final() && j.job.status != JobStatus::Skipped {
                                    (action(viewer, &format!("/jobs/{}/retry", j.job.id), "Retry", &format!("Retry {}", j.job.name)))
                                }
                            }
                        }
                    }
                }
            }
            // The same jobs as a list, for screen readers and narrow screens.
            details.joblist {
                summary { "Jobs as a list" }
                ul { @for j in &p.jobs { li { a href={ "/jobs/" (j.id) } { (j.name) } " (" (j.stage) "): " (j.status) } } }
            }
        },
    )
}

/// A job: its facts and its log (which the script loads in chunks and follows).
#[must_use]
pub fn job(viewer: &Viewer, project: &str, j: &Job) -> Markup {
    page(
        &j.name,
        Some(viewer),
        false,
        &html! {
            h1 { (j.name) " " (job_badge(j.status)) }
            (project_nav(project))
            dl.facts {
                dt { "Pipeline" } dd { a href={ "/pipelines/" (j.pipeline_id) } { "#" (j.pipeline_id) } }
                dt { "Stage" } dd { (j.stage) }
                dt { "Attempt" } dd { (j.attempt) }
                dt { "Duration" } dd { (duration(j.duration)) }
                dt { "Agent" } dd { (j.agent.as_deref().unwrap_or("—")) }
                @if let Some(r) = &j.failure_reason { dt { "Failure" } dd { (r) } }
                @if let Some(c) = j.exit_code { dt { "Exit code" } dd { (c) } }
            }
            p.actions {
                a href={ "/jobs/" (j.id) "/raw" } download { "Download the raw log" }
                @if viewer.can_write {
                    @if j.status == JobStatus::Manual {
                        " " (action(viewer, &format!("/jobs/{}/play", j.id), "Play", &format!("Play {}", j.name)))
                    } @else if j.status.is_final() && j.status != JobStatus::Skipped {
                        " " (action(viewer, &format!("/jobs/{}/retry", j.id), "Retry", &format!("Retry {}", j.name)))
                    }
                }
            }
            div #log .log role="log" aria-live="polite" data-job=(j.id) data-final=[j.status.is_final().then_some("1")] {}
            noscript { p { "The log needs JavaScript; the raw log needs none." } }
        },
    )
}

/// The agents page: each agent with its current jobs (live while any runs).
#[must_use]
pub fn agents(viewer: &Viewer, list: &[Agent]) -> Markup {
    page(
        "Agents",
        Some(viewer),
        list.iter().any(|a| !a.jobs.is_empty()),
        &html! {
            h1 { "Agents" }
            @if list.is_empty() { p { "No agent has registered." } }
            @else {
                table {
                    thead { tr { th { "Name" } th { "Status" } th { "Current jobs" } th { "Tags" } th { "Executor" } th { "Concurrency" } th { "Version" } th { "Protocol" } th { "Last contact" } } }
                    tbody {
                        @for a in list {
                            tr {
                                td { (a.name) }
                                td { (badge(if a.online { "online" } else { "offline" })) }
                                td {
                                    @if a.jobs.is_empty() { "idle" }
                                    @for j in &a.jobs {
                                        div {
                                            a href={ "/jobs/" (j.id) } { (j.name) " #" (j.id) }
                                            " of " (j.project) " "
                                            a href={ "/pipelines/" (j.pipeline_id) } { "pipeline #" (j.pipeline_id) }
                                            ", since " (time(&j.claimed_at))
                                        }
                                    }
                                }
                                td { @if a.tags.is_empty() { "untagged" } @else { (a.tags.join(", ")) } }
                                td { (a.executor) }
                                td { (a.concurrency) }
                                td { (a.version) }
                                td { @match a.protocol { Some(p) => (p), None => "unknown" } }
                                td { @match &a.last_seen_at { Some(t) => (time(t)), None => "never" } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The webhook deliveries of a project: why a push made no pipeline.
#[must_use]
pub fn deliveries(
    viewer: &Viewer,
    project: &str,
    list: &[Delivery],
    page_no: i64,
    pages: i64,
) -> Markup {
    page(
        &format!("Deliveries of {project}"),
        Some(viewer),
        false,
        &html! {
            h1 { "Deliveries of " (project) }
            (project_nav(project))
            @if list.is_empty() { p { "No delivery." } }
            @else {
                table {
                    thead { tr { th { "Received" } th { "Event" } th { "Status" } th { "Pipeline" } th { "Attempts" } th { "Reason or last error" } } }
                    tbody {
                        @for d in list {
                            tr {
                                td { (time(&d.received_at)) }
                                td { (d.event) }
                                td { (badge(&d.status.to_string())) }
                                td { @if let Some(p) = d.pipeline_id { a href={ "/pipelines/" (p) } { "#" (p) } } }
                                td { (d.attempts) }
                                td { (d.reason.as_deref().or(d.last_error.as_deref()).unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            (pager(page_no, pages))
        },
    )
}

/// Links to the newer and older pages of a list that takes only `?page=N`.
pub(crate) fn pager(page_no: i64, pages: i64) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if page_no > 1 { a rel="prev" href={ "?page=" (page_no - 1) } { "← Newer" } }
            span { "Page " (page_no) " of " (pages.max(1)) }
            @if page_no < pages { a rel="next" href={ "?page=" (page_no + 1) } { "Older →" } }
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.2}%"))
}

/// The mean of the jobs' coverage, as the trend counts a pipeline's (two decimals).
fn mean_coverage(r: &ReportsSummary) -> Option<f64> {
    let jobs = &r.coverage.jobs;
    #[allow(clippy::cast_precision_loss)]
    let mean = jobs.iter().map(|c| c.percent).sum::<f64>() / jobs.len() as f64;
    (!jobs.is_empty()).then(|| (mean * 100.0).round() / 100.0)
}

/// The reports of a pipeline: tests, coverage per job and the default branch's coverage trend,
/// gates, SARIF and vulnerabilities.
#[must_use]
pub fn reports(viewer: &Viewer, p: &Pipeline, r: &ReportsSummary, t: &CoverageTrend) -> Markup {
    page(
        &format!("Reports of pipeline #{}", p.id),
        Some(viewer),
        false,
        &html! {
            h1 { "Reports of " a href={ "/pipelines/" (p.id) } { "pipeline #" (p.id) } }
            section aria-labelledby="tests" {
                h2 #tests { "Tests" }
                @match &r.tests {
                    None => p { "No test report." },
                    Some(t) => {
                        p { (t.total) " tests: " (t.passed) " passed, " (t.failed) " failed, " (t.errors) " errors, " (t.skipped) " skipped" }
                        @let failing = t.failed + t.errors;
                        @if (t.failures.len() as u64) < failing {
                            p.capped { "The first " (t.failures.len()) " of the " (failing) " failed or erroring cases:" }
                        }
                        @if !t.failures.is_empty() {
                            table {
                                thead { tr { th { "Job" } th { "Suite" } th { "Case" } th { "Kind" } th { "Message" } } }
                                tbody { @for f in &t.failures { tr { td { (f.job) } td { (f.suite) } td { (f.name) } td { (f.kind) } td { pre { (f.message) } } } } }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="coverage" {
                h2 #coverage { "Coverage" }
                p { "Overall: " (pct(r.coverage.percent)) }
                @if !r.coverage.jobs.is_empty() {
                    table {
                        thead { tr { th { "Job" } th { "Coverage" } } }
                        tbody { @for c in &r.coverage.jobs { tr { td { a href={ "/jobs/" (c.job_id) } { (c.job) } } td { (pct(Some(c.percent))) } } } }
                    }
                }
                (trend(p, mean_coverage(r), t))
            }
            section aria-labelledby="gates" {
                h2 #gates { "Gates" }
                @if r.gates.is_empty() { p { "No gate." } }
                @for g in &r.gates {
                    h3 { (g.job) ": " (badge(if g.passed { "passed" } else { "failed" })) }
                    table {
                        thead { tr { th { "Condition" } th { "Actual" } th { "Outcome" } } }
                        tbody {
                            @for c in &g.conditions {
                                tr {
                                    td { (c.metric) " " (c.operator) " " (c.threshold) }
                                    td { @match c.actual { Some(a) => (a), None => "no data" } }
                                    td { (badge(if c.passed { "passed" } else { "failed" })) " " (c.verdict) }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="sarif" {
                h2 #sarif { "SARIF findings" }
                @match &r.sarif {
                    None => p { "No SARIF report." },
                    Some(s) => {
                        p { (s.errors) " errors, " (s.warnings) " warnings, " (s.notes) " notes, " (s.none) " none" }
                        @if !s.results.is_empty() {
                            table {
                                thead { tr { th { "Level" } th { "Rule" } th { "Where" } th { "Message" } } }
                                tbody { @for f in &s.results { tr { td { (f.level) } td { (f.rule_id.as_deref().unwrap_or("")) } td { (f.file.as_deref().unwrap_or("")) @if let Some(l) = f.line { ":" (l) } } td { (f.message) } } } }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="vulns" {
                h2 #vulns { "Vulnerabilities" }
                @match &r.vulnerabilities {
                    None => p { "No security report." },
                    Some(v) => {
                        p { (v.critical) " critical, " (v.high) " high, " (v.medium) " medium, " (v.low) " low, " (v.info) " info, " (v.unknown) " unknown" }
                        @if !v.vulnerabilities.is_empty() {
                            table {
                                thead { tr { th { "Severity" } th { "Id" } th { "Name" } th { "Package" } th { "Where" } } }
                                tbody { @for f in &v.vulnerabilities { tr { td { (f.severity) } td { (f.id) } td { (f.name) } td { (f.package.as_deref().unwrap_or("")) " " (f.version.as_deref().unwrap_or("")) } td { (f.file.as_deref().unwrap_or("")) } } } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An error page.
#[must_use]
pub fn error(viewer: Option<&Viewer>, status: u16, message: &str) -> Markup {
    page(
        "Error",
        viewer,
        false,
        &html! {
            h1 { "Error " (status) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to the projects" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{job, pipe, viewer};

    #[test]
    fn everything_from_users_is_escaped() {
        let mut j = job(1, "<img src=x onerror=alert(1)>", "build");
        j.status = JobStatus::Manual;
        let html = pipeline(
            &viewer(true),
            &pipe(vec![j]),
            Some("<script>window.__xss=1</script>"),
        )
        .into_string();
        assert!(!html.contains("<script>window"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"));
        assert!(html.contains("main&quot;&gt;&lt;script&gt;"));
        assert!(html.contains("href=\"/projects/%3Cp%3E\""));
    }

    #[test]
    fn agents_show_their_jobs_as_links_or_idle() {
        let agent = |name: &str, jobs: Vec<gantry_api::AgentJob>| Agent {
            id: 1,
            name: name.into(),
            tags: vec![],
            run_untagged: true,
            executor: "shell".into(),
            concurrency: 2,
            version: "0.1.0".into(),
            registered_at: "2026-01-01T00:00:00Z".into(),
            last_seen_at: None,
            online: true,
            protocol: Some(3),
            jobs,
        };
        let running = |id: i64, name: &str| gantry_api::AgentJob {
            id,
            name: name.into(),
            pipeline_id: 7,
            project: "<p>".into(),
            claimed_at: "2026-01-01T00:00:05Z".into(),
        };
        let list = [
            agent(
                "busy",
                vec![running(11, "<b>build</b>"), running(12, "test")],
            ),
            agent("rest", vec![]),
        ];
        let html = agents(&viewer(true), &list).into_string();
        assert!(
            html.contains("<a href=\"/jobs/11\">&lt;b&gt;build&lt;/b&gt; #11</a> of &lt;p&gt; "),
            "{html}"
        );
        assert!(html.contains("<a href=\"/jobs/12\">test #12</a>"), "{html}");
        assert!(
            html.contains("<a href=\"/pipelines/7\">pipeline #7</a>"),
            "{html}"
        );
        assert!(html.contains("<td>idle</td>"), "{html}");
        assert!(html.contains("<td>3</td>"), "the protocol: {html}");
        assert!(html.contains("data-live"), "it refreshes while jobs run");
        let html = agents(&viewer(true), &list[1..]).into_string();
        assert!(!html.contains("data-live"), "{html}");
    }

    #[test]
    fn buttons_carry_the_csrf_token_and_a_reader_gets_none() {
        let mut manual = job(1, "deploy", "deploy");
        manual.status = JobStatus::Manual;
        manual.when = "manual".into();
        let done = job(2, "build", "build");
        let p = pipe(vec![done, manual]);
        let html = pipeline(&viewer(true), &p, None).into_string();
        assert!(html.contains("action=\"/pipelines/7/cancel\""));
        assert!(html.contains("action=\"/jobs/1/play\""));
        assert!(html.contains("action=\"/jobs/2/retry\""));
        assert_eq!(html.matches("name=\"csrf\" value=\"c5rf\"").count(), 4);
        let html = pipeline(&viewer(false), &p, None).into_string();
        assert!(
            !html.contains("/cancel\"") && !html.contains("/play\"") && !html.contains("/retry\"")
        );
        assert!(html.contains("(read only)"));
        assert!(html.contains("manual</span>"));
    }

    #[test]
    fn reports_show_failures_gates_and_findings_escaped() {
        use gantry_api::reports::{
            FailedCase, GateConditionResult, GateResult, TestsSummary, VulnerabilitiesSummary,
        };
        let r = ReportsSummary {
            tests: Some(TestsSummary {
                total: 3,
                passed: 2,
                failed: 1,
                failures: vec![FailedCase {
                    job: "unit".into(),
                    suite: "s".into(),
                    name: "<b>case</b>".into(),
                    kind: "failure".into(),
                    message: "expected <1>".into(),
                }],
                ..TestsSummary::default()
            }),
            vulnerabilities: Some(VulnerabilitiesSummary {
                critical: 2,
                ..VulnerabilitiesSummary::default()
            }),
            gates: vec![GateResult {
                job_id: 1,
                job: "gate".into(),
                passed: false,
                conditions: vec![GateConditionResult {
                    metric: "coverage".into(),
                    operator: ">=".into(),
                    threshold: 80.0,
                    actual: Some(71.5),
                    passed: false,
                    verdict: "71.5 < 80".into(),
                }],
                offenders: gantry_api::reports::GateOffenders::default(),
            }],
            ..ReportsSummary::default()
        };
        let t = CoverageTrend {
            branch: "main".into(),
            points: vec![],
        };
        let html = reports(&viewer(true), &pipe(vec![]), &r, &t).into_string();
        assert!(html.contains("3 tests: 2 passed, 1 failed, 0 errors, 0 skipped"));
        assert!(html.contains("&lt;b&gt;case&lt;/b&gt;") && html.contains("expected &lt;1&gt;"));
        assert!(
            html.contains("<td>coverage &gt;= 80</td><td>71.5</td>"),
            "{html}"
        );
        assert!(html.contains("2 critical, 0 high"));
        assert!(html.contains("No SARIF report."));
    }

    #[test]
    fn reports_say_when_the_failed_cases_are_capped_and_link_covered_jobs() {
        use gantry_api::reports::{FailedCase, JobCoverage, TestsSummary};
        let case = |i: u64| FailedCase {
            job: "unit".into(),
            suite: "s".into(),
            name: format!("case {i}"),
            kind: "failure".into(),
            message: "boom".into(),
        };
        let mut r = ReportsSummary {
            tests: Some(TestsSummary {
                total: 900,
                passed: 400,
                failed: 499,
                errors: 1,
                failures: (0..2).map(case).collect(),
                ..TestsSummary::default()
            }),
            ..ReportsSummary::default()
        };
        r.coverage.jobs = vec![JobCoverage {
            job_id: 12,
            job: "<unit>".into(),
            percent: 80.0,
        }];
        let t = CoverageTrend {
            branch: "main".into(),
            points: vec![],
        };
        let html = reports(&viewer(true), &pipe(vec![]), &r, &t).into_string();
        assert!(
            html.contains("The first 2 of the 500 failed or erroring cases:"),
            "{html}"
        );
        assert!(html.contains("<td><a href=\"/jobs/12\">&lt;unit&gt;</a></td><td>80.00%</td>"));
        // All of them listed: no such line.
        r.tests.as_mut().unwrap().failed = 1;
        r.tests.as_mut().unwrap().errors = 1;
        let html = reports(&viewer(true), &pipe(vec![]), &r, &t).into_string();
        assert!(!html.contains("The first"), "{html}");
    }

    #[test]
    fn a_finished_pipeline_offers_cancel_only_while_a_job_in_it_runs() {
        let cancel = "action=\"/pipelines/7/cancel\"";
        let mut p = pipe(vec![job(1, "deploy", "deploy")]);
        p.status = PipelineStatus::Success;
        let html = pipeline(&viewer(true), &p, None).into_string();
        assert!(!html.contains(cancel), "{html}");
        // A rollback's attempt running in it: cancel stops it.
        let mut rollback = job(2, "deploy", "deploy");
        rollback.status = JobStatus::Running;
        p.jobs.push(rollback);
        assert!(
            pipeline(&viewer(true), &p, None)
                .into_string()
                .contains(cancel)
        );
        assert!(
            !pipeline(&viewer(false), &p, None)
                .into_string()
                .contains(cancel)
        );
    }

    #[test]
    fn pipeline_pages_keep_their_filters() {
        let mut p = pipe(vec![]);
        p.status = PipelineStatus::Failed;
        let list = PipelineList {
            project: "web".into(),
            rows: vec![PipelineRow {
                pipeline: p,
                title: Some("Fix <it>".into()),
            }],
            git_ref: Some("feature/a&b".into()),
            status: Some(PipelineStatus::Failed),
            page: 2,
            pages: 3,
        };
        let html = pipelines(&viewer(true), &list).into_string();
        assert!(
            html.contains("href=\"?page=1&amp;ref=feature%2Fa%26b&amp;status=failed\""),
            "{html}"
        );
        assert!(html.contains("href=\"?page=3&amp;ref=feature%2Fa%26b&amp;status=failed\""));
        assert!(html.contains("Page 2 of 3"));
        assert!(html.contains("<option value=\"failed\" selected>failed</option>"));
        assert!(html.contains("value=\"feature/a&amp;b\""));
        assert!(html.contains("<code>01234567</code> <span class=\"title\">Fix &lt;it&gt;</span>"));
        // Nothing runs: no live refresh.
        assert!(!html.contains("data-live"));
    }

    #[test]
    fn the_graph_draws_needs() {
        let mut test = job(2, "test", "test");
        test.needs = Some(vec!["build".into()]);
        let html = pipeline(
            &viewer(true),
            &pipe(vec![job(1, "build", "build"), test]),
            None,
        )
        .into_string();
        assert!(html.contains("data-from=\"build\" data-to=\"test\""));
        assert!(html.contains("data-job=\"build\""));
        assert!(html.contains("data-live=\"1\""));
    }
}
