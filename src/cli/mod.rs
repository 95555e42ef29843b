//! The `upkeep` command line: the clap definitions of every subcommand and
//! what each does. `main.rs` parses, calls [`dispatch`] and turns a
//! [`CliError`] into the exit code. One file per command group:
//!
//! - `read`: `series`, `query`, `uptime` and `trend` over the history file,
//!   rendered by [`report`], and `status` from the running agent;
//! - [`maintenance`]: the maintenance tasks, rendered by
//!   [`maintenance::report`];
//! - [`access`]: the access review report and its acknowledgement;
//! - `alerts`: `alerts` and `silence add|list|expire` over the history file;
//! - `check_config`, `run`: validate a config; run the agent;
//! - `generate`: man pages and shell completions for the packages;
//! - [`table`]: what every command's human output is made of (aligned
//!   tables within 100 columns, IEC bytes, durations in words, percents)
//!   and the table-or-JSON `--format`.
//!
//! Output lives in the library so that it is tested on real files without
//! a process in between.

pub mod access;
mod alerts;
mod backup;
mod check_config;
mod footprint;
mod generate;
pub mod maintenance;
pub mod nagios;
mod read;
pub mod report;
mod run;
pub mod table;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use report::Format;

/// The rest of `--help` and of the man page.
const MORE_HELP: &str = "\
Files: /etc/upkeep/agent.toml (config; check it with `upkeep check-config`), \
/var/lib/upkeep/history.db (history), /etc/default/upkeep (environment of the systemd unit).

Environment: UPKEEP_CONFIG (config path), UPKEEP_LOG (log level), STATE_DIRECTORY (data dir).

Signals (run): SIGTERM and SIGINT stop cleanly, SIGHUP reloads the config.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 invalid config. \
`upkeep status` exits as a monitoring plugin: 0 all healthy, 1 degraded, 2 unhealthy, \
3 the agent cannot be asked.";

#[derive(Parser)]
#[command(
    name = "upkeep",
    version,
    about = "Per-host health and maintenance agent",
    after_long_help = MORE_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Where {
    /// Config file (default: $UPKEEP_CONFIG, else /etc/upkeep/agent.toml if present, else built-in defaults).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory of the history file (default: agent.data_dir, $STATE_DIRECTORY, /var/lib/upkeep for root, else ~/.local/state/upkeep).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent in the foreground.
    Run {
        /// Serve the API and the status page on this address:port instead of
        /// `[api] listen` (checked as that setting is).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Validate a config file and print the largest size its history file can reach.
    CheckConfig {
        /// Config file (default as for `run`).
        path: Option<PathBuf>,
    },
    /// Health of every probe from the running agent; exits 0 healthy, 1 degraded, 2 unhealthy, 3 agent unreachable.
    Status {
        /// Print the health document (the seed's SystemHealthMetrics shape); the same as `--format json`.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// `table`, `json` (the health document) or `nagios` (one line and performance data, for Nagios, Icinga, Sensu, Zabbix).
        #[arg(long, value_enum, default_value = "table")]
        format: StatusFormat,
        #[command(flatten)]
        at: Where,
    },
    /// List the series keys in the history file.
    Series {
        /// Only keys starting with this.
        prefix: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        at: Where,
    },
    /// Print one series over a time range; the tier is chosen automatically.
    Query {
        /// Series key, as listed by `upkeep series`.
        key: String,
        /// Start: a duration ago (24h) or an RFC 3339 time.
        #[arg(long, default_value = "24h")]
        since: String,
        /// End: `now`, a duration ago, or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        until: String,
        /// Bucket width (default: the finest the chosen tier gives within --max-points).
        #[arg(long, value_parser = humantime::parse_duration)]
        step: Option<Duration>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Most points in the answer; the step is widened to fit.
        #[arg(long, default_value_t = 20_000)]
        max_points: usize,
        #[command(flatten)]
        at: Where,
    },
    /// Uptime and coverage of one probe or all, over a window ending now.
    Uptime {
        probe: Option<String>,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        window: Duration,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        at: Where,
    },
    /// Trend of a series over a window, with a forecast for ratios or a --threshold.
    Trend {
        key: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Value to forecast the arrival at (default 1.0 for ratios).
        #[arg(long)]
        threshold: Option<f64>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Also print the rule that classifies the trend.
        #[arg(long)]
        explain: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Maintenance tasks: list, plan, run, runs, show, rollback.
    Maintenance {
        #[command(subcommand)]
        action: maintenance::Maint,
        #[command(flatten)]
        at: maintenance::MaintWhere,
    },
    /// Access review: report who can get in; acknowledge changes.
    Access {
        #[command(subcommand)]
        action: access::Access,
        #[command(flatten)]
        at: maintenance::MaintWhere,
    },
    /// Configuration snapshots: diff.
    Backup {
        #[command(subcommand)]
        action: backup::BackupCmd,
        #[command(flatten)]
        at: maintenance::MaintWhere,
    },
    /// Write the man pages (upkeep.1, upkeep-SUBCOMMAND.1) into DIR (packaging).
    /// The alerts on record (firing first, then pending), read from the
    /// history file.
    Alerts {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        at: Where,
    },
    /// Silences: alerts that match do not notify until the silence ends.
    Silence {
        #[command(subcommand)]
        action: alerts::SilenceAction,
        #[command(flatten)]
        at: maintenance::MaintWhere,
    },
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
}

/// How `upkeep status` prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    Nagios,
}

/// Why a command failed; `main` alone turns each into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `upkeep status`: a probe is degraded, none unhealthy (its table
    /// says which).
    #[error("a probe is degraded")]
    Degraded,
    /// `upkeep status`: a probe is unhealthy (its table says which).
    #[error("a probe is unhealthy")]
    Unhealthy,
    /// `upkeep status`: the running agent cannot be asked, with why.
    #[error(transparent)]
    Unreachable(Box<dyn Error + Send + Sync>),
    /// The config is invalid or unreadable; the text is the whole report.
    #[error("{0}")]
    Config(String),
    /// The command asks for something that cannot be.
    #[error("{0}")]
    Usage(String),
    /// Anything else, with its chain of causes.
    #[error(transparent)]
    Runtime(Box<dyn Error + Send + Sync>),
}

