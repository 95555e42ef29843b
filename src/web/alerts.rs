//! Alerts over the API: `GET /api/v1/alerts` (firing first, then pending,
//! each with its rule, labels, since and whether a silence matches it; the
//! outbox's backlog per notifier), `GET /api/v1/silences`, and, with the
//! bearer token, `POST /api/v1/silences` (JSON: `matchers`, `for`,
//! `comment`) and `POST /api/v1/silences/ID/expire`. Silences are written
//! to the history file, where the engine reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{ApiError, State, blocking, json_or_error};
use crate::alerts::{AlertView, AlertsShared};
use crate::fmt::rfc3339;
use crate::sample::now_ms;
use crate::store::alerts::{AlertStore, Silence};

/// One alert as the API shows it.
#[derive(Debug, Serialize)]
pub struct AlertDoc<'a> {
    #[serde(flatten)]
    pub alert: &'a AlertView,
    pub since: String,
    /// The maintenance run the alert fired during, when there is one.
    pub maintenance_run_url: Option<String>,
}

/// The alerts document.
#[derive(Debug, Serialize)]
pub struct AlertsDoc<'a> {
    pub alerts: Vec<AlertDoc<'a>>,
    pub silences: Vec<SilenceDoc<'a>>,
    pub outbox_pending: &'a BTreeMap<String, u64>,
    pub evaluated_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SilenceDoc<'a> {
    #[serde(flatten)]
    pub silence: &'a Silence,
    pub starts_at: String,
    pub ends_at: String,
}

impl<'a> SilenceDoc<'a> {
    pub fn of(s: &'a Silence) -> SilenceDoc<'a> {
        SilenceDoc {
            silence: s,
            starts_at: rfc3339(s.starts_ms),
            ends_at: rfc3339(s.ends_ms),
        }
    }
}

/// What `POST /api/v1/silences` reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    matchers: BTreeMap<String, String>,
    #[serde(rename = "for")]
    length: String,
    comment: String,
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "alerts are not running in this process",
    )
}

fn alerts_of(s: &State) -> Result<std::sync::Arc<AlertsShared>, ApiError> {
    s.alerts.clone().ok_or_else(unavailable)
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("history: {e}"))
}

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state.clone();
    let list = warp::path!("api" / "v1" / "alerts")
        .and(super::get())
        .and(super::params(&[]))
        .map(move |_| {
            let a = match alerts_of(&s) {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            let view = a.view.read().expect("alerts view lock");
            let doc = AlertsDoc {
                alerts: view
                    .alerts
                    .iter()
                    .map(|a| AlertDoc {
                        alert: a,
                        since: rfc3339(a.since_ms),
                        maintenance_run_url: a
                            .maintenance_run
                            .map(|r| format!("/api/v1/maintenance/runs/{r}")),
                    })
                    .collect(),
                silences: view.silences.iter().map(SilenceDoc::of).collect(),
                outbox_pending: &view.outbox_pending,
                evaluated_at: (view.evaluated_ms > 0).then(|| rfc3339(view.evaluated_ms)),
            };
            warp::reply::json(&doc).into_response()
        });
    let s = state.clone();
    let silences = warp::path!("api" / "v1" / "silences")
        .and(super::get())
        .and(super::params(&[]))
        .then(move |_| {
            let s = s.clone();
            async move {
                json_or_error(
                    blocking(move || {
                        let a = alerts_of(&s)?;
                        let reader =
                            crate::store::Reader::open(&a.data_dir).map_err(store_error)?;
                        let list = reader.silences(now_ms()).map_err(store_error)?;
                        let docs: Vec<SilenceDoc<'_>> = list.iter().map(SilenceDoc::of).collect();
                        Ok(serde_json::json!({ "silences": docs }))
                    })
                    .await,
                )
            }
        });
    let s = state.clone();
    let add = warp::path!("api" / "v1" / "silences")
        .and(warp::post())
        .and(super::params(&[]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(move |_, auth: Option<String>, body: bytes::Bytes| {
            let s = s.clone();
            async move {
                if let Err(e) = s.authorized(auth.as_deref()) {
                    return e.into_response();
                }
                let r = blocking(move || {
                    let a = alerts_of(&s)?;
                    let req: NewSilence = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::bad_request(format!(
                            "body: {e} (expected {{\"matchers\": {{\"probe\": \"database\"}}, \"for\": \"2h\", \"comment\": \"...\"}})"
                        ))
                    })?;
                    let length = humantime::parse_duration(&req.length).map_err(|e| {
                        ApiError::bad_request(format!("`for`: {e}"))
                    })?;
                    let matchers: Vec<String> =
                        req.matchers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let silence =
                        crate::alerts::silence::build(&matchers, length, &req.comment, "api", now_ms())
                            .map_err(ApiError::bad_request)?;
                    let store = AlertStore::open(&a.data_dir).map_err(store_error)?;
                    let id = store.add_silence(&silence).map_err(store_error)?;
                    Ok(serde_json::json!({
                        "id": id,
                        "ends_at": rfc3339(silence.ends_ms),
                    }))
                })
                .await;
                match r {
                    Ok(v) => warp::reply::with_status(warp::reply::json(&v), StatusCode::CREATED)
                        .into_response(),
                    Err(e) => e.into_response(),
                }
            }
        });
    let s = state;
    let expire = warp::path!("api" / "v1" / "silences" / String / "expire")
        .and(warp::post())
        .and(super::params(&[]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(
            move |id: String, _, auth: Option<String>, _body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    if let Err(e) = s.authorized(auth.as_deref()) {
                        return e.into_response();
                    }
                    json_or_error(
                        blocking(move || {
                            let a = alerts_of(&s)?;
                            let id =
                                id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                                    ApiError::bad_request(format!(
                                        "`{}` is not a silence id",
                                        id.chars().take(40).collect::<String>()
                                    ))
                                })?;
                            let store = AlertStore::open(&a.data_dir).map_err(store_error)?;
                            if store.expire_silence(id, now_ms()).map_err(store_error)? {
                                Ok(serde_json::json!({ "id": id, "status": "expired" }))
                            } else {
                                Err(ApiError::not_found(format!("no active silence {id}")))
                            }
                        })
                        .await,
                    )
                }
            },
        );
    list.or(silences)
        .unify()
        .or(add)
        .unify()
        .or(expire)
        .unify()
        .boxed()
}
