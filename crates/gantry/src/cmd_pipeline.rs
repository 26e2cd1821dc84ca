//! `gantry pipeline list|show|cancel|retry` and `gantry job log|play|retry`: a server's pipelines
//! and jobs, through [`crate::client`].

use std::io::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use gantry_api::{Job, JobStatus, Pipeline};

use crate::client::{self, Client, EXIT_FAILED, Remote, exit_code, parse, print, print_json};
use crate::output::Output;

/// `gantry pipeline`'s subcommands.
#[derive(Subcommand)]
pub enum PipelineCommand {
    /// A project's pipelines, newest first (`GET /api/v1/projects/{name}/pipelines`).
    List(ListArgs),
    /// A pipeline's stages and jobs with their status and duration, as a tree.
    Show(IdArgs),
    /// Cancel a pipeline: what did not start is canceled, what runs is stopped.
    Cancel(IdArgs),
    /// Retry a pipeline's failed and canceled jobs (each as a new attempt).
    Retry(IdArgs),
}

/// `gantry job`'s subcommands.
#[derive(Subcommand)]
pub enum JobCommand {
    /// Print a job's log; with `--follow`, follow it live until the job ends.
    Log(LogArgs),
    /// Start a manual job.
    Play(IdArgs),
    /// Retry a job: a new attempt of it.
    Retry(IdArgs),
}

/// `gantry pipeline list`'s options.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
    /// The project.
    #[arg(value_name = "PROJECT")]
    project: String,
    /// Only this branch or tag.
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// Only this status (`running`, `failed`, ...).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// The page, from 1 (20 pipelines a page).
    #[arg(long, value_name = "N")]
    page: Option<u32>,
}

/// The options of a command on one pipeline or job.
#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    remote: Remote,
    /// The id.
    #[arg(value_name = "ID")]
    id: i64,
}

/// `gantry job log`'s options.
#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    job: IdArgs,
    /// Follow the log as the job writes it; exit when it ends, with 0 if it succeeded.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Runs `gantry pipeline …`; answers the exit code.
pub fn pipeline_main(command: &PipelineCommand) -> Result<u8> {
    exit_code(match command {
        PipelineCommand::List(a) => list(a),
        PipelineCommand::Show(a) => show(a),
        PipelineCommand::Cancel(a) => {
            let client = Client::new(&a.remote.server)?;
            let bytes = client.post(&format!("/api/v1/pipelines/{}/cancel", a.id), None::<&()>)?;
            tree_or_json(a.remote.output, &bytes)
        }
        PipelineCommand::Retry(a) => retry_pipeline(a),
    })
}

/// Runs `gantry job …`; answers the exit code.
pub fn job_main(command: &JobCommand) -> Result<u8> {
    match command {
        JobCommand::Log(a) => log(a),
        JobCommand::Play(a) => exit_code(job_action(a, "play")),
        JobCommand::Retry(a) => exit_code(job_action(a, "retry")),
    }
}

fn list(a: &ListArgs) -> Result<()> {
    let client = Client::new(&a.remote.server)?;
    let mut query = Vec::new();
    if let Some(r) = &a.git_ref {
        query.push(format!("ref={}", encode(r)));
    }
    if let Some(s) = &a.status {
        query.push(format!("status={}", encode(s)));
    }
    if let Some(p) = a.page {
        query.push(format!("page={p}"));
    }
    let mut path = format!("/api/v1/projects/{}/pipelines", encode(&a.project));
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let bytes = client.get_page(&path, a.remote.output)?;
    print(
        a.remote.output,
        &bytes,
        &[
            "ID", "STATUS", "REF", "COMMIT", "SOURCE", "DURATION", "CREATED",
        ],
        |list: Vec<Pipeline>| {
            list.into_iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        p.status.to_string(),
                        p.git_ref,
                        short(&p.sha),
                        p.source,
                        duration(p.duration),
                        p.created_at,
                    ]
                })
                .collect()
        },
    )
}

fn show(a: &IdArgs) -> Result<()> {
    let client = Client::new(&a.remote.server)?;
    let bytes = client.get(&format!("/api/v1/pipelines/{}", a.id))?;
    tree_or_json(a.remote.output, &bytes)
}

