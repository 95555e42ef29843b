//! The `upkeep` command: parses the command line, runs the command
//! ([`upkeep::cli`]) and alone decides the exit code: 0 ok, 1 runtime
//! failure, 2 usage, 78 invalid config (EX_CONFIG).

use std::process::ExitCode;

use clap::Parser;

use upkeep::cli::{Cli, CliError, Command};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Run { .. });
    init_logging(quiet);
    match upkeep::cli::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Unhealthy) => ExitCode::from(EXIT_RUNTIME),
        Err(CliError::Config(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(CliError::Usage(msg)) => {
            eprintln!("upkeep: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e @ CliError::Runtime(_)) => {
            // `{:#}` follows the chain of causes: `doing: cause: cause`.
            eprintln!("upkeep: {:#}", anyhow::Error::from(e));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("UPKEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
