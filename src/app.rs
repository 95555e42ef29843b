//! The running agent: `App::start` opens history, binds the API, and spawns
//! the recorder, one runner per probe and the web server on one task tracker;
//! `App::reload` restarts the probes a new config changes (and only those);
//! `App::stop` drains everything and records a clean stop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::Alerts;
use crate::config::{Config, HostConfig, ProbeConfig};
use crate::live::{Live, ProbeMeta, Reload};
use crate::maintenance::agent::Maintenance;
use crate::probes::runner::{self, Outcome, RunnerStats};
use crate::probes::{self, BuildContext};
use crate::recorder::{Control, Recorder};
use crate::sample::now_ms;
use crate::store::writer::RunInfo;
use crate::web::{self, ReloadReply};

/// Outcomes in flight between probes and the recorder. Each is boxed: the
/// channel keeps a slot per outcome, all allocated at once and touched in
/// turn, so that slots of a pointer cost 16 KiB where slots of a whole
/// `Outcome` became 180 KiB resident once the probes had cycled through
/// them.
const CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Api(String),
    /// `api.token_file` cannot be used (missing, unreadable, too open,
    /// empty): a config problem, as `check-config` reports it.
    #[error("api.token_file: {0}")]
    Token(String),
}

pub struct App {
    config: Config,
    data_dir: PathBuf,
    live: Arc<RwLock<Live>>,
    stats: Arc<RunnerStats>,
    tx: Option<SyncSender<Box<Outcome>>>,
    control: SyncSender<Control>,
    probes_token: CancellationToken,
    probes: TaskTracker,
    /// Each running probe: what it was built from, and its own stop.
    running: HashMap<String, Running>,
    web_token: CancellationToken,
    web: TaskTracker,
    recorder: Option<JoinHandle<()>>,
    recorder_heartbeat: Arc<AtomicU64>,
    reload_requests: Option<tokio::sync::mpsc::Receiver<ReloadReply>>,
    maintenance: Arc<Maintenance>,
    /// `None` when the history file could not be opened at start: alerts
    /// need their outbox.
    alerts: Option<Alerts>,
}

