//! `-o table|json|yaml`, aligned tables like kubectl's, and times and sizes for humans.

use clap::ValueEnum;
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

use super::CtlError;
use crate::op::Millis;

/// The `-o` values every berthctl command that prints records accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For humans: aligned columns (or, for `validate`, the compiler-like report).
    #[default]
    Table,
    /// The records as a pretty-printed JSON array.
    Json,
    /// The same records as YAML.
    Yaml,
}

/// `value` as JSON or YAML for `-o json|yaml`, or `table()` for `-o table`; always ends
/// with a newline.
pub fn render<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<String, CtlError> {
    let mut s = match output {
        Output::Table => table(),
        Output::Json => serde_json::to_string_pretty(value).map_err(|e| CtlError::Encode {
            format: "JSON",
            message: e.to_string(),
        })?,
        Output::Yaml => serde_saphyr::to_string(value).map_err(|e| CtlError::Encode {
            format: "YAML",
            message: e.to_string(),
        })?,
    };
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Writes `text` to stdout. A closed pipe (`berthctl get envs | head -1`) is not an
/// error worth a panic: the reader has what it wanted.
///
/// # Errors
/// Other write errors.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Columns aligned like kubectl's: upper-case headers, three spaces between columns, the
/// last column not padded, no trailing spaces.
#[derive(Clone, Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells become one line each (see [`one_line`]). Missing cells are
    /// empty, extra ones are dropped.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(c.as_ref()))
            .take(self.header.len())
            .collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, every line (the header's too) starting with `indent`.
    pub fn render_indented(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.width()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.width());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(w - cell.width() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn render(&self) -> String {
        self.render_indented("")
    }
}

/// `s` on one line: line breaks and other control characters become spaces, and runs of
/// whitespace one space (errors and migration logs span lines; a table row cannot).
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` columns wide, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut width = 0;
    for c in s.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if width + w + 1 > max {
            break;
        }
        width += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// The first `n` characters (of a hash or an id).
pub fn short(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `<none>`, as kubectl prints an absent value.
pub const NONE: &str = "<none>";

pub fn or_none<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| NONE.to_owned(), |v| v.to_string())
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// How long ago `then` was, as kubectl prints ages (`45s`, `5m30s`, `3h`, `2d4h`, `3y`):
/// two units while the larger one is small, one after. `<unknown>` for 0 (never set).
pub fn age(now: Millis, then: Millis) -> String {
    if then == 0 {
        return "<unknown>".into();
    }
    // A clock a little behind the writer's is not an error worth showing.
    let s = now.saturating_sub(then) / 1000;
    let (m, h) = (s / 60, s / 3600);
    let (d, y) = (h / 24, h / (24 * 365));
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        two(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        two(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        two(d, "d", h % 24, "h")
    } else if y < 2 {
        format!("{d}d")
    } else if y < 8 {
        two(y, "y", d % 365, "d")
    } else {
        format!("{y}y")
    }
}

/// `2023-11-14T22:13:20Z` (UTC, to the second).
pub fn utc(at: Millis) -> String {
    let secs = at / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`utc`]: milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`
/// (what berthd writes); `None` for anything else.
pub fn parse_utc(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(y), m, d)).ok()?;
    Some(((days * 86_400) + u64::from(hh * 3600 + mm * 60 + ss)) * 1000)
}

/// The day number counted from 1970-01-01 of a proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`, the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `utc(at)` followed by its age: `2023-11-14T22:13:20Z (3h ago)`; `<unknown>` for 0.
pub fn when(now: Millis, at: Millis) -> String {
    if at == 0 {
        return "<unknown>".into();
    }
    format!("{} ({} ago)", utc(at), age(now, at))
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Bytes for humans: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1000;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn ages_read_like_kubectl_with_two_units_only_while_the_first_is_small() {
        let now = 10_000 * DAY;
        for (ago, want) in [
            (0, "0s"),
            (119 * SEC, "119s"),
            (2 * MIN, "2m"),
            (5 * MIN + 30 * SEC, "5m30s"),
            (10 * MIN + 30 * SEC, "10m"),
            (179 * MIN, "179m"),
            (3 * HOUR, "3h"),
            (3 * HOUR + 20 * MIN, "3h20m"),
            (8 * HOUR + 20 * MIN, "8h"),
            (47 * HOUR, "47h"),
            (2 * DAY + 4 * HOUR, "2d4h"),
            (8 * DAY + 4 * HOUR, "8d"),
            (729 * DAY, "729d"),
            (3 * 365 * DAY + 5 * DAY, "3y5d"),
            (9 * 365 * DAY, "9y"),
        ] {
            assert_eq!(age(now, now - ago), want, "{ago} ms ago");
        }
        assert_eq!(age(now, now + 5 * SEC), "0s", "a clock slightly behind");
        assert_eq!(age(now, 0), "<unknown>");
    }

    #[test]
    fn utc_times_are_iso_8601_to_the_second() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn utc_times_parse_back_to_the_second() {
        for at in [0, 1_700_000_000_000, 951_782_400_000, 4_107_542_399_000] {
            assert_eq!(parse_utc(&utc(at)), Some(at), "{}", utc(at));
        }
        assert_eq!(parse_utc("2023-11-14 22:13:20Z"), None);
        assert_eq!(parse_utc("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn tables_align_columns_three_spaces_apart_without_trailing_spaces() {
        let mut t = Table::new(["NAME", "REVISION", "MESSAGE"]);
        t.row(["web", "12", "rolled out\nrevision 12"]);
        t.row(["db-prod", "", ""]);
        assert_eq!(
            t.render(),
            "NAME      REVISION   MESSAGE\n\
             web       12         rolled out revision 12\n\
             db-prod\n"
        );
    }

    #[test]
    fn wide_characters_count_as_two_columns_and_cut_text_ends_with_an_ellipsis() {
        assert_eq!(truncate("rolled out revision 4", 10), "rolled ou…");
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("日本語テキスト", 7), "日本語…");
        let mut t = Table::new(["A", "B"]);
        t.row(["日本", "x"]);
        t.row(["ab", "y"]);
        assert_eq!(t.render(), "A      B\n日本   x\nab     y\n");
    }

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12 * 1024 * 1024), "12.0 MiB");
    }

    #[test]
    fn json_and_yaml_end_with_a_newline_and_table_is_the_callers_text() {
        let v = vec![serde_json::json!({"name": "web", "revision": 2})];
        let json = render(Output::Json, &v, String::new).unwrap();
        assert!(json.ends_with("]\n"), "{json}");
        let yaml = render(Output::Yaml, &v, String::new).unwrap();
        assert!(yaml.contains("name: web"), "{yaml}");
        assert!(yaml.contains("revision: 2"), "{yaml}");
        assert_eq!(render(Output::Table, &v, || "T".into()).unwrap(), "T\n");
    }
}
