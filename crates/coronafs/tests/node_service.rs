//! The node service core against real qemu-img / qemu-nbd / qemu-io, without HTTP: volumes,
//! exports, snapshots, resize, restore after a crash, and no orphan processes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use coronafs::api::{NodeCreateVolume, NodeSource, VolumeFormat};
use coronafs::node::{NodeService, NodeSettings};

fn settings(dir: &Path) -> NodeSettings {
    NodeSettings {
        name: "n1".into(),
        dir: dir.to_path_buf(),
        nbd_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        nbd_host: "127.0.0.1".into(),
        port_range: None,
        tls_dir: None,
        cache: "writeback".into(),
        aio: "threads".into(),
        max_volume_bytes: 1 << 40,
    }
}

/// `qemu-io` against an NBD URL; its stdout.
fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(url).output().expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed"),
        "qemu-io {cmds:?} {url}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn qemu_nbd_pids_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
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

fn blank(size: u64, format: VolumeFormat) -> NodeCreateVolume {
    NodeCreateVolume {
        size_bytes: Some(size),
        format,
        source: NodeSource::Blank,
    }
}

async fn service(dir: &Path) -> Arc<NodeService> {
    let n = NodeService::new(settings(dir)).unwrap();
    n.restore().await.unwrap();
    n
}

/// Runs `f` in a runtime of its own that is dropped afterwards, like a node process whose
/// tasks all vanish at once (a crash): nothing of the service runs any more, but the qemu-nbd
/// processes it started live on.
fn life<T>(f: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}

#[test]
fn export_snapshot_clone_resize_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coronafs");
    let guard = KillGuard(dir.clone());
    life(first_life(&dir));
    life(second_life(&dir));
    drop(guard);
}

/// Kills whatever qemu-nbd a failed test left behind.
struct KillGuard(std::path::PathBuf);

impl Drop for KillGuard {
    fn drop(&mut self) {
        for pid in qemu_nbd_pids_under(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

async fn first_life(dir: &Path) {
    let node = service(dir).await;
    for format in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
        let id = format!("vol-{format}");
        let v = node
            .create_volume(&id, blank(8 << 20, format))
            .await
            .unwrap();
        assert_eq!(v.size_bytes, 8 << 20);
        // Same request again: the same volume.
        let again = node
            .create_volume(&id, blank(8 << 20, format))
            .await
            .unwrap();
        assert_eq!(again.path, v.path);

        let e = node.ensure_export(&id, 1).await.unwrap();
        let again = node.ensure_export(&id, 1).await.unwrap();
        assert_eq!(again, e, "confirming an export leaves the process alone");
        assert!(e.pid.is_some());
        qemu_io(&e.nbd_url, &["write -P 0xab 0 1M"]);
        qemu_io(&e.nbd_url, &["read -P 0xab 0 1M"]);

        // Snapshot, then write more; a clone of the snapshot has the old bytes.
        let snap = node.create_snapshot(&id, "snap-1").await.unwrap();
        assert_eq!(snap.size_bytes, 8 << 20);
        qemu_io(&e.nbd_url, &["write -P 0xcd 0 1M"]);
        let clone_id = format!("clone-{format}");
        node.create_volume(
            &clone_id,
            NodeCreateVolume {
                size_bytes: None,
                format,
                source: NodeSource::Snapshot {
                    snapshot_id: "snap-1".into(),
                },
            },
        )
        .await
        .unwrap();
        let ce = node.ensure_export(&clone_id, 1).await.unwrap();
        qemu_io(&ce.nbd_url, &["read -P 0xab 0 1M"]);
        qemu_io(&e.nbd_url, &["read -P 0xcd 0 1M"]);

        // Grow while exported: the export comes back on the same port with the new size.
        let r = node.resize_volume(&id, 16 << 20).await.unwrap();
        assert_eq!(r.size_bytes, 16 << 20);
        assert_eq!(r.export.as_ref().unwrap().port, e.port);
        let out = qemu_io(&e.nbd_url, &["length"]);
        assert!(out.contains("16 MiB"), "{out}");
        qemu_io(&e.nbd_url, &["read -P 0xcd 0 1M", "write -P 0xef 15M 1M"]);
        assert!(
            node.resize_volume(&id, 8 << 20).await.is_err(),
            "shrinking is refused"
        );
    }

    assert_eq!(qemu_nbd_pids_under(dir).len(), 4);
}

async fn second_life(dir: &Path) {
    // After the crash the qemu-nbd processes live on and the next service adopts them (same
    // pids, same ports, same bytes).
    let before: Vec<_> = {
        let mut v = qemu_nbd_pids_under(dir);
        v.sort();
        v
    };
    assert_eq!(before.len(), 4, "{before:?}");
    let node = service(dir).await;
    let mut after = qemu_nbd_pids_under(dir);
    after.sort();
    assert_eq!(before, after, "exports adopted, not restarted");
    let e = node.get_volume("vol-raw").await.unwrap().export.unwrap();
    qemu_io(&e.nbd_url, &["read -P 0xef 15M 1M"]);

    // The processes die (as with kill -9 of the whole group): the next start restarts them.
    for pid in &after {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    node.shutdown().await;
    drop(node);
    let node = service(dir).await;
    let e = node.get_volume("vol-qcow2").await.unwrap().export.unwrap();
    qemu_io(&e.nbd_url, &["read -P 0xef 15M 1M"]);

    // Delete removes files and processes.
    for id in ["vol-raw", "vol-qcow2", "clone-raw", "clone-qcow2"] {
        node.delete_volume(id).await.unwrap();
    }
    assert!(qemu_nbd_pids_under(dir).is_empty());
    assert_eq!(std::fs::read_dir(dir.join("volumes")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.join("exports")).unwrap().count(), 0);
}

#[tokio::test]
async fn bad_input_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coronafs");
    let _guard = KillGuard(dir.clone());
    let node = service(&dir).await;
    for size in [0, 1000, 1 << 41] {
        assert!(
            node.create_volume("vol-a", blank(size, VolumeFormat::Raw))
                .await
                .is_err()
        );
    }
    assert!(
        node.create_volume("../x", blank(1 << 20, VolumeFormat::Raw))
            .await
            .is_err()
    );
    let missing_image = NodeCreateVolume {
        size_bytes: None,
        format: VolumeFormat::Raw,
        source: NodeSource::Image {
            location: "/nonexistent/image.qcow2".into(),
        },
    };
    assert!(node.create_volume("vol-b", missing_image).await.is_err());
    // A directory is no image.
    let dir_image = NodeCreateVolume {
        size_bytes: None,
        format: VolumeFormat::Raw,
        source: NodeSource::Image {
            location: tmp.path().display().to_string(),
        },
    };
    assert!(node.create_volume("vol-c", dir_image).await.is_err());
    assert_eq!(std::fs::read_dir(dir.join("volumes")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    assert!(qemu_nbd_pids_under(&dir).is_empty());
}

/// With `nbd_tls_dir` the export speaks only TLS (mutual: the client presents a certificate of
/// the same CA); a plain client is refused, a client with the CA and its certificate reads and
/// writes.
#[tokio::test]
async fn tls_export() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coronafs");
    let _guard = KillGuard(dir.clone());
    let pki = uc_testkit::pki::TestPki::new(&["127.0.0.1"]);
    let server = tmp.path().join("tls-server");
    let client = tmp.path().join("tls-client");
    for (d, files) in [
        (
            &server,
            [
                ("ca-cert.pem", &pki.ca),
                ("server-cert.pem", &pki.server_cert),
                ("server-key.pem", &pki.server_key),
            ],
        ),
        (
            &client,
            [
                ("ca-cert.pem", &pki.ca),
                ("client-cert.pem", &pki.client_cert),
                ("client-key.pem", &pki.client_key),
            ],
        ),
    ] {
        std::fs::create_dir_all(d).unwrap();
        for (name, src) in files {
            std::fs::copy(src, d.join(name)).unwrap();
        }
    }
    let node = NodeService::new(NodeSettings {
        tls_dir: Some(server.clone()),
        ..settings(&dir)
    })
    .unwrap();
    node.restore().await.unwrap();
    node.create_volume("vol-tls", blank(4 << 20, VolumeFormat::Raw))
        .await
        .unwrap();
    let e = node.ensure_export("vol-tls", 1).await.unwrap();
    assert!(e.tls);

    let (ok, out) = {
        let o = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "read 0 512", &e.nbd_url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success() && !text.contains("failed"), text)
    };
    assert!(!ok, "a client without TLS must be refused: {out}");

    let tls_io = |cmd: &str| {
        let o = Command::new("qemu-io")
            .arg("--object")
            .arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", client.display()))
            .arg("--image-opts")
            .arg(format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vol-tls,tls-creds=tls0",
                e.port
            ))
            .args(["-c", cmd])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success() && !text.contains("failed"),
            "{cmd}: {text}"
        );
    };
    tls_io("write -P 0x3c 0 1M");
    tls_io("read -P 0x3c 0 1M");
    node.delete_volume("vol-tls").await.unwrap();
    assert!(qemu_nbd_pids_under(&dir).is_empty());
}

