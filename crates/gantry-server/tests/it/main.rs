//! gantry-server's integration tests: the real server over real HTTP, on SQLite and on PostgreSQL.

mod common;

mod agents;
mod api;
mod deployments;
mod flow;
mod forges;
mod forks;
mod gitsafety;
mod hooks;
mod intake;
mod logview;
mod notify;
mod reports;
mod rollback;
mod secrets;
mod tokens;
