//! `capfilt`: the one binary of capfilt. Each subcommand lives in its own module; this file parses
//! the command line, sets up logging and maps errors to exit codes (0 ok, 1 the job failed,
//! 2 bad usage or configuration).

mod cluster;
mod config;
mod doctor;
mod exit;
mod infer;
mod logging;
mod report;
mod rounds;
mod serve;
mod status;
mod synth;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// capfilt runs BLIP's CapFilt data bootstrapping (caption + filter web image–text data) as a
/// distributed pipeline: a coordinator shards Parquet datasets over gRPC to workers that run an
/// ONNX captioner and filter.
#[derive(Debug, Parser)]
#[command(name = "capfilt", version, propagate_version = true)]
struct Cli {
    /// More detail in logs and errors (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format: text (default; with colours on a terminal) or json.
    #[arg(long, global = true, env = "CAPFILT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the synthetic CapFilt benchmark (seed, web and eval splits) as img2dataset-style Parquet.
    Synth(synth::SynthArgs),
    /// Run the CapFilt step (caption + filter) on one Parquet file on this machine, no coordinator.
    Infer(infer::InferArgs),
    /// Run a CapFilt round: a coordinator and N workers in this process (local filesystem or any object store).
    Run(cluster::RunArgs),
    /// Run a worker: take shards from a coordinator, caption and filter them, commit the output.
    Worker(cluster::WorkerArgs),
    /// Run a coordinator: the gRPC server workers register with and poll for shards.
    Coordinator(serve::CoordinatorArgs),
    /// Show a coordinator's shards by state, workers and throughput.
    Status(status::StatusArgs),
    /// Write a finished round's report: HTML with PNG plots and a sample gallery of what the filter kept and dropped.
    Report(report::ReportArgs),
    /// Check the installation: find and load ONNX Runtime and run a test graph on a device.
    Doctor(doctor::DoctorArgs),
}

/// The command line: every subcommand takes negative numbers as values, so `--batch-size -1`
/// is refused for its value rather than read as an unknown flag.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |s| s.allow_negative_numbers(true));
    }
    cmd
}

fn main() -> ExitCode {
    use clap::FromArgMatches;
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    logging::init(cli.verbose, &cli.log_format);
    let result = match cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Run(args) => cluster::run(args),
        Command::Worker(args) => cluster::run_worker_command(args),
        Command::Coordinator(args) => serve::run(args),
        Command::Status(args) => status::run(args),
        Command::Report(args) => report::run(args),
        Command::Doctor(args) => doctor::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(cli.verbose > 0),
    }
}

/// Help and version go to stdout with exit 0; a usage error is one line on stderr with exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("error: {message} (see capfilt --help)");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_and_flag_is_described() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{} (command)", sub.get_name()));
            }
            for arg in sub.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn a_negative_count_is_refused_for_its_value() {
        let err = command()
            .try_get_matches_from(["capfilt", "infer", "--batch-size", "-1"])
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("'-1'") && text.contains("--batch-size") && text.contains("at least 1"),
            "{text}"
        );
    }
}
