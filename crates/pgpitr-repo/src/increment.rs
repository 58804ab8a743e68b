//! The increments of incremental backups, in PostgreSQL 17's format
//! (`INCREMENTAL.<file>`, written by the server), which pgpitr's block
//! deltas on 14 to 16 write too (`PGPITR_DELTA.<k>.<file>`, several per
//! file when it changed much): a header (magic, block count, truncation
//! length, the block numbers, zeros to a block boundary when there are
//! blocks), then the blocks. Numbers are little-endian (the server writes
//! its own byte order; every platform PostgreSQL 17 packages for is
//! little-endian).

use pgpitr_types::Lsn;

/// PostgreSQL's block size (the default build's; increments of another
/// size fail their size check).
pub const BLCKSZ: u64 = 8192;
/// Blocks per relation segment file: no increment covers more.
pub const RELSEG_SIZE: u32 = 131_072;
pub const MAGIC: u32 = 0xd3ae_1f0d;
/// The server's name for an increment of `<file>`.
pub const NATIVE_PREFIX: &[u8] = b"INCREMENTAL.";
/// pgpitr's, `PGPITR_DELTA.<k>.<file>`: the k-th part of a block delta.
pub const DELTA_PREFIX: &[u8] = b"PGPITR_DELTA.";

/// Bytes before the first block of an increment of `count` blocks.
pub fn header_len(count: u32) -> u64 {
    let head = 12 + 4 * u64::from(count);
    if count == 0 { head } else { head.div_ceil(BLCKSZ) * BLCKSZ }
}

/// The header of an increment holding `blocks` of a file `truncation`
/// blocks long.
pub fn header(blocks: &[u32], truncation: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(blocks.len() as u32) as usize);
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    h.extend_from_slice(&truncation.to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_le_bytes());
    }
    h.resize(header_len(blocks.len() as u32) as usize, 0);
    h
}

/// The name a backup's file has once restored, and whether the backup
/// holds it as an increment. Only relation files (under `base/`, `global/`
/// or a tablespace: `space`, or `pg_tblspc/` in a manifest's paths) are
/// increments, as for pg_combinebackup.
pub fn output_name(space: Option<u32>, rel: &[u8]) -> (Vec<u8>, bool) {
    let split = rel.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    let (dir, name) = rel.split_at(split);
    let relation_dir = space.is_some() || [&b"base/"[..], b"global/", b"pg_tblspc/"].iter().any(|d| rel.starts_with(d));
    if relation_dir {
        if let Some(n) = name.strip_prefix(NATIVE_PREFIX).filter(|n| !n.is_empty()) {
            return ([dir, n].concat(), true);
        }
        if let Some(rest) = name.strip_prefix(DELTA_PREFIX)
            && let Some(dot) = rest.iter().position(|&c| c == b'.')
            && dot > 0
            && rest[..dot].iter().all(u8::is_ascii_digit)
            && dot + 1 < rest.len()
        {
            return ([dir, &rest[dot + 1..]].concat(), true);
        }
    }
    (rel.to_vec(), false)
}

/// The name of part `k` of the block delta of `rel`.
pub fn delta_name(rel: &[u8], k: u32) -> Vec<u8> {
    let split = rel.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    let (dir, name) = rel.split_at(split);
    [dir, DELTA_PREFIX, k.to_string().as_bytes(), b".", name].concat()
}

/// Whether `rel` (relative to the data directory) is a file a block delta
/// may hold in part: a relation's main or init fork, any segment, in a
/// database, `global` or a tablespace. Free-space and visibility maps are
/// always stored whole: their pages change without a new page LSN (a
/// free-space map is not WAL-logged page by page; clearing a visibility-map
/// bit dirties its page but leaves its LSN), and they are small.
pub fn delta_candidate(rel: &[u8]) -> bool {
    let parts: Vec<&[u8]> = rel.split(|&c| c == b'/').collect();
    let dir_ok = match parts.as_slice() {
        [b"global", _] => true,
        [b"base", db, _] => digits(db),
        [b"pg_tblspc", spc, _version, db, _] => digits(spc) && digits(db),
        _ => false,
    };
    let Some(name) = parts.last() else { return false };
    if !dir_ok {
        return false;
    }
    let (stem, seg) = match name.iter().position(|&c| c == b'.') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (&name[..], None),
    };
    if seg.is_some_and(|s| !digits(s)) {
        return false;
    }
    let rel_number = match stem.iter().position(|&c| c == b'_') {
        Some(i) if &stem[i..] == b"_init" => &stem[..i],
        Some(_) => return false,
        None => stem,
    };
    digits(rel_number)
}

fn digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// A page's LSN (`pd_lsn`: two 32-bit halves, high first, in the server's
/// byte order).
pub fn page_lsn(page: &[u8]) -> Lsn {
    let word = |i: usize| u64::from(u32::from_le_bytes([page[i], page[i + 1], page[i + 2], page[i + 3]]));
    Lsn(word(0) << 32 | word(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(output_name(None, b"base/5/INCREMENTAL.16384"), (b"base/5/16384".to_vec(), true));
        assert_eq!(output_name(None, b"global/INCREMENTAL.1262_vm"), (b"global/1262_vm".to_vec(), true));
        assert_eq!(output_name(Some(16385), b"PG_17_1/5/INCREMENTAL.1.2"), (b"PG_17_1/5/1.2".to_vec(), true));
        assert_eq!(output_name(None, b"pg_xact/INCREMENTAL.0000"), (b"pg_xact/INCREMENTAL.0000".to_vec(), false));
        assert_eq!(output_name(None, b"base/5/16384"), (b"base/5/16384".to_vec(), false));
        let spc = b"pg_tblspc/7/PG_15_1/5/INCREMENTAL.9".as_slice();
        assert_eq!(output_name(None, spc), (b"pg_tblspc/7/PG_15_1/5/9".to_vec(), true));
        let d = delta_name(b"base/5/16384.2", 3);
        assert_eq!(d, b"base/5/PGPITR_DELTA.3.16384.2");
        assert_eq!(output_name(None, &d), (b"base/5/16384.2".to_vec(), true));
        assert!(!output_name(None, b"base/5/PGPITR_DELTA.x.1").1);
        assert!(!output_name(None, b"base/5/PGPITR_DELTA.1.").1);

        for yes in [
            "base/5/16384",
            "base/5/16384.12",
            "base/5/16384_init",
            "global/1262",
            "global/1262_init",
            "pg_tblspc/16385/PG_15_202209061/5/16390",
        ] {
            assert!(delta_candidate(yes.as_bytes()), "{yes}");
        }
        for no in [
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/PG_VERSION",
            "base/5/t3_16384",
            "global/pg_control",
            "pg_xact/0000",
            "base/5/16384.x",
            "base/x/16384",
            "base/5/pg_filenode.map",
            "global/pg_internal.init",
        ] {
            assert!(!delta_candidate(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn header_layout() {
        assert_eq!(header(&[], 7), [0x0d, 0x1f, 0xae, 0xd3, 0, 0, 0, 0, 7, 0, 0, 0]);
        let h = header(&[1, 9], 10);
        assert_eq!(h.len() as u64, BLCKSZ);
        assert_eq!(&h[12..20], [1, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(header_len(2045), BLCKSZ);
        assert_eq!(header_len(2046), 2 * BLCKSZ);
        let mut page = [0u8; 16];
        page[..4].copy_from_slice(&1u32.to_le_bytes());
        page[4..8].copy_from_slice(&0x28u32.to_le_bytes());
        assert_eq!(page_lsn(&page), Lsn(0x1_0000_0028));
    }
}
