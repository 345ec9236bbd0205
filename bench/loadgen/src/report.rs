//! `report`: the comparison table (chainfire/etcd, flaredb/PostgreSQL) from a file of `run` and
//! `pg` results.
//!
//! Each result names its `system` (`etcd`, `chainfire`, `postgresql`, `flaredb`) and `cluster`
//! (`1-node`, …) in its tags; results of the same cluster, workload and concurrency form one
//! row. With `--baseline-cluster`, the baseline's results of that cluster (a single PostgreSQL
//! server) are compared with the system's results of every cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A file of JSON lines written by `run`.
    file: PathBuf,
    /// The system in the numerator of the ratios.
    #[arg(long, default_value = "chainfire")]
    system: String,
    /// The system in the denominator.
    #[arg(long, default_value = "etcd")]
    baseline: String,
    /// The baseline ran only as this cluster (e.g. `server`): compare its results with the
    /// system's results of every cluster.
    #[arg(long)]
    baseline_cluster: Option<String>,
}

#[derive(Default)]
struct Row {
    cluster: String,
    workload: String,
    by_system: BTreeMap<String, Outcome>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn label(o: &Outcome) -> String {
    match o.workload.as_str() {
        "put" => format!("put c={}", o.concurrency),
        "get" => format!("get c={} (linearizable)", o.concurrency),
        "watch" => format!(
            "watch 1 writer → {} watchers (events)",
            o.watch.as_ref().map(|w| w.watchers).unwrap_or(0)
        ),
        "insert" => format!("insert c={} (autocommit, 1 row)", o.concurrency),
        "select" => format!("select c={} (by primary key)", o.concurrency),
        "batch" => format!(
            "batch c={}: {}-row txn (ops = rows)",
            o.concurrency,
            o.batch.as_ref().map_or(0, |b| b.batch_size)
        ),
        other => format!("{other} c={}", o.concurrency),
    }
}

pub fn print(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read {}", args.file.display()))?;
    let mut rows: Vec<Row> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let outcome: Outcome = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", args.file.display(), n + 1))?;
        let cluster = outcome.tags.get("cluster").cloned().unwrap_or_default();
        let system = outcome.tags.get("system").cloned().unwrap_or_default();
        let workload = label(&outcome);
        let index = match rows
            .iter()
            .position(|r| r.cluster == cluster && r.workload == workload)
        {
            Some(i) => i,
            None => {
                rows.push(Row {
                    cluster: cluster.clone(),
                    workload: workload.clone(),
                    ..Row::default()
                });
                rows.len() - 1
            }
        };
        rows[index].by_system.insert(system, outcome);
    }

    let (cf, base) = (args.system.as_str(), args.baseline.as_str());
    if let Some(bc) = &args.baseline_cluster {
        // The baseline's rows of its one cluster, by workload; every other cluster borrows them.
        let baseline: BTreeMap<String, Outcome> = rows
            .iter()
            .filter(|r| &r.cluster == bc)
            .filter_map(|r| Some((r.workload.clone(), r.by_system.get(base)?.clone())))
            .collect();
        for row in &mut rows {
            if !row.by_system.contains_key(base)
                && let Some(o) = baseline.get(&row.workload)
            {
                row.by_system.insert(base.to_owned(), o.clone());
            }
        }
        // Rows of the baseline alone (its own cluster name) are shown in every other row.
        rows.retain(|r| r.by_system.contains_key(cf) || !baseline.contains_key(&r.workload));
    }
    let header: Vec<String> = vec![
        "cluster".into(),
        "workload".into(),
        format!("{base} ops/s"),
        format!("{cf} ops/s"),
        "ops ratio".into(),
        format!("{base} p50 ms"),
        format!("{cf} p50 ms"),
        format!("{base} p99 ms"),
        format!("{cf} p99 ms"),
        "p99 ratio".into(),
        format!("errors {base}/{cf}"),
    ];
    let mut table = vec![header];
    for row in &rows {
        let a = row.by_system.get(base);
        let b = row.by_system.get(cf);
        let ops = |o: Option<&Outcome>| o.map_or("-".into(), |o| format!("{:.0}", o.ops_per_sec));
        let p50 = |o: Option<&Outcome>| o.map_or("-".into(), |o| ms(o.p50_us));
        let p99 = |o: Option<&Outcome>| o.map_or("-".into(), |o| ms(o.p99_us));
        let errs = |o: Option<&Outcome>| o.map_or("-".into(), |o| o.errors.to_string());
        table.push(vec![
            row.cluster.clone(),
            row.workload.clone(),
            ops(a),
            ops(b),
            match (a, b) {
                (Some(a), Some(b)) => ratio(b.ops_per_sec, a.ops_per_sec),
                _ => "-".into(),
            },
            p50(a),
            p50(b),
            p99(a),
            p99(b),
            match (a, b) {
                (Some(a), Some(b)) => ratio(b.p99_us as f64, a.p99_us as f64),
                _ => "-".into(),
            },
            format!("{}/{}", errs(a), errs(b)),
        ]);
    }
    print_table(&table);
    println!();
    println!(
        "ops ratio = {cf}/{base} throughput (>1: {cf} faster); p99 ratio = {cf}/{base} p99 latency (>1: {cf} slower)."
    );
    if let Some(bc) = &args.baseline_cluster {
        println!("{base} ran once ({bc}); its figures are repeated in every {cf} cluster's rows.");
    }
    let has = |w: &str| {
        rows.iter()
            .any(|r| r.by_system.values().any(|o| o.workload == w))
    };
    if has("watch") {
        println!(
            "watch rows: ops/s = events delivered per second; latency = write acknowledged → event received."
        );
    }
    if has("batch") {
        println!(
            "batch rows: ops/s = rows committed per second; p50/p99 = time per transaction (BEGIN … COMMIT)."
        );
    }