impl App {
    /// Starts the agent. Only the API stops it from starting (a token file
    /// that cannot be used, an address that cannot be bound); a history
    /// file that cannot be opened is retried while the probes run.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        data_dir: PathBuf,
    ) -> Result<App, AppError> {
        // Idle API clients must not starve probes and history of
        // descriptors: take all the kernel allows, and the API's share is
        // capped below it (`web::conn`).
        if let Some(n) = web::conn::raise_fd_limit() {
            tracing::debug!("open-file limit {n}");
        }
        let listener = if config.api.enabled {
            let token = match &config.api.token_file {
                Some(p) => Some(crate::secret::read_token(p).map_err(AppError::Token)?),
                None => None,
            };
            Some((
                web::bind(&config.api.listen).await.map_err(AppError::Api)?,
                token,
            ))
        } else {
            None
        };
        let live = Arc::new(RwLock::new(Live {
            started_ms: now_ms(),
            ..Live::default()
        }));
        let hostname = config.hostname();
        let run = RunInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname.clone(),
            pid: std::process::id(),
        };
        let mut recorder =
            Recorder::new(data_dir.clone(), config.history.clone(), run, live.clone())
                .with_alerts_bound(config.notify.len(), config.alerts.max_outbox);
        match recorder.open() {
            Ok(()) => tracing::info!(
                "history in {}",
                data_dir.join(crate::store::FILE_NAME).display()
            ),
            Err(e) => tracing::error!(
                "history in {} is not available yet: {e}",
                data_dir.display()
            ),
        }
        let recorder_heartbeat = recorder.heartbeat.clone();
        let (tx, rx) = sync_channel::<Box<Outcome>>(CHANNEL);
        let (control, control_rx) = sync_channel::<Control>(64);
        let recorder = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || recorder.run(rx, control_rx))
            .expect("spawning the recorder thread");

        let web_token = CancellationToken::new();
        let web_tracker = TaskTracker::new();
        let stats = Arc::new(RunnerStats::default());
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel::<ReloadReply>(4);
        let maintenance = Maintenance::new(Arc::new(config.clone()), data_dir.clone());
        let api_addr = listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let alerts = match Alerts::start(
            &config,
            data_dir.clone(),
            live.clone(),
            crate::alerts::notify::Context {
                host: hostname.clone(),
                base_url: api_addr.map(|a| format!("http://{a}")),
            },
        ) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!("alerts cannot start without their history tables: {e}");
                None
            }
        };
        if let Some((listener, token)) = listener {
            let addr = listener.local_addr().ok();
            let mut shared = web::Shared::new(
                web::Info {
                    version: env!("CARGO_PKG_VERSION"),
                    hostname,
                    config_path,
                    data_dir: data_dir.clone(),
                },
                live.clone(),
                stats.clone(),
                &config.api,
                token,
                Some(reload_tx),
            )
            .listening_on(addr)
            .with_maintenance(maintenance.clone());
            if let Some(a) = &alerts {
                shared = shared.with_alerts(a.shared());
            }
            let shared = Arc::new(shared);
            web_tracker.spawn(web::serve_with(
                listener,
                shared,
                web::conn::Limits::new(&config.api),
                web_token.clone(),
            ));
            if let Some(a) = addr {
                tracing::info!("api on http://{a}/");
            }
        }
        let mut app = App {
            config: config.clone(),
            data_dir,
            live,
            stats,
            tx: Some(tx),
            control,
            probes_token: CancellationToken::new(),
            probes: TaskTracker::new(),
            running: HashMap::new(),
            web_token,
            web: web_tracker,
            recorder: Some(recorder),
            recorder_heartbeat,
            reload_requests: Some(reload_rx),
            maintenance,
            alerts,
        };
        let all = probe_settings(&config).into_keys().collect();
        app.spawn_probes(&config, &all);
        app.maintenance.start();
        app.live.write().expect("live lock").ready = true;
        Ok(app)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn live(&self) -> Arc<RwLock<Live>> {
        self.live.clone()
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Progress of the runners and the recorder, for the systemd watchdog.
    pub fn progress(&self) -> crate::systemd::Progress {
        crate::systemd::Progress {
            runners: self.stats.clone(),
            recorder: self.recorder_heartbeat.clone(),
        }
    }

    /// Reloads asked for over the API; the caller answers each.
    pub fn take_reload_requests(&mut self) -> Option<tokio::sync::mpsc::Receiver<ReloadReply>> {
        self.reload_requests.take()
    }

    /// Notes the outcome of a reload for the API and `/metrics`.
    pub fn record_reload(&self, result: &Result<(), String>) {
        self.live.write().expect("live lock").last_reload = Some(Reload {
            ts_ms: now_ms(),
            ok: result.is_ok(),
            message: match result {
                Ok(()) => "config reloaded".to_string(),
                Err(e) => e.clone(),
            },
        });
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Publishes every probe of `config` as configured and starts those
    /// named in `start`.
    fn spawn_probes(&mut self, config: &Config, start: &BTreeSet<String>) {
        let tx = self.tx.clone().expect("running");
        let ctx = BuildContext {
            data_dir: self.data_dir.clone(),
            secret_files: config.secret_files(),
        };
        // Building never connects: the probes not started are dropped unused.
        let built = probes::build(config, &ctx);
        let mut configured: Vec<ProbeMeta> = built
            .iter()
            .map(|(spec, _)| ProbeMeta {
                name: spec.name.clone(),
                kind: spec.kind,
                interval_ms: spec.interval.as_millis() as u64,
                timeout_ms: spec.timeout.as_millis() as u64,
            })
            .collect();
        configured.sort_by(|a, b| a.name.cmp(&b.name));
        let roles = config
            .probe
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.common().role?.as_str())))
            .collect();
        let mut live = self.live.write().expect("live lock");
        live.configured = configured;
        live.roles = roles;
        drop(live);
        let mut settings = probe_settings(config);
        for (spec, probe) in built {
            let Some(from) = settings.remove(&spec.name) else {
                continue;
            };
            if !start.contains(&spec.name) {
                continue;
            }
            tracing::info!(probe = %spec.name, kind = spec.kind, interval = ?spec.interval, timeout = ?spec.timeout, "probe started");
            let token = self.probes_token.child_token();
            let (tx, stats) = (tx.clone(), self.stats.clone());
            let name = spec.name.clone();
            let handle = self
                .probes
                .spawn(runner::run(spec, probe, tx, stats, token.clone()));
            self.running.insert(
                name,
                Running {
                    from,
                    token,
                    handle,
                },
            );
        }
    }

    /// Applies a new config's probes: a probe whose table (or `[host]`) and
    /// agent-wide fallbacks are unchanged keeps running as it was (its
    /// schedule, connection and damping: no gap, no restart); a changed one
    /// is stopped and started anew, a removed one stopped and forgotten, a
    /// new one started. History and API settings take effect at the next
    /// start (they own files and sockets); the caller validated `config`.
    pub async fn reload(&mut self, config: Config) {
        if config.history != self.config.history
            || config.api != self.config.api
            || config.agent.data_dir != self.config.agent.data_dir
        {
            tracing::warn!("history, api and data_dir changes take effect at the next start");
        }
        let wanted = probe_settings(&config);
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| wanted.get(*name) != Some(&r.from))
            .map(|(name, _)| name.clone())
            .collect();
        let stopping: Vec<Running> = stale
            .iter()
            .filter_map(|name| self.running.remove(name))
            .collect();
        for r in &stopping {
            r.token.cancel();
        }
        for r in stopping {
            let _ = r.handle.await;
        }
        for name in stale.iter().filter(|n| !wanted.contains_key(*n)) {
            tracing::info!(probe = %name, "probe removed");
            let _ = self.control.try_send(Control::Forget(name.clone()));
        }
        let start: BTreeSet<String> = wanted
            .into_keys()
            .filter(|n| !self.running.contains_key(n))
            .collect();
        self.spawn_probes(&config, &start);
        self.maintenance.reload(Arc::new(config.clone()));
        if let Some(a) = self.alerts.as_mut() {
            a.reload(&config).await;
        }
        self.config = config;
        if stale.is_empty() && start.is_empty() {
            tracing::info!("config reloaded; no probe changed");
        } else {
            tracing::info!(
                restarted_or_removed = stale.len(),
                started = start.len(),
                "config reloaded"
            );
        }
    }

    /// Stops probes and the API, lets the recorder write what is left and
    /// record a clean stop. Gives up waiting after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        self.live.write().expect("live lock").ready = false;
        // Maintenance first: a run ends at its next safe point.
        self.maintenance.stop(grace / 4).await;
        if let Some(a) = self.alerts.take() {
            a.stop(grace / 4).await;
        }
        self.probes_token.cancel();
        self.web_token.cancel();
        self.probes.close();
        self.web.close();
        let drained = async {
            self.probes.wait().await;
            self.web.wait().await;
        };
        if tokio::time::timeout(grace / 2, drained).await.is_err() {
            tracing::warn!("probes or API did not stop within {:?}", grace / 2);
        }
        // The recorder ends when the last sender is gone.
        self.tx.take();
        if let Some(handle) = self.recorder.take() {
            let joined = tokio::task::spawn_blocking(move || handle.join());
            if tokio::time::timeout(grace / 2, joined).await.is_err() {
                tracing::warn!("history writer did not finish within {:?}", grace / 2);
            }
        }
    }
}

