//! `ultracloud volume …`: coronafs volumes over the controller's API.

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use coronafs::CoronafsClient;
use coronafs::api::{AttachVolume, CreateVolume, Volume, VolumeFormat, VolumeSource};
use serde_json::{Value, json};
use uc_runtime::client::ClientOptions;
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{ClientArgs, OutputFormat};
use crate::output;

#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// coronafs controller URL.
    #[arg(long, default_value = "http://127.0.0.1:50088", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: blank (--size), or from an image (--image PATH|URL).
    Create {
        name: String,
        /// Bytes, or with a suffix K, M, G, T (powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
        /// An absolute image path on the storage node, or an http(s) URL.
        #[arg(long)]
        image: Option<String>,
        /// Allow two attachments at once (live migration).
        #[arg(long)]
        multi_attach: bool,
        /// Repeat-safe: the same key returns the same volume.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    List {
        #[arg(long)]
        page_size: Option<u32>,
        #[arg(long)]
        page_token: Option<String>,
    },
    Get {
        id: String,
    },
    /// Take a snapshot of a volume.
    Snapshot {
        id: String,
        #[arg(long)]
        name: String,
    },
    /// Create a volume from a snapshot.
    Clone {
        snapshot_id: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
        format: FormatArg,
    },
    /// Grow a volume.
    Resize {
        id: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Attach a volume to a worker; prints where to reach it.
    Attach {
        id: String,
        #[arg(long)]
        worker: String,
        /// Open the file directly when the worker is the volume's node.
        #[arg(long)]
        prefer_local: bool,
    },
    Detach {
        id: String,
        #[arg(long)]
        worker: String,
    },
    /// Delete a detached volume and its snapshots.
    Delete {
        id: String,
    },
}

/// `10G`, `512M`, `4096`: bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: a size like 4096, 512M or 10G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn format_of(f: FormatArg) -> VolumeFormat {
    match f {
        FormatArg::Raw => VolumeFormat::Raw,
        FormatArg::Qcow2 => VolumeFormat::Qcow2,
    }
}

fn runtime(e: uc_runtime::client::ClientError) -> Failure {
    Failure::Runtime(anyhow!(e))
}

const COLUMNS: &[&str] = &[
    "id",
    "name",
    "state",
    "size_bytes",
    "format",
    "node",
    "attached_to",
];

fn row(v: &Volume) -> Vec<String> {
    vec![
        v.id.clone(),
        v.name.clone(),
        serde_json::to_value(v.state)
            .ok()
            .and_then(|s| s.as_str().map(str::to_owned))
            .unwrap_or_default(),
        v.size_bytes.to_string(),
        v.format.to_string(),
        v.node.clone(),
        v.attachments
            .iter()
            .map(|a| a.worker.as_str())
            .collect::<Vec<_>>()
            .join(","),
    ]
}

fn show_volume(format: OutputFormat, v: &Volume) {
    output::print(format, v, COLUMNS, vec![row(v)]);
}

fn show_value(format: OutputFormat, v: &Value, columns: &[&str]) {
    let cells = columns
        .iter()
        .map(|c| match &v[*c] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    output::print(format, v, columns, vec![cells]);
}

pub async fn run(args: VolumeArgs, format: OutputFormat) -> Result<(), Failure> {
    let token =
        read_secret_file(&args.client.token_file).map_err(|e| Failure::Config(e.to_string()))?;
    let client = CoronafsClient::new(
        &args.endpoint,
        ClientOptions {
            token: Some(token),
            ca_file: args.client.ca_file.clone(),
            timeout: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Config(e.to_string()))?;
    match args.command {
        VolumeCommand::Create {
            name,
            size,
            format: f,
            image,
            multi_attach,
            idempotency_key,
        } => {
            let req = CreateVolume {
                name,
                size_bytes: size,
                format: format_of(f),
                source: match image {
                    Some(location) => VolumeSource::Image { location },
                    None => VolumeSource::Blank,
                },
                multi_attach,
                ..Default::default()
            };
            let v = client
                .create_volume(&req, idempotency_key.as_deref())
                .await
                .map_err(runtime)?;
            show_volume(format, &v);
        }
        VolumeCommand::List {
            page_size,
            page_token,
        } => {
            let page = client
                .list_volumes(page_size, page_token.as_deref())
                .await
                .map_err(runtime)?;
            output::print(format, &page, COLUMNS, page.items.iter().map(row).collect());
            if format == OutputFormat::Table
                && let Some(t) = &page.next_page_token
            {
                println!("(more: --page-token {t})");
            }
        }
        VolumeCommand::Get { id } => {
            let v = client.get_volume(&id).await.map_err(runtime)?;
            show_volume(format, &v);
        }
        VolumeCommand::Snapshot { id, name } => {
            let s = client.create_snapshot(&id, &name).await.map_err(runtime)?;
            show_value(
                format,
                &serde_json::to_value(&s).unwrap_or_default(),
                &["id", "volume_id", "name", "size_bytes", "format"],
            );
        }
        VolumeCommand::Clone {
            snapshot_id,
            name,
            size,
            format: f,
        } => {
            let req = CreateVolume {
                name,
                size_bytes: size,
                format: format_of(f),
                source: VolumeSource::Snapshot { snapshot_id },
                ..Default::default()
            };
            let v = client.create_volume(&req, None).await.map_err(runtime)?;
            show_volume(format, &v);
        }
        VolumeCommand::Resize { id, size } => {
            let v = client.resize_volume(&id, size).await.map_err(runtime)?;
            show_volume(format, &v);
        }
        VolumeCommand::Attach {
            id,
            worker,
            prefer_local,
        } => {
            let a = client
                .attach(
                    &id,
                    &AttachVolume {
                        worker,
                        prefer_local,
                    },
                )
                .await
                .map_err(runtime)?;
            show_value(
                format,
                &serde_json::to_value(&a).unwrap_or_default(),
                &["volume_id", "worker", "transport", "nbd_url", "local_path"],
            );
        }
        VolumeCommand::Detach { id, worker } => {
            let v = client.detach(&id, &worker).await.map_err(runtime)?;
            show_volume(format, &v);
        }
        VolumeCommand::Delete { id } => {
            client.delete_volume(&id).await.map_err(runtime)?;
            show_value(format, &json!({"deleted": id}), &["deleted"]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("512M"), Ok(512 << 20));
        assert_eq!(super::parse_size("10g"), Ok(10 << 30));
        assert!(super::parse_size("-1").is_err());
        assert!(super::parse_size("99999999999T").is_err());
        assert!(super::parse_size("G").is_err());
    }
}
