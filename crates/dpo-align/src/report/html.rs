//! The HTML of a report: a self-contained page (inline CSS), figures, tables, escaping, and the
//! formatting of values for them (numbers, byte counts, durations, JSON leaves).

use anyhow::Result;
use dpo_runtime::io::write_atomic;
use serde_json::Value;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Formatting

/// A value for a table, by the convention of its key's last part: `*bytes` in KiB/MiB/GiB,
/// `*_seconds` as a duration, `*per_second` as a rate, other numbers to 6 significant digits.
fn format_value(key: &str, v: &Value) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if name.ends_with("bytes") {
                format_bytes(x)
            } else if name == "seconds" || name.ends_with("_seconds") {
                format_seconds(x)
            } else if name.ends_with("per_second") {
                format!("{} /s", format_number(x))
            } else if n.is_i64() || n.is_u64() {
                n.to_string()
            } else {
                format_number(x)
            }
        }
        other => other.to_string(),
    }
}

/// A number to 6 significant digits, without trailing zeros; very small or large ones in `e` notation.
pub(super) fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-4..1e9).contains(&a) {
        let s = format!("{x:.4e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (5 - a.log10().floor() as i32).clamp(0, 12) as usize;
    trim_zeros(&format!("{x:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn format_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

pub(super) fn format_seconds(s: f64) -> String {
    if !s.is_finite() || s < 60.0 {
        return format!("{} s", format_number((s * 1000.0).round() / 1000.0));
    }
    let whole = s.round() as u64;
    let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
    let hms = if h > 0 { format!("{h} h {m:02} min {sec:02} s") } else { format!("{m} min {sec:02} s") };
    format!("{hms} ({s:.1} s)")
}

/// The leaves of a JSON value, nested object keys joined with `.` (`tokenize.max_length`).
pub(super) fn flatten(v: &Value) -> Vec<(String, Value)> {
    fn go(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    go(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }
    let mut out = Vec::new();
    go("", v, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// HTML

/// `s` with HTML's special characters escaped.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.3em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h2 small{font-weight:normal;color:#777;font-size:.7em}
figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #e4e4e4}
figcaption{color:#555;font-size:.92em}
table{border-collapse:collapse;font-size:.92em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.3em .8em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
";

/// A whole HTML page: `body` (HTML) under the title `title` (text), styles inline.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// Writes `path` (atomically): the [`page`] of `body` under `title`.
pub(super) fn write_page(path: &Path, title: &str, body: &str) -> Result<()> {
    let text = page(title, body);
    write_atomic(path, |w| Ok(w.write_all(text.as_bytes())?))
}

/// An image (by relative path) with a caption (text).
pub(super) fn figure(src: &str, caption: &str) -> String {
    format!("<figure><img src=\"{}\" alt=\"{1}\"><figcaption>{1}</figcaption></figure>\n", esc(src), esc(caption))
}

/// A table with a header row (text) and rows of cells given as HTML.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table>\n<tr>");
    for h in header {
        s += &format!("<th>{}</th>", esc(h));
    }
    s += "</tr>\n";
    for row in rows {
        s += "<tr>";
        for cell in row {
            s += &format!("<td>{cell}</td>");
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// A two-column table of names (as `<code>`) and values (text).
fn kv_table(rows: impl IntoIterator<Item = (String, String)>) -> String {
    let rows: Vec<Vec<String>> =
        rows.into_iter().map(|(k, v)| vec![format!("<code>{}</code>", esc(&k)), esc(&v)]).collect();
    table(&["name", "value"], &rows)
}

/// A [`kv_table`] of JSON leaves (as [`flatten`] gives them), each value by [`format_value`].
pub(super) fn leaves_table(leaves: impl IntoIterator<Item = (String, Value)>) -> String {
    kv_table(leaves.into_iter().map(|(k, v)| (k.clone(), format_value(&k, &v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(format_number(std::f64::consts::LN_2), "0.693147");
        assert_eq!(format_number(1234.56789), "1234.57");
        assert_eq!(format_number(1e-6), "1e-6");
        assert_eq!(format_number(-2.5), "-2.5");
        assert_eq!(format_bytes(512.0), "512 bytes");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(format_seconds(75.0), "1 min 15 s (75.0 s)");
    }
}
