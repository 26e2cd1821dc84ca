//! Gantry's pipeline compiler: `.gitlab-ci.yml` in, a [`Plan`] plus diagnostics out.
//!
//! This crate does no IO. Files are read through the [`Sources`] trait, the git facts and CLI variables
//! come in a [`Context`], and the result is plain data. That keeps it fast to test and safe to fuzz.

pub mod buildyml;
pub mod expr;
pub mod gate;
pub mod notify;
pub mod plan;
pub mod vars;
pub mod verify;
pub mod yaml;

pub use plan::{Job, Plan, Variable, When};
pub mod compile;
pub mod component;
pub mod context;
pub mod diag;
pub mod duration;
pub mod load;

pub use compile::{Compiled, compile};
pub use context::{Context, GitFacts, MemSources, Sources};
pub use diag::{Diagnostic, Severity};
pub mod preview;
