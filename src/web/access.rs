//! `POST /api/v1/access/ack[?probe=NAME]` (bearer token): acknowledges
//! every access change the `access_review` probes have seen, as `upkeep
//! access ack` does; each probe clears them at its next tick.

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{ApiError, State};
use crate::probes::ProbeKind;
use crate::probes::access_review;

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "access" / "ack")
        .and(warp::post())
        .and(super::params(&["probe"]))
        .and(warp::header::optional::<String>("authorization"))
        .and(super::body())
        .then(
            move |q: std::collections::BTreeMap<String, String>,
                  auth: Option<String>,
                  _body: bytes::Bytes| {
                let s = state.clone();
                async move {
                    if let Err(e) = s.authorized(auth.as_deref()) {
                        return e.into_response();
                    }
                    match ack(&s, q.get("probe").map(String::as_str)) {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    }
                }
            },
        )
        .boxed()
}

fn ack(s: &State, only: Option<&str>) -> Result<Response, ApiError> {
    let names: Vec<String> = s
        .live
        .read()
        .expect("live lock")
        .configured
        .iter()
        .filter(|p| p.kind == ProbeKind::AccessReview.name())
        .filter(|p| only.is_none_or(|o| o == p.name))
        .map(|p| p.name.clone())
        .collect();
    if names.is_empty() {
        return Err(ApiError::not_found(match only {
            Some(o) => format!("no probe `{o}` of kind access_review"),
            None => "no probe of kind access_review".into(),
        }));
    }
    let now = crate::sample::now_ms();
    for n in &names {
        access_review::acknowledge(&s.info.data_dir, n, now).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("acknowledging the changes of probe {n}: {e}"),
            )
        })?;
    }
    Ok(warp::reply::json(&serde_json::json!({
        "acknowledged": names,
        "at": crate::fmt::rfc3339(now),
    }))
    .into_response())
}
