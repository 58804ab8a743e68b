//! `pgpitr check` against a real server and repository: every finding ok
//! with a running stream and a backup; what fails without a stream, without
//! a backup, for a role without REPLICATION and for another cluster's
//! repository.

use crate::common::*;
use crate::restore::take_backup;
use pgpitr_testkit::*;
use std::process::Command;

fn check_cmd(pg: &PgCluster, backend: &Backend, user: &str, password: &str, args: &[&str]) -> Command {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.args(["check", "--repo", &backend.url(), "-d"])
        .arg(format!("host=127.0.0.1 port={} user={user} dbname=postgres", pg.port()))
        .args(args)
        .env("PGPASSWORD", password);
    cmd
}

fn findings(out: &Run) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("check --json: {e}: {}", out.stdout))
}

fn finding<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["findings"].as_array().unwrap().iter().find(|f| f["check"] == name).unwrap_or_else(|| panic!("no {name}: {r:#}"))
}

async fn check_follows_the_setup(backend: Backend) {
    let pg = PgCluster::start_default();
    pg.sql(&format!("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {REPL_USER}"));
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");

    // Streaming, but nothing to restore from yet.
    let out = run(&mut check_cmd(&pg, &backend, REPL_USER, REPL_PASSWORD, &["--json"]));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let r = findings(&out);
    assert_eq!(r["ok"], false);
    assert_eq!(finding(&r, "backups")["status"], "fail", "{r:#}");
    assert_eq!(finding(&r, "stream")["status"], "ok", "{r:#}");

    take_backup(&pg, &backend);
    for args in [&["--json"][..], &["--json", "--switch-wal"][..]] {
        let out = run(&mut check_cmd(&pg, &backend, REPL_USER, REPL_PASSWORD, args));
        let r = findings(&out);
        assert_eq!(out.code, Some(0), "{r:#}");
        for name in [
            "connection",
            "replication attribute",
            "wal_level",
            "walsenders",
            "slot",
            "repository",
            "stream",
            "backups",
            "drills",
        ] {
            assert_eq!(finding(&r, name)["status"], "ok", "{name}: {r:#}");
        }
        let durable = finding(&r, "stream")["detail"].as_str().unwrap().to_owned();
        let what = if args.contains(&"--switch-wal") { "a segment switch" } else { "a fresh commit" };
        assert!(durable.starts_with(what) && durable.contains("durable in the repository"), "{durable}");
    }
    // Text: one line per finding.
    let out = run(&mut check_cmd(&pg, &backend, REPL_USER, REPL_PASSWORD, &[])).ok();
    assert_eq!(out.stdout.lines().count(), 9, "{}", out.stdout);
    assert!(out.stdout.lines().all(|l| l.starts_with("ok   ")), "{}", out.stdout);

    // The stream stopped: WAL is not archived.
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let out = run(&mut check_cmd(&pg, &backend, REPL_USER, REPL_PASSWORD, &[]));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("FAIL stream: no stream is connected to slot pgpitr"), "{}", out.stdout);
    assert!(out.stdout.contains("warn slot: pgpitr inactive"), "{}", out.stdout);
}

on_both_backends!(check_follows_the_setup_and_its_failures, check_follows_the_setup);

/// A role without REPLICATION, and a repository of another cluster: one
/// line each that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_role_without_replication_and_another_cluster() {
    let pg = PgCluster::start_default();
    let backend = Backend::local();
    let out = run(&mut check_cmd(&pg, &backend, NOREPL_USER, NOREPL_PASSWORD, &[]));
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("FAIL replication attribute: role {NOREPL_USER} lacks REPLICATION")),
        "{}",
        out.stdout
    );

    let other = PgCluster::start_default();
    take_backup(&other, &backend);
    let out = run(&mut check_cmd(&pg, &backend, REPL_USER, REPL_PASSWORD, &[]));
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("FAIL repository:") && out.stdout.contains("belongs to another cluster"),
        "{}",
        out.stdout
    );
}
