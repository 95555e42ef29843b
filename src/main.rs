//! The `upkeep` command: runs the agent and answers questions from its
//! history file. The only place that decides exit codes: 0 ok, 1 runtime
//! failure, 2 usage, 78 invalid config (EX_CONFIG).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use upkeep::app::App;
use upkeep::cli::report::{self, Format, ReportError};
use upkeep::config::Config;
use upkeep::sample::{self, now_ms};
use upkeep::store::{self, Reader};
use upkeep::systemd::Notifier;

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;
/// SIGTERM/SIGINT: everything flushed and the process gone within this.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// The rest of `--help` and of the man page.
const MORE_HELP: &str = "\
Files: /etc/upkeep/agent.toml (config; check it with `upkeep check-config`), \
/var/lib/upkeep/history.db (history), /etc/default/upkeep (environment of the systemd unit).

Environment: UPKEEP_CONFIG (config path), UPKEEP_LOG (log level), STATE_DIRECTORY (data dir).

Signals (run): SIGTERM and SIGINT stop cleanly, SIGHUP reloads the config.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 invalid config.";

#[derive(Parser)]
#[command(
    name = "upkeep",
    version,
    about = "Per-host health and maintenance agent",
    after_long_help = MORE_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Where {
    /// Config file (default: $UPKEEP_CONFIG, else /etc/upkeep/agent.toml if present, else built-in defaults).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory of the history file (default: agent.data_dir, $STATE_DIRECTORY, /var/lib/upkeep for root, else ~/.local/state/upkeep).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground.
    Run {
        #[command(flatten)]
        at: Where,
    },
    /// Validate a config file and print the largest size its history file can reach.
    CheckConfig {
        /// Config file (default as for `run`).
        path: Option<PathBuf>,
    },
    /// Health of every probe from the running agent; exits 1 when any is unhealthy.
    Status {
        /// Print the health document (the seed's SystemHealthMetrics shape).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Where,
    },
    /// List the series keys in the history file.
    Series {
        /// Only keys starting with this.
        prefix: Option<String>,
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
        #[command(flatten)]
        at: Where,
    },
    /// Maintenance tasks: list, plan, run, runs, show, rollback.
    Maintenance {
        #[command(subcommand)]
        action: Maint,
        #[command(flatten)]
        at: MaintWhere,
    },
    /// Write the man pages (upkeep.1, upkeep-SUBCOMMAND.1) into DIR (packaging).
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
    /// Write bash, zsh and fish completions into DIR (packaging).
    #[command(hide = true)]
    GenerateCompletions { dir: PathBuf },
}

