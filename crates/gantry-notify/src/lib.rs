//! Gantry's notifications: an [`Event`] (a pipeline failed or was fixed, a deployment failed or
//! succeeded, a rollback) sent to the targets of the pipeline's `notify:` rules
//! ([`gantry_pipeline::notify`]), each in the format its service documents.
//!
//! - [`request`] builds the HTTP request a target wants (`format.rs`): Slack's incoming-webhook
//!   `text` with `blocks`, WeCom's and DingTalk's `markdown`, Feishu's `post`, and Gantry's own
//!   versioned JSON for a generic webhook; DingTalk, Feishu and webhooks are signed when they have
//!   a secret. Every message carries the project, the ref, the commit, the pipeline and its link,
//!   the failed jobs and, for a rollback, its from and to.
//! - [`Sender`] posts them with one shared HTTP client, a timeout per attempt and retries with
//!   backoff, and answers one [`Delivery`] per target (attempts, last error). It never panics and
//!   never fails its caller: [`Sender::spawn`] runs a notification on its own task, so a pipeline
//!   never waits on a chat service.
//!
//! ```no_run
//! # async fn f(rules: Vec<gantry_pipeline::notify::Rule>, vars: Vec<gantry_pipeline::Variable>, event: gantry_notify::Event) {
//! let sender = gantry_notify::Sender::new(gantry_notify::Policy::default()).unwrap();
//! let handle = sender.spawn(rules, vars, event);
//! for d in handle.await.unwrap_or_default() {
//!     if let Some(e) = &d.error {
//!         eprintln!("notification to {} failed after {} attempts: {e}", d.host, d.attempts);
//!     }
//! }
//! # }
//! ```

mod format;
mod send;

use serde::{Deserialize, Serialize};

pub use format::{Request, dingtalk_sign, feishu_sign, request, webhook_signature};
pub use gantry_pipeline::notify::{EventKind, Rule, Target, TargetKind};
pub use send::{Delivery, Policy, Sender, expand};

/// Why a notification could not be made or sent. Never shows a URL (it holds the hook's token).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target's URL is empty, most likely because its variable is not set.
    #[error("the {} url is empty (is its variable set?)", .0.as_str())]
    EmptyUrl(TargetKind),
    /// The target's URL does not parse.
    #[error("the {} url is not a valid URL: {reason}", kind.as_str())]
    BadUrl {
        /// The target.
        kind: TargetKind,
        /// Why.
        reason: String,
    },
    /// The target has a secret that is empty, most likely because its variable is not set.
    #[error("the {} secret is empty (is its variable set?)", .0.as_str())]
    EmptySecret(TargetKind),
    /// The target's URL is neither http nor https.
    #[error("the {} url must be http or https", .0.as_str())]
    Scheme(TargetKind),
    /// The HTTP client cannot be built.
    #[error("cannot build the notifications' HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// What happened, with what every message shows about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What kind of event it is.
    pub kind: EventKind,
    /// The project's name (or path).
    pub project: String,
    /// The branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit.
    pub commit: Commit,
    /// The pipeline.
    pub pipeline: Pipeline,
    /// The names of the jobs that failed (allowed failures excluded).
    pub failed_jobs: Vec<String>,
    /// The environment, for deployments and rollbacks.
    pub environment: Option<String>,
    /// For a rollback: the deployment rolled back and the one re-deployed.
    pub rollback: Option<Rollback>,
}

/// A commit, as a message shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The full SHA.
    pub sha: String,
    /// The first line of its message.
    pub title: String,
}

/// A pipeline, as a message shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Its id.
    pub id: u64,
    /// Where to see it (the server's page), if there is one.
    pub url: Option<String>,
}

/// A rollback: from the deployment rolled back to the one re-deployed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The deployment rolled back.
    pub from: String,
    /// The deployment re-deployed.
    pub to: String,
}
