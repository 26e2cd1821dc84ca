//! Commands that talk to a Gantry server's API: `gantry project add`,
//! `gantry project token create|list|revoke`, `gantry agent revoke` and
//! `gantry agent rotate-registration-token`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use gantry_api::{CreatedProjectToken, ErrorBody, NewProject, NewProjectToken, ProjectVariable};

/// Exit code: the server could not be reached or failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: the server refused the request (bad token, bad input, name taken).
const EXIT_REFUSED: u8 = 2;

/// `gantry project`'s subcommands.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Register a project with a server (`POST /api/v1/projects`) and print it as JSON.
    Add(AddArgs),
    /// Manage a project's API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `gantry project token`'s subcommands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a project token and print its secret (shown this once; the server keeps a hash).
    ///
    /// The token may trigger pipelines and read, cancel, retry and play the project's pipelines,
    /// jobs, logs and artifacts; nothing of other projects.
    Create(TokenCreateArgs),
    /// List a project's tokens as JSON (without secrets).
    List(TokenListArgs),
    /// Revoke a project token at once.
    Revoke(TokenRevokeArgs),
}

/// `gantry agent`'s subcommands (without one, `gantry agent` runs an agent).
#[derive(Subcommand)]
pub enum AgentCommand {
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
    match command {
        AgentCommand::Revoke(args) => {
            let path = format!("/api/v1/agents/{}", args.id);
            match call(&args.server, reqwest::Method::DELETE, &path, None)? {
                Answer::Ok(_) => {
                    eprintln!("gantry: revoked agent {}", args.id);
                    Ok(0)
                }
                Answer::Exit(code) => Ok(code),
            }
        }
        AgentCommand::RotateRegistrationToken(server) => {
            let path = "/api/v1/agents/registration-token";
            match call(&server, reqwest::Method::POST, path, None)? {
                Answer::Ok(bytes) => {
                    let t: gantry_api::agent::RegistrationToken = serde_json::from_slice(&bytes)
                        .context("the server's answer is not a registration token")?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", t.token)?;
                    out.flush()?;
                    eprintln!(
                        "gantry: new registration token (shown only this once); the old one no longer registers agents"
                    );
                    Ok(0)
                }
                Answer::Exit(code) => Ok(code),
            }
        }
    }
}

/// Where the server is and the admin token.
#[derive(Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "GANTRY_SERVER", value_name = "URL")]
    server: String,
    /// The admin API token.
    #[arg(
        long,
        env = "GANTRY_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: String,
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
    /// A token that only reads: it cannot trigger, cancel, retry, play or approve.
    #[arg(long)]
    read_only: bool,
}

/// `gantry project token list`'s options.
#[derive(Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    server: ServerArgs,
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
    match command {
        ProjectCommand::Add(args) => add(args),
        ProjectCommand::Token(TokenCommand::Create(args)) => token_create(args),
        ProjectCommand::Token(TokenCommand::List(args)) => {
            let path = format!("/api/v1/projects/{}/tokens", args.project);
            match call(&args.server, reqwest::Method::GET, &path, None)? {
                Answer::Ok(bytes) => print_json(&bytes),
                Answer::Exit(code) => Ok(code),
            }
        }
        ProjectCommand::Token(TokenCommand::Revoke(args)) => {
            let path = format!("/api/v1/projects/{}/tokens/{}", args.project, args.id);
            match call(&args.server, reqwest::Method::DELETE, &path, None)? {
                Answer::Ok(_) => {
                    eprintln!("gantry: revoked token {} of {}", args.id, args.project);
                    Ok(0)
                }
                Answer::Exit(code) => Ok(code),
            }
        }
    }
}

/// A call's outcome: the body of a success, or the exit code after the error was printed.
enum Answer {
    Ok(Vec<u8>),
    Exit(u8),
}

/// Sends one request with the admin token; prints the error of a failure.
fn call(
    server: &ServerArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer> {
    let url = format!("{}{path}", server.server.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut req = client.request(method, &url).bearer_auth(&server.token);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?.to_vec();
        anyhow::Ok((status, bytes))
    });
    let (status, bytes) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gantry: cannot reach {url}: {e:#}");
            return Ok(Answer::Exit(EXIT_FAILED));
        }
    };
    if status.is_success() {
        return Ok(Answer::Ok(bytes));
    }
    Ok(Answer::Exit(refused(status, &bytes)))
}

/// Prints the server's error; answers the exit code.
fn refused(status: reqwest::StatusCode, bytes: &[u8]) -> u8 {
    let message = serde_json::from_slice::<ErrorBody>(bytes).map_or_else(
        |_| String::from_utf8_lossy(bytes).trim().to_string(),
        |b| b.error,
    );
    eprintln!("gantry: the server answered {status}: {message}");
    if status.is_client_error() {
        EXIT_REFUSED
    } else {
        EXIT_FAILED
    }
}

/// Prints a JSON answer, pretty.
fn print_json(bytes: &[u8]) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        Err(_) => out.write_all(bytes)?,
    }
    out.flush()?;
    Ok(0)
}

/// `gantry project token create`: the secret alone on stdout (for `$(...)`), the rest on stderr.
fn token_create(args: TokenCreateArgs) -> Result<u8> {
    let body = serde_json::to_vec(&NewProjectToken {
        name: args.name,
        expires_at: args.expires_at,
        read_only: args.read_only,
    })?;
    let path = format!("/api/v1/projects/{}/tokens", args.project);
    let bytes = match call(&args.server, reqwest::Method::POST, &path, Some(body))? {
        Answer::Ok(bytes) => bytes,
        Answer::Exit(code) => return Ok(code),
    };
    let created: CreatedProjectToken =
        serde_json::from_slice(&bytes).context("reading the server's answer")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", created.token)?;
    out.flush()?;
    eprintln!(
        "gantry: created token {} ({}) of project {}, {}; its secret is shown only this once",
        created.id,
        created.name,
        args.project,
        created
            .expires_at
            .map_or_else(|| "never expires".to_string(), |t| format!("expires {t}"))
    );
    Ok(0)
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

fn add(args: AddArgs) -> Result<u8> {
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
    let body = serde_json::to_vec(&body)?;
    match call(
        &args.server,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(body),
    )? {
        Answer::Ok(bytes) => print_json(&bytes),
        Answer::Exit(code) => Ok(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
