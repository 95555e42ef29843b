//! `upkeep access report` (the periodic access review, as a table or
//! JSON) and `upkeep access ack` (acknowledge every change the
//! `access_review` probes have seen, so they turn healthy at their next
//! tick). Both work with or without a running agent: they read and write
//! the probes' files in the data dir. Called by [`super::dispatch`].

use std::fmt::Write as _;

use super::report::Format;
use super::{CliError, Context, Where, config_and_data_dir};
use crate::config::ProbeConfig;
use crate::probes::access_review::{self, AccessReviewConfig, report::Report};
use crate::sample::now_ms;

#[derive(clap::Subcommand)]
pub enum Access {
    /// Each login user with groups, sudo rights, keys and last login, and what changed since the last acknowledged review.
    Report {
        /// Only this access_review probe (default: all).
        #[arg(long)]
        probe: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Acknowledge every access change seen so far: the probes turn healthy at their next tick.
    Ack {
        /// Only this access_review probe (default: all).
        #[arg(long)]
        probe: Option<String>,
    },
}

pub(super) fn access(action: Access, at: &Where) -> Result<(), CliError> {
    let (config, data_dir) = config_and_data_dir(at)?;
    let wanted = match &action {
        Access::Report { probe, .. } | Access::Ack { probe } => probe.clone(),
    };
    let probes: Vec<(&String, &AccessReviewConfig)> = config
        .probe
        .iter()
        .filter_map(|(n, p)| match p {
            ProbeConfig::AccessReview(c) => Some((n, c)),
            _ => None,
        })
        .filter(|(n, _)| wanted.as_ref().is_none_or(|w| w == *n))
        .collect();
    if probes.is_empty() {
        return Err(CliError::Usage(match wanted {
            Some(w) => format!("no probe `{w}` of kind access_review in the config"),
            None => "no probe of kind access_review in the config".into(),
        }));
    }
    match action {
        Access::Ack { .. } => {
            let now = now_ms();
            for (name, _) in probes {
                access_review::acknowledge(&data_dir, name, now)
                    .with_context(|| format!("acknowledging the changes of probe {name}"))?;
                println!(
                    "{name}: changes up to now acknowledged; the probe clears them at its next tick"
                );
            }
            Ok(())
        }
        Access::Report { format, .. } => {
            let reports: Vec<Report> = probes
                .iter()
                .map(|(n, c)| access_review::report::report(n, &c.root, &data_dir, now_ms()))
                .collect();
            match format {
                Format::Json if reports.len() == 1 => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&reports[0]).expect("serializes")
                    )
                }
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("serializes")
                ),
                Format::Table | Format::Csv => {
                    for r in &reports {
                        print!("{}", table(r));
                    }
                }
            }
            Ok(())
        }
    }
}

/// The review as text: users, then keys, then changes.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "access review `{}` at {}", r.probe, r.generated_at);
    for u in &r.unknown {
        let _ = writeln!(out, "UNKNOWN: {u}");
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>6}  {:<18} {:<4}  {:>4}  {:<20}  groups",
        "user", "uid", "shell", "sudo", "keys", "last login"
    );
    for u in &r.users {
        let _ = writeln!(
            out,
            "{:<16} {:>6}  {:<18} {:<4}  {:>4}  {:<20}  {}",
            u.name,
            u.uid,
            u.shell,
            if u.sudo { "yes" } else { "no" },
            u.keys.len(),
            u.last_login.as_deref().unwrap_or("-"),
            u.groups.join(",")
        );
    }
    let keys: Vec<_> = r
        .users
        .iter()
        .flat_map(|u| u.keys.iter().map(move |k| (u, k)))
        .collect();
    if !keys.is_empty() {
        let _ = writeln!(out, "\nkeys");
        for (u, k) in keys {
            let _ = writeln!(
                out,
                "  {:<12} {} {:<10} {:<24} {}{}",
                u.name,
                k.fingerprint,
                k.kind,
                k.comment,
                k.file_modified.as_deref().unwrap_or("-"),
                if k.options { "  (restricted)" } else { "" }
            );
        }
    }
    for u in &r.users {
        for l in &u.key_links {
            let _ = writeln!(
                out,
                "  {}: {} is a link to {} (not read)",
                u.name, l.file, l.target
            );
        }
    }
    let _ = writeln!(
        out,
        "\nchanges since the last acknowledged review ({}):",
        r.acked_at.as_deref().unwrap_or("never acknowledged")
    );
    if r.changes_since_ack.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for c in &r.changes_since_ack {
        let _ = writeln!(out, "  {}  {}", c.at, c.message);
    }
    if r.changes_not_listed > 0 {
        let _ = writeln!(
            out,
            "  and {} older ones not kept word for word",
            r.changes_not_listed
        );
    }
    out
}