/// A running probe: the settings it was built from, its stop, its task.
struct Running {
    from: ProbeSettings,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// What a probe is built from: its own table (`[host]` for the host
/// probe) and the agent-wide settings it falls back on (interval, failure
/// and success thresholds). Equal settings build an equal probe.
#[derive(Debug, Clone, PartialEq)]
struct ProbeSettings {
    table: ProbeTable,
    fallbacks: (Duration, u32, u32),
}

#[derive(Debug, Clone, PartialEq)]
enum ProbeTable {
    Host(HostConfig),
    Probe(ProbeConfig),
}

/// The settings of every probe `config` runs, by name.
fn probe_settings(config: &Config) -> BTreeMap<String, ProbeSettings> {
    let fallbacks = (
        config.agent.interval,
        config.agent.failure_threshold,
        config.agent.success_threshold,
    );
    let host = config.host.enabled.then(|| {
        (
            "host".to_string(),
            ProbeSettings {
                table: ProbeTable::Host(config.host.clone()),
                fallbacks,
            },
        )
    });
    host.into_iter()
        .chain(config.probe.iter().map(|(name, p)| {
            (
                name.clone(),
                ProbeSettings {
                    table: ProbeTable::Probe(p.clone()),
                    fallbacks,
                },
            )
        }))
        .collect()
}
