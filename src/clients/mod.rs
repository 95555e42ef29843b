//! Connections that probes and maintenance tasks share, one module per
//! server kind: where and as whom to connect (settings a probe's config
//! lends), the password read from its file only when connecting, errors
//! that name the server and never the secret. A task reaches its server
//! through here, never through another kind's internals. Nothing here
//! knows of probes, tasks, the web layer or the history file.

pub mod postgres;
pub mod redis;
