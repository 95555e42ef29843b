//! The redis probe: `parse_info` on output captured from a real server, and
//! the probe against the real server on 127.0.0.1:6379 (keys under a prefix
//! of each test's own, deleted after) and against servers of its own started
//! for a test (`requirepass`, `maxmemory`, killed at the end). Failures are
//! unhealthy with a reason naming the endpoint while other probes keep their
//! cadence, and a password never shows.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use upkeep::config::Config;
use upkeep::probes::Probe;
use upkeep::probes::redis::{RedisConfig, RedisProbe, parse_info};

use crate::probe_postgres::{
    SERVER_FAULT_MS, failing_beside_a_healthy_probe, free_port, labelled, password_file,
    silent_listener, unique, value, with_captured_logs,
};

fn config(toml: &str) -> RedisConfig {
    let c: RedisConfig =
        toml::from_str(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

fn probe(url: &str, extra: &str) -> RedisProbe {
    RedisProbe::new(
        &config(&format!("url = \"{url}\"\n{extra}")),
        Duration::from_secs(2),
    )
}

/// A connection for setting up and cleaning up. A server that is not there
/// fails the test with one line.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable at {url} ({e}); start it as README says")
        })
}

async fn cmd<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A redis-server of the test's own on a free port, with no persistence;
/// killed when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start(args: &[&str]) -> OwnRedis {
        let dir = crate::util::temp_dir();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it as README says")
            });
        let own = OwnRedis {
            child,
            port,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < until,
                "redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        own
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `INFO` of a Redis 7.0.15 with `maxmemory 2mb`, keys in db0 and db3, a
/// hit, two misses and an expired key, captured with `redis-cli INFO`
/// (only the executable's path shortened). The wire ends lines in CRLF.
const INFO_7_0: &str = r#"
# Server
redis_version:7.0.15
redis_git_sha1:00000000
redis_git_dirty:0
redis_build_id:ae4d7c971a948f0
redis_mode:standalone
os:Linux 6.18.44-fc-v595 x86_64
arch_bits:64
monotonic_clock:POSIX clock_gettime
multiplexing_api:epoll
atomicvar_api:c11-builtin
gcc_version:12.2.0
process_id:6597
process_supervised:no
run_id:6a7fe5bafa8757ffa2770263d6bcb3a9d56122ca
tcp_port:6411
server_time_usec:1795886220178522
uptime_in_seconds:1
uptime_in_days:0
hz:10
configured_hz:10
lru_clock:724108
executable:redis-server
config_file:
io_threads_active:0

# Clients
connected_clients:1
cluster_connections:0
maxclients:10000
client_recent_max_input_buffer:0
client_recent_max_output_buffer:0
blocked_clients:0
tracking_clients:0
clients_in_timeout_table:0

# Memory
used_memory:991312
used_memory_human:968.08K
used_memory_rss:12255232
used_memory_rss_human:11.69M
used_memory_peak:991312
used_memory_peak_human:968.08K
used_memory_peak_perc:100.23%
used_memory_overhead:876624
used_memory_startup:876184
used_memory_dataset:114688
used_memory_dataset_perc:99.62%
allocator_allocated:1785056
allocator_active:1937408
allocator_resident:4608000
total_system_memory:25276514304
total_system_memory_human:23.54G
used_memory_lua:32768
used_memory_vm_eval:32768
used_memory_lua_human:32.00K
used_memory_scripts_eval:0
number_of_cached_scripts:0
number_of_functions:0
number_of_libraries:0
used_memory_vm_functions:33792
used_memory_vm_total:66560
used_memory_vm_total_human:65.00K
used_memory_functions:200
used_memory_scripts:200
used_memory_scripts_human:200B
maxmemory:2097152
maxmemory_human:2.00M
maxmemory_policy:allkeys-lru
allocator_frag_ratio:1.09
allocator_frag_bytes:152352
allocator_rss_ratio:2.38
allocator_rss_bytes:2670592
rss_overhead_ratio:2.66
rss_overhead_bytes:7647232
mem_fragmentation_ratio:12.89
mem_fragmentation_bytes:11304432
mem_not_counted_for_evict:0
mem_replication_backlog:0
mem_total_replication_buffers:0
mem_clients_slaves:0
mem_clients_normal:0
mem_cluster_links:0
mem_aof_buffer:0
mem_allocator:jemalloc-5.3.0
active_defrag_running:0
lazyfree_pending_objects:0
lazyfreed_objects:0

# Persistence
loading:0
async_loading:0
current_cow_peak:0
current_cow_size:0
current_cow_size_age:0
current_fork_perc:0.00
current_save_keys_processed:0
current_save_keys_total:0
rdb_changes_since_last_save:4
rdb_bgsave_in_progress:0
rdb_last_save_time:1795886219
rdb_last_bgsave_status:ok
rdb_last_bgsave_time_sec:-1
rdb_current_bgsave_time_sec:-1
rdb_saves:0
rdb_last_cow_size:0
rdb_last_load_keys_expired:0
rdb_last_load_keys_loaded:0
aof_enabled:0
aof_rewrite_in_progress:0
aof_rewrite_scheduled:0
aof_last_rewrite_time_sec:-1
aof_current_rewrite_time_sec:-1
aof_last_bgrewrite_status:ok
aof_rewrites:0
aof_rewrites_consecutive_failures:0
aof_last_write_status:ok
aof_last_cow_size:0
module_fork_in_progress:0
module_fork_last_cow_size:0

# Stats
total_connections_received:8
total_commands_processed:8
instantaneous_ops_per_sec:4
total_net_input_bytes:241
total_net_output_bytes:42
total_net_repl_input_bytes:0
total_net_repl_output_bytes:0
instantaneous_input_kbps:0.12
instantaneous_output_kbps:0.02
instantaneous_input_repl_kbps:0.00
instantaneous_output_repl_kbps:0.00
rejected_connections:0
sync_full:0
sync_partial_ok:0
sync_partial_err:0
expired_keys:1
expired_stale_perc:1.67
expired_time_cap_reached_count:0
expire_cycle_cpu_milliseconds:0
evicted_keys:0
evicted_clients:0
total_eviction_exceeded_time:0
current_eviction_exceeded_time:0
keyspace_hits:1
keyspace_misses:2
pubsub_channels:0
pubsub_patterns:0
pubsubshard_channels:0
latest_fork_usec:0
total_forks:0
migrate_cached_sockets:0
slave_expires_tracked_keys:0
active_defrag_hits:0
active_defrag_misses:0
active_defrag_key_hits:0
active_defrag_key_misses:0
total_active_defrag_time:0
current_active_defrag_time:0
tracking_total_keys:0
tracking_total_items:0
tracking_total_prefixes:0
unexpected_error_replies:0
total_error_replies:0
dump_payload_sanitizations:0
total_reads_processed:16
total_writes_processed:8
io_threaded_reads_processed:0
io_threaded_writes_processed:0
reply_buffer_shrinks:0
reply_buffer_expands:0

# Replication
role:master
connected_slaves:0
master_failover_state:no-failover
master_replid:da2f9adf35b004b53452e3cedd56aaff6ca3c1cf
master_replid2:0000000000000000000000000000000000000000
master_repl_offset:0
second_repl_offset:-1
repl_backlog_active:0
repl_backlog_size:1048576
repl_backlog_first_byte_offset:0
repl_backlog_histlen:0

# CPU
used_cpu_sys:0.003464
used_cpu_user:0.010394
used_cpu_sys_children:0.000000
used_cpu_user_children:0.000000
used_cpu_sys_main_thread:0.003447
used_cpu_user_main_thread:0.010342

# Modules

# Errorstats

# Cluster
cluster_enabled:0

# Keyspace
db0:keys=2,expires=1,avg_ttl=99899
db3:keys=1,expires=0,avg_ttl=0
"#;

#[test]
fn info_captured_from_a_real_server_is_parsed() {
    let info = parse_info(&INFO_7_0.replace('\n', "\r\n"));
    assert_eq!(info.get("redis_version"), Some("7.0.15"));
    assert_eq!(info.u64("used_memory"), Some(991_312));
    assert_eq!(info.u64("maxmemory"), Some(2_097_152));
    assert_eq!(info.u64("connected_clients"), Some(1));
    assert_eq!(info.u64("expired_keys"), Some(1));
    assert_eq!(info.u64("evicted_keys"), Some(0));
    assert_eq!(
        (info.u64("keyspace_hits"), info.u64("keyspace_misses")),
        (Some(1), Some(2))
    );
    assert_eq!(info.keyspace, [(0, 2), (3, 1)]);
    // Values keep everything after the first colon, and no CR.
    assert_eq!(info.get("executable"), Some("redis-server"));
    assert_eq!(info.get("db0"), Some("keys=2,expires=1,avg_ttl=99899"));
    assert_eq!(parse_info(INFO_7_0), info, "LF-only text parses the same");
}

#[tokio::test]
async fn a_healthy_server_gives_every_reading_with_sane_values() {
    let url = "redis://127.0.0.1:6379/0";
    let mut c = admin(url).await;
    let prefix = unique("upkeep_t");
    let keys: Vec<String> = (0..20).map(|i| format!("{prefix}:{i}")).collect();
    for k in &keys {
        let _: () = cmd(&mut c, &["SET", k, "v"]).await;
    }
    let mut p = probe(url, "");
    let first = p.sample().await.unwrap();
    assert!(value(&first, "connect_seconds").is_some());
    let ping = value(&first, "ping_seconds").unwrap();
    assert!(ping > 0.0 && ping < 0.1, "{ping}");
    assert!(value(&first, "used_memory_bytes").unwrap() > 0.0);
    assert!(
        value(&first, "connected_clients").unwrap() >= 2.0,
        "the probe and this test"
    );
    assert!(labelled(&first, "keys", "db", "0").unwrap() >= 20.0);
    let max: Vec<String> = cmd(&mut c, &["CONFIG", "GET", "maxmemory"]).await;
    if max[1] == "0" {
        assert_eq!(
            value(&first, "maxmemory_bytes"),
            None,
            "unlimited is not a zero"
        );
        assert_eq!(value(&first, "memory_used_ratio"), None);
    }
    assert_eq!(
        value(&first, "expired_keys_per_second"),
        None,
        "no rate on the first tick"
    );

    // Between ticks: hits, misses, and keys that expire.
    for k in &keys {
        let _: Option<String> = cmd(&mut c, &["GET", k]).await;
    }
    let _: Option<String> = cmd(&mut c, &["GET", &format!("{prefix}:missing")]).await;
    for i in 0..10 {
        let _: () = cmd(
            &mut c,
            &["SET", &format!("{prefix}:exp{i}"), "v", "PX", "20"],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..10 {
        let _: Option<String> = cmd(&mut c, &["GET", &format!("{prefix}:exp{i}")]).await;
    }
    let second = p.sample().await.unwrap();
    assert_eq!(
        value(&second, "connect_seconds"),
        None,
        "the connection is reused"
    );
    assert!(
        value(&second, "expired_keys_per_second").unwrap() > 0.0,
        "{second:?}"
    );
    assert!(value(&second, "evicted_keys_per_second").unwrap() >= 0.0);
    let hit = value(&second, "hit_ratio").unwrap();
    assert!(hit > 0.0 && hit <= 1.0, "{hit}");
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    let _: i64 = cmd(&mut c, &del).await;
}

#[tokio::test]
async fn a_server_with_maxmemory_reports_its_limit_and_evictions() {
    let own = OwnRedis::start(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut c = admin(&own.url()).await;
    let mut p = probe(&own.url(), "");
    let first = p.sample().await.unwrap();
    assert_eq!(value(&first, "maxmemory_bytes"), Some(2_097_152.0));
    let ratio = value(&first, "memory_used_ratio").unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    assert_eq!(
        labelled(&first, "keys", "db", "0"),
        Some(0.0),
        "an empty db is a true zero"
    );
    // 4 MB into 2 MB: the oldest keys are evicted.
    let value_100k = "x".repeat(100_000);
    for i in 0..40 {
        let _: () = cmd(&mut c, &["SET", &format!("k{i}"), &value_100k]).await;
    }
    let second = p.sample().await.unwrap();
    assert!(
        value(&second, "evicted_keys_per_second").unwrap() > 0.0,
        "{second:?}"
    );
    let ratio = value(&second, "memory_used_ratio").unwrap();
    assert!(ratio > 0.5 && ratio < 1.1, "{ratio}");
    let keys = labelled(&second, "keys", "db", "0").unwrap();
    assert!(keys > 0.0 && keys < 40.0, "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_a_password_file_works_and_a_wrong_password_is_unhealthy() {
    let dir = crate::util::temp_dir();
    let right = unique("canary-right");
    let own = OwnRedis::start(&["--requirepass", &right]);
    let good = password_file(dir.path(), "good", &right);
    let mut p = probe(
        &own.url(),
        &format!("password_file = \"{}\"", good.display()),
    );
    assert!(value(&p.sample().await.unwrap(), "ping_seconds").is_some());

    // An ACL user with only what the probe needs.
    let mut c = admin(&format!("redis://:{right}@127.0.0.1:{}/0", own.port)).await;
    let user_pw = unique("canary-user");
    let _: () = cmd(
        &mut c,
        &[
            "ACL",
            "SETUSER",
            "upkeep_probe",
            "on",
            &format!(">{user_pw}"),
            "+ping",
            "+info",
            "+client",
            "+hello",
        ],
    )
    .await;
    let user_file = password_file(dir.path(), "user", &user_pw);
    let extra = format!(
        "username = \"upkeep_probe\"\npassword_file = \"{}\"",
        user_file.display()
    );
    assert!(
        value(
            &probe(&own.url(), &extra).sample().await.unwrap(),
            "used_memory_bytes"
        )
        .is_some()
    );

    let bad = password_file(dir.path(), "bad", &unique("canary-wrong"));
    let wrong = probe(
        &own.url(),
        &format!("password_file = \"{}\"", bad.display()),
    );
    let reason = failing_beside_a_healthy_probe(wrong, SERVER_FAULT_MS).await;
    assert!(
        reason.starts_with(&format!("db: redis 127.0.0.1:{}: ", own.port)),
        "{reason}"
    );
    assert!(
        reason.ends_with("authentication failed for user `default`"),
        "{reason}"
    );
    let err = probe(&own.url(), "")
        .sample()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NOAUTH") && err.ends_with("Authentication required."),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_port_is_unhealthy_naming_the_endpoint() {
    let port = free_port();
    let reason = failing_beside_a_healthy_probe(
        probe(&format!("redis://127.0.0.1:{port}/0"), ""),
        SERVER_FAULT_MS,
    )
    .await;
    assert!(
        reason.starts_with(&format!("db: redis 127.0.0.1:{port}: ")),
        "{reason}"
    );
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_that_does_not_resolve_is_unhealthy() {
    let reason = failing_beside_a_healthy_probe(
        probe("redis://nonexistent.invalid:6379/0", ""),
        SERVER_FAULT_MS,
    )
    .await;
    assert!(
        reason.starts_with("db: redis nonexistent.invalid:6379: "),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_times_out_within_the_probe_timeout() {
    let addr = silent_listener();
    let url = format!("redis://{addr}/0");
    let reason = failing_beside_a_healthy_probe(probe(&url, ""), 250).await;
    assert_eq!(reason, "db: timed out after 250ms");
    let mut p = probe(&url, "connect_timeout = \"300ms\"");
    let started = Instant::now();
    let err = p.sample().await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.starts_with(&format!("redis {addr}: ")) && err.contains("timed out"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_replaced_on_the_next_tick() {
    let own = OwnRedis::start(&[]);
    let mut p = probe(&own.url(), "");
    assert!(value(&p.sample().await.unwrap(), "connect_seconds").is_some());
    let mut c = admin(&own.url()).await;
    let killed: i64 = cmd(
        &mut c,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    )
    .await;
    assert_eq!(killed, 1);
    let readings = match p.sample().await {
        Ok(r) => r,
        Err(e) => {
            assert!(
                e.to_string()
                    .starts_with(&format!("redis 127.0.0.1:{}: ", own.port)),
                "{e}"
            );
            p.sample().await.unwrap()
        }
    };
    assert!(
        value(&readings, "connect_seconds").is_some(),
        "{readings:?}"
    );
}

#[test]
fn a_password_never_appears_in_debug_errors_logs_or_serialized_config() {
    let dir = crate::util::temp_dir();
    let canary = unique("canary-pw");
    let own = OwnRedis::start(&["--requirepass", &unique("other")]);
    let pw = password_file(dir.path(), "pw", &canary);
    let silent = silent_listener();
    let mut toml = String::new();
    for (name, url, extra) in [
        ("wrong", own.url(), ""),
        (
            "refused",
            format!("redis://127.0.0.1:{}/0", free_port()),
            "",
        ),
        (
            "silent",
            format!("redis://{silent}/0"),
            "connect_timeout = \"200ms\"\n",
        ),
        ("acl", own.url(), "username = \"nobody\"\n"),
    ] {
        toml += &format!(
            "[probe.{name}]\nkind = \"redis\"\nurl = \"{url}\"\npassword_file = \"{}\"\n{extra}",
            pw.display()
        );
    }
    let config = Config::parse("agent.toml", &toml).unwrap();
    let mut seen = vec![
        format!("{config:?}"),
        serde_json::to_string(&config).unwrap(),
    ];
    let (logs, errors) = with_captured_logs(|| async {
        let mut errors = Vec::new();
        for (spec, mut probe) in upkeep::probes::build(&config, &Default::default()) {
            if spec.kind == "redis" {
                for _ in 0..2 {
                    errors.push(probe.sample().await.unwrap_err().to_string());
                }
            }
        }
        errors
    });
    assert_eq!(errors.len(), 8, "{errors:?}");
    assert!(
        errors[0].ends_with("authentication failed for user `nobody`"),
        "{errors:?}"
    );
    assert!(
        errors[6].ends_with("authentication failed for user `default`"),
        "{errors:?}"
    );
    seen.extend(errors);
    seen.push(logs);
    if let upkeep::config::ProbeConfig::Redis(c) = &config.probe["wrong"] {
        let mut p = RedisProbe::new(c, Duration::from_secs(1));
        let _ = tokio::runtime::Runtime::new().unwrap().block_on(p.sample());
        seen.push(format!("{p:?}"));
    }
    for text in &seen {
        assert!(!text.contains(&canary), "the password leaked into: {text}");
    }
}

#[test]
fn a_password_in_the_url_is_rejected_naming_the_field() {
    let canary = "hunter2-canary";
    for url in [
        format!("redis://:{canary}@127.0.0.1:6379/0"),
        format!("redis://app:{canary}@127.0.0.1/0"),
    ] {
        let err = Config::parse(
            "agent.toml",
            &format!("[probe.cache]\nkind = \"redis\"\nurl = \"{url}\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "agent.toml:3:7: probe.cache.url: a password in the URL is not allowed"
            ),
            "{err}"
        );
        assert!(!err.contains(canary), "{err}");
    }
    let err = Config::parse(
        "agent.toml",
        "[probe.cache]\nkind = \"redis\"\nurl = \"redis://app@127.0.0.1/0\"\nusername = \"other\"\nconnect_timeout = \"0s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("probe.cache.url: names a user, and so does `username`"),
        "{err}"
    );
    assert!(
        err.contains("probe.cache.connect_timeout: must be greater than 0"),
        "{err}"
    );
}
