//! The qemu-img and qemu-nbd invocations coronafs relies on, in one place.

use std::path::Path;
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

use crate::api::VolumeFormat;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The tool rejected its input (bad image, unsupported source): the caller's fault.
    #[error("{0}")]
    Rejected(String),
    /// The tool could not run.
    #[error("{0}")]
    Failed(String),
}

async fn run(program: &str, args: &[&str]) -> Result<String, QemuError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| QemuError::Failed(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(QemuError::Rejected(format!(
            "{program} {}: {stderr}",
            args.first().unwrap_or(&"")
        )))
    }
}

fn path_str(p: &Path) -> Result<&str, QemuError> {
    p.to_str()
        .ok_or_else(|| QemuError::Failed(format!("path is not UTF-8: {}", p.display())))
}

/// A new zero-filled image. Raw files are sparse; qcow2 grows as written.
pub async fn create(path: &Path, format: VolumeFormat, size: u64) -> Result<(), QemuError> {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            format.as_str(),
            path_str(path)?,
            &size.to_string(),
        ],
    )
    .await
    .map(|_| ())
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    pub format: String,
}

/// `qemu-img info` (with `-U`: the image may be open in qemu-nbd).
pub async fn info(path: &Path) -> Result<ImageInfo, QemuError> {
    let text = run(
        "qemu-img",
        &["info", "-U", "--output=json", path_str(path)?],
    )
    .await?;
    serde_json::from_str(&text).map_err(|e| QemuError::Failed(format!("qemu-img info: {e}")))
}

/// Copies `src` (any format qemu-img reads) into a new image at `dst`. `-U` lets it read an
/// image an export holds open (a snapshot of an attached volume copies what is on disk).
pub async fn convert(
    src: &Path,
    src_format: Option<&str>,
    dst: &Path,
    dst_format: VolumeFormat,
) -> Result<(), QemuError> {
    let mut args = vec!["convert", "-q", "-U"];
    if let Some(f) = src_format {
        args.extend(["-f", f]);
    }
    args.extend(["-O", dst_format.as_str(), path_str(src)?, path_str(dst)?]);
    run("qemu-img", &args).await.map(|_| ())
}

/// Grows an image (not open elsewhere).
pub async fn resize(path: &Path, format: VolumeFormat, size: u64) -> Result<(), QemuError> {
    run(
        "qemu-img",
        &[
            "resize",
            "-q",
            "-f",
            format.as_str(),
            path_str(path)?,
            &size.to_string(),
        ],
    )
    .await
    .map(|_| ())
}

/// What one qemu-nbd export serves, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdSpec {
    pub path: std::path::PathBuf,
    pub format: VolumeFormat,
    pub bind: String,
    pub port: u16,
    pub export_name: String,
    pub shared: u32,
    pub cache: String,
    pub aio: String,
    pub tls_dir: Option<std::path::PathBuf>,
}

impl NbdSpec {
    /// qemu-nbd's arguments. `--persistent`: clients come and go (detach, reattach, a QEMU
    /// reconnecting) without the server exiting.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--format={}", self.format.as_str()),
            format!("--bind={}", self.bind),
            format!("--port={}", self.port),
            format!("--export-name={}", self.export_name),
            format!("--shared={}", self.shared),
            format!("--cache={}", self.cache),
            format!("--aio={}", self.aio),
            "--discard=unmap".into(),
            "--persistent".into(),
        ];
        if let Some(dir) = &self.tls_dir {
            args.push(format!(
                "--object=tls-creds-x509,id=tls0,endpoint=server,dir={}",
                dir.display()
            ));
            args.push("--tls-creds=tls0".into());
        }
        args.push(self.path.display().to_string());
        args
    }
}
