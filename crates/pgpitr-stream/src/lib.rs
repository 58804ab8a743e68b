//! `pgpitr stream`: sessions on a replication slot, resumed where the
//! repository ends, following failovers; the WAL itself goes through
//! [`pgpitr_archive::WalWriter`], which holds the durability contract.

mod archiver;
mod lease;
mod resume;

pub use archiver::Archiver;
pub use pgpitr_archive::{StreamConfig, StreamError, StreamStats};
