//! Records to store, the same for the tests and the benchmark (`examples/store_bench.rs` includes
//! this file).

use gantry_store::{JobStatus, NewJob, NewPipeline, PipelineStatus};

/// A pending job named `name` at `position`, queued at `created_at`.
pub fn job(name: &str, position: i64, created_at: i64) -> NewJob {
    NewJob {
        name: name.to_owned(),
        stage: "test".to_owned(),
        stage_index: 0,
        position,
        attempt: 1,
        status: JobStatus::Pending,
        when: "on_success".to_owned(),
        allow_failure: false,
        needs: None,
        tags: Vec::new(),
        resource_group: None,
        interruptible: false,
        spec: format!("{{\"name\":\"{name}\"}}"),
        created_at,
    }
}

/// A pipeline of `project_id` with `jobs`.
pub fn pipeline(project_id: i64, jobs: Vec<NewJob>) -> NewPipeline {
    NewPipeline {
        project_id,
        delivery_id: None,
        git_ref: "main".to_owned(),
        tag: false,
        protected: false,
        sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        before_sha: None,
        source: "push".to_owned(),
        status: PipelineStatus::Created,
        trace_id: "trace".to_owned(),
        errors: "[]".to_owned(),
        spec: "{}".to_owned(),
        created_at: 2_000,
        jobs,
    }
}
