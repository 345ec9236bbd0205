//! `iam`: bench/iam — access-token verification throughput (offline, no network) and iam's
//! `POST /v1/authorize` / `POST /v1/tokens` over loopback against a populated iam.
//!
//! - `iam verify`: signs a realistic token (`--perms` permission patterns) with a
//!   [`SigningKey`] and verifies it in a tight loop on 1..N threads: [`Verifier::verify`]
//!   alone and the middleware's [`JwksAuthenticator::authenticate`] (keys fetched once from a
//!   tiny local JWKS server, then cached) followed by [`Principal::allows`], each with the same
//!   token over and over (a client repeating its token) and with a different token each time
//!   (a first sight); for comparison iam's side [`SigningKey::sign`] and the bare Ed25519
//!   check. One JSON line per (kind, threads).
//! - `iam populate`: organizations, projects, custom roles, principals, bindings and a sample of
//!   API keys through iam's REST API as the operator, with concurrency; times each phase and
//!   writes a state file (ids, API keys) for `iam load`. One JSON line.
//! - `iam load`: exchanges the sample's API keys for tokens, then drives `POST /v1/authorize`
//!   (as the operator deciding for a token, or as the principal deciding for itself) or
//!   `POST /v1/tokens` at a fixed concurrency for a fixed time. One JSON line.
//! - `iam report`: the table from a file of those lines.
//!
//! [`Principal::allows`]: uc_runtime::auth::Principal::allows

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uc_runtime::Secret;
use uc_runtime::auth::Authenticator;
use uc_runtime::client::ClientOptions;
use uc_runtime::token::{
    Claims, DEFAULT_AUDIENCE, JwkSet, JwksAuthenticator, KIND_SERVICE_ACCOUNT, SigningKey,
    Verifier, permission_matches,
};

use crate::{Errors, XorShift, micros, nonce, parse_tag, percentile};

#[derive(Debug, clap::Args)]
pub struct IamArgs {
    #[command(subcommand)]
    command: IamCommand,
}

#[derive(Debug, Subcommand)]
enum IamCommand {
    /// Offline token verification (and signing) throughput; no server needed.
    Verify(VerifyArgs),
    /// Create orgs, projects, roles, principals, bindings and sample API keys through iam's API.
    Populate(PopulateArgs),
    /// Drive POST /v1/authorize or POST /v1/tokens against a populated iam.
    Load(LoadArgs),
    /// Print the table from a file of `iam` JSON lines.
    Report(IamReportArgs),
}

pub async fn run(args: IamArgs) -> anyhow::Result<()> {
    match args.command {
        IamCommand::Verify(a) => verify(a).await,
        IamCommand::Populate(a) => populate(a).await,
        IamCommand::Load(a) => load(a).await,
        IamCommand::Report(a) => report(&a),
    }
}

/// One JSON line of `iam` results. Latencies in microseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct IamResult {
    /// `verify`, `authenticate`, `sign`, `populate`, `authorize`, `token`.
    pub bench: String,
    /// The row's description in the report.
    pub label: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Threads (verify) or concurrent clients (load).
    pub concurrency: usize,
    pub duration_s: f64,
    #[serde(default)]
    pub warmup_s: f64,
    /// Successful operations in the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    /// verify: operations per CPU second of the measuring threads (per core actually used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_cpu_s: Option<f64>,
    /// verify: each thread's operations per second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_thread_ops_per_sec: Vec<f64>,
    /// verify: mean wall nanoseconds per operation on one thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ns: Option<f64>,
    #[serde(default)]
    pub p50_us: u64,
    #[serde(default)]
    pub p90_us: u64,
    #[serde(default)]
    pub p99_us: u64,
    #[serde(default)]
    pub p999_us: u64,
    #[serde(default)]
    pub max_us: u64,
    pub errors: u64,
    #[serde(default)]
    pub error_messages: BTreeMap<String, u64>,
    /// Free-form facts about the run (token size, permissions, decisions seen, …).
    #[serde(default)]
    pub detail: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub populate: Option<PopulateDetail>,
    /// CPU seconds (user + system) of the load generator process, set-up included.
    #[serde(default)]
    pub loadgen_cpu_s: f64,
    /// Added by bench/iam/run.sh around the whole call: wall seconds, CPU seconds of
    /// `ultracloud up`, CPU seconds of everything else on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_cpu_s: Option<f64>,
    /// CPU seconds the hypervisor gave to others while this machine wanted them (`steal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal_cpu_s: Option<f64>,
}

fn fill_latencies(r: &mut IamResult, mut latencies: Vec<u64>) {
    latencies.sort_unstable();
    r.ops = latencies.len() as u64;
    r.ops_per_sec = latencies.len() as f64 / r.duration_s;
    r.p50_us = percentile(&latencies, 50.0);
    r.p90_us = percentile(&latencies, 90.0);
    r.p99_us = percentile(&latencies, 99.0);
    r.p999_us = percentile(&latencies, 99.9);
    r.max_us = latencies.last().copied().unwrap_or(0);
}

// ---- the permission vocabulary the bench's roles and tokens draw from (a subset of
// crates/iam/src/catalog.rs; iam refuses permissions that do not exist there)

const CRUD: &[&str] = &["create", "get", "list", "update", "delete"];
const RESOURCES: &[(&str, &str, &[&str])] = &[
    (
        "plasmavmc",
        "vm",
        &[
            "create", "get", "list", "update", "delete", "start", "stop", "reboot", "migrate",
            "console",
        ],
    ),
    ("plasmavmc", "image", CRUD),
    ("plasmavmc", "worker", CRUD),
    ("prismnet", "vpc", CRUD),
    ("prismnet", "subnet", CRUD),
    ("prismnet", "port", CRUD),
    ("prismnet", "router", CRUD),
    ("prismnet", "sg", CRUD),
    ("prismnet", "fip", CRUD),
    ("prismnet", "pool", CRUD),
    (
        "coronafs",
        "volume",
        &[
            "create", "get", "list", "update", "delete", "attach", "detach", "snapshot",
        ],
    ),
    ("flashdns", "zone", CRUD),
    ("flashdns", "record", CRUD),
    ("fiberlb", "lb", CRUD),
    ("fiberlb", "listener", CRUD),
    ("fiberlb", "pool", CRUD),
    ("fiberlb", "backend", CRUD),
    ("lightningstor", "bucket", CRUD),
    ("lightningstor", "object", CRUD),
    ("nightlight", "metric", &["write", "read"]),
    ("creditservice", "quota", CRUD),
    ("k8shost", "cluster", CRUD),
    ("k8shost", "workload", CRUD),
    ("apigateway", "route", CRUD),
    ("flaredb", "namespace", CRUD),
];

/// Permissions no bench role grants (the roles hold no `iam.*` pattern): asked for in the
/// `deny` workload.
const DENIED: &[&str] = &[
    "iam.binding.create",
    "iam.key.rotate",
    "iam.audit.list",
    "iam.org.delete",
    "iam.credential.create",
];

/// Custom role `j`'s permission patterns: about a third of the resources, each either
/// `<service>.<resource>.*` or two to four exact verbs (10–20 patterns per role).
fn role_permissions(j: usize) -> Vec<String> {
    let mut perms = Vec::new();
    for (r, (service, resource, verbs)) in RESOURCES.iter().enumerate() {
        if !(r + j).is_multiple_of(3) {
            continue;
        }
        if (r + j).is_multiple_of(2) {
            perms.push(format!("{service}.{resource}.*"));
        } else {
            let n = (2 + (r + j) % 3).min(verbs.len());
            for verb in &verbs[..n] {
                perms.push(format!("{service}.{resource}.{verb}"));
            }
        }
    }
    perms
}

