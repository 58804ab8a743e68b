//! The integration suite: one binary, one module per capability. Every test
//! runs the real `pgpitr` binary or library against real PostgreSQL
//! clusters (15, or `PGPITR_TEST_PG_MAJOR`) and a real S3-compatible server
//! (see crates/pgpitr-testkit).

/// `$name::local` and `$name::s3`: `$run(backend, $args...)` against a
/// local directory and against the S3 server.
macro_rules! on_both_backends {
    ($name:ident, $run:path $(, $arg:expr)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                $run(crate::common::Backend::local() $(, $arg)*).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                $run(crate::common::Backend::s3() $(, $arg)*).await;
            }
        }
    };
}

mod archive;
mod backup;
mod check;
mod common;
mod config;
mod copy;
mod docker;
mod drill;
mod encryption;
mod expire;
mod failover;
mod incremental;
mod init;
mod majors;
mod metrics;
mod migrate;
mod restore;
mod shutdown;
mod stream;
mod tail;
mod verify;
