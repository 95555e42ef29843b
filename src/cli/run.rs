//! `upkeep run`: the agent in the foreground until SIGTERM or SIGINT;
//! SIGHUP and the API's reload route reload the config file. One agent per
//! data dir: `run` holds an exclusive lock on `DATA_DIR/agent.lock` for the
//! life of the process. Called by [`super::dispatch`].

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::Receiver;

use super::{CliError, Context, Where, check_token_file, load_config, token_file_error};
use crate::app::{App, AppError};
use crate::config::Config;
use crate::maintenance::lock::{Flock, FlockError, try_flock};
use crate::systemd::Notifier;

/// SIGTERM/SIGINT: everything flushed and the process gone within this.
const STOP_GRACE: Duration = Duration::from_secs(4);

pub(super) fn run(listen: Option<String>, at: Where) -> Result<(), CliError> {
    let (mut config, source) = load_config(at.config.as_deref())?;
    if let Some(addr) = &listen {
        set_listen(&mut config, addr)?;
    }
    let data_dir = crate::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    match &source {
        Some(p) => tracing::info!("config {}", p.display()),
        None => tracing::info!(
            "no config file: running on built-in defaults (host probe, history, API on loopback)"
        ),
    }
    // A token file `run` would refuse is a config error: found before the
    // lock below makes the data dir, so nothing is made on a bad config.
    check_token_file(&config, source.as_deref())?;
    // Held until `run` returns; the kernel drops it if the process dies.
    let _agent_lock = lock_data_dir(&data_dir)?;
    super::footprint::at_start();
    // Two workers, not one per core: the agent's work is small, but one
    // slow task must not hold up the probes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut app = App::start(config, source.clone(), data_dir)
            .await
            .map_err(|e| match e {
                AppError::Token(why) => token_file_error(source.as_deref(), why),
                e => CliError::runtime(e),
            })?;
        // The API is bound: READY=1 follows once history is open.
        let systemd = Notifier::start(app.live(), app.progress(), app.config());
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut api_reloads = app.take_reload_requests();
        tokio::spawn(super::footprint::settled());
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = reload(&mut app, source.as_deref(), listen.as_deref(), &systemd).await;
                }
                Some(reply) = next_request(&mut api_reloads) => {
                    let result = reload(&mut app, source.as_deref(), listen.as_deref(), &systemd).await;
                    let _ = reply.send(result);
                }
            }
        }
        tracing::info!("stopping");
        systemd.stopping();
        app.stop(STOP_GRACE).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// `--listen`: the API's address instead of `[api] listen`, checked as
/// that setting is (an address:port; a non-loopback one only with a token
/// file). A bad one is a usage error naming the flag.
fn set_listen(config: &mut Config, addr: &str) -> Result<(), CliError> {
    config.api.listen = addr.to_string();
    let problems: Vec<String> = config
        .validate()
        .into_iter()
        .filter(|(path, _)| path.len() == 2 && path[0] == "api" && path[1] == "listen")
        .map(|(_, why)| why)
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--listen: {}",
            problems
                .join("; ")
                .replace("set api.token_file too", "set api.token_file in the config")
        )))
    }
}

/// Takes the data dir for this agent alone, or says who has it. A second
/// agent on the same history would end the first one's run in its records
/// and spoil the coverage figures of both. Read commands take no lock.
///
/// A data dir that cannot be written now (read-only, full) does not stop
/// the agent: it starts and history waits, as it does without the lock.
/// The lock is then not held, and a warning says so.
fn lock_data_dir(dir: &Path) -> Result<Option<File>, CliError> {
    let path = dir.join("agent.lock");
    let note = || {
        format!(
            "pid {} (since {})",
            std::process::id(),
            crate::fmt::rfc3339(crate::sample::now_ms())
        )
    };
    let tried = std::fs::create_dir_all(dir)
        .map_err(FlockError::Open)
        .and_then(|()| try_flock(&path, note));
    match tried {
        Ok(Flock::Taken(file)) => Ok(Some(file)),
        Ok(Flock::Busy(holder)) => Err(CliError::runtime(format!(
            "data dir {} is in use by upkeep {}",
            dir.display(),
            if holder.is_empty() {
                "(holder unknown)"
            } else {
                &holder
            }
        ))),
        Err(FlockError::Open(e)) => {
            tracing::warn!(
                "cannot open {}: {e}; running without the one-agent-per-data-dir lock",
                path.display()
            );
            Ok(None)
        }
        Err(FlockError::Lock(e)) => {
            tracing::warn!(
                "cannot lock {}: {e}; running without the one-agent-per-data-dir lock",
                path.display()
            );
            Ok(None)
        }
    }
}

/// The next reload request from the API; never, when the API takes none.
async fn next_request<T>(requests: &mut Option<Receiver<T>>) -> Option<T> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads the config file into the running agent; on any error the
/// running config stays. The outcome is logged and kept for the API.
///
/// `--listen`, when given, stays in force over the reloaded file's
/// `[api] listen` (the API is not rebound on reload anyway).
async fn reload(
    app: &mut App,
    source: Option<&Path>,
    listen: Option<&str>,
    systemd: &Notifier,
) -> Result<(), String> {
    let result = match source {
        Some(p) => match Config::load(p)
            .map_err(|e| e.to_string())
            .and_then(|mut c| match listen {
                Some(addr) => set_listen(&mut c, addr)
                    .map(|()| c)
                    .map_err(|e| e.to_string()),
                None => Ok(c),
            }) {
            Ok(c) => {
                app.reload(c).await;
                systemd.reconfigured(app.config());
                Ok(())
            }
            Err(e) => {
                tracing::error!("config reload rejected, the running config stays:\n{e}");
                Err(format!(
                    "config reload rejected, the running config stays: {e}"
                ))
            }
        },
        None => {
            tracing::warn!("reload: no config file to reload");
            Err("no config file to reload: the agent runs on built-in defaults".to_string())
        }
    };
    app.record_reload(&result);
    result
}
