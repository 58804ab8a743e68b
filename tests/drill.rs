//! `pgpitr drill` against real servers: a drill while the stream runs, with
//! the point reached, connections, amcheck and user checks; a failing and
//! an invalid check; refusals before anything is written.

use crate::common::*;
use crate::restore::{share, shared_binary};
use pgpitr_testkit::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `pgpitr drill` on `backend` with `args` (the binary the server's
/// `postgres` OS user can run as restore_command).
fn drill_cmd(backend: &Backend, bindir: &Path, args: &[&str]) -> Command {
    let mut cmd = pgpitr_at(shared_binary());
    backend.env(&mut cmd);
    cmd.args(["drill", "--repo", &backend.url(), "--pg-bindir"]).arg(bindir).args(args);
    cmd
}

/// True on a drill's server: nothing reaches production from it.
const ISOLATED: &str = "SELECT current_setting('archive_mode') = 'off' AND current_setting('listen_addresses') = '' \
     AND current_setting('max_logical_replication_workers') = '0' AND current_setting('synchronous_standby_names') = ''";

fn report(out: &Run) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("drill --json: {e}: {}", out.stdout))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

/// A drill to the latest point while the stream runs: every check passes,
/// the report is stored and listed, and the scratch directory is gone.
async fn drill_while_streaming(backend: Backend) {
    share(&backend);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    // The live comparison (-d) counts rows as this user.
    pg.sql(&format!("GRANT pg_read_all_data TO {REPL_USER}"));
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g");
    run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let end =
        lsn(&pg.sql("INSERT INTO t SELECT g, 'late' FROM generate_series(1001, 1500) g; SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;

    let scratch = tempfile::tempdir().unwrap();
    let checks = scratch.path().join("checks.toml");
    std::fs::write(
        &checks,
        "[[check]]\nname = \"rows\"\nsql = \"SELECT count(*) FROM t\"\nexpect = \"1500\"\n\n\
         [[check]]\nname = \"late rows\"\ndatabase = \"postgres\"\nsql = \"SELECT count(*) = 500 FROM t WHERE note = 'late'\"\n",
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    // Commits go on while the drill runs: `latest` replays them too.
    let load = pgbench_thread(&pg, &["-c", "2", "-T", "6", "-n", "postgres"]);
    let out = run(drill_cmd(
        &backend,
        pg.server_bindir(),
        &["--target", "latest", "--amcheck", "--json", "--rto-objective", "1h"],
    )
    .args(["--check", "SELECT max(id) = 1500 FROM t", "--check", ISOLATED, "--checks-file"])
    .arg(&checks)
    .arg("--scratch-dir")
    .arg(work.path())
    .args(["-d", &conninfo(&pg)])
    .env("PGPASSWORD", REPL_PASSWORD))
    .ok();
    assert!(load.join().unwrap().status.success());
    let r = report(&out);
    // t and pgbench's accounts, branches and tellers held still; its
    // history grew during the drill.
    let live = check(&r, "row counts equal the live server's");
    assert_eq!(live["ok"], true, "{r:#}");
    assert_eq!(
        live["detail"],
        "4 tables hold the live server's row counts; 1 changed on it during the drill (not compared): \
         postgres.public.pgbench_history",
        "{r:#}"
    );
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["target"], "latest");
    assert_eq!(r["reached"]["state"], "promoted");
    for name in ["promoted at the planned point", "connect postgres", "check 1", "check 2", "rows", "late rows"] {
        assert_eq!(check(&r, name)["ok"], true, "{name}: {r:#}");
    }
    assert_eq!(check(&r, "rows")["detail"], "1500");
    let amcheck = check(&r, "amcheck postgres");
    assert_eq!(amcheck["ok"], true, "{r:#}");
    assert!(amcheck["detail"].as_str().unwrap().contains("B-tree indexes checked"), "{r:#}");
    for phase in ["plan", "download", "replay", "checks"] {
        assert!(r["phases"][phase].as_f64().unwrap() >= 0.0, "{phase}: {r:#}");
    }
    let rto = r["rto_seconds"].as_f64().unwrap();
    let sum: f64 = ["plan", "download", "replay"].iter().map(|p| r["phases"][p].as_f64().unwrap()).sum();
    assert!((rto - sum).abs() < 1e-6, "{r:#}");
    assert!(r["backup_bytes"].as_u64().unwrap() > 1_000_000, "{r:#}");
    assert!(
        empty(work.path()),
        "the scratch directory was left: {:?}",
        std::fs::read_dir(work.path()).unwrap().count()
    );

    // Stored in the repository and shown by list.
    let mut list = pgpitr();
    backend.env(&mut list);
    let listed = run(list.args(["list", "--repo", &backend.url(), "--json"])).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["drills"][0]["id"], r["id"]);
    assert_eq!(listed["drills"][0]["ok"], true);
    let mut list = pgpitr();
    backend.env(&mut list);
    let text = run(list.args(["list", "--repo", &backend.url()])).ok();
    assert!(text.stdout.contains(&format!("drill {} [passed]", r["id"].as_str().unwrap())), "{}", text.stdout);

    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    // Rows the stopped stream never stored: the live comparison fails.
    pg.sql("INSERT INTO t SELECT g, 'unstored' FROM generate_series(1501, 1600) g");
    let out = run(drill_cmd(&backend, pg.server_bindir(), &["--target", "latest", "--json", "-d", &conninfo(&pg)])
        .env("PGPASSWORD", REPL_PASSWORD));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let r = report(&out);
    let live = check(&r, "row counts equal the live server's");
    assert_eq!(live["ok"], false, "{r:#}");
    assert!(live["detail"].as_str().unwrap().contains("the stream is behind or stopped"), "{r:#}");
    assert!(out.stderr.contains("failed checks: row counts equal the live server's"), "{}", out.stderr);
}

on_both_backends!(a_drill_while_streaming_passes_and_is_listed, drill_while_streaming);

/// A drill to a random time with a check that fails and one that is not
/// SQL: exit 1 with one error line naming both, the report printed and
/// stored, the point reached still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_invalid_checks_fail_the_drill_with_its_report() {
    let backend = Backend::local();
    share(&backend);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 100) id");
    run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let out = run(&mut drill_cmd(
        &backend,
        pg.server_bindir(),
        &["--json", "--check", "SELECT count(*) = 0 FROM t", "--check", "SELEC 1"],
    ));
    let line = out.fails_with(&["failed checks: check 1, check 2"]);
    assert!(line.contains("drill 20"), "{line}");
    let r = report(&out);
    assert_eq!(r["ok"], false);
    assert_eq!(r["target"], "random");
    assert_eq!(check(&r, "promoted at the planned point")["ok"], true, "{r:#}");
    assert_eq!(check(&r, "check 1")["detail"], "returned f, not true");
    assert!(
        check(&r, "check 2")["detail"].as_str().unwrap().starts_with("not valid SQL: ERROR: syntax error"),
        "{r:#}"
    );
    let stored = backend.repo().await.recent_drills(1).await.unwrap();
    assert_eq!(stored[0].id, r["id"].as_str().unwrap());
    assert!(!stored[0].ok);
}

