//! Helper for bench/plasmavmc/floor.sh: builds the tiny guest, then
//! - `cmdline <dir> <vm_id>` prints the exact QEMU command line the hypervisor would run, one
//!   argument per line;
//! - `floor <dir> <boots>` execs that command line directly (no hypervisor layer: the floor)
//!   and prints "boot <i> <ms>" from exec to the boot marker, per boot;
//! - `hv <dir> <boots>` does the same through `Hypervisor::start` (QMP connect, bookkeeping).
//!
//! Both timed sides wait for the marker the same way (polling the console log every 10 ms,
//! in this process), so the difference is the hypervisor layer's own cost.
//! `UC_ACCEL=auto|kvm|tcg` (default auto) chooses the accelerator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plasmavmc::guest;
use plasmavmc::hypervisor::{AccelMode, Hypervisor, HypervisorConfig, VmSpec};

const MARKER: &str = "UC-BOOT-OK";

fn usage() -> ! {
    eprintln!("usage: hv_floor cmdline <dir> <vm_id> | floor <dir> <boots> | hv <dir> <boots>");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        usage();
    }
    let dir = PathBuf::from(&args[1]);
    let mode = match std::env::var("UC_ACCEL").as_deref() {
        Ok("kvm") => AccelMode::Kvm,
        Ok("tcg") => AccelMode::Tcg,
        Ok("auto") | Err(_) => AccelMode::Auto,
        Ok(other) => panic!("UC_ACCEL={other}: expected auto, kvm or tcg"),
    };
    let tiny = guest::build(&dir.join("guest")).expect("build tiny guest");
    let hv = Hypervisor::new(HypervisorConfig::new(dir.join("run"))).expect("run dir");
    let accel = hv.probe_accel(mode, None).await.expect("accelerator");
    let spec = |vm_id: &str| VmSpec {
        vm_id: vm_id.to_string(),
        name: vm_id.to_string(),
        vcpus: 1,
        memory_mib: 96,
        disks: Vec::new(),
        nics: Vec::new(),
        boot: tiny.boot(vm_id, &[]),
        seed: None,
        accel,
    };
    match args[0].as_str() {
        "cmdline" => {
            let spec = spec(&args[2]);
            std::fs::create_dir_all(dir.join("run").join(&spec.vm_id)).expect("vm dir");
            let uuid = uuid_like(&spec.vm_id);
            for arg in hv.command_line(&spec, &uuid, false).expect("command line") {
                println!("{arg}");
            }
        }
        "floor" => {
            let boots: usize = args[2].parse().unwrap_or_else(|_| usage());
            for i in 0..boots {
                let spec = spec(&format!("floor-{i}"));
                let vm_dir = dir.join("run").join(&spec.vm_id);
                std::fs::create_dir_all(&vm_dir).expect("vm dir");
                let cmdline = hv
                    .command_line(&spec, &uuid_like(&spec.vm_id), false)
                    .expect("command line");
                let started = Instant::now();
                let status = std::process::Command::new("qemu-system-x86_64")
                    .args(&cmdline)
                    .status()
                    .expect("exec qemu");
                assert!(status.success(), "qemu: {status}");
                wait_marker(&vm_dir.join("serial.log")).await;
                let ms = started.elapsed().as_millis();
                println!("boot {i} {ms}");
                let pid: i32 = std::fs::read_to_string(vm_dir.join("qemu.pid"))
                    .expect("pidfile")
                    .trim()
                    .parse()
                    .expect("pid");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = std::fs::remove_dir_all(&vm_dir);
            }
        }
        "hv" => {
            let boots: usize = args[2].parse().unwrap_or_else(|_| usage());
            eprintln!("accelerator: {}", accel.as_str());
            for i in 0..boots {
                let vm_id = format!("hv-{i}");
                let spec = spec(&vm_id);
                let started = Instant::now();
                hv.start(&spec).await.expect("start");
                wait_marker(&hv.serial_log_path(&vm_id)).await;
                let ms = started.elapsed().as_millis();
                println!("boot {i} {ms}");
                hv.kill(&vm_id).await.expect("kill");
                hv.remove(&vm_id).await.expect("remove");
            }
        }
        _ => usage(),
    }
}

/// A fixed UUID per VM id for the by-hand runs (they are never adopted).
fn uuid_like(vm_id: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in vm_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// Polls the console log as often as the floor script does (10 ms).
async fn wait_marker(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).contains(MARKER))
            .unwrap_or(false)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no boot marker in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
