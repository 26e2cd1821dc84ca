-- Indexes for what the server asks on every job it hands out or finishes.
--
-- What `success_changes_nothing` asks when a job ends, answered from small indexes instead of a
-- walk over every job of the pipeline: the jobs of a stage that are still pending or running, and
-- the jobs that name others in `needs`.
CREATE INDEX jobs_active_by_stage ON jobs (pipeline_id, stage_index)
    WHERE status IN ('pending', 'running');
CREATE INDEX jobs_with_needs ON jobs (pipeline_id) WHERE needs IS NOT NULL;
-- A pipeline's version sums its jobs' `bumps` on every read of the pipeline; `bumps` is the last
-- column of a row that holds the job's spec, so without this covering index each read walked
-- every job row of the pipeline.
CREATE INDEX jobs_bumps ON jobs (pipeline_id, bumps);
