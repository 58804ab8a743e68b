//! Where options come from, highest first: the command line, `PGPITR_<NAME>`
//! variables, the configuration file, the defaults. clap does the layering:
//! every option gets its variable, and the file's values become the
//! invoked command's defaults, so each layer overrides the next by clap's
//! own rules and `config show` can ask clap where a value came from.
//!
//! The file is TOML, found by `--config FILE`, then `PGPITR_CONFIG`, then
//! `/etc/pgpitr/pgpitr.toml` (when it exists). Top-level keys apply to every
//! command that has the option; a `[stream]`, `[backup]`, ... section to that
//! command only, over the top level.

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, Command};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file used when neither `--config` nor `PGPITR_CONFIG` names one.
pub const DEFAULT_FILE: &str = "/etc/pgpitr/pgpitr.toml";

/// Options whose long name means something else than the same name of
/// other commands (`drill --port` is its own server's, `drill -d` the live
/// server to compare with): their variable is named after their command
/// too (`PGPITR_DRILL_PORT`), and only their command's section of the file
/// sets them, so that a drill started by a configured stream does not take
/// the stream's.
const NO_VARIABLE: &[(&str, &str)] = &[
    ("drill", "port"),
    ("drill", "dbname"),
    ("drill", "pgdata"),
    ("drill", "target"),
    ("drill", "timezone"),
    ("restore", "port"),
    // Requires --target-time: a variable would break every other target.
    ("restore", "timezone"),
];

static LAYERS: std::sync::OnceLock<Layers> = std::sync::OnceLock::new();

/// The layers of this process's command line (after [`parse`]).
pub fn layers() -> &'static Layers {
    LAYERS.get_or_init(Layers::default)
}

/// The configuration file as read, and which options it set.
#[derive(Debug, Default)]
pub struct Layers {
    pub file: Option<PathBuf>,
    /// Ids of the invoked command's options given by the file.
    pub from_file: BTreeSet<String>,
    /// Long option name -> the file's key that set it.
    pub file_keys: std::collections::BTreeMap<String, String>,
    /// The connection string came from argv, where `ps` shows it to every
    /// user (not from the file or `PGPITR_DBNAME`).
    pub dbname_on_argv: bool,
}

/// The variable of an option: `PGPITR_` and its long name in capitals.
pub fn variable(long: &str) -> String {
    format!("PGPITR_{}", long.to_uppercase().replace('-', "_"))
}

/// The command line parsed over the variables and the file.
pub fn parse(argv: Vec<OsString>) -> Result<(clap::ArgMatches, Layers), ParseError> {
    let base = <crate::cli::Cli as clap::CommandFactory>::command();
    let invoked = invoked(&base, &argv);
    let archive_side = invoked.first().is_some_and(|c| ARCHIVE_SIDE.contains(&c.as_str()));
    parse_as(base, &invoked, argv, archive_side).map_err(|error| ParseError { error, archive_side })
}

/// What PostgreSQL runs (restore_command, archive_command): their command
/// lines are complete, and the server's user may not read a private file;
/// only an explicit `--config` / `PGPITR_CONFIG` applies to them.
const ARCHIVE_SIDE: &[&str] = &["wal-fetch", "wal-push"];

/// A command line or configuration that cannot be used; `archive_side`
/// when PostgreSQL runs the command, which must then fail loudly (exit 200
/// for wal-fetch: any lower code may end recovery as if WAL had run out).
pub struct ParseError {
    pub error: anyhow::Error,
    pub archive_side: bool,
}

fn parse_as(
    base: Command,
    invoked: &[String],
    argv: Vec<OsString>,
    archive_side: bool,
) -> anyhow::Result<(clap::ArgMatches, Layers)> {
    let path = file_path(&argv);
    let path = match path {
        Some(p) => Some(p),
        None if !archive_side && Path::new(DEFAULT_FILE).exists() => Some(PathBuf::from(DEFAULT_FILE)),
        None => None,
    };
    let mut layers = Layers { file: path.clone(), ..Layers::default() };
    let table = match &path {
        Some(p) => Some(load(p)?),
        None => None,
    };
    if let (Some(p), Some(t)) = (&path, &table) {
        check_keys(&base, t, p)?;
    }
    let cmd = layered(base, invoked, table.as_ref(), path.as_deref(), &mut layers)?;
    let matches = match cmd.try_get_matches_from(argv) {
        Ok(m) => m,
        // clap names the option of a bad value, not the file that gave it.
        Err(e) => match (file_key(&e, &layers), &layers.file) {
            (Some(key), Some(file)) => bail!("{}: {key}: {}", file.display(), first_line(&e)),
            _ if archive_side && e.use_stderr() => bail!("{}", first_line(&e)),
            _ => e.exit(),
        },
    };
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    // `-d` is `dbname` everywhere but drill, where it is the live server.
    layers.dbname_on_argv = ["dbname", "live"].iter().any(|id| {
        leaf.try_get_raw(id).ok().flatten().is_some() && leaf.value_source(id) == Some(ValueSource::CommandLine)
    });
    Ok((matches, layers))
}

