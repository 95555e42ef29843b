//! `upkeep maintenance`: list, plan, run, runs, show and rollback (by run
//! id, or from a backup dir alone) of the configured tasks, through the
//! same [`Runner`] and ledger as the agent.
//! Called by [`super::dispatch`]; the text output is in [`report`].

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;

use super::table::{self, Output};
use super::{CliError, Context, Where, config_and_data_dir};
use crate::config::Config;
use crate::maintenance::agent;
use crate::maintenance::ledger::{self, Ledger, RunStatus, Trigger};
use crate::maintenance::runner::{Finished, Request, RunError, Runner};
use crate::maintenance::schedule::{AutoChoice, Schedule};

/// `Where`, accepted before or after the maintenance action.
#[derive(clap::Args, Clone)]
pub struct MaintWhere {
    /// Config file (default: $UPKEEP_CONFIG, else /etc/upkeep/agent.toml if present, else built-in defaults).
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    pub(super) config: Option<PathBuf>,
    /// Directory of the history file and backups (default as for `run`).
    #[arg(long, value_name = "DIR", global = true)]
    pub(super) data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Maint {
    /// Every configured task: kind, schedule, next start, last run.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// What a run of NAME would change right now (changes nothing).
    Plan {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
        /// The same as `--format json`.
        #[arg(long, hide = true)]
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
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// One run: its result document and every step.
    Show {
        run_id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
        /// The same as `--format json`.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Put back what run RUN_ID changed, from its backup.
    Rollback {
        #[arg(required_unless_present = "from_backup")]
        run_id: Option<i64>,
        /// Roll back from a run's backup dir alone (DATA_DIR/backups/NAME/RUN_ID,
        /// or a copy of it), using the run.json kept there: works without the
        /// run's ledger row or the history file.
        #[arg(long, value_name = "DIR", conflicts_with = "run_id")]
        from_backup: Option<PathBuf>,
        /// Replace what was written since the run (e.g. a Redis key that
        /// exists again) instead of leaving it alone and counting it.
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn maintenance(action: Maint, at: &Where) -> Result<(), CliError> {
    let (config, data_dir) = config_and_data_dir(at)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let runner = Runner {
        config: Arc::new(config.clone()),
        data_dir: data_dir.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    // Read-only: listing runs never creates the data dir or the file.
    let ledger = || Ledger::open_ro(&data_dir).map_err(CliError::runtime);
    match action {
        Maint::List { format } => {
            // Before the agent's first start there is no history: the
            // tasks are listed, none has run.
            let last = if data_dir.join(crate::store::FILE_NAME).exists() {
                ledger::last_runs(ledger()?.conn()).context("reading the ledger")?
            } else {
                Vec::new()
            };
            let now = chrono::Utc::now();
            print!(
                "{}",
                match format {
                    Output::Table => report::list(&config, &data_dir, &last, now),
                    Output::Json => report::list_json(&config, &data_dir, &last, now),
                }
            );
            Ok(())
        }
        Maint::Plan { name, format, json } => {
            let plan = rt.block_on(runner.plan(&name)).map_err(run_err)?;
            if format.or_json(json) == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).context("printing the plan")?
                );
            } else {
                println!("{}", plan.summary);
                println!(
                    "rows: {}, bytes: {} ({})",
                    plan.rows,
                    plan.bytes,
                    table::bytes(plan.bytes as f64)
                );
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
            let auto = auto_window(&config, &data_dir, &name);
            let req = Request {
                task: name,
                trigger: Trigger::Cli,
                dry_run,
                ignore_window,
            };
            // SIGTERM / SIGINT stop the run as they stop the agent's: at
            // its next safe point, or at once for a dump or a drill, which
            // clean up (partial dump, scratch database) before ending.
            let stop = runner.stop.clone();
            rt.spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::warn!("signal received: stopping the maintenance run");
                stop.cancel();
            });
            let f = rt
                .block_on(runner.run(req, auto.as_ref(), None))
                .map_err(run_err)?;
            finished(f)
        }
        Maint::Runs {
            task,
            limit,
            format,
        } => {
            let runs = ledger::runs(ledger()?.conn(), task.as_deref(), limit)
                .context("reading the ledger")?;
            print!(
                "{}",
                match format {
                    Output::Table => report::runs(&runs),
                    Output::Json => report::runs_json(&runs),
                }
            );
            Ok(())
        }
        Maint::Show {
            run_id,
            format,
            json,
        } => {
            let (row, steps) = ledger::run(ledger()?.conn(), run_id)
                .context("reading the ledger")?
                .ok_or_else(|| {
                    CliError::Usage(format!("no maintenance run {run_id} in the ledger"))
                })?;
            if format.or_json(json) == Output::Json {
                let mut doc = ledger::result_document(&row);
                doc["steps"] = serde_json::to_value(&steps).context("steps")?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).context("printing the run")?
                );
            } else {
                print!("{}", report::show(&row, &steps));
            }
            Ok(())
        }
        Maint::Rollback {
            run_id,
            from_backup,
            force,
        } => {
            let f = match (run_id, from_backup) {
                (_, Some(dir)) => {
                    rt.block_on(runner.rollback_from_backup_forced(&dir, Trigger::Cli, force))
                }
                (Some(id), None) => rt.block_on(runner.rollback_forced(id, Trigger::Cli, force)),
                (None, None) => unreachable!("clap requires RUN_ID or --from-backup"),
            }
            .map_err(run_err)?;
            finished(f)
        }
    }
}

/// The auto window the agent would choose for task `name`, so that a run
/// started here is gated as a scheduled one would be.
fn auto_window(config: &Config, data_dir: &Path, name: &str) -> Option<AutoChoice> {
    let tc = config.maintenance.get(name)?;
    let s = Schedule::parse(&tc.common()).ok()?;
    agent::choose_auto_window(data_dir, config, name, &s)?.ok()
}

/// An unknown task or run is a usage error; anything else a failed run.
fn run_err(e: RunError) -> CliError {
    match e {
        RunError::NoSuchTask(_) | RunError::NoSuchRun(_) => CliError::Usage(e.to_string()),
        e => CliError::runtime(e.to_string()),
    }
}

/// Prints a run's document; a run that neither succeeded nor rolled back
/// cleanly is a failure.
fn finished(f: Finished) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(&f.document).context("printing the run")?
    );
    match f.status {
        RunStatus::Succeeded | RunStatus::RolledBack if f.error.is_none() => Ok(()),
        _ => Err(CliError::runtime(format!(
            "run {} {}: {}",
            f.run_id,
            f.status,
            f.error.unwrap_or_default()
        ))),
    }
}
