//! Projects as the server uses them: a stored project with its settings parsed and its secrets
//! opened ([`LoadedProject`]), and the rules for its names.

use gantry_api::{Project, ProjectVariable};
use gantry_store::ProjectRecord;

use crate::error::{AppError, AppResult};
use crate::secrets::Secrets;
use crate::spec::{ProjectSpec, name_matches};

/// A stored project with its parsed settings.
#[derive(Clone, Debug)]
pub(crate) struct LoadedProject {
    pub record: ProjectRecord,
    pub spec: ProjectSpec,
}

impl LoadedProject {
    /// The stored project with its secrets decrypted (see `secrets.rs`).
    pub fn parse(record: ProjectRecord, secrets: &Secrets) -> AppResult<LoadedProject> {
        let mut spec: ProjectSpec = serde_json::from_str(&record.spec)
            .map_err(|e| AppError::internal(format!("project {}: {e}", record.name)))?;
        secrets.open_spec(&record.name, &mut spec).map_err(|e| {
            AppError::internal(format!(
                "project {}: {} does not decrypt with the server's secret key",
                record.name, e.field
            ))
        })?;
        Ok(LoadedProject { record, spec })
    }

    /// Whether a pipeline of project `other` may include this project's files: always its own;
    /// another's when a name or pattern of `include_allowed_from` matches it.
    pub fn allows_include_from(&self, other: &str) -> bool {
        other == self.record.name
            || self
                .spec
                .include_allowed_from
                .iter()
                .any(|pattern| name_matches(pattern, other))
    }

    /// The API's view, without secrets.
    pub fn to_api(&self) -> Project {
        Project {
            id: self.record.id,
            name: self.record.name.clone(),
            // Credentials in the URL are given to git only, never shown.
            repo_url: crate::git::redact_url(&self.spec.repo_url),
            default_branch: self.spec.default_branch.clone(),
            has_webhook_secret: self.spec.webhook_secret.is_some(),
            variables: self
                .spec
                .variables
                .iter()
                .map(|v| ProjectVariable {
                    value: if v.masked { None } else { v.value.clone() },
                    ..v.clone()
                })
                .collect(),
            forge: self
                .spec
                .forge
                .clone()
                .map(|f| gantry_api::Forge { token: None, ..f }),
            schedules: self.spec.schedules.clone(),
            include_allowed_from: self.spec.include_allowed_from.clone(),
            fork_pipelines: self.spec.fork_pipelines,
            protected_branches: self.spec.protected_branches(),
            protected_tags: self.spec.protected_tags.clone(),
            created_at: crate::rfc3339(self.record.created_at),
        }
    }
}

/// Whether `name` is a valid variable name.
pub(crate) fn valid_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
