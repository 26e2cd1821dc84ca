//! Jobs' report summaries on the server: what a finish stores ([`to_store`]), the inputs of a gate
//! job's spec ([`gate_inputs`], merged the way the runtime merges them locally; the change's lines,
//! [`pipeline_changes`] when its pipeline is created), and a pipeline's or job's reports as the API
//! shows them ([`view`]).
//!
//! The store keeps a job's summaries as opaque JSON (`gantry_reports::Reports` and
//! `GateOutcome`); they are decoded only here, for gate jobs and for the reports routes.

use std::path::Path;

use gantry_api::agent::FinishJob;
use gantry_api::reports as api;
use gantry_pipeline::gate::Metric;
use gantry_reports::{ChangedLines, GateOutcome, Reports};
use gantry_store::{NewReports, ReportsRecord};

use crate::error::AppError;
use crate::spec::ChangesDoc;

/// The largest finish body the server reads, however small `max_body_bytes` is (the agent
/// protocol's limit, which agents fit their summaries under).
pub(crate) const FINISH_MIN_LIMIT: usize = gantry_api::agent::MAX_FINISH_BYTES;

/// A finish body up to this size is read on the request's task; a larger one (summaries) on a
/// blocking thread.
pub(crate) const INLINE_FINISH: usize = 64 << 10;

/// Reads a finish's body. A body that does not parse is a `400` that names the part at fault
/// (`reports` or `gate` when theirs is the error), and changes nothing.
pub(crate) fn finish_body(bytes: &[u8]) -> Result<FinishJob, AppError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let part = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| {
                let reports = v.get("reports").filter(|r| !r.is_null()).and_then(|r| {
                    serde_json::from_value::<Reports>(r.clone())
                        .err()
                        .map(|e| format!("`reports`: {e}"))
                });
                reports.or_else(|| {
                    v.get("gate").filter(|g| !g.is_null()).and_then(|g| {
                        serde_json::from_value::<GateOutcome>(g.clone())
                            .err()
                            .map(|e| format!("`gate`: {e}"))
                    })
                })
            });
        AppError::bad_request(match part {
            Some(part) => format!("invalid JSON body: {part}"),
            None => format!("invalid JSON body: {e}"),
        })
    })
}

/// What a finish stores of the job's summaries and gate verdict (`None` when it sent neither),
/// with the plain numbers that lists and the coverage trend read.
pub(crate) fn to_store(body: &FinishJob) -> Option<NewReports> {
    if body.reports.is_none() && body.gate.is_none() {
        return None;
    }
    let r = body.reports.as_ref();
    let tests = r.and_then(|r| r.tests.as_ref());
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Some(NewReports {
        // Serializing these types cannot fail (string keys, finite or null numbers).
        reports: r.and_then(|r| serde_json::to_vec(r).ok()),
        gate: body.gate.as_ref().and_then(|g| serde_json::to_vec(g).ok()),
        coverage: r
            .and_then(Reports::coverage_percent)
            .or(body.coverage)
            .filter(|c| c.is_finite()),
        tests_total: tests.map(|t| count(t.total)),
        tests_failed: tests.map(|t| count(t.failed_or_errored())),
        gate_passed: body.gate.as_ref().map(|g| g.passed),
    })
}

/// A stored record's summaries, with its `coverage:` value among `job_coverage` unless they hold
/// it already (an agent's runtime puts it there): what the runtime keeps for a job that ran.
pub(crate) fn job_summaries(r: &ReportsRecord) -> Result<Option<Reports>, AppError> {
    let stored = match r.stored.as_ref().and_then(|s| s.reports.as_deref()) {
        Some(bytes) => Some(serde_json::from_slice::<Reports>(bytes).map_err(AppError::internal)?),
        None => None,
    };
    Ok(match (stored, r.job_coverage) {
        (Some(mut s), Some(c)) if s.job_coverage.is_empty() => {
            s.job_coverage.push(c);
            Some(s)
        }
        (Some(s), _) => Some(s),
        (None, Some(c)) => Some(Reports {
            job_coverage: vec![c],
            ..Reports::default()
        }),
        (None, None) => None,
    })
}

/// The names of the jobs a gate is evaluated on: its `needs` (with or without artifacts), else
/// `None` for every job of the earlier stages.
pub(crate) fn gate_source_names(job: &gantry_pipeline::Job) -> Option<Vec<String>> {
    job.needs
        .as_ref()
        .map(|needs| needs.iter().map(|n| n.job.clone()).collect())
}

