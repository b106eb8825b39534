//! Errors of the command line and their exit codes.

use std::process::ExitCode;

/// A failed command: `Usage` (exit 2) for bad arguments, configuration or an unusable output
/// location, `Failed` (exit 1) when the job itself failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or configuration: exit code 2.
    Usage(anyhow::Error),
    /// The job failed: exit code 1.
    Failed(anyhow::Error),
}

impl CliError {
    /// Prints the error as one line (with its causes when `verbose`) and returns the exit code.
    pub fn report(self, verbose: bool) -> ExitCode {
        let (code, err) = match self {
            CliError::Usage(e) => (2, e),
            CliError::Failed(e) => (1, e),
        };
        if verbose {
            eprintln!("error: {err:?}");
        } else {
            eprintln!("error: {err:#}");
        }
        ExitCode::from(code)
    }
}

/// Shorthand for results of subcommands.
pub type CliResult = Result<(), CliError>;

/// clap value parser for counts that must be at least 1 (batch sizes, slots, workers).
pub fn at_least_one<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + From<u8> + PartialOrd,
{
    match s.trim().parse::<T>() {
        Ok(v) if v >= T::from(1) => Ok(v),
        _ => Err("must be a whole number of at least 1".into()),
    }
}
