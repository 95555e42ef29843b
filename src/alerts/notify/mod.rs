//! Delivery: one sender per notifier takes the oldest notification of its
//! outbox, renders it for its kind (webhook JSON with an optional HMAC
//! signature, Alertmanager's v2 alerts, a command's stdin and
//! environment, an email), and deletes the row only once the receiver
//! accepted it (2xx, exit 0, SMTP 250). A failure keeps the row and waits
//! (capped exponential backoff with jitter) before the same row is tried
//! again, so a notifier's receivers see its notifications in order. A row
//! older than the notifier's `max_age` is given up: logged, counted, an
//! event, and the `agent` alert `notifications_given_up`.

mod command;
mod email;
mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::NotifyConfig;
use super::rules::Notification;
use crate::fmt::rfc3339;
use crate::sample::{Ts, now_ms};
use crate::secret::Secret;
use crate::store::alerts::{AlertStore, OutboxRow};

/// Where links in notifications point and what names this host.
#[derive(Debug, Clone)]
pub struct Context {
    pub host: String,
    /// The agent's API, such as `http://127.0.0.1:8711`; `None` without one.
    pub base_url: Option<String>,
}

impl Context {
    fn run_url(&self, run: i64) -> Option<String> {
        self.base_url
            .as_ref()
            .map(|b| format!("{b}/api/v1/maintenance/runs/{run}"))
    }
}

/// Delivery counters, by notifier and result, and when a notification was
/// last given up: `/metrics` and the `agent` rule read them.
#[derive(Debug, Default)]
pub struct Counters {
    pub by_result: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub last_given_up_ms: AtomicI64,
}

impl Counters {
    pub fn add(&self, notifier: &str, result: &'static str, n: u64) {
        *self
            .by_result
            .lock()
            .expect("counters lock")
            .entry((notifier.to_string(), result))
            .or_default() += n;
    }

    pub fn snapshot(&self) -> BTreeMap<(String, &'static str), u64> {
        self.by_result.lock().expect("counters lock").clone()
    }
}

/// The results counted in `upkeep_notifications_total`.
pub const RESULTS: [&str; 4] = ["sent", "failed", "given_up", "dropped"];

/// The document a webhook receives and a command reads on stdin.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub version: u32,
    #[serde(flatten)]
    pub notification: &'a Notification,
    pub host: &'a str,
    pub starts_at: String,
    pub ends_at: Option<String>,
    /// "during maintenance run N", with where to read it.
    pub during_maintenance: Option<MaintenanceNote>,
}

#[derive(Debug, Serialize)]
pub struct MaintenanceNote {
    pub run: i64,
    pub text: String,
    pub url: Option<String>,
}

impl<'a> Document<'a> {
    pub fn new(n: &'a Notification, cx: &'a Context) -> Document<'a> {
        Document {
            version: 1,
            notification: n,
            host: &cx.host,
            starts_at: rfc3339(n.starts_at_ms),
            ends_at: n.ends_at_ms.map(rfc3339),
            during_maintenance: n.maintenance_run.map(|run| MaintenanceNote {
                run,
                text: format!("during maintenance run {run}"),
                url: cx.run_url(run),
            }),
        }
    }
}

/// A notifier ready to deliver: its config and the secrets it read.
pub struct Notifier {
    pub name: String,
    pub config: NotifyConfig,
    secret: Option<Result<Secret, String>>,
}

impl Notifier {
    /// Reads the notifier's secret file, if it has one; a file that cannot
    /// be read fails each delivery (and `check-config` names it).
    pub fn new(name: &str, config: NotifyConfig) -> Notifier {
        let secret = match &config {
            NotifyConfig::Webhook(w) => w
                .secret_file
                .as_ref()
                .map(|p| crate::secret::read(&crate::secret::resolve(p))),
            NotifyConfig::Email(e) => e
                .password_file
                .as_ref()
                .map(|p| crate::secret::read(&crate::secret::resolve(p))),
            _ => None,
        };
        Notifier {
            name: name.to_string(),
            config,
            secret,
        }
    }

    fn secret(&self) -> Result<Option<&Secret>, String> {
        match &self.secret {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s)),
            Some(Err(e)) => Err(e.clone()),
        }
    }

    /// One attempt; `Ok` once the receiver accepted the notification.
    pub async fn deliver(&self, n: &Notification, cx: &Context) -> Result<(), String> {
        let attempt = async {
            match &self.config {
                NotifyConfig::Webhook(w) => {
                    let body = serde_json::to_vec(&Document::new(n, cx)).expect("serializable");
                    let mut headers: Vec<(String, String)> = w
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    headers.push(("X-Upkeep-Id".into(), n.id.clone()));
                    if let Some(key) = self.secret()? {
                        headers.push(("X-Upkeep-Signature".into(), sign(key, &body)));
                    }
                    let url = super::config::http_url(&w.url)?;
                    http::post(&url, &headers, body).await.map(drop)
                }
                NotifyConfig::Alertmanager(a) => {
                    let body = serde_json::to_vec(&alertmanager_body(n, cx)).expect("serializable");
                    let headers: Vec<(String, String)> = a
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let base = super::config::http_url(&a.url)?;
                    let url = base
                        .join(&format!(
                            "{}/api/v2/alerts",
                            base.path().trim_end_matches('/')
                        ))
                        .map_err(|e| e.to_string())?;
                    http::post(&url, &headers, body).await.map(drop)
                }
                NotifyConfig::Command(c) => command::run(c, n, cx).await,
                NotifyConfig::Email(e) => email::send(e, self.secret()?, n, cx).await,
            }
        };
        let timeout = self.config.timeout();
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }
}

