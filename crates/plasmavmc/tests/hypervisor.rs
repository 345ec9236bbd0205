//! The hypervisor layer against real QEMU and the tiny Debian-kernel+busybox guest.
//! TCG is slow and CI has 2 cores: guests are 1 vCPU / 96 MiB and each boot serves several
//! assertions. Timeouts are generous limits against hangs, never assertions about speed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use plasmavmc::guest::{self, TinyGuest};
use plasmavmc::hypervisor::{
    Accel, AccelMode, DiskFormat, DiskSource, DiskSpec, Hypervisor, HypervisorConfig,
    HypervisorError, NicSpec, RunState, ShutdownOutcome, VmSpec, probe_accel, process_is_ours,
};

/// Upper bound for one TCG boot on a loaded 2-core machine.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// What a worker with `accel = auto` would use on this machine.
async fn accel() -> Accel {
    let scratch = tempfile::tempdir().unwrap();
    probe_accel(
        AccelMode::Auto,
        Path::new("qemu-system-x86_64"),
        scratch.path(),
        plasmavmc::hypervisor::find_host_kernel().as_deref(),
    )
    .await
    .unwrap()
}

fn build_guest(dir: &Path) -> TinyGuest {
    guest::build(&dir.join("guest")).expect("build tiny guest")
}

fn raw_disk(path: &Path, mib: u64) -> PathBuf {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    path.to_path_buf()
}

async fn spec(vm_id: &str, guest: &TinyGuest, extra: &[&str]) -> VmSpec {
    VmSpec {
        vm_id: vm_id.to_string(),
        name: vm_id.to_string(),
        vcpus: 1,
        memory_mib: 96,
        disks: Vec::new(),
        nics: Vec::new(),
        boot: guest.boot(vm_id, extra),
        seed: None,
        accel: accel().await,
    }
}

fn data_disk(path: &Path) -> DiskSpec {
    DiskSpec {
        id: "root".into(),
        source: DiskSource::File {
            path: path.to_path_buf(),
            format: DiskFormat::Raw,
        },
        readonly: false,
        serial: Some("uc-root".into()),
    }
}

