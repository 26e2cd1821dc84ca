//! The `gantry` binary: thin glue over the library crates. `main` calls `run`, which returns the exit code.

mod agent_cmd;
mod cli;
mod deploys;
mod git;
mod includes;
mod notify;
mod output;
mod remote;
mod rollback;
mod server_cmd;
mod sources;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::main() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gantry: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
