//! `uc-bench-loadgen`: the load generator of `bench/chainfire` and `bench/flaredb`.
//!
//! `run` drives one workload (`put`, `get` or `watch`) against etcd v3 endpoints — real etcd or
//! chainfire, the wire is the same — and prints one JSON line of results. `pg` does the same
//! over the PostgreSQL wire protocol (`insert`, `select`, `batch`) — real PostgreSQL or
//! flaredb. `report` reads a file of those lines and prints the comparison table.
//! `iam` measures iam (bench/iam): offline token verification, and populate / authorize /
//! token load over iam's REST API, with its own report.

mod iam;
mod pg;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use etcd_client::{Client, ConnectOptions, KvClient, WatchOptions, WatchStream};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "uc-bench-loadgen",
    about = "etcd v3, PostgreSQL-protocol and iam load generator (bench/chainfire, bench/flaredb, bench/iam)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one workload and print one JSON line of results on stdout.
    Run(Box<RunArgs>),
    /// Run one PostgreSQL-protocol workload and print one JSON line of results on stdout.
    Pg(Box<pg::PgArgs>),
    /// Print the comparison table from a file of `run`/`pg` JSON lines.
    Report(report::ReportArgs),
    /// iam: token verification throughput, populate, authorize/token load, report (bench/iam).
    Iam(Box<iam::IamArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// Puts of distinct keys; each client has one request in flight.
    Put,
    /// Linearizable single-key gets (default consistency) of preloaded keys.
    Get,
    /// One writer putting distinct keys under a prefix that `--watchers` watch streams watch.
    Watch,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Client endpoints, comma-separated (`http://127.0.0.1:2379,http://…`).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Authenticate as this user (etcd `Authenticate`).
    #[arg(long)]
    user: Option<String>,
    /// The user's password, read from this file (trimmed).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<PathBuf>,
    /// The user's password.
    #[arg(long, env = "LOADGEN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent clients, each with one request in flight (put, get). Watch has one writer.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// gRPC connections (etcd-client clients) the clients share round-robin.
    /// Default: min(concurrency, 8); for watch, min(watchers, 8) plus one for the writer.
    #[arg(long)]
    conns: Option<usize>,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// get: keys preloaded and read at random.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// watch: watch streams on the prefix.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// watch: the writer's puts per second (default: as fast as acknowledged).
    #[arg(long)]
    rate: Option<f64>,
    /// watch: seconds to wait after the last write for events still in flight.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Per-request timeout in seconds; a request that takes longer counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// `key=value`, copied into the result's `tags` (the report uses `system` and `cluster`).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// One JSON line of results. Latencies in microseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub workload: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub concurrency: usize,
    #[serde(default)]
    pub conns: usize,
    pub duration_s: f64,
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default)]
    pub value_size: usize,
    /// Successful operations in the measured window (watch: events delivered).
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Latency of successful operations (watch: write acknowledged → event received).
    pub p50_us: u64,
    #[serde(default)]
    pub p90_us: u64,
    pub p99_us: u64,
    #[serde(default)]
    pub p999_us: u64,
    #[serde(default)]
    pub max_us: u64,
    /// Failed operations (watch: failed writes, broken watch streams and missing events).
    pub errors: u64,
    /// Distinct error messages and how often each occurred.
    #[serde(default)]
    pub error_messages: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchDetail>,
    /// pg batch: `ops` are rows, latencies are per transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<pg::BatchDetail>,
    /// pg insert and batch: rows in the table afterwards versus writes acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_check: Option<pg::RowCheck>,
    /// CPU seconds (user + system) the load generator used, set-up and warm-up included.
    #[serde(default)]
    pub loadgen_cpu_s: f64,
    /// Added by run.sh over the whole `run` call: wall seconds, CPU seconds of the servers,
    /// and CPU seconds of everything else on the machine (should be ~0 on an idle machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_cpu_s: Option<f64>,
    /// Added by run.sh: bytes the servers caused to be written to disk (`/proc/PID/io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_disk_write_bytes: Option<u64>,
    /// Added by bench/flaredb/run.sh: bytes written to the data directories' block device
    /// (`/proc/diskstats`; every writer on the machine counts). Preferred by the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_write_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WatchDetail {
    pub watchers: usize,
    /// Acknowledged writes in the measured window.
    pub writes: u64,
    pub writes_per_sec: f64,
    pub write_p50_us: u64,
    pub write_p99_us: u64,
    /// writes × watchers.
    pub expected_events: u64,
    /// Expected events no watcher received before the drain deadline.
    pub missing_events: u64,
    /// Events received before the writer saw its put acknowledged (their latency counts as 0).
    pub early_events: u64,
    /// Latency from sending the put to receiving the event.
    pub send_to_event_p50_us: u64,
    pub send_to_event_p99_us: u64,
}

