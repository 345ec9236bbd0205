//! The tiny test guest: Debian's kernel plus an initramfs of busybox-static and the few
//! modules a virtio VM needs, built from installed Debian packages (linux-image-amd64,
//! busybox-static; genisoimage for the NoCloud seed) without downloading anything.
//!
//! Its /init prints markers on the serial console, one per line:
//! - `UC-GUEST-IP <addr/prefix>` after DHCP on eth0 (`UC-GUEST-IP none` when DHCP failed);
//! - `UC-USER-DATA <first line of user-data>` from a NoCloud seed (ISO9660, label `cidata`);
//!   a user-data starting with `#!` is then run, its output on the console;
//! - `UC-DISK boots=<n>` from a boot counter kept in sector 0 of the first virtio disk that is
//!   not the seed (only when that sector is blank or already ours: it never clobbers data);
//! - `UC-PING <addr> ok|fail` for each `uc.ping=<addr>` on the kernel command line;
//! - `UC-BOOT-OK <name>` (name from `uc.name=`, else the seed's local-hostname);
//! - `UC-TICK <n>` every `uc.tick=<seconds>` afterwards, if set (shows the guest still runs,
//!   e.g. after a migration);
//! - (`uc.acpid=0` makes it ignore the power button, to test forced stops.)
//! - `UC-POWEROFF` when the ACPI power button was pressed, right before it powers off.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hypervisor::{Boot, find_host_kernel};

/// Modules the guest loads, in this order after their dependencies (resolved from the host's
/// modules.dep). Everything else it needs is built into Debian's kernel.
const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/fs/isofs/isofs.ko",
    "kernel/drivers/input/evdev.ko",
    "kernel/drivers/acpi/button.ko",
];

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// A built guest: pass [`TinyGuest::boot`] as a VM spec's boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl TinyGuest {
    /// The kernel command line: serial console, the marker name, plus `extra` (`uc.ping=…`,
    /// `uc.tick=…`). `name` must not contain spaces.
    pub fn cmdline(name: &str, extra: &[&str]) -> String {
        let mut line = format!("console=ttyS0 loglevel=4 uc.name={name}");
        for e in extra {
            line.push(' ');
            line.push_str(e);
        }
        line
    }

    pub fn boot(&self, name: &str, extra: &[&str]) -> Boot {
        Boot::Kernel {
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            cmdline: Self::cmdline(name, extra),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("missing prerequisite: {0}")]
    Missing(String),
    #[error("{0}")]
    Tool(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the guest into `dir` (kernel `vmlinux`, or `vmlinuz` when it cannot boot through
/// PVH; initramfs `initrd.cpio`) from the newest installed Debian kernel.
pub fn build(dir: &Path) -> Result<TinyGuest, GuestError> {
    let kernel = find_host_kernel().ok_or_else(|| {
        GuestError::Missing("no /boot/vmlinuz-* (install linux-image-amd64)".into())
    })?;
    build_with(dir, &kernel)
}

/// Builds the guest from a given kernel (`…/vmlinuz-<version>`; its modules must be in
/// `/lib/modules/<version>`).
pub fn build_with(dir: &Path, host_kernel: &Path) -> Result<TinyGuest, GuestError> {
    let version = host_kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| {
            GuestError::Missing(format!(
                "{} is not named vmlinuz-<version>",
                host_kernel.display()
            ))
        })?
        .to_string();
    let module_root = PathBuf::from("/lib/modules").join(&version);
    if !Path::new(BUSYBOX).exists() {
        return Err(GuestError::Missing(format!(
            "{BUSYBOX} (install busybox-static)"
        )));
    }
    std::fs::create_dir_all(dir)?;
    let kernel = match pvh_vmlinux(host_kernel, &version) {
        Some(vmlinux) => {
            let path = dir.join("vmlinux");
            std::fs::write(&path, vmlinux)?;
            path
        }
        None => {
            let path = dir.join("vmlinuz");
            std::fs::copy(host_kernel, &path)?;
            path
        }
    };

    let modules = resolve_modules(&module_root)?;
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "mnt",
        "mnt/seed",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &std::fs::read(BUSYBOX)?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes());
    cpio.file("etc/acpi/PWRF/00000080", 0o755, POWER_BUTTON.as_bytes());
    cpio.file("etc/acpid.conf", 0o644, b"PWRF PWRF/00000080\n");
    let mut order = String::new();
    for (i, module) in modules.iter().enumerate() {
        let name = format!("lib/modules/{i:02}-{}.ko", module_stem(module));
        cpio.file(&name, 0o644, &read_module(&module_root.join(module))?);
        order.push_str(&format!("/{name}\n"));
    }
    cpio.file("etc/modules.order", 0o644, order.as_bytes());
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, cpio.finish())?;
    Ok(TinyGuest { kernel, initrd })
}

