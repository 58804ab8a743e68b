//! The libpq password file (`~/.pgpass`, `PGPASSFILE`): lines of
//! `hostname:port:database:username:password`, where a field of exactly `*`
//! matches anything and `\` escapes `:` or `\`. Lines starting with `#` are
//! comments.

use std::path::Path;

/// What a line must match.
pub(crate) struct Query<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub database: &'a str,
    pub user: &'a str,
}

/// Reads `path` and returns the password of the first matching line. A
/// missing file is normal; an unreadable one, or one that group or others
/// may access, is ignored with a warning, as libpq does.
pub(crate) fn lookup(path: &Path, q: &Query<'_>) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the password file; ignoring it");
            return None;
        }
    };
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "the password file is not a plain file; ignoring it");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the password file has group or world access; permissions should be u=rw (0600) or less; ignoring it"
            );
            return None;
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => find(&String::from_utf8_lossy(&bytes), q),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the password file; ignoring it");
            None
        }
    }
}

/// The password of the first line of `text` matching `q`.
pub(crate) fn find(text: &str, q: &Query<'_>) -> Option<String> {
    let wanted = [q.host, q.port, q.database, q.user];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split(line);
        // Fewer than five fields: not a valid line; skip it like libpq.
        if fields.len() < 5 {
            continue;
        }
        let matches = fields.iter().zip(wanted).all(|(f, w)| f.wildcard || f.value == w);
        if matches {
            return Some(fields[4].value.clone());
        }
    }
    None
}

struct Field {
    value: String,
    /// Written as a bare `*` (an escaped `\*` is a literal star).
    wildcard: bool,
}

/// Splits a line on unescaped colons, removing the escapes.
fn split(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut value = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => {
                    value.push(n);
                    escaped_any = true;
                }
                None => value.push('\\'),
            },
            ':' => {
                fields.push(Field { wildcard: value == "*" && !escaped_any, value: std::mem::take(&mut value) });
                escaped_any = false;
            }
            c => value.push(c),
        }
    }
    fields.push(Field { wildcard: value == "*" && !escaped_any, value });
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(host: &'a str, port: &'a str, database: &'a str, user: &'a str) -> Query<'a> {
        Query { host, port, database, user }
    }

    const FILE: &str = "\
# comment line
db1:5432:replication:archiver:replpw
db1:5432:*:archiver:anydbpw
*:*:*:admin:adminpw
host\\:colon:5432:*:u:pw\\:with\\\\colon
db2:5432:*:\\*:literal-star
short:line
db3:*:*:*:pw:ignored-extra
";

    #[test]
    fn first_match_wins_and_wildcards() {
        assert_eq!(find(FILE, &q("db1", "5432", "replication", "archiver")).as_deref(), Some("replpw"));
        assert_eq!(find(FILE, &q("db1", "5432", "postgres", "archiver")).as_deref(), Some("anydbpw"));
        assert_eq!(find(FILE, &q("anything", "1", "x", "admin")).as_deref(), Some("adminpw"));
        assert_eq!(find(FILE, &q("db1", "5433", "replication", "archiver")), None);
        assert_eq!(find(FILE, &q("db3", "7", "d", "someone")).as_deref(), Some("pw"));
    }

    #[test]
    fn escapes() {
        assert_eq!(find(FILE, &q("host:colon", "5432", "d", "u")).as_deref(), Some("pw:with\\colon"));
        // `\*` is a literal star, not a wildcard.
        assert_eq!(find(FILE, &q("db2", "5432", "d", "bob")), None);
        assert_eq!(find(FILE, &q("db2", "5432", "d", "*")).as_deref(), Some("literal-star"));
    }

    #[test]
    fn crlf_and_trailing_backslash() {
        let text = "h:1:d:u:pw\r\nh:2:d:u:end\\";
        assert_eq!(find(text, &q("h", "1", "d", "u")).as_deref(), Some("pw"));
        assert_eq!(find(text, &q("h", "2", "d", "u")).as_deref(), Some("end\\"));
    }

    #[cfg(unix)]
    #[test]
    fn file_permissions_and_missing_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        let query = q("localhost", "5432", "replication", "u");
        assert_eq!(lookup(&path, &query), None, "a missing file is fine");
        std::fs::write(&path, "localhost:5432:replication:u:filepw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &query).as_deref(), Some("filepw"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&path, &query), None, "group-readable files are ignored");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(lookup(&path, &query), None, "world-readable files are ignored");
        assert_eq!(lookup(dir.path(), &query), None, "a directory is ignored");
    }

    #[cfg(unix)]
    #[test]
    fn config_uses_passfile_lazily() {
        use crate::ConnConfig;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(
            &path,
            "localhost:5432:replication:arch:sockpw\n127.0.0.1:5999:replication:arch:tcppw\n\
             /srv/sock:5999:*:arch:dirpw\n127.0.0.1:5999:postgres:arch:sqlpw\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = path.display().to_string();
        let env = move |k: &str| (k == "PGPASSFILE").then(|| file.clone());
        let c = ConnConfig::parse_with_env("user=arch", &env).unwrap();
        assert_eq!(c.lookup_password("replication").as_deref(), Some("sockpw"), "default socket matches localhost");
        let c = ConnConfig::parse_with_env("user=arch host=127.0.0.1 port=5999", &env).unwrap();
        assert_eq!(c.password(), None);
        assert_eq!(c.lookup_password("replication").as_deref(), Some("tcppw"));
        assert_eq!(c.lookup_password("postgres").as_deref(), Some("sqlpw"));
        let c = ConnConfig::parse_with_env("user=arch host=/srv/sock port=5999", &env).unwrap();
        assert_eq!(c.lookup_password("replication").as_deref(), Some("dirpw"));
        let c = ConnConfig::parse_with_env("user=arch host=127.0.0.1 port=5999 password=given", &env).unwrap();
        assert_eq!(c.lookup_password("replication").as_deref(), Some("given"), "an explicit password wins");
    }
}
