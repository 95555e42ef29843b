//! Reading `agent.toml` and saying where each problem is: `Config::load` and
//! `Config::parse` turn a toml error or a validation key path into a
//! `ConfigIssue` at FILE:LINE:COL. `check-config`, `run` and reload call
//! them; `ConfigError` is what they get back.

use std::fmt;
use std::path::Path;

use super::Config;

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
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
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

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                file: file.clone(),
                line: None,
                col: None,
                message: format!("cannot read config file: {e}"),
            }],
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            ConfigError {
                issues: vec![ConfigIssue {
                    file: file.to_string(),
                    line,
                    col,
                    message: e.message().trim().to_string(),
                }],
            }
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let doc = toml::de::DeTable::parse(text).ok();
        let mut issues: Vec<ConfigIssue> = problems
            .into_iter()
            .map(|(path, message)| {
                let pos = doc
                    .as_ref()
                    .and_then(|d| span_of(d.get_ref(), &path))
                    .map(|start| line_col(text, start));
                ConfigIssue {
                    file: file.to_string(),
                    line: pos.map(|p| p.0),
                    col: pos.map(|p| p.1),
                    message: format!("{}: {}", path.join("."), message),
                }
            })
            .collect();
        issues.sort_by_key(|i| (i.line, i.col));
        Err(ConfigError { issues })
    }
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