/// Serves `bytes` to every GET on a local port (a minimal HTTP/1.1 image server).
async fn serve_bytes(bytes: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bytes = Arc::new(bytes);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&bytes).await;
            });
        }
    });
    format!("http://{addr}/image.qcow2")
}

/// Volumes cloned from an image: a path on the node and an http URL, converted to the
/// volume's format and grown to the asked size; a size below the image's is refused.
#[tokio::test]
async fn image_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coronafs");
    let _guard = KillGuard(dir.clone());
    let image = tmp.path().join("base.qcow2");
    assert!(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("4M")
            .status()
            .unwrap()
            .success()
    );
    let w = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x66 0 1M"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(w.status.success());
    let node = service(&dir).await;
    let from = |location: String, format, size| NodeCreateVolume {
        size_bytes: size,
        format,
        source: NodeSource::Image { location },
    };

    let v = node
        .create_volume(
            "from-path",
            from(image.display().to_string(), VolumeFormat::Raw, None),
        )
        .await
        .unwrap();
    assert_eq!(v.size_bytes, 4 << 20);
    let e = node.ensure_export("from-path", 1).await.unwrap();
    qemu_io(&e.nbd_url, &["read -P 0x66 0 1M", "read -P 0 1M 3M"]);

    let url = serve_bytes(std::fs::read(&image).unwrap()).await;
    let v = node
        .create_volume(
            "from-url",
            from(url.clone(), VolumeFormat::Qcow2, Some(8 << 20)),
        )
        .await
        .unwrap();
    assert_eq!((v.size_bytes, v.format), (8 << 20, VolumeFormat::Qcow2));
    let e = node.ensure_export("from-url", 1).await.unwrap();
    qemu_io(&e.nbd_url, &["read -P 0x66 0 1M", "read -P 0 7M 1M"]);

    assert!(
        node.create_volume("too-small", from(url, VolumeFormat::Raw, Some(1 << 20)))
            .await
            .is_err()
    );
    assert!(node.get_volume("too-small").await.is_err());
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    for id in ["from-path", "from-url"] {
        node.delete_volume(id).await.unwrap();
    }
}
