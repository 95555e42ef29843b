//! Reading `agent.toml` and saying where each problem is: `Config::load`
//! reads at most 1 MiB of a regular file, and `Config::parse` reads each
//! table on its own and turns every toml error and validation key path into
//! a `ConfigIssue` at FILE:LINE:COL, echoed with control characters
//! escaped. `check-config`, `run` and reload call them; `ConfigError` is
//! what they get back.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{Config, ProbeConfig};
use crate::alerts::config::{NotifyConfig, RuleConfig};
use crate::maintenance::config::{MaintenanceSection, SECTION_SETTINGS, TaskConfig};

/// One problem found in a config file, with where it is when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, message) = (escape(&self.file), escape(&self.message));
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: {message}"),
            _ => write!(f, "{file}: {message}"),
        }
    }
}

/// `s` with its unprintable characters escaped (`\n`, `\u{1b}`): names
/// and values from the file are echoed in messages, and a key holding a
/// newline or a terminal escape must not forge a line of output or a log
/// record. Quotes and backslashes stay as they are.
pub fn escape(s: &str) -> Cow<'_, str> {
    let plain = |c: char| matches!(c, '\\' | '\'' | '"') || c.escape_debug().len() == 1;
    if s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if plain(c) {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    Cow::Owned(out)
}