/// A permission the pattern grants, for an `allow` request (`a.b.*` → `a.b.get`).
fn concrete(pattern: &str) -> Option<String> {
    match pattern.strip_suffix(".*") {
        Some(prefix) if prefix.matches('.').count() == 1 => {
            let (service, resource) = prefix.split_once('.')?;
            let (_, _, verbs) = RESOURCES
                .iter()
                .find(|(s, r, _)| *s == service && *r == resource)?;
            Some(format!("{prefix}.{}", verbs.get(1).unwrap_or(&verbs[0])))
        }
        Some(_) => None,
        None if pattern == "*" => None,
        None => Some(pattern.to_owned()),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) of the calling thread, from `/proc/thread-self/stat`.
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
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
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Busy CPU seconds of the whole machine (user, nice, system, irq, softirq) and stolen ones
/// (`steal`), from `/proc/stat`.
fn machine_cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    (
        (at(0) + at(1) + at(2) + at(5) + at(6)) as f64 / 100.0,
        at(7) as f64 / 100.0,
    )
}

// ---- iam verify

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VerifyKind {
    /// `Verifier::verify` of the same token over and over (a client repeating its token):
    /// signature, header, issuer, audience, time window, claims parsed — or whatever shortcut
    /// the verifier takes for a token it has seen.
    Verify,
    /// `Verifier::verify` of a different token each time (`--distinct-tokens`, cycled): the
    /// cost of a token seen for the first time.
    VerifyDistinct,
    /// `JwksAuthenticator::authenticate` (the auth middleware's hook, admin-token check first,
    /// keys cached) and `Principal::allows` of one permission, the same token over and over.
    Authenticate,
    /// `authenticate`, a different token each time.
    AuthenticateDistinct,
    /// `SigningKey::sign` (iam minting a token), for comparison.
    Sign,
    /// The bare Ed25519 signature check (`ring`) over the same signing input: the floor under
    /// `verify`, whatever the JWT handling around it costs.
    Ed25519,
}

impl VerifyKind {
    fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::VerifyDistinct => "verify-distinct",
            Self::Authenticate => "authenticate",
            Self::AuthenticateDistinct => "authenticate-distinct",
            Self::Sign => "sign",
            Self::Ed25519 => "ed25519",
        }
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// What to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "verify,verify-distinct,authenticate,authenticate-distinct,sign,ed25519"
    )]
    kinds: Vec<VerifyKind>,
    /// Thread counts to run each kind with, comma-separated (each thread loops on its own).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Permission patterns in the token's `perms`.
    #[arg(long, default_value_t = 40)]
    perms: usize,
    /// Distinct tokens the `*-distinct` kinds cycle through (more than any verified-token
    /// cache holds, so every verification is a first sight).
    #[arg(long, default_value_t = 25_000)]
    distinct_tokens: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of looping before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// `key=value`, copied into the results' `tags`.
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

/// One thread's measured window.
#[derive(Default)]
struct LoopSample {
    ops: u64,
    wall_s: f64,
    cpu_s: f64,
    errors: Errors,
}

/// Operations between clock reads.
const CHUNK: u32 = 64;

