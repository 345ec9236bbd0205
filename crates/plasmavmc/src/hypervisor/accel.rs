//! Choosing KVM or TCG. /dev/kvm opening is not enough: on some hosts (nested virtualization
//! gone wrong) KVM guests run the real-mode setup code and then make no progress at all. So
//! the probe boots a kernel under KVM for a few seconds and requires its first printk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Accel, AccelMode, HypervisorError, Result};

/// How long the probe kernel may take to print its banner under KVM (it takes well under a
/// second when KVM works).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's first printk; the x86 setup code prints other things before it even when the
/// guest then hangs.
const PROBE_BANNER: &str = "Linux version";

/// The newest `/boot/vmlinuz-*` (Debian's linux-image-amd64), used by the probe and the tiny
/// test guest.
pub fn find_host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// Resolves an [`AccelMode`] to the accelerator VMs should use on this host. `Auto` falls back
/// to TCG with a warning when /dev/kvm is unusable or the probe guest makes no progress;
/// `Kvm` fails instead.
pub async fn probe_accel(
    mode: AccelMode,
    qemu: &Path,
    scratch_dir: &Path,
    kernel: Option<&Path>,
) -> Result<Accel> {
    if mode == AccelMode::Tcg {
        return Ok(Accel::Tcg);
    }
    let verdict = kvm_works(qemu, scratch_dir, kernel).await;
    match (mode, verdict) {
        (_, Ok(())) => {
            tracing::info!("KVM works; VMs run with -accel kvm");
            Ok(Accel::Kvm)
        }
        (AccelMode::Kvm, Err(why)) => Err(HypervisorError::Accel(format!(
            "accel = kvm but KVM is not usable: {why}"
        ))),
        (_, Err(why)) => {
            tracing::warn!(
                reason = %why,
                "KVM not usable; VMs run under TCG software emulation (much slower)"
            );
            Ok(Accel::Tcg)
        }
    }
}

async fn kvm_works(
    qemu: &Path,
    scratch_dir: &Path,
    kernel: Option<&Path>,
) -> std::result::Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let kernel = kernel.ok_or("no kernel to probe with (install linux-image-amd64)")?;
    std::fs::create_dir_all(scratch_dir).map_err(|e| e.to_string())?;
    let log = scratch_dir.join(format!("probe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_str = log.to_str().ok_or("scratch dir is not UTF-8")?;
    let kernel_str = kernel.to_str().ok_or("kernel path is not UTF-8")?;
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-accel",
            "kvm",
            "-m",
            "128M",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            kernel_str,
            "-append",
            "console=ttyS0 earlyprintk=ttyS0 panic=-1",
        ])
        .arg("-serial")
        .arg(format!("file:{log_str}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", qemu.display()))?;
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    let outcome = loop {
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        if printed.contains(PROBE_BANNER) {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut stderr).await;
            }
            break Err(format!(
                "probe QEMU exited ({status}) before the kernel printed: {}",
                stderr.trim()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(format!(
                "a kernel under KVM printed no banner within {PROBE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&log);
    outcome
}
