//! The commit-record scan `pgpitr stream` runs over every byte it receives
//! (`pgpitr_walscan::WalScanner`), on real pgbench TPC-B WAL fed in the
//! chunk sizes XLogData messages have, with and without record CRC checks.
//! Single-threaded: the throughput is MB/s per core.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgpitr_walscan::{WalEvent, WalScanner};
use std::hint::black_box;

fn scan(c: &mut Criterion) {
    let fx = pgpitr_benches::fixture();
    let wal = fx.wal();
    let (start, seg, format) = (fx.start(), fx.seg_size, fx.format());

    let mut events = Vec::new();
    let mut s = WalScanner::new(start, seg, format);
    s.feed(&wal, &mut events).expect("the fixture WAL scans cleanly");
    let commits = events.iter().filter(|e| matches!(e, WalEvent::Commit { .. })).count();
    eprintln!("walscan: {} MiB of WAL from {start}: {} records, {commits} commits", wal.len() >> 20, s.records());

    let mut g = c.benchmark_group("walscan");
    g.throughput(Throughput::Bytes(wal.len() as u64));
    for verify in [true, false] {
        for chunk in [8usize << 10, 128 << 10] {
            let id = BenchmarkId::new(if verify { "crc" } else { "no_crc" }, format!("chunk_{}KiB", chunk >> 10));
            g.bench_function(id, |b| {
                let mut events = Vec::with_capacity(1 << 16);
                b.iter(|| {
                    events.clear();
                    let mut s = WalScanner::new(start, seg, format).verify_crc(verify);
                    for piece in wal.chunks(chunk) {
                        s.feed(black_box(piece), &mut events).expect("scans");
                    }
                    black_box(events.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = scan
}
criterion_main!(benches);