fn timed_loop(
    warmup: Duration,
    duration: Duration,
    mut op: impl FnMut() -> Result<(), String>,
) -> LoopSample {
    let measure_from = Instant::now() + warmup;
    while Instant::now() < measure_from {
        for _ in 0..CHUNK {
            let _ = op();
        }
    }
    let mut sample = LoopSample::default();
    let cpu0 = thread_cpu_seconds();
    let t0 = Instant::now();
    let end = t0 + duration;
    loop {
        for _ in 0..CHUNK {
            match op() {
                Ok(()) => sample.ops += 1,
                Err(e) => sample.errors.add(e),
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    sample.wall_s = t0.elapsed().as_secs_f64();
    sample.cpu_s = thread_cpu_seconds() - cpu0;
    sample
}

/// [`timed_loop`] for an async operation that completes without waiting (cached keys), on the
/// calling thread's own runtime.
async fn timed_loop_async<F, Fut>(warmup: Duration, duration: Duration, mut op: F) -> LoopSample
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let measure_from = Instant::now() + warmup;
    while Instant::now() < measure_from {
        for _ in 0..CHUNK {
            let _ = op().await;
        }
    }
    let mut sample = LoopSample::default();
    let cpu0 = thread_cpu_seconds();
    let t0 = Instant::now();
    let end = t0 + duration;
    loop {
        for _ in 0..CHUNK {
            match op().await {
                Ok(()) => sample.ops += 1,
                Err(e) => sample.errors.add(e),
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    sample.wall_s = t0.elapsed().as_secs_f64();
    sample.cpu_s = thread_cpu_seconds() - cpu0;
    sample
}

/// Serves `body` as the answer to every HTTP request (one request per connection); counts
/// the requests.
async fn serve_jwks(body: String) -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let response: Arc<str> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into();
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((format!("http://{addr}/v1/jwks"), fetches))
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    if args.threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    let issuer = "ultracloud-iam";
    // The JWKS iam serves during a rotation overlap: the active key and the previous one.
    let previous = SigningKey::generate("k-previous");
    let key = SigningKey::generate("k-active");
    let set = JwkSet {
        keys: vec![previous.public_jwk(), key.public_jwk()],
    };
    let mut patterns: Vec<String> = Vec::new();
    for j in 0.. {
        for p in role_permissions(j) {
            if !patterns.contains(&p) {
                patterns.push(p);
            }
        }
        if patterns.len() >= args.perms || j > 64 {
            break;
        }
    }
    patterns.truncate(args.perms);
    // The permission the middleware path checks: granted by the last pattern (the whole list
    // is scanned).
    let checked = patterns
        .last()
        .and_then(|p| concrete(p))
        .unwrap_or_else(|| "plasmavmc.vm.get".to_owned());
    let now = unix_now();
    let claims = Claims {
        iss: issuer.to_owned(),
        sub: "sa-3f9c2a7d1e5b4c08".to_owned(),
        aud: DEFAULT_AUDIENCE.to_owned(),
        exp: now + 3600,
        nbf: now,
        iat: now,
        jti: "9b1f0c3e7a2d4f6b8c0e1a3d".to_owned(),
        kind: KIND_SERVICE_ACCOUNT.to_owned(),
        org: Some("org-5d2e8f1a9c3b7e40".to_owned()),
        project: Some("prj-0a4c6e8f2b1d3957".to_owned()),
        perms: patterns.clone(),
    };
    let token: Arc<str> = key.sign(&claims)?.into();
    // The same claims with a different `jti` each, for the `*-distinct` kinds.
    let distinct: Arc<Vec<Arc<str>>> = {
        let wanted = args.kinds.iter().any(|k| {
            matches!(
                k,
                VerifyKind::VerifyDistinct | VerifyKind::AuthenticateDistinct
            )
        });
        let n = if wanted {
            args.distinct_tokens.max(1)
        } else {
            0
        };
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = claims.clone();
            c.jti = format!("{i:024x}");
            tokens.push(key.sign(&c)?.into());
        }
        Arc::new(tokens)
    };

    // The bare signature over the same bytes (header.payload), with a ring key of its own.
    let signing_input: Arc<[u8]> = token
        .rsplit_once('.')
        .map(|(input, _)| input.as_bytes())
        .unwrap_or_default()
        .into();
    let ring_pair = {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot read the Ed25519 key"))?
    };
    let ring_public: Arc<[u8]> = ring_pair.public_key().as_ref().into();
    let ring_signature: Arc<[u8]> = ring_pair.sign(&signing_input).as_ref().into();

    let verifier = Arc::new(Verifier::new(issuer, DEFAULT_AUDIENCE));
    verifier.set_keys(&set)?;
    let (jwks_url, fetches) = serve_jwks(serde_json::to_string(&set)?).await?;
    let admin_token = format!("{:064x}", 0x5eed_u64);
    let authenticator = Arc::new(JwksAuthenticator::new(
        Arc::new(Verifier::new(issuer, DEFAULT_AUDIENCE)),
        jwks_url,
        ClientOptions {
            timeout: Duration::from_secs(2),
            retries: 0,
            ..ClientOptions::default()
        },
        Some(Secret::new(admin_token)),
    ));
    authenticator
        .refresh_keys()
        .await
        .map_err(|e| anyhow::anyhow!("fetch the JWKS from the local server: {e}"))?;
    let probe = authenticator
        .authenticate(&token)
        .await
        .map_err(|e| anyhow::anyhow!("the middleware refuses the bench token: {e}"))?;
    if !probe.allows(&checked) {
        bail!("the bench token does not grant {checked}");
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    for &kind in &args.kinds {
        for &threads in &args.threads {
            let barrier = Arc::new(Barrier::new(threads));
            let ((busy0, steal0), own0, wall0) = (
                machine_cpu_seconds(),
                crate::own_cpu_seconds(),
                Instant::now(),
            );
            let mut handles = Vec::new();
            for t in 0..threads {
                let barrier = barrier.clone();
                let token = token.clone();
                let distinct = distinct.clone();
                // Each thread starts elsewhere in the distinct tokens.
                let mut next = t * distinct.len() / threads;
                let verifier = verifier.clone();
                let authenticator = authenticator.clone();
                let key = key.clone();
                let claims = claims.clone();
                let checked = checked.clone();
                let (signing_input, ring_public, ring_signature) = (
                    signing_input.clone(),
                    ring_public.clone(),
                    ring_signature.clone(),
                );
                handles.push(std::thread::spawn(move || -> anyhow::Result<LoopSample> {
                    match kind {
                        VerifyKind::Verify => {
                            barrier.wait();
                            Ok(timed_loop(warmup, duration, || {
                                verifier
                                    .verify(std::hint::black_box(&token))
                                    .map(|c| {
                                        std::hint::black_box(c);
                                    })
                                    .map_err(|e| e.to_string())
                            }))
                        }
                        VerifyKind::VerifyDistinct => {
                            barrier.wait();
                            Ok(timed_loop(warmup, duration, || {
                                let t = &distinct[next];
                                next = (next + 1) % distinct.len();
                                verifier
                                    .verify(std::hint::black_box(t))
                                    .map(|c| {
                                        std::hint::black_box(c);
                                    })
                                    .map_err(|e| e.to_string())
                            }))
                        }
                        VerifyKind::Sign => {
                            barrier.wait();
                            Ok(timed_loop(warmup, duration, || {
                                key.sign(std::hint::black_box(&claims))
                                    .map(|t| {
                                        std::hint::black_box(t);
                                    })
                                    .map_err(|e| e.to_string())
                            }))
                        }
                        VerifyKind::Ed25519 => {
                            barrier.wait();
                            Ok(timed_loop(warmup, duration, || {
                                UnparsedPublicKey::new(&ED25519, &*ring_public)
                                    .verify(
                                        std::hint::black_box(&signing_input),
                                        std::hint::black_box(&ring_signature),
                                    )
                                    .map_err(|_| "bad signature".to_owned())
                            }))
                        }
                        VerifyKind::Authenticate | VerifyKind::AuthenticateDistinct => {
                            let runtime = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()?;
                            barrier.wait();
                            let same = kind == VerifyKind::Authenticate;
                            Ok(runtime.block_on(timed_loop_async(warmup, duration, || {
                                let authenticator = &authenticator;
                                let token = if same {
                                    &token
                                } else {
                                    let t = &distinct[next];
                                    next = (next + 1) % distinct.len();
                                    t
                                };
                                let checked = &checked;
                                async move {
                                    match authenticator.authenticate(token).await {
                                        Ok(p) if p.allows(checked) => Ok(()),
                                        Ok(_) => Err(format!("{checked} not allowed")),
                                        Err(e) => Err(e.to_string()),
                                    }
                                }
                            })))
                        }
                    }
                }));
            }
            let samples = tokio::task::spawn_blocking(move || {
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await??;
            let row_wall = wall0.elapsed().as_secs_f64();
            let (busy1, steal1) = machine_cpu_seconds();
            let other = ((busy1 - busy0) - (crate::own_cpu_seconds() - own0)).max(0.0);
            let mut errors = Errors::default();
            let mut ops = 0;
            let mut cpu = 0.0;
            let mut per_thread = Vec::new();
            let mut wall: f64 = 0.0;
            for s in samples {
                ops += s.ops;
                cpu += s.cpu_s;
                wall = wall.max(s.wall_s);
                per_thread.push(s.ops as f64 / s.wall_s);
                errors.merge(s.errors);
            }
            let ops_per_sec: f64 = per_thread.iter().sum();
            let label = match kind {
                VerifyKind::Verify => {
                    format!("Verifier::verify, same token ({} perms)", patterns.len())
                }
                VerifyKind::VerifyDistinct => format!(
                    "Verifier::verify, {} distinct tokens cycled ({} perms)",
                    distinct.len(),
                    patterns.len()
                ),
                VerifyKind::Authenticate => format!(
                    "JwksAuthenticator::authenticate + allows, same token ({} perms, cached JWKS)",
                    patterns.len()
                ),
                VerifyKind::AuthenticateDistinct => format!(
                    "JwksAuthenticator::authenticate + allows, {} distinct tokens cycled",
                    distinct.len()
                ),
                VerifyKind::Sign => format!("SigningKey::sign ({} perms)", patterns.len()),
                VerifyKind::Ed25519 => format!(
                    "bare Ed25519 verify (ring), same {}-byte input",
                    signing_input.len()
                ),
            };
            let mut detail = BTreeMap::new();
            detail.insert("token_bytes".into(), json!(token.len()));
            detail.insert("perms".into(), json!(patterns.len()));
            detail.insert("jwks_keys".into(), json!(set.keys.len()));
            if matches!(
                kind,
                VerifyKind::Authenticate | VerifyKind::AuthenticateDistinct
            ) {
                detail.insert(
                    "jwks_fetches".into(),
                    json!(fetches.load(Ordering::Relaxed)),
                );
                detail.insert("checked_permission".into(), json!(checked));
            }
            detail.insert("cpu_s".into(), json!(cpu));
            let result = IamResult {
                bench: kind.name().into(),
                label,
                tags: args.tags.iter().cloned().collect(),
                concurrency: threads,
                duration_s: wall,
                warmup_s: args.warmup,
                ops,
                ops_per_sec,
                ops_per_cpu_s: (cpu > 0.0).then(|| ops as f64 / cpu),
                mean_ns: (ops > 0).then(|| wall * threads as f64 * 1e9 / ops as f64),
                per_thread_ops_per_sec: per_thread,
                errors: errors.count,
                error_messages: errors.messages,
                detail,
                loadgen_cpu_s: crate::own_cpu_seconds() - own0,
                wall_s: Some(row_wall),
                other_cpu_s: Some(other),
                steal_cpu_s: Some(steal1 - steal0),
                ..IamResult::default()
            };
            println!("{}", serde_json::to_string(&result)?);
        }
    }
    Ok(())
}

// ---- HTTP to iam

fn http_client(timeout: Duration, pool: usize) -> anyhow::Result<reqwest::Client> {
    uc_runtime::tls::ensure_crypto_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .build()?)
}

fn read_trimmed(path: &PathBuf) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .to_owned())
}

/// A failed call: the HTTP status (None: no answer) and a message.
#[derive(Debug)]
struct CallError {
    status: Option<u16>,
    message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// One JSON call. Retries (up to 4 more times) when there is no answer or a 502/503/504;
/// `retried` says whether it did (a 409 after a retry may be the first attempt's success).
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(Value, bool), CallError> {
    let mut attempt = 0;
    loop {
        let mut req = client.request(method.clone(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(b).expect("JSON values serialize"));
        }
        let outcome = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) if (200..300).contains(&status) => {
                        let value = if bytes.is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_slice(&bytes).map_err(|e| CallError {
                                status: Some(status),
                                message: format!("unreadable answer: {e}"),
                            })?
                        };
                        return Ok((value, attempt > 0));
                    }
                    Ok(bytes) => CallError {
                        status: Some(status),
                        message: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                    },
                    Err(e) => CallError {
                        status: Some(status),
                        message: format!("reading the answer: {e}"),
                    },
                }
            }
            Err(e) => CallError {
                status: None,
                message: if e.is_timeout() {
                    "client-side timeout".to_owned()
                } else {
                    format!("{e}")
                },
            },
        };
        let retryable = matches!(outcome.status, None | Some(502..=504));
        if !retryable || attempt >= 4 {
            return Err(outcome);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
}

fn id_of(v: &Value) -> Result<String, String> {
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("answer has no id: {v}"))
}

