//! The Prometheus text exposition format 0.0.4 of [`Families`]: escapes,
//! number formats, one HELP and TYPE line per family. Called by
//! [`super::render`] and the `/metrics` route.

use super::{Families, Histogram, Type};

/// Writes a label value with `\`, `"` and newline escaped.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes HELP text with `\` and newline escaped.
fn push_help(out: &mut String, h: &str) {
    for c in h.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value: integers without a fraction, other finite values
/// in shortest round-trip form, and `NaN`, `+Inf`, `-Inf`.
pub fn push_value(out: &mut String, v: f64) {
    // Below 2^53 every integer is exact in an f64, so `as` loses nothing.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() <= EXACT {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Writes `name{labels}` (labels may be empty) and, when given, one more
/// label last.
fn push_series(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    extra: Option<(&str, &str)>,
) {
    out.push_str(name);
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let all = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra);
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        push_label_value(out, v);
        out.push('"');
    }
    out.push('}');
}

fn push_sample(out: &mut String, v: f64) {
    out.push(' ');
    push_value(out, v);
    out.push('\n');
}

/// Whether a histogram series can be written whole: a `+Inf` bucket, a sum
/// and a count (a series missing one would not parse as a histogram).
fn complete(h: &Histogram) -> bool {
    h.sum.is_some() && h.count.is_some() && h.buckets.iter().any(|b| b.0 == f64::INFINITY)
}

/// The exposition text of `families`, sorted by family name.
pub fn encode(families: &Families) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for (name, family) in &families.0 {
        let histograms: Vec<_> = family
            .histograms
            .iter()
            .filter(|(_, h)| complete(h))
            .collect();
        if family.samples.is_empty() && histograms.is_empty() {
            continue;
        }
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        push_help(&mut out, &family.help);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push_str(match family.kind {
            Type::Gauge => " gauge\n",
            Type::Counter => " counter\n",
            Type::Histogram => " histogram\n",
        });
        for (labels, v) in &family.samples {
            push_series(&mut out, name, labels, None);
            push_sample(&mut out, *v);
        }
        for (labels, h) in histograms {
            let mut buckets: Vec<&(f64, String, f64)> = h.buckets.iter().collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let bucket = format!("{name}_bucket");
            for (_, le, v) in buckets {
                push_series(&mut out, &bucket, labels, Some(("le", le)));
                push_sample(&mut out, *v);
            }
            push_series(&mut out, &format!("{name}_sum"), labels, None);
            push_sample(&mut out, h.sum.unwrap_or(0.0));
            push_series(&mut out, &format!("{name}_count"), labels, None);
            push_sample(&mut out, h.count.unwrap_or(0.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shortest_round_trip() {
        let cases = [
            (1.0, "1"),
            (-3.0, "-3"),
            (0.0, "0"),
            (0.5, "0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-7, "1e-7"),
            (1e300, "1e300"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, want, "{v:?}");
            if v.is_finite() {
                assert_eq!(s.parse::<f64>().unwrap(), v);
            }
        }
    }
}
