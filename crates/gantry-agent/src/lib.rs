//! `gantry agent`: registers with a Gantry server, takes jobs from its queue, and runs each with
//! `gantry-runtime` and an executor, streaming logs and uploading artifacts.

/// `gantry agent`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the agent until it is stopped; returns the process exit code.
///
/// # Errors
/// When it cannot start.
pub fn main(args: Args) -> anyhow::Result<u8> {
    let _ = args;
    anyhow::bail!("gantry agent is not implemented yet")
}
