//! `upkeep alerts` (the alerts on record, firing first) and `upkeep
//! silence add|list|expire`, over the history file: they work while the
//! agent runs (it picks up a new silence at its next evaluation) and
//! without it.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Subcommand;

use super::report::Format;
use super::{CliError, Where, config_and_data_dir};
use crate::alerts::AlertView;
use crate::alerts::rules::{Alert, State, match_labels};
use crate::fmt::rfc3339;
use crate::sample::now_ms;
use crate::store::Reader;
use crate::store::alerts::AlertStore;

#[derive(Subcommand)]
pub enum SilenceAction {
    /// Silences alerts whose labels match every `--match NAME=VALUE`
    /// (labels: probe, task, series, condition, rule, severity); prints
    /// the new silence's id.
    Add {
        #[arg(long = "match", value_name = "NAME=VALUE", required = true)]
        matchers: Vec<String>,
        /// How long, such as 2h (1m to 90d).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        length: Duration,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// Silences not yet ended.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Ends a silence now.
    Expire { id: i64 },
}

fn reader(at: &Where) -> Result<Reader, CliError> {
    let (_, dir) = config_and_data_dir(at)?;
    Reader::open(&dir).map_err(CliError::runtime)
}

/// The alerts on record, as the agent last wrote them.
pub(super) fn alerts(format: Format, at: &Where) -> Result<(), CliError> {
    let r = reader(at)?;
    let now = now_ms();
    let silences = r.silences(now).map_err(CliError::runtime)?;
    let mut views: Vec<AlertView> = r
        .alerts()
        .map_err(CliError::runtime)?
        .iter()
        .filter_map(|row| serde_json::from_str::<Alert>(&row.data).ok())
        .filter(|a| a.state != State::Resolved)
        .map(|a| {
            let labels = match_labels(&a);
            let silenced = silences
                .iter()
                .any(|s| s.active_at(now) && s.matches(&labels));
            AlertView::of(&a, silenced)
        })
        .collect();
    views.sort_by_key(AlertView::order_key);
    let mut out = String::new();
    match format {
        Format::Json => {
            let docs: Vec<serde_json::Value> = views
                .iter()
                .map(|v| {
                    let mut d = serde_json::to_value(v).expect("serializable");
                    d["since"] = rfc3339(v.since_ms).into();
                    d
                })
                .collect();
            out = serde_json::to_string_pretty(&serde_json::json!({ "alerts": docs }))
                .expect("serializable");
            out.push('\n');
        }
        Format::Csv => {
            out.push_str("state,severity,rule,since,silenced,summary\n");
            for v in &views {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},\"{}\"",
                    v.state,
                    v.severity.as_str(),
                    v.rule,
                    rfc3339(v.since_ms),
                    v.silenced,
                    v.summary.replace('"', "\"\"")
                );
            }
        }
        Format::Table => {
            if views.is_empty() {
                out.push_str("no alerts\n");
            }
            for v in &views {
                let mark = match (v.state, v.severity.as_str()) {
                    ("firing", "critical") => "✖",
                    ("firing", _) => "▲",
                    _ => "…",
                };
                let _ = writeln!(
                    out,
                    "{mark} {:<8} {:<8} {:<24} since {}{}  {}",
                    v.state,
                    v.severity.as_str(),
                    v.rule,
                    rfc3339(v.since_ms),
                    if v.silenced { " (silenced)" } else { "" },
                    v.summary
                );
            }
        }
    }
    print!("{out}");
    Ok(())
}

pub(super) fn silence(action: SilenceAction, at: &Where) -> Result<(), CliError> {
    let now = now_ms();
    match action {
        SilenceAction::Add {
            matchers,
            length,
            comment,
        } => {
            let s = crate::alerts::silence::build(&matchers, length, &comment, "cli", now)
                .map_err(CliError::Usage)?;
            let (_, dir) = config_and_data_dir(at)?;
            let store = AlertStore::open(&dir).map_err(CliError::runtime)?;
            let id = store.add_silence(&s).map_err(CliError::runtime)?;
            println!("{id}");
            Ok(())
        }
        SilenceAction::List { format } => {
            let list = reader(at)?.silences(now).map_err(CliError::runtime)?;
            let mut out = String::new();
            if format == Format::Json {
                out = serde_json::to_string_pretty(&serde_json::json!({ "silences": list }))
                    .expect("serializable");
                out.push('\n');
            } else {
                if list.is_empty() && format == Format::Table {
                    out.push_str("no silences\n");
                }
                for s in &list {
                    let m: Vec<String> =
                        s.matchers.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let _ = writeln!(
                        out,
                        "{}  {}  until {}  by {}  {}",
                        s.id,
                        m.join(","),
                        rfc3339(s.ends_ms),
                        s.created_by,
                        s.comment
                    );
                }
            }
            print!("{out}");
            Ok(())
        }
        SilenceAction::Expire { id } => {
            let (_, dir) = config_and_data_dir(at)?;
            let store = AlertStore::open(&dir).map_err(CliError::runtime)?;
            if store.expire_silence(id, now).map_err(CliError::runtime)? {
                println!("silence {id} expired");
                Ok(())
            } else {
                Err(CliError::runtime(format!("no active silence {id}")))
            }
        }
    }
}
