//! upkeep: a per-host health and maintenance agent.
//!
//! # Layout
//! - `config`: the TOML schema, defaults and `validate()` (every problem at once).
//! - `sample`: series keys, readings, timestamps and statuses shared by all parts.
//! - `fmt`: times (RFC 3339, one precision), bytes and counts as printed by every part.
//! - `probes`: the `Probe` trait, the registry of kinds, thresholds and flap
//!   damping; `probes::runner` drives one probe on its schedule; one file per kind.
//! - `clients`: PostgreSQL and Redis connections shared by probes and maintenance
//!   tasks: connect from a probe's settings, sessions, identifier quoting.
//! - `recorder`: the single writer; turns outcomes into live state, events and history.
//! - `store`: the SQLite history file: writer, read-only reader, RRD tiers and the
//!   size bound that follows from the config.
//! - `live`: in-memory state: probe health, rings of recent values.
//! - `analysis`: pure functions: trend, forecast with confidence, uptime with coverage.
//! - `cli`: the `upkeep` command line: clap definitions, one file per command
//!   group, and their output (`cli::report`: the read commands over a `Reader`).
//! - `web`: the local HTTP server.
//! - `app`: starts, reloads and stops the whole agent.
//! - `paths`: where config and data live when not given.
//! - `systemd`: READY/STOPPING notifications and a watchdog fed by probe and recorder progress.
//! - `secret`: passwords read from files, never printed.
//! - `layers` (tests only): the one-way layers between these modules, checked
//!   against the source.

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
