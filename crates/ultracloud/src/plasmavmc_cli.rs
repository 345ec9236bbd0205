//! `ultracloud vm|image|worker …` over plasmavmc's API, and `ultracloud proof fresh-smoke`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use plasmavmc::api::*;
use plasmavmc::client::{Deleted, PlasmavmcClient};
use serde_json::Value;
use uc_runtime::client::ClientOptions;
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{ClientArgs, OutputFormat};
use crate::output;

#[derive(Debug, Args)]
pub struct VmArgs {
    /// plasmavmc's URL.
    #[arg(long, default_value = "http://127.0.0.1:8087", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create (and start) a VM.
    Create {
        name: String,
        /// Image id or name.
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
        /// Root volume size in MiB (disk images: default the image's size).
        #[arg(long)]
        root_volume: Option<u64>,
        /// An extra blank volume of this many MiB (repeatable).
        #[arg(long = "volume")]
        volumes: Vec<u64>,
        /// An existing prismnet port to attach (repeatable).
        #[arg(long = "port")]
        ports: Vec<String>,
        /// A subnet to create a port in (repeatable).
        #[arg(long = "subnet")]
        subnets: Vec<String>,
        /// cloud-init user-data file (NoCloud).
        #[arg(long)]
        user_data_file: Option<PathBuf>,
        /// Create it stopped.
        #[arg(long)]
        no_start: bool,
        /// Wait until it runs, showing progress.
        #[arg(long)]
        wait: bool,
        /// Wait until its console shows this text (implies --wait), e.g. a boot marker.
        #[arg(long, value_name = "TEXT")]
        wait_console: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Makes a retried create return the same VM.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    List,
    Get {
        id: String,
    },
    Start {
        id: String,
    },
    /// Graceful stop (ACPI), forced after --timeout seconds.
    Stop {
        id: String,
        #[arg(long)]
        timeout: Option<u64>,
    },
    Reboot {
        id: String,
    },
    /// Delete; a running VM needs --force.
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Offline resize (stop first).
    Resize {
        id: String,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory: Option<u64>,
    },
    /// Live-migrate to another worker.
    Migrate {
        id: String,
        #[arg(long)]
        worker: Option<String>,
    },
    /// The serial console log.
    Console {
        id: String,
        /// Keep printing new output.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    Events {
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[arg(long, default_value = "http://127.0.0.1:8087", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Register an image: --disk FILE|URL (a bootable disk) or --kernel (and --initrd,
    /// --cmdline) for direct kernel boot.
    Create {
        name: String,
        #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline"])]
        disk: Option<String>,
        /// raw or qcow2.
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        /// Visible to every tenant (operator).
        #[arg(long)]
        public: bool,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Build the tiny test guest (this host's Debian kernel + busybox initramfs) into DIR and
    /// print its kernel and initrd paths, ready for `image create --kernel … --initrd …`.
    TinyGuest {
        #[arg(long, default_value = "./tiny-guest")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long, default_value = "http://127.0.0.1:8087", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: WorkerCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    List,
    Get {
        name: String,
    },
    /// No new VMs on this worker.
    Drain {
        name: String,
    },
    Undrain {
        name: String,
    },
    /// Forget a worker that has no VMs.
    Delete {
        name: String,
    },
}

fn runtime(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(anyhow!("{e}"))
}

fn client(endpoint: &str, args: &ClientArgs) -> Result<PlasmavmcClient, Failure> {
    let token = read_secret_file(&args.token_file).map_err(|e| Failure::Config(e.to_string()))?;
    PlasmavmcClient::new(
        endpoint,
        ClientOptions {
            token: Some(token),
            ca_file: args.ca_file.clone(),
            // `vm migrate` answers when the migration is done.
            timeout: Duration::from_secs(900),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Config(e.to_string()))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn show<T: serde::Serialize>(format: OutputFormat, value: &T, columns: &[&str]) {
    let v = serde_json::to_value(value).unwrap_or(Value::Null);
    let items: Vec<&Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![&v],
    };
    let rows = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    output::print(format, &v, columns, rows);
}

const VM_COLUMNS: &[&str] = &[
    "id",
    "name",
    "state",
    "desired",
    "vcpus",
    "memory_mib",
    "worker",
    "error",
];

fn vm_ips(vm: &Vm) -> String {
    vm.nics
        .iter()
        .flat_map(|n| n.ips.iter().cloned())
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits for `state` (and console `text`), printing progress to stderr.
pub async fn wait_for(
    api: &PlasmavmcClient,
    id: &str,
    text: Option<&str>,
    timeout: Duration,
    quiet: bool,
) -> Result<(Vm, String), Failure> {
    let started = Instant::now();
    let mut last_state = None;
    let mut console = String::new();
    let mut offset = 0;
    let mut err = std::io::stderr();
    loop {
        let vm = api.get_vm(id).await.map_err(runtime)?;
        if last_state != Some(vm.state) && !quiet {
            let _ = writeln!(
                err,
                "[{:>5.1}s] {} is {}{}",
                started.elapsed().as_secs_f64(),
                vm.name,
                vm.state.as_str(),
                vm.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            last_state = Some(vm.state);
        }
        if vm.state == VmState::Error {
            return Err(Failure::Runtime(anyhow!(
                "VM {id} failed: {}",
                vm.error.unwrap_or_default()
            )));
        }
        if vm.state == VmState::Running {
            let Some(text) = text else {
                return Ok((vm, console));
            };
            if let Ok(chunk) = api.console(id, offset).await {
                offset = chunk.next_offset;
                if !quiet {
                    for line in chunk.data.lines().filter(|l| !l.trim().is_empty()) {
                        let _ = writeln!(
                            err,
                            "[{:>5.1}s]   console: {}",
                            started.elapsed().as_secs_f64(),
                            line.trim_end()
                        );
                    }
                }
                console.push_str(&chunk.data);
                if console.contains(text) {
                    return Ok((vm, console));
                }
            }
        }
        if started.elapsed() > timeout {
            return Err(Failure::Runtime(anyhow!(
                "gave up after {} s: VM {id} is {}{}",
                timeout.as_secs(),
                vm.state.as_str(),
                text.map(|t| format!(", console has no {t:?} yet"))
                    .unwrap_or_default()
            )));
        }
        // Frequent polls: the wait is what a user (and the bench) sees of a boot.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run_vm(args: VmArgs, format: OutputFormat) -> Result<(), Failure> {
    let api = client(&args.endpoint, &args.client)?;
    match args.command {
        VmCommand::Create {
            name,
            image,
            vcpus,
            memory,
            root_volume,
            volumes,
            ports,
            subnets,
            user_data_file,
            no_start,
            wait,
            wait_console,
            timeout,
            idempotency_key,
        } => {
            let user_data = match user_data_file {
                Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                    Failure::Config(format!("--user-data-file {}: {e}", p.display()))
                })?),
                None => None,
            };
            let req = CreateVm {
                name,
                image,
                vcpus,
                memory_mib: memory,
                root_volume_mib: root_volume,
                volumes: volumes
                    .into_iter()
                    .map(|s| VolumeRequest {
                        size_mib: Some(s),
                        volume_id: None,
                    })
                    .collect(),
                ports,
                subnets,
                user_data,
                start: Some(!no_start),
            };
            let key = idempotency_key.unwrap_or_else(uuid_like);
            let vm = api.create_vm(&req, Some(&key)).await.map_err(runtime)?;
            let vm = if wait || wait_console.is_some() {
                wait_for(
                    &api,
                    &vm.id,
                    wait_console.as_deref(),
                    Duration::from_secs(timeout),
                    format == OutputFormat::Json,
                )
                .await?
                .0
            } else {
                vm
            };
            show(format, &vm, VM_COLUMNS);
            if format == OutputFormat::Table && !vm.nics.is_empty() {
                println!("addresses: {}", vm_ips(&vm));
            }
        }
        VmCommand::List => {
            let mut items = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = api.list_vms(token.as_deref()).await.map_err(runtime)?;
                items.extend(page.items);
                match page.next_page_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            show(
                format,
                &Page {
                    items,
                    next_page_token: None,
                },
                VM_COLUMNS,
            );
        }
        VmCommand::Get { id } => {
            let vm = api.get_vm(&id).await.map_err(runtime)?;
            show(format, &vm, VM_COLUMNS);
        }
        VmCommand::Start { id } => show(
            format,
            &api.start_vm(&id).await.map_err(runtime)?,
            VM_COLUMNS,
        ),
        VmCommand::Stop { id, timeout } => show(
            format,
            &api.stop_vm(&id, timeout).await.map_err(runtime)?,
            VM_COLUMNS,
        ),
        VmCommand::Reboot { id } => show(
            format,
            &api.reboot_vm(&id).await.map_err(runtime)?,
            VM_COLUMNS,
        ),
        VmCommand::Delete { id, force } => {
            match api.delete_vm(&id, force).await.map_err(runtime)? {
                Deleted::Done => eprintln!("deleted {id}"),
                Deleted::Pending(vm) => {
                    eprintln!("{id} is being deleted (its worker is still tearing it down)");
                    show(format, &vm, VM_COLUMNS);
                }
            }
        }
        VmCommand::Resize { id, vcpus, memory } => show(
            format,
            &api.resize_vm(
                &id,
                &ResizeVm {
                    vcpus,
                    memory_mib: memory,
                },
            )
            .await
            .map_err(runtime)?,
            VM_COLUMNS,
        ),
        VmCommand::Migrate { id, worker } => show(
            format,
            &api.migrate_vm(&id, worker.as_deref())
                .await
                .map_err(runtime)?,
            VM_COLUMNS,
        ),
        VmCommand::Console { id, follow } => {
            let mut offset = 0;
            let mut out = std::io::stdout();
            loop {
                let chunk = api.console(&id, offset).await.map_err(runtime)?;
                if chunk.offset > offset {
                    // The worker caps each console log; what we had not read yet is gone.
                    eprintln!(
                        "[console: {} older bytes were trimmed on the worker]",
                        chunk.offset - offset
                    );
                }
                offset = chunk.next_offset;
                let _ = out.write_all(chunk.data.as_bytes());
                let _ = out.flush();
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        VmCommand::Events { id } => {
            let page = api.events(&id, 0).await.map_err(runtime)?;
            show(format, &page, &["seq", "at", "kind", "message"]);
        }
    }
    Ok(())
}

fn uuid_like() -> String {
    use std::time::SystemTime;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("cli-{nanos:x}-{}", std::process::id())
}

pub async fn run_image(args: ImageArgs, format: OutputFormat) -> Result<(), Failure> {
    if let ImageCommand::TinyGuest { out } = &args.command {
        let guest = plasmavmc::guest::build(out).map_err(runtime)?;
        let paths = serde_json::json!({
            "kernel": std::path::absolute(&guest.kernel).unwrap_or(guest.kernel.clone()),
            "initrd": std::path::absolute(&guest.initrd).unwrap_or(guest.initrd.clone()),
        });
        show(format, &paths, &["kernel", "initrd"]);
        return Ok(());
    }
    let api = client(&args.endpoint, &args.client)?;
    let columns = &[
        "id",
        "name",
        "kind",
        "public",
        "size_bytes",
        "kernel",
        "disk",
    ];
    match args.command {
        ImageCommand::Create {
            name,
            disk,
            format: disk_format,
            kernel,
            initrd,
            cmdline,
            public,
        } => {
            let kind = match (&disk, &kernel) {
                (Some(_), None) => ImageKind::Disk,
                (None, Some(_)) => ImageKind::Kernel,
                _ => {
                    return Err(Failure::Config("give either --disk or --kernel".into()));
                }
            };
            // Local paths are sent absolute: the cluster resolves them, not this shell.
            let absolute = |p: Option<String>| {
                p.map(|p| {
                    if p.contains("://") {
                        p
                    } else {
                        std::path::absolute(&p)
                            .map(|a| a.display().to_string())
                            .unwrap_or(p)
                    }
                })
            };
            let image = api
                .create_image(
                    &CreateImage {
                        name,
                        kind,
                        disk: absolute(disk),
                        format: disk_format,
                        kernel: absolute(kernel),
                        initrd: absolute(initrd),
                        cmdline,
                        public,
                    },
                    Some(&uuid_like()),
                )
                .await
                .map_err(runtime)?;
            show(format, &image, columns);
        }
        ImageCommand::List => show(
            format,
            &api.list_images(None).await.map_err(runtime)?,
            columns,
        ),
        ImageCommand::Get { id } => {
            show(format, &api.get_image(&id).await.map_err(runtime)?, columns)
        }
        ImageCommand::Delete { id } => {
            api.delete_image(&id).await.map_err(runtime)?;
            eprintln!("deleted {id}");
        }
        ImageCommand::TinyGuest { .. } => unreachable!("handled above"),
    }
    Ok(())
}

pub async fn run_worker(args: WorkerArgs, format: OutputFormat) -> Result<(), Failure> {
    let api = client(&args.endpoint, &args.client)?;
    let columns = &[
        "name",
        "state",
        "accel",
        "vcpus",
        "used_vcpus",
        "memory_mib",
        "used_memory_mib",
        "url",
    ];
    match args.command {
        WorkerCommand::List => show(format, &api.list_workers().await.map_err(runtime)?, columns),
        WorkerCommand::Get { name } => show(
            format,
            &api.get_worker(&name).await.map_err(runtime)?,
            columns,
        ),
        WorkerCommand::Drain { name } => show(
            format,
            &api.drain_worker(&name, true).await.map_err(runtime)?,
            columns,
        ),
        WorkerCommand::Undrain { name } => show(
            format,
            &api.drain_worker(&name, false).await.map_err(runtime)?,
            columns,
        ),
        WorkerCommand::Delete { name } => {
            api.delete_worker(&name).await.map_err(runtime)?;
            eprintln!("removed worker {name}");
        }
    }
    Ok(())
}