/// The file's key behind an invalid value clap reports, if the file gave it.
fn file_key(e: &clap::Error, layers: &Layers) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let key = layers.file_keys.get(long)?;
    // Given on the command line or in the environment, the value is not the file's.
    let ours = std::env::args_os().all(|a| !a.to_string_lossy().starts_with(&format!("--{long}")))
        && std::env::var_os(variable(long)).is_none();
    ours.then(|| key.clone())
}

fn first_line(e: &clap::Error) -> String {
    e.to_string().lines().next().unwrap_or("invalid value").trim_start_matches("error: ").to_string()
}

/// Keeps what [`parse`] found for the rest of the process.
pub fn keep(layers: Layers) {
    let _ = LAYERS.set(layers);
}

/// `--config FILE` / `--config=FILE` before clap sees anything, else
/// `PGPITR_CONFIG`.
fn file_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("PGPITR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The subcommand path the command line names (`["key", "rotate"]`): the
/// first word naming a subcommand of the command found so far, and so on
/// (clap cannot say before the file's values are in: a required option the
/// file gives is missing until then).
fn invoked(base: &Command, argv: &[OsString]) -> Vec<String> {
    let mut path = Vec::new();
    let mut cur = base;
    for a in argv.iter().skip(1) {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if let Some(sub) = cur.get_subcommands().find(|s| s.get_name() == a) {
            path.push(a.to_string());
            cur = sub;
        }
    }
    path
}

fn load(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{}: {}", path.display(), e.to_string().lines().next().unwrap_or("invalid TOML"))
    })?;
    if holds_secret(&table) {
        private(path)?;
    }
    Ok(table)
}

/// A password in a connection string (`password=`, or `user:pw@` in a URI).
fn holds_secret(table: &toml::Table) -> bool {
    table.iter().any(|(k, v)| match v {
        toml::Value::Table(t) => holds_secret(t),
        toml::Value::String(s) if k == "dbname" => {
            s.contains("password")
                || s.split("://")
                    .nth(1)
                    .is_some_and(|rest| rest.split('@').next().unwrap_or("").contains(':') && rest.contains('@'))
        }
        _ => false,
    })
}

/// A file holding a secret must be the user's own and private.
fn private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if meta.mode() & 0o077 != 0 || meta.uid() != me {
        bail!(
            "{} holds a password (in dbname) but is readable by others or not yours (mode {:o}): chmod 600 it, or keep \
             the password in PGPASSFILE or ~/.pgpass",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// The option names a command (and its subcommands) take.
fn names(cmd: &Command, out: &mut BTreeSet<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.insert(l.replace('-', "_"));
        }
    }
    for s in cmd.get_subcommands() {
        names(s, out);
    }
}

/// Every key names an option (of some command at the top level, of its
/// command in a section); every section names a command.
fn check_keys(base: &Command, table: &toml::Table, path: &Path) -> anyhow::Result<()> {
    let mut all = BTreeSet::new();
    names(base, &mut all);
    for (key, value) in table {
        let norm = key.replace('-', "_");
        if let toml::Value::Table(section) = value {
            let Some(sub) = base.get_subcommands().find(|s| s.get_name() == key.replace('_', "-")) else {
                bail!("{}: unknown section [{key}]: sections are named after commands", path.display());
            };
            let mut own = BTreeSet::new();
            names(sub, &mut own);
            names_global(base, &mut own);
            for k in section.keys() {
                if !own.contains(&k.replace('-', "_")) {
                    bail!(
                        "{}: unknown key {k:?} in [{key}]: `pgpitr {} --help` lists its options",
                        path.display(),
                        sub.get_name()
                    );
                }
            }
        } else if !all.contains(&norm) {
            bail!("{}: unknown key {key:?}: no command has an option --{}", path.display(), key.replace('_', "-"));
        }
    }
    Ok(())
}