    print_cpu(&rows, cf, base);

    // Each result once, under its own cluster (a borrowed baseline appears in several rows).
    let results = each_result(&rows);

    let mut notes = Vec::new();
    for &(system, cluster, _, o) in &results {
        {
            if let Some(w) = &o.watch {
                notes.push(format!(
                    "  {system:<10} {:<7} writes/s {:.0} (put p50 {} ms, p99 {} ms); events {}/{} expected, {} missing, {} before the ack; send→event p50 {} ms, p99 {} ms",
                    cluster,
                    w.writes_per_sec,
                    ms(w.write_p50_us),
                    ms(w.write_p99_us),
                    o.ops,
                    w.expected_events,
                    w.missing_events,
                    w.early_events,
                    ms(w.send_to_event_p50_us),
                    ms(w.send_to_event_p99_us),
                ));
            }
        }
    }
    if !notes.is_empty() {
        println!("\nwatch details:");
        for n in notes {
            println!("{n}");
        }
    }

    let mut notes = Vec::new();
    for &(system, cluster, _, o) in &results {
        {
            if let Some(b) = &o.batch {
                notes.push(format!(
                    "  {system:<10} {:<13} {} transactions of {} rows in {:.1} s ({:.2}/s), mean {} ms, p50 {} ms, p99 {} ms per transaction; {:.0} rows/s",
                    cluster,
                    b.batches,
                    b.batch_size,
                    o.duration_s,
                    b.batches_per_sec,
                    ms(b.mean_batch_us),
                    ms(o.p50_us),
                    ms(o.p99_us),
                    o.ops_per_sec,
                ));
            }
        }
    }
    if !notes.is_empty() {
        println!("\nbatch details:");
        for n in notes {
            println!("{n}");
        }
    }

