//! `ultracloud up`, `serve`, `version` as an operator runs them: real processes, real signals.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use uc_testkit::{Cluster, ClusterBuilder, NodeInfo, free_port, http_client, http_status};

const BIN: &str = env!("CARGO_BIN_EXE_ultracloud");

/// The binary with no inherited `UC_*` overrides.
fn ultracloud() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("UC_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// One `ultracloud up` under uc-testkit, with `extra` appended to its config.
fn up_node(extra: &'static str) -> ClusterBuilder {
    Cluster::all_in_one(extra)
}

fn admin_token(n: &NodeInfo) -> String {
    std::fs::read_to_string(n.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn up_serves_health_and_stops_cleanly_on_sigterm() {
    let mut cluster = up_node("").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    assert_eq!(http_status(n.addr("node"), "/healthz").await, Some(200));
    assert_eq!(http_status(n.addr("node"), "/readyz").await, Some(200));

    let http = http_client();
    let url = format!("{}/v1/node", n.url("node"));
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let r = http
        .get(&url)
        .bearer_auth(admin_token(&n))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_secs"].is_u64());
    let components = status["components"].to_string();
    assert!(
        components.contains(&format!("http://{}", n.addr("client"))),
        "{components}"
    );

    // up runs chainfire: the etcd API answers with the admin token.
    let token = uc_runtime::Secret::new(admin_token(&n));
    let mut etcd = chainfire::client::Client::connect(&n.url("client"), &token, None)
        .await
        .unwrap();
    use chainfire::etcdpb::etcdserverpb as pb;
    etcd.kv
        .put(pb::PutRequest {
            key: b"hello".to_vec(),
            value: b"world".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = etcd
        .kv
        .range(pb::RangeRequest {
            key: b"hello".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs[0].value, b"world");

    // The API description is public and names its paths, auth scheme and error shape.
    let r = http
        .get(format!("{}/v1/openapi.json", n.url("node")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert!(doc["paths"]["/v1/node"]["get"].is_object(), "{doc}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "{doc}"
    );

    let log = cluster.node(0).log();
    assert!(
        log.contains(&format!("http://{}", n.addr("node"))),
        "endpoints printed: {log}"
    );
    assert!(log.contains("admin credential:"), "{log}");
    assert!(log.contains(&n.data_dir.join("secrets/admin-token").display().to_string()));

    let pid = cluster.node(0).pid().unwrap() as i32;
    let started = Instant::now();
    let exit = cluster
        .node_mut(0)
        .terminate(Duration::from_secs(10))
        .expect("exits by itself on SIGTERM");
    assert!(exit.success(), "exit 0, got {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing left in its process group: no orphans.
    assert!(
        killpg(Pid::from_raw(pid), None).is_err(),
        "process group still has members"
    );
}

#[tokio::test]
async fn secrets_are_private_and_never_logged() {
    let mut cluster = up_node("[log]\nlevel = \"debug\"\nformat = \"json\"\n")
        .start()
        .await
        .unwrap();
    let n = cluster.node(0).info.clone();
    let secrets_dir = n.data_dir.join("secrets");
    let files = ["admin-token", "master.key", "signing.key"].map(|f| secrets_dir.join(f));
    assert_eq!(mode(&n.data_dir), 0o700);
    assert_eq!(mode(&secrets_dir), 0o700);
    let values: Vec<String> = files
        .iter()
        .map(|f| {
            assert_eq!(mode(f), 0o600, "{}", f.display());
            std::fs::read_to_string(f).unwrap().trim().to_owned()
        })
        .collect();
    assert!(values.iter().all(|v| v.len() == 64), "32 random bytes, hex");

    // Use the token, and send the other secrets as (wrong) tokens: none may reach the log.
    let http = http_client();
    for token in &values {
        let _ = http
            .get(format!("{}/v1/node", n.url("node")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let _ = http
            .get(format!("{}/metrics?token={token}", n.url("node")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    let first_token = values[0].clone();
    cluster.restart(0).await.unwrap();
    assert_eq!(
        admin_token(&n),
        first_token,
        "secrets are kept across restarts"
    );
    cluster.node_mut(0).terminate(Duration::from_secs(10));

    let log = cluster.node(0).log();
    assert!(
        log.contains("\"status\":200") || log.contains("status=200"),
        "debug request logs present: {log}"
    );
    assert!(
        log.lines().filter(|l| l.starts_with('{')).count() > 5,
        "json logs: {log}"
    );
    for (file, value) in files.iter().zip(&values) {
        assert!(
            !log.contains(value.as_str()),
            "{} leaked into the log",
            file.display()
        );
    }
}

struct ConfigCase {
    name: &'static str,
    config: &'static str,
    env: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    expect: &'static [&'static str],
}

#[test]
fn config_errors_exit_2_naming_the_key_and_write_nothing() {
    let cases = [
        ConfigCase {
            name: "unknown key",
            config: "[node]\nbind = \"127.0.0.1\"\nprot = 8070\n",
            env: &[],
            args: &[],
            expect: &["key `node.prot`", "line 3", "unknown field"],
        },
        ConfigCase {
            name: "unknown section",
            config: "[nodes]\nport = 1\n",
            env: &[],
            args: &[],
            expect: &["key `nodes`", "line 1"],
        },
        ConfigCase {
            name: "wrong type",
            config: "[http]\nmax_body_bytes = \"lots\"\n",
            env: &[],
            args: &[],
            expect: &["key `http.max_body_bytes`", "line 2", "invalid type"],
        },
        ConfigCase {
            name: "unparsable value",
            config: "[node]\nbind = \"not-an-ip\"\n",
            env: &[],
            args: &[],
            expect: &["key `node.bind`", "line 2"],
        },
        ConfigCase {
            name: "broken TOML",
            config: "[node\nport = 1\n",
            env: &[],
            args: &[],
            expect: &["line 1"],
        },
        ConfigCase {
            name: "bad log filter",
            config: "[log]\nlevel = \"info,[[[\"\n",
            env: &[],
            args: &[],
            expect: &["log.level"],
        },
        ConfigCase {
            name: "bad log format",
            config: "[log]\nformat = \"xml\"\n",
            env: &[],
            args: &[],
            expect: &["key `log.format`", "line 2"],
        },
        ConfigCase {
            name: "bad environment override",
            config: "",
            env: &[("UC_NODE__PORT", "eighty")],
            args: &[],
            expect: &["UC_NODE__PORT", "key `node.port`"],
        },
        ConfigCase {
            name: "unknown environment key",
            config: "",
            env: &[("UC_NODE__PROT", "1")],
            args: &[],
            expect: &["UC_NODE__PROT", "key `node.prot`"],
        },
        ConfigCase {
            name: "bad flag",
            config: "",
            env: &[],
            args: &["--bind", "nowhere"],
            expect: &["--bind"],
        },
        ConfigCase {
            name: "missing TLS files",
            config: "[http.tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
            env: &[],
            args: &[],
            expect: &["http.tls", "/nonexistent/c.pem"],
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(&config, case.config).unwrap();
        let data_dir = dir.path().join("data");
        let out = ultracloud()
            .arg("up")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(case.args)
            .envs(case.env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", case.name);
        for needle in case.expect {
            assert!(
                stderr.contains(needle),
                "{}: expected `{needle}` in: {stderr}",
                case.name
            );
        }
        assert!(
            !data_dir.exists(),
            "{}: data directory was written",
            case.name
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["up", "--no-such-flag"][..],
        &["serve", "nothing"],
        &["frobnicate"],
        &[],
    ] {
        let out = ultracloud().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn serve_without_an_admin_token_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\n",
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let out = ultracloud()
        .args(["serve", "node", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth.admin_token_file"), "{stderr}");
    assert!(!dir.path().join("d").exists());

    // Too short a token is refused too.
    let token = dir.path().join("token");
    uc_runtime::secret::write_secret_file(&token, b"short").unwrap();
    std::fs::write(
        &config,
        format!("[auth]\nadmin_token_file = \"{}\"\n", token.display()),
    )
    .unwrap();
    let out = ultracloud()
        .args(["serve", "node", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
}

#[tokio::test]
async fn a_data_directory_serves_one_process_at_a_time() {
    let cluster = up_node("").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let port = free_port(n.ip);
    let out = ultracloud()
        .arg("up")
        .arg("--data-dir")
        .arg(&n.data_dir)
        .env("UC_NODE__PORT", port.to_string())
        .env("UC_NODE__BIND", n.ip.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another ultracloud process"),
        "{stderr}"
    );
}

/// Reads a pretty-printed JSON document from the start of a stream.
fn read_json(reader: &mut impl BufRead) -> serde_json::Value {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "EOF before JSON ended: {text}"
        );
        text.push_str(&line);
        if let Ok(value) = serde_json::from_str(&text) {
            return value;
        }
    }
}

#[test]
fn up_prints_endpoints_as_json_and_honours_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 42);
    let port = free_port(ip);
    let mut child = ultracloud()
        .args(["-o", "json", "up", "--bind", "127.0.0.42", "--data-dir"])
        .arg(dir.path().join("d"))
        .env("UC_NODE__PORT", port.to_string())
        .env("UC_NODE__NAME", "json-node")
        .env("UC_CHAINFIRE__CLIENT_PORT", free_port(ip).to_string())
        .env("UC_CHAINFIRE__PEER_PORT", free_port(ip).to_string())
        .env("UC_CHAINFIRE__ADMIN_PORT", free_port(ip).to_string())
        .env("UC_FLAREDB__REST_PORT", free_port(ip).to_string())
        .env("UC_FLAREDB__PG_PORT", free_port(ip).to_string())
        .env("UC_FLAREDB__PEER_PORT", free_port(ip).to_string())
        .env("UC_IAM__PORT", free_port(ip).to_string())
        .env("UC_PRISMNET__PORT", free_port(ip).to_string())
        .env("UC_CORONAFS__PORT", free_port(ip).to_string())
        .env("UC_PLASMAVMC__PORT", free_port(ip).to_string())
        .env("UC_PLASMAVMC_WORKER__PORT", free_port(ip).to_string())
        .env("UC_PLASMAVMC_WORKER__ACCEL", "tcg")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let report = read_json(&mut stdout);
    assert_eq!(report["node"], "json-node");
    assert_eq!(report["endpoints"][0]["component"], "node");
    assert_eq!(
        report["endpoints"][0]["url"],
        format!("http://127.0.0.42:{port}")
    );
    assert!(
        report["admin_token_file"]
            .as_str()
            .unwrap()
            .ends_with("secrets/admin-token")
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert!(child.wait().unwrap().success(), "SIGINT exits 0 as well");
}

#[test]
fn version_prints_table_or_json() {
    let out = ultracloud().arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("FIELD"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")));

    let out = ultracloud()
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn tls_from_the_config_file() {
    // Components call each other over TLS too (flaredb → chainfire, up → flaredb), by IP:
    // the certificate names it and the node trusts its CA.
    let pki = uc_testkit::pki::TestPki::new(&["localhost", "127.0.0.1"]);
    let (ca, cert, key) = (&pki.ca, &pki.server_cert, &pki.server_key);
    let port = free_port(std::net::Ipv4Addr::LOCALHOST);
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nport = {port}\n[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\ntrusted_ca_file = \"{}\"\n\
             [chainfire]\nclient_port = {}\npeer_port = {}\nadmin_port = {}\n\
             [flaredb]\nrest_port = {}\npg_port = {}\npeer_port = {}\n[iam]\nport = {}\n\
             [prismnet]\nport = {}\n[coronafs]\nport = {}\n[plasmavmc]\nport = {}\n\
             [plasmavmc_worker]\nport = {}\naccel = \"tcg\"\n",
            cert.display(),
            key.display(),
            ca.display(),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
            free_port(std::net::Ipv4Addr::LOCALHOST),
        ),
    )
    .unwrap();
    let mut child = ultracloud()
        .arg("up")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path().join("d"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    uc_runtime::tls::ensure_crypto_provider();
    let https = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge([reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/healthz");
    // A hang guard, not a timing check: CI's 2 cores may be busy with emulated guests.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Ok(r) = https.get(&url).send().await {
            break r.status();
        }
        assert!(Instant::now() < deadline, "no TLS answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());

    // A key others can read is refused before anything starts.
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ultracloud()
        .arg("up")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    assert!(!data.path().join("d2").exists());
}

/// `ultracloud flaredb …` against the flaredb that `up` runs, and psql on its wire port.
#[tokio::test]
async fn up_runs_flaredb_and_its_cli_and_psql_work() {
    let cluster = up_node("").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let token_file = n.data_dir.join("secrets/admin-token");
    let cli = |args: &[&str]| {
        let out = ultracloud()
            .args(["flaredb", "--endpoint", &n.url("rest"), "--token-file"])
            .arg(&token_file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = cli(&["-o", "json", "namespace", "create", "app"]);
    assert_eq!(code, Some(0), "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let password = created["password"].as_str().unwrap().to_owned();
    let (code, _, stderr) = cli(&["namespace", "create", "app"]);
    assert_eq!(code, Some(1), "an existing namespace is refused: {stderr}");
    assert!(stderr.contains("exists"), "{stderr}");

    let (code, _, stderr) = cli(&[
        "sql",
        "-n",
        "app",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = cli(&["sql", "-n", "app", "SELECT v FROM t ORDER BY id"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("one") && stdout.contains("two"), "{stdout}");
    let (code, _, stderr) = cli(&["sql", "-n", "app", "SELEC nonsense"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("42601"), "the SQLSTATE is shown: {stderr}");

    // psql on the wire port sees the same rows.
    let out = Command::new("psql")
        .env("PGPASSWORD", &password)
        .args([
            "-h",
            &n.ip.to_string(),
            "-p",
            &n.port("pg").to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT count(*) FROM t",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // Backup, change, restore: the backup's contents come back. The file is private.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("app.backup");
    let (code, _, stderr) = cli(&["backup", "-n", "app", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(mode(&backup), 0o600);
    cli(&["sql", "-n", "app", "DELETE FROM t"]);
    let (code, _, stderr) = cli(&["restore", "-n", "app", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let count = || {
        let (_, stdout, _) = cli(&[
            "-o",
            "json",
            "sql",
            "-n",
            "app",
            "SELECT count(*) AS n FROM t",
        ]);
        let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        answer["results"][0]["rows"][0][0].as_i64()
    };
    assert_eq!(count(), Some(2));
    // A damaged backup is refused and changes nothing.
    std::fs::write(&backup, b"not a backup").unwrap();
    let (code, _, stderr) = cli(&["restore", "-n", "app", backup.to_str().unwrap()]);
    assert_eq!(code, Some(2), "a bad input file is a usage error: {stderr}");
    assert_eq!(count(), Some(2), "unchanged");

    let (code, stdout, stderr) = cli(&["namespace", "list"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("app"), "{stdout}");
    let (code, _, stderr) = cli(&["namespace", "drop", "app"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, _) = cli(&["sql", "-n", "app", "SELECT 1"]);
    assert_eq!(code, Some(1), "a dropped namespace is gone");
}

/// Production mode refuses generated bootstrap secrets, naming each missing input, and writes
/// nothing.
#[test]
fn production_mode_requires_explicit_bootstrap_secrets() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("node.toml");
    std::fs::write(&config, "[iam]\nproduction = true\n").unwrap();
    let out = ultracloud()
        .arg("up")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "auth.admin_token_file",
        "iam.master_key_file",
        "iam.signing_key_file",
    ] {
        assert!(stderr.contains(key), "{key} named: {stderr}");
    }
    assert!(!data.path().join("d").exists(), "nothing written");
}

/// `ultracloud iam …` end to end: an org, a user with a password, a binding, a token.
#[tokio::test]
async fn iam_cli_creates_tenants_and_issues_tokens() {
    let cluster = up_node("").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let token_file = n.data_dir.join("secrets/admin-token");
    let cli = |args: &[&str]| {
        let out = ultracloud()
            .args(["iam", "--endpoint", &n.url("iam"), "--token-file"])
            .arg(&token_file)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let org: serde_json::Value =
        serde_json::from_str(&cli(&["-o", "json", "org", "create", "acme"])).unwrap();
    assert_eq!(org["name"], "acme");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    uc_runtime::secret::write_secret_file(&password_file, b"a-long-password-42\n").unwrap();
    let user: serde_json::Value = serde_json::from_str(&cli(&[
        "-o",
        "json",
        "user",
        "--org",
        "acme",
        "create",
        "ann",
        "--password-file",
        password_file.to_str().unwrap(),
    ]))
    .unwrap();
    let user_id = user["id"].as_str().unwrap();
    cli(&[
        "binding",
        "--org",
        "acme",
        "--principal",
        user_id,
        "--role",
        "member",
    ]);
    let roles = cli(&["role", "--org", "acme"]);
    assert!(roles.contains("viewer"), "{roles}");
    let token: serde_json::Value = serde_json::from_str(&cli(&[
        "-o",
        "json",
        "token",
        "password",
        "--org",
        "acme",
        "--username",
        "ann",
        "--password-file",
        password_file.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(
        token["access_token"].as_str().unwrap().split('.').count(),
        3
    );
    let listed = cli(&["org", "list"]);
    assert!(listed.contains("acme"), "{listed}");
    let keys = cli(&["key", "list"]);
    assert!(keys.contains("active"), "{keys}");
}
