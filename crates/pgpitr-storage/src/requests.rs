//! How many requests this process made to its storage backends, per
//! operation: a page of a listing, a ranged GET and a retry each count
//! once. The binary logs them at exit under the `requests` target
//! (`PGPITR_LOG=requests=debug`), which is how `scripts/bench catalog`
//! counts the requests of a command.

use crate::Op;
use std::sync::atomic::{AtomicU64, Ordering};

const OPS: [Op; 18] = [
    Op::Put,
    Op::PutIfAbsent,
    Op::Get,
    Op::GetRange,
    Op::GetStream,
    Op::Head,
    Op::List,
    Op::ListDirs,
    Op::Delete,
    Op::DeleteMany,
    Op::StartUpload,
    Op::PutPart,
    Op::CompleteUpload,
    Op::AbortUpload,
    Op::Check,
    Op::CreateJournal,
    Op::Append,
    Op::CopyObject,
];

static COUNTS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];

/// The counter of `op`: a match, so that a new operation cannot be left out.
fn slot(op: Op) -> usize {
    match op {
        Op::Put => 0,
        Op::PutIfAbsent => 1,
        Op::Get => 2,
        Op::GetRange => 3,
        Op::GetStream => 4,
        Op::Head => 5,
        Op::List => 6,
        Op::ListDirs => 7,
        Op::Delete => 8,
        Op::DeleteMany => 9,
        Op::StartUpload => 10,
        Op::PutPart => 11,
        Op::CompleteUpload => 12,
        Op::AbortUpload => 13,
        Op::Check => 14,
        Op::CreateJournal => 15,
        Op::Append => 16,
        Op::CopyObject => 17,
    }
}

/// Counts one request of `op`.
pub(crate) fn count(op: Op) {
    COUNTS[slot(op)].fetch_add(1, Ordering::Relaxed);
}

/// The requests made so far, per operation (only those made at all).
pub fn made() -> Vec<(&'static str, u64)> {
    OPS.iter().map(|&op| (op.name(), COUNTS[slot(op)].load(Ordering::Relaxed))).filter(|&(_, n)| n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_counter() {
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(slot(*op), i, "{}", op.name());
        }
        let before = made().iter().find(|(n, _)| *n == "head").map_or(0, |(_, c)| *c);
        count(Op::Head);
        assert_eq!(made().iter().find(|(n, _)| *n == "head").map(|(_, c)| *c), Some(before + 1));
    }
}
