//! Connections that probes and maintenance tasks share, one module per
//! server kind: where and as whom to connect (settings a probe's config
//! lends), the password read from its file only when connecting, errors
//! that name the server and never the secret. A task reaches its server
//! through here, never through another kind's internals. Nothing here
//! knows of probes, tasks, the web layer or the history file.

pub mod postgres;
pub mod redis;

/// A failed step: the message callers show, and the error that caused it,
/// kept so that a caller can tell the agent's own faults (out of file
/// descriptors) from the server's by walking `source`.
#[derive(Debug)]
pub struct Failure {
    message: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    pub fn caused_by(
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure {
            message: message.into(),
            cause: Some(Box::new(cause)),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            cause: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_string())
    }
}
