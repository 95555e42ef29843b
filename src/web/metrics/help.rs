//! HELP text of every probe reading `/metrics` exports: what the metric
//! is, in the probes' own words (node_exporter is the model). Keyed by
//! kind and the reading's own name (before [`super::exported_name`]); a
//! reading missing here gets a text built from its name and unit, and a
//! test lists the readings of every kind so that none is missed.

/// The text for reading `metric` of a probe of `kind`.
pub fn probe_help(kind: &str, metric: &str) -> Option<&'static str> {
    let common = match metric {
        "connect_seconds" => Some("Time to open a connection to the target, in seconds."),
        _ => None,
    };
    let text = match (kind, metric) {
        ("host", "cpu_used_ratio") => {
            "Share of all CPUs' time spent busy (not idle or iowait) since the last tick, 0-1."
        }
        ("host", "cpu_core_used_ratio") => {
            "Share of one CPU core's time spent busy since the last tick, 0-1."
        }
        ("host", "load1") => "System load average over 1 minute.",
        ("host", "load5") => "System load average over 5 minutes.",
        ("host", "load15") => "System load average over 15 minutes.",
        ("host", "uptime_seconds") => "Time since the host booted, in seconds.",
        ("host", "memory_total_bytes") => "Physical memory of the host, in bytes.",
        ("host", "memory_used_bytes") => "Memory in use (total minus available), in bytes.",
        ("host", "memory_available_bytes") => {
            "Memory available to new work without swapping (MemAvailable), in bytes."
        }
        ("host", "memory_used_ratio") => "Share of memory in use (total minus available), 0-1.",
        ("host", "swap_total_bytes") => "Swap space of the host, in bytes.",
        ("host", "swap_used_bytes") => "Swap space in use, in bytes.",
        ("host", "swap_used_ratio") => "Share of swap space in use, 0-1.",
        ("host", "disk_total_bytes") => "Size of the filesystem, in bytes.",
        ("host", "disk_available_bytes") => {
            "Space of the filesystem unprivileged users can still write, in bytes."
        }
        ("host", "disk_used_bytes") => "Space of the filesystem in use, in bytes.",
        ("host", "disk_used_ratio") => {
            "Share of the filesystem in use as df counts it: used / (used + available), 0-1."
        }
        ("host", "disk_inodes_total") => "Inodes of the filesystem.",
        ("host", "disk_inodes_used") => "Inodes of the filesystem in use.",
        ("host", "disk_inodes_used_ratio") => "Share of the filesystem's inodes in use, 0-1.",
        ("host", "net_rx_bytes_per_second") => {
            "Bytes received by the interface per second over the last tick."
        }
        ("host", "net_tx_bytes_per_second") => {
            "Bytes sent by the interface per second over the last tick."
        }
        ("host", "net_rx_packets_per_second") => {
            "Packets received by the interface per second over the last tick."
        }
        ("host", "net_tx_packets_per_second") => {
            "Packets sent by the interface per second over the last tick."
        }
        ("host", "net_rx_errors_per_second") => {
            "Receive errors of the interface per second over the last tick."
        }
        ("host", "net_tx_errors_per_second") => {
            "Transmit errors of the interface per second over the last tick."
        }
        ("host", "net_rx_bytes_total") => "Bytes received by the interface since it came up.",
        ("host", "net_tx_bytes_total") => "Bytes sent by the interface since it came up.",
        ("host", "net_rx_packets_total") => "Packets received by the interface since it came up.",
        ("host", "net_tx_packets_total") => "Packets sent by the interface since it came up.",
        ("host", "net_rx_errors_total") => "Receive errors of the interface since it came up.",
        ("host", "net_tx_errors_total") => "Transmit errors of the interface since it came up.",
        ("tcp", _) => return common,
        ("http", "response_seconds") => {
            "Time from sending the request to the end of the answer's body, redirects included, in seconds."
        }
        ("http", "status_code") => "HTTP status code of the final answer.",
        ("http", "body_bytes") => "Bytes of the answer's body read (at most 1 MiB).",
        ("http", "tls_cert_expiry_days") => {
            "Time until the TLS certificate that expires first stops being valid, in seconds."
        }
        ("worker", "processes") => "Processes of the worker found running.",
        ("worker", "rss_bytes") => "Resident memory of the worker's processes together, in bytes.",
        ("worker", "cpu_ratio") => {
            "CPU time the worker's processes used since the last tick, as a share of one core."
        }
        ("worker", "heartbeat_age_seconds") => {
            "Time since the worker last wrote its heartbeat, in seconds."
        }
        ("postgres", "database_size_bytes") => {
            "Size of the database on disk (pg_database_size), in bytes."
        }
        ("postgres", "query_seconds") => "Time the probe's statistics queries took, in seconds.",
        ("postgres", "commit_seconds") => {
            "Time a one-row write took to commit, WAL flush included (write_check), in seconds."
        }
        ("postgres", "backends_waiting") => {
            "Other active client sessions waiting, by wait event type (Lock, LWLock, IO)."
        }
        ("postgres", "connections") => "Sessions of the server in each state (pg_stat_activity).",
        ("postgres", "connections_max") => "The server's max_connections.",
        ("postgres", "connections_used_ratio") => {
            "Sessions open as a share of max_connections, 0-1."
        }
        ("postgres", "oldest_transaction_seconds") => {
            "Age of the oldest open transaction, in seconds (0 when none is open)."
        }
        ("postgres", "commits_per_second") => {
            "Transactions of the database committed per second over the last tick."
        }
        ("postgres", "rollbacks_per_second") => {
            "Transactions of the database rolled back per second over the last tick."
        }
        ("postgres", "commits_total") => {
            "Transactions of the database committed since its statistics were last reset (xact_commit)."
        }
        ("postgres", "rollbacks_total") => {
            "Transactions of the database rolled back since its statistics were last reset (xact_rollback)."
        }
        ("postgres", "cache_hit_ratio") => {
            "Share of block reads served from shared buffers over the last tick, 0-1."
        }
        ("postgres", "replication_lag_seconds") => {
            "Time since the last transaction replayed on this standby, in seconds."
        }
        ("postgres", "table_live_tuples") => "Estimated live rows of the watched table.",
        ("postgres", "table_dead_tuples") => {
            "Estimated dead rows of the watched table, waiting for vacuum."
        }
        ("postgres", "table_last_analyze_age_seconds") => {
            "Time since the watched table was last analyzed, in seconds."
        }
        ("redis", "ping_seconds") => "Time a PING took to answer, in seconds.",
        ("redis", "used_memory_bytes") => "Memory Redis has allocated (used_memory), in bytes.",
        ("redis", "maxmemory_bytes") => "Redis' maxmemory limit, in bytes.",
        ("redis", "memory_used_ratio") => "used_memory as a share of maxmemory, 0-1.",
        ("redis", "connected_clients") => "Client connections open to Redis.",
        ("redis", "keys") => "Keys in the database.",
        ("redis", "evicted_keys_per_second") => {
            "Keys evicted for want of memory per second over the last tick."
        }
        ("redis", "expired_keys_per_second") => {
            "Keys removed on expiry per second over the last tick."
        }
        ("redis", "evicted_keys_total") => {
            "Keys evicted for want of memory since the server started."
        }
        ("redis", "expired_keys_total") => "Keys removed on expiry since the server started.",
        ("redis", "hit_ratio") => {
            "Share of key lookups that found the key over the last tick, 0-1."
        }
        ("access_log", "requests") => "Requests logged during the last tick.",
        ("access_log", "malformed_lines") => "Log lines that did not parse during the last tick.",
        ("access_log", "requests_per_second") => "Requests logged per second over the last tick.",
        ("access_log", "status_5xx_ratio") => {
            "Share of the last tick's requests answered 5xx, 0-1."
        }
        ("access_log", "status_4xx_ratio") => {
            "Share of the last tick's requests answered 4xx, 0-1."
        }
        ("access_log", "latency_p50_seconds") => {
            "Median request time of the last tick's requests, in seconds."
        }
        ("access_log", "latency_p95_seconds") => {
            "95th percentile request time of the last tick's requests, in seconds."
        }
        ("access_log", "latency_p99_seconds") => {
            "99th percentile request time of the last tick's requests, in seconds."
        }
        ("access_log", "requests_total") => {
            "Requests logged since the agent started, by status class."
        }
        ("access_log", "request_duration_seconds") => {
            "Request times logged since the agent started, in seconds."
        }
        ("security_updates", "updates_pending") => {
            "Package upgrades pending, as apt-get --simulate dist-upgrade (or dnf check-update) lists them."
        }
        ("security_updates", "security_updates_pending") => {
            "Pending upgrades from a security suite or advisory."
        }
        ("security_updates", "reboot_required") => "1 when the host asks for a reboot, else 0.",
        ("security_updates", "oldest_security_update_age_seconds") => {
            "How long the oldest pending security update has been available, in seconds."
        }
        ("access_review", "login_users") => "Users with a login shell.",
        ("access_review", "sudo_users") => {
            "Users with sudo rights (the sudo, wheel or adm group, or sudoers)."
        }
        ("access_review", "authorized_keys") => {
            "SSH keys in the authorized_keys files of users with a login shell."
        }
        ("access_review", "unreviewed_changes") => {
            "Access changes seen since the last acknowledged review."
        }
        ("compliance", "checks_failed") => "Baseline checks that failed.",
        ("compliance", "checks_unknown") => "Baseline checks that could not be judged.",
        ("compliance", "checks_passed") => "Baseline checks that passed.",
        _ => return common,
    };
    Some(text)
}

