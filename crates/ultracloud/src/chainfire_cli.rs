//! `ultracloud chainfire …`: member listing and backups.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use serde::Serialize;
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{ChainfireCommand, ClientArgs, MemberCommand, OutputFormat, SnapshotCommand};
use crate::output;

async fn connect(
    endpoint: &str,
    client: &ClientArgs,
) -> Result<chainfire::client::Client, Failure> {
    let token = read_secret_file(&client.token_file).map_err(|e| Failure::Config(e.to_string()))?;
    chainfire::client::Client::connect(endpoint, &token, client.ca_file.as_deref())
        .await
        .map_err(|e| Failure::Runtime(anyhow!(e)))
}

#[derive(Serialize)]
struct MemberRow {
    id: String,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
}

#[derive(Serialize)]
struct SavedSnapshot {
    file: String,
    bytes: usize,
    revision: i64,
    keys: usize,
}

#[derive(Serialize)]
struct RestoredMember {
    data_dir: String,
    name: String,
    member_id: String,
    peer_url: String,
    members: usize,
    revision: i64,
    keys: usize,
}

pub async fn run(command: ChainfireCommand, format: OutputFormat) -> Result<(), Failure> {
    match command {
        ChainfireCommand::Member {
            command: MemberCommand::List { endpoint, client },
        } => {
            let mut c = connect(&endpoint, &client).await?;
            let members = c
                .members()
                .await
                .map_err(|e| Failure::Runtime(anyhow!(e.message().to_owned())))?;
            let rows: Vec<MemberRow> = members
                .into_iter()
                .map(|m| MemberRow {
                    id: format!("{:x}", m.id),
                    name: m.name,
                    peer_urls: m.peer_ur_ls,
                    client_urls: m.client_ur_ls,
                    learner: m.is_learner,
                })
                .collect();
            let table = rows
                .iter()
                .map(|m| {
                    vec![
                        m.id.clone(),
                        m.name.clone(),
                        m.peer_urls.join(","),
                        m.client_urls.join(","),
                        m.learner.to_string(),
                    ]
                })
                .collect();
            output::print(
                format,
                &rows,
                &["id", "name", "peer urls", "client urls", "learner"],
                table,
            );
        }
        ChainfireCommand::Snapshot {
            command:
                SnapshotCommand::Save {
                    file,
                    endpoint,
                    client,
                },
        } => {
            let mut c = connect(&endpoint, &client).await?;
            let data = c
                .snapshot()
                .await
                .map_err(|e| Failure::Runtime(anyhow!(e.message().to_owned())))?;
            let snapshot = chainfire::state::open_backup(data.clone())
                .map_err(|e| Failure::Runtime(anyhow!(e)))?;
            let (_, revision, keys) = chainfire::state::backup_summary(&snapshot)
                .map_err(|e| Failure::Runtime(anyhow!(e)))?;
            uc_runtime::secret::write_secret_file(&file, &data)
                .with_context(|| format!("cannot write {}", file.display()))?;
            let saved = SavedSnapshot {
                file: file.display().to_string(),
                bytes: data.len(),
                revision,
                keys,
            };
            output::print(
                format,
                &saved,
                &["file", "bytes", "revision", "keys"],
                vec![vec![
                    saved.file.clone(),
                    saved.bytes.to_string(),
                    revision.to_string(),
                    keys.to_string(),
                ]],
            );
        }
        ChainfireCommand::Snapshot {
            command:
                SnapshotCommand::Restore {
                    file,
                    data_dir,
                    name,
                    initial_cluster,
                    peer_url,
                },
        } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let snapshot = chainfire::state::open_backup(data)
                .map_err(|e| Failure::Config(format!("{}: {e}", file.display())))?;
            let (_, revision, keys) = chainfire::state::backup_summary(&snapshot)
                .map_err(|e| Failure::Runtime(anyhow!(e)))?;
            let founders = if initial_cluster.is_empty() {
                let url = peer_url
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:2380".to_owned());
                vec![(name.clone(), url)]
            } else {
                chainfire::config::parse_initial_cluster(&initial_cluster)
                    .map_err(Failure::Config)?
            };
            let own_url = match &peer_url {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => founders
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, u)| u.clone())
                    .ok_or_else(|| {
                        Failure::Config(format!("--initial-cluster has no member named `{name}`"))
                    })?,
            };
            if !founders.iter().any(|(_, u)| *u == own_url) {
                return Err(Failure::Config(format!(
                    "--initial-cluster does not contain {own_url}"
                )));
            }
            let members: BTreeMap<u64, uc_raft::PeerNode> = founders
                .iter()
                .map(|(n, u)| {
                    (
                        chainfire::member_id(u),
                        uc_raft::PeerNode {
                            name: n.clone(),
                            peer_url: u.clone(),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let seeded = chainfire::state::for_new_cluster(&snapshot)
                .map_err(|e| Failure::Runtime(anyhow!(e)))?;
            crate::secrets::ensure_private_dir(&data_dir)?;
            let raft_dir = data_dir.join("chainfire").join("raft");
            uc_raft::seed_from_snapshot(&raft_dir, seeded, members).map_err(|e| {
                Failure::Runtime(anyhow!("cannot restore into {}: {e}", raft_dir.display()))
            })?;
            let restored = RestoredMember {
                data_dir: data_dir.display().to_string(),
                name,
                member_id: format!("{:x}", chainfire::member_id(&own_url)),
                peer_url: own_url,
                members: founders.len(),
                revision,
                keys,
            };
            output::print(
                format,
                &restored,
                &[
                    "data dir",
                    "name",
                    "member id",
                    "peer url",
                    "members",
                    "revision",
                    "keys",
                ],
                vec![vec![
                    restored.data_dir.clone(),
                    restored.name.clone(),
                    restored.member_id.clone(),
                    restored.peer_url.clone(),
                    restored.members.to_string(),
                    revision.to_string(),
                    keys.to_string(),
                ]],
            );
        }
    }
    Ok(())
}