    let mut checks = Vec::new();
    for &(system, cluster, workload, o) in &results {
        {
            if let Some(c) = &o.row_check {
                checks.push(format!(
                    "  {system:<10} {:<13} {:<36} {} rows acknowledged, {} in the table{}",
                    cluster,
                    workload,
                    c.acknowledged_rows,
                    c.rows_in_table,
                    if c.rows_in_table < c.acknowledged_rows {
                        " — ROWS MISSING"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    if !checks.is_empty() {
        println!(
            "\nrow check (writes acknowledged during warm-up and measurement vs count(*) afterwards):"
        );
        for c in checks {
            println!("{c}");
        }
    }

    let mut errors = Vec::new();
    for &(system, cluster, workload, o) in &results {
        for (message, count) in &o.error_messages {
            errors.push(format!(
                "  {system} {cluster} {workload}: {count} × {message}"
            ));
        }
    }
    if !errors.is_empty() {
        println!("\nerrors:");
        for e in errors {
            println!("{e}");
        }
    }
    Ok(())
}

/// `(system, cluster, workload, result)` of every result once, the cluster being the result's
/// own `cluster` tag (a baseline borrowed by other clusters' rows is listed under its own).
fn each_result(rows: &[Row]) -> Vec<(&str, &str, &str, &Outcome)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for row in rows {
        for (system, o) in &row.by_system {
            let cluster = o.tags.get("cluster").map_or("", String::as_str);
            if seen.insert((system.as_str(), cluster, row.workload.as_str())) {
                out.push((system.as_str(), cluster, row.workload.as_str(), o));
            }
        }
    }
    out
}

/// Server CPU per operation and the machine's other load, from the fields run.sh adds.
fn print_cpu(rows: &[Row], cf: &str, base: &str) {
    // Device-level writes when run.sh recorded them (bench/flaredb), else the servers' own.
    let device = rows
        .iter()
        .any(|r| r.by_system.values().any(|o| o.device_write_bytes.is_some()));
    let mut table = vec![vec![
        "cluster".to_owned(),
        "workload".to_owned(),
        format!("{base} server cores"),
        format!("{cf} server cores"),
        format!("{base} CPU us/op"),
        format!("{cf} CPU us/op"),
        "CPU/op ratio".to_owned(),
        if device {
            format!("device KB/op {base}/{cf}")
        } else {
            format!("disk KB/op {base}/{cf}")
        },
        format!("loadgen cores {base}/{cf}"),
        format!("other cores {base}/{cf}"),
    ]];
    let cores = |o: Option<&Outcome>, v: fn(&Outcome) -> Option<f64>| {
        o.and_then(|o| Some(v(o)? / o.wall_s.filter(|w| *w > 0.0)?))
    };
    // Server CPU over the whole call divided by the operations of warm-up + measured window
    // (at the measured rate).
    let per_op = |o: Option<&Outcome>| {
        o.and_then(|o| {
            let ops = o.ops_per_sec * (o.duration_s + o.warmup_s);
            (ops > 0.0).then_some(o.server_cpu_s? * 1e6 / ops)
        })
    };
    let disk_per_op = |o: Option<&Outcome>| {
        o.and_then(|o| {
            let ops = o.ops_per_sec * (o.duration_s + o.warmup_s);
            let bytes = if device {
                o.device_write_bytes?
            } else {
                o.server_disk_write_bytes?
            };
            (ops > 0.0).then_some(bytes as f64 / 1024.0 / ops)
        })
    };
    let show = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let mut any = false;
    for row in rows {
        let a = row.by_system.get(base);
        let b = row.by_system.get(cf);
        any |= a.and_then(|o| o.server_cpu_s).is_some() || b.and_then(|o| o.server_cpu_s).is_some();
        table.push(vec![
            row.cluster.clone(),
            row.workload.clone(),
            show(cores(a, |o| o.server_cpu_s), 2),
            show(cores(b, |o| o.server_cpu_s), 2),
            show(per_op(a), 0),
            show(per_op(b), 0),
            match (per_op(a), per_op(b)) {
                (Some(x), Some(y)) => ratio(y, x),
                _ => "-".into(),
            },
            format!("{}/{}", show(disk_per_op(a), 1), show(disk_per_op(b), 1)),
            format!(
                "{}/{}",
                show(cores(a, |o| Some(o.loadgen_cpu_s)), 2),
                show(cores(b, |o| Some(o.loadgen_cpu_s)), 2)
            ),
            format!(
                "{}/{}",
                show(cores(a, |o| o.other_cpu_s), 2),
                show(cores(b, |o| o.other_cpu_s), 2)
            ),
        ]);
    }
    if !any {
        return;
    }
    println!(
        "\nServers' CPU and disk writes (over each whole measurement, set-up and warm-up included; watch: per event):"
    );
    print_table(&table);
    println!(
        "`other cores` is CPU used by anything else on the machine during the measurement: near 0 when it is idle; more means the row was disturbed."
    );
    if device {
        println!(
            "`device KB/op` is what the data directories' block device wrote (/proc/diskstats) per operation: every writer on the machine counts."
        );
    }
}

fn print_table(table: &[Vec<String>]) {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in table.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c < 2 {
                    format!("{s:<width$}", width = widths[c])
                } else {
                    format!("{s:>width$}", width = widths[c])
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c < 2 {
                        "-".repeat(w + 2)
                    } else {
                        format!("{}:", "-".repeat(w + 1))
                    }
                })
                .collect();
            println!("|{}|", rule.join("|"));
        }
    }
}
