//! What identifies the cluster a repository serves.

use crate::{PgMajor, UnsupportedMajor, WalSegSize};

/// What identifies the cluster a repository serves, as a server reports it
/// (`ReplicationConnection::cluster_identity` in pgpitr-pgwire reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub system_identifier: u64,
    /// `server_version_num`, e.g. 150018.
    pub pg_version_num: u32,
    pub wal_segment_size: WalSegSize,
}

impl ClusterIdentity {
    /// The major number, whether pgpitr supports it or not.
    pub fn pg_major(&self) -> u32 {
        crate::major::major_number(self.pg_version_num)
    }

    /// The server's major, if pgpitr supports it.
    pub fn major(&self) -> Result<PgMajor, UnsupportedMajor> {
        PgMajor::from_version_num(self.pg_version_num)
    }
}