fn names_global(base: &Command, out: &mut BTreeSet<String>) {
    for a in base.get_arguments().filter(|a| a.is_global_set()) {
        if let Some(l) = a.get_long() {
            out.insert(l.replace('-', "_"));
        }
    }
}

/// The file's value for option `long` of the command at `path`: its
/// section's, else the top level's.
fn file_value<'a>(table: &'a toml::Table, path: &[String], long: &str) -> Option<(&'a toml::Value, String)> {
    let keys = [long.to_string(), long.replace('-', "_")];
    if let Some(toml::Value::Table(section)) =
        path.first().and_then(|c| table.get(c.as_str()).or_else(|| table.get(&c.replace('-', "_"))))
    {
        for k in &keys {
            if let Some(v) = section.get(k) {
                return Some((v, format!("[{}] {k}", path[0])));
            }
        }
    }
    keys.iter().find_map(|k| table.get(k).filter(|v| !v.is_table()).map(|v| (v, k.clone())))
}

fn as_strings(v: &toml::Value) -> Option<Vec<String>> {
    Some(match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(a) => a.iter().map(as_strings).collect::<Option<Vec<_>>>()?.concat(),
        _ => return None,
    })
}

/// `base` with a variable for every option and the file's values as the
/// invoked command's defaults (checked against each option's parser, so a
/// wrong type names the file and the key).
fn layered(
    base: Command,
    invoked: &[String],
    table: Option<&toml::Table>,
    file: Option<&Path>,
    layers: &mut Layers,
) -> anyhow::Result<Command> {
    let mut cmd = with_variables(base, "");
    let (Some(table), Some(file)) = (table, file) else { return Ok(cmd) };
    // Global options take the top level.
    let mut failures = Vec::new();
    cmd = apply(cmd, table, &[], file, layers, &mut failures);
    if let Some(name) = invoked.first() {
        let Some(sub) = cmd.find_subcommand(name).cloned() else { return Ok(cmd) };
        let mut sub = apply(sub, table, invoked, file, layers, &mut failures);
        // One level down (`key rotate`): the same section.
        if let Some(next) = invoked.get(1)
            && let Some(inner) = sub.find_subcommand(next).cloned()
        {
            let inner = apply(inner, table, invoked, file, layers, &mut failures);
            sub = sub.mut_subcommand(next, |_| inner);
        }
        cmd = cmd.mut_subcommand(name, |_| sub);
    }
    if let Some(f) = failures.into_iter().next() {
        bail!(f);
    }
    Ok(cmd)
}

/// Sets the file's values as defaults of `cmd`'s own options.
fn apply(
    mut cmd: Command,
    table: &toml::Table,
    path: &[String],
    file: &Path,
    layers: &mut Layers,
    failures: &mut Vec<String>,
) -> Command {
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| path.is_empty() == a.is_global_set())
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .collect();
    let own_only = |long: &str| path.first().is_some_and(|c| NO_VARIABLE.contains(&(c.as_str(), long)));
    for (id, long) in ids {
        let Some((value, key)) = file_value(table, path, &long) else { continue };
        if own_only(&long) && !key.starts_with('[') {
            continue;
        }
        let Some(values) = as_strings(value) else {
            failures.push(format!("{}: {key}: not a string, number, boolean or list of them", file.display()));
            continue;
        };
        let counted =
            cmd.get_arguments().any(|a| a.get_id() == id.as_str() && matches!(a.get_action(), ArgAction::Count));
        if counted {
            failures.push(format!("{}: {key}: a count: give it on the command line", file.display()));
            continue;
        }
        layers.from_file.insert(id.clone());
        layers.file_keys.insert(long.clone(), key);
        let values: Vec<clap::builder::OsStr> = values.into_iter().map(Into::into).collect();
        // A required option (or group) the file gives is given.
        let groups: Vec<String> = cmd
            .get_groups()
            .filter(|g| g.get_args().any(|a| a.as_str() == id.as_str()))
            .map(|g| g.get_id().to_string())
            .collect();
        for g in groups {
            cmd = cmd.mut_group(g, |g| g.required(false));
        }
        let secret = long == "dbname";
        cmd = cmd.mut_arg(&id, |a| a.hide_default_value(secret));
        cmd = cmd.mut_arg(id, |a| match (a.get_action(), values.first()) {
            (ArgAction::Append, _) => a.required(false).default_values(values),
            (_, Some(v)) => a.required(false).default_value(v.clone()),
            (_, None) => a,
        });
    }
    cmd
}