/// The uncompressed kernel ELF inside a bzImage, when the kernel can boot through PVH
/// (`CONFIG_PVH=y`): QEMU then loads it directly, skipping the in-guest decompression, which
/// under TCG takes most of the boot (measured: ~6 s of an ~11 s boot on a loaded 2-core
/// host). None (use the bzImage) when anything is missing.
fn pvh_vmlinux(bzimage: &Path, version: &str) -> Option<Vec<u8>> {
    let config = std::fs::read_to_string(format!("/boot/config-{version}")).ok()?;
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return None;
    }
    let image = std::fs::read(bzimage).ok()?;
    let formats: [(&[u8], &[&str]); 3] = [
        (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
        (b"\x1f\x8b\x08\x00", &["gzip", "-dc"]),
    ];
    for (magic, tool) in formats {
        let Some(at) = image.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        // The payload is followed by setup data the decompressors may call trailing
        // garbage; a nonzero exit with an ELF on stdout is still a good kernel.
        let mut child = Command::new(tool[0])
            .args(&tool[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let payload = image[at..].to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&payload);
        });
        let out = child.wait_with_output().ok()?;
        let _ = feeder.join();
        if out.stdout.starts_with(b"\x7fELF") {
            return Some(out.stdout);
        }
    }
    None
}

/// [`MODULES`] with their dependencies first, each once.
fn resolve_modules(module_root: &Path) -> Result<Vec<String>, GuestError> {
    let dep_file = module_root.join("modules.dep");
    let deps_text = std::fs::read_to_string(&dep_file).map_err(|e| {
        GuestError::Missing(format!(
            "{}: {e} (install linux-image-amd64)",
            dep_file.display()
        ))
    })?;
    let mut deps = std::collections::HashMap::new();
    for line in deps_text.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            deps.insert(
                strip_compression(module).to_string(),
                rest.split_whitespace()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>(),
            );
        }
    }
    // Depth first over each module's own dependencies: every module after all of its
    // dependencies, whatever order a kernel's modules.dep lists them in.
    fn visit(
        module: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        let key = strip_compression(module).to_string();
        if depth > 64 || order.iter().any(|o| strip_compression(o) == key) {
            return;
        }
        for dep in deps.get(&key).into_iter().flatten() {
            visit(dep, deps, order, depth + 1);
        }
        if !order.iter().any(|o| strip_compression(o) == key) {
            order.push(module.to_string());
        }
    }
    let mut order: Vec<String> = Vec::new();
    for wanted in MODULES {
        // Not in modules.dep: built into this kernel (or absent), nothing to load.
        if deps.contains_key(*wanted) {
            visit(&deps_key_path(&deps_text, wanted), &deps, &mut order, 0);
        }
    }
    Ok(order)
}

/// The path as modules.dep spells it (with its compression suffix, if any).
fn deps_key_path(deps_text: &str, wanted: &str) -> String {
    deps_text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(m, _)| m))
        .find(|m| strip_compression(m) == wanted)
        .unwrap_or(wanted)
        .to_string()
}

fn strip_compression(module: &str) -> &str {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = module.strip_suffix(ext) {
            return s;
        }
    }
    module
}

fn module_stem(module: &str) -> &str {
    let file = strip_compression(module)
        .rsplit('/')
        .next()
        .unwrap_or(module);
    file.strip_suffix(".ko").unwrap_or(file)
}

