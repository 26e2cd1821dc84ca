//! `gantry server`: webhooks in, pipelines compiled with `gantry-pipeline`, a durable job queue in a
//! [`gantry_store::Store`], the REST API, the agent protocol, commit statuses out, and metrics. It never
//! links an executor: jobs run on agents.

/// `gantry server`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the server until it is stopped; returns the process exit code.
///
/// # Errors
/// When it cannot start.
pub fn main(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    anyhow::bail!("gantry server is not implemented yet")
}