/// Every option without a variable gets `PGPITR_<LONG>` (not counts, not
/// positionals; [`NO_VARIABLE`]'s `PGPITR_<COMMAND>_<LONG>`).
fn with_variables(mut cmd: Command, name: &str) -> Command {
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env().is_none()
                && !a.is_positional()
                && !a.is_hide_set()
                && !matches!(a.get_action(), ArgAction::Count)
        })
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .collect();
    for (id, long) in ids {
        // Named after its command where the name alone means something
        // else elsewhere: PGPITR_DRILL_PORT.
        let var = if NO_VARIABLE.contains(&(name, long.as_str())) {
            variable(&format!("{name}-{long}"))
        } else {
            variable(&long)
        };
        // Help shows the variable's name, never its value (a connection
        // string may hold a password).
        cmd = cmd.mut_arg(id, |a| a.env(var).hide_env_values(true));
    }
    let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for s in subs {
        cmd = cmd.mut_subcommand(&s, |c| with_variables(c, &s));
    }
    cmd
}

/// `pgpitr config show [COMMAND]`: every option of the command with its
/// effective value and where it came from; passwords redacted.
pub fn show(path: &[String], layers: &Layers, json: bool) -> anyhow::Result<u8> {
    let base = <crate::cli::Cli as clap::CommandFactory>::command();
    let table = match &layers.file {
        Some(p) => Some(load(p)?),
        None => None,
    };
    let mut shown = Layers { file: layers.file.clone(), ..Layers::default() };
    let cmd = layered(base, path, table.as_ref(), layers.file.as_deref(), &mut shown)?;
    let mut argv: Vec<String> = vec!["pgpitr".into()];
    argv.extend(path.iter().cloned());
    let m = cmd.clone().ignore_errors(true).try_get_matches_from(&argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut target = &cmd;
    let mut matches = &m;
    for name in path {
        let Some(s) = target.find_subcommand(name) else { bail!("no command {name:?}") };
        target = s;
        matches = matches.subcommand_matches(name).unwrap_or(matches);
    }
    let mut rows = Vec::new();
    for a in target.get_arguments().filter(|a| !a.is_positional()) {
        let Some(long) = a.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let id = a.get_id().as_str();
        let values: Vec<String> =
            matches.get_raw(id).map(|v| v.map(|s| redact(&s.to_string_lossy())).collect()).unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => {
                format!("environment {}", a.get_env().map(|e| e.to_string_lossy()).unwrap_or_default())
            }
            Some(ValueSource::DefaultValue) if shown.from_file.contains(id) => {
                format!("file {}", shown.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
            }
            Some(ValueSource::DefaultValue) => "default".into(),
            Some(ValueSource::CommandLine) => "command line".into(),
            _ => "not set".into(),
        };
        rows.push((long.to_string(), values, source));
    }
    rows.sort();
    if json {
        let v: Vec<serde_json::Value> =
            rows.iter().map(|(k, v, s)| serde_json::json!({"option": k, "values": v, "source": s})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"file": layers.file, "options": v}))?);
    } else {
        println!("# file: {}", layers.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()));
        for (k, v, s) in rows {
            let v = if v.is_empty() { "-".to_string() } else { v.join(",") };
            println!("{k} = {v}    # {s}");
        }
    }
    Ok(crate::exit::OK)
}

/// A connection string's password, hidden.
fn redact(s: &str) -> String {
    if let Some(i) = s.find("password=") {
        let rest = &s[i + 9..];
        let end = rest.find(' ').unwrap_or(rest.len());
        return format!("{}password=*****{}", &s[..i], &rest[end..]);
    }
    if let Some((scheme, rest)) = s.split_once("://")
        && let Some((auth, host)) = rest.split_once('@')
        && let Some((user, _)) = auth.split_once(':')
    {
        return format!("{scheme}://{user}:*****@{host}");
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_found() {
        assert_eq!(redact("host=db user=a password=x port=5"), "host=db user=a password=***** port=5");
        assert_eq!(redact("postgres://a:pw@db/x"), "postgres://a:*****@db/x");
        assert_eq!(redact("host=db"), "host=db");
        let t: toml::Table = toml::from_str("[stream]\ndbname = \"postgres://a:pw@db\"").unwrap();
        assert!(holds_secret(&t));
        let t: toml::Table = toml::from_str("dbname = \"host=db user=a\"").unwrap();
        assert!(!holds_secret(&t));
    }

    #[test]
    fn variables_are_named_after_options() {
        assert_eq!(variable("flush-interval"), "PGPITR_FLUSH_INTERVAL");
    }
}
