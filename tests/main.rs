//! The integration suite: one binary, one module per capability. Every test
//! runs the real `pgpitr` binary or library against real PostgreSQL 15
//! clusters and a real S3-compatible server (see crates/pgpitr-testkit).

mod backup;
mod common;
mod docker;
mod expire;
mod failover;
mod init;
mod majors;
mod metrics;
mod restore;
mod shutdown;
mod stream;
mod tail;
mod verify;
