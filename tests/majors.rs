//! Every supported major against real servers of that major (15 is the
//! rest of the suite's default, `PGPITR_TEST_PG_MAJOR`): the whole loop of
//! stream, backup and exact restores to times (the unfinished tail
//! included) on each.

use crate::common::*;
use crate::restore::pitr_is_exact;
use crate::stream::kill9_during_load_loses_nothing;
use pgpitr_testkit::*;

/// The loop on `major`, if `PGPITR_TEST_PG_MAJORS` lists it. A major left
/// out is said, not skipped silently.
async fn whole_loop(major: u32) {
    if !test_majors().contains(&major) {
        eprintln!("PostgreSQL {major} is not in PGPITR_TEST_PG_MAJORS: not run");
        return;
    }
    pitr_is_exact(Backend::local(), 1, major).await;
}

/// 14 streams, resumes after kill -9 (its slot's position read from
/// `pg_replication_slots`: it has no `READ_REPLICATION_SLOT`), and indexes
/// every commit, synchronous mode included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resume_and_commit_index_on_14() {
    if !test_majors().contains(&14) {
        eprintln!("PostgreSQL 14 is not in PGPITR_TEST_PG_MAJORS: not run");
        return;
    }
    kill9_during_load_loses_nothing(Backend::s3(), &[], 14).await;
    kill9_during_load_loses_nothing(Backend::local(), &["--synchronous"], 14).await;
}

/// 14's BASE_BACKUP: keywords, a CopyOut stream per tablespace and one
/// for the manifest, compressed on pgpitr's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_14() {
    whole_loop(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_16() {
    whole_loop(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_17() {
    whole_loop(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_18() {
    whole_loop(18).await;
}
