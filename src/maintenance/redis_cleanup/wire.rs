//! The commands a `redis_cleanup` run sends, as pipelines of single-key
//! commands rather than Lua scripts, so that the server can serve the
//! application between them (a script blocks every other client for as
//! long as it runs): the filters of a plan page (`filter_pipe`), the
//! dumps that fingerprint planned keys (`dump_pipe`), and the chunks that
//! keep a pipeline's answers under [`super::DUMP_CAP`] bytes (`chunks`).
//! The values are fingerprinted here, on the client
//! (`fingerprint`): the server serialises each value once per pass and
//! hashes nothing. Parsing the answers is pure and tested here.

use ::redis::Value;
use sha2::{Digest, Sha256};

use super::DUMP_CAP;

/// Keys per pipeline at most: the answers of one pipeline are read, used
/// and dropped before the next one goes out.
pub const PIPE_KEYS: usize = 128;

/// A 64-bit fingerprint of a value: the first 8 bytes of the SHA-256 of
/// its `DUMP` (which holds the type, the encoding and a checksum).
pub fn fingerprint(dump: &[u8]) -> u64 {
    let d = Sha256::digest(dump);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The plan's filters, as the commands of a filter pipeline ask them.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub types: Vec<String>,
    pub without_ttl: bool,
    /// Idle seconds at least.
    pub idle: Option<u64>,
    /// `MEMORY USAGE` above this many bytes.
    pub larger_than: Option<u64>,
}

/// Per key: `TYPE` (when types are filtered), `PTTL`, `OBJECT IDLETIME`
/// (when idle time is), `MEMORY USAGE`. None of them resets a key's
/// access time.
pub fn filter_pipe(f: &Filters, keys: &[Vec<u8>]) -> ::redis::Pipeline {
    let mut p = ::redis::pipe();
    for k in keys {
        if !f.types.is_empty() {
            p.cmd("TYPE").arg(k.as_slice());
        }
        p.cmd("PTTL").arg(k.as_slice());
        if f.idle.is_some() {
            p.cmd("OBJECT").arg("IDLETIME").arg(k.as_slice());
        }
        p.cmd("MEMORY").arg("USAGE").arg(k.as_slice());
    }
    p
}

/// What the filters say of one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Gone, or filtered out.
    Out,
    /// Passes, with its `MEMORY USAGE` in bytes.
    In(u64),
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::SimpleString(s)) => Some(s),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        Some(Value::Okay) => Some("OK"),
        _ => None,
    }
}

/// Reads a filter pipeline's answers, `keys` keys of them, in the order
/// `filter_pipe` asked.
pub fn filter_answers(f: &Filters, keys: usize, answers: &[Value]) -> Result<Vec<Verdict>, String> {
    let per = 2 + usize::from(!f.types.is_empty()) + usize::from(f.idle.is_some());
    if answers.len() != keys * per {
        return Err(format!(
            "{} answers to the filters of {keys} keys, {} expected",
            answers.len(),
            keys * per
        ));
    }
    Ok(answers
        .chunks(per)
        .map(|a| {
            let mut a = a.iter();
            if !f.types.is_empty() {
                let t = text(a.next()).unwrap_or("none");
                if !f.types.iter().any(|w| w == t) {
                    return Verdict::Out;
                }
            }
            let pttl = int(a.next()).unwrap_or(-2);
            let idle = f.idle.map(|_| int(a.next()));
            let mem = int(a.next());
            if pttl == -2 || (f.without_ttl && pttl != -1) {
                return Verdict::Out;
            }
            if let (Some(min), Some(idle)) = (f.idle, idle)
                && idle.is_none_or(|i| i < min as i64)
            {
                return Verdict::Out;
            }
            let Some(mem) = mem else {
                return Verdict::Out;
            };
            let mem = mem.max(0) as u64;
            if f.larger_than.is_some_and(|l| mem <= l) {
                return Verdict::Out;
            }
            Verdict::In(mem)
        })
        .collect())
}