/// The merged summaries of a gate's sources: `stored` are the reports of their counted attempts
/// (the latest of each but a rollback's, [`crate::advance::counted_of`]), in position order.
pub(crate) fn gate_inputs(stored: &[ReportsRecord]) -> Result<Reports, AppError> {
    let mut all = Reports::default();
    for r in stored {
        if let Some(s) = job_summaries(r)? {
            all.merge(&s);
        }
    }
    Ok(all)
}

/// Whether a gate has a condition on `new_coverage` (only then is the change's diff read).
pub(crate) fn needs_changes(job: &gantry_pipeline::Job) -> bool {
    job.gate.iter().any(|c| c.metric == Metric::NewCoverage)
}

/// The first of `bases` that is a commit the mirror has (a merge request's diff base, a push's
/// `before`); all zeros is none.
fn known_base(mirror: &Path, bases: &[String]) -> Option<String> {
    bases
        .iter()
        .find(|b| {
            !b.is_empty() && !b.bytes().all(|c| c == b'0') && crate::git::has_commit(mirror, b)
        })
        .cloned()
}

/// The lines commit `sha` added or modified, for gates' `new_coverage`, read in the project's
/// `mirror` (blocking, under its lock) when the pipeline is created: against the first of `bases`
/// the mirror holds (a merge request's diff base, a push's `before`), else against the merge base
/// with `default_branch`, fetched from `remote` first. [`ChangesDoc::Unknown`] says why none.
pub(crate) fn read_changes(
    mirror: &Path,
    remote: &crate::git::Remote,
    default_branch: &str,
    bases: &[String],
    sha: &str,
) -> ChangesDoc {
    let read = || -> anyhow::Result<Option<ChangedLines>> {
        if let Some(base) = known_base(mirror, bases) {
            return changes(mirror, &base, sha).map(Some);
        }
        let head = format!("refs/heads/{default_branch}");
        let head = crate::git::fetch(mirror, remote, None, &head)?;
        crate::git::merge_base(mirror, &head, sha)
            .map(|base| changes(mirror, &base, sha))
            .transpose()
    };
    match read() {
        Ok(Some(lines)) => ChangesDoc::of(&lines),
        Ok(None) => ChangesDoc::Unknown(format!(
            "no base to compare the change with (no merge request diff base, no push `before`, \
             no merge base with {default_branch})"
        )),
        Err(e) => ChangesDoc::Unknown(format!("cannot read the change: {e:#}")),
    }
}

/// The lines the change of a pipeline at `sha` added or modified, for its gates' `new_coverage`,
/// read when it is created (the mirror holds the commit) so that no hand-out runs git: against the
/// merge request's diff base, else the push's `before`, else the merge base with the default
/// branch (under the mirror's lock). A pipeline created before its doc kept them reads them at
/// its gate job's hand-out.
pub(crate) async fn pipeline_changes(
    state: &crate::state::AppState,
    project: &crate::projects::LoadedProject,
    doc: &crate::spec::PipelineDoc,
    sha: &str,
    before_sha: Option<&str>,
) -> ChangesDoc {
    let bases: Vec<String> = doc
        .predefined
        .iter()
        .filter(|v| v.key == "CI_MERGE_REQUEST_DIFF_BASE_SHA")
        .map(|v| v.value.clone())
        .chain(before_sha.map(str::to_owned))
        .collect();
    let mirror = crate::git::mirror_path(&state.config.data_dir, project.record.id);
    let remote = crate::git::Remote::new(&project.spec.repo_url, state.config.git_timeout);
    let branch = project.spec.default_branch.clone();
    let commit = sha.to_owned();
    let lock = state.mirror_lock(project.record.id);
    let _guard = lock.lock().await;
    let read = tokio::task::spawn_blocking(move || {
        read_changes(&mirror, &remote, &branch, &bases, &commit)
    })
    .await
    .unwrap_or_else(|e| ChangesDoc::Unknown(format!("reading the change panicked: {e}")));
    if let ChangesDoc::Unknown(why) = &read {
        tracing::warn!(project = %project.record.name, %sha, %why, "new_coverage will have no data");
    }
    read
}

/// The lines that commit `sha` added or modified against `base` (`git diff base...sha`, read in
/// the project's mirror).
fn changes(mirror: &Path, base: &str, sha: &str) -> anyhow::Result<ChangedLines> {
    let diff = crate::git::diff_unified0(mirror, base, sha)?;
    ChangedLines::parse(&diff).map_err(anyhow::Error::msg)
}

/// The name a summary's enum serializes to (`failure`, `error`, `critical`, `>=`, `no_data`).
fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `covered / total` in percent with two decimals, as `gantry_reports` rounds.
#[allow(clippy::cast_precision_loss)]
fn percent(covered: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (covered as f64 * 100.0 / total as f64 * 100.0).round() / 100.0)
}

