//! The status page at `/` and its assets at `/assets/<name>`, called by
//! [`super::routes`] (which adds the request gate, the security headers and
//! the 404 answer).
//!
//! The page is one server-rendered document that is complete without
//! JavaScript: host summary, every configured probe with its status (colour,
//! symbol and word), latency, reason, uptime (per window and per day) and a
//! sparkline of the recent values held in memory, the maintenance tasks and
//! their recent runs, and the recent events.
//! `page.js` refreshes the parts marked `data-live` every 10 s without a
//! reload and draws the history chart from `/api/v1/query`. The
//! Content-Security-Policy allows no inline script or style, so bars and
//! sparklines are SVG attributes and colours are classes.
//!
//! Markup is written with maud, which escapes every interpolated value:
//! probe reasons come from the services watched and may hold any text.
//! Assets live in a fixed table compiled into the binary; a URL never names
//! a file, so no path can leave it.
//!
//! The rendered page is kept for a second in `Shared::page_cache`; rendering
//! (history reads included) runs on the blocking pool.
//!
//! Layout: this file holds the routes, the cache and the asset table;
//! `view` gathers what one render shows, `markup` writes the document,
//! `probe` a probe's row and its small charts, `maintenance` the tasks and
//! their runs, `format` the figures.

use std::time::Duration;

use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{State, blocking};
use crate::sample::{Ts, now_ms};

mod alerts;
mod format;
mod maintenance;
mod markup;
mod probe;
mod view;

#[cfg(test)]
mod tests;

/// How long a rendered page is served again.
const PAGE_CACHE: Duration = Duration::from_secs(1);

/// A file served at `/assets/<name>`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Every asset. The chart library is uPlot 1.6.32 from the npm package
/// `uplot` (MIT, `uPlot.LICENSE`), its `dist/uPlot.iife.min.js` and
/// `dist/uPlot.min.css` unchanged.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "page.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/page.css"),
    },
    Asset {
        name: "page.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/page.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/uPlot.LICENSE"),
    },
    Asset {
        name: "icon-healthy.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon-healthy.svg"),
    },
    Asset {
        name: "icon-degraded.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon-degraded.svg"),
    },
    Asset {
        name: "icon-unhealthy.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon-unhealthy.svg"),
    },
    Asset {
        name: "icon-unknown.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon-unknown.svg"),
    },
];

pub fn find_asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    // `series` and `range` pick the chart (the script reads them; the form
    // sends them without it); asset URLs carry `v`, the version.
    let page = warp::path::end()
        .and(super::get())
        .and(super::params(&["series", "range"]))
        .then(move |_| page(state.clone()));
    let assets = warp::path("assets")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(super::get())
        .and(super::params(&["v"]))
        .and_then(|name: String, _| async move {
            find_asset(&name)
                .map(asset_response)
                .ok_or_else(warp::reject::not_found)
        });
    page.or(assets).unify().boxed()
}

fn asset_response(a: &'static Asset) -> Response {
    let mut r = Response::new(a.bytes.into());
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(a.content_type));
    // URLs carry `?v=<version>`, so an upgrade is never hidden by this.
    h.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn html_response(body: bytes::Bytes) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The page, rendered at most once per [`PAGE_CACHE`]. The request that
/// finds it stale re-stamps the old page and renders; the others are served
/// the old page meanwhile instead of rendering it again.
async fn page(state: State) -> Response {
    let stale = {
        let mut cache = state.page_cache.lock().expect("page cache lock");
        if let Some(body) = cache.fresh(PAGE_CACHE) {
            return html_response(body);
        }
        let stale = cache.fresh(Duration::MAX);
        if let Some(b) = &stale {
            cache.put(b.clone());
        }
        stale
    };
    let s = state.clone();
    match blocking(move || Ok(render(&s, now_ms()))).await {
        Ok(body) => {
            state
                .page_cache
                .lock()
                .expect("page cache lock")
                .put(body.clone());
            html_response(body)
        }
        Err(e) => match stale {
            Some(body) => html_response(body),
            None => e.into_response(),
        },
    }
}

/// Renders the page from the live state and, where it opens, history.
pub fn render(s: &State, now: Ts) -> bytes::Bytes {
    let view = view::gather(s, now);
    bytes::Bytes::from(markup::page(&view).into_string())
}
