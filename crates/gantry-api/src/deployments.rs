//! Environments and their deployments, as the REST API shows them (issue 19): what
//! `GET /api/v1/projects/{name}/environments`, `.../environments/{env}/deployments` and
//! `POST .../environments/{env}/rollback` answer, and what an agent's finish carries of a
//! verification ([`Measurement`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a deployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Its job is queued or running (verification included).
    Running,
    /// Its job succeeded, verification included.
    Success,
    /// Its job failed (its script, or its verification).
    Failed,
    /// Its job was canceled.
    Canceled,
    /// A rollback replaced it.
    RolledBack,
}

impl DeploymentStatus {
    /// The status as the API spells it: `running`, `rolled_back`, ...
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Success => "success",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Canceled => "canceled",
            DeploymentStatus::RolledBack => "rolled_back",
        }
    }
}

/// One measurement of a deployment's verification. The same JSON as `gantry run --output json`'s
/// `verify` event and as `gantry_release::Measurement`, plus the progressive step's weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Measurement {
    /// `prometheus`, `http`, `canary` or `score`.
    pub kind: String,
    /// The check: a query's name, an HTTP check's URL.
    pub check: String,
    /// The value measured, if any.
    pub value: Option<f64>,
    /// What the value must be, as text (`<= 0.05`, `status 200`).
    pub threshold: String,
    /// Whether it passed.
    pub passed: bool,
    /// `pass`, `fail`, `inconclusive` or `error`.
    pub phase: String,
    /// Why it is not a pass, or the canary test's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Milliseconds from the step's verification start.
    pub elapsed_ms: u64,
    /// The progressive step's weight, when the job has steps of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
}

/// A variable in force for a deployment; a masked one's value is `[MASKED]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployedVariable {
    /// The name.
    pub key: String,
    /// The value (`[MASKED]` when masked).
    pub value: String,
    /// Whether it is masked.
    pub masked: bool,
}

/// A deployment: one run of a job with `environment:` (`action: start`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// Its id, increasing per server.
    pub id: i64,
    /// The project's name.
    pub project: String,
    /// The environment's name.
    pub environment: String,
    /// The environment's URL, when given.
    pub url: Option<String>,
    /// `deployment_tier`, when given.
    pub tier: Option<String>,
    /// How it stands.
    pub status: DeploymentStatus,
    /// The job (the attempt) that deploys.
    pub job_id: i64,
    /// The job's name.
    pub job: String,
    /// The job's pipeline.
    pub pipeline_id: i64,
    /// The commit deployed.
    pub sha: String,
    /// The branch or tag.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Who or what triggered it: the pipeline's source and user (`push by jane`), or a rollback's
    /// cause: `rollback (automatic)`, `rollback by admin`, `rollback by token 3 (deployer)`
    /// (`rollback by hand` for `gantry rollback`).
    pub triggered_by: String,
    /// The variables in force (the project's and the pipeline's), masked ones redacted.
    pub variables: Vec<DeployedVariable>,
    /// The jobs whose artifacts it used.
    pub artifacts: Vec<String>,
    /// When it started.
    pub created_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Set on a rollback: the deployment it rolled back.
    pub rollback_of: Option<i64>,
    /// Set on a rolled-back deployment: the rollback that replaced it.
    pub rolled_back_by: Option<i64>,
    /// Its verification's measurements, in the order they were taken.
    pub measurements: Vec<Measurement>,
}

/// An environment of a project, with its newest deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environment {
    /// The name.
    pub name: String,
    /// The URL of its newest deployment, when given.
    pub url: Option<String>,
    /// The tier of its newest deployment, when given.
    pub tier: Option<String>,
    /// How many deployments it has had.
    pub deployments: i64,
    /// Its newest deployment.
    pub last: Deployment,
    /// What it runs now: its newest deployment that succeeded and was not rolled back.
    pub current: Option<Deployment>,
}

/// `POST /api/v1/projects/{name}/environments/{env}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The deployment to re-deploy; by default the last one that succeeded before the newest.
    #[serde(default)]
    pub to: Option<i64>,
}

/// What a rollback started: the deployment rolled back, the one re-deployed, and the job that
/// re-deploys it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollback {
    /// The environment.
    pub environment: String,
    /// The deployment rolled back.
    pub from: i64,
    /// The deployment re-deployed.
    pub to: i64,
    /// The job (a new attempt of `to`'s job) that re-deploys it.
    pub job_id: i64,
}
