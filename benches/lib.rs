//! Real inputs for the criterion benchmarks in this package.
//!
//! The benchmarks run on bytes a real PostgreSQL 15 produced: complete WAL
//! segments of a pgbench TPC-B run (with the full-page images that follow a
//! checkpoint) and the first pages of the `pgbench_accounts` heap file as a
//! data-file-like buffer for backup parts. They are made once by a throwaway
//! cluster ([`pgpitr_testkit::PgCluster`]) and cached in the temp directory
//! (`$TMPDIR/pgpitr-bench-fixture-v1`); set `PGPITR_BENCH_REGEN=1` to make
//! them again.

use pgpitr_testkit::PgCluster;
use pgpitr_types::{Lsn, WalFileName, WalSegSize};
use std::path::{Path, PathBuf};

/// Complete WAL segments taken from the pgbench run.
const SEGMENTS: usize = 4;
/// Size of the data-file buffer: one backup part.
pub const DATAFILE_BYTES: usize = 16 << 20;
const CACHE_NAME: &str = "pgpitr-bench-fixture-v1";

/// One complete WAL segment and where it starts.
pub struct Segment {
    pub name: String,
    pub start: Lsn,
    pub bytes: Vec<u8>,
}

/// The PostgreSQL major whose WAL the fixture holds.
pub const FIXTURE_MAJOR: u32 = 15;

pub struct Fixture {
    pub seg_size: WalSegSize,
    /// Consecutive segments, oldest first.
    pub segments: Vec<Segment>,
    /// Heap pages of `pgbench_accounts`.
    pub datafile: Vec<u8>,
}

impl Fixture {
    /// The segments as one contiguous WAL stream starting at `self.start()`.
    pub fn wal(&self) -> Vec<u8> {
        self.segments.iter().flat_map(|s| s.bytes.iter().copied()).collect()
    }

    pub fn start(&self) -> Lsn {
        self.segments[0].start
    }

    /// How the fixture's WAL is laid out.
    pub fn format(&self) -> pgpitr_types::WalFormat {
        pgpitr_types::PgMajor::from_major(FIXTURE_MAJOR).expect("the fixture's major is supported").wal_format()
    }
}

/// Loads the cached fixture, making it first when needed (about 30 s).
pub fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(CACHE_NAME);
    if std::env::var_os("PGPITR_BENCH_REGEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(f) = load(&dir) {
        return f;
    }
    let tmp = std::env::temp_dir().join(format!("{CACHE_NAME}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    generate(&tmp);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).expect("move the fixture into place");
    load(&dir).expect("load the fixture just made")
}

fn load(dir: &Path) -> Option<Fixture> {
    let seg_bytes: u64 = std::fs::read_to_string(dir.join("wal_segment_size")).ok()?.trim().parse().ok()?;
    let seg_size = WalSegSize::new(seg_bytes).ok()?;
    let mut names: Vec<String> =
        std::fs::read_dir(dir.join("wal")).ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    if names.len() != SEGMENTS {
        return None;
    }
    let mut segments = Vec::new();
    for name in names {
        let WalFileName::Segment { segno, .. } = WalFileName::parse(&name, seg_size).ok()? else {
            return None;
        };
        let bytes = std::fs::read(dir.join("wal").join(&name)).ok()?;
        if bytes.len() as u64 != seg_bytes {
            return None;
        }
        segments.push(Segment { name, start: segno.start_lsn(seg_size)?, bytes });
    }
    let datafile = std::fs::read(dir.join("datafile")).ok()?;
    if datafile.len() != DATAFILE_BYTES {
        return None;
    }
    Some(Fixture { seg_size, segments, datafile })
}

fn generate(out: &Path) {
    eprintln!("pgpitr-benches: making real WAL with a throwaway cluster and pgbench (once; cached in {out:?})");
    let pg = PgCluster::builder()
        .major(FIXTURE_MAJOR)
        .setting("max_wal_size", "2GB")
        .setting("checkpoint_timeout", "30min")
        .start();
    pg.pgbench(&["-i", "-q", "-s", "10"]);
    let seg_bytes: u64 =
        pg.sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").parse().expect("int");
    let seg_size = WalSegSize::new(seg_bytes).expect("segment size");
    // A checkpoint first, so the WAL carries the full-page images real TPC-B WAL has.
    pg.sql("CHECKPOINT");
    let first = current_segment(&pg, seg_size) + 1;
    while current_segment(&pg, seg_size) < first + SEGMENTS as u64 {
        pg.pgbench(&["-c", "4", "-j", "2", "-T", "2", "-n"]);
    }
    let wal_out = out.join("wal");
    std::fs::create_dir_all(&wal_out).expect("create fixture dir");
    let tli = pgpitr_types::TimelineId(1);
    for segno in first..first + SEGMENTS as u64 {
        let name = WalFileName::segment(tli, pgpitr_types::SegNo(segno)).to_name(seg_size);
        std::fs::copy(pg.datadir().join("pg_wal").join(&name), wal_out.join(&name)).expect("copy a WAL segment");
    }
    let rel = pg.sql("SELECT pg_relation_filepath('pgbench_accounts')");
    let heap: PathBuf = pg.datadir().join(rel);
    let mut data = std::fs::read(&heap).expect("read the pgbench_accounts heap file");
    assert!(data.len() >= DATAFILE_BYTES, "pgbench_accounts is only {} bytes", data.len());
    data.truncate(DATAFILE_BYTES);
    std::fs::write(out.join("datafile"), data).expect("write datafile");
    std::fs::write(out.join("wal_segment_size"), seg_bytes.to_string()).expect("write segment size");
}

fn current_segment(pg: &PgCluster, seg: WalSegSize) -> u64 {
    let lsn: Lsn = pg.sql("SELECT pg_current_wal_lsn()").parse().expect("LSN");
    lsn.segment_number(seg).0
}
