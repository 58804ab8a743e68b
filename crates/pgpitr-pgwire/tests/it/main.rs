//! Integration tests against real PostgreSQL 15 clusters (pgpitr-testkit).
//! One file per capability.

mod basebackup;
mod commands;
mod connect;
mod streaming;
mod timeline;
mod tls;

use pgpitr_pgwire::{ConnConfig, ReplicationConnection};
use pgpitr_testkit::{PgCluster, REPL_PASSWORD, REPL_USER};

/// Settings from the URL alone: the tests never read the process environment.
pub fn config(pg: &PgCluster, user: &str, password: &str) -> ConnConfig {
    ConnConfig::parse_with_env(&pg.url(user, password), |_| None).expect("test URL parses")
}

pub async fn connect_repl(pg: &PgCluster) -> ReplicationConnection {
    ReplicationConnection::connect(&config(pg, REPL_USER, REPL_PASSWORD)).await.expect("replication connection")
}