/// `records` (a pipeline's latest attempts, or one job) as the reports routes show them: tests,
/// coverage and findings merged as a gate merges them, failed cases by job, each job's coverage,
/// each file's percent (never its lines), and the gate jobs' verdicts.
pub(crate) fn view(records: &[ReportsRecord]) -> Result<api::ReportsSummary, AppError> {
    let mut merged = Reports::default();
    let mut out = api::ReportsSummary::default();
    let mut failures = Vec::new();
    for r in records {
        let stored = r.stored.as_ref();
        if let Some(percent) = stored.and_then(|s| s.coverage).or(r.job_coverage) {
            out.coverage.jobs.push(api::JobCoverage {
                job_id: r.job_id,
                job: r.name.clone(),
                percent,
            });
        }
        if let Some(s) = job_summaries(r)? {
            for f in s.tests.iter().flat_map(|t| &t.failures) {
                if failures.len() < gantry_reports::MAX_ITEMS {
                    failures.push(api::FailedCase {
                        job: r.name.clone(),
                        suite: f.suite.clone(),
                        name: f.name.clone(),
                        kind: name_of(&f.kind),
                        message: f.message.clone(),
                    });
                }
            }
            merged.merge(&s);
        }
        if let Some(bytes) = stored.and_then(|s| s.gate.as_deref()) {
            let g: GateOutcome = serde_json::from_slice(bytes).map_err(AppError::internal)?;
            out.gates.push(gate_view(r, g));
        }
    }
    out.tests = merged.tests.as_ref().map(|t| api::TestsSummary {
        total: t.total,
        passed: t.passed,
        failed: t.failed,
        errors: t.errors,
        skipped: t.skipped,
        failures,
    });
    out.coverage.percent = merged.coverage_percent();
    if let Some(c) = &merged.coverage {
        out.coverage.files = c
            .files
            .iter()
            .map(|(file, f)| {
                let (covered, coverable) = f.counts();
                api::FileCoverage {
                    file: file.clone(),
                    covered,
                    coverable,
                    percent: percent(covered, coverable),
                }
            })
            .collect();
    }
    out.sarif = merged.sarif.as_ref().map(|s| api::SarifSummary {
        errors: s.errors,
        warnings: s.warnings,
        notes: s.notes,
        none: s.none,
        results: s
            .results
            .iter()
            .map(|x| api::SarifFinding {
                level: name_of(&x.level),
                rule_id: x.rule_id.clone(),
                file: x.file.clone(),
                line: x.line,
                message: x.message.clone(),
            })
            .collect(),
    });
    out.vulnerabilities = merged
        .vulnerabilities
        .as_ref()
        .map(|v| api::VulnerabilitiesSummary {
            critical: v.critical,
            high: v.high,
            medium: v.medium,
            low: v.low,
            info: v.info,
            unknown: v.unknown,
            vulnerabilities: v
                .vulnerabilities
                .iter()
                .map(|x| api::VulnerabilityFinding {
                    severity: x.severity.name().to_owned(),
                    id: x.id.clone(),
                    name: x.name.clone(),
                    package: x.package.clone(),
                    version: x.version.clone(),
                    file: x.file.clone(),
                    line: x.line,
                })
                .collect(),
        });
    out.codequality = merged
        .codequality
        .as_ref()
        .map(|q| api::CodeQualitySummary {
            blocker: q.blocker,
            critical: q.critical,
            major: q.major,
            minor: q.minor,
            info: q.info,
            unknown: q.unknown,
            issues: q
                .issues
                .iter()
                .map(|i| api::CodeQualityFinding {
                    severity: i.severity.name().to_owned(),
                    check_name: i.check_name.clone(),
                    description: i.description.clone(),
                    path: i.path.clone(),
                    line: i.line,
                })
                .collect(),
        });
    Ok(out)
}

fn gate_view(r: &ReportsRecord, g: GateOutcome) -> api::GateResult {
    let o = g.offenders;
    api::GateResult {
        job_id: r.job_id,
        job: r.name.clone(),
        passed: g.passed,
        conditions: g
            .conditions
            .iter()
            .map(|c| api::GateConditionResult {
                metric: c.metric.key().to_owned(),
                operator: c.operator.symbol().to_owned(),
                threshold: c.threshold,
                actual: c.actual,
                passed: c.passed,
                verdict: name_of(&c.verdict),
            })
            .collect(),
        offenders: api::GateOffenders {
            failed_tests: o.failed_tests,
            sarif: o.sarif,
            vulnerabilities: o.vulnerabilities,
            codequality: o.codequality,
            uncovered_new_lines: o
                .uncovered_new_lines
                .into_iter()
                .map(|u| api::UncoveredLines {
                    file: u.file,
                    lines: u.lines,
                })
                .collect(),
        },
    }
}
