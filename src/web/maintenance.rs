//! Maintenance over the API: `GET /api/v1/maintenance` (tasks, schedule,
//! next start, window, auto choice, last run), `GET
//! /api/v1/maintenance/runs[/ID]` (the ledger), and, with the bearer token,
//! `POST /api/v1/maintenance/NAME/run` and `POST
//! /api/v1/maintenance/runs/ID/rollback[?force=true]` (both start in the
//! background and answer 202 with the run's id; `force` as the CLI's
//! `rollback --force`: what was written since the run is replaced).

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{ApiError, State, blocking, json_or_error};
use crate::maintenance::ledger::{self, Trigger};
use crate::maintenance::runner::RunError;
use crate::maintenance::view::RunSummary;
use crate::store::Reader;

/// Most runs one request lists, and the default.
pub const MAX_RUNS: usize = 200;
pub const DEFAULT_RUNS: usize = 20;

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "maintenance is not running in this process",
    )
}

fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::NoSuchTask(_) | RunError::NoSuchRun(_) => ApiError::not_found(e.to_string()),
        RunError::Busy(_) | RunError::Refused(_) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        RunError::Ledger(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

type Query = Vec<(String, String)>;

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let s = state.clone();
    let list = warp::path!("api" / "v1" / "maintenance")
        .and(super::get())
        .and(warp::query::<Query>())
        .then(move |q: Query| {
            let s = s.clone();
            async move {
                json_or_error(
                    blocking(move || {
                        super::api::check_params(q, &[])?;
                        let m = s.maintenance.as_ref().ok_or_else(unavailable)?;
                        Ok(m.tasks_document(None))
                    })
                    .await,
                )
            }
        });
    let s = state.clone();
    let runs = warp::path!("api" / "v1" / "maintenance" / "runs")
        .and(super::get())
        .and(warp::query::<Query>())
        .then(move |q: Query| {
            let s = s.clone();
            async move {
                json_or_error(
                    blocking(move || {
                        let p = super::api::check_params(q, &["task", "limit"])?;
                        let limit = match p.get("limit") {
                            None => DEFAULT_RUNS,
                            Some(v) => v
                                .parse::<usize>()
                                .ok()
                                .filter(|n| (1..=MAX_RUNS).contains(n))
                                .ok_or_else(|| {
                                    ApiError::bad_request(format!(
                                        "`limit`: `{v}` is not a whole number from 1 to {MAX_RUNS}"
                                    ))
                                })?,
                        };
                        let reader = reader(&s)?;
                        let rows = reader
                            .maintenance_runs(p.get("task").map(String::as_str), limit)
                            .map_err(|e| {
                                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                            })?;
                        let list: Vec<_> = rows.iter().map(RunSummary::of).collect();
                        Ok(serde_json::json!({ "runs": list }))
                    })
                    .await,
                )
            }
        });
    let s = state.clone();
    let one = warp::path!("api" / "v1" / "maintenance" / "runs" / String)
        .and(super::get())
        .and(super::params(&[]))
        .then(move |id: String, _| {
            let s = s.clone();
            async move {
                json_or_error(
                    blocking(move || {
                        let id = run_id(&id)?;
                        let reader = reader(&s)?;
                        let (row, steps) = reader
                            .maintenance_run(id)
                            .map_err(|e| {
                                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                            })?
                            .ok_or_else(|| {
                                ApiError::not_found(format!("no maintenance run {id}"))
                            })?;
                        let mut doc = ledger::result_document(&row);
                        doc["run"] =
                            serde_json::to_value(RunSummary::of(&row)).expect("serializable");
                        doc["steps"] = serde_json::Value::Array(
                            steps
                                .iter()
                                .map(|st| {
                                    serde_json::json!({
                                        "at": crate::fmt::rfc3339(st.ts_ms),
                                        "step": st.step,
                                        "rows": st.rows,
                                        "duration_ms": st.duration_ms,
                                        "detail": st.detail,
                                    })
                                })
                                .collect(),
                        );
                        Ok(doc)
                    })
                    .await,
                )
            }
        });
    let s = state.clone();
    let run = warp::path!("api" / "v1" / "maintenance" / String / "run")
        .and(warp::post())
        .and(super::params(&[]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(
            move |name: String, _, auth: Option<String>, _body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    if let Err(e) = s.authorized(auth.as_deref()) {
                        return e.into_response();
                    }
                    let Some(m) = s.maintenance.clone() else {
                        return unavailable().into_response();
                    };
                    match m.start_run(&name, Trigger::Api).await {
                        Ok(id) => accepted(id, "started"),
                        Err(e) => run_error(e).into_response(),
                    }
                }
            },
        );
    let s = state;
    let rollback = warp::path!("api" / "v1" / "maintenance" / "runs" / String / "rollback")
        .and(warp::post())
        .and(super::params(&["force"]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(
            move |id: String,
                  params: std::collections::BTreeMap<String, String>,
                  auth: Option<String>,
                  _body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    if let Err(e) = s.authorized(auth.as_deref()) {
                        return e.into_response();
                    }
                    let id = match run_id(&id) {
                        Ok(id) => id,
                        Err(e) => return e.into_response(),
                    };
                    let force = match force_param(params.get("force").map(String::as_str)) {
                        Ok(f) => f,
                        Err(e) => return e.into_response(),
                    };
                    let Some(m) = s.maintenance.clone() else {
                        return unavailable().into_response();
                    };
                    match m.start_rollback(id, Trigger::Api, force).await {
                        Ok(()) => accepted(id, "rollback started"),
                        Err(e) => run_error(e).into_response(),
                    }
                }
            },
        );
    list.or(runs)
        .unify()
        .or(one)
        .unify()
        .or(run)
        .unify()
        .or(rollback)
        .unify()
        .boxed()
}

/// `force=true|false` (absent: false); any other value is refused by name.
fn force_param(v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "`force`: `{}` is not true or false",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

fn accepted(id: i64, what: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({
            "run_id": id,
            "status": what,
            "run": format!("/api/v1/maintenance/runs/{id}"),
        })),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

fn run_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{}` is not a run id",
            s.chars().take(40).collect::<String>()
        ))
    })
}

fn reader(s: &State) -> Result<Reader, ApiError> {
    Reader::open(&s.info.data_dir)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("history: {e}")))
}
