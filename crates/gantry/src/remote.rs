//! The `gantry project` and `gantry agent` commands that manage a server: `project add|list|show`,
//! `project token create|list|revoke`, `project variable …` and `project schedule …`
//! (`cmd_project`), `agent list|revoke|rotate-registration-token`. Requests go through
//! [`crate::client`].

use std::io::Write as _;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use gantry_api::{CreatedProjectToken, NewProject, NewProjectToken, ProjectVariable, TokenScope};

use crate::client::{Client, Remote, ServerArgs, exit_code, print, print_json};
use crate::cmd_project::{ProjectArgs, ScheduleCommand, VariableCommand};

/// `gantry project`'s subcommands.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Register a project with a server (`POST /api/v1/projects`) and print it as JSON.
    Add(AddArgs),
    /// The server's projects (admin token).
    List(crate::cmd_project::ListArgs),
    /// A project's settings.
    Show(ProjectArgs),
    /// Manage a project's API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage a project's variables (admin token).
    #[command(subcommand)]
    Variable(VariableCommand),
    /// Manage a project's scheduled pipelines (admin token).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

/// `gantry project token`'s subcommands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a project token and print its secret (shown this once; the server keeps a hash).
    ///
    /// With scope `write` (the default), the token may trigger pipelines, read, cancel, retry and
    /// play the project's pipelines, jobs, logs and artifacts, and roll back its environments; with
    /// scope `read` it only reads. Nothing of other projects.
    Create(TokenCreateArgs),
    /// List a project's tokens (without secrets): id, name, scope, creation and expiry.
    List(TokenListArgs),
    /// Revoke a project token at once.
    Revoke(TokenRevokeArgs),
}

/// `gantry agent`'s subcommands (without one, `gantry agent` runs an agent).
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Every agent: name, whether it is online, the jobs it runs, tags, last contact
    /// (`GET /api/v1/agents`).
    List(Remote),
    /// Revoke an agent at once (`DELETE /api/v1/agents/{id}`): its next request gets 401 on every
    /// server, and its running jobs fail as a lost agent's.
    Revoke(AgentRevokeArgs),
    /// Replace the registration token and print the new one (shown this once): the old one no
    /// longer registers agents; registered agents keep working.
    RotateRegistrationToken(ServerArgs),
}

/// `gantry agent revoke`'s options.
#[derive(Args)]
pub struct AgentRevokeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The agent's id (`GET /api/v1/agents`).
    #[arg(value_name = "ID")]
    id: i64,
}

/// Runs `gantry agent revoke|rotate-registration-token`; answers the exit code.
///
/// # Errors
/// When the request cannot be made.
pub fn agent_main(command: AgentCommand) -> Result<u8> {
    exit_code(match command {
        AgentCommand::List(remote) => agents(&remote),
        AgentCommand::Revoke(args) => Client::new(&args.server).and_then(|c| {
            c.delete(&format!("/api/v1/agents/{}", args.id))?;
            eprintln!("gantry: revoked agent {}", args.id);
            Ok(())
        }),
        AgentCommand::RotateRegistrationToken(server) => Client::new(&server).and_then(|c| {
            let bytes = c.post("/api/v1/agents/registration-token", None::<&()>)?;
            let t: gantry_api::agent::RegistrationToken = serde_json::from_slice(&bytes)
                .context("the server's answer is not a registration token")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", t.token)?;
            out.flush()?;
            eprintln!(
                "gantry: new registration token (shown only this once); the old one no longer registers agents"
            );
            Ok(())
        }),
    })
}

/// `gantry agent list`.
fn agents(remote: &Remote) -> Result<()> {
    let bytes = Client::new(&remote.server)?.get("/api/v1/agents")?;
    print(
        remote.output,
        &bytes,
        &[
            "ID",
            "NAME",
            "STATUS",
            "JOBS",
            "TAGS",
            "EXECUTOR",
            "VERSION",
            "PROTOCOL",
            "LAST SEEN",
        ],
        |list: Vec<gantry_api::Agent>| {
            list.into_iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.name,
                        if a.online { "online" } else { "offline" }.into(),
                        jobs_cell(&a.jobs),
                        a.tags.join(","),
                        a.executor,
                        a.version,
                        a.protocol.map_or_else(|| "-".into(), |p| p.to_string()),
                        a.last_seen_at.unwrap_or_default(),
                    ]
                })
                .collect()
        },
    )
}