/// Splits `sizes` (a size hint per key, in order) into ranges whose sizes
/// add up to at most [`DUMP_CAP`] (a larger key alone) and that hold at
/// most [`PIPE_KEYS`] keys.
pub fn chunks(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut held) = (0, 0u64);
    for (i, s) in sizes.iter().enumerate() {
        if i > start && (held + s > DUMP_CAP || i - start >= PIPE_KEYS) {
            out.push(start..i);
            start = i;
            held = 0;
        }
        held += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Per key: `OBJECT IDLETIME` (when `idle`) before `DUMP` (which resets
/// it), then `PTTL`.
pub fn dump_pipe(keys: &[Vec<u8>], idle: bool) -> ::redis::Pipeline {
    let mut p = ::redis::pipe();
    for k in keys {
        if idle {
            p.cmd("OBJECT").arg("IDLETIME").arg(k.as_slice());
        }
        p.cmd("DUMP").arg(k.as_slice());
        p.cmd("PTTL").arg(k.as_slice());
    }
    p
}

/// One key as a dump pipeline found it.
#[derive(Debug, PartialEq)]
pub enum Dumped<'a> {
    Vanished,
    /// Used more recently than the idle filter allows.
    Used,
    /// Its `DUMP` and milliseconds left to live (−1: no expiry).
    Value {
        dump: &'a [u8],
        pttl: i64,
    },
}

/// Reads a dump pipeline's answers (`idle` as asked), `keys` keys of them;
/// `min_idle` in seconds.
pub fn dump_answers(
    keys: usize,
    idle: Option<u64>,
    answers: &[Value],
) -> Result<Vec<Dumped<'_>>, String> {
    let per = 2 + usize::from(idle.is_some());
    if answers.len() != keys * per {
        return Err(format!(
            "{} answers to the dumps of {keys} keys, {} expected",
            answers.len(),
            keys * per
        ));
    }
    answers
        .chunks(per)
        .map(|a| {
            let mut a = a.iter();
            let idle_now = idle.map(|_| int(a.next()));
            let dump = a.next();
            let pttl = int(a.next()).unwrap_or(-2);
            match dump {
                Some(Value::Nil) | None => Ok(Dumped::Vanished),
                Some(Value::BulkString(d)) => {
                    if let (Some(min), Some(now)) = (idle, idle_now)
                        && now.is_none_or(|i| i < min as i64)
                    {
                        return Ok(Dumped::Used);
                    }
                    if pttl == -2 {
                        return Ok(Dumped::Vanished);
                    }
                    Ok(Dumped::Value { dump: d, pttl })
                }
                Some(other) => Err(format!("DUMP answered {other:?}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Value {
        Value::SimpleString(t.into())
    }

    #[test]
    fn filters_read_type_expiry_idle_and_size_in_the_order_asked() {
        let f = Filters {
            types: vec!["string".into(), "hash".into()],
            without_ttl: true,
            idle: Some(60),
            larger_than: Some(100),
        };
        let answers = vec![
            // passes
            s("string"),
            Value::Int(-1),
            Value::Int(61),
            Value::Int(200),
            // wrong type
            s("list"),
            Value::Int(-1),
            Value::Int(61),
            Value::Int(200),
            // has a TTL
            s("hash"),
            Value::Int(5000),
            Value::Int(61),
            Value::Int(200),
            // used recently
            s("string"),
            Value::Int(-1),
            Value::Int(59),
            Value::Int(200),
            // too small
            s("string"),
            Value::Int(-1),
            Value::Int(61),
            Value::Int(100),
            // gone between SCAN and the filters
            s("none"),
            Value::Int(-2),
            Value::Nil,
            Value::Nil,
        ];
        assert_eq!(
            filter_answers(&f, 6, &answers).unwrap(),
            vec![
                Verdict::In(200),
                Verdict::Out,
                Verdict::Out,
                Verdict::Out,
                Verdict::Out,
                Verdict::Out
            ]
        );
        assert!(filter_answers(&f, 7, &answers).is_err());
        let none = Filters::default();
        assert_eq!(
            filter_answers(
                &none,
                2,
                &[Value::Int(-1), Value::Int(80), Value::Int(-2), Value::Nil]
            )
            .unwrap(),
            vec![Verdict::In(80), Verdict::Out]
        );
    }

    #[test]
    fn chunks_stay_under_the_cap_and_a_large_key_goes_alone() {
        assert_eq!(chunks(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(chunks(&[10; 300]), vec![0..128, 128..256, 256..300]);
        let big = DUMP_CAP * 2;
        let half = DUMP_CAP / 2;
        assert_eq!(
            chunks(&[half, half, 1, big, 1, half]),
            vec![0..2, 2..3, 3..4, 4..6]
        );
    }

    #[test]
    fn dumps_tell_vanished_used_and_values_apart() {
        let d = Value::BulkString(b"dump".to_vec());
        let answers = vec![
            Value::Int(100),
            d.clone(),
            Value::Int(-1),
            Value::Int(3),
            d.clone(),
            Value::Int(-1),
            Value::Nil,
            Value::Nil,
            Value::Int(-2),
        ];
        assert_eq!(
            dump_answers(3, Some(10), &answers).unwrap(),
            vec![
                Dumped::Value {
                    dump: b"dump",
                    pttl: -1
                },
                Dumped::Used,
                Dumped::Vanished
            ]
        );
        assert_eq!(
            dump_answers(1, None, &[d, Value::Int(500)]).unwrap(),
            vec![Dumped::Value {
                dump: b"dump",
                pttl: 500
            }]
        );
        assert!(dump_answers(1, None, &[Value::Int(1), Value::Int(1)]).is_err());
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    }
}
