//! `upkeep run`: the agent in the foreground until SIGTERM or SIGINT;
//! SIGHUP and the API's reload route reload the config file. Called by
//! [`super::dispatch`].

use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::Receiver;

use super::{CliError, Context, Where, load_config, token_file_error};
use crate::app::{App, AppError};
use crate::config::Config;
use crate::systemd::Notifier;

/// SIGTERM/SIGINT: everything flushed and the process gone within this.
const STOP_GRACE: Duration = Duration::from_secs(4);

pub(super) fn run(at: Where) -> Result<(), CliError> {
    let (config, source) = load_config(at.config.as_deref())?;
    let data_dir = crate::paths::data_dir(at.data_dir.as_deref(), config.agent.data_dir.as_deref());
    match &source {
        Some(p) => tracing::info!("config {}", p.display()),
        None => tracing::info!(
            "no config file: running on built-in defaults (host probe, history, API on loopback)"
        ),
    }
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
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = reload(&mut app, source.as_deref(), &systemd).await;
                }
                Some(reply) = next_request(&mut api_reloads) => {
                    let result = reload(&mut app, source.as_deref(), &systemd).await;
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

/// The next reload request from the API; never, when the API takes none.
async fn next_request<T>(requests: &mut Option<Receiver<T>>) -> Option<T> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads the config file into the running agent; on any error the
/// running config stays. The outcome is logged and kept for the API.
async fn reload(app: &mut App, source: Option<&Path>, systemd: &Notifier) -> Result<(), String> {
    let result = match source {
        Some(p) => match Config::load(p) {
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
