//! `expect_status`: which HTTP status codes count as healthy. Written as one
//! code (`200`), one class (`"2xx"`) or a list mixing both
//! (`[200, 204]`, `["2xx", 304]`); a bad entry is a config error at its
//! line and column.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Code(u16),
    /// The hundreds digit: 2 is 200-299.
    Class(u16),
}

/// The healthy status codes; default any 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(Vec<Entry>);

impl Default for ExpectStatus {
    fn default() -> Self {
        ExpectStatus(vec![Entry::Class(2)])
    }
}

impl ExpectStatus {
    pub fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|e| match *e {
            Entry::Code(c) => c == status,
            Entry::Class(h) => status / 100 == h,
        })
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == self.0.len() { " or " } else { ", " })?;
            }
            match e {
                Entry::Code(c) => write!(f, "{c}")?,
                Entry::Class(h) => write!(f, "{h}xx")?,
            }
        }
        Ok(())
    }
}

fn code<E: de::Error>(v: i64) -> Result<Entry, E> {
    match u16::try_from(v) {
        Ok(c) if (100..=599).contains(&c) => Ok(Entry::Code(c)),
        _ => Err(E::custom(format!(
            "{v} is not an HTTP status code (100-599)"
        ))),
    }
}

fn class_or_code<E: de::Error>(s: &str) -> Result<Entry, E> {
    if let [h @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] = s.as_bytes() {
        return Ok(Entry::Class(u16::from(h - b'0')));
    }
    match s.parse::<i64>() {
        Ok(v) => code(v),
        Err(_) => Err(E::custom(format!(
            "`{s}` is not a status code or class such as \"2xx\""
        ))),
    }
}

/// Reads one entry, or (at the top level only) a list of entries.
struct EntryVisitor {
    list_allowed: bool,
}

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Vec<Entry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a status code such as 200, a class such as \"2xx\"")?;
        if self.list_allowed {
            f.write_str(", or a list of them")?;
        }
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        code(v).map(|e| vec![e])
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        code(i64::try_from(v).unwrap_or(i64::MAX)).map(|e| vec![e])
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        class_or_code(s).map(|e| vec![e])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if !self.list_allowed {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut out = Vec::new();
        while let Some(one) = seq.next_element::<One>()? {
            out.push(one.0);
        }
        if out.is_empty() {
            return Err(de::Error::custom(
                "expect_status must list at least one code",
            ));
        }
        Ok(out)
    }
}

/// One list entry: a code or a class, never a nested list.
struct One(Entry);

impl<'de> Deserialize<'de> for One {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(EntryVisitor {
            list_allowed: false,
        })?;
        Ok(One(v[0]))
    }
}

impl<'de> Deserialize<'de> for ExpectStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor { list_allowed: true })
            .map(ExpectStatus)
    }
}

impl Serialize for ExpectStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in &self.0 {
            match e {
                Entry::Code(c) => seq.serialize_element(c)?,
                Entry::Class(h) => seq.serialize_element(&format!("{h}xx"))?,
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        e: ExpectStatus,
    }

    fn parse(v: &str) -> Result<ExpectStatus, String> {
        toml::from_str::<T>(&format!("e = {v}"))
            .map(|t| t.e)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn codes_classes_and_lists() {
        let any2 = ExpectStatus::default();
        assert!(any2.matches(200) && any2.matches(299) && !any2.matches(301));
        let e = parse("[200, 204]").unwrap();
        assert!(e.matches(204) && !e.matches(201));
        assert_eq!(e.to_string(), "200 or 204");
        let e = parse(r#"["2xx", 304, "401"]"#).unwrap();
        assert!(e.matches(250) && e.matches(304) && e.matches(401) && !e.matches(500));
        assert_eq!(e.to_string(), "2xx, 304 or 401");
        assert_eq!(parse(r#""3xx""#).unwrap().to_string(), "3xx");
        assert_eq!(parse("503").unwrap().to_string(), "503");
        let back = toml::to_string(&T2 {
            e: parse(r#"["2xx", 304]"#).unwrap(),
        })
        .unwrap();
        assert_eq!(back.trim(), r#"e = ["2xx", 304]"#);
    }

    #[derive(Serialize)]
    struct T2 {
        e: ExpectStatus,
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert!(parse("99").unwrap_err().contains("not an HTTP status code"));
        assert!(
            parse(r#""6xx""#)
                .unwrap_err()
                .contains("not a status code or class")
        );
        assert!(parse("[]").unwrap_err().contains("at least one"));
        assert!(
            parse("[[200]]")
                .unwrap_err()
                .contains("invalid type: sequence")
        );
        assert!(
            parse("true")
                .unwrap_err()
                .contains("a status code such as 200")
        );
    }
}
