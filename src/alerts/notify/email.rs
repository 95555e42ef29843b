//! The email notifier: one message per notification over SMTP (lettre),
//! `smtp://` upgrading with STARTTLS when the server offers it (required
//! with `?tls=required`), `smtps://` with TLS from the start. The subject
//! names the state, the rule and the host; accepted means the server
//! answered 250 to the message.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Context, Document};
use crate::alerts::config::{EmailConfig, smtp_url};
use crate::alerts::rules::Notification;
use crate::secret::Secret;

/// The subject a notification's mail carries.
pub fn subject(n: &Notification, cx: &Context) -> String {
    let state = if n.state == "resolved" {
        "RESOLVED"
    } else {
        "FIRING"
    };
    format!(
        "[{state}] {} {} on {}: {}",
        n.severity.as_str(),
        n.rule,
        cx.host,
        n.summary
    )
}

pub async fn send(
    c: &EmailConfig,
    password: Option<&Secret>,
    n: &Notification,
    cx: &Context,
) -> Result<(), String> {
    let url = smtp_url(&c.smtp)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let tls = TlsParameters::new(host.clone()).map_err(|e| format!("tls: {e}"))?;
    let required = url
        .query_pairs()
        .any(|(k, v)| k == "tls" && v == "required");
    let (tls, default_port) = match (url.scheme(), required) {
        ("smtps", _) => (Tls::Wrapper(tls), 465),
        (_, true) => (Tls::Required(tls), 587),
        _ => (Tls::Opportunistic(tls), 587),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
        .port(url.port().unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(std::time::Duration::from_secs(30)));
    if let (Some(user), Some(pw)) = (&c.username, password) {
        transport = transport.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
    }
    let body = serde_json::to_string_pretty(&Document::new(n, cx)).expect("serializable");
    let mut message = Message::builder()
        .from(c.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject(n, cx))
        .header(ContentType::TEXT_PLAIN);
    for to in &c.to {
        message = message.to(to.parse().map_err(|e| format!("to `{to}`: {e}"))?);
    }
    let message = message
        .body(format!("{}\n\n{body}\n", n.summary))
        .map_err(|e| e.to_string())?;
    transport
        .build()
        .send(message)
        .await
        .map(drop)
        .map_err(|e| format!("smtp {host}: {e}"))
}