/// The ids of the jobs an agent runs, `-` when it is idle.
fn jobs_cell(jobs: &[gantry_api::AgentJob]) -> String {
    if jobs.is_empty() {
        return "-".into();
    }
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    ids.join(",")
}

/// `gantry project token create`'s options.
#[derive(Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The project.
    #[arg(value_name = "PROJECT")]
    project: String,
    /// A name for the token.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// When it stops working: RFC 3339 (2027-01-31T12:00:00Z) or a date (2027-01-31).
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
    /// What the token may do: `write`, or `read` (it cannot trigger, cancel, retry, play,
    /// approve or roll back).
    #[arg(long, value_name = "SCOPE", value_parser = ["read", "write"], default_value = "write")]
    scope: String,
    /// The older spelling of `--scope read`.
    #[arg(long, hide = true, conflicts_with = "scope")]
    read_only: bool,
}

/// `gantry project token list`'s options.
#[derive(Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    remote: Remote,
    /// The project.
    #[arg(value_name = "PROJECT")]
    project: String,
}

/// `gantry project token revoke`'s options.
#[derive(Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The project.
    #[arg(value_name = "PROJECT")]
    project: String,
    /// The token's id (from `create` or `list`).
    #[arg(value_name = "ID")]
    id: i64,
}

/// `gantry project add`'s options.
#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The project's name (letters, digits, `-`, `_`, `.`).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The repository: anything `git fetch` takes, on the server's machine.
    #[arg(long, value_name = "URL")]
    repo_url: String,
    /// The default branch (default: main).
    #[arg(long, value_name = "BRANCH")]
    default_branch: Option<String>,
    /// The secret webhooks must prove.
    #[arg(long, value_name = "SECRET")]
    webhook_secret: Option<String>,
    /// A project variable (repeatable).
    #[arg(long = "variable", value_name = "KEY=VALUE")]
    variables: Vec<String>,
    /// A masked project variable: its value never shows in logs or answers (repeatable).
    #[arg(long = "masked-variable", value_name = "KEY=VALUE")]
    masked_variables: Vec<String>,
    /// Another project that may `include:project` this one's files: a name, or a pattern where
    /// `*` stands for any characters (`team-*`, `*`) (repeatable; default: none but itself).
    #[arg(long = "include-allowed-from", value_name = "PROJECT")]
    include_allowed_from: Vec<String>,
    /// What merge requests from forks get: `no_secrets` (the default: a pipeline without the
    /// project's variables and `CI_JOB_TOKEN`), `none` (no pipeline) or `approve` (a pipeline that
    /// waits until approved, then runs with them).
    #[arg(long, value_name = "MODE", value_parser = ["none", "no_secrets", "approve"])]
    fork_pipelines: Option<String>,
    /// A protected branch: a name or a pattern where `*` stands for any characters (`release/*`)
    /// (repeatable; default: the default branch).
    #[arg(long = "protected-branch", value_name = "PATTERN")]
    protected_branches: Vec<String>,
    /// A protected tag, a name or pattern as for branches (`v*`) (repeatable; default: none).
    #[arg(long = "protected-tag", value_name = "PATTERN")]
    protected_tags: Vec<String>,
}

/// Runs `gantry project …`; returns the exit code.
///
/// # Errors
/// When the request cannot be built (a variable without `=`).
pub fn main(command: ProjectCommand) -> Result<u8> {
    exit_code(match command {
        ProjectCommand::Add(args) => add(args),
        ProjectCommand::List(args) => crate::cmd_project::list(&args.remote, args.page),
        ProjectCommand::Show(args) => crate::cmd_project::show(&args),
        ProjectCommand::Variable(c) => crate::cmd_project::variable(&c),
        ProjectCommand::Schedule(c) => crate::cmd_project::schedule(&c),
        ProjectCommand::Token(TokenCommand::Create(args)) => token_create(args),
        ProjectCommand::Token(TokenCommand::List(args)) => token_list(&args),
        ProjectCommand::Token(TokenCommand::Revoke(args)) => {
            Client::new(&args.server).and_then(|c| {
                c.delete(&format!(
                    "/api/v1/projects/{}/tokens/{}",
                    args.project, args.id
                ))?;
                eprintln!("gantry: revoked token {} of {}", args.id, args.project);
                Ok(())
            })
        }
    })
}

