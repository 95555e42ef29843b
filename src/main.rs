//! The `upkeep` command: parses the command line, runs the command
//! ([`upkeep::cli`]) and alone decides the exit code: 0 ok, 1 runtime
//! failure, 2 usage, 78 invalid config (EX_CONFIG); `status` exits as a
//! monitoring plugin (0 healthy, 1 degraded, 2 unhealthy, 3 unknown).

use std::process::ExitCode;

use clap::Parser;

use upkeep::cli::{Cli, CliError, Command};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;
/// `upkeep status`, read by Nagios, Icinga, Sensu and Zabbix as WARNING,
/// CRITICAL and UNKNOWN.
const EXIT_DEGRADED: u8 = 1;
const EXIT_UNHEALTHY: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Run { .. });
    if quiet {
        exit_on_closed_pipe();
    }
    init_logging(quiet);
    match upkeep::cli::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Degraded) => ExitCode::from(EXIT_DEGRADED),
        Err(CliError::Unhealthy) => ExitCode::from(EXIT_UNHEALTHY),
        Err(e @ CliError::Unreachable(_)) => {
            eprintln!("upkeep: {:#}", anyhow::Error::from(e));
            ExitCode::from(EXIT_UNREACHABLE)
        }
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

/// A command whose reader goes away (`upkeep check-config | head -1`) ends
/// as other Unix tools do, killed by SIGPIPE, instead of panicking in
/// `println!` on EPIPE. Every socket the commands use is written with
/// MSG_NOSIGNAL by the standard library, so only stdout and stderr can
/// raise it. The agent (`run`) keeps SIGPIPE ignored.
fn exit_on_closed_pipe() {
    // SAFETY: signal(2) with SIG_DFL, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