/// Refused before anything is written: a target outside the window, a
/// scratch directory that is not empty, binaries of another major, a
/// checks file that does not parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_that_cannot_run_are_refused_before_writing() {
    let backend = Backend::local();
    share(&backend);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 100) id");
    run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("pgdata");

    run(drill_cmd(&backend, pg.server_bindir(), &["--target-time", "2001-01-01 00:00:00+00", "--pgdata"]).arg(&pgdata))
        .fails_with(&["2001-01-01", "restorable"]);
    assert!(!pgdata.exists(), "the refused drill wrote {}", pgdata.display());

    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
    run(drill_cmd(&backend, pg.server_bindir(), &["--target", "latest", "--pgdata"]).arg(&pgdata))
        .fails_with(&["is not empty"]);
    assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 1);

    let other = if test_major() == 15 { 16 } else { 15 };
    run(&mut drill_cmd(&backend, &server_bindir(other), &["--target", "latest"]))
        .fails_with(&[&format!("is PostgreSQL {other}"), "--pg-bindir"]);

    let bad = dir.path().join("checks.toml");
    std::fs::write(&bad, "[[check]]\nname = \"x\"\nsequel = \"SELECT 1\"\n").unwrap();
    run(drill_cmd(&backend, pg.server_bindir(), &["--checks-file"]).arg(&bad)).fails_with(&["--checks-file", "sequel"]);
    assert!(backend.repo().await.recent_drills(1).await.unwrap().is_empty(), "a refused drill left a report");
}