/// `Where`, accepted before or after the maintenance action.
#[derive(clap::Args, Clone)]
struct MaintWhere {
    /// Config file (default: $UPKEEP_CONFIG, else /etc/upkeep/agent.toml if present, else built-in defaults).
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Directory of the history file and backups (default as for `run`).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Maint {
    /// Every configured task: kind, schedule, next start, last run.
    List,
    /// What a run of NAME would change right now (changes nothing).
    Plan {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Run NAME now: gate, plan, backup, batches, validate (and rollback when validation fails).
    Run {
        name: String,
        /// Stop after the plan; record the run as a dry run.
        #[arg(long)]
        dry_run: bool,
        /// Run even outside the task's window.
        #[arg(long)]
        ignore_window: bool,
    },
    /// Recorded runs, newest first.
    Runs {
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run: its result document and every step.
    Show {
        run_id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Put back what run RUN_ID changed, from its backup.
    Rollback { run_id: i64 },
}

enum Failure {
    /// `upkeep status`: a probe is unhealthy (already printed).
    Unhealthy,
    Config(String),
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Run { .. });
    init_logging(quiet);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Unhealthy) => ExitCode::from(EXIT_RUNTIME),
        Err(Failure::Config(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("upkeep: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("upkeep: {e:#}");
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

/// The config to use and the file it came from (none: built-in defaults).
fn load_config(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), Failure> {
    let path = path
        .map(Path::to_path_buf)
        .or_else(upkeep::paths::default_config);
    match &path {
        Some(p) => Config::load(p)
            .map(|c| (c, path.clone()))
            .map_err(|e| Failure::Config(e.to_string())),
        None => Ok((Config::default(), None)),
    }
}

fn open_reader(at: &Where) -> Result<Reader, Failure> {
    let (config, _) = load_config(at.config.as_deref())?;
    let dir = upkeep::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    Reader::open(&dir).map_err(|e| Failure::Runtime(e.into()))
}

fn report_err(e: ReportError) -> Failure {
    match e {
        ReportError::Usage(m) => Failure::Usage(m),
        other => Failure::Runtime(other.into()),
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { at } => run(at),
        Command::CheckConfig { path } => check_config(path.as_deref()),
        Command::Status { json, at } => status(json, &at),
        Command::GenerateMan { dir } => {
            clap_mangen::generate_to(public_command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            Ok(())
        }
        Command::GenerateCompletions { dir } => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut public_command(), "upkeep", &dir)
                    .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
            }
            Ok(())
        }
        Command::Series { prefix, at } => {
            let reader = open_reader(&at)?;
            print!(
                "{}",
                report::series(&reader, prefix.as_deref()).map_err(report_err)?
            );
            Ok(())
        }
        Command::Query {
            key,
            since,
            until,
            step,
            format,
            max_points,
            at,
        } => {
            let now = now_ms();
            let since = report::parse_time(&since, now)
                .map_err(|e| Failure::Usage(format!("--since: {e}")))?;
            let until = report::parse_time(&until, now)
                .map_err(|e| Failure::Usage(format!("--until: {e}")))?;
            if step.is_some_and(|s| s.is_zero()) {
                return Err(Failure::Usage("--step must be greater than 0".into()));
            }
            let reader = open_reader(&at)?;
            let step = step.map(sample::ms);
            let q = report::QuerySpec {
                key: &key,
                since,
                until,
                step_ms: step,
                max_points,
            };
            print!(
                "{}",
                report::query(&reader, q, now, format).map_err(report_err)?
            );
            Ok(())
        }
        Command::Uptime {
            probe,
            window,
            format,
            at,
        } => {
            let reader = open_reader(&at)?;
            print!(
                "{}",
                report::uptime(
                    &reader,
                    probe.as_deref(),
                    sample::ms(window),
                    now_ms(),
                    format
                )
                .map_err(report_err)?
            );
            Ok(())
        }
        Command::Maintenance { action, at } => maintenance(
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
            at,
        } => {
            let reader = open_reader(&at)?;
            print!(
                "{}",
                report::trend(
                    &reader,
                    &key,
                    sample::ms(window),
                    threshold,
                    now_ms(),
                    format
                )
                .map_err(report_err)?
            );
            Ok(())
        }
    }
}

fn maintenance(action: Maint, at: &Where) -> Result<(), Failure> {
    use upkeep::maintenance::ledger::{self, Trigger};
    use upkeep::maintenance::runner::{Request, RunError, Runner};
    let (config, _) = load_config(at.config.as_deref())?;
    let data_dir =
        upkeep::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let runner = Runner {
        config: std::sync::Arc::new(config.clone()),
        data_dir: data_dir.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    let run_err = |e: RunError| match e {
        RunError::NoSuchTask(_) | RunError::NoSuchRun(_) => Failure::Usage(e.to_string()),
        e => Failure::Runtime(anyhow::anyhow!("{e}")),
    };
    let ledger_conn = || -> Result<upkeep::maintenance::ledger::Ledger, Failure> {
        upkeep::maintenance::ledger::Ledger::open(&data_dir).map_err(|e| Failure::Runtime(e.into()))
    };
    let finished = |f: upkeep::maintenance::runner::Finished| -> Result<(), Failure> {
        println!(
            "{}",
            serde_json::to_string_pretty(&f.document).context("printing the run")?
        );
        match f.status.as_str() {
            "succeeded" | "rolled_back" if f.error.is_none() => Ok(()),
            _ => Err(Failure::Runtime(anyhow::anyhow!(
                "run {} {}: {}",
                f.run_id,
                f.status,
                f.error.unwrap_or_default()
            ))),
        }
    };
    match action {
        Maint::List => {
            let l = ledger_conn()?;
            let last = ledger::last_runs(l.conn()).context("reading the ledger")?;
            print!(
                "{}",
                upkeep::cli::maintenance::report::list(
                    &config,
                    &data_dir,
                    &last,
                    chrono::Utc::now()
                )
            );
            Ok(())
        }
        Maint::Plan { name, json } => {
            let plan = rt.block_on(runner.plan(&name)).map_err(run_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).context("printing the plan")?
                );
            } else {
                println!("{}", plan.summary);
                println!("rows: {}, bytes: {}", plan.rows, plan.bytes);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan.details).context("printing the plan")?
                );
            }
            Ok(())
        }
        Maint::Run {
            name,
            dry_run,
            ignore_window,
        } => {
            let auto = config.maintenance.get(&name).and_then(|tc| {
                let s = upkeep::maintenance::schedule::Schedule::parse(&tc.common()).ok()?;
                upkeep::maintenance::agent::choose_auto_window(&data_dir, &config, &name, &s)?.ok()
            });
            let req = Request {
                task: name,
                trigger: Trigger::Cli,
                dry_run,
                ignore_window,
            };
            let f = rt
                .block_on(runner.run(req, auto.as_ref(), None))
                .map_err(run_err)?;
            finished(f)
        }
        Maint::Runs { task, limit } => {
            let l = ledger_conn()?;
            let runs =
                ledger::runs(l.conn(), task.as_deref(), limit).context("reading the ledger")?;
            print!("{}", upkeep::cli::maintenance::report::runs(&runs));
            Ok(())
        }
        Maint::Show { run_id, json } => {
            let l = ledger_conn()?;
            let (row, steps) = ledger::run(l.conn(), run_id)
                .context("reading the ledger")?
                .ok_or_else(|| {
                    Failure::Usage(format!("no maintenance run {run_id} in the ledger"))
                })?;
            if json {
                let mut doc = ledger::result_document(&row);
                doc["steps"] = serde_json::to_value(&steps).context("steps")?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).context("printing the run")?
                );
            } else {
                print!("{}", upkeep::cli::maintenance::report::show(&row, &steps));
            }
            Ok(())
        }
        Maint::Rollback { run_id } => {
            let f = rt
                .block_on(runner.rollback(run_id, Trigger::Cli))
                .map_err(run_err)?;
            finished(f)
        }
    }
}

