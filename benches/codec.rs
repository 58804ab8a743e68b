//! The repository's object container (`pgpitr_repo::object`): lz4 plus two
//! CRC-32s, on real WAL and on heap pages. Single-threaded, so the reported
//! throughput is MB/s per core.
//!
//! - `wal_object/encode/segment`: one complete 16 MiB segment, as `pgpitr
//!   stream` stores it when a segment fills: CRC-32 of the raw bytes, then
//!   64 KiB lz4 blocks compressed into a buffer from its pool (codec 2).
//! - `wal_object/encode/piece_*`: the unfinished tail of a segment, stored
//!   within `--flush-interval` (piece sizes of a quiet and of a busy server),
//!   the same way.
//! - `wal_object/decode/*`: what `wal-fetch` does before handing Postgres a
//!   segment (decompress and verify).
//! - `backup_part/*`: a backup part, the same container over data-file pages.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgpitr_repo::object::{self, BufPool, Codec, Span, TimedLsn, WalSummary};
use pgpitr_types::{Lsn, TimelineId};
use std::hint::black_box;

fn summary() -> WalSummary {
    WalSummary {
        first_commit: Some(TimedLsn {
            lsn: Lsn(0x1_0000_0100),
            end_lsn: Lsn(0x1_0000_0180),
            time_us: 1_750_000_000_000_000,
        }),
        last_commit: Some(TimedLsn {
            lsn: Lsn(0x1_00FF_0100),
            end_lsn: Lsn(0x1_00FF_0180),
            time_us: 1_750_000_001_000_000,
        }),
        commits: 4000,
        aborts: 3,
        restore_points: Vec::new(),
        received_us: 1_750_000_001_000_100,
        unindexed_before: None,
    }
}

fn wal_object(c: &mut Criterion) {
    let fx = pgpitr_benches::fixture();
    let seg = &fx.segments[1];
    let tli = TimelineId(1);
    let s = summary();
    let pool = BufPool::for_objects(1, seg.bytes.len());
    // What `pgpitr_archive::upload::store` does with a tail piece or a segment
    // whose pieces left no blocks to reuse.
    let encode = |raw: &[u8]| {
        let crc = crc32fast::hash(raw);
        object::encode_spans(tli, seg.start, &[Span::Raw(raw)], crc, &s, Some(&pool)).0
    };
    let stored = encode(&seg.bytes);
    assert_eq!(object::decode(&stored).expect("decodes").0.codec, Codec::Lz4Chunks);
    eprintln!(
        "wal_object: segment {} compresses to {:.1}% with lz4",
        seg.name,
        100.0 * stored.len() as f64 / seg.bytes.len() as f64
    );

    let mut g = c.benchmark_group("wal_object");
    g.throughput(Throughput::Bytes(seg.bytes.len() as u64));
    g.bench_function(BenchmarkId::new("encode", "segment_16MiB"), |b| b.iter(|| encode(black_box(&seg.bytes))));
    g.bench_function(BenchmarkId::new("decode", "segment_16MiB"), |b| {
        b.iter(|| object::decode(black_box(&stored)).expect("decodes"))
    });
    for (label, len) in [("piece_64KiB", 64usize << 10), ("piece_1MiB", 1 << 20)] {
        let raw = &seg.bytes[..len];
        let part = encode(raw);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("encode", label), |b| b.iter(|| encode(black_box(raw))));
        g.bench_function(BenchmarkId::new("decode", label), |b| {
            b.iter(|| object::decode(black_box(&part)).expect("decodes"))
        });
    }
    g.finish();
}

fn backup_part(c: &mut Criterion) {
    // What `pgpitr_backup::upload::encode_part` does (crate-private, so not
    // callable from here): the WAL container with lz4, the byte range within
    // the tar archive as its "LSN range" and an empty summary, on parts of the
    // default --part-size, 16 MiB.
    let fx = pgpitr_benches::fixture();
    let data = &fx.datafile;
    let tli = TimelineId(1);
    let empty = WalSummary::default();
    let stored = object::encode(tli, Lsn(0), data, Codec::Lz4, &empty);
    eprintln!(
        "backup_part: {} MiB of pgbench_accounts heap pages compress to {:.1}% with lz4",
        data.len() >> 20,
        100.0 * stored.len() as f64 / data.len() as f64
    );
    let mut g = c.benchmark_group("backup_part");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function(BenchmarkId::new("encode", "heap_16MiB"), |b| {
        b.iter(|| object::encode(tli, Lsn(0), black_box(data), Codec::Lz4, &empty))
    });
    g.bench_function(BenchmarkId::new("decode", "heap_16MiB"), |b| {
        b.iter(|| object::decode(black_box(&stored)).expect("decodes"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = wal_object, backup_part
}
criterion_main!(benches);