/// Every problem of a config file; the whole file is rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// The largest config file read. A config is a few KiB; a path past this
/// names something else (a log, a device), and reading it whole would
/// grow the agent without bound.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A problem: the byte offset in the text it is at, if known, and what is
/// wrong.
type Bad = (Option<usize>, String);

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = read_capped(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                file: file.clone(),
                line: None,
                col: None,
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` names it in errors. Each
    /// top-level section and each `[probe.NAME]` and `[maintenance.NAME]`
    /// table is read on its own, so that every table's problems are
    /// reported at once, each at the key or value it is about. The whole
    /// config is validated once every table reads: its checks cross tables
    /// (intervals against `[agent]`, tasks against their probes), and a
    /// table that did not read would make them report what is not wrong.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let issue = |offset: Option<usize>, message: String| {
            let pos = offset.map(|o| line_col(text, o));
            ConfigIssue {
                file: file.to_string(),
                line: pos.map(|p| p.0),
                col: pos.map(|p| p.1),
                message,
            }
        };
        let doc = DeTable::parse(text).map_err(|e| ConfigError {
            issues: vec![issue(
                e.span().map(|s| s.start),
                e.message().trim().to_string(),
            )],
        })?;
        let mut bad: Vec<Bad> = Vec::new();
        let config = read_config(doc.get_ref(), &mut bad);
        if bad.is_empty() {
            bad = config
                .validate()
                .into_iter()
                .map(|(path, message)| {
                    let at = span_of(doc.get_ref(), &path);
                    (at, format!("{}: {message}", path.join(".")))
                })
                .collect();
        }
        if bad.is_empty() {
            return Ok(config);
        }
        let mut issues: Vec<ConfigIssue> = bad.into_iter().map(|(o, m)| issue(o, m)).collect();
        issues.sort_by_key(|i| (i.line, i.col));
        Err(ConfigError { issues })
    }
}

/// The text of the regular file at `path`, at most [`MAX_CONFIG_BYTES`].
fn read_capped(path: &Path) -> Result<String, String> {
    // Non-blocking: opening a FIFO with no writer would otherwise wait for
    // ever. It changes nothing for a regular file, the only kind read.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(format!("not a regular file ({what})"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes (1 MiB): not a config file"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
}

/// The config the tables of `root` read as; each one that does not read
/// leaves its default and its problem in `bad`.
fn read_config<'i>(root: &DeTable<'i>, bad: &mut Vec<Bad>) -> Config {
    let mut c = Config::default();
    for (key, value) in root {
        match key.get_ref().as_ref() {
            "agent" => read_into(value, &mut c.agent, bad),
            "api" => read_into(value, &mut c.api, bad),
            "history" => read_into(value, &mut c.history, bad),
            "host" => read_into(value, &mut c.host, bad),
            "alerts" => read_into(value, &mut c.alerts, bad),
            "notify" => match value.get_ref() {
                DeValue::Table(tables) => {
                    for (name, v) in tables {
                        let n = read_tagged(v, bad, "kind", NotifyConfig::deserialize_kind);
                        if let Some(n) = n {
                            c.notify.insert(name.get_ref().to_string(), n);
                        }
                    }
                }
                _ => read_into(value, &mut c.notify, bad),
            },
            "alert" => match value.get_ref() {
                DeValue::Table(tables) => {
                    for (name, v) in tables {
                        let r = read_tagged(v, bad, "when", RuleConfig::deserialize_kind);
                        if let Some(r) = r {
                            c.alert.insert(name.get_ref().to_string(), r);
                        }
                    }
                }
                _ => read_into(value, &mut c.alert, bad),
            },
            "probe" => match value.get_ref() {
                DeValue::Table(probes) => {
                    for (name, v) in probes {
                        let p = read_kind(v, bad, ProbeConfig::deserialize_kind);
                        if let Some(p) = p {
                            c.probe.insert(name.get_ref().to_string(), p);
                        }
                    }
                }
                _ => read_into(value, &mut c.probe, bad),
            },
            "maintenance" => match value.get_ref() {
                DeValue::Table(section) => {
                    // The budget settings read as the section does; every
                    // other key is a task table, read on its own.
                    let (settings, tasks): (Vec<_>, Vec<_>) = section
                        .iter()
                        .partition(|(k, _)| SECTION_SETTINGS.contains(&k.get_ref().as_ref()));
                    let settings: DeTable<'i> = settings
                        .into_iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let settings = Spanned::new(value.span(), DeValue::Table(settings));
                    if let Some(s) = read::<MaintenanceSection>(&settings, bad) {
                        c.maintenance.keep_backups = s.keep_backups;
                        c.maintenance.max_backup_bytes = s.max_backup_bytes;
                    }
                    for (name, v) in tasks {
                        let t = read_kind(v, bad, TaskConfig::deserialize_kind);
                        if let Some(t) = t {
                            c.maintenance.tasks.insert(name.get_ref().to_string(), t);
                        }
                    }
                }
                _ => read_into(value, &mut c.maintenance, bad),
            },
            _ => {
                // Not a section: serde's own message, listing the sections.
                let alone: DeTable<'i> = [(key.clone(), value.clone())].into_iter().collect();
                let alone = Spanned::new(key.span(), DeValue::Table(alone));
                read::<Config>(&alone, bad);
            }
        }
    }
    c
}

/// `value` read as a `T`, or its problem added to `bad`.
fn read<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, bad: &mut Vec<Bad>) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value.clone()))
        .map_err(|e| bad.push(bad_of(&e, value.span().start)))
        .ok()
}

fn read_into<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>, into: &mut T, bad: &mut Vec<Bad>) {
    if let Some(v) = read(value, bad) {
        *into = v;
    }
}

/// A table told apart by `kind = "..."`, read straight into its kind's
/// struct by `by_kind` (see `ProbeConfig::deserialize_kind`), so that each
/// problem keeps its place. Without a string `kind`, serde reads the table
/// as the tagged enum and says what is wrong.
fn read_kind<'i, T: DeserializeOwned>(
    value: &Spanned<DeValue<'i>>,
    bad: &mut Vec<Bad>,
    by_kind: impl Fn(&str, ValueDeserializer<'i>) -> Option<Result<T, toml::de::Error>>,
) -> Option<T> {
    read_tagged(value, bad, "kind", by_kind)
}

/// As [`read_kind`], for tables told apart by another key (`when` for
/// `[alert.NAME]`).
fn read_tagged<'i, T: DeserializeOwned>(
    value: &Spanned<DeValue<'i>>,
    bad: &mut Vec<Bad>,
    tag: &str,
    by_kind: impl Fn(&str, ValueDeserializer<'i>) -> Option<Result<T, toml::de::Error>>,
) -> Option<T> {
    let DeValue::Table(table) = value.get_ref() else {
        return read(value, bad);
    };
    let Some(kind) = table.get(tag) else {
        return read(value, bad);
    };
    let Some(name) = kind.get_ref().as_str() else {
        return read(value, bad);
    };
    let mut rest = table.clone();
    rest.remove(tag);
    let rest = ValueDeserializer::from(Spanned::new(value.span(), DeValue::Table(rest)));
    match by_kind(name, rest) {
        Some(read) => read
            .map_err(|e| bad.push(bad_of(&e, value.span().start)))
            .ok(),
        // An unknown kind: serde's message, listing the kinds, at the
        // kind's value.
        None => T::deserialize(ValueDeserializer::from(value.clone()))
            .map_err(|e| bad.push((Some(kind.span().start), e.message().trim().to_string())))
            .ok(),
    }
}

/// A serde error as a problem, at its own place or else at `fallback`.
fn bad_of(e: &toml::de::Error, fallback: usize) -> Bad {
    let at = e.span().map_or(fallback, |s| s.start);
    (Some(at), e.message().trim().to_string())
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Start offset of the value (or, failing that, the nearest table) at `path`.
fn span_of(table: &toml::de::DeTable<'_>, path: &[String]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.get_key_value(first.as_str())?;
    if rest.is_empty() {
        // A table is pointed at by its name, a value by itself.
        return Some(match value.get_ref() {
            toml::de::DeValue::Table(_) => key.span().start,
            _ => value.span().start,
        });
    }
    match value.get_ref() {
        toml::de::DeValue::Table(t) => span_of(t, rest).or(Some(key.span().start)),
        _ => Some(value.span().start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_touches_only_unprintable_characters() {
        assert!(matches!(escape("db `x` \"q\" \\ é"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\t\u{1b}[0m\u{202e}"),
            "a\\nb\\t\\u{1b}[0m\\u{202e}"
        );
    }

    #[test]
    fn a_table_that_does_not_read_hides_neither_the_others_nor_their_places() {
        let err = Config::parse(
            "a.toml",
            "[probe.a]\nkind = \"tcp\"\naddress = 1\n\n[probe.b]\nkind = \"tcp\"\naddress = \"x:1\"\ntimeout = true\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "a.toml:3:11: invalid type: integer `1`, expected a string\n\
             a.toml:8:11: invalid type: boolean `true`, expected a duration"
        );
    }
}