/// Error messages with counts (at most `MAX_DISTINCT` distinct ones are kept).
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    messages: BTreeMap<String, u64>,
}

const MAX_DISTINCT: usize = 20;

impl Errors {
    fn add(&mut self, message: String) {
        self.count += 1;
        let mut message = message;
        if message.len() > 300 {
            let mut cut = 300;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        if self.messages.len() < MAX_DISTINCT || self.messages.contains_key(&message) {
            *self.messages.entry(message).or_default() += 1;
        } else {
            *self.messages.entry("(other messages)".into()).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for (m, n) in other.messages {
            *self.messages.entry(m).or_default() += n;
        }
    }
}

fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A small xorshift generator: random keys and values without another dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn random_value(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    // Printable bytes, like etcd's benchmark tool; neither server compresses values.
    (0..size).map(|_| b'a' + (rng.next() % 26) as u8).collect()
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (0 elsewhere).
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on every Linux architecture this runs on.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

struct Connector {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
}

impl Connector {
    /// A client (its own gRPC connection to each endpoint); `timeout` applies to each unary
    /// request. Watch clients get none: it would also bound the watch streams.
    async fn connect(&self, timeout: Option<Duration>) -> anyhow::Result<Client> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(t) = timeout {
            options = options.with_timeout(t);
        }
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|e| anyhow::anyhow!("connect to {:?}: {}", self.endpoints, describe(&e)))
    }
}

struct KvSample {
    latencies: Vec<u64>,
    errors: Errors,
}

struct KvJob {
    workload: Workload,
    id: usize,
    prefix: Arc<str>,
    value: Arc<Vec<u8>>,
    keys: usize,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
}

async fn kv_worker(mut kv: KvClient, job: KvJob) -> KvSample {
    let mut rng = XorShift::new(job.id as u64 + 1);
    let mut sample = KvSample {
        latencies: Vec::new(),
        errors: Errors::default(),
    };
    let mut seq: u64 = 0;
    loop {
        let started = Instant::now();
        if started >= job.end {
            break;
        }
        let result: Result<(), String> = match job.workload {
            Workload::Put => {
                let key = format!("{}{}/{seq}", job.prefix, job.id);
                seq += 1;
                match tokio::time::timeout(job.timeout, kv.put(key, job.value.to_vec(), None)).await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("client-side timeout".into()),
                }
            }
            Workload::Get => {
                let key = format!("{}{:08}", job.prefix, rng.next() % job.keys as u64);
                match tokio::time::timeout(job.timeout, kv.get(key, None)).await {
                    Ok(Ok(resp)) if resp.kvs().len() == 1 => Ok(()),
                    Ok(Ok(resp)) => Err(format!(
                        "get of a preloaded key returned {} keys",
                        resp.kvs().len()
                    )),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("client-side timeout".into()),
                }
            }
            Workload::Watch => unreachable!("watch has its own driver"),
        };
        let elapsed = started.elapsed();
        let measured = started >= job.measure_from;
        match result {
            Ok(()) if measured => sample.latencies.push(micros(elapsed)),
            Ok(()) => {}
            Err(message) => {
                if measured {
                    sample.errors.add(message);
                }
                // Do not spin on a dead endpoint.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    sample
}

fn base_outcome(args: &RunArgs, conns: usize) -> Outcome {
    Outcome {
        workload: format!("{:?}", args.workload).to_lowercase(),
        tags: args.tags.iter().cloned().collect(),
        endpoints: args.endpoints.clone(),
        concurrency: if args.workload == Workload::Watch {
            1
        } else {
            args.concurrency
        },
        conns,
        duration_s: args.duration,
        warmup_s: args.warmup,
        value_size: args.value_size,
        ..Outcome::default()
    }
}

fn fill_latencies(outcome: &mut Outcome, mut latencies: Vec<u64>) {
    latencies.sort_unstable();
    outcome.ops = latencies.len() as u64;
    outcome.ops_per_sec = latencies.len() as f64 / outcome.duration_s;
    outcome.p50_us = percentile(&latencies, 50.0);
    outcome.p90_us = percentile(&latencies, 90.0);
    outcome.p99_us = percentile(&latencies, 99.0);
    outcome.p999_us = percentile(&latencies, 99.9);
    outcome.max_us = latencies.last().copied().unwrap_or(0);
}

async fn preload(
    connector: &Connector,
    timeout: Duration,
    prefix: &str,
    keys: usize,
    value: &Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    let client = connector.connect(Some(timeout)).await?;
    let workers = 16.min(keys.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut kv = client.kv_client();
        let prefix = prefix.to_owned();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..keys).step_by(workers) {
                kv.put(format!("{prefix}{i:08}"), value.to_vec(), None)
                    .await
                    .map_err(|e| anyhow::anyhow!("preload put: {}", describe(&e)))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn run_kv(args: &RunArgs, connector: &Connector) -> anyhow::Result<Outcome> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let conns = args.conns.unwrap_or(args.concurrency.min(8)).max(1);
    let value = Arc::new(random_value(args.value_size, 7));
    let prefix: Arc<str> = match args.workload {
        Workload::Put => format!("bench/put/{}/", nonce()).into(),
        _ => format!("bench/get/{}/", nonce()).into(),
    };
    if args.workload == Workload::Get {
        if args.keys == 0 {
            bail!("--keys must be at least 1");
        }
        preload(connector, timeout, &prefix, args.keys, &value).await?;
    }
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(connector.connect(Some(timeout)).await?);
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for id in 0..args.concurrency {
        let job = KvJob {
            workload: args.workload,
            id,
            prefix: prefix.clone(),
            value: value.clone(),
            keys: args.keys,
            measure_from,
            end,
            timeout,
        };
        tasks.push(tokio::spawn(kv_worker(
            clients[id % conns].kv_client(),
            job,
        )));
    }
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    for t in tasks {
        let sample = t.await?;
        latencies.extend(sample.latencies);
        errors.merge(sample.errors);
    }
    let mut outcome = base_outcome(args, conns);
    fill_latencies(&mut outcome, latencies);
    outcome.errors = errors.count;
    outcome.error_messages = errors.messages;
    Ok(outcome)
}

/// The writer's last revision and the time by which watchers must have seen it.
type Finish = Option<(i64, Instant)>;

struct WatcherSample {
    received: Vec<(i64, Instant)>,
    error: Option<String>,
}

async fn watcher(mut stream: WatchStream, mut finish: watch::Receiver<Finish>) -> WatcherSample {
    let mut sample = WatcherSample {
        received: Vec::new(),
        error: None,
    };
    let mut max_seen = 0;
    loop {
        let done = *finish.borrow_and_update();
        let deadline = match done {
            Some((last, deadline)) => {
                if max_seen >= last || Instant::now() >= deadline {
                    break;
                }
                deadline
            }
            None => Instant::now() + Duration::from_secs(86_400),
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(resp)) => {
                    let now = Instant::now();
                    if resp.canceled() {
                        sample.error = Some(format!("watch canceled: {}", resp.cancel_reason()));
                        break;
                    }
                    for event in resp.events() {
                        if let Some(kv) = event.kv() {
                            sample.received.push((kv.mod_revision(), now));
                            max_seen = max_seen.max(kv.mod_revision());
                        }
                    }
                }
                Ok(None) => {
                    sample.error = Some("watch stream ended".into());
                    break;
                }
                Err(e) => {
                    sample.error = Some(format!("watch stream: {}", describe(&e)));
                    break;
                }
            },
            changed = finish.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    sample
}

struct Write {
    sent: Instant,
    acked: Instant,
    measured: bool,
}

async fn run_watch(args: &RunArgs, connector: &Connector) -> anyhow::Result<Outcome> {
    if args.watchers == 0 {
        bail!("--watchers must be at least 1");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let conns = args.conns.unwrap_or(args.watchers.min(8)).max(1);
    let prefix = format!("bench/watch/{}/", nonce());
    let value = random_value(args.value_size, 11);

    let mut watch_clients = Vec::new();
    for _ in 0..conns {
        watch_clients.push(connector.connect(None).await?);
    }
    let (finish_tx, finish_rx) = watch::channel::<Finish>(None);
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let mut client = watch_clients[w % conns].clone();
        let mut stream = client
            .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| anyhow::anyhow!("watch {w}: {}", describe(&e)))?;
        let first = tokio::time::timeout(timeout, stream.message())
            .await
            .with_context(|| format!("watch {w}: no created response within the timeout"))?
            .map_err(|e| anyhow::anyhow!("watch {w}: {}", describe(&e)))?
            .with_context(|| format!("watch {w}: stream ended before it was created"))?;
        if !first.created() {
            bail!("watch {w}: first response is not `created`");
        }
        tasks.push(tokio::spawn(watcher(stream, finish_rx.clone())));
    }

    let mut kv = connector.connect(Some(timeout)).await?.kv_client();
    let mut writes: HashMap<i64, Write> = HashMap::new();
    let mut write_latencies = Vec::new();
    let mut errors = Errors::default();
    let mut last_revision = 0;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut seq: u64 = 0;
    loop {
        if let Some(rate) = args.rate {
            let next = start + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(next.into()).await;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let key = format!("{prefix}{seq:010}");
        seq += 1;
        let measured = sent >= measure_from;
        match tokio::time::timeout(timeout, kv.put(key, value.clone(), None)).await {
            Ok(Ok(resp)) => {
                let acked = Instant::now();
                let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                last_revision = last_revision.max(revision);
                if measured {
                    write_latencies.push(micros(acked - sent));
                }
                writes.insert(
                    revision,
                    Write {
                        sent,
                        acked,
                        measured,
                    },
                );
            }
            Ok(Err(e)) => {
                if measured {
                    errors.add(format!("write: {}", describe(&e)));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                if measured {
                    errors.add("write: client-side timeout".into());
                }
            }
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    finish_tx.send_replace(Some((last_revision, drain_deadline)));

    let mut latencies = Vec::new();
    let mut send_latencies = Vec::new();
    let mut early = 0u64;
    for t in tasks {
        let sample = t.await?;
        if let Some(e) = sample.error {
            errors.add(e);
        }
        for (revision, received) in sample.received {
            let Some(write) = writes.get(&revision) else {
                continue;
            };
            if !write.measured {
                continue;
            }
            send_latencies.push(micros(received.saturating_duration_since(write.sent)));
            if received < write.acked {
                early += 1;
                latencies.push(0);
            } else {
                latencies.push(micros(received - write.acked));
            }
        }
    }
    drop(finish_tx);

    let measured_writes = write_latencies.len() as u64;
    let expected = measured_writes * args.watchers as u64;
    let delivered = latencies.len() as u64;
    let missing = expected.saturating_sub(delivered);
    if missing > 0 {
        errors.count += missing;
        *errors
            .messages
            .entry("watch: events not delivered within the drain time".into())
            .or_default() += missing;
    }

    write_latencies.sort_unstable();
    send_latencies.sort_unstable();
    let mut outcome = base_outcome(args, conns + 1);
    fill_latencies(&mut outcome, latencies);
    outcome.errors = errors.count;
    outcome.error_messages = errors.messages;
    outcome.watch = Some(WatchDetail {
        watchers: args.watchers,
        writes: measured_writes,
        writes_per_sec: measured_writes as f64 / args.duration,
        write_p50_us: percentile(&write_latencies, 50.0),
        write_p99_us: percentile(&write_latencies, 99.0),
        expected_events: expected,
        missing_events: missing,
        early_events: early,
        send_to_event_p50_us: percentile(&send_latencies, 50.0),
        send_to_event_p99_us: percentile(&send_latencies, 99.0),
    });
    Ok(outcome)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
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
    let user = match (&args.user, password) {
        (Some(u), Some(p)) => Some((u.clone(), p)),
        (Some(_), None) => bail!("--user needs --password or --password-file"),
        (None, _) => None,
    };
    let connector = Connector {
        endpoints: args.endpoints.clone(),
        user,
    };
    let mut outcome = match args.workload {
        Workload::Put | Workload::Get => run_kv(&args, &connector).await?,
        Workload::Watch => run_watch(&args, &connector).await?,
    };
    outcome.loadgen_cpu_s = own_cpu_seconds();
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Pg(args) => pg::run(*args).await,
        Command::Report(args) => report::print(&args),
        Command::Iam(args) => iam::run(*args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uc-bench-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
