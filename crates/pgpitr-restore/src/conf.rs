//! The recovery settings a restored data directory starts with:
//! `recovery.signal` plus a block appended to `postgresql.auto.conf`, so
//! that a plain `pg_ctl start` replays to the target.

use crate::plan::RecoveryTarget;
use crate::target::{TargetAction, format_time};
use pgpitr_types::{Lsn, TimelineId};
use std::io::Write;
use std::path::Path;

/// What goes into the configuration.
#[derive(Debug, Clone)]
pub struct RecoveryConf {
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub timeline: TimelineId,
    pub action: TargetAction,
    /// One line saying what was restored, as a comment.
    pub comment: String,
}

/// Quotes one word for `/bin/sh`, which runs `restore_command`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `restore_command` calling `exe wal-fetch`. Only the repository location
/// goes in, never a credential: S3 credentials come from the server's
/// environment. `%` is doubled because Postgres expands `%f`/`%p`.
/// With `until`, a segment missing past the one holding that LSN is the end
/// of WAL, not a gap: a restore to a target reads nothing there, and
/// PostgreSQL's read-ahead must not die on the gaps that retention tiers
/// leave after old backups.
pub fn restore_command(exe: &Path, repo: &str, spool: Option<&Path>, until: Option<Lsn>) -> Result<String, String> {
    let word = |s: &str| -> Result<String, String> {
        if s.contains(['\n', '\r', '\0']) {
            return Err(format!("{s:?} cannot be used in restore_command (it contains a line break or NUL)"));
        }
        Ok(shell_quote(s).replace('%', "%%"))
    };
    let exe = exe.to_str().ok_or_else(|| format!("{} is not valid UTF-8", exe.display()))?;
    let mut cmd = format!("{} wal-fetch --repo {}", word(exe)?, word(repo)?);
    if let Some(spool) = spool {
        let spool = spool.to_str().ok_or_else(|| format!("{} is not valid UTF-8", spool.display()))?;
        cmd.push_str(&format!(" --spool {}", word(spool)?));
    }
    if let Some(u) = until {
        cmd.push_str(&format!(" --until {u}"));
    }
    cmd.push_str(" %f %p");
    Ok(cmd)
}

/// A value as a single-quoted configuration-file string.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', "''"))
}

/// The lines to append to `postgresql.auto.conf`. Every recovery target
/// setting is written, the chosen one last: Postgres rejects two non-empty
/// targets, and one left in the source's configuration must not survive.
pub fn render(c: &RecoveryConf) -> String {
    let mut lines = vec![format!("# {}", c.comment.replace(['\n', '\r'], " "))];
    let mut set = |k: &str, v: &str| lines.push(format!("{k} = {}", conf_quote(v)));
    set("restore_command", &c.restore_command);
    let (key, value, inclusive) = match &c.target {
        RecoveryTarget::None => ("", String::new(), true),
        RecoveryTarget::Immediate => ("recovery_target", "immediate".to_string(), true),
        RecoveryTarget::Time { time_us, inclusive } => ("recovery_target_time", format_time(*time_us), *inclusive),
        RecoveryTarget::Lsn { lsn, inclusive } => ("recovery_target_lsn", lsn.to_string(), *inclusive),
        RecoveryTarget::Xid { xid, inclusive } => ("recovery_target_xid", xid.to_string(), *inclusive),
        RecoveryTarget::Name { name } => ("recovery_target_name", name.clone(), true),
    };
    for k in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
    ] {
        if k != key {
            set(k, "");
        }
    }
    if !key.is_empty() {
        set(key, &value);
    }
    set("recovery_target_inclusive", if inclusive { "on" } else { "off" });
    set("recovery_target_timeline", &c.timeline.to_string());
    set("recovery_target_action", c.action.as_str());
    lines.join("\n") + "\n"
}

/// Appends the settings to `postgresql.auto.conf` and creates
/// `recovery.signal`, both 0600 and synced.
pub fn write(pgdata: &Path, c: &RecoveryConf) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    append(pgdata, &render(c))?;
    let signal = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(pgdata.join("recovery.signal"))?;
    signal.sync_all()?;
    std::fs::File::open(pgdata)?.sync_all()
}

/// The settings that keep a drill's server to itself, whatever the
/// restored configuration says: no TCP, a private socket directory with
/// trust on that socket alone (its own `hba_file`), no archiving or
/// archive cleanup, no recovery-end command, no logical replication
/// workers (they would consume the production subscriptions' slots), no
/// waiting on the production's synchronous standbys, no external pid file,
/// huge pages only if available, no TLS files, and its log where
/// `pg_ctl -l` puts it. Background workers of `shared_preload_libraries`
/// still start: `extra` settings (appended last) can turn them off.
pub fn isolation(sockdir: &Path, hba_file: &Path, port: u16, extra: &[(String, String)]) -> Result<String, String> {
    let path = |p: &Path| {
        p.to_str()
            .filter(|s| !s.contains(['\n', '\r', '\0']))
            .map(conf_quote)
            .ok_or_else(|| format!("{} cannot go into the configuration", p.display()))
    };
    let mut lines = vec![ISOLATION_MARK.to_string()];
    lines.push("listen_addresses = ''".to_string());
    lines.push(format!("unix_socket_directories = {}", path(sockdir)?));
    lines.push("unix_socket_permissions = 0700".to_string());
    lines.push(format!("port = {port}"));
    lines.push(format!("hba_file = {}", path(hba_file)?));
    for (k, v) in [
        ("archive_mode", "off"),
        ("archive_command", ""),
        ("archive_cleanup_command", ""),
        ("recovery_end_command", ""),
        ("synchronous_standby_names", ""),
        ("primary_conninfo", ""),
        ("primary_slot_name", ""),
        // Subscriptions would connect to their publishers and move the
        // production subscriber's slot.
        ("max_logical_replication_workers", "0"),
        ("max_sync_workers_per_subscription", "0"),
        ("external_pid_file", ""),
        ("huge_pages", "try"),
        ("ssl", "off"),
        ("logging_collector", "off"),
        ("cluster_name", "pgpitr-drill"),
    ] {
        lines.push(format!("{k} = {}", conf_quote(v)));
    }
    for (k, v) in extra {
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') || k.is_empty() {
            return Err(format!("{k:?} is not a setting name"));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(format!("the value of {k} holds a line break"));
        }
        lines.push(format!("{k} = {}", conf_quote(v)));
    }
    Ok(lines.join("\n") + "\n")
}

