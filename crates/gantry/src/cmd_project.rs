//! `gantry project list|show`, `gantry project variable list|set|delete` and
//! `gantry project schedule list|add|delete`, through [`crate::client`].

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use gantry_api::{KeyValue, Project, ProjectVariable, Schedule};

use crate::client::{Client, Remote, parse, print, print_json};
use crate::cmd_pipeline::encode;
use crate::output::Output;

/// `gantry project variable`'s subcommands.
#[derive(Subcommand)]
pub enum VariableCommand {
    /// A project's variables (masked ones without their value).
    List(ProjectArgs),
    /// Add a variable, or replace the one of the same key and environment scope.
    Set(VariableSetArgs),
    /// Delete a variable (of one environment scope with `--environment-scope`, else of all).
    Delete(VariableDeleteArgs),
}

/// `gantry project schedule`'s subcommands.
#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// A project's schedules, numbered.
    List(ProjectArgs),
    /// Add a schedule.
    Add(ScheduleAddArgs),
    /// Delete a schedule by its number in `list`.
    Delete(ScheduleDeleteArgs),
}

/// `gantry project list`'s options.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// The page, from 1 (100 projects a page).
    #[arg(long, value_name = "N")]
    pub page: Option<u32>,
}

/// The options of a command on one project.
#[derive(Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    remote: Remote,
    /// The project.
    #[arg(value_name = "PROJECT")]
    project: String,
}

/// `gantry project variable set`'s options.
#[derive(Args)]
pub struct VariableSetArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// The name (letters, digits and `_`).
    #[arg(value_name = "KEY")]
    key: String,
    /// The value.
    #[arg(value_name = "VALUE")]
    value: String,
    /// Mask it: `[MASKED]` in logs, never shown by the API (8 characters at least).
    #[arg(long)]
    masked: bool,
    /// Only for pipelines of protected branches and tags.
    #[arg(long)]
    protected: bool,
    /// The environments it applies to (`production`, `review/*`; default `*`).
    #[arg(long, value_name = "SCOPE", default_value = "*")]
    environment_scope: String,
}

/// `gantry project variable delete`'s options.
#[derive(Args)]
pub struct VariableDeleteArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// The name.
    #[arg(value_name = "KEY")]
    key: String,
    /// Only the variable of this environment scope.
    #[arg(long, value_name = "SCOPE")]
    environment_scope: Option<String>,
}

/// `gantry project schedule add`'s options.
#[derive(Args)]
pub struct ScheduleAddArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// A cron expression with five fields (`0 9 * * 1-5`).
    #[arg(long, value_name = "CRON")]
    cron: String,
    /// The IANA time zone of the expression (default UTC).
    #[arg(long, value_name = "ZONE")]
    cron_timezone: Option<String>,
    /// The branch or tag (default: the project's default branch).
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// A variable of the scheduled pipelines (repeatable).
    #[arg(long = "variable", value_name = "KEY=VALUE")]
    variables: Vec<String>,
}

/// `gantry project schedule delete`'s options.
#[derive(Args)]
pub struct ScheduleDeleteArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// The schedule's number in `gantry project schedule list`.
    #[arg(value_name = "N")]
    number: usize,
}

/// `gantry project list [--page N]` (100 projects a page).
pub(crate) fn list(remote: &Remote, page: Option<u32>) -> Result<()> {
    let client = Client::new(&remote.server)?;
    let bytes = client.get_page(
        &format!("/api/v1/projects?per_page=100&page={}", page.unwrap_or(1)),
        remote.output,
    )?;
    print(
        remote.output,
        &bytes,
        &["NAME", "DEFAULT BRANCH", "REPOSITORY", "CREATED"],
        |list: Vec<Project>| {
            list.into_iter()
                .map(|p| vec![p.name, p.default_branch, p.repo_url, p.created_at])
                .collect()
        },
    )
}

/// `gantry project show PROJECT`.
pub(crate) fn show(a: &ProjectArgs) -> Result<()> {
    let (bytes, p) = project(a)?;
    if a.remote.output == Output::Json {
        return print_json(&bytes);
    }
    let rows = [
        ("name", p.name),
        ("repository", p.repo_url),
        ("default branch", p.default_branch),
        ("protected branches", p.protected_branches.join(", ")),
        ("protected tags", p.protected_tags.join(", ")),
        (
            "fork pipelines",
            serde_json::to_value(p.fork_pipelines)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "webhook secret",
            if p.has_webhook_secret { "set" } else { "none" }.into(),
        ),
        ("variables", p.variables.len().to_string()),
        ("schedules", p.schedules.len().to_string()),
        ("created", p.created_at),
    ];
    for (k, v) in rows {
        crate::client::say(format!("{:<20}{v}", format!("{k}:")).trim_end())?;
    }
    Ok(())
}

