//! `upkeep check-config`: validates a config (an invalid one is a
//! [`CliError::Config`]), checks the files `run` reads at start (the API
//! token file), and prints the probes that run, the largest size its
//! history file can reach, and the budget of maintenance backups. Called by [`super::dispatch`].

use std::path::Path;

use super::table::{bytes, duration};
use super::{CliError, check_token_file, load_config};
use crate::config::escape;
use crate::store;

pub(super) fn check_config(path: Option<&Path>) -> Result<(), CliError> {
    let (config, source) = load_config(path)?;
    check_token_file(&config, source.as_deref())?;
    let bound = store::tiers::size_bound(&config.history)
        .with_alerts(config.notify.len(), config.alerts.max_outbox);
    let iec = |b: u64| bytes(b as f64);
    let words = |d: std::time::Duration| duration(d.as_millis() as i64);
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
        "history file bound: {} bytes ({}) for at most {} series",
        bound.total,
        iec(bound.total),
        config.history.max_series
    );
    for (table, b) in &bound.tiers {
        println!("  {table}: {}", iec(*b));
    }
    println!(
        "  journal {}, series {}, events {}, runs {}, maintenance ledger {}, alerts and outbox {}, schema {}",
        iec(bound.journal),
        iec(bound.series),
        iec(bound.events),
        iec(bound.runs),
        iec(bound.maintenance),
        iec(bound.alerts),
        iec(bound.fixed)
    );
    println!(
        "  plus the write-ahead log, checkpointed every {} and past {}",
        words(config.history.checkpoint_interval),
        iec(store::WAL_LIMIT_BYTES)
    );
    let m = &config.maintenance;
    println!(
        "maintenance backup budget: {} bytes ({}) in all, each kept {}{}",
        m.max_backup_bytes,
        iec(m.max_backup_bytes),
        words(m.keep_backups),
        if m.is_empty() { " (no tasks)" } else { "" }
    );
    for name in m.keys() {
        let (keep, max) = (m.keep_backups_of(name), m.max_backup_bytes_of(name));
        if keep != m.keep_backups || max != m.max_backup_bytes {
            println!(
                "  {}: {}, each kept {}",
                escape(name),
                iec(max),
                words(keep)
            );
        }
    }
    println!("  the newest successful run's backup of each task is kept beyond the budget");
    Ok(())
}