/// The first line of the isolation block.
const ISOLATION_MARK: &str = "# pgpitr drill: a scratch server, isolated";

/// Takes the isolation block out of `postgresql.auto.conf` again (a kept
/// `--pgdata` then starts as restored).
pub fn strip_isolation(pgdata: &Path) -> std::io::Result<()> {
    let auto = pgdata.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(at) = text.find(&format!("\n{ISOLATION_MARK}\n")) {
        std::fs::write(&auto, &text[..at + 1])?;
    }
    Ok(())
}

/// Appends `text` to `postgresql.auto.conf`, synced.
pub fn append(pgdata: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(pgdata.join("postgresql.auto.conf"))?;
    f.write_all(format!("\n{text}").as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_types::Lsn;

    #[test]
    fn restore_command_quotes_for_shell_percent_and_conf() {
        let cmd =
            restore_command(Path::new("/opt/pg pitr/pgpitr"), "s3://b/p?endpoint=http://h:1&region=x%2B", None, None)
                .unwrap();
        assert_eq!(cmd, "'/opt/pg pitr/pgpitr' wal-fetch --repo 's3://b/p?endpoint=http://h:1&region=x%%2B' %f %p");
        let cmd =
            restore_command(Path::new("/x/it's"), "/repo", Some(Path::new("/d/pg_wal/pgpitr_spool")), None).unwrap();
        assert_eq!(cmd, r"'/x/it'\''s' wal-fetch --repo '/repo' --spool '/d/pg_wal/pgpitr_spool' %f %p");
        assert_eq!(
            conf_quote(&cmd),
            r"'''/x/it''\\''''s'' wal-fetch --repo ''/repo'' --spool ''/d/pg_wal/pgpitr_spool'' %f %p'"
        );
        assert!(restore_command(Path::new("/x"), "/re\npo", None, None).is_err());
        let bounded = restore_command(Path::new("/x"), "/r", None, Some(pgpitr_types::Lsn(0x3_0000_0028))).unwrap();
        assert_eq!(bounded, "'/x' wal-fetch --repo '/r' --until 3/28 %f %p");
    }

    #[test]
    fn chosen_target_comes_last() {
        let c = RecoveryConf {
            restore_command: "x %f %p".into(),
            target: RecoveryTarget::Time { time_us: 1_795_000_000_000_000, inclusive: false },
            timeline: TimelineId(2),
            action: TargetAction::Pause,
            comment: "pgpitr restore".into(),
        };
        let text = render(&c);
        let targets: Vec<&str> = text.lines().filter(|l| l.starts_with("recovery_target")).collect();
        assert_eq!(targets[3], "recovery_target_xid = ''");
        assert_eq!(targets[4], "recovery_target_time = '2026-11-18 11:06:40+00'");
        assert!(text.contains("recovery_target_inclusive = 'off'\n"));
        assert!(text.contains("recovery_target_timeline = '2'\n"));
        assert!(text.contains("recovery_target_action = 'pause'\n"));
        let c = RecoveryConf { target: RecoveryTarget::Lsn { lsn: Lsn(0x1_0000_0028), inclusive: true }, ..c };
        assert!(render(&c).contains("recovery_target_lsn = '1/28'\n"));
        let c = RecoveryConf { target: RecoveryTarget::None, ..c };
        assert_eq!(render(&c).matches("= ''").count(), 5);
    }

    #[test]
    fn a_drill_server_is_isolated() {
        let extra = [("shared_buffers".to_string(), "128MB".to_string())];
        let text = isolation(Path::new("/tmp/s"), Path::new("/tmp/d/hba"), 5999, &extra).unwrap();
        for line in [
            "listen_addresses = ''",
            "unix_socket_directories = '/tmp/s'",
            "port = 5999",
            "hba_file = '/tmp/d/hba'",
            "archive_mode = 'off'",
            "synchronous_standby_names = ''",
            "max_logical_replication_workers = '0'",
            "archive_cleanup_command = ''",
            "shared_buffers = '128MB'",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from {text}");
        }
        assert!(isolation(Path::new("/tmp/a\nb"), Path::new("/h"), 1, &[]).is_err());
        assert!(isolation(Path::new("/s"), Path::new("/h"), 1, &[("a = b\nc".into(), "x".into())]).is_err());
        // The extra settings come last: they win.
        assert!(text.trim_end().ends_with("shared_buffers = '128MB'"));
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postgresql.auto.conf"), "a = 1\n").unwrap();
        append(d.path(), &text).unwrap();
        strip_isolation(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap(), "a = 1\n\n");
    }
}
