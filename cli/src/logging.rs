//! tracing subscriber set-up: `RUST_LOG` wins, else `-v` picks the level; text or JSON lines on stderr.
//! Colours only when stderr is a terminal (and `NO_COLOR` is unset): a pipe or a log file gets
//! plain text.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(verbose: u8, format: &str) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(verbose > 0);
    // A second init (there is none in the binary) would only fail to replace the subscriber.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