/// `gantry project token list`.
fn token_list(args: &TokenListArgs) -> Result<()> {
    let bytes = Client::new(&args.remote.server)?
        .get(&format!("/api/v1/projects/{}/tokens", args.project))?;
    print(
        args.remote.output,
        &bytes,
        &["ID", "NAME", "SCOPE", "CREATED", "EXPIRES"],
        |list: Vec<gantry_api::ProjectToken>| {
            list.into_iter()
                .map(|t| {
                    let scope = t.effective_scope();
                    vec![
                        t.id.to_string(),
                        t.name,
                        scope.to_string(),
                        t.created_at,
                        t.expires_at.unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect()
        },
    )
}

/// `gantry project token create`: the secret alone on stdout (for `$(...)`), the rest on stderr.
fn token_create(args: TokenCreateArgs) -> Result<()> {
    let scope = if args.read_only {
        TokenScope::Read
    } else {
        args.scope.parse().map_err(anyhow::Error::msg)?
    };
    let body = serde_json::to_vec(&token_body(args.name, args.expires_at, scope))?;
    let path = format!("/api/v1/projects/{}/tokens", args.project);
    let bytes = Client::new(&args.server)?.send(reqwest::Method::POST, &path, Some(body))?;
    let created: CreatedProjectToken =
        serde_json::from_slice(&bytes).context("reading the server's answer")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", created.token)?;
    out.flush()?;
    eprintln!(
        "gantry: created token {} ({}, scope {}) of project {}, {}; its secret is shown only this once",
        created.id,
        created.name,
        created.effective_scope(),
        args.project,
        created
            .expires_at
            .map_or_else(|| "never expires".to_string(), |t| format!("expires {t}"))
    );
    Ok(())
}

/// A new token's body: `scope`, and `read_only` too, which an older server (that ignores `scope`)
/// reads, so that it never makes a `write` token of a `read` one.
fn token_body(name: String, expires_at: Option<String>, scope: TokenScope) -> NewProjectToken {
    NewProjectToken {
        name,
        expires_at,
        scope: Some(scope),
        read_only: Some(scope == TokenScope::Read),
    }
}

fn variable(pair: &str, masked: bool) -> Result<ProjectVariable> {
    let (key, value) = pair
        .split_once('=')
        .with_context(|| format!("`{pair}` is not KEY=VALUE"))?;
    Ok(ProjectVariable {
        key: key.to_string(),
        value: Some(value.to_string()),
        masked,
        protected: false,
        environment_scope: "*".to_string(),
    })
}

fn add(args: AddArgs) -> Result<()> {
    let mut variables = Vec::new();
    for v in &args.variables {
        variables.push(variable(v, false)?);
    }
    for v in &args.masked_variables {
        variables.push(variable(v, true)?);
    }
    let body = NewProject {
        name: args.name,
        repo_url: args.repo_url,
        default_branch: args.default_branch,
        webhook_secret: args.webhook_secret,
        variables,
        forge: None,
        schedules: Vec::new(),
        include_allowed_from: args.include_allowed_from,
        fork_pipelines: args
            .fork_pipelines
            .map(|m| serde_json::from_value(serde_json::Value::String(m)))
            .transpose()?,
        protected_branches: (!args.protected_branches.is_empty())
            .then_some(args.protected_branches),
        protected_tags: args.protected_tags,
        notify: Vec::new(),
    };
    print_json(&Client::new(&args.server)?.post("/api/v1/projects", Some(&body))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_says_its_scope_in_both_spellings_and_the_server_agrees() {
        for scope in [TokenScope::Read, TokenScope::Write] {
            let body = token_body("ci".into(), None, scope);
            assert_eq!(body.read_only, Some(scope == TokenScope::Read));
            // The server takes the pair as one scope (it refuses a pair that disagrees).
            assert_eq!(body.resolved_scope(), Ok(scope));
        }
    }

    #[test]
    fn variables_split_at_the_first_equals_sign() {
        let v = variable("A=b=c", true).unwrap();
        assert_eq!(
            (v.key.as_str(), v.value.as_deref(), v.masked),
            ("A", Some("b=c"), true)
        );
        assert!(variable("nope", false).is_err());
    }
}
