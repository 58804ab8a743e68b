//! The configuration file and the PGPITR_<OPTION> variables: precedence
//! (command line, environment, file, defaults), a real backup configured by
//! the file alone, and the file's bad input, one line each.

use crate::common::*;
use pgpitr_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn shown(out: &Run, option: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let o = v["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["option"] == option)
        .unwrap_or_else(|| panic!("{option}: {v:#}"));
    let values: Vec<String> = o["values"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    (values.join(","), o["source"].as_str().unwrap().to_owned())
}

#[test]
fn command_line_then_environment_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let conf = file(
        dir.path(),
        "pgpitr.toml",
        "repo = \"/srv/top\"\nflush_interval = \"7s\"\n[stream]\nrepo = \"/srv/stream\"\nkeep_daily = 7\ndrill_server_setting = [\"a=1\", \"b=2\"]\n",
        0o644,
    );
    let show = |env: &[(&str, &str)]| {
        let mut cmd = pgpitr();
        cmd.arg("--config").arg(&conf).args(["config", "show", "stream", "--json"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd).ok()
    };
    let out = show(&[]);
    assert!(shown(&out, "repo").0 == "/srv/stream", "the section wins over the top level");
    assert!(shown(&out, "repo").1.starts_with("file "));
    assert_eq!(shown(&out, "flush-interval").0, "7s");
    assert_eq!(shown(&out, "keep-daily").0, "7");
    assert_eq!(shown(&out, "drill-server-setting").0, "a=1,b=2");
    assert_eq!(shown(&out, "status-interval"), ("10s".into(), "default".into()));
    let out = show(&[("PGPITR_FLUSH_INTERVAL", "3s"), ("PGPITR_REPO", "/srv/env")]);
    assert_eq!(shown(&out, "flush-interval"), ("3s".into(), "environment PGPITR_FLUSH_INTERVAL".into()));
    assert_eq!(shown(&out, "repo").0, "/srv/env");
    // An option whose name means another thing elsewhere has its
    // command's variable, not the shared one.
    let mut drill = pgpitr();
    drill.arg("--config").arg(&conf).args(["config", "show", "drill", "--json"]);
    let out = run(drill.env("PGPITR_PORT", "5432").env("PGPITR_DRILL_PORT", "6543")).ok();
    assert_eq!(shown(&out, "port"), ("6543".into(), "environment PGPITR_DRILL_PORT".into()));
    // Top-level keys reach other commands; the command line wins over all.
    let mut list = pgpitr();
    list.arg("--config").arg(&conf).arg("list").env("PGPITR_REPO", "/srv/env");
    run(&mut list).fails_with(&["repository /srv/env is not initialised"]);
    let mut list = pgpitr();
    list.arg("--config").arg(&conf).args(["list", "--repo", "/srv/cli"]).env("PGPITR_REPO", "/srv/env");
    run(&mut list).fails_with(&["repository /srv/cli is not initialised"]);
    let mut list = pgpitr();
    list.env("PGPITR_CONFIG", &conf).arg("list");
    run(&mut list).fails_with(&["repository /srv/top is not initialised"]);
}

/// A backup configured by the file alone (with a password in it, so the
/// file is private), its options checked by `config show`.
#[test]
fn a_backup_configured_by_the_file_alone() {
    let pg = PgCluster::start_default();
    let backend = Backend::local();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "repo = \"{}\"\ndbname = \"host=127.0.0.1 port={} user={REPL_USER} password={REPL_PASSWORD}\"\n[backup]\ncheckpoint = \"fast\"\njson = true\n[expire]\nkeep_within = \"7d\"\n[restore]\ntarget = \"latest\"\n",
        backend.url(),
        pg.port()
    );
    let conf = file(dir.path(), "pgpitr.toml", &text, 0o600);
    let mut cmd = pgpitr();
    cmd.arg("--config").arg(&conf).arg("backup").env_remove("PGPASSWORD");
    let out = run(&mut cmd).ok();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert!(info["id"].as_str().is_some(), "{info:#}");
    let mut show = pgpitr();
    show.arg("--config").arg(&conf).args(["config", "show", "backup"]);
    let out = run(&mut show).ok();
    assert!(out.stdout.contains("password=*****"), "{}", out.stdout);
    assert!(!out.stdout.contains(REPL_PASSWORD), "{}", out.stdout);
    assert!(out.stdout.contains("checkpoint = fast    # file"), "{}", out.stdout);
    // A restore for a server that runs pgpitr from another path (a
    // Kubernetes Job before the database pod), repository from the file.
    let target = tempfile::tempdir().unwrap();
    let mut restore = pgpitr();
    restore.arg("--config").arg(&conf).args(["restore", "--restore-command-binary", "/pgpitr/pgpitr", "--pgdata"]);
    run(restore.arg(target.path().join("pgdata"))).ok();
    let auto = std::fs::read_to_string(target.path().join("pgdata/postgresql.auto.conf")).unwrap();
    assert!(auto.contains("restore_command = '''/pgpitr/pgpitr'' wal-fetch"), "{auto}");
    // Options a command requires one of (a retention rule, a target) count
    // as given when the file gives them.
    let mut expire = pgpitr();
    run(expire.arg("--config").arg(&conf).args(["expire", "--dry-run"])).ok();
    // The same file readable by others is refused.
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = pgpitr();
    cmd.arg("--config").arg(&conf).arg("backup");
    run(&mut cmd).fails_with(&["holds a password (in dbname) but is readable by others", "chmod 600"]);
}

#[test]
fn bad_files_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("repoo = \"/x\"\n", "unknown key \"repoo\": no command has an option --repoo"),
        ("[stream]\nflush_intervall = \"1s\"\n", "unknown key \"flush_intervall\" in [stream]"),
        ("[strem]\nslot = \"x\"\n", "unknown section [strem]"),
        ("repo = \"/x\"\n[stream]\nflush_interval = \"soon\"\n", "[stream] flush_interval: invalid value 'soon'"),
        ("repo = \"/x\"\n[stream]\nsynchronous = \"yes\"\n", "[stream] synchronous: invalid value 'yes'"),
        ("repo = [\n", "TOML parse error"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let conf = file(dir.path(), &format!("c{i}.toml"), text, 0o600);
        let mut cmd = pgpitr();
        cmd.arg("--config").arg(&conf).args(["stream", "-d", "host=127.0.0.1"]);
        let line = run(&mut cmd).fails_with(&[want]);
        assert!(line.contains(&conf.display().to_string()), "{line}");
    }
    let mut cmd = pgpitr();
    cmd.args(["--config", "/nonexistent/pgpitr.toml", "list"]);
    run(&mut cmd).fails_with(&["cannot read /nonexistent/pgpitr.toml"]);
}

/// PostgreSQL runs wal-fetch: a configuration it cannot use fails it with
/// 200, which stops recovery, never with a code that reads as "no such
/// file" and would end recovery early.
#[test]
fn wal_fetch_fails_loudly_on_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let conf = file(dir.path(), "bad.toml", "repoo = \"/x\"\n", 0o600);
    let mut cmd = pgpitr();
    cmd.env("PGPITR_CONFIG", &conf).args(["wal-fetch", "--repo", "/x", "000000010000000000000001", "/tmp/nowhere"]);
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("unknown key \"repoo\""), "{}", out.stderr);
    let mut cmd = pgpitr();
    cmd.args(["wal-fetch", "--repo", "/x", "--no-such-flag", "000000010000000000000001", "/tmp/nowhere"]);
    assert_eq!(run(&mut cmd).code, Some(200));
}
