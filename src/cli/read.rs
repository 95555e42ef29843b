//! The read commands: `series`, `query`, `uptime` and `trend` answer from
//! the history file through a read-only [`Reader`] (rendered by
//! [`super::report`]); `status` asks the running agent's API. Called by
//! [`super::dispatch`].

use std::time::Duration;

use super::report::{self, Format, ReportError};
use super::{CliError, Context, StatusFormat, Where, config_and_data_dir, load_config};
use crate::sample::{self, now_ms};
use crate::store::Reader;

fn open_reader(at: &Where) -> Result<Reader, CliError> {
    let (_, dir) = config_and_data_dir(at)?;
    Reader::open(&dir).map_err(CliError::runtime)
}

fn report_err(e: ReportError) -> CliError {
    match e {
        ReportError::Usage(m) => CliError::Usage(m),
        other => CliError::runtime(other),
    }
}

pub(super) fn series(prefix: Option<&str>, format: Format, at: &Where) -> Result<(), CliError> {
    let reader = open_reader(at)?;
    print!(
        "{}",
        report::series(&reader, prefix, format).map_err(report_err)?
    );
    Ok(())
}

pub(super) fn query(
    key: &str,
    since: &str,
    until: &str,
    step: Option<Duration>,
    format: Format,
    max_points: usize,
    at: &Where,
) -> Result<(), CliError> {
    let now = now_ms();
    let since =
        crate::fmt::parse_time(since, now).map_err(|e| CliError::Usage(format!("--since: {e}")))?;
    let until =
        crate::fmt::parse_time(until, now).map_err(|e| CliError::Usage(format!("--until: {e}")))?;
    if step.is_some_and(|s| s.is_zero()) {
        return Err(CliError::Usage("--step must be greater than 0".into()));
    }
    let reader = open_reader(at)?;
    let q = report::QuerySpec {
        key,
        since,
        until,
        step_ms: step.map(sample::ms),
        max_points,
    };
    print!(
        "{}",
        report::query(&reader, q, now, format).map_err(report_err)?
    );
    Ok(())
}

pub(super) fn uptime(
    probe: Option<&str>,
    window: Duration,
    format: Format,
    at: &Where,
) -> Result<(), CliError> {
    let reader = open_reader(at)?;
    print!(
        "{}",
        report::uptime(&reader, probe, sample::ms(window), now_ms(), format).map_err(report_err)?
    );
    Ok(())
}

pub(super) fn trend(
    spec: report::TrendSpec<'_>,
    format: Format,
    at: &Where,
) -> Result<(), CliError> {
    let reader = open_reader(at)?;
    print!(
        "{}",
        report::trend(&reader, spec, now_ms(), format).map_err(report_err)?
    );
    Ok(())
}

/// The probe table (the health document with `Json`, one line with
/// performance data with `Nagios`); the worst probe status makes it
/// [`CliError::Degraded`] or [`CliError::Unhealthy`], and an agent that
/// cannot be asked [`CliError::Unreachable`], so that the exit code reads
/// as a monitoring plugin's.
pub(super) fn status(format: StatusFormat, at: &Where) -> Result<(), CliError> {
    let (config, _) = load_config(at.config.as_deref())?;
    let asked = ask_agent(&config.api.listen);
    let (doc, probes) = match asked {
        Ok(v) => v,
        Err(e) => {
            if format == StatusFormat::Nagios {
                // A monitoring system shows stdout; the error goes to stderr too.
                print!("{}", super::nagios::unreachable(&e.to_string()));
            }
            return Err(e);
        }
    };
    let worst = match format {
        StatusFormat::Table | StatusFormat::Json => {
            let (table, worst) = report::status_table(&probes, &doc, now_ms());
            if format == StatusFormat::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).context("printing the health document")?
                );
            } else {
                print!("{table}");
            }
            worst
        }
        StatusFormat::Nagios => {
            let (line, worst) = super::nagios::line(&probes, &doc);
            print!("{line}");
            worst
        }
    };
    match worst {
        report::Worst::Healthy => Ok(()),
        report::Worst::Degraded => Err(CliError::Degraded),
        report::Worst::Unhealthy => Err(CliError::Unhealthy),
    }
}

/// The agent's health document and probe list; any failure is
/// [`CliError::Unreachable`].
fn ask_agent(listen: &str) -> Result<(serde_json::Value, serde_json::Value), CliError> {
    let unreachable = |e: CliError| match e {
        CliError::Runtime(e) => CliError::Unreachable(e),
        other => other,
    };
    let get = |path: &str| {
        report::agent_get(listen, path)
            .map_err(report_err)
            .map_err(unreachable)
    };
    let health = get("/api/v1/health")?;
    let doc: serde_json::Value = serde_json::from_str(&health)
        .context("the agent's health document is not JSON")
        .map_err(unreachable)?;
    let probes: serde_json::Value = serde_json::from_str(&get("/api/v1/probes")?)
        .context("the agent's probe list is not JSON")
        .map_err(unreachable)?;
    Ok((doc, probes))
}
