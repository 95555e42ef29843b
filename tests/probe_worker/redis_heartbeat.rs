//! The worker probe's Redis heartbeat, against the Redis on 127.0.0.1:6379:
//! a key under a unique prefix, read by a Redis user made for the test with
//! its password in a file; key and user are deleted at the end.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Sleeper, failed, probe, tick, unique, value};

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (see README: set-up)")
}

async fn cmd(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Deletes this test's key and Redis user, even when the test fails.
struct RedisCleanup {
    key: String,
    user: String,
}

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let (key, user) = (self.key.clone(), self.user.clone());
        // Its own thread and runtime: drop may run inside the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut c = redis().await;
                cmd(&mut c, &["DEL", &key]).await;
                cmd(&mut c, &["ACL", "DELUSER", &user]).await;
            });
        })
        .join()
        .unwrap();
    }
}

#[tokio::test]
async fn a_heartbeat_key_in_redis_is_read_with_a_password_from_a_file() {
    let mut c = redis().await;
    let prefix = unique("upkeep-test:");
    let key = format!("{prefix}:beat");
    // A user of its own, allowed only GET on this test's keys.
    let user = unique("upkeep-test-");
    let _cleanup = RedisCleanup {
        key: key.clone(),
        user: user.clone(),
    };
    let (pw, keys) = (format!(">{user}-pw"), format!("~{prefix}:*"));
    cmd(&mut c, &["ACL", "SETUSER", &user, "on", &pw, &keys, "+get"]).await;
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("redis.pw");
    std::fs::write(&pwfile, format!("{user}-pw\n")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&pwfile, mode).unwrap();
    let name = unique("ukk");
    let _w = Sleeper::start(&name);
    let options = format!(
        "name = \"{name}\"\nheartbeat_redis_url = \"redis://{user}@127.0.0.1:6379/0\"\n\
         heartbeat_key = \"{key}\"\nheartbeat_redis_password_file = \"{}\"\nmax_age = \"60s\"",
        pwfile.display()
    );
    let mut p = probe(&options);
    let why = failed(tick(&mut p).await);
    assert_eq!(why, format!("heartbeat key `{key}` is not set"));
    let stale = format!("{}", now_secs() - 95.0);
    cmd(&mut c, &["SET", &key, &stale]).await;
    assert_eq!(failed(tick(&mut p).await), "heartbeat 95s old (max 60s)");
    cmd(&mut c, &["SET", &key, &format!("{}", now_secs() as u64)]).await;
    let rs = tick(&mut p).await.unwrap();
    let age = value(&rs, "heartbeat_age_seconds").unwrap();
    assert!((0.0..2.0).contains(&age), "{age}");
    assert_eq!(value(&rs, "processes"), Some(1.0));
    // A wrong password: Redis refuses it, and the reason does not repeat it.
    std::fs::write(&pwfile, "not-the-password\n").unwrap();
    let why = failed(tick(&mut probe(&options)).await);
    assert!(why.starts_with("heartbeat redis: "), "{why}");
    assert!(!why.contains("not-the-password"), "{why}");
}
