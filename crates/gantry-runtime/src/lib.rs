//! Runs a compiled [`gantry_pipeline::Plan`]. (Being written.)

pub mod executor;
