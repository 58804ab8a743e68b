use crate::cli::{GlobalOpts, LogFormat};
use tracing_subscriber::EnvFilter;

/// Logs go to stderr, human-readable or JSON; `PGPITR_LOG` (an EnvFilter
/// directive such as `debug` or `pgpitr_storage=trace`) overrides `-v`.
pub fn init(opts: &GlobalOpts) {
    let default = match opts.verbose {
        0 => "warn,pgpitr=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("PGPITR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal; never in files, pipes or CI logs.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match opts.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
