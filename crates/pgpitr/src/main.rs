//! `pgpitr`: the command-line front end. Parses arguments, sets up logging
//! and signals, and calls the library crates; no logic of its own lives here
//! beyond wiring and turning errors into one line and an exit code.

mod cli;
mod cmd;
mod config;
mod conn;
mod drills;
mod logging;
mod memory;
mod metrics;
mod progress;
mod signals;
mod status;

use std::process::ExitCode;

/// Exit codes, documented in README.md.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed; stderr has one line saying why.
    pub const FAILURE: u8 = 1;
    /// Bad usage (unknown flag, missing argument): clap's convention.
    pub const USAGE: u8 = 2;
    /// `wal-fetch`: the repository could not be read, or held something
    /// wrong. Postgres aborts recovery on codes above 125 instead of taking
    /// the file as missing, so an outage never looks like the end of WAL.
    pub const STORAGE: u8 = 200;
    /// `check`: no finding failed, but some warn.
    pub const WARNINGS: u8 = 3;
}

fn main() -> ExitCode {
    memory::tune_allocator();
    let parsed = config::parse(std::env::args_os().collect()).and_then(|(m, layers)| {
        match <cli::Cli as clap::FromArgMatches>::from_arg_matches(&m) {
            Ok(cli) => Ok((cli, layers)),
            Err(e) => Err(config::ParseError { error: e.into(), archive_side: false }),
        }
    });
    let cli = match parsed {
        Ok((cli, layers)) => {
            config::keep(layers);
            cli
        }
        Err(config::ParseError { error, archive_side }) => {
            eprintln!("pgpitr: error: {}", format!("{error:#}").replace('\n', " "));
            // restore_command: a low code may end recovery early.
            return ExitCode::from(if archive_side { exit::STORAGE } else { exit::FAILURE });
        }
    };
    logging::init(&cli.global);
    // restore_command: a spooled segment needs no runtime.
    if let cli::Command::WalFetch(args) = &cli.command
        && let Some(code) = cmd::wal_fetch::fast_path(args)
    {
        return ExitCode::from(code);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgpitr: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    let made: Vec<String> = pgpitr_storage::requests::made().iter().map(|(op, n)| format!("{op}={n}")).collect();
    tracing::debug!(target: "requests", "storage requests: {}", made.join(" "));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // `{:#}` joins the context chain with ": " into the one line users read.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("pgpitr: error: {line}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
