//! How many requests this process made to its storage backends, per
//! operation: a page of a listing, a ranged GET and a retry each count
//! once. The binary logs them at exit under the `requests` target
//! (`PGPITR_LOG=requests=debug`), which is how `scripts/bench catalog`
//! counts the requests of a command.

use crate::Op;
use std::sync::atomic::{AtomicU64, Ordering};

const OPS: [Op; 17] = [
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
];

static COUNTS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];

/// Counts one request of `op`.
pub(crate) fn count(op: Op) {
    COUNTS[op as usize].fetch_add(1, Ordering::Relaxed);
}

/// The requests made so far, per operation (only those made at all).
pub fn made() -> Vec<(&'static str, u64)> {
    OPS.iter().map(|&op| (op.name(), COUNTS[op as usize].load(Ordering::Relaxed))).filter(|&(_, n)| n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_counter() {
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(*op as usize, i, "{}", op.name());
        }
        let before = made().iter().find(|(n, _)| *n == "head").map_or(0, |(_, c)| *c);
        count(Op::Head);
        assert_eq!(made().iter().find(|(n, _)| *n == "head").map(|(_, c)| *c), Some(before + 1));
    }
}
