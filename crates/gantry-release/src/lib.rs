//! Releases: verifying a deployment against Prometheus metrics and HTTP health checks.
//!
//! The plan of a verification is `gantry-pipeline`'s [`Verify`] (the `verify:` keyword). A
//! [`Verifier`] runs one verification (one progressive step): it measures every `interval` for
//! `duration`, every check of a measurement concurrently over one shared `reqwest::Client`, reports
//! each [`Measurement`] as it is taken, stops as soon as a check exceeds its limits (`analysis`,
//! Argo Rollouts' semantics), and at the end of the window judges canary against baseline
//! (`judge`, with the Mann-Whitney U test of `stats`).
//!
//! ```no_run
//! # async fn f(spec: gantry_pipeline::verify::Verify) {
//! let verifier = gantry_release::Verifier::new(reqwest::Client::new());
//! let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
//! let outcome = verifier.verify(&spec, |m| eprintln!("{} {:?}", m.check, m.value), cancel).await;
//! # }
//! ```
//!
//! `history` records deployments under a state directory (`deployments/`, one JSON file per
//! environment, written atomically under a lock): the only module here that touches files.
//!
//! What this crate does not do: expand variables (the caller hands it a `Verify` whose URLs are
//! expanded), run scripts or roll back.

pub mod analysis;
pub mod history;
pub mod http;
pub mod judge;
pub mod prometheus;
pub mod stats;
mod verifier;

use serde::{Deserialize, Serialize};

pub use analysis::Phase;
pub use gantry_pipeline::verify::Verify;
pub use verifier::{Outcome, Status, Verifier};

/// What a measurement measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A Prometheus query against its `min` / `max`.
    Prometheus,
    /// An HTTP check.
    Http,
    /// One query's canary against its baseline, at the end of a step.
    Canary,
    /// The canary judge's score of a step.
    Score,
}

/// One measurement, as it is reported and recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// What was measured.
    pub kind: Kind,
    /// The check: a query's name, an HTTP check's URL.
    pub check: String,
    /// The value measured (a sample, a status, a canary's relative effect, a score), if any.
    pub value: Option<f64>,
    /// What the value must be, as text (`<= 0.05`, `status 200`).
    pub threshold: String,
    /// Whether the measurement passed.
    pub passed: bool,
    /// Pass, fail, inconclusive or error.
    pub phase: Phase,
    /// Why it is not a pass, or the test's figures for a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Milliseconds from the verification's start to the measurement.
    pub elapsed_ms: u64,
}

impl Measurement {
    fn new(
        kind: Kind,
        check: &str,
        value: Option<f64>,
        threshold: String,
        phase: Phase,
        detail: Option<String>,
    ) -> Measurement {
        Measurement {
            kind,
            check: check.to_string(),
            value,
            threshold,
            passed: phase == Phase::Pass,
            phase,
            detail,
            elapsed_ms: 0,
        }
    }
}
