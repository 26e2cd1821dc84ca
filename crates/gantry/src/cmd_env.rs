//! `gantry env list|history` of a server's project (`--project NAME`, with the server and token
//! as every server command takes them): `GET /api/v1/projects/{name}/environments` and
//! `.../environments/{env}/deployments` (`gantry_api::deployments`).

use anyhow::Result;
use clap::Args;
use gantry_api::deployments::{Deployment, Environment, Rollback, RollbackRequest};

use crate::client::{self, Client, EXIT_REFUSED, ServerArgs, exit_code, print};
use crate::cmd_pipeline::{encode, short};
use crate::output::Output;

/// The options that make `gantry env` read a server's project.
#[derive(Args)]
pub struct EnvServer {
    /// The server's project (with `--server`/`--token`, `GANTRY_SERVER`/`GANTRY_TOKEN` or
    /// `gantry login`), instead of this directory's `gantry run` deployments.
    #[arg(long, value_name = "NAME")]
    project: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// With a server, the page of `history`, from 1 (20 deployments a page).
    #[arg(long, value_name = "N")]
    page: Option<u32>,
}

impl EnvServer {
    /// Whether the command reads a server: `--project` or `--server` is given.
    pub(crate) fn wanted(&self) -> bool {
        self.project.is_some() || self.server.has_server()
    }
}

/// Runs `gantry rollback ENV [--to ID]` against the server:
/// `POST /api/v1/projects/{name}/environments/{env}/rollback`. The server starts the rollback's job
/// and answers at once; `gantry job log JOB --follow` follows it.
pub(crate) fn rollback(
    args: &EnvServer,
    output: Output,
    environment: &str,
    to: Option<u64>,
) -> Result<u8> {
    exit_code((|| {
        let Some(project) = &args.project else {
            return Err(client::fail(
                EXIT_REFUSED,
                "rollback: with a server, name the project: --project NAME",
            ));
        };
        let client = Client::new(&args.server)?;
        let path = format!(
            "/api/v1/projects/{}/environments/{}/rollback",
            encode(project),
            encode(environment)
        );
        let to = to.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let body = client.post(&path, Some(&RollbackRequest { to }))?;
        if output == Output::Json {
            return client::print_json(&body);
        }
        let r: Rollback = client::parse(&body)?;
        client::say(&format!(
            "rollback of {}: deployment {} → {}, job {} (gantry job log {} --follow)",
            r.environment, r.from, r.to, r.job_id, r.job_id
        ))
    })())
}

/// Runs `gantry env list` (no `environment`) or `gantry env history ENV` against the server.
pub(crate) fn main(args: &EnvServer, output: Output, environment: Option<&str>) -> Result<u8> {
    exit_code((|| {
        let Some(project) = &args.project else {
            return Err(client::fail(
                EXIT_REFUSED,
                "env: with a server, name the project: --project NAME",
            ));
        };
        let client = Client::new(&args.server)?;
        let base = format!("/api/v1/projects/{}/environments", encode(project));
        match environment {
            None => print(
                output,
                &client.get(&base)?,
                &[
                    "ENVIRONMENT",
                    "CURRENT",
                    "COMMIT",
                    "LAST",
                    "STATUS",
                    "REF",
                    "WHEN",
                ],
                |list: Vec<Environment>| {
                    list.into_iter()
                        .map(|e| {
                            let d = &e.last;
                            vec![
                                e.name.clone(),
                                e.current
                                    .as_ref()
                                    .map(|c| c.id.to_string())
                                    .unwrap_or_default(),
                                e.current
                                    .as_ref()
                                    .map(|c| short(&c.sha))
                                    .unwrap_or_default(),
                                d.id.to_string(),
                                d.status.as_str().into(),
                                d.git_ref.clone(),
                                d.finished_at.clone().unwrap_or(d.created_at.clone()),
                            ]
                        })
                        .collect()
                },
            ),
            Some(env) => print(
                output,
                &client.get_page(
                    &format!(
                        "{base}/{}/deployments?page={}",
                        encode(env),
                        args.page.unwrap_or(1)
                    ),
                    output,
                )?,
                &[
                    "ID", "STATUS", "JOB", "PIPELINE", "COMMIT", "REF", "BY", "STARTED", "FINISHED",
                ],
                |list: Vec<Deployment>| {
                    list.into_iter()
                        .map(|d| {
                            let mut status = d.status.as_str().to_string();
                            if let Some(of) = d.rollback_of {
                                status.push_str(&format!(" (rollback of {of})"));
                            }
                            vec![
                                d.id.to_string(),
                                status,
                                d.job,
                                d.pipeline_id.to_string(),
                                short(&d.sha),
                                d.git_ref,
                                d.triggered_by,
                                d.created_at,
                                d.finished_at.unwrap_or_default(),
                            ]
                        })
                        .collect()
                },
            ),
        }
    })())
}
