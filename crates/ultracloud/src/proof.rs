//! `ultracloud proof <lane>`: end-to-end scenarios that leave `result.json` in a dated
//! directory. A lane that cannot run records `blocked` with what is missing — never a pass.
//!
//! `fresh-smoke` walks the README's quickstart against a running cloud (or one it starts):
//! create a network, register an image (the tiny Debian-kernel + busybox guest, built here
//! from installed packages), create a VM on the network, wait for its boot marker on the
//! console, check the address it got by DHCP, and clean up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use plasmavmc::api::*;
use plasmavmc::client::PlasmavmcClient;
use serde::Serialize;
use serde_json::{Value, json};
use uc_runtime::Secret;
use uc_runtime::client::{ApiClient, ClientOptions};

use crate::Failure;
use crate::cli::OutputFormat;

#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(subcommand)]
    pub lane: ProofLane,
}

#[derive(Debug, Subcommand)]
pub enum ProofLane {
    /// The quickstart, end to end: network, image, VM, boot marker, DHCP address, console.
    FreshSmoke(FreshSmokeArgs),
}

#[derive(Debug, Args)]
pub struct FreshSmokeArgs {
    /// Where the dated result directory goes.
    #[arg(long, default_value = "./proof-results")]
    pub out: PathBuf,
    /// The cloud's plasmavmc URL.
    #[arg(long, default_value = "http://127.0.0.1:8087")]
    pub plasmavmc: String,
    /// The cloud's prismnet URL.
    #[arg(long, default_value = "http://127.0.0.1:8084")]
    pub prismnet: String,
    /// Admin credential of the running cloud (default: the one `up` wrote in ./.ultracloud).
    #[arg(long, default_value = "./.ultracloud/secrets/admin-token")]
    pub token_file: PathBuf,
    /// Never start a cloud; record `blocked` when none answers.
    #[arg(long)]
    pub no_start: bool,
    /// Give up on the boot after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
}

#[derive(Debug, Serialize)]
struct Step {
    name: String,
    status: &'static str,
    seconds: f64,
    detail: String,
}

#[derive(Debug, Serialize)]
struct LaneResult {
    lane: &'static str,
    status: &'static str,
    started_at: String,
    finished_at: String,
    cloud: String,
    missing: Vec<String>,
    steps: Vec<Step>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, so no date crate is needed for one timestamp).
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Recorder {
    steps: Vec<Step>,
}

impl Recorder {
    fn record(&mut self, name: &str, started: Instant, outcome: &Result<String, String>) {
        let (status, detail) = match outcome {
            Ok(d) => ("pass", d.clone()),
            Err(e) => ("fail", e.clone()),
        };
        eprintln!(
            "[{status}] {name} ({:.1} s){}",
            started.elapsed().as_secs_f64(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        self.steps.push(Step {
            name: name.into(),
            status,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        });
    }
}

async fn healthy(url: &str) -> bool {
    let Ok(api) = ApiClient::new(
        url,
        ClientOptions {
            retries: 0,
            timeout: Duration::from_secs(3),
            ..Default::default()
        },
    ) else {
        return false;
    };
    api.get::<Value>("/healthz").await.is_ok()
}

/// A cloud this lane started; stopped when dropped.
struct StartedCloud(Child);

impl Drop for StartedCloud {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_cloud(dir: &Path) -> Result<StartedCloud, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("cloud.log")).map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["up", "--data-dir"])
        .arg(dir.join("cloud"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start `ultracloud up`: {e}"))?;
    let cloud = StartedCloud(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let ready = reqwest::get("http://127.0.0.1:8070/readyz")
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(cloud);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "`ultracloud up` did not become ready; see {}",
        dir.join("cloud.log").display()
    ))
}

pub async fn run(args: ProofArgs, format: OutputFormat) -> Result<(), Failure> {
    match args.lane {
        ProofLane::FreshSmoke(a) => fresh_smoke(a, format).await,
    }
}

async fn fresh_smoke(args: FreshSmokeArgs, format: OutputFormat) -> Result<(), Failure> {
    let started_at = SystemTime::now();
    let stamp = utc_timestamp(started_at).replace(':', "");
    let dir = args.out.join(format!("fresh-smoke-{stamp}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", dir.display())))?;
    let mut rec = Recorder { steps: Vec::new() };
    let mut missing = Vec::new();
    let mut cloud_desc = format!("running cloud at {}", args.plasmavmc);
    let mut token_file = args.token_file.clone();
    let mut _cloud = None;

