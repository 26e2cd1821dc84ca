//! Commands that talk to a Gantry server's API: `gantry project add`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use gantry_api::{ErrorBody, NewProject, ProjectVariable};

/// Exit code: the server could not be reached or failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: the server refused the request (bad token, bad input, name taken).
const EXIT_REFUSED: u8 = 2;

/// `gantry project`'s subcommands.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Register a project with a server (`POST /api/v1/projects`) and print it as JSON.
    Add(AddArgs),
}

/// `gantry project add`'s options.
#[derive(Args)]
pub struct AddArgs {
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
}

/// Runs `gantry project …`; returns the exit code.
///
/// # Errors
/// When the request cannot be built (a variable without `=`).
pub fn main(command: ProjectCommand) -> Result<u8> {
    match command {
        ProjectCommand::Add(args) => add(args),
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
    };
    let url = format!("{}/api/v1/projects", args.server.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let resp = client
            .post(&url)
            .bearer_auth(&args.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        anyhow::Ok((status, bytes))
    });
    let (status, bytes) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gantry: cannot reach {url}: {e:#}");
            return Ok(EXIT_FAILED);
        }
    };
    if status.is_success() {
        let mut out = std::io::stdout().lock();
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
            Err(_) => out.write_all(&bytes)?,
        }
        out.flush()?;
        return Ok(0);
    }
    let message = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
        |_| String::from_utf8_lossy(&bytes).trim().to_string(),
        |b| b.error,
    );
    eprintln!("gantry: the server answered {status}: {message}");
    Ok(if status.is_client_error() {
        EXIT_REFUSED
    } else {
        EXIT_FAILED
    })
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
