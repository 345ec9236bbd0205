//! `ultracloud iam …`: organizations, projects, principals, roles, bindings, credentials,
//! tokens and signing keys over iam's API.

use anyhow::anyhow;
use serde_json::{Value, json};
use uc_runtime::client::{ApiClient, ClientOptions};
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{IamArgs, IamCommand, KeyCommand, ObjectCommand, OutputFormat, TokenCommand};
use crate::output;

fn runtime(e: uc_runtime::client::ClientError) -> Failure {
    Failure::Runtime(anyhow!(e))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints one object or a page (`items`) with the given columns.
fn show(format: OutputFormat, value: &Value, columns: &[&str]) {
    let items: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let rows = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    output::print(format, value, columns, rows);
}

fn read_password(path: &std::path::Path) -> Result<String, Failure> {
    Ok(read_secret_file(path)
        .map_err(|e| Failure::Config(e.to_string()))?
        .expose()
        .trim_end_matches('\n')
        .to_owned())
}

pub async fn run(args: IamArgs, format: OutputFormat) -> Result<(), Failure> {
    let public = ApiClient::new(&args.endpoint, ClientOptions::default())
        .map_err(|e| Failure::Config(e.to_string()))?;
    let api = || -> Result<ApiClient, Failure> {
        let token = read_secret_file(&args.client.token_file)
            .map_err(|e| Failure::Config(e.to_string()))?;
        ApiClient::new(
            &args.endpoint,
            ClientOptions {
                token: Some(token),
                ca_file: args.client.ca_file.clone(),
                ..Default::default()
            },
        )
        .map_err(|e| Failure::Config(e.to_string()))
    };
    let org_path = |org: &Option<String>| -> Result<String, Failure> {
        org.as_deref()
            .map(|o| format!("/v1/orgs/{o}"))
            .ok_or_else(|| Failure::Config("--org is required".into()))
    };
    match &args.command {
        IamCommand::Org { command } => {
            let api = api()?;
            let v: Value = match command {
                ObjectCommand::Create { name, .. } => api
                    .post("/v1/orgs", &json!({"name": name}))
                    .await
                    .map_err(runtime)?,
                ObjectCommand::List => api.get("/v1/orgs").await.map_err(runtime)?,
                ObjectCommand::Delete { id } => {
                    api.delete_no_content(&format!("/v1/orgs/{id}"))
                        .await
                        .map_err(runtime)?;
                    json!({"deleted": id})
                }
            };
            show(format, &v, &["id", "name", "deleted"]);
        }
        IamCommand::Project { org, command }
        | IamCommand::User { org, command }
        | IamCommand::Sa { org, command }
        | IamCommand::Group { org, command } => {
            let api = api()?;
            let collection = match &args.command {
                IamCommand::Project { .. } => "projects",
                IamCommand::User { .. } => "users",
                IamCommand::Sa { .. } => "service-accounts",
                _ => "groups",
            };
            let base = format!("{}/{collection}", org_path(org)?);
            let v: Value = match command {
                ObjectCommand::Create {
                    name,
                    password_file,
                } => {
                    let mut body = json!({"name": name});
                    if let Some(path) = password_file {
                        body["password"] = json!(read_password(path)?);
                    }
                    api.post(&base, &body).await.map_err(runtime)?
                }
                ObjectCommand::List => api.get(&base).await.map_err(runtime)?,
                ObjectCommand::Delete { id } => {
                    api.delete_no_content(&format!("{base}/{id}"))
                        .await
                        .map_err(runtime)?;
                    json!({"deleted": id})
                }
            };
            show(format, &v, &["id", "name", "kind", "deleted"]);
        }
        IamCommand::Role {
            org,
            name,
            permissions,
        } => {
            let base = format!("{}/roles", org_path(org)?);
            let api = api()?;
            let v: Value = match name {
                Some(name) => api
                    .post(&base, &json!({"name": name, "permissions": permissions}))
                    .await
                    .map_err(runtime)?,
                None => api.get(&base).await.map_err(runtime)?,
            };
            show(format, &v, &["id", "name", "permissions"]);
        }
        IamCommand::Binding {
            org,
            principal,
            role,
            project,
        } => {
            let base = format!("{}/bindings", org_path(org)?);
            let api = api()?;
            let v: Value = match (principal, role) {
                (Some(principal), Some(role)) => api
                    .post(
                        &base,
                        &json!({"principal_id": principal, "role": role, "project": project}),
                    )
                    .await
                    .map_err(runtime)?,
                (None, None) => api.get(&base).await.map_err(runtime)?,
                _ => {
                    return Err(Failure::Config(
                        "give both --principal and --role to create a binding, or neither to list"
                            .into(),
                    ));
                }
            };
            show(format, &v, &["id", "principal_id", "role_id", "project_id"]);
        }
        IamCommand::Credential {
            org,
            principal,
            revoke,
        } => {
            let base = format!("{}/credentials", org_path(org)?);
            let api = api()?;
            let v: Value = match (principal, revoke) {
                (Some(principal), None) => api
                    .post(&base, &json!({"principal_id": principal}))
                    .await
                    .map_err(runtime)?,
                (None, Some(id)) => api
                    .post(&format!("{base}/{id}/revoke"), &json!({}))
                    .await
                    .map_err(runtime)?,
                (None, None) => api.get(&base).await.map_err(runtime)?,
                (Some(_), Some(_)) => {
                    return Err(Failure::Config(
                        "--principal (create) and --revoke are exclusive".into(),
                    ));
                }
            };
            show(
                format,
                &v,
                &["id", "principal_id", "api_key", "expires_at", "revoked_at"],
            );
        }
        IamCommand::Token { command } => {
            let body = match command {
                TokenCommand::Password {
                    org,
                    username,
                    password_file,
                    project,
                } => json!({
                    "grant_type": "password",
                    "org": org,
                    "username": username,
                    "password": read_password(password_file)?,
                    "project": project,
                }),
                TokenCommand::ApiKey {
                    api_key_file,
                    project,
                } => json!({
                    "grant_type": "api_key",
                    "api_key": read_password(api_key_file)?,
                    "project": project,
                }),
            };
            let v: Value = public.post("/v1/tokens", &body).await.map_err(runtime)?;
            show(format, &v, &["access_token", "expires_at"]);
        }
        IamCommand::Key { command } => {
            let api = api()?;
            let v: Value = match command {
                KeyCommand::List => {
                    json!({"items": api.get::<Value>("/v1/keys").await.map_err(runtime)?})
                }
                KeyCommand::Rotate => api
                    .post("/v1/keys/rotate", &json!({}))
                    .await
                    .map_err(runtime)?,
                KeyCommand::Retire { kid, force } => {
                    let path = format!("/v1/keys/{kid}/retire?force={force}");
                    api.post_no_content(&path).await.map_err(runtime)?;
                    json!({"kid": kid, "state": "retired"})
                }
            };
            show(format, &v, &["kid", "state", "created_at", "rotated_at"]);
        }
    }
    Ok(())
}