    if !healthy(&args.plasmavmc).await {
        if args.no_start {
            missing.push(format!("no cloud answers at {}", args.plasmavmc));
        } else {
            let t = Instant::now();
            let outcome = start_cloud(&dir).await;
            let r = outcome
                .as_ref()
                .map(|_| "started `ultracloud up`".to_owned())
                .map_err(Clone::clone);
            rec.record("start cloud", t, &r);
            match outcome {
                Ok(c) => {
                    _cloud = Some(c);
                    token_file = dir.join("cloud/secrets/admin-token");
                    cloud_desc = format!(
                        "cloud started by the lane in {}",
                        dir.join("cloud").display()
                    );
                }
                Err(e) => missing.push(e),
            }
        }
    }
    if missing.is_empty() && !healthy(&args.prismnet).await {
        missing.push(format!("prismnet does not answer at {}", args.prismnet));
    }
    let token = match uc_runtime::secret::read_secret_file(&token_file) {
        Ok(t) => Some(t),
        Err(e) => {
            if missing.is_empty() {
                missing.push(format!("admin token {}: {e}", token_file.display()));
            }
            None
        }
    };
    let guest = if missing.is_empty() {
        let t = Instant::now();
        let guest_dir = dir.join("guest");
        let built = tokio::task::spawn_blocking(move || plasmavmc::guest::build(&guest_dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match built {
            Ok(g) => {
                rec.record("build tiny guest", t, &Ok(g.kernel.display().to_string()));
                Some(g)
            }
            Err(e) => {
                missing.push(format!("tiny guest: {e}"));
                None
            }
        }
    } else {
        None
    };

    let status = match (token, guest) {
        (Some(token), Some(guest)) if missing.is_empty() => {
            match smoke_steps(&args, token, &guest, &mut rec).await {
                Ok(()) => "pass",
                Err(()) => "fail",
            }
        }
        _ => "blocked",
    };
    let result = LaneResult {
        lane: "fresh-smoke",
        status,
        started_at: utc_timestamp(started_at),
        finished_at: utc_timestamp(SystemTime::now()),
        cloud: cloud_desc,
        missing,
        steps: rec.steps,
    };
    let path = dir.join("result.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&result).expect("result serializes"),
    )
    .map_err(|e| Failure::Runtime(anyhow!("{}: {e}", path.display())))?;
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        ),
        OutputFormat::Table => {
            println!("fresh-smoke: {status}");
            for m in &result.missing {
                println!("  missing: {m}");
            }
            println!("result: {}", path.display());
        }
    }
    if status == "pass" {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow!(
            "fresh-smoke {status}; see {}",
            path.display()
        )))
    }
}

