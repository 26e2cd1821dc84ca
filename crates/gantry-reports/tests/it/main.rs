//! gantry-reports' tests: each parser on real-shaped fixtures, broken and hostile input, merging,
//! the gate and coverage on new code.

mod coverage;
mod findings;
mod gate;
mod hostile;
mod tests;

use gantry_reports::Options;

/// A fixture's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Default options with a prefix to strip.
pub fn strip(prefix: &str) -> Options {
    Options {
        strip_prefix: Some(prefix.to_owned()),
        ..Options::default()
    }
}
