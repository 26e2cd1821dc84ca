//! Gantry's pipeline compiler: `.gitlab-ci.yml` in, a [`Plan`] plus diagnostics out.
//!
//! This crate does no IO. Files are read through the [`Sources`] trait, the git facts and CLI variables
//! come in a [`Context`], and the result is plain data. That keeps it fast to test and safe to fuzz.

pub mod expr;
pub mod plan;
pub mod vars;
pub mod yaml;

pub use plan::{Job, Plan, Variable, When};
