//! gantry-server's integration tests: the real server over real HTTP, on SQLite and on PostgreSQL.

mod common;

mod api;
mod flow;
mod forges;
mod hooks;
mod intake;
mod tokens;