/// Kills, on drop, every QEMU a test's run dirs still own (a failed assertion must not leave
/// guests burning the CI's two cores).
struct KillOnDrop(Vec<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for run_dir in &self.0 {
            let Ok(entries) = std::fs::read_dir(run_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                let vm_id = entry.file_name().to_string_lossy().to_string();
                let pid = std::fs::read_to_string(dir.join("qemu.pid"));
                let uuid = std::fs::read_to_string(dir.join("instance"));
                if let (Ok(pid), Ok(uuid)) = (pid, uuid)
                    && let Ok(pid) = pid.trim().parse::<i32>()
                    && process_is_ours(pid as u32, &vm_id, uuid.trim())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Waits until the serial log, from `from`, contains `needle`; returns the log text from
/// `from` and the offset just past the needle's line.
async fn wait_serial(hv: &Hypervisor, vm_id: &str, from: u64, needle: &str) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
    loop {
        let chunk = hv.serial_log(vm_id, from, 16 << 20).unwrap();
        let text = String::from_utf8_lossy(&chunk.data).to_string();
        if let Some(pos) = text.find(needle) {
            let end = text[pos..].find('\n').map_or(text.len(), |e| pos + e + 1);
            return (text.clone(), from + end as u64);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{vm_id}: no {needle:?} on the serial console; log so far:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The next QMP event (events are buffered in the channel, so none is missed).
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<plasmavmc::hypervisor::QmpEvent>,
) -> plasmavmc::hypervisor::QmpEvent {
    tokio::time::timeout(BOOT_LIMIT, events.recv())
        .await
        .expect("no QMP event")
        .expect("QMP event stream")
}

fn marker_value<'a>(log: &'a str, marker: &str) -> Vec<&'a str> {
    log.lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .split_once(marker)
                .map(|(_, v)| v.trim())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_reads_seed_keeps_disk_across_reboot_and_stop_start() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    let hv = Hypervisor::new(HypervisorConfig::new(&run_dir)).unwrap();
    let guest = build_guest(tmp.path());
    let seed = guest::nocloud_seed(
        tmp.path(),
        "instance-id: vm-seed\nlocal-hostname: seeded-host\n",
        "#!/bin/sh\necho UC-SCRIPT-RAN $(hostname)\n",
        None,
    )
    .unwrap();
    let disk = raw_disk(&tmp.path().join("root.raw"), 8);
    // Data written from outside before the first boot; the guest must read and increment it.
    guest::write_boot_counter(&disk, 41).unwrap();

    let mut spec = spec("vm-seed", &guest, &[]).await;
    spec.disks.push(data_disk(&disk));
    spec.seed = Some(seed);
    let status = hv.start(&spec).await.unwrap();
    assert!(matches!(status.state, RunState::Running), "{status:?}");
    assert!(matches!(
        hv.start(&spec).await,
        Err(HypervisorError::AlreadyRunning(_))
    ));

    let (log, mut offset) = wait_serial(&hv, "vm-seed", 0, "UC-BOOT-OK").await;
    assert_eq!(marker_value(&log, "UC-BOOT-OK "), ["vm-seed"], "{log}");
    assert_eq!(marker_value(&log, "UC-USER-DATA "), ["#!/bin/sh"], "{log}");
    assert_eq!(
        marker_value(&log, "UC-SCRIPT-RAN "),
        ["seeded-host"],
        "{log}"
    );
    assert_eq!(marker_value(&log, "UC-DISK "), ["boots=42"], "{log}");

    // Reset through QMP: the guest boots again in the same QEMU and sees its own write.
    let mut events = hv.events("vm-seed").unwrap();
    hv.reboot("vm-seed").await.unwrap();
    assert_eq!(next_event(&mut events).await.event, "RESET");
    let (log, next) = wait_serial(&hv, "vm-seed", offset, "UC-BOOT-OK").await;
    offset = next;
    assert_eq!(marker_value(&log, "UC-DISK "), ["boots=43"], "{log}");

    // Graceful stop: the guest handles the ACPI power button and powers off.
    let mut events = hv.events("vm-seed").unwrap();
    let outcome = hv
        .shutdown("vm-seed", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::PoweredOff);
    // QEMU reported the guest's own power-off before it exited.
    let shutdown = loop {
        let event = next_event(&mut events).await;
        if event.event == "SHUTDOWN" {
            break event;
        }
    };
    assert_eq!(shutdown.data["guest"], true, "{shutdown:?}");
    let (log, _) = wait_serial(&hv, "vm-seed", offset, "UC-POWEROFF").await;
    assert!(log.contains("UC-POWEROFF"));
    assert_eq!(hv.status("vm-seed").await.unwrap().state, RunState::Stopped);
    assert_eq!(guest::read_boot_counter(&disk).unwrap(), Some(43));
    assert!(hv.running().is_empty());

    // Start again from the stored spec: the data written by the guest survived.
    let stored = hv.spec("vm-seed").unwrap();
    assert_eq!(stored, spec);
    hv.start(&stored).await.unwrap();
    let (log, _) = wait_serial(&hv, "vm-seed", offset, "UC-BOOT-OK").await;
    assert_eq!(marker_value(&log, "UC-DISK "), ["boots=44"], "{log}");
    // The console log kept the earlier boots (offsets stay valid across restarts).
    let all = hv.serial_log("vm-seed", 0, 16 << 20).unwrap();
    assert_eq!(
        marker_value(&String::from_utf8_lossy(&all.data), "UC-BOOT-OK ").len(),
        3
    );

    hv.kill("vm-seed").await.unwrap();
    assert_eq!(hv.status("vm-seed").await.unwrap().state, RunState::Stopped);
    // Stopping what is stopped is not an error; an unknown VM is.
    hv.kill("vm-seed").await.unwrap();
    assert_eq!(
        hv.shutdown("vm-seed", Duration::from_secs(1))
            .await
            .unwrap(),
        ShutdownOutcome::AlreadyStopped
    );
    assert!(matches!(
        hv.reboot("vm-seed").await,
        Err(HypervisorError::NotRunning(_))
    ));
    assert!(matches!(
        hv.kill("vm-nobody").await,
        Err(HypervisorError::NotFound(_))
    ));
    hv.remove("vm-seed").await.unwrap();
    assert!(matches!(
        hv.status("vm-seed").await,
        Err(HypervisorError::NotFound(_))
    ));
}

/// Runs only when re-executed by `killed_worker_vms_keep_running_and_are_adopted`: plays the
/// worker agent that starts a VM and is then killed. (Ignored so that it never runs, and
/// trivially passes, on its own.)
#[tokio::test]
#[ignore = "helper process for killed_worker_vms_keep_running_and_are_adopted"]
async fn child_worker_process() {
    let (Ok(run_dir), Ok(spec)) = (
        std::env::var("UC_HV_CHILD_RUN_DIR"),
        std::env::var("UC_HV_CHILD_SPEC"),
    ) else {
        return;
    };
    let spec: VmSpec = serde_json::from_str(&spec).unwrap();
    let hv = Hypervisor::new(HypervisorConfig::new(run_dir)).unwrap();
    let status = hv.start(&spec).await.unwrap();
    println!("CHILD-STARTED {}", status.pid.unwrap());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_vms_keep_running_and_are_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    let guest = build_guest(tmp.path());
    let spec = spec("vm-adopt", &guest, &[]).await;

    // The "worker agent" is another process; it starts the VM, then dies by SIGKILL.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_worker_process",
            "--exact",
            "--nocapture",
            "--include-ignored",
        ])
        .env("UC_HV_CHILD_RUN_DIR", &run_dir)
        .env("UC_HV_CHILD_SPEC", serde_json::to_string(&spec).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut qemu_pid = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(pid) = line.strip_prefix("CHILD-STARTED ") {
            qemu_pid = Some(pid.trim().parse::<u32>().unwrap());
            break;
        }
    }
    let qemu_pid = qemu_pid.expect("the child worker started no VM");
    child.kill().unwrap();
    child.wait().unwrap();

    // A QEMU started by hand with a look-alike name, planted in the run dir as if it were a
    // VM of ours whose pid was reused: it must be neither adopted nor signalled.
    let decoy_dir = run_dir.join("vm-decoy");
    std::fs::create_dir_all(&decoy_dir).unwrap();
    let mut decoy = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-no-user-config",
            "-S",
            "-display",
            "none",
            "-m",
            "32M",
            "-name",
            "guest=vm-decoy,process=uc-vm-vm-decoy",
            "-uuid",
            "00000000-0000-4000-8000-000000000001",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(decoy_dir.join("qemu.pid"), decoy.id().to_string()).unwrap();
    std::fs::write(
        decoy_dir.join("instance"),
        "11111111-1111-4111-8111-111111111111",
    )
    .unwrap();

    let hv = Hypervisor::new(HypervisorConfig::new(&run_dir)).unwrap();
    let report = hv.adopt_all().await.unwrap();
    assert_eq!(report.adopted, ["vm-adopt"], "{report:?}");
    assert_eq!(report.gone, ["vm-decoy"], "{report:?}");
    assert!(report.unreachable.is_empty(), "{report:?}");
    assert!(
        decoy.try_wait().unwrap().is_none(),
        "the decoy QEMU must not be touched"
    );
    let uuid = std::fs::read_to_string(run_dir.join("vm-adopt/instance")).unwrap();
    assert!(process_is_ours(qemu_pid, "vm-adopt", &uuid));
    // The adopted VM is the same process, controlled over QMP.
    let status = hv.status("vm-adopt").await.unwrap();
    assert_eq!(status.pid, Some(qemu_pid));
    assert_eq!(status.state, RunState::Running);
    assert_eq!(hv.running(), ["vm-adopt"]);
    // Adopting again is harmless.
    let again = hv.adopt_all().await.unwrap();
    assert_eq!(again.adopted, ["vm-adopt"]);
    assert!(again.gone.is_empty());

    // It keeps booting after its worker died, and a graceful stop through the adopting
    // hypervisor works.
    wait_serial(&hv, "vm-adopt", 0, "UC-BOOT-OK vm-adopt").await;
    let outcome = hv
        .shutdown("vm-adopt", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::PoweredOff);
    assert!(!process_is_ours(qemu_pid, "vm-adopt", &uuid));
    assert_eq!(
        hv.status("vm-adopt").await.unwrap().state,
        RunState::Stopped
    );

    assert!(decoy.try_wait().unwrap().is_none());
    decoy.kill().unwrap();
    decoy.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_hypervisors() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("run-a"), tmp.path().join("run-b"));
    let _guard = KillOnDrop(vec![dir_a.clone(), dir_b.clone()]);
    let hv_a = Hypervisor::new(HypervisorConfig::new(&dir_a)).unwrap();
    let hv_b = Hypervisor::new(HypervisorConfig::new(&dir_b)).unwrap();
    let guest = build_guest(tmp.path());
    // Shared storage as coronafs provides it: one NBD export both QEMUs attach (qemu-nbd
    // must allow two clients for the hand-over).
    let disk = raw_disk(&tmp.path().join("shared.raw"), 8);
    let nbd = NbdExport::start(&disk);
    let mut spec = spec("vm-mig", &guest, &["uc.tick=1"]).await;
    spec.disks.push(DiskSpec {
        id: "root".into(),
        source: DiskSource::Nbd {
            url: nbd.url.clone(),
        },
        readonly: false,
        serial: None,
    });

    hv_a.start(&spec).await.unwrap();
    let (_, offset_a) = wait_serial(&hv_a, "vm-mig", 0, "UC-BOOT-OK vm-mig").await;
    wait_serial(&hv_a, "vm-mig", offset_a, "UC-TICK").await;

    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let incoming = hv_b.start_incoming(&spec, listen).await.unwrap();
    assert_eq!(incoming.state, RunState::Incoming);

    let progress = hv_a
        .migrate("vm-mig", &format!("tcp:{listen}"), Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(progress.status, "completed");
    assert!(progress.transferred_bytes > 0);
    assert!(progress.total_time_ms.is_some(), "{progress:?}");

    // The source process is gone; the destination runs the guest, which keeps ticking on
    // the destination's console (the guest's tick counter continues, no reboot).
    assert_eq!(
        hv_a.status("vm-mig").await.unwrap().state,
        RunState::Stopped
    );
    assert!(hv_a.running().is_empty());
    let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
    loop {
        let status = hv_b.status("vm-mig").await.unwrap();
        if status.state == RunState::Running {
            break;
        }
        assert_eq!(status.state, RunState::Incoming, "{status:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "destination never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (log_b, _) = wait_serial(&hv_b, "vm-mig", 0, "UC-TICK").await;
    assert!(
        !log_b.contains("UC-BOOT-OK"),
        "the destination must continue the guest, not boot it: {log_b}"
    );
    let before: u64 = {
        let a = hv_a.serial_log("vm-mig", 0, 16 << 20).unwrap();
        let a = String::from_utf8_lossy(&a.data).to_string();
        marker_value(&a, "UC-TICK ")
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let after: u64 = marker_value(&log_b, "UC-TICK ")[0].parse().unwrap();
    assert!(
        after > before,
        "tick {after} on B should follow tick {before} on A"
    );

    // The disk works on the destination: a reset boots from the same shared disk, which
    // the source guest already counted once.
    hv_b.reboot("vm-mig").await.unwrap();
    let (log_b, _) = wait_serial(&hv_b, "vm-mig", 0, "UC-BOOT-OK vm-mig").await;
    assert_eq!(marker_value(&log_b, "UC-DISK "), ["boots=2"], "{log_b}");
    hv_b.kill("vm-mig").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ignoring_the_power_button_is_quit_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    let hv = Hypervisor::new(HypervisorConfig::new(&run_dir)).unwrap();
    let guest = build_guest(tmp.path());
    // A qcow2 disk this time (the other tests use raw files and NBD).
    let qcow2 = tmp.path().join("root.qcow2");
    sh(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        qcow2.to_str().unwrap(),
        "16M",
    ]);
    let mut spec = spec("vm-deaf", &guest, &["uc.acpid=0"]).await;
    spec.disks.push(DiskSpec {
        id: "root".into(),
        source: DiskSource::File {
            path: qcow2.clone(),
            format: DiskFormat::Qcow2,
        },
        readonly: false,
        serial: None,
    });
    // Two starts racing: exactly one QEMU.
    let (a, b) = tokio::join!(hv.start(&spec), hv.start(&spec));
    assert!(
        matches!(
            (&a, &b),
            (Ok(_), Err(HypervisorError::AlreadyRunning(_)))
                | (Err(HypervisorError::AlreadyRunning(_)), Ok(_))
        ),
        "{a:?} {b:?}"
    );
    let (log, offset) = wait_serial(&hv, "vm-deaf", 0, "UC-BOOT-OK vm-deaf").await;
    assert_eq!(marker_value(&log, "UC-DISK "), ["boots=1"], "{log}");
    let pid = hv.status("vm-deaf").await.unwrap().pid.unwrap();
    let uuid = std::fs::read_to_string(run_dir.join("vm-deaf/instance")).unwrap();
    let outcome = hv
        .shutdown("vm-deaf", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::Quit);
    assert!(!process_is_ours(pid, "vm-deaf", &uuid));
    assert_eq!(hv.status("vm-deaf").await.unwrap().state, RunState::Stopped);
    let rest = hv.serial_log("vm-deaf", offset, 1 << 20).unwrap();
    assert!(!String::from_utf8_lossy(&rest.data).contains("UC-POWEROFF"));
    // What the guest wrote (and flushed) is in the qcow2 image.
    let raw = tmp.path().join("root-copy.raw");
    sh(&[
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        qcow2.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert_eq!(guest::read_boot_counter(&raw).unwrap(), Some(1));
}

/// A ticking guest under a tiny console cap: the log is trimmed while QEMU appends to it
/// (copy-truncate is safe only because QEMU opens it with `append=on`), and a reader following
/// `next_offset` keeps getting larger offsets and the ticks in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cap_trims_a_running_guest_and_offsets_keep_growing() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    // Half the cap is kept: two `UC-TICK <n>` lines, so a trim every two or three ticks.
    let cap = 48;
    let hv = Hypervisor::new(HypervisorConfig {
        console_log_max_bytes: cap,
        ..HypervisorConfig::new(&run_dir)
    })
    .unwrap();
    let guest = build_guest(tmp.path());
    let spec = spec("vm-tick", &guest, &["uc.tick=1"]).await;
    hv.start(&spec).await.unwrap();
    let log_path = hv.serial_log_path("vm-tick");

    // Complete lines read so far; a gap (a trimmed part the reader missed, e.g. the boot
    // burst) drops the partial line before it.
    let mut seen = String::new();
    let mut next = 0;
    // Ticks read when the log was first trimmed while the guest ticked.
    let mut ticks_at_trim = None;
    let deadline = tokio::time::Instant::now() + BOOT_LIMIT;
    loop {
        let chunk = hv.serial_log("vm-tick", next, 1 << 20).unwrap();
        assert!(chunk.offset >= next, "{} < {next}", chunk.offset);
        if chunk.offset > next {
            assert_eq!(
                chunk.offset, chunk.first,
                "a gap ends at the oldest kept byte"
            );
            seen.truncate(seen.rfind('\n').map_or(0, |p| p + 1));
            seen.push_str("[gap]\n");
        }
        assert_eq!(chunk.next_offset, chunk.offset + chunk.data.len() as u64);
        assert!(chunk.next_offset <= chunk.end);
        next = chunk.next_offset;
        seen.push_str(&String::from_utf8_lossy(&chunk.data));

        let dropped = hv.trim_serial_log("vm-tick").unwrap();
        if dropped > 0 {
            let kept = std::fs::read(&log_path).unwrap();
            // QEMU appended at the end of the kept part, not at its old file position
            // (which would leave a hole of zeros).
            assert!(!kept.contains(&0), "{kept:?}");
            assert!(kept.len() as u64 <= cap, "{} bytes kept", kept.len());
        }
        let ticks = marker_value(&seen, "UC-TICK ").len();
        if dropped > 0 && ticks > 0 && ticks_at_trim.is_none() {
            ticks_at_trim = Some(ticks);
        }
        // Two more ticks read after that trim: QEMU kept appending to the trimmed file.
        if ticks_at_trim.is_some_and(|t| ticks >= t + 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ticks at the first trim: {ticks_at_trim:?}; read:\n{seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    hv.kill("vm-tick").await.unwrap();

    let ticks: Vec<u64> = marker_value(&seen, "UC-TICK ")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{seen}");
    // A reader keeping up loses nothing to the trims (the copy-truncate race could cost a
    // line, in a window of microseconds per trim).
    let missing = ticks.last().unwrap() - ticks[0] + 1 - ticks.len() as u64;
    assert!(missing <= 1, "{ticks:?}\n{seen}");
    // The base on disk and the kept file add up to the absolute end.
    let base: u64 = std::fs::read_to_string(run_dir.join("vm-tick/serial.base"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let chunk = hv.serial_log("vm-tick", 0, 1 << 20).unwrap();
    assert!(base > 0);
    assert_eq!((chunk.offset, chunk.first), (base, base));
    assert_eq!(
        chunk.end,
        base + std::fs::metadata(&log_path).unwrap().len()
    );
    assert!(chunk.end >= next);
}

/// `qemu-nbd --shared=2` serving a raw file on a loopback port, stopped on drop.
struct NbdExport {
    child: std::process::Child,
    url: String,
}

impl NbdExport {
    fn start(file: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("qemu-nbd")
            .args([
                "--format=raw",
                "--bind=127.0.0.1",
                "--shared=2",
                "--persistent",
            ])
            .arg(format!("--port={port}"))
            .arg("--export-name=shared")
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd (qemu-utils)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "qemu-nbd never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("nbd://127.0.0.1:{port}/shared"),
        }
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway L2 segment: a bridge with the VM's tap and a veth into a network namespace
/// where dnsmasq serves DHCP and answers pings on 10.213.<n>.1. Torn down on drop.
struct TestSegment {
    suffix: String,
    netns: String,
    tap: String,
    gateway: String,
    prefix: String,
    leases: PathBuf,
    dnsmasq: Option<std::process::Child>,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestSegment {
    fn create(dir: &Path) -> Self {
        let n = std::process::id() % 250 + 1;
        let suffix = format!("{:x}", std::process::id());
        let seg = Self {
            netns: format!("uchv-{suffix}"),
            tap: format!("uchvt{suffix}"),
            gateway: format!("10.213.{n}.1"),
            prefix: format!("10.213.{n}."),
            leases: dir.join("dnsmasq.leases"),
            suffix,
            dnsmasq: None,
        };
        let (br, veth, peer) = seg.links();
        sh(&["ip", "netns", "add", &seg.netns]);
        sh(&["ip", "link", "add", &br, "type", "bridge"]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &seg.netns]);
        sh(&["ip", "tuntap", "add", "dev", &seg.tap, "mode", "tap"]);
        for link in [&veth, &seg.tap] {
            sh(&["ip", "link", "set", link, "master", &br]);
            sh(&["ip", "link", "set", link, "up"]);
        }
        sh(&["ip", "link", "set", &br, "up"]);
        let ns = |cmd: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &seg.netns];
            full.extend_from_slice(cmd);
            sh(&full);
        };
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", seg.gateway),
            "dev",
            &peer,
        ]);
        ns(&["ip", "link", "set", &peer, "up"]);
        let mut seg = seg;
        let child = Command::new("ip")
            .args(["netns", "exec", &seg.netns, "dnsmasq", "--no-daemon"])
            .args(["--conf-file=/dev/null", "--port=0", "--bind-interfaces"])
            .arg(format!("--interface={peer}"))
            .arg(format!(
                "--dhcp-range={p}50,{p}99,255.255.255.0,1h",
                p = seg.prefix
            ))
            .arg(format!("--dhcp-leasefile={}", seg.leases.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (dnsmasq-base)");
        seg.dnsmasq = Some(child);
        seg
    }

    fn links(&self) -> (String, String, String) {
        (
            format!("uchvb{}", self.suffix),
            format!("uchvv{}", self.suffix),
            format!("uchvp{}", self.suffix),
        )
    }
}

impl Drop for TestSegment {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (br, veth, _) = self.links();
        for link in [&self.tap, &veth, &br] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nic_on_a_tap_gets_dhcp_and_reaches_its_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    let segment = TestSegment::create(tmp.path());
    let hv = Hypervisor::new(HypervisorConfig::new(&run_dir)).unwrap();
    let guest = build_guest(tmp.path());
    let ping = format!("uc.ping={}", segment.gateway);
    let mut spec = spec("vm-net", &guest, &[&ping]).await;
    spec.nics.push(NicSpec {
        tap: segment.tap.clone(),
        mac: "52:54:00:c0:ff:ee".into(),
    });
    hv.start(&spec).await.unwrap();
    let (log, _) = wait_serial(&hv, "vm-net", 0, "UC-BOOT-OK vm-net").await;
    let ip = marker_value(&log, "UC-GUEST-IP ");
    assert_eq!(ip.len(), 1, "{log}");
    let (addr, len) = ip[0].split_once('/').expect("addr/prefix");
    assert!(
        addr.starts_with(&segment.prefix),
        "{addr} not from dnsmasq's range"
    );
    let host: u8 = addr[segment.prefix.len()..].parse().unwrap();
    assert!((50..=99).contains(&host), "{addr}");
    assert_eq!(len, "24");
    assert_eq!(
        marker_value(&log, "UC-PING "),
        [format!("{} ok", segment.gateway)],
        "{log}"
    );
    // dnsmasq leased that address to the NIC's MAC.
    let leases = std::fs::read_to_string(&segment.leases).unwrap();
    assert!(
        leases
            .lines()
            .any(|l| l.contains("52:54:00:c0:ff:ee") && l.contains(addr)),
        "{leases}"
    );
    hv.kill("vm-net").await.unwrap();
}

#[tokio::test]
async fn failed_start_leaves_no_process_and_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let _guard = KillOnDrop(vec![run_dir.clone()]);
    let hv = Hypervisor::new(HypervisorConfig::new(&run_dir)).unwrap();
    let guest = build_guest(tmp.path());
    let mut spec = spec("vm-bad", &guest, &[]).await;
    spec.disks.push(data_disk(&tmp.path().join("missing.raw")));
    match hv.start(&spec).await {
        Err(HypervisorError::Spawn(msg)) => assert!(msg.contains("missing.raw"), "{msg}"),
        other => panic!("expected a spawn error, got {other:?}"),
    }
    assert!(hv.running().is_empty());
    assert_eq!(hv.status("vm-bad").await.unwrap().state, RunState::Stopped);
    assert!(hv.adopt_all().await.unwrap().adopted.is_empty());

    let mut bad = spec.clone();
    bad.vm_id = "../escape".into();
    assert!(matches!(
        hv.start(&bad).await,
        Err(HypervisorError::InvalidSpec(_))
    ));
    let mut bad = spec.clone();
    bad.vcpus = 0;
    assert!(matches!(
        hv.start(&bad).await,
        Err(HypervisorError::InvalidSpec(_))
    ));
    assert!(!run_dir.join("..").join("escape").exists());
}

#[tokio::test]
async fn accel_probe_falls_back_to_tcg_only_in_auto_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let qemu = Path::new("qemu-system-x86_64");
    let bogus = tmp.path().join("no-such-kernel");
    assert_eq!(
        probe_accel(AccelMode::Tcg, qemu, tmp.path(), None)
            .await
            .unwrap(),
        Accel::Tcg
    );
    // A probe guest that cannot run proves nothing about KVM: auto falls back, kvm refuses.
    assert_eq!(
        probe_accel(AccelMode::Auto, qemu, tmp.path(), Some(&bogus))
            .await
            .unwrap(),
        Accel::Tcg
    );
    assert!(matches!(
        probe_accel(AccelMode::Kvm, qemu, tmp.path(), Some(&bogus)).await,
        Err(HypervisorError::Accel(_))
    ));
}
