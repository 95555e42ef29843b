//! How the CLI prints for people: aligned tables that fit 100 columns
//! (comfy-table; only the CLI loads it), bytes in IEC units, durations in
//! words (`3d 4h`), ratios as percentages, and the `--format` of commands
//! that print either a table or JSON. Every command's human output goes
//! through here, so that each prints a size or a time span the same way.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, presets};

/// The widest a table is printed: wider cells wrap inside their column.
pub const WIDTH: u16 = 100;

/// Two spaces between columns; no borders, so that a table reads as text
/// and greps as lines.
const GAP: u16 = 2;

/// `--format` of a command that prints a table for people or JSON for
/// programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

impl Output {
    /// `--format`, or `json` when the older `--json` flag is given.
    pub fn or_json(self, json: bool) -> Output {
        if json { Output::Json } else { self }
    }
}

/// An aligned table: a header line, then one line per row (a cell longer
/// than its share of [`WIDTH`] wraps onto more lines, in its own column).
pub struct Table {
    inner: comfy_table::Table,
    wrap: Vec<usize>,
}

impl Table {
    /// A table with these column headings; every column keeps its
    /// content's width until [`Table::wrap`] says which may wrap.
    pub fn new(header: &[&str]) -> Table {
        let mut inner = comfy_table::Table::new();
        inner
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(WIDTH)
            .set_header(header.to_vec());
        Table {
            inner,
            wrap: Vec::new(),
        }
    }

    /// Right-aligns these columns (numbers, sizes, durations).
    pub fn right(mut self, columns: &[usize]) -> Table {
        for &i in columns {
            if let Some(c) = self.inner.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        self
    }

    /// These columns (free text: a reason, an error) may wrap to keep the
    /// table within [`WIDTH`]; the others never do.
    pub fn wrap(mut self, columns: &[usize]) -> Table {
        self.wrap = columns.to_vec();
        self
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        self.inner.add_row(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.row_count() == 0
    }

    /// The table as lines, each ending in a newline, none with trailing
    /// spaces.
    pub fn render(mut self) -> String {
        let wrap = self.wrap.clone();
        let last = self.inner.column_count().saturating_sub(1);
        for (i, c) in self.inner.column_iter_mut().enumerate() {
            c.set_padding((0, if i == last { 0 } else { GAP }));
            if !wrap.contains(&i) {
                c.set_constraint(ColumnConstraint::ContentWidth);
            }
        }
        let mut out = String::new();
        for line in self.inner.lines() {
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Bytes in IEC units to about three figures: `512 B`, `1.5 KiB`,
/// `12.3 MiB` (the same rule as the API's and the page's).
pub fn bytes(v: f64) -> String {
    crate::fmt::bytes(v)
}

/// A span of time in words, to its two largest units: `0s`, `850ms`, `2.5s`,
/// `45s`, `12m 5s`, `4h 12m`, `3d 4h`; a whole unit alone (`3d`, `2h`).
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    const UNITS: [(i64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let i = UNITS
        .iter()
        .position(|&(n, _)| s >= n)
        .expect("s is at least 10");
    let (big, big_name) = UNITS[i];
    let mut out = format!("{}{big_name}", s / big);
    if let Some(&(small, small_name)) = UNITS.get(i + 1) {
        let rest = (s % big) / small;
        if rest > 0 {
            let _ = write!(out, " {rest}{small_name}");
        }
    }
    out
}

/// A ratio (0..1) as a percentage with one decimal (`<0.1%` for a sliver
/// above 0), and with as many more
/// as it takes (up to four) for a value just short of 100 % not to read as
/// 100 % (`99.95%`, `99.999%`).
pub fn percent(ratio: f64) -> String {
    if !ratio.is_finite() {
        return "-".to_string();
    }
    let p = ratio * 100.0;
    if p > 0.0 && p < 0.05 {
        // Something, but less than `0.0%` would say.
        return "<0.1%".to_string();
    }
    let mut digits = 1;
    while digits < 4 && p < 100.0 && format!("{p:.digits$}").starts_with("100") {
        digits += 1;
    }
    // `{:.1}` of 99.96 is "100.0": print the digits that tell it apart.
    format!("{p:.digits$}%")
}

/// A value of a series in its unit: bytes in IEC units, ratios as
/// percentages, seconds as a duration; other values as numbers.
pub fn value(v: f64, unit: crate::sample::Unit) -> String {
    use crate::sample::Unit;
    if !v.is_finite() {
        return "-".to_string();
    }
    match unit {
        Unit::Ratio => percent(v),
        Unit::Bytes => bytes(v),
        Unit::BytesPerSecond => format!("{}/s", bytes(v)),
        Unit::Seconds if v.abs() < 1.0 => format!("{:.1}ms", v * 1000.0),
        Unit::Seconds => duration((v * 1000.0) as i64),
        Unit::PerSecond => format!("{}/s", number(v)),
        Unit::Count | Unit::Total | Unit::None => number(v),
    }
}

/// A plain number to four decimals, in scientific notation when very
/// large or small.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        crate::fmt::count(v as i64)
    } else if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

/// Prints `value` as indented JSON and a newline.
pub fn json(value: &impl serde::Serialize) -> String {
    let mut out = serde_json::to_string_pretty(value).expect("serializable");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_words_to_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(2_500), "2.5s");
        assert_eq!(duration(45_000), "45s");
        assert_eq!(duration(725_000), "12m 5s");
        assert_eq!(duration(4 * 3_600_000 + 12 * 60_000 + 7_000), "4h 12m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000 + 59_000), "3d 4h");
        assert_eq!(duration(3 * 86_400_000), "3d");
        assert_eq!(duration(7_200_000), "2h");
        assert_eq!(duration(-5), "0s");
    }

    #[test]
    fn ratios_read_as_percent_never_rounding_up_to_100() {
        assert_eq!(percent(0.149), "14.9%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(percent(0.9996), "99.96%");
        assert_eq!(percent(0.99999), "99.999%");
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(0.0001), "<0.1%");
        assert_eq!(percent(f64::NAN), "-");
    }

    #[test]
    fn values_read_in_their_unit() {
        use crate::sample::Unit;
        assert_eq!(value(1536.0, Unit::Bytes), "1.5 KiB");
        assert_eq!(value(0.5, Unit::Ratio), "50.0%");
        assert_eq!(value(0.0123, Unit::Seconds), "12.3ms");
        assert_eq!(value(90.0, Unit::Seconds), "1m 30s");
        assert_eq!(value(2048.0, Unit::BytesPerSecond), "2.0 KiB/s");
        assert_eq!(value(12_345.0, Unit::Count), "12,345");
        assert_eq!(value(0.25, Unit::None), "0.2500");
    }

    #[test]
    fn tables_align_and_fit_the_width() {
        let mut t = Table::new(&["probe", "status", "reason"])
            .right(&[1])
            .wrap(&[2]);
        t.row(["database", "healthy", ""]);
        t.row(["gone", "unhealthy", &"connect refused ".repeat(12)]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines.iter().all(|l| l.chars().count() <= WIDTH as usize),
            "{out}"
        );
        assert!(lines.len() > 3, "the long reason wraps:\n{out}");
        assert!(lines[0].starts_with("probe     "), "{out}");
        // Right-aligned: both statuses end in the same column.
        let end = |l: &str, w: &str| l.find(w).unwrap() + w.len();
        assert_eq!(
            end(lines[1], "healthy"),
            end(lines[2], "unhealthy"),
            "{out}"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{out:?}");
    }
}
