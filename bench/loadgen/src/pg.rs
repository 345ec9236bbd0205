//! `pg`: workloads over the PostgreSQL wire protocol (tokio-postgres), the same driver code
//! for PostgreSQL and flaredb (bench/flaredb).
//!
//! Every run creates its own table `bench_<workload>_<nonce> (id <id-type> PRIMARY KEY, v TEXT
//! NOT NULL)`, runs one workload against it, checks the rows the server holds afterwards
//! against the writes it acknowledged, drops the table and prints one JSON line like `run`.
//! Each client has its own connection and one statement in flight; every statement is prepared
//! once per connection and then executed with bound parameters (`$1`, `$2`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use crate::{Errors, Outcome, XorShift, fill_latencies, micros, nonce, parse_tag, random_value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PgWorkload {
    /// Single-row autocommit INSERTs of distinct ids.
    Insert,
    /// Point SELECTs by primary key of preloaded rows, at random.
    Select,
    /// Transactions of `--batch-size` INSERTs each (BEGIN; N × INSERT; COMMIT).
    Batch,
}

impl PgWorkload {
    fn name(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Select => "select",
            Self::Batch => "batch",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PgArgs {
    /// Servers as `host:port`, comma-separated; client i connects to endpoint i mod count.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// User name (flaredb: the namespace).
    #[arg(long)]
    user: String,
    /// Database (default: the user name; flaredb: the namespace).
    #[arg(long)]
    dbname: Option<String>,
    /// The password, read from this file (trimmed).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// The password.
    #[arg(long, env = "LOADGEN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, value_enum)]
    workload: PgWorkload,
    /// Concurrent clients, each with its own connection and one statement in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Bytes of the `v` column (printable ASCII).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// select: rows preloaded and read at random.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// batch: INSERTs per transaction (also the preload's transaction size).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// SQL type of the `id` column. `INTEGER` suits SQLite dialects (flaredb: the table's
    /// 64-bit rowid); PostgreSQL needs `BIGINT` for the same 64-bit ids (its INTEGER is 32-bit).
    #[arg(long, default_value = "INTEGER")]
    id_type: String,
    /// Per-statement timeout in seconds (batch: per transaction); longer counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Keep the table after the run (default: drop it).
    #[arg(long)]
    keep_table: bool,
    /// `key=value`, copied into the result's `tags` (the report uses `system` and `cluster`).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

/// Details of the batch workload: `ops` in the outcome are rows, latencies are per transaction.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BatchDetail {
    pub batch_size: usize,
    /// Committed transactions in the measured window.
    pub batches: u64,
    pub batches_per_sec: f64,
    pub mean_batch_us: u64,
}

/// The rows the table held after the run versus the writes acknowledged (warm-up included).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RowCheck {
    pub acknowledged_rows: u64,
    pub rows_in_table: u64,
}

struct Connector {
    endpoints: Vec<(String, u16)>,
    user: String,
    dbname: String,
    password: Option<String>,
}

impl Connector {
    /// Client `i`'s own connection, to endpoint `i mod count`.
    async fn connect(&self, i: usize) -> anyhow::Result<Client> {
        let (host, port) = &self.endpoints[i % self.endpoints.len()];
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(*port)
            .user(&self.user)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = &self.password {
            config.password(p);
        }
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| anyhow::anyhow!("connect to {host}:{port}: {}", describe(&e)))?;
        let endpoint = format!("{host}:{port}");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("uc-bench-loadgen: connection to {endpoint}: {e}");
            }
        });
        Ok(client)
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn parse_endpoint(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("endpoint `{s}` is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("endpoint `{s}`: bad port"))?;
    Ok((host.to_owned(), port))
}

struct Sample {
    /// Latencies of successful operations in the measured window.
    latencies: Vec<u64>,
    errors: Errors,
    /// Rows whose write was acknowledged, warm-up included.
    acknowledged_rows: u64,
}

struct Job {
    workload: PgWorkload,
    id: usize,
    table: Arc<str>,
    value: Arc<str>,
    keys: usize,
    batch_size: usize,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
}

/// Distinct ids per client: the client number in the high bits, a sequence in the low ones.
fn row_id(client: usize, seq: u64) -> i64 {
    (((client as u64 + 1) << 32) | seq) as i64
}

async fn insert_rows(
    client: &mut Client,
    insert: &tokio_postgres::Statement,
    ids: impl Iterator<Item = i64>,
    value: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    for id in ids {
        tx.execute(insert, &[&id, &value]).await?;
    }
    tx.commit().await
}

async fn worker(mut client: Client, job: Job) -> anyhow::Result<Sample> {
    let sql = match job.workload {
        PgWorkload::Insert | PgWorkload::Batch => {
            format!("INSERT INTO {} (id, v) VALUES ($1, $2)", job.table)
        }
        PgWorkload::Select => format!("SELECT v FROM {} WHERE id = $1", job.table),
    };
    let statement = client
        .prepare(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("client {}: prepare `{sql}`: {}", job.id, describe(&e)))?;
    let mut rng = XorShift::new(job.id as u64 + 1);
    let mut sample = Sample {
        latencies: Vec::new(),
        errors: Errors::default(),
        acknowledged_rows: 0,
    };
    let mut seq: u64 = 0;
    loop {
        let started = Instant::now();
        if started >= job.end {
            break;
        }
        let result: Result<u64, String> = match job.workload {
            PgWorkload::Insert => {
                let id = row_id(job.id, seq);
                seq += 1;
                match tokio::time::timeout(
                    job.timeout,
                    client.execute(&statement, &[&id, &&*job.value]),
                )
                .await
                {
                    Ok(Ok(1)) => Ok(1),
                    Ok(Ok(n)) => Err(format!("INSERT reported {n} rows")),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("client-side timeout".into()),
                }
            }
            PgWorkload::Select => {
                let id = (rng.next() % job.keys as u64) as i64;
                match tokio::time::timeout(job.timeout, client.query_opt(&statement, &[&id])).await
                {
                    Ok(Ok(Some(row))) => match row.try_get::<_, &str>(0) {
                        Ok(v) if v.len() == job.value.len() => Ok(0),
                        Ok(v) => Err(format!("SELECT returned a value of {} bytes", v.len())),
                        Err(e) => Err(format!("SELECT: {e}")),
                    },
                    Ok(Ok(None)) => Err("SELECT of a preloaded id returned no row".into()),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("client-side timeout".into()),
                }
            }
            PgWorkload::Batch => {
                let first = seq;
                seq += job.batch_size as u64;
                let ids = (first..seq).map(|s| row_id(job.id, s));
                match tokio::time::timeout(
                    job.timeout,
                    insert_rows(&mut client, &statement, ids, &job.value),
                )
                .await
                {
                    Ok(Ok(())) => Ok(job.batch_size as u64),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("client-side timeout (transaction)".into()),
                }
            }
        };
        let elapsed = started.elapsed();
        let measured = started >= job.measure_from;
        match result {
            Ok(rows) => {
                sample.acknowledged_rows += rows;
                if measured {
                    sample.latencies.push(micros(elapsed));
                }
            }
            Err(message) => {
                if measured {
                    sample.errors.add(message);
                }
                if client.is_closed() {
                    sample
                        .errors
                        .add("connection closed; client stopped".into());
                    break;
                }
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(sample)
}

async fn count_rows(client: &Client, table: &str) -> anyhow::Result<u64> {
    let row = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(|e| anyhow::anyhow!("count rows: {}", describe(&e)))?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

pub async fn run(args: PgArgs) -> anyhow::Result<()> {
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.workload == PgWorkload::Select && args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !args
        .id_type
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == ' ')
    {
        bail!("--id-type must be a plain SQL type name");
    }
    let password = match (&args.password_file, &args.password) {
        (Some(file), _) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, p) => p.clone(),
    };
    let connector = Connector {
        endpoints: args
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<anyhow::Result<_>>()?,
        user: args.user.clone(),
        dbname: args.dbname.clone().unwrap_or_else(|| args.user.clone()),
        password,
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let value: Arc<str> = String::from_utf8(random_value(args.value_size, 7))
        .expect("printable ASCII")
        .into();
    let table: Arc<str> = format!("bench_{}_{}", args.workload.name(), nonce()).into();

    // Set-up on a connection of its own (to the first endpoint).
    let mut admin = connector.connect(0).await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id {} PRIMARY KEY, v TEXT NOT NULL)",
            args.id_type
        ))
        .await
        .map_err(|e| anyhow::anyhow!("create table: {}", describe(&e)))?;
    if args.workload == PgWorkload::Select {
        let insert = admin
            .prepare(&format!("INSERT INTO {table} (id, v) VALUES ($1, $2)"))
            .await
            .map_err(|e| anyhow::anyhow!("prepare preload: {}", describe(&e)))?;
        let keys = args.keys as i64;
        let mut first = 0;
        while first < keys {
            let last = (first + args.batch_size as i64).min(keys);
            insert_rows(&mut admin, &insert, first..last, &value)
                .await
                .map_err(|e| anyhow::anyhow!("preload: {}", describe(&e)))?;
            first = last;
        }
        let n = count_rows(&admin, &table).await?;
        if n != args.keys as u64 {
            bail!("preload: the table holds {n} rows, not {}", args.keys);
        }
    }

    let mut clients = Vec::new();
    for i in 0..args.concurrency {
        clients.push(connector.connect(i).await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for (id, client) in clients.into_iter().enumerate() {
        let job = Job {
            workload: args.workload,
            id,
            table: table.clone(),
            value: value.clone(),
            keys: args.keys,
            batch_size: args.batch_size,
            measure_from,
            end,
            timeout,
        };
        tasks.push(tokio::spawn(worker(client, job)));
    }
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    let mut acknowledged_rows = 0;
    for t in tasks {
        let sample = t.await??;
        latencies.extend(sample.latencies);
        errors.merge(sample.errors);
        acknowledged_rows += sample.acknowledged_rows;
    }

    // Every acknowledged write must be there (a timed-out one may be there too).
    let check = if args.workload == PgWorkload::Select {
        None
    } else {
        let rows_in_table = count_rows(&admin, &table).await?;
        if rows_in_table < acknowledged_rows {
            errors.add(format!(
                "check: the table holds {rows_in_table} rows but {acknowledged_rows} were acknowledged"
            ));
        }
        Some(RowCheck {
            acknowledged_rows,
            rows_in_table,
        })
    };
    if !args.keep_table
        && let Err(e) = admin.batch_execute(&format!("DROP TABLE {table}")).await
    {
        eprintln!("uc-bench-loadgen: drop table {table}: {}", describe(&e));
    }

    let mut outcome = Outcome {
        workload: args.workload.name().into(),
        tags: args.tags.iter().cloned().collect(),
        endpoints: args.endpoints.clone(),
        concurrency: args.concurrency,
        conns: args.concurrency,
        duration_s: args.duration,
        warmup_s: args.warmup,
        value_size: args.value_size,
        ..Outcome::default()
    };
    let batches = latencies.len() as u64;
    let mean_batch_us = if latencies.is_empty() {
        0
    } else {
        latencies.iter().sum::<u64>() / batches
    };
    fill_latencies(&mut outcome, latencies);
    if args.workload == PgWorkload::Batch {
        // Throughput in rows; latency stays per transaction.
        outcome.ops = batches * args.batch_size as u64;
        outcome.ops_per_sec = outcome.ops as f64 / args.duration;
        outcome.batch = Some(BatchDetail {
            batch_size: args.batch_size,
            batches,
            batches_per_sec: batches as f64 / args.duration,
            mean_batch_us,
        });
    }
    outcome.errors = errors.count;
    outcome.error_messages = errors.messages;
    outcome.row_check = check;
    outcome.loadgen_cpu_s = crate::own_cpu_seconds();
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_across_clients() {
        assert_ne!(row_id(0, u32::MAX as u64), row_id(1, 0));
        assert!(row_id(15, 1_000_000) > 0);
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("127.0.0.1:5432").unwrap(),
            ("127.0.0.1".to_owned(), 5432)
        );
        assert!(parse_endpoint("127.0.0.1").is_err());
    }
}