// ---- iam populate

#[derive(Debug, clap::Args)]
struct PopulateArgs {
    /// iam's base URL (`http://127.0.0.1:8083`).
    #[arg(long)]
    url: String,
    /// The node's admin token (the operator), read from this file.
    #[arg(long)]
    admin_token_file: PathBuf,
    /// Organizations; projects, roles, principals and bindings are split evenly among them.
    #[arg(long, default_value_t = 1)]
    orgs: usize,
    /// Projects (all organizations together).
    #[arg(long, default_value_t = 1000)]
    projects: usize,
    /// Custom roles per organization.
    #[arg(long, default_value_t = 10)]
    roles: usize,
    /// Principals (all organizations together).
    #[arg(long, default_value_t = 10_000)]
    principals: usize,
    /// Every Nth principal is a user (without a password), the rest service accounts; 0: none.
    #[arg(long, default_value_t = 10)]
    users_every: usize,
    /// Role bindings (all organizations together), spread evenly over the principals: the
    /// first of each principal at organization scope, the rest each at a different project.
    #[arg(long, default_value_t = 100_000)]
    bindings: usize,
    /// Service accounts given an API key, for `iam load` (spread over the organizations).
    #[arg(long, default_value_t = 64)]
    sample: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Where to write the state `iam load` reads (ids and API keys).
    #[arg(long)]
    state: PathBuf,
    /// Also time listing the service accounts and bindings of the first organization.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lists: bool,
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

/// What `populate` created, for `load`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    url: String,
    orgs: Vec<OrgState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OrgState {
    id: String,
    name: String,
    projects: usize,
    principals: usize,
    bindings: usize,
    sample: Vec<SampleCredential>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SampleCredential {
    principal_id: String,
    api_key: String,
    /// The project to scope its tokens to (one it has a binding at), if any.
    project_id: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PopulateDetail {
    pub orgs: usize,
    pub projects: usize,
    pub roles: usize,
    pub users: usize,
    pub service_accounts: usize,
    pub bindings: usize,
    pub credentials: usize,
    pub total_s: f64,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Requests attempted and succeeded.
    pub requests: usize,
    pub ok: usize,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
    /// Bytes of the answer (lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
}

/// Runs `f(0..n)` with `concurrency` in flight; results by index. Prints progress to stderr
/// every 15 s.
async fn run_phase<T, F, Fut>(
    name: &str,
    n: usize,
    concurrency: usize,
    f: F,
) -> (Vec<Option<T>>, Phase)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let f = f.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut latencies = Vec::new();
            let mut errors = Errors::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                match f(i).await {
                    Ok(v) => {
                        latencies.push(micros(t0.elapsed()));
                        out.push((i, v));
                    }
                    Err(e) => errors.add(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (out, latencies, errors)
        }));
    }
    let progress = {
        let done = done.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!(
                    "[iam populate] {name}: {d}/{n} after {:.0} s ({:.0}/s over the last 15 s)",
                    started.elapsed().as_secs_f64(),
                    (d - last) as f64 / 15.0
                );
                last = d;
            }
        })
    };
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    for t in tasks {
        match t.await {
            Ok((out, l, e)) => {
                for (i, v) in out {
                    results[i] = Some(v);
                }
                latencies.extend(l);
                errors.merge(e);
            }
            Err(e) => errors.add(format!("task: {e}")),
        }
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ok = latencies.len();
    let phase = Phase {
        name: name.to_owned(),
        requests: n,
        ok,
        seconds,
        per_sec: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        max_us: latencies.last().copied().unwrap_or(0),
        errors: errors.messages,
        bytes: None,
    };
    eprintln!(
        "[iam populate] {name}: {ok}/{n} in {seconds:.1} s ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms){}",
        phase.per_sec,
        phase.p50_us as f64 / 1000.0,
        phase.p99_us as f64 / 1000.0,
        if errors.count > 0 {
            format!(", {} errors", errors.count)
        } else {
            String::new()
        }
    );
    (results, phase)
}