/// `stream --drill-every`: the daemon runs a drill as soon as none is
/// stored; the metrics show that it passed and its RTO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_drills_run_from_the_stream_and_show_in_metrics() {
    use crate::metrics::{get, sample};
    let backend = Backend::s3();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 100) id");
    run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stream.log");
    let mut cmd = pgpitr_at(shared_binary());
    backend.env(&mut cmd);
    cmd.args(["stream", "--repo", &backend.url(), "-d", &conninfo(&pg), "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--drill-every", "1h", "--drill-target", "latest", "--drill-amcheck", "--rto-objective", "1h"])
        .arg("--drill-pg-bindir")
        .arg(pg.server_bindir())
        .env("PGPASSWORD", REPL_PASSWORD)
        .env("PGPITR_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let stream = StreamProc { child: cmd.spawn().unwrap() };
    let body = wait_for(Duration::from_secs(120), || {
        let b = get(port, "/metrics")?.body;
        sample(&b, "pgpitr_drill_last_success_timestamp_seconds").map(|_| b)
    })
    .unwrap_or_else(|| {
        panic!("no passed drill in the metrics; stream log:\n{}", std::fs::read_to_string(&log).unwrap())
    });
    assert!(sample(&body, "pgpitr_drill_last_rto_seconds").unwrap() > 0.0, "{body}");
    assert_eq!(sample(&body, "pgpitr_drill_failed_total"), Some(0.0), "{body}");
    let stored = backend.repo().await.recent_drills(5).await.unwrap();
    assert_eq!(stored.len(), 1, "one drill per --drill-every");
    assert!(stored[0].ok && stored[0].checks.iter().any(|c| c.name == "amcheck postgres"), "{:?}", stored[0]);
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A drill that passes its time limit while its server runs (a check that
/// sleeps): exit 1 with the reason, the report stored, the server stopped
/// and the scratch directory removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_past_its_time_limit_stops_its_server_and_removes_its_scratch() {
    let backend = Backend::local();
    share(&backend);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 100) id");
    run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let work = tempfile::tempdir().unwrap();
    let mut cmd = drill_cmd(&backend, pg.server_bindir(), &["--target", "latest", "--time-limit", "8s", "--json"]);
    cmd.args(["--check", "SELECT pg_sleep(60) IS NOT NULL", "--scratch-dir"]).arg(work.path());
    let t0 = std::time::Instant::now();
    let out = run(&mut cmd);
    out.fails_with(&["passed its time limit of 8 s"]);
    assert!(t0.elapsed() < Duration::from_secs(40), "the drill ran {:?}", t0.elapsed());
    let r = report(&out);
    assert_eq!(r["ok"], false);
    assert!(r["phases"]["replay"].as_f64().is_some(), "the server had started: {r:#}");
    assert!(empty(work.path()), "the scratch directory was left");
    let scratch = work.path().display().to_string();
    let left = std::process::Command::new("pgrep").args(["-f", &scratch]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes of the drill are left: {}", String::from_utf8_lossy(&left.stdout));
    let stored = backend.repo().await.recent_drills(1).await.unwrap();
    assert_eq!(stored[0].error.as_deref(), Some("the drill passed its time limit of 8 s"));
}
