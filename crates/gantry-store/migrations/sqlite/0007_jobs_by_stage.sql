-- The jobs of a pipeline's earlier stages, whose artifacts a job without `needs` or `dependencies`
-- downloads, are read on every hand-out. Through `jobs_pipeline`, that read walked every job of the
-- pipeline: a pipeline of 1,000 jobs in one stage paid for 1,000 rows per job handed out.
CREATE INDEX jobs_by_stage ON jobs (pipeline_id, stage_index);