/// `n` split into `parts`: part `i`'s share.
fn share(n: usize, parts: usize, i: usize) -> usize {
    n / parts + usize::from(i < n % parts)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Principal `i`'s `k`-th binding (k ≥ 1) is at project `(i * 37 + k * step) mod projects`:
/// distinct for distinct k < projects when `step` is coprime with `projects`.
fn project_step(projects: usize) -> usize {
    (101..).find(|s| gcd(*s, projects.max(1)) == 1).unwrap_or(1)
}

fn binding_project(i: usize, k: usize, projects: usize) -> usize {
    (i * 37 + k * project_step(projects)) % projects
}

fn is_user(i: usize, users_every: usize) -> bool {
    users_every > 0 && i % users_every == users_every - 1
}

async fn populate(args: PopulateArgs) -> anyhow::Result<()> {
    let orgs = args.orgs;
    if orgs == 0 || args.principals < orgs || args.roles == 0 {
        bail!("need at least one org, one principal per org and one role");
    }
    if args.bindings > 0 && args.bindings < args.principals {
        bail!("--bindings must be 0 or at least --principals (one per principal at org scope)");
    }
    let admin = Arc::new(read_trimmed(&args.admin_token_file)?);
    let client = http_client(
        Duration::from_secs_f64(args.timeout),
        args.concurrency.max(1),
    )?;
    let base: Arc<str> = args.url.trim_end_matches('/').into();
    let c = args.concurrency.max(1);
    let tag = nonce();
    let started = Instant::now();
    let mut phases = Vec::new();

    // Organizations.
    let (org_ids, phase) = {
        let (client, base, admin, tag) = (client.clone(), base.clone(), admin.clone(), tag.clone());
        run_phase("orgs", orgs, c, move |o| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let name = format!("bench-{tag}-{o}");
            async move {
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs"),
                    Some(&admin),
                    Some(&json!({ "name": name })),
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok((id_of(&v)?, name))
            }
        })
        .await
    };
    phases.push(phase);
    let org_ids: Vec<(String, String)> = org_ids
        .into_iter()
        .collect::<Option<_>>()
        .context("cannot create the organizations")?;
    let org_id_list: Arc<Vec<String>> = Arc::new(org_ids.iter().map(|(i, _)| i.clone()).collect());

    // Projects: (org, index within the org).
    let mut items = Vec::new();
    for o in 0..orgs {
        for j in 0..share(args.projects, orgs, o) {
            items.push((o, j));
        }
    }
    let items = Arc::new(items);
    let (created, phase) = {
        let (client, base, admin, ids, it) = (
            client.clone(),
            base.clone(),
            admin.clone(),
            org_id_list.clone(),
            items.clone(),
        );
        run_phase("projects", items.len(), c, move |x| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (o, j) = it[x];
            let org = ids[o].clone();
            async move {
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs/{org}/projects"),
                    Some(&admin),
                    Some(&json!({ "name": format!("p{j}") })),
                )
                .await
                .map_err(|e| e.to_string())?;
                id_of(&v)
            }
        })
        .await
    };
    phases.push(phase);
    let mut projects: Vec<Vec<Option<String>>> = (0..orgs)
        .map(|o| vec![None; share(args.projects, orgs, o)])
        .collect();
    for (x, id) in created.into_iter().enumerate() {
        let (o, j) = items[x];
        projects[o][j] = id;
    }

    // Roles.
    let mut items = Vec::new();
    for o in 0..orgs {
        for j in 0..args.roles {
            items.push((o, j));
        }
    }
    let items = Arc::new(items);
    let (created, phase) = {
        let (client, base, admin, ids, it) = (
            client.clone(),
            base.clone(),
            admin.clone(),
            org_id_list.clone(),
            items.clone(),
        );
        run_phase("roles", items.len(), c, move |x| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (o, j) = it[x];
            let org = ids[o].clone();
            async move {
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs/{org}/roles"),
                    Some(&admin),
                    Some(&json!({ "name": format!("r{j}"), "permissions": role_permissions(j) })),
                )
                .await
                .map_err(|e| e.to_string())?;
                id_of(&v)
            }
        })
        .await
    };
    phases.push(phase);
    let mut roles: Vec<Vec<Option<String>>> = vec![vec![None; args.roles]; orgs];
    for (x, id) in created.into_iter().enumerate() {
        let (o, j) = items[x];
        roles[o][j] = id;
    }

    // Principals.
    let mut items = Vec::new();
    for o in 0..orgs {
        for i in 0..share(args.principals, orgs, o) {
            items.push((o, i));
        }
    }
    let items = Arc::new(items);
    let users_every = args.users_every;
    let (created, phase) = {
        let (client, base, admin, ids, it) = (
            client.clone(),
            base.clone(),
            admin.clone(),
            org_id_list.clone(),
            items.clone(),
        );
        run_phase("principals", items.len(), c, move |x| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (o, i) = it[x];
            let org = ids[o].clone();
            let (path, name) = if is_user(i, users_every) {
                ("users", format!("u{i}"))
            } else {
                ("service-accounts", format!("sa{i}"))
            };
            async move {
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs/{org}/{path}"),
                    Some(&admin),
                    Some(&json!({ "name": name })),
                )
                .await
                .map_err(|e| e.to_string())?;
                id_of(&v)
            }
        })
        .await
    };
    phases.push(phase);
    let mut principals: Vec<Vec<Option<String>>> = (0..orgs)
        .map(|o| vec![None; share(args.principals, orgs, o)])
        .collect();
    for (x, id) in created.into_iter().enumerate() {
        let (o, i) = items[x];
        principals[o][i] = id;
    }

    // Bindings: principal i of org o gets `share(bindings_o, principals_o, i)` of them.
    let mut items: Vec<(String, String, String, Option<String>)> = Vec::new();
    for o in 0..orgs {
        let n_principals = principals[o].len();
        let n_projects = projects[o].len();
        let org_bindings = share(args.bindings, orgs, o);
        for (i, principal) in principals[o].iter().enumerate() {
            let Some(principal) = principal else { continue };
            let count = share(org_bindings, n_principals, i);
            if count > 1 + n_projects {
                bail!(
                    "{count} bindings for one principal need at least {} projects per org",
                    count - 1
                );
            }
            for k in 0..count {
                let role = roles[o][(i + k) % args.roles].clone();
                let project = if k == 0 {
                    None
                } else {
                    match &projects[o][binding_project(i, k, n_projects)] {
                        Some(p) => Some(p.clone()),
                        None => continue,
                    }
                };
                let Some(role) = role else { continue };
                items.push((org_id_list[o].clone(), principal.clone(), role, project));
            }
        }
    }
    let items = Arc::new(items);
    let (created, phase) = {
        let (client, base, admin, it) =
            (client.clone(), base.clone(), admin.clone(), items.clone());
        run_phase("bindings", items.len(), c, move |x| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (org, principal, role, project) = it[x].clone();
            async move {
                let mut body = json!({ "principal_id": principal, "role": role });
                if let Some(p) = project {
                    body["project"] = json!(p);
                }
                match call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs/{org}/bindings"),
                    Some(&admin),
                    Some(&body),
                )
                .await
                {
                    Ok(_) => Ok(()),
                    // The first attempt got through after all.
                    Err(CallError {
                        status: Some(409), ..
                    }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    };
    phases.push(phase);
    let mut org_bindings = vec![0usize; orgs];
    for (x, done) in created.iter().enumerate() {
        if done.is_some() {
            let o = org_id_list
                .iter()
                .position(|id| *id == items[x].0)
                .unwrap_or(0);
            org_bindings[o] += 1;
        }
    }

    // Sample API keys: service accounts spread over each org, tokens scoped to the project of
    // their second binding (at org scope if they have only one).
    let mut items: Vec<(usize, String, Option<String>)> = Vec::new();
    for o in 0..orgs {
        let want = share(args.sample, orgs, o);
        let candidates: Vec<usize> = (0..principals[o].len())
            .filter(|&i| !is_user(i, users_every) && principals[o][i].is_some())
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let n_principals = principals[o].len();
        let org_bindings_total = share(args.bindings, orgs, o);
        let step = (candidates.len() / want.max(1)).max(1);
        for &i in candidates.iter().step_by(step).take(want) {
            let project = (share(org_bindings_total, n_principals, i) > 1)
                .then(|| projects[o][binding_project(i, 1, projects[o].len())].clone())
                .flatten();
            items.push((o, principals[o][i].clone().expect("filtered"), project));
        }
    }
    let items = Arc::new(items);
    let (created, phase) = {
        let (client, base, admin, ids, it) = (
            client.clone(),
            base.clone(),
            admin.clone(),
            org_id_list.clone(),
            items.clone(),
        );
        run_phase("credentials", items.len(), c, move |x| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (o, principal, _) = it[x].clone();
            let org = ids[o].clone();
            async move {
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/orgs/{org}/credentials"),
                    Some(&admin),
                    Some(&json!({ "principal_id": principal })),
                )
                .await
                .map_err(|e| e.to_string())?;
                v["api_key"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("answer has no api_key: {v}"))
            }
        })
        .await
    };
    phases.push(phase);

    let mut state = State {
        url: base.to_string(),
        orgs: org_ids
            .iter()
            .enumerate()
            .map(|(o, (id, name))| OrgState {
                id: id.clone(),
                name: name.clone(),
                projects: projects[o].iter().flatten().count(),
                principals: principals[o].iter().flatten().count(),
                bindings: org_bindings[o],
                sample: Vec::new(),
            })
            .collect(),
    };
    for (x, key) in created.into_iter().enumerate() {
        let (o, principal, project) = items[x].clone();
        if let Some(api_key) = key {
            state.orgs[o].sample.push(SampleCredential {
                principal_id: principal,
                api_key,
                project_id: project,
            });
        }
    }
    let populate_s = started.elapsed().as_secs_f64();

    // Lists of the first organization (one request each).
    if args.lists {
        let org = &org_id_list[0];
        for what in ["service-accounts", "bindings"] {
            let t0 = Instant::now();
            let result = call(
                &client,
                reqwest::Method::GET,
                &format!("{base}/v1/orgs/{org}/{what}"),
                Some(&admin),
                None,
            )
            .await;
            let us = micros(t0.elapsed());
            let mut phase = Phase {
                name: format!("list {what} (1st org, 1 request)"),
                requests: 1,
                seconds: us as f64 / 1e6,
                p50_us: us,
                p99_us: us,
                max_us: us,
                ..Phase::default()
            };
            match result {
                Ok((v, _)) => {
                    // `{"items": [...]}` (every item, no paging).
                    phase.ok = v["items"].as_array().or(v.as_array()).map_or(0, Vec::len);
                    phase.bytes = Some(v.to_string().len());
                }
                Err(e) => {
                    phase.errors.insert(e.to_string(), 1);
                }
            }
            eprintln!(
                "[iam populate] {}: {} items in {:.2} s",
                phase.name, phase.ok, phase.seconds
            );
            phases.push(phase);
        }
    }

    std::fs::write(&args.state, serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("write {}", args.state.display()))?;

    let users: usize = (0..orgs)
        .map(|o| {
            principals[o]
                .iter()
                .enumerate()
                .filter(|(i, p)| p.is_some() && is_user(*i, users_every))
                .count()
        })
        .sum();
    let total_principals: usize = state.orgs.iter().map(|o| o.principals).sum();
    let detail = PopulateDetail {
        orgs: state.orgs.len(),
        projects: state.orgs.iter().map(|o| o.projects).sum(),
        roles: roles.iter().flatten().flatten().count(),
        users,
        service_accounts: total_principals - users,
        bindings: state.orgs.iter().map(|o| o.bindings).sum(),
        credentials: state.orgs.iter().map(|o| o.sample.len()).sum(),
        total_s: populate_s,
        phases,
    };
    let requests: usize = detail
        .phases
        .iter()
        .filter(|p| !p.name.starts_with("list"))
        .map(|p| p.requests)
        .sum();
    let ok: usize = detail
        .phases
        .iter()
        .filter(|p| !p.name.starts_with("list"))
        .map(|p| p.ok)
        .sum();
    let mut errors = Errors::default();
    for p in &detail.phases {
        for (m, n) in &p.errors {
            errors.count += n;
            *errors
                .messages
                .entry(format!("{}: {m}", p.name))
                .or_default() += n;
        }
    }
    let result = IamResult {
        bench: "populate".into(),
        label: format!(
            "populate: {} orgs, {} projects, {} roles, {} principals, {} bindings, {} API keys",
            detail.orgs,
            detail.projects,
            detail.roles,
            total_principals,
            detail.bindings,
            detail.credentials
        ),
        tags: args.tags.iter().cloned().collect(),
        concurrency: c,
        duration_s: populate_s,
        ops: ok as u64,
        ops_per_sec: ok as f64 / populate_s,
        errors: errors.count,
        error_messages: errors.messages,
        detail: BTreeMap::from([("requests".to_owned(), json!(requests))]),
        populate: Some(detail),
        loadgen_cpu_s: crate::own_cpu_seconds(),
        ..IamResult::default()
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

// ---- iam load

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadWorkload {
    /// POST /v1/authorize.
    Authorize,
    /// POST /v1/tokens with an API key (grant_type api_key, project-scoped).
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Caller {
    /// The operator (admin token) asks about a principal's token (`token` in the body).
    Operator,
    /// The principal asks about itself (its token in the header, no `token` in the body).
    Principal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Decision {
    /// Permissions the token grants (answer: allowed).
    Allow,
    /// Permissions no binding grants (answer: denied; iam audits every denial).
    Deny,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The state file `iam populate` wrote.
    #[arg(long)]
    state: PathBuf,
    /// iam's base URL (default: the one in the state file).
    #[arg(long)]
    url: Option<String>,
    /// The node's admin token (the operator), read from this file.
    #[arg(long)]
    admin_token_file: PathBuf,
    #[arg(long, value_enum, default_value = "authorize")]
    workload: LoadWorkload,
    /// authorize: who asks.
    #[arg(long = "as", value_enum, default_value = "operator")]
    caller: Caller,
    /// authorize: which answer the requests should get.
    #[arg(long, value_enum, default_value = "allow")]
    decision: Decision,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Per-request timeout in seconds; longer counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The issuer iam signs with (`[iam] issuer`).
    #[arg(long, default_value = "ultracloud-iam")]
    issuer: String,
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
}

/// One prepared request.
struct Prepared {
    bearer: Option<Arc<str>>,
    body: Vec<u8>,
    /// authorize: the expected `allowed`.
    expect: Option<bool>,
}

struct LoadSample {
    latencies: Vec<u64>,
    errors: Errors,
    /// Answers seen, by `allowed` and reason.
    reasons: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct AuthorizeAnswer {
    allowed: bool,
    #[serde(default)]
    reason: String,
}

async fn load_worker(
    client: reqwest::Client,
    url: Arc<str>,
    requests: Arc<Vec<Prepared>>,
    id: usize,
    measure_from: Instant,
    end: Instant,
) -> LoadSample {
    let mut rng = XorShift::new(id as u64 + 17);
    let mut sample = LoadSample {
        latencies: Vec::new(),
        errors: Errors::default(),
        reasons: BTreeMap::new(),
    };
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let r = &requests[(rng.next() % requests.len() as u64) as usize];
        let mut req = client
            .post(&*url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r.body.clone());
        if let Some(b) = &r.bearer {
            req = req.bearer_auth(b);
        }
        let result: Result<Option<String>, String> = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) if status == 200 => match r.expect {
                        None => Ok(None),
                        Some(expect) => match serde_json::from_slice::<AuthorizeAnswer>(&bytes) {
                            Ok(a) if a.allowed == expect => {
                                Ok(Some(format!("allowed={}: {}", a.allowed, a.reason)))
                            }
                            Ok(a) => Err(format!(
                                "expected allowed={expect}, got allowed={}: {}",
                                a.allowed, a.reason
                            )),
                            Err(e) => Err(format!("unreadable answer: {e}")),
                        },
                    },
                    Ok(bytes) => Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    )),
                    Err(e) => Err(format!("{status}: reading the answer: {e}")),
                }
            }
            Err(e) if e.is_timeout() => Err("client-side timeout".into()),
            Err(e) => Err(format!("{e}")),
        };
        let elapsed = started.elapsed();
        let measured = started >= measure_from;
        match result {
            Ok(reason) if measured => {
                sample.latencies.push(micros(elapsed));
                if let Some(reason) = reason {
                    *sample.reasons.entry(reason).or_default() += 1;
                }
            }
            Ok(_) => {}
            Err(message) => {
                if measured {
                    sample.errors.add(message);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    sample
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let state: State = serde_json::from_slice(
        &std::fs::read(&args.state).with_context(|| format!("read {}", args.state.display()))?,
    )
    .context("state file")?;
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| state.url.clone())
        .trim_end_matches('/')
        .to_owned();
    let admin: Arc<str> = read_trimmed(&args.admin_token_file)?.into();
    let client = http_client(Duration::from_secs_f64(args.timeout), args.concurrency)?;
    let samples: Vec<(String, SampleCredential)> = state
        .orgs
        .iter()
        .flat_map(|o| o.sample.iter().map(|s| (o.id.clone(), s.clone())))
        .collect();
    if samples.is_empty() {
        bail!("the state file has no sample credentials");
    }

    let mut requests = Vec::new();
    let mut detail = BTreeMap::new();
    match args.workload {
        LoadWorkload::Token => {
            for (_, s) in &samples {
                let mut body = json!({"grant_type": "api_key", "api_key": s.api_key});
                if let Some(p) = &s.project_id {
                    body["project"] = json!(p);
                }
                requests.push(Prepared {
                    bearer: None,
                    body: serde_json::to_vec(&body)?,
                    expect: None,
                });
            }
        }
        LoadWorkload::Authorize => {
            let (jwks, _) = call(
                &client,
                reqwest::Method::GET,
                &format!("{base}/v1/jwks"),
                None,
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("GET /v1/jwks: {e}"))?;
            let verifier = Verifier::new(&args.issuer, DEFAULT_AUDIENCE);
            verifier.set_keys(&serde_json::from_value::<JwkSet>(jwks)?)?;
            let mut perms_per_token = Vec::new();
            let mut token_bytes = Vec::new();
            for (org, s) in &samples {
                let mut body = json!({"grant_type": "api_key", "api_key": s.api_key});
                if let Some(p) = &s.project_id {
                    body["project"] = json!(p);
                }
                let (v, _) = call(
                    &client,
                    reqwest::Method::POST,
                    &format!("{base}/v1/tokens"),
                    None,
                    Some(&body),
                )
                .await
                .map_err(|e| anyhow::anyhow!("POST /v1/tokens for {}: {e}", s.principal_id))?;
                let token = v["access_token"]
                    .as_str()
                    .context("token answer without access_token")?
                    .to_owned();
                let claims = verifier
                    .verify(&token)
                    .map_err(|e| anyhow::anyhow!("iam's token does not verify here: {e}"))?;
                perms_per_token.push(claims.perms.len());
                token_bytes.push(token.len());
                let permissions: Vec<String> = match args.decision {
                    Decision::Allow => {
                        let mut p: Vec<String> =
                            claims.perms.iter().filter_map(|p| concrete(p)).collect();
                        p.sort();
                        p.dedup();
                        p
                    }
                    Decision::Deny => DENIED
                        .iter()
                        .filter(|d| !claims.perms.iter().any(|p| permission_matches(p, d)))
                        .map(|d| (*d).to_owned())
                        .collect(),
                };
                let token: Arc<str> = token.into();
                for permission in permissions {
                    let mut body = json!({
                        "permission": permission,
                        "org": org,
                        "resource": "bench-resource",
                    });
                    if let Some(p) = &claims.project {
                        body["project"] = json!(p);
                    }
                    let bearer = match args.caller {
                        Caller::Operator => {
                            body["token"] = json!(&*token);
                            admin.clone()
                        }
                        Caller::Principal => token.clone(),
                    };
                    requests.push(Prepared {
                        bearer: Some(bearer),
                        body: serde_json::to_vec(&body)?,
                        expect: Some(args.decision == Decision::Allow),
                    });
                }
            }
            perms_per_token.sort_unstable();
            token_bytes.sort_unstable();
            detail.insert(
                "token_perms_min_median_max".into(),
                json!([
                    perms_per_token[0],
                    perms_per_token[perms_per_token.len() / 2],
                    perms_per_token[perms_per_token.len() - 1]
                ]),
            );
            detail.insert(
                "token_bytes_median".into(),
                json!(token_bytes[token_bytes.len() / 2]),
            );
            if requests.is_empty() {
                bail!("no request to make: the sample tokens grant nothing to ask about");
            }
        }
    }
    detail.insert("tokens".into(), json!(samples.len()));
    detail.insert("distinct_requests".into(), json!(requests.len()));

    let url: Arc<str> = match args.workload {
        LoadWorkload::Authorize => format!("{base}/v1/authorize"),
        LoadWorkload::Token => format!("{base}/v1/tokens"),
    }
    .into();
    let requests = Arc::new(requests);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for id in 0..args.concurrency {
        tasks.push(tokio::spawn(load_worker(
            client.clone(),
            url.clone(),
            requests.clone(),
            id,
            measure_from,
            end,
        )));
    }
    let mut latencies = Vec::new();
    let mut errors = Errors::default();
    let reasons = Mutex::new(BTreeMap::<String, u64>::new());
    for t in tasks {
        let s = t.await?;
        latencies.extend(s.latencies);
        errors.merge(s.errors);
        let mut r = reasons.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in s.reasons {
            *r.entry(k).or_default() += v;
        }
    }
    let reasons = reasons.into_inner().unwrap_or_else(|e| e.into_inner());
    if !reasons.is_empty() {
        detail.insert("answers".into(), json!(reasons));
    }
    let label = match args.workload {
        LoadWorkload::Token => "POST /v1/tokens (api_key grant, project-scoped)".to_owned(),
        LoadWorkload::Authorize => format!(
            "POST /v1/authorize, {}, {}",
            match args.caller {
                Caller::Operator => "operator asks for a token",
                Caller::Principal => "principal asks for itself",
            },
            match args.decision {
                Decision::Allow => "allowed",
                Decision::Deny => "denied (audited)",
            }
        ),
    };
    let mut result = IamResult {
        bench: match args.workload {
            LoadWorkload::Authorize => "authorize".into(),
            LoadWorkload::Token => "token".into(),
        },
        label,
        tags: args.tags.iter().cloned().collect(),
        concurrency: args.concurrency,
        duration_s: args.duration,
        warmup_s: args.warmup,
        errors: errors.count,
        error_messages: errors.messages,
        detail,
        ..IamResult::default()
    };
    fill_latencies(&mut result, latencies);
    result.loadgen_cpu_s = crate::own_cpu_seconds();
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

// ---- iam report

#[derive(Debug, clap::Args)]
struct IamReportArgs {
    /// A file of JSON lines written by `iam verify`, `iam populate` and `iam load`.
    file: PathBuf,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = widths[c] - s.chars().count();
                if c == 0 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        println!("| {} |", line.join(" | "));
        if i == 0 {
            // Each cell is its width plus a space either side; numbers are right-aligned.
            let sep: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(w + 2)
                    } else {
                        format!("{}:", "-".repeat(w + 1))
                    }
                })
                .collect();
            println!("|{}|", sep.join("|"));
        }
    }
}