/// A module's bytes, decompressed (busybox insmod wants plain .ko files).
fn read_module(path: &Path) -> Result<Vec<u8>, GuestError> {
    let name = path.to_string_lossy();
    let tool: &[&str] = if name.ends_with(".xz") {
        &["xz", "-dc"]
    } else if name.ends_with(".zst") {
        &["zstd", "-dc"]
    } else if name.ends_with(".gz") {
        &["gzip", "-dc"]
    } else {
        return Ok(std::fs::read(path)?);
    };
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(path)
        .output()
        .map_err(|e| GuestError::Tool(format!("{}: {e}", tool[0])))?;
    if !out.status.success() {
        return Err(GuestError::Tool(format!(
            "{} {}: {}",
            tool[0],
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// Writes a NoCloud seed image (`seed.iso`, ISO9660, volume label `cidata`, as cloud-localds
/// makes it) into `dir` and returns its path.
pub fn nocloud_seed(
    dir: &Path,
    meta_data: &str,
    user_data: &str,
    network_config: Option<&str>,
) -> Result<PathBuf, GuestError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    // User-data often carries credentials: the staging files and the image are the
    // owner's only (0700/0600); QEMU runs as the same user.
    let staging = dir.join("seed-files");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)?;
    std::fs::write(staging.join("meta-data"), meta_data)?;
    std::fs::write(staging.join("user-data"), user_data)?;
    if let Some(net) = network_config {
        std::fs::write(staging.join("network-config"), net)?;
    }
    let iso = dir.join("seed.iso");
    // Created 0600 before genisoimage writes into it.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&iso)?;
    let out = Command::new("genisoimage")
        .arg("-output")
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock", "-quiet"])
        .arg(&staging)
        .output()
        .map_err(|e| GuestError::Missing(format!("genisoimage: {e} (install genisoimage)")))?;
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::set_permissions(&iso, std::fs::Permissions::from_mode(0o600))?;
    if !out.status.success() {
        return Err(GuestError::Tool(format!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(iso)
}

/// The boot counter the guest keeps in sector 0 of its data disk (a raw image), if any.
pub fn read_boot_counter(raw_disk: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let mut sector = [0u8; 512];
    let mut f = std::fs::File::open(raw_disk)?;
    let n = f.read(&mut sector)?;
    let text = String::from_utf8_lossy(&sector[..n]);
    Ok(text
        .strip_prefix("UCDISK boots=")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok()))
}

/// Writes a boot counter into sector 0 of a raw disk image (the guest increments it).
pub fn write_boot_counter(raw_disk: &Path, boots: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(raw_disk)?;
    let mut sector = [0u8; 512];
    let text = format!("UCDISK boots={boots} \n");
    sector[..text.len()].copy_from_slice(text.as_bytes());
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&sector)?;
    f.sync_all()
}

/// A `newc` cpio archive (what the kernel unpacks as initramfs), built in memory so that
/// device nodes and root ownership need no privileges.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

const INIT: &str = r#"#!/bin/sh
# UltraCloud tiny test guest. PID 1; prints UC-* markers on the serial console.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
say() { echo "$*"; }

# Drivers probe their devices synchronously during insmod, and devtmpfs creates the nodes.
while read -r m; do insmod "$m" 2>/dev/null; done </etc/modules.order

NAME=""
ACPID=1
TICK=0
PINGS=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    uc.name=*) NAME="${arg#uc.name=}" ;;
    uc.tick=*) TICK="${arg#uc.tick=}" ;;
    uc.ping=*) PINGS="$PINGS ${arg#uc.ping=}" ;;
    uc.acpid=*) ACPID="${arg#uc.acpid=}" ;;
  esac
done

# The NoCloud seed: the filesystem labelled cidata (as cloud-init finds it), ISO9660.
SEED=""
for label in cidata CIDATA; do
  d=$(findfs "LABEL=$label" 2>/dev/null) || continue
  if mount -t iso9660 -o ro "$d" /mnt/seed 2>/dev/null; then SEED="$d"; break; fi
done
if [ -n "$SEED" ]; then
  host=$(sed -n 's/^local-hostname:[[:space:]]*//p' /mnt/seed/meta-data 2>/dev/null | head -n1)
  [ -n "$host" ] && hostname "$host" && [ -z "$NAME" ] && NAME="$host"
fi
[ -z "$NAME" ] && NAME=$(hostname)

# Network: DHCP on eth0 if there is one.
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip link set eth0 up
  if udhcpc -i eth0 -s /etc/udhcpc.script -n -q -t 15 -T 2 -x hostname:"$NAME" >/tmp/udhcpc.log 2>&1; then
    say "UC-GUEST-IP $(cat /run/uc-ip)"
  else
    say "UC-GUEST-IP none"
  fi
fi

if [ -n "$SEED" ]; then
  if [ -e /mnt/seed/user-data ]; then
    say "UC-USER-DATA $(head -n1 /mnt/seed/user-data)"
    case "$(head -c2 /mnt/seed/user-data)" in
      '#!') cp /mnt/seed/user-data /tmp/user-data && chmod +x /tmp/user-data && /tmp/user-data ;;
    esac
  fi
