//! `upkeep check-config`: validates a config (an invalid one is a
//! [`CliError::Config`]), checks the files `run` reads at start (the API
//! token file), and prints the probes that run, the largest size its
//! history file can reach, and the budget of maintenance backups. Called by [`super::dispatch`].

use std::path::Path;

use super::{CliError, check_token_file, load_config};
use crate::config::escape;
use crate::store;

pub(super) fn check_config(path: Option<&Path>) -> Result<(), CliError> {
    let (config, source) = load_config(path)?;
    check_token_file(&config, source.as_deref())?;
    let bound = store::tiers::size_bound(&config.history)
        .with_alerts(config.notify.len(), config.alerts.max_outbox);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match &source {
        Some(p) => println!("{}: ok", p.display()),
        None => println!("no config file: built-in defaults are valid"),
    }
    // The probes that run, as the agent builds them: no `host` when
    // `[host] enabled = false`.
    let probes = crate::probes::names(&config);
    if probes.is_empty() {
        println!("probes: none");
    } else {
        let probes: Vec<_> = probes.iter().map(|p| escape(p)).collect();
        println!("probes: {}", probes.join(", "));
    }
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
        "  journal {:.1} MiB, series {:.1} MiB, events {:.1} MiB, runs {:.1} MiB, maintenance ledger {:.1} MiB, alerts and outbox {:.1} MiB, schema {:.1} MiB",
        mib(bound.journal),
        mib(bound.series),
        mib(bound.events),
        mib(bound.runs),
        mib(bound.maintenance),
        mib(bound.alerts),
        mib(bound.fixed)
    );
    println!(
        "  plus the write-ahead log, checkpointed every {} and past {:.0} MiB",
        humantime::format_duration(config.history.checkpoint_interval),
        mib(store::WAL_LIMIT_BYTES)
    );
    let m = &config.maintenance;
    println!(
        "maintenance backup budget: {} bytes ({:.1} MiB) in all, each kept {}{}",
        m.max_backup_bytes,
        mib(m.max_backup_bytes),
        humantime::format_duration(m.keep_backups),
        if m.is_empty() { " (no tasks)" } else { "" }
    );
    for name in m.keys() {
        let (keep, max) = (m.keep_backups_of(name), m.max_backup_bytes_of(name));
        if keep != m.keep_backups || max != m.max_backup_bytes {
            println!(
                "  {}: {:.1} MiB, each kept {}",
                escape(name),
                mib(max),
                humantime::format_duration(keep)
            );
        }
    }
    println!("  the newest successful run's backup of each task is kept beyond the budget");
    Ok(())
}
