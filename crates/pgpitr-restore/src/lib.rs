//! Restoring a cluster to a point in time, and serving WAL to its recovery.
//!
//! ```text
//!  pgpitr restore ──plan (listing + commit index)──▶ extract backup (or its chain) ──▶ recovery.signal
//!                                                                      + postgresql.auto.conf
//!  postgres (recovery) ──restore_command──▶ pgpitr wal-fetch ──spool / repository
//!                                                  └─▶ prefetcher (next segments, in parallel)
//! ```
//!
//! Nothing is written until the plan holds: a target outside the restorable
//! window, or behind a WAL gap, is refused with the window or the gap named.

pub mod chain;
pub mod conf;
pub mod datadir;
pub mod drill;
pub mod plan;
pub mod restore;
pub mod server;
pub mod target;
pub mod walfetch;

pub use chain::extract_chain;
pub use datadir::{ExtractOptions, Extracted, extract};
pub use plan::{BackupPoint, Plan, PlanError, PlanRequest, RecoveryTarget, TimelinePath};
pub use restore::{RestoreError, RestoreOptions, Restored, restore};
pub use server::{Reached, StartOptions};
pub use target::{Target, TargetAction, TimelineTarget, format_time, parse_time, parse_xid};
pub use walfetch::{FetchError, FetchRequest, Fetched};
