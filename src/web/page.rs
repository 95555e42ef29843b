//! The status page at `/`, with its assets embedded in the binary.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::State;

pub fn routes(_state: State) -> BoxedFilter<(Response,)> {
    warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::html("").into_response())
        .boxed()
}
