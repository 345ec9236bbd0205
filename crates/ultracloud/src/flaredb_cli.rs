//! `ultracloud flaredb …`: SQL, namespaces and backups over flaredb's REST API.

use anyhow::{Context, anyhow};
use serde::Serialize;
use uc_runtime::client::{ApiClient, ClientOptions};
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{FlaredbArgs, FlaredbCommand, NamespaceCommand, NamespaceMode, OutputFormat};
use crate::output;

fn client(args: &FlaredbArgs) -> Result<ApiClient, Failure> {
    let token =
        read_secret_file(&args.client.token_file).map_err(|e| Failure::Config(e.to_string()))?;
    ApiClient::new(
        &args.endpoint,
        ClientOptions {
            token: Some(token),
            ca_file: args.client.ca_file.clone(),
            timeout: std::time::Duration::from_secs(120),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Config(e.to_string()))
}

fn runtime(e: uc_runtime::client::ClientError) -> Failure {
    Failure::Runtime(anyhow!(e))
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("blob")
            .and_then(|b| b.as_str())
            .map(|b| format!("\\x{b}"))
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

pub async fn run(args: FlaredbArgs, format: OutputFormat) -> Result<(), Failure> {
    let api = client(&args)?;
    match &args.command {
        FlaredbCommand::Sql {
            namespace,
            statements,
        } => {
            let body = serde_json::json!({
                "namespace": namespace,
                "statements": statements.iter().map(|s| serde_json::json!({"sql": s})).collect::<Vec<_>>(),
            });
            let answer: serde_json::Value =
                api.post("/api/v1/sql", &body).await.map_err(runtime)?;
            if format == OutputFormat::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
                return Ok(());
            }
            for result in answer["results"].as_array().into_iter().flatten() {
                let columns: Vec<String> = result["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["name"].as_str().unwrap_or("?").to_owned())
                    .collect();
                if columns.is_empty() {
                    println!(
                        "{} {}",
                        result["kind"].as_str().unwrap_or("ok"),
                        result["rows_affected"]
                    );
                    continue;
                }
                let rows: Vec<Vec<String>> = result["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|row| row.as_array().into_iter().flatten().map(cell).collect())
                    .collect();
                let headers: Vec<&str> = columns.iter().map(String::as_str).collect();
                print!("{}", output::table(&headers, &rows));
            }
        }
        FlaredbCommand::Namespace { command } => match command {
            NamespaceCommand::Create { name, mode } => {
                let mode = match mode {
                    NamespaceMode::Strong => "strong",
                    NamespaceMode::Eventual => "eventual",
                };
                let created: serde_json::Value = api
                    .post(
                        "/api/v1/namespaces",
                        &serde_json::json!({"name": name, "mode": mode}),
                    )
                    .await
                    .map_err(runtime)?;
                let row = vec![
                    cell(&created["name"]),
                    cell(&created["mode"]),
                    cell(&created["username"]),
                    cell(&created["password"]),
                ];
                output::print(
                    format,
                    &created,
                    &["name", "mode", "username", "password"],
                    vec![row],
                );
            }
            NamespaceCommand::List => {
                let list: Vec<serde_json::Value> =
                    api.get("/api/v1/namespaces").await.map_err(runtime)?;
                let rows = list
                    .iter()
                    .map(|n| {
                        vec![
                            cell(&n["name"]),
                            cell(&n["mode"]),
                            n["members"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(cell)
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                output::print(format, &list, &["name", "mode", "members"], rows);
            }
            NamespaceCommand::Drop { name } => {
                api.delete_no_content(&format!("/api/v1/namespaces/{name}"))
                    .await
                    .map_err(runtime)?;
                #[derive(Serialize)]
                struct Dropped<'a> {
                    dropped: &'a str,
                }
                output::print(
                    format,
                    &Dropped { dropped: name },
                    &["dropped"],
                    vec![vec![name.clone()]],
                );
            }
            NamespaceCommand::AddMember { namespace, member } => {
                let view: serde_json::Value = api
                    .post(
                        &format!("/api/v1/namespaces/{namespace}/members"),
                        &serde_json::json!({"name": member}),
                    )
                    .await
                    .map_err(runtime)?;
                let members = view["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(cell)
                    .collect::<Vec<_>>()
                    .join(",");
                output::print(
                    format,
                    &view,
                    &["name", "members"],
                    vec![vec![namespace.clone(), members]],
                );
            }
        },
        FlaredbCommand::Backup { namespace, file } => {
            let data = api
                .get_bytes(&format!("/api/v1/namespaces/{namespace}/backup"))
                .await
                .map_err(runtime)?;
            flaredb::rest::open_backup(&data).map_err(|e| Failure::Runtime(anyhow!(e)))?;
            uc_runtime::secret::write_secret_file(file, &data)
                .with_context(|| format!("cannot write {}", file.display()))?;
            #[derive(Serialize)]
            struct Saved {
                file: String,
                bytes: usize,
            }
            let saved = Saved {
                file: file.display().to_string(),
                bytes: data.len(),
            };
            output::print(
                format,
                &saved,
                &["file", "bytes"],
                vec![vec![saved.file.clone(), saved.bytes.to_string()]],
            );
        }
        FlaredbCommand::Restore { namespace, file } => {
            let data =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            flaredb::rest::open_backup(&data)
                .map_err(|e| Failure::Config(format!("{}: {e}", file.display())))?;
            let answer: serde_json::Value = api
                .post_bytes(&format!("/api/v1/namespaces/{namespace}/restore"), data)
                .await
                .map_err(runtime)?;
            output::print(
                format,
                &answer,
                &["namespace", "tables"],
                vec![vec![cell(&answer["namespace"]), cell(&answer["tables"])]],
            );
        }
    }
    Ok(())
}