/// Prints a pipeline as JSON, or as [`tree`].
fn tree_or_json(output: Output, bytes: &[u8]) -> Result<()> {
    if output == Output::Json {
        return print_json(bytes);
    }
    let p: Pipeline = parse(bytes)?;
    let mut out = std::io::stdout().lock();
    out.write_all(tree(&p).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A pipeline as a compact tree: its head line, then each stage (in plan order) with its jobs.
pub(crate) fn tree(p: &Pipeline) -> String {
    let mut s = format!(
        "pipeline {}  {}  {}  {}  {}{}\n",
        p.id,
        p.status,
        p.git_ref,
        short(&p.sha),
        p.source,
        p.duration
            .map(|d| format!("  {}", secs(d)))
            .unwrap_or_default()
    );
    for e in &p.errors {
        s.push_str(&format!(
            "  {}:{}:{}: {}\n",
            e.file, e.line, e.column, e.message
        ));
    }
    let mut stages: Vec<(&str, Vec<&Job>)> = Vec::new();
    for j in &p.jobs {
        match stages.iter_mut().find(|(name, _)| *name == j.stage) {
            Some((_, jobs)) => jobs.push(j),
            None => stages.push((&j.stage, vec![j])),
        }
    }
    let width = p
        .jobs
        .iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(0);
    for (si, (stage, jobs)) in stages.iter().enumerate() {
        let last_stage = si + 1 == stages.len();
        s.push_str(&format!(
            "{}{stage}\n",
            if last_stage { "└─ " } else { "├─ " }
        ));
        for (ji, j) in jobs.iter().enumerate() {
            let branch = if ji + 1 == jobs.len() {
                "└─ "
            } else {
                "├─ "
            };
            let mut line = format!(
                "{}{branch}{:<width$}  {:<8}  #{}",
                if last_stage { "   " } else { "│  " },
                j.name,
                j.status.to_string(),
                j.id
            );
            if let Some(d) = j.duration {
                line.push_str(&format!("  {}", secs(d)));
            }
            if j.allow_failure && j.status == JobStatus::Failed {
                line.push_str("  (allowed to fail)");
            }
            if j.attempt > 1 {
                line.push_str(&format!("  (attempt {})", j.attempt));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
    }
    s
}

/// Retries the latest attempt of each failed or canceled job, as GitLab's pipeline retry does.
fn retry_pipeline(a: &IdArgs) -> Result<()> {
    let client = Client::new(&a.remote.server)?;
    let p: Pipeline = parse(&client.get(&format!("/api/v1/pipelines/{}", a.id))?)?;
    let mut retried = Vec::new();
    for j in p
        .jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Failed | JobStatus::Canceled))
    {
        let bytes = client.post(&format!("/api/v1/jobs/{}/retry", j.id), None::<&()>)?;
        retried.push((j.name.clone(), parse::<Job>(&bytes)?));
    }
    if a.remote.output == Output::Json {
        let jobs: Vec<&Job> = retried.iter().map(|(_, j)| j).collect();
        crate::client::say(&serde_json::to_string_pretty(&jobs)?)?;
    } else if retried.is_empty() {
        crate::client::say(&format!(
            "pipeline {} has no failed or canceled job: nothing retried",
            p.id
        ))?;
    } else {
        for (name, j) in &retried {
            crate::client::say(&format!(
                "retried {name}: job #{} (attempt {})",
                j.id, j.attempt
            ))?;
        }
    }
    Ok(())
}

fn job_action(a: &IdArgs, action: &str) -> Result<()> {
    let client = Client::new(&a.remote.server)?;
    let bytes = client.post(&format!("/api/v1/jobs/{}/{action}", a.id), None::<&()>)?;
    if a.remote.output == Output::Json {
        return print_json(&bytes);
    }
    let j: Job = parse(&bytes)?;
    let done = if action == "play" {
        "started"
    } else {
        "retried"
    };
    crate::client::say(&format!(
        "{done} {}: job #{} (attempt {}) {}",
        j.name, j.id, j.attempt, j.status
    ))?;
    Ok(())
}

/// The `end` event of the log stream.
#[derive(serde::Deserialize)]
struct LogEnd {
    status: JobStatus,
}

/// A `log` event of the log stream.
#[derive(serde::Deserialize)]
struct LogChunk {
    text: String,
}

fn log(a: &LogArgs) -> Result<u8> {
    let id = a.job.id;
    let mut ended: Option<JobStatus> = None;
    let result = (|| {
        let client = Client::new(&a.job.remote.server)?;
        let json = a.job.remote.output == Output::Json;
        if !a.follow {
            let bytes = client.get(&format!("/api/v1/jobs/{id}/log"))?;
            let mut out = std::io::stdout().lock();
            if json {
                let text = String::from_utf8_lossy(&bytes);
                writeln!(out, "{}", serde_json::json!({"offset": 0, "text": text}))?;
            } else {
                out.write_all(&bytes)?;
            }
            out.flush()?;
            return Ok(());
        }
        client.events(&format!("/api/v1/jobs/{id}/log/stream"), |event, data| {
            let mut out = std::io::stdout().lock();
            match event {
                "log" if json => writeln!(out, "{data}")?,
                "log" => out.write_all(parse::<LogChunk>(data.as_bytes())?.text.as_bytes())?,
                "end" => {
                    ended = Some(parse::<LogEnd>(data.as_bytes())?.status);
                    if json {
                        writeln!(out, "{data}")?;
                    }
                }
                _ => {}
            }
            out.flush()?;
            Ok(ended.is_none())
        })
    })();
    if !a.follow || result.as_ref().is_err_and(client::broken_pipe) {
        return exit_code(result);
    }
    let code = exit_code(result)?;
    if code != 0 {
        return Ok(code);
    }
    match ended {
        Some(status) => {
            eprintln!("gantry: job {id} ended: {status}");
            Ok(if status == JobStatus::Success {
                0
            } else {
                EXIT_FAILED
            })
        }
        None => exit_code(Err(client::fail(
            EXIT_FAILED,
            &format!("the log of job {id} ended before the job"),
        ))),
    }
}

/// GitLab's encoding of a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn short(sha: &str) -> String {
    sha.chars().take(8).collect()
}

fn secs(d: f64) -> String {
    crate::output::fmt_duration(Duration::from_secs_f64(d.max(0.0)))
}

fn duration(d: Option<f64>) -> String {
    d.map(secs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, name: &str, stage: &str, status: JobStatus, duration: Option<f64>) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": id, "pipeline_id": 1, "name": name, "stage": stage, "status": status,
            "when": "on_success", "allow_failure": name == "lint", "needs": null, "tags": [],
            "attempt": 1, "created_at": "t", "queued_at": null, "started_at": null,
            "finished_at": null, "duration": duration, "agent": null, "exit_code": null,
            "failure_reason": null, "coverage": null, "log_size": 0, "has_artifacts": false
        }))
        .unwrap()
    }

    #[test]
    fn pipelines_draw_as_a_tree_of_stages_and_jobs() {
        let p: Pipeline = serde_json::from_value(serde_json::json!({
            "id": 7, "project": "p", "ref": "main", "tag": false,
            "sha": "0123456789abcdef", "before_sha": null, "source": "push", "status": "failed",
            "trace_id": "t", "errors": [], "created_at": "t", "started_at": null,
            "finished_at": null, "duration": 3.5, "jobs": [
                job(1, "build", "build", JobStatus::Success, Some(1.25)),
                job(2, "unit", "test", JobStatus::Failed, Some(0.5)),
                job(3, "lint", "test", JobStatus::Failed, None),
                job(4, "deploy", "deploy", JobStatus::Manual, None),
            ]
        }))
        .unwrap();
        let want = [
            "pipeline 7  failed  main  01234567  push  3.50s",
            "├─ build",
            "│  └─ build   success   #1  1.25s",
            "├─ test",
            "│  ├─ unit    failed    #2  500ms",
            "│  └─ lint    failed    #3  (allowed to fail)",
            "└─ deploy",
            "   └─ deploy  manual    #4",
        ];
        assert_eq!(tree(&p), format!("{}\n", want.join("\n")));
    }
}
