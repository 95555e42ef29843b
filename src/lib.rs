//! upkeep: a per-host health and maintenance agent.
//!
//! # Layout
//! Layers point one way (`layers` checks it): `cli` → `app` → `web` →
//! `maintenance` → `store` → `probes`, `clients` → `sample`, `fmt`,
//! `analysis`; `config` composes each seam's own config types.
//!
//! - `config/`: the `agent.toml` schema composed of the seams' config types
//!   (`mod.rs`), `validate.rs` (every problem at once), `errors.rs` (FILE:LINE:COL).
//! - `sample`: series keys, readings, timestamps and statuses shared by all parts.
//! - `fmt`: times (RFC 3339 to the millisecond, `parse_time`), bytes and
//!   counts as every part prints them.
//! - `probes`: the `Probe` trait, thresholds and flap damping; `probes::config`
//!   is the registry of kinds (`probe_kinds!`, `KindFacts`); `probes::runner`
//!   drives one probe on its schedule; one file or folder per kind.
//! - `clients`: PostgreSQL and Redis connections shared by probes and maintenance
//!   tasks: connect from a probe's settings, sessions, identifier quoting.
//! - `recorder`: the single writer; turns outcomes into live state, events and history.
//! - `store`: the SQLite history file and every table in it: `writer/`
//!   (recovery, flush, trim), `salvage` (a damaged file copied row by row into
//!   a fresh one), `reader`, `chunk`, `tiers` (and the size bound),
//!   `ledger` (the maintenance tables `maintenance_runs`, `maintenance_steps`,
//!   `RunStatus`, `Step`), `alerts` (the `alerts`, `outbox` and `silences`
//!   tables), `config` (`[history]`).
//! - `maintenance`: the `Task` trait and what a run passes between its steps.
//!   - `config`: the task registry `TaskConfig`, `TaskKind`, `task_config!`,
//!     the `[maintenance]` backup budget.
//!   - `runner/`: one run or rollback (`Runner`; from a backup dir alone with
//!     `run_file`, the run.json kept there); `drive` (gate, plan, backup,
//!     batches, validate, one abort path), `guard`, `pacing`.
//!   - `ledger`: the seed's `MaintenanceResult` over `store::ledger`.
//!   - `prune` (backups past their age or budget), `schedule` (cron, windows,
//!     `auto`), `lock` (one run per task, across processes), `agent` (the
//!     agent's schedulers and disk-pressure watchers), `view` (tasks and runs for the API and the page).
//!   - the kinds: `postgres_retention/`, `postgres_analyze`, `postgres_backup`,
//!     `config_backup`, `restore_drill/`, `redis_cleanup/`, `cache_warmup`,
//!     `file_cleanup/`, `log_rotate/` (the last two need no probe and share
//!     `files/`: escaped names, errno-naming errors, open files by /proc, the
//!     quarantine); `scratch` (tests only, needs no probe). `dumps` and
//!     `snapshots`: the backup kinds' layouts on disk, shared with the drill.
//! - `alerts`: `[alert.NAME]` rules and `[notify.NAME]` notifiers (`config`),
//!   the pure state machine (`rules`: pending → firing → resolved), the
//!   engine thread (`engine`), and delivery from the history file's outbox
//!   (`notify/`: webhook, alertmanager, command, email).
//! - `live`: in-memory state: probe health, rings of recent values.
//! - `analysis`: pure functions: trend, forecast with confidence, uptime with coverage.
//! - `cli`: the `upkeep` command line: clap definitions, one file per command
//!   group, and their output (`cli::report`, `cli::maintenance::report`,
//!   `cli::nagios`), made of `cli::table` (aligned tables, IEC bytes,
//!   durations in words).
//! - `web`: the local HTTP server: the API, `/metrics`, the status page.
//! - `app`: starts, reloads and stops the whole agent.
//! - `paths`: where config and data live when not given.
//! - `systemd`: READY/STOPPING notifications and a watchdog fed by probe and recorder progress.
//! - `secret`: passwords and the API token read from files, never printed.
//! - `layers` (tests only): the one-way layers between these modules, checked
//!   against the source.

pub mod alerts;
pub mod analysis;
pub mod app;
pub mod cli;
pub mod clients;
pub mod config;
pub mod fmt;
#[cfg(test)]
mod layers;
pub mod live;
pub mod maintenance;
pub mod paths;
pub mod probes;
pub mod recorder;
pub mod sample;
pub mod secret;
pub mod store;
pub mod systemd;
pub mod web;
