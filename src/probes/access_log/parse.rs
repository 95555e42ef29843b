//! Pure parsers of access-log lines: nginx/Apache "combined" with an optional
//! trailing request-time field, and JSON lines with configurable field names.
//! Hot path: the combined parser scans bytes once and allocates nothing.

/// What one line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub status: u16,
    /// Request time in seconds, when the line carries one.
    pub seconds: Option<f64>,
}

/// Unit of a request-time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// nginx `$request_time`.
    #[default]
    S,
    Ms,
    /// Apache `%D`.
    Us,
}

impl TimeUnit {
    fn to_seconds(self, v: f64) -> f64 {
        match self {
            TimeUnit::S => v,
            TimeUnit::Ms => v / 1e3,
            TimeUnit::Us => v / 1e6,
        }
    }
}

/// Parses `addr ident user [time] "request" status bytes "referer" "agent" [time]`.
/// The referer/agent pair and the trailing request time are optional (common
/// log format lines parse too). `None` for a malformed line.
pub fn combined(line: &[u8], unit: TimeUnit) -> Option<Line> {
    // The timestamp ends at the first "] " after its '['.
    let open = memchr(b'[', line, 0)?;
    let close = memchr(b']', line, open)?;
    let mut i = close + 1;
    i = skip_spaces(line, i);
    i = skip_quoted(line, i)?;
    i = skip_spaces(line, i);
    let (status, next) = number(line, i)?;
    if !(100..=599).contains(&status) {
        return None;
    }
    i = skip_spaces(line, next);
    // Bytes sent: digits or '-'.
    if line.get(i) == Some(&b'-') {
        i += 1;
    } else {
        i = number(line, i)?.1;
    }
    i = skip_spaces(line, i);
    if line.get(i) == Some(&b'"') {
        i = skip_quoted(line, i)?;
        i = skip_spaces(line, i);
        i = skip_quoted(line, i)?;
        i = skip_spaces(line, i);
    }
    let rest = trim_end(&line[i.min(line.len())..]);
    let seconds = if rest.is_empty() || rest == b"-" {
        None
    } else {
        let v: f64 = std::str::from_utf8(rest).ok()?.parse().ok()?;
        if !v.is_finite() || v < 0.0 {
            return None;
        }
        Some(unit.to_seconds(v))
    };
    Some(Line {
        status: status as u16,
        seconds,
    })
}

/// Parses one JSON object per line; `status_field` is required (a number or
/// a numeric string), `time_field` optional.
pub fn json(line: &[u8], status_field: &str, time_field: &str, unit: TimeUnit) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let num = |f: &str| -> Option<f64> {
        match v.get(f)? {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let status = num(status_field)?;
    if !(100.0..=599.0).contains(&status) || status.fract() != 0.0 {
        return None;
    }
    let seconds = num(time_field)
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(|t| unit.to_seconds(t));
    Some(Line {
        status: status as u16,
        seconds,
    })
}

fn memchr(b: u8, s: &[u8], from: usize) -> Option<usize> {
    s.get(from..)?
        .iter()
        .position(|&c| c == b)
        .map(|p| p + from)
}

fn skip_spaces(s: &[u8], mut i: usize) -> usize {
    while s.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// Skips a double-quoted field starting at `i` (backslash escapes allowed);
/// returns the index after the closing quote.
fn skip_quoted(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    while j < s.len() {
        match s[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

fn number(s: &[u8], i: usize) -> Option<(u32, usize)> {
    let mut j = i;
    let mut v: u32 = 0;
    while let Some(&c) = s.get(j) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u32)?;
        j += 1;
    }
    (j > i).then_some((v, j))
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && matches!(s[end - 1], b' ' | b'\r' | b'\n' | b'\t') {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = r#"203.0.113.9 - - [28/Nov/2026:10:00:01 +0000] "GET /api/v1/orders?id=7 HTTP/1.1" 200 512 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)" 0.023"#;

    #[test]
    fn combined_with_request_time() {
        assert_eq!(
            combined(NGINX.as_bytes(), TimeUnit::S),
            Some(Line {
                status: 200,
                seconds: Some(0.023)
            })
        );
    }

    #[test]
    fn combined_without_request_time_and_common_format() {
        let l = r#"::1 - alice [28/Nov/2026:10:00:01 +0000] "POST /login HTTP/2.0" 503 - "-" "curl/8.0""#;
        assert_eq!(
            combined(l.as_bytes(), TimeUnit::S),
            Some(Line {
                status: 503,
                seconds: None
            })
        );
        let common = r#"10.0.0.1 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.0" 404 0"#;
        assert_eq!(
            combined(common.as_bytes(), TimeUnit::S).unwrap().status,
            404
        );
    }

    #[test]
    fn apache_microseconds_and_escaped_quotes() {
        let l = r#"1.2.3.4 - - [28/Nov/2026:10:00:01 +0000] "GET /a\"b HTTP/1.1" 200 10 "-" "agent \"x\"" 1500"#;
        assert_eq!(
            combined(l.as_bytes(), TimeUnit::Us),
            Some(Line {
                status: 200,
                seconds: Some(0.0015)
            })
        );
    }

    #[test]
    fn malformed_lines_are_none() {
        for l in [
            "",
            "garbage",
            r#"1.2.3.4 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" abc 10"#,
            r#"1.2.3.4 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 999 10"#,
            r#"1.2.3.4 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1 200 10"#,
            r#"1.2.3.4 - - [28/Nov/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 10 "-" "ua" fast"#,
        ] {
            assert_eq!(combined(l.as_bytes(), TimeUnit::S), None, "{l}");
        }
    }

    #[test]
    fn json_lines_with_configured_fields() {
        let l = br#"{"ts":"2026-11-28T10:00:01Z","code":"502","dur_ms":120.5}"#;
        assert_eq!(
            json(l, "code", "dur_ms", TimeUnit::Ms),
            Some(Line {
                status: 502,
                seconds: Some(0.1205)
            })
        );
        assert_eq!(
            json(br#"{"code":200}"#, "code", "dur_ms", TimeUnit::Ms),
            Some(Line {
                status: 200,
                seconds: None
            })
        );
        assert_eq!(json(br#"{"status":200}"#, "code", "t", TimeUnit::S), None);
        assert_eq!(json(b"not json", "code", "t", TimeUnit::S), None);
    }
}