/// `sha256=HEX` of the body under `key`.
pub fn sign(key: &Secret, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Alertmanager's `POST /api/v2/alerts` body: one alert whose labels
/// identify it (`alertname` = the rule), resolved by an `endsAt` in the
/// past.
fn alertmanager_body(n: &Notification, cx: &Context) -> serde_json::Value {
    let mut labels: BTreeMap<String, String> = n.labels.clone();
    labels.insert("alertname".into(), n.rule.clone());
    labels.insert("severity".into(), n.severity.as_str().into());
    labels.insert("instance".into(), cx.host.clone());
    let mut annotations = BTreeMap::from([
        ("summary".to_string(), n.summary.clone()),
        ("upkeep_id".to_string(), n.id.clone()),
    ]);
    if let Some(run) = n.maintenance_run {
        annotations.insert(
            "during_maintenance".into(),
            format!("during maintenance run {run}"),
        );
    }
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(n.starts_at_ms),
    });
    if let Some(end) = n.ends_at_ms {
        alert["endsAt"] = rfc3339(end).into();
    }
    if let Some(base) = &cx.base_url {
        alert["generatorURL"] = format!("{base}/api/v1/alerts").into();
    }
    serde_json::json!([alert])
}

/// How long a sender waits after its `attempts`-th failure in a row:
/// 1 s doubling up to `cap`, then a random 50–100 % of that, so senders
/// of many agents do not retry in step.
pub fn backoff(attempts: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(20))
        .min(cap);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// What a sender shares with the engine and the web.
pub struct SenderShared {
    pub store: Arc<Mutex<AlertStore>>,
    pub counters: Arc<Counters>,
    pub wake: Arc<Notify>,
    pub context: Context,
    pub retry_cap: Duration,
    /// Events to record (given up notifications): the engine writes them.
    pub events: Arc<Mutex<Vec<crate::store::Event>>>,
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Mutex<AlertStore>>,
    f: impl FnOnce(&AlertStore) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store.lock().expect("alert store lock")))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Delivers `notifier`'s outbox, oldest first, until `stop`.
pub async fn send_loop(notifier: Notifier, shared: Arc<SenderShared>, stop: CancellationToken) {
    let name = notifier.name.clone();
    let max_age = notifier.config.max_age().as_millis() as Ts;
    let mut failures: u32 = 0;
    let mut failing_since: Option<Ts> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let n = name.clone();
        let row = match blocking(&shared.store, move |s| s.next(&n)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(notifier = %name, "reading the outbox: {e}");
                None
            }
        };
        let Some(row) = row else {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
            continue;
        };
        let now = now_ms();
        if now - row.created_ms > max_age {
            give_up(&name, &row, &shared, now).await;
            continue;
        }
        let result = match serde_json::from_str::<Notification>(&row.body) {
            Ok(n) => {
                tokio::select! {
                    r = notifier.deliver(&n, &shared.context) => r,
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => Err(format!("the outbox row does not read: {e}")),
        };
        match result {
            Ok(()) => {
                let id = row.id;
                if let Err(e) = blocking(&shared.store, move |s| s.remove(id)).await {
                    tracing::warn!(notifier = %name, "removing a delivered notification: {e}");
                }
                shared.counters.add(&name, "sent", 1);
                if failing_since.take().is_some() {
                    tracing::info!(notifier = %name, "notifications delivered again");
                }
                failures = 0;
            }
            Err(e) => {
                shared.counters.add(&name, "failed", 1);
                let id = row.id;
                let _ = blocking(&shared.store, move |s| s.attempted(id)).await;
                // Logged once per outage, not on every retry.
                if failing_since.is_none() {
                    tracing::warn!(notifier = %name, id = %row.nid, "delivery failed, retrying: {e}");
                    failing_since = Some(now);
                } else {
                    tracing::debug!(notifier = %name, id = %row.nid, "delivery failed: {e}");
                }
                let wait = backoff(failures, shared.retry_cap);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn give_up(name: &str, row: &OutboxRow, shared: &SenderShared, now: Ts) {
    let id = row.id;
    if let Err(e) = blocking(&shared.store, move |s| s.remove(id)).await {
        tracing::warn!(notifier = %name, "removing a given up notification: {e}");
        return;
    }
    let msg = format!(
        "notifier {name}: notification {} given up after {} attempts over {}",
        row.nid,
        row.attempts,
        humantime::format_duration(Duration::from_secs(((now - row.created_ms) / 1000) as u64))
    );
    tracing::error!("{msg}");
    shared.counters.add(name, "given_up", 1);
    shared
        .counters
        .last_given_up_ms
        .store(now, Ordering::Relaxed);
    shared
        .events
        .lock()
        .expect("events lock")
        .push(crate::store::Event::agent(now, "alerts", msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let cap = Duration::from_secs(60);
        for (attempts, full) in [(0, 1), (1, 2), (3, 8), (6, 60), (30, 60)] {
            let d = backoff(attempts, cap);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = sign(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
