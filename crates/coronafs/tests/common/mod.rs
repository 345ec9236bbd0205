//! Shared helpers: a cloud under uc-testkit, HTTP calls, real qemu-io against exports, and a
//! guard that no qemu-nbd outlives a test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

/// One HTTP call: (status, JSON body or Null).
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = uc_testkit::http_client()
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(60));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("server answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A tenant organization with an admin user; returns its access token.
pub async fn tenant(iam: &str, admin: &str, org: &str) -> String {
    let (s, o) = call(
        iam,
        Some(admin),
        reqwest::Method::POST,
        "/v1/orgs",
        Some(json!({"name": org})),
    )
    .await;
    assert_eq!(s, 201, "{o}");
    let org_id = o["id"].as_str().unwrap();
    let password = "correct-horse-battery";
    let (s, u) = call(
        iam,
        Some(admin),
        reqwest::Method::POST,
        &format!("/v1/orgs/{org_id}/users"),
        Some(json!({"name": "alice", "password": password})),
    )
    .await;
    assert_eq!(s, 201, "{u}");
    let (s, b) = call(
        iam,
        Some(admin),
        reqwest::Method::POST,
        &format!("/v1/orgs/{org_id}/bindings"),
        Some(json!({"principal_id": u["id"], "role": "admin"})),
    )
    .await;
    assert!((200..300).contains(&s), "{b}");
    let (s, t) = call(
        iam,
        None,
        reqwest::Method::POST,
        "/v1/tokens",
        Some(json!({"grant_type": "password", "org": org_id, "username": "alice", "password": password})),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    t["access_token"].as_str().unwrap().to_owned()
}

/// `qemu-io` against an NBD URL (raw, as qemu-nbd exports); its stdout. Panics on failure.
pub fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let (ok, out) = try_qemu_io(url, cmds);
    assert!(ok, "qemu-io {cmds:?} {url}: {out}");
    out
}

/// `qemu-io` that may fail: (success, stdout+stderr).
pub fn try_qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(url).output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io exits 0 even when a pattern check fails; it prints "Pattern verification failed".
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

/// `qemu-img info` of an NBD URL: the virtual size.
pub fn nbd_size(url: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "raw", url])
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// qemu-nbd processes serving a file under `root`.
pub fn qemu_nbd_pids_under(root: &Path) -> Vec<u32> {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let s = String::from_utf8_lossy(&c);
                    s.starts_with("qemu-nbd") && s.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Exports run in their own process group (they outlive a node crash by design), so the
/// cluster's cleanup does not reach them: this does, also when a test fails.
pub struct NbdReaper(pub PathBuf);

impl Drop for NbdReaper {
    fn drop(&mut self) {
        for pid in qemu_nbd_pids_under(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Waits until `f` holds (a node registering, a process appearing), up to 60 s.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
