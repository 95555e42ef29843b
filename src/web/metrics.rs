//! `/metrics`: Prometheus text exposition format 0.0.4.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::State;

pub fn routes(_state: State) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header("", "content-type", "text/plain; version=0.0.4")
                .into_response()
        })
        .boxed()
}