fn cores(cpu: Option<f64>, wall: Option<f64>) -> String {
    match (cpu, wall) {
        (Some(c), Some(w)) if w > 0.0 => format!("{:.2}", c / w),
        _ => "-".into(),
    }
}

fn report(args: &IamReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read {}", args.file.display()))?;
    let mut results = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: IamResult = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", args.file.display(), n + 1))?;
        results.push(r);
    }
    let mut all_errors: Vec<(String, String, u64)> = Vec::new();

    let offline: Vec<&IamResult> = results
        .iter()
        .filter(|r| {
            matches!(
                r.bench.as_str(),
                "verify"
                    | "verify-distinct"
                    | "authenticate"
                    | "authenticate-distinct"
                    | "sign"
                    | "ed25519"
            )
        })
        .collect();
    if !offline.is_empty() {
        println!("Offline (no network): one token signed by the active key of a 2-key JWKS");
        println!();
        let mut rows = vec![vec![
            "operation".to_owned(),
            "threads".to_owned(),
            "ops/s".to_owned(),
            "ops/CPU-s".to_owned(),
            "µs/op".to_owned(),
            "errors".to_owned(),
            "other cores".to_owned(),
            "stolen cores".to_owned(),
        ]];
        for r in &offline {
            rows.push(vec![
                r.label.clone(),
                r.concurrency.to_string(),
                format!("{:.0}", r.ops_per_sec),
                r.ops_per_cpu_s.map_or("-".into(), |v| format!("{v:.0}")),
                r.mean_ns
                    .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
                r.errors.to_string(),
                cores(r.other_cpu_s, r.wall_s),
                cores(r.steal_cpu_s, r.wall_s),
            ]);
            for (m, n) in &r.error_messages {
                all_errors.push((r.label.clone(), m.clone(), *n));
            }
        }
        print_table(&rows);
        println!();
        println!(
            "ops/s: wall-clock rate summed over threads; ops/CPU-s: per CPU second the measuring threads actually got (the per-core figure when the machine is shared); µs/op: wall time per operation per thread; other cores: CPU used by everything else on the machine meanwhile; stolen cores: CPU the hypervisor gave to other guests while this one wanted it (either well above 0: the row was disturbed)."
        );
        println!();
    }

    for r in results.iter().filter(|r| r.bench == "populate") {
        let Some(p) = &r.populate else { continue };
        println!(
            "Populate through iam's REST API as the operator, {} requests in flight: {} orgs, {} projects, {} custom roles, {} principals ({} users, {} service accounts), {} bindings, {} API keys — {:.1} s",
            r.concurrency,
            p.orgs,
            p.projects,
            p.roles,
            p.users + p.service_accounts,
            p.users,
            p.service_accounts,
            p.bindings,
            p.credentials,
            p.total_s
        );
        println!();
        let mut rows = vec![vec![
            "phase".to_owned(),
            "requests".to_owned(),
            "ok".to_owned(),
            "seconds".to_owned(),
            "ok/s".to_owned(),
            "p50 ms".to_owned(),
            "p99 ms".to_owned(),
            "max ms".to_owned(),
        ]];
        for ph in &p.phases {
            rows.push(vec![
                ph.name.clone(),
                ph.requests.to_string(),
                match ph.bytes {
                    Some(b) => format!("{} items, {:.1} MB", ph.ok, b as f64 / 1e6),
                    None => ph.ok.to_string(),
                },
                format!("{:.1}", ph.seconds),
                format!("{:.0}", ph.per_sec),
                ms(ph.p50_us),
                ms(ph.p99_us),
                ms(ph.max_us),
            ]);
        }
        print_table(&rows);
        println!();
        println!(
            "server: {} cores over the populate; loadgen {:.1} CPU-s",
            cores(r.server_cpu_s, r.wall_s),
            r.loadgen_cpu_s
        );
        println!();
        for (m, n) in &r.error_messages {
            all_errors.push(("populate".into(), m.clone(), *n));
        }
    }

    let online: Vec<&IamResult> = results
        .iter()
        .filter(|r| matches!(r.bench.as_str(), "authorize" | "token"))
        .collect();
    if !online.is_empty() {
        println!("Over loopback (HTTP/1.1, one request in flight per client)");
        println!();
        let mut rows = vec![vec![
            "request".to_owned(),
            "c".to_owned(),
            "ops/s".to_owned(),
            "p50 ms".to_owned(),
            "p90 ms".to_owned(),
            "p99 ms".to_owned(),
            "max ms".to_owned(),
            "errors".to_owned(),
            "server cores".to_owned(),
            "loadgen cores".to_owned(),
            "other cores".to_owned(),
            "stolen cores".to_owned(),
        ]];
        for r in &online {
            rows.push(vec![
                r.label.clone(),
                r.concurrency.to_string(),
                format!("{:.0}", r.ops_per_sec),
                ms(r.p50_us),
                ms(r.p90_us),
                ms(r.p99_us),
                ms(r.max_us),
                r.errors.to_string(),
                cores(r.server_cpu_s, r.wall_s),
                cores(Some(r.loadgen_cpu_s), r.wall_s),
                cores(r.other_cpu_s, r.wall_s),
                cores(r.steal_cpu_s, r.wall_s),
            ]);
            for (m, n) in &r.error_messages {
                all_errors.push((format!("{} c={}", r.label, r.concurrency), m.clone(), *n));
            }
        }
        print_table(&rows);
        println!();
        if let Some(r) = online.iter().find(|r| r.bench == "authorize") {
            println!(
                "tokens: {} sample principals; permissions per token (min/median/max) {}; token size (median) {} bytes",
                r.detail.get("tokens").map_or("-".into(), Value::to_string),
                r.detail
                    .get("token_perms_min_median_max")
                    .map_or("-".into(), Value::to_string),
                r.detail
                    .get("token_bytes_median")
                    .map_or("-".into(), Value::to_string),
            );
            println!();
        }
    }

    if !all_errors.is_empty() {
        println!("errors:");
        for (row, m, n) in all_errors {
            println!("  {row}: {n} × {m}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_hold_valid_distinct_patterns() {
        for j in 0..10 {
            let perms = role_permissions(j);
            assert!((5..=25).contains(&perms.len()), "role {j}: {}", perms.len());
            for p in &perms {
                let c = concrete(p).expect("every pattern has a concrete permission");
                assert!(permission_matches(p, &c), "{p} vs {c}");
                assert!(DENIED.iter().all(|d| !permission_matches(p, d)));
            }
        }
    }

    #[test]
    fn a_principals_project_bindings_are_distinct() {
        for projects in [1000, 101, 202, 7] {
            for i in [0, 1, 99, 9999] {
                let mut seen: Vec<usize> = (1..projects.min(10))
                    .map(|k| binding_project(i, k, projects))
                    .collect();
                let n = seen.len();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), n, "projects={projects} i={i}");
            }
        }
    }

    #[test]
    fn shares_add_up() {
        for (n, parts) in [(100_000, 1), (100_000, 3), (7, 3), (10, 10)] {
            assert_eq!((0..parts).map(|i| share(n, parts, i)).sum::<usize>(), n);
        }
    }
}