/// The quickstart's steps; every failure is recorded, cleanup always runs.
async fn smoke_steps(
    args: &FreshSmokeArgs,
    token: Secret<String>,
    guest: &plasmavmc::guest::TinyGuest,
    rec: &mut Recorder,
) -> Result<(), ()> {
    let options = ClientOptions {
        token: Some(token),
        ..Default::default()
    };
    let (Ok(net), Ok(vms)) = (
        ApiClient::new(&args.prismnet, options.clone()),
        PlasmavmcClient::new(&args.plasmavmc, options),
    ) else {
        rec.record("clients", Instant::now(), &Err("bad endpoint URL".into()));
        return Err(());
    };
    let suffix = format!("{:x}", std::process::id());
    let mut ok = true;
    let mut vpc_id = None;
    let mut subnet_id = None;
    let mut image_id = None;
    let mut vm_id = None;

    let t = Instant::now();
    let outcome: Result<String, String> = async {
        let vpc: Value = net
            .post(
                "/v1/vpcs",
                &json!({"name": format!("smoke-{suffix}"), "cidr": "10.231.0.0/16"}),
            )
            .await
            .map_err(|e| e.to_string())?;
        let id = vpc["id"].as_str().unwrap_or_default().to_owned();
        vpc_id = Some(id.clone());
        let subnet: Value = net
            .post(
                "/v1/subnets",
                &json!({"vpc_id": id, "name": "smoke", "cidr": "10.231.7.0/24"}),
            )
            .await
            .map_err(|e| e.to_string())?;
        let sid = subnet["id"].as_str().unwrap_or_default().to_owned();
        subnet_id = Some(sid.clone());
        Ok(format!("vpc {id}, subnet {sid} 10.231.7.0/24"))
    }
    .await;
    ok &= outcome.is_ok();
    rec.record("create network", t, &outcome);

    if ok {
        let t = Instant::now();
        let outcome = vms
            .create_image(
                &CreateImage {
                    name: format!("tiny-{suffix}"),
                    kind: ImageKind::Kernel,
                    disk: None,
                    format: None,
                    kernel: Some(guest.kernel.display().to_string()),
                    initrd: Some(guest.initrd.display().to_string()),
                    cmdline: Some("console=ttyS0 loglevel=4".into()),
                    public: false,
                },
                Some(&format!("fresh-smoke-image-{suffix}")),
            )
            .await
            .map(|i| {
                image_id = Some(i.id.clone());
                format!("image {} ({} bytes)", i.id, i.size_bytes)
            })
            .map_err(|e| e.to_string());
        ok &= outcome.is_ok();
        rec.record("register image", t, &outcome);
    }

    let mut vm_ip = None;
    if ok {
        let t = Instant::now();
        let outcome = vms
            .create_vm(
                &CreateVm {
                    name: format!("smoke-{suffix}"),
                    image: image_id.clone().unwrap_or_default(),
                    vcpus: 1,
                    memory_mib: 192,
                    root_volume_mib: None,
                    volumes: vec![],
                    ports: vec![],
                    subnets: vec![subnet_id.clone().unwrap_or_default()],
                    user_data: Some("#cloud-config\n# fresh-smoke\n".into()),
                    start: Some(true),
                },
                Some(&format!("fresh-smoke-{suffix}")),
            )
            .await
            .map(|vm| {
                vm_id = Some(vm.id.clone());
                vm_ip = vm.nics.first().and_then(|n| n.ips.first().cloned());
                format!(
                    "VM {} on worker {}, port address {}",
                    vm.id,
                    vm.worker,
                    vm_ip.clone().unwrap_or_default()
                )
            })
            .map_err(|e| e.to_string());
        ok &= outcome.is_ok();
        rec.record("create VM", t, &outcome);
    }

    if ok {
        let id = vm_id.clone().unwrap_or_default();
        let t = Instant::now();
        let waited = crate::plasmavmc_cli::wait_for(
            &vms,
            &id,
            Some("UC-BOOT-OK"),
            Duration::from_secs(args.boot_timeout),
            false,
        )
        .await;
        let outcome = match waited {
            Ok((_, console)) => Ok(format!(
                "boot marker read through the console API ({} bytes of console)",
                console.len()
            )),
            Err(Failure::Runtime(e)) => Err(e.to_string()),
            Err(Failure::Config(e)) => Err(e),
        };
        ok &= outcome.is_ok();
        rec.record("boot (marker on the console)", t, &outcome);
        if ok {
            let t = Instant::now();
            let outcome = match vms.console(&id, 0).await {
                Ok(log) => {
                    let got = log
                        .data
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("UC-GUEST-IP "))
                        .map(|s| s.trim().to_owned());
                    match (&got, &vm_ip) {
                        (Some(g), Some(want)) if g.split('/').next() == Some(want.as_str()) => {
                            Ok(format!("guest got {g} by DHCP, the port's address"))
                        }
                        _ => Err(format!("guest reported {:?}, port has {:?}", got, vm_ip)),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            ok &= outcome.is_ok();
            rec.record("DHCP address from prismnet", t, &outcome);
        }
    }

    // Cleanup, whatever happened.
    let t = Instant::now();
    let mut problems = Vec::new();
    if let Some(id) = &vm_id
        && let Err(e) = vms.delete_vm(id, true).await
    {
        problems.push(format!("VM {id}: {e}"));
    }
    if let Some(id) = &image_id {
        // The VM's record may linger a moment while its worker tears it down.
        let mut left = 60;
        loop {
            match vms.delete_image(id).await {
                Ok(()) => break,
                Err(e) if e.status() == Some(409) && left > 0 => {
                    left -= 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    problems.push(format!("image {id}: {e}"));
                    break;
                }
            }
        }
    }
    if let Some(id) = &subnet_id
        && let Err(e) = net.delete_no_content(&format!("/v1/subnets/{id}")).await
    {
        problems.push(format!("subnet {id}: {e}"));
    }
    if let Some(id) = &vpc_id
        && let Err(e) = net.delete_no_content(&format!("/v1/vpcs/{id}")).await
    {
        problems.push(format!("vpc {id}: {e}"));
    }
    let outcome = if problems.is_empty() {
        Ok("VM, image, subnet and VPC deleted".to_owned())
    } else {
        Err(problems.join("; "))
    };
    ok &= outcome.is_ok();
    rec.record("clean up", t, &outcome);
    if ok { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            utc_timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_210_059);
        assert_eq!(utc_timestamp(t), "2026-12-02T11:14:19Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00Z");
    }
}