impl CliError {
    fn runtime(e: impl Into<Box<dyn Error + Send + Sync>>) -> CliError {
        CliError::Runtime(e.into())
    }
}

/// What the command was doing when an error came: it leads the error's
/// causes in the message (`reading the ledger: …`).
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
struct Doing {
    doing: String,
    #[source]
    source: Box<dyn Error + Send + Sync>,
}

/// Names what was being done when a step fails (see [`Doing`]).
trait Context<T> {
    fn context(self, doing: &str) -> Result<T, CliError>;
    fn with_context(self, doing: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, doing: &str) -> Result<T, CliError> {
        self.with_context(|| doing.to_string())
    }

    fn with_context(self, doing: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| {
            CliError::runtime(Doing {
                doing: doing(),
                source: Box::new(e),
            })
        })
    }
}

/// Runs one parsed command.
pub fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { listen, at } => run::run(listen, at),
        Command::CheckConfig { path } => check_config::check_config(path.as_deref()),
        Command::Status { json, format, at } => {
            read::status(if json { StatusFormat::Json } else { format }, &at)
        }
        Command::Alerts { format, at } => alerts::alerts(format, &at),
        Command::Silence { action, at } => alerts::silence(
            action,
            &Where {
                config: at.config,
                data_dir: at.data_dir,
            },
        ),
        Command::GenerateMan { dir } => generate::man(&dir),
        Command::GenerateCompletions { dir } => generate::completions(&dir),
        Command::Series { prefix, format, at } => read::series(prefix.as_deref(), format, &at),
        Command::Query {
            key,
            since,
            until,
            step,
            format,
            max_points,
            at,
        } => read::query(&key, &since, &until, step, format, max_points, &at),
        Command::Uptime {
            probe,
            window,
            format,
            at,
        } => read::uptime(probe.as_deref(), window, format, &at),
        Command::Backup { action, at } => backup::backup(
            action,
            &Where {
                config: at.config,
                data_dir: at.data_dir,
            },
        ),
        Command::Maintenance { action, at } => maintenance::maintenance(
            action,
            &Where {
                config: at.config,
                data_dir: at.data_dir,
            },
        ),
        Command::Access { action, at } => access::access(
            action,
            &Where {
                config: at.config,
                data_dir: at.data_dir,
            },
        ),
        Command::Trend {
            key,
            window,
            threshold,
            format,
            explain,
            at,
        } => read::trend(
            report::TrendSpec {
                key: &key,
                window_ms: crate::sample::ms(window),
                threshold,
                explain,
            },
            format,
            &at,
        ),
    }
}

/// The config to use and the file it came from (none: built-in defaults).
fn load_config(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), CliError> {
    let path = path
        .map(Path::to_path_buf)
        .or_else(crate::paths::default_config);
    match &path {
        Some(p) => Config::load(p)
            .map(|c| (c, path.clone()))
            .map_err(|e| CliError::Config(e.to_string())),
        None => Ok((Config::default(), None)),
    }
}

/// The API token file checked as `run` reads it at start (there, readable,
/// mode 0640 or stricter, a token on its first line), so that
/// `check-config` passes only what `run` accepts.
fn check_token_file(config: &Config, source: Option<&Path>) -> Result<(), CliError> {
    match &config.api.token_file {
        Some(p) if config.api.enabled => crate::secret::read_token(p)
            .map(drop)
            .map_err(|e| token_file_error(source, e)),
        _ => Ok(()),
    }
}

/// A token file that cannot be used is a config error (exit 78), reported
/// against the config file that names it.
fn token_file_error(source: Option<&Path>, why: String) -> CliError {
    let issue = crate::config::ConfigIssue {
        file: source.map_or_else(|| "config".to_string(), |p| p.display().to_string()),
        line: None,
        col: None,
        message: format!("api.token_file: {why}"),
    };
    CliError::Config(issue.to_string())
}

/// The config named by `at` and the data directory it resolves to.
fn config_and_data_dir(at: &Where) -> Result<(Config, PathBuf), CliError> {
    let (config, _) = load_config(at.config.as_deref())?;
    let dir = crate::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    Ok((config, dir))
}
