//! Integration tests: one binary, one module per area. Every test makes its
//! own temporary data dir; nothing is shared between tests.

mod util;

mod alerts;
mod cli;
mod contrib;
mod health_contract;
mod lifecycle;
mod maint_backup;
mod maint_config_backup;
mod maint_files;
mod maint_logs;
mod maint_pacing;
mod maint_postgres;
mod maint_redis;
mod maint_runner;
mod probe_access_log;
mod probe_http;
mod probe_postgres;
mod probe_redis;
mod probe_security;
mod probe_worker;
mod runner;
mod store_faults;
mod store_history;
mod systemd;
mod web_api;
mod web_conn;
mod web_metrics;
mod web_page;