fn project(a: &ProjectArgs) -> Result<(Vec<u8>, Project)> {
    let client = Client::new(&a.remote.server)?;
    let bytes = client.get(&format!("/api/v1/projects/{}", encode(&a.project)))?;
    let p = parse(&bytes)?;
    Ok((bytes, p))
}

/// Runs `gantry project variable …`.
pub(crate) fn variable(command: &VariableCommand) -> Result<()> {
    match command {
        VariableCommand::List(a) => {
            let (_, p) = project(a)?;
            let json = serde_json::to_vec(&p.variables)?;
            print(
                a.remote.output,
                &json,
                &["KEY", "VALUE", "MASKED", "PROTECTED", "SCOPE"],
                |vars: Vec<ProjectVariable>| {
                    vars.into_iter()
                        .map(|v| {
                            vec![
                                v.key,
                                v.value.unwrap_or_else(|| "[MASKED]".into()),
                                yes(v.masked),
                                yes(v.protected),
                                v.environment_scope,
                            ]
                        })
                        .collect()
                },
            )
        }
        VariableCommand::Set(a) => {
            let p = &a.project;
            let client = Client::new(&p.remote.server)?;
            let body = ProjectVariable {
                key: a.key.clone(),
                value: Some(a.value.clone()),
                masked: a.masked,
                protected: a.protected,
                environment_scope: a.environment_scope.clone(),
            };
            let path = format!("/api/v1/projects/{}/variables", encode(&p.project));
            let bytes = client.post(&path, Some(&body))?;
            if p.remote.output == Output::Json {
                return print_json(&bytes);
            }
            let v: ProjectVariable = parse(&bytes)?;
            crate::client::say(&format!(
                "set {} of {} (scope {}{}{})",
                v.key,
                p.project,
                v.environment_scope,
                if v.masked { ", masked" } else { "" },
                if v.protected { ", protected" } else { "" }
            ))?;
            Ok(())
        }
        VariableCommand::Delete(a) => {
            let p = &a.project;
            let client = Client::new(&p.remote.server)?;
            let mut path = format!(
                "/api/v1/projects/{}/variables/{}",
                encode(&p.project),
                encode(&a.key)
            );
            if let Some(scope) = &a.environment_scope {
                path = format!("{path}?environment_scope={}", encode(scope));
            }
            client.delete(&path)?;
            deleted(
                p.remote.output,
                &serde_json::json!({"deleted": a.key}),
                &format!("deleted {} of {}", a.key, p.project),
            )
        }
    }
}

/// Runs `gantry project schedule …`.
pub(crate) fn schedule(command: &ScheduleCommand) -> Result<()> {
    match command {
        ScheduleCommand::List(a) => {
            let (_, p) = project(a)?;
            print_schedules(a.remote.output, &p.schedules)
        }
        ScheduleCommand::Add(a) => {
            let p = &a.project;
            let client = Client::new(&p.remote.server)?;
            let mut variables = Vec::new();
            for v in &a.variables {
                let (key, value) = v
                    .split_once('=')
                    .with_context(|| format!("`{v}` is not KEY=VALUE"))?;
                variables.push(KeyValue {
                    key: key.into(),
                    value: value.into(),
                });
            }
            let body = Schedule {
                cron: a.cron.clone(),
                cron_timezone: a.cron_timezone.clone(),
                git_ref: a.git_ref.clone(),
                variables,
            };
            let path = format!("/api/v1/projects/{}/schedules", encode(&p.project));
            let bytes = client.post(&path, Some(&body))?;
            print_schedules(p.remote.output, &parse::<Vec<Schedule>>(&bytes)?)
        }
        ScheduleCommand::Delete(a) => {
            let p = &a.project;
            let client = Client::new(&p.remote.server)?;
            let path = format!(
                "/api/v1/projects/{}/schedules/{}",
                encode(&p.project),
                a.number
            );
            client.delete(&path)?;
            deleted(
                p.remote.output,
                &serde_json::json!({"deleted": a.number}),
                &format!("deleted schedule {} of {}", a.number, p.project),
            )
        }
    }
}

fn print_schedules(output: Output, list: &[Schedule]) -> Result<()> {
    let json = serde_json::to_vec(list)?;
    print(
        output,
        &json,
        &["N", "CRON", "TIMEZONE", "REF", "VARIABLES"],
        |list: Vec<Schedule>| {
            list.into_iter()
                .enumerate()
                .map(|(i, s)| {
                    vec![
                        (i + 1).to_string(),
                        s.cron,
                        s.cron_timezone.unwrap_or_else(|| "UTC".into()),
                        s.git_ref.unwrap_or_default(),
                        s.variables
                            .iter()
                            .map(|v| v.key.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect()
        },
    )
}

/// Says what a delete did: `json`, or `text`.
fn deleted(output: Output, json: &serde_json::Value, text: &str) -> Result<()> {
    match output {
        Output::Json => crate::client::say(&json.to_string()),
        Output::Human => crate::client::say(text),
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}