/// The CLI as operators see it, for the man pages and completions: without
/// the hidden packaging commands (clap_complete would offer them).
fn public_command() -> clap::Command {
    let full = Cli::command();
    let shown: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("upkeep")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .after_long_help(MORE_HELP)
        .subcommand_required(true)
        .subcommands(shown)
}

fn status(json: bool, at: &Where) -> Result<(), Failure> {
    let (config, _) = load_config(at.config.as_deref())?;
    let get = |path: &str| report::agent_get(&config.api.listen, path).map_err(report_err);
    let health = get("/api/v1/health")?;
    let doc: serde_json::Value =
        serde_json::from_str(&health).context("the agent's health document is not JSON")?;
    let probes: serde_json::Value = serde_json::from_str(&get("/api/v1/probes")?)
        .context("the agent's probe list is not JSON")?;
    let (table, unhealthy) = report::status_table(&probes, &doc, now_ms());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).context("printing the health document")?
        );
    } else {
        print!("{table}");
    }
    if unhealthy {
        return Err(Failure::Unhealthy);
    }
    Ok(())
}

fn check_config(path: Option<&Path>) -> Result<(), Failure> {
    let (config, source) = load_config(path)?;
    let bound = store::tiers::size_bound(&config.history);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match &source {
        Some(p) => println!("{}: ok", p.display()),
        None => println!("no config file: built-in defaults are valid"),
    }
    println!(
        "probes: host{}",
        config
            .probe
            .keys()
            .map(|k| format!(", {k}"))
            .collect::<String>()
    );
    println!(
        "history file bound: {} bytes ({:.1} MiB) for at most {} series",
        bound.total,
        mib(bound.total),
        config.history.max_series
    );
    for (table, bytes) in &bound.tiers {
        println!("  {table}: {:.1} MiB", mib(*bytes));
    }
    println!(
        "  journal {:.1} MiB, series {:.1} MiB, events {:.1} MiB, runs {:.1} MiB, maintenance ledger {:.1} MiB, schema {:.1} MiB",
        mib(bound.journal),
        mib(bound.series),
        mib(bound.events),
        mib(bound.runs),
        mib(bound.maintenance),
        mib(bound.fixed)
    );
    println!(
        "  plus the write-ahead log, truncated to {:.0} MiB after each checkpoint",
        mib(store::WAL_LIMIT_BYTES)
    );
    Ok(())
}

/// Reloads the config file into the running agent; on any error the
/// running config stays. The outcome is logged and kept for the API.
async fn reload(app: &mut App, source: Option<&Path>, systemd: &Notifier) -> Result<(), String> {
    let result = match source {
        Some(p) => match Config::load(p) {
            Ok(c) => {
                app.reload(c).await;
                systemd.reconfigured(app.config());
                Ok(())
            }
            Err(e) => {
                tracing::error!("config reload rejected, the running config stays:\n{e}");
                Err(format!(
                    "config reload rejected, the running config stays: {e}"
                ))
            }
        },
        None => {
            tracing::warn!("reload: no config file to reload");
            Err("no config file to reload: the agent runs on built-in defaults".to_string())
        }
    };
    app.record_reload(&result);
    result
}

fn run(at: Where) -> Result<(), Failure> {
    let (config, source) = load_config(at.config.as_deref())?;
    let data_dir =
        upkeep::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    match &source {
        Some(p) => tracing::info!("config {}", p.display()),
        None => tracing::info!(
            "no config file: running on built-in defaults (host probe, history, API on loopback)"
        ),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut app = App::start(config, source.clone(), data_dir)
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        // The API is bound: READY=1 follows once history is open.
        let systemd = Notifier::start(app.live(), app.progress(), app.config());
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut api_reloads = app.take_reload_requests();
        let api_reload =
            async |r: &mut Option<tokio::sync::mpsc::Receiver<upkeep::app::ReloadReply>>| match r {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = reload(&mut app, source.as_deref(), &systemd).await;
                }
                Some(reply) = api_reload(&mut api_reloads) => {
                    let result = reload(&mut app, source.as_deref(), &systemd).await;
                    let _ = reply.send(result);
                }
            }
        }
        tracing::info!("stopping");
        systemd.stopping();
        app.stop(STOP_GRACE).await;
        tracing::info!("stopped");
        Ok::<(), Failure>(())
    })
}
