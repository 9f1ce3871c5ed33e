//! Output shared by the subcommands: `-o json|yaml`, kubectl-style tables and durations.

use std::io::Write as _;

use anyhow::Result;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde::Serialize;

/// Machine-readable formats of `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

/// `value` in a machine-readable format, ending with a newline.
pub fn render<T: Serialize>(format: Format, value: &T) -> Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml => serde_yaml::to_string(value)?,
    })
}

/// Writes to stdout. A closed pipe (`kubectl tsk status | head`) ends the output quietly
/// instead of panicking as `print!` would.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Left-aligned columns separated by three spaces, as `kubectl get` prints them; each line
/// starts with `indent`.
pub fn table(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = indent.to_owned();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A duration the way kubectl shows ages: precise when short, coarse when long.
pub fn duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86400);
    let with_rest = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with_rest(minutes, "m", seconds % 60, "s")
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        with_rest(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        with_rest(days, "d", hours % 24, "h")
    } else {
        format!("{days}d")
    }
}

/// Seconds from `earlier` to `later`.
pub fn seconds_between(earlier: &Time, later: Timestamp) -> i64 {
    later.as_second() - earlier.0.as_second()
}

/// `in 5m` or `5m ago`, relative to `now`.
pub fn relative(time: &Time, now: Timestamp) -> String {
    let delta = seconds_between(time, now);
    if delta < 0 {
        format!("in {}", duration(-delta))
    } else {
        format!("{} ago", duration(delta))
    }
}

/// A time for people: relative, with the exact time for reference.
pub fn when(time: &Time, now: Timestamp) -> String {
    format!("{} ({})", relative(time, now), exact(time))
}

/// A time to the second, as the API server shows times; status fields written by hand may
/// carry more digits than anyone needs to read.
pub fn exact(time: &Time) -> String {
    Timestamp::from_second(time.0.as_second())
        .unwrap_or(time.0)
        .to_string()
}

/// An optional value in a text column.
pub fn or_none(value: Option<&str>) -> String {
    value.unwrap_or("<none>").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_ages() {
        let cases = [
            (-5, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (330, "5m30s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (8 * 86400, "8d"),
            (400 * 86400, "400d"),
        ];
        for (seconds, shown) in cases {
            assert_eq!(duration(seconds), shown, "{seconds}s");
        }
    }

    #[test]
    fn times_are_relative_to_now() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let past = Time(Timestamp::from_second(1_000_000 - 90).unwrap());
        let future = Time(Timestamp::from_second(1_000_000 + 3 * 86400).unwrap());
        assert_eq!(relative(&past, now), "90s ago");
        assert_eq!(relative(&future, now), "in 3d");
        let precise = Time(Timestamp::new(1_000_000 - 90, 123_456_789).unwrap());
        assert_eq!(when(&precise, now), "90s ago (1970-01-12T13:45:10Z)");
    }

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let rows = vec![
            vec!["checkout-api".to_owned(), "True".to_owned(), String::new()],
            vec![
                "b".to_owned(),
                "False".to_owned(),
                "AccountNotReady".to_owned(),
            ],
        ];
        assert_eq!(
            table("  ", &["NAME", "READY", "REASON"], &rows),
            "  NAME           READY   REASON\n  checkout-api   True\n  b              False   AccountNotReady\n"
        );
    }

    #[test]
    fn machine_formats_end_with_a_newline() {
        let value = serde_json::json!({"name": "a"});
        assert_eq!(
            render(Format::Json, &value).unwrap(),
            "{\n  \"name\": \"a\"\n}\n"
        );
        assert_eq!(render(Format::Yaml, &value).unwrap(), "name: a\n");
    }
}