fi

# Boot counter in sector 0 of the first data disk; a sector holding anything else is left
# alone so a real disk is never clobbered.
for dev in /sys/block/vd*; do
  [ -e "$dev" ] || continue
  d="/dev/${dev##*/}"
  [ "$d" = "$SEED" ] && continue
  [ "$(cat "$dev/ro" 2>/dev/null)" = "1" ] && continue
  head=$(dd if="$d" bs=512 count=1 2>/dev/null | tr -d '\000')
  boots=""
  case "$head" in
    "UCDISK boots="*) boots=$(echo "$head" | sed -n 's/^UCDISK boots=\([0-9]*\).*/\1/p') ;;
    "") boots=0 ;;
  esac
  if [ -n "$boots" ]; then
    boots=$((boots + 1))
    { printf 'UCDISK boots=%s %s\n' "$boots" "$NAME"; dd if=/dev/zero bs=400 count=1 2>/dev/null; } \
      | dd of="$d" bs=512 count=1 conv=sync,fsync 2>/dev/null
    sync
    say "UC-DISK boots=$boots"
  else
    say "UC-DISK foreign"
  fi
  break
done

for target in $PINGS; do
  if ping -c 3 -W 2 "$target" >/dev/null 2>&1; then say "UC-PING $target ok"; else say "UC-PING $target fail"; fi
done

if [ "$ACPID" != 0 ]; then
  acpid -f -c /etc/acpi -a /etc/acpid.conf -l /tmp/acpid.log &
  # A power-button press before acpid has opened the input device is lost, and the host
  # may press it as soon as it sees the boot marker: wait until acpid holds the device.
  i=0
  while [ $i -lt 300 ] && ! ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/event; do
    sleep 0.1
    i=$((i + 1))
  done
fi

say "UC-BOOT-OK $NAME"

n=0
while true; do
  if [ "$TICK" -gt 0 ] 2>/dev/null; then
    n=$((n + 1))
    sleep "$TICK"
    say "UC-TICK $n"
  else
    sleep 3600
  fi
done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# busybox udhcpc hook: apply the lease.
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip/${mask:-24}" >/run/uc-ip
    ;;
esac
exit 0
"#;

const POWER_BUTTON: &str = r#"#!/bin/sh
echo "UC-POWEROFF" >/dev/console
sync
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_holding_user_data_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let iso =
            nocloud_seed(dir.path(), "instance-id: x\n", "password: hunter2\n", None).unwrap();
        let mode = std::fs::metadata(&iso).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert!(!dir.path().join("seed-files").exists());
    }

    #[test]
    fn modules_come_after_their_dependencies() {
        let Some(kernel) = find_host_kernel() else {
            panic!("no /boot/vmlinuz-* (linux-image-amd64 is a test prerequisite)");
        };
        let version = kernel.to_str().unwrap().rsplit("vmlinuz-").next().unwrap();
        let order = resolve_modules(&Path::new("/lib/modules").join(version)).unwrap();
        let pos = |stem: &str| {
            order
                .iter()
                .position(|m| module_stem(m) == stem)
                .unwrap_or_else(|| panic!("{stem} missing from {order:?}"))
        };
        // Kernels differ in which of virtio and virtio_ring needs the other: check against
        // this kernel's own modules.dep that every module comes after its dependencies.
        let deps_text =
            std::fs::read_to_string(Path::new("/lib/modules").join(version).join("modules.dep"))
                .unwrap();
        for line in deps_text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let Some(at) = order
                .iter()
                .position(|m| strip_compression(m) == strip_compression(module))
            else {
                continue;
            };
            for dep in rest.split_whitespace() {
                let dep_at = pos(module_stem(dep));
                assert!(dep_at < at, "{dep} must come before {module}: {order:?}");
            }
        }
        assert!(pos("virtio_pci") < pos("virtio_blk"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("cdrom") < pos("isofs"));
        let mut unique = order.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), order.len(), "{order:?}");
    }

    #[test]
    fn cpio_newc_layout() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        cpio.char_dev("dev/console", 0o600, 5, 1);
        let bytes = cpio.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        // mode 0100755 and size 10 in the first header; the name and data follow, 4-aligned.
        assert_eq!(&text[14..22], "000081ed");
        assert_eq!(&text[54..62], "0000000a");
        assert_eq!(&text[110..115], "init\0");
        assert!(text.contains("dev/console"));
        assert!(text.contains("TRAILER!!!"));
    }
}
