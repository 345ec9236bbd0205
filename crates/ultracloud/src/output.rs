//! Command output: aligned tables by default, JSON with `-o json`.

use serde::Serialize;

use crate::Failure;
use crate::cli::OutputFormat;

/// Prints rows as an aligned table (header in capitals) or as JSON.
pub fn print<T: Serialize>(
    format: OutputFormat,
    value: &T,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
        ),
        OutputFormat::Table => print!("{}", table(headers, &rows)),
    }
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
    target: String,
    profile: &'static str,
}

pub fn print_version(format: OutputFormat) -> Result<(), Failure> {
    let v = Version {
        version: uc_runtime::VERSION,
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    };
    let rows = vec![
        vec!["version".into(), v.version.into()],
        vec!["target".into(), v.target.clone()],
        vec!["profile".into(), v.profile.into()],
    ];
    print(format, &v, &["field", "value"], rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::table(
            &["component", "url"],
            &[
                vec!["node".into(), "http://127.0.0.1:8070".into()],
                vec!["chainfire".into(), "http://x".into()],
            ],
        );
        assert_eq!(
            t,
            "COMPONENT  URL\nnode       http://127.0.0.1:8070\nchainfire  http://x\n"
        );
    }
}