/// The text of a reading [`probe_help`] does not know: its name in words,
/// its kind and what its unit is.
pub fn fallback_help(kind: &str, metric: &str, unit: &str) -> String {
    format!(
        "{} of each {kind} probe ({unit}).",
        metric.replace('_', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reading each kind emits, as its code names them.
    const READINGS: &[(&str, &[&str])] = &[
        ("tcp", &["connect_seconds"]),
        (
            "http",
            &[
                "response_seconds",
                "status_code",
                "body_bytes",
                "tls_cert_expiry_days",
            ],
        ),
        (
            "worker",
            &[
                "processes",
                "rss_bytes",
                "cpu_ratio",
                "heartbeat_age_seconds",
            ],
        ),
        (
            "redis",
            &[
                "connect_seconds",
                "ping_seconds",
                "keys",
                "hit_ratio",
                "evicted_keys_total",
            ],
        ),
        (
            "postgres",
            &[
                "connect_seconds",
                "query_seconds",
                "commit_seconds",
                "backends_waiting",
                "connections",
                "commits_total",
                "table_dead_tuples",
            ],
        ),
        (
            "access_log",
            &[
                "requests_total",
                "request_duration_seconds",
                "latency_p99_seconds",
            ],
        ),
        ("host", &["net_rx_bytes_total", "disk_used_ratio", "load1"]),
        (
            "security_updates",
            &[
                "updates_pending",
                "security_updates_pending",
                "reboot_required",
                "oldest_security_update_age_seconds",
            ],
        ),
        (
            "access_review",
            &[
                "login_users",
                "sudo_users",
                "authorized_keys",
                "unreviewed_changes",
            ],
        ),
        (
            "compliance",
            &["checks_failed", "checks_unknown", "checks_passed"],
        ),
    ];

    #[test]
    fn every_reading_says_what_it_is() {
        for (kind, metrics) in READINGS {
            for m in *metrics {
                let h = probe_help(kind, m).unwrap_or_else(|| panic!("no help for {kind} {m}"));
                assert!(
                    h.ends_with('.') && !h.starts_with("Reading"),
                    "{kind} {m}: {h}"
                );
            }
        }
        assert_eq!(probe_help("tcp", "nope"), None);
        assert_eq!(
            fallback_help("tcp", "odd_thing", "count"),
            "odd thing of each tcp probe (count)."
        );
    }
}
