//! The namespace catalog, kept in chainfire (SPEC: chainfire records which nodes serve which
//! namespace): one key per namespace holding its mode, members and credential secret.

use serde::{Deserialize, Serialize};
use tonic::Code;
use uc_runtime::Secret;

use crate::backend::ScramSecret;
use chainfire::client::Client;
use chainfire::etcdpb::etcdserverpb as pb;

pub const PREFIX: &str = "/ultracloud/flaredb/namespaces/";
/// Every flaredb node registers itself here at start, so an operator can add it to
/// namespaces by name.
pub const MEMBERS_PREFIX: &str = "/ultracloud/flaredb/members/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Writes and reads through Raft: reads are linearizable.
    Strong,
    /// Writes through Raft; reads served by the local replica (may lag, never go back).
    Eventual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRef {
    pub id: u64,
    pub name: String,
    /// The member's flaredb peer URL (the namespace's group lives under `/ns/<name>` on it).
    pub peer_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub mode: Mode,
    pub members: Vec<MemberRef>,
    /// The members that formed the group (the others joined later and must not initialize
    /// a group of their own).
    #[serde(default)]
    pub founders: Vec<u64>,
    pub secret: ScramSecret,
    pub created_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("namespace already exists")]
    Exists,
    #[error("the namespace record changed concurrently; retry")]
    Changed,
    #[error("chainfire: {0}")]
    Unavailable(String),
}

/// A connection to chainfire for the catalog.
#[derive(Clone)]
pub struct Catalog {
    endpoint: String,
    token: Secret<String>,
    ca_file: Option<std::path::PathBuf>,
}

fn key(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}").into_bytes()
}

fn prefix_end() -> Vec<u8> {
    let mut end = PREFIX.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

impl Catalog {
    pub fn new(
        endpoint: String,
        token: Secret<String>,
        ca_file: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            endpoint,
            token,
            ca_file,
        }
    }

    pub async fn client(&self) -> Result<Client, CatalogError> {
        Client::connect(&self.endpoint, &self.token, self.ca_file.as_deref())
            .await
            .map_err(CatalogError::Unavailable)
    }

    /// Creates a record unless one with that name exists (atomically, with a txn).
    pub async fn create(&self, record: &NamespaceRecord) -> Result<(), CatalogError> {
        let mut c = self.client().await?;
        let value =
            serde_json::to_vec(record).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: key(&record.name),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key(&record.name),
                    value,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let r =
            c.kv.txn(txn)
                .await
                .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
                .into_inner();
        if r.succeeded {
            Ok(())
        } else {
            Err(CatalogError::Exists)
        }
    }

    /// Replaces `old` by `new` if the stored record is still exactly `old`.
    pub async fn replace(
        &self,
        old: &NamespaceRecord,
        new: &NamespaceRecord,
    ) -> Result<(), CatalogError> {
        let encode = |r: &NamespaceRecord| {
            serde_json::to_vec(r).map_err(|e| CatalogError::Unavailable(e.to_string()))
        };
        let (old_value, new_value) = (encode(old)?, encode(new)?);
        let mut c = self.client().await?;
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Value as i32,
                key: key(&old.name),
                target_union: Some(pb::compare::TargetUnion::Value(old_value)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key(&new.name),
                    value: new_value,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let r =
            c.kv.txn(txn)
                .await
                .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
                .into_inner();
        if r.succeeded {
            Ok(())
        } else {
            Err(CatalogError::Changed)
        }
    }

    /// Records this node as a flaredb member (idempotent; done at every start).
    pub async fn register_member(&self, member: &MemberRef) -> Result<(), CatalogError> {
        let mut c = self.client().await?;
        let value =
            serde_json::to_vec(member).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        c.kv.put(pb::PutRequest {
            key: format!("{MEMBERS_PREFIX}{}", member.name).into_bytes(),
            value,
            ..Default::default()
        })
        .await
        .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?;
        Ok(())
    }

    /// A registered member by name.
    pub async fn member(&self, name: &str) -> Result<Option<MemberRef>, CatalogError> {
        let mut c = self.client().await?;
        let r =
            c.kv.range(pb::RangeRequest {
                key: format!("{MEMBERS_PREFIX}{name}").into_bytes(),
                ..Default::default()
            })
            .await
            .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
            .into_inner();
        Ok(r.kvs
            .first()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Deletes a record; whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, CatalogError> {
        let mut c = self.client().await?;
        let r =
            c.kv.delete_range(pb::DeleteRangeRequest {
                key: key(name),
                ..Default::default()
            })
            .await
            .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
            .into_inner();
        Ok(r.deleted > 0)
    }

    /// Every record, and the revision they were read at.
    pub async fn list(&self) -> Result<(Vec<NamespaceRecord>, i64), CatalogError> {
        let mut c = self.client().await?;
        let r =
            c.kv.range(pb::RangeRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: prefix_end(),
                ..Default::default()
            })
            .await
            .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
            .into_inner();
        let revision = r.header.map(|h| h.revision).unwrap_or(0);
        let records = r
            .kvs
            .into_iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        Ok((records, revision))
    }

    /// Watches the catalog from `start_revision`; yields (name, Some(record) | None=deleted).
    pub async fn watch(
        &self,
        start_revision: i64,
    ) -> Result<
        tokio::sync::mpsc::Receiver<Result<(String, Option<NamespaceRecord>), String>>,
        CatalogError,
    > {
        let mut c = self.client().await?;
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(1);
        req_tx
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: PREFIX.as_bytes().to_vec(),
                        range_end: prefix_end(),
                        start_revision,
                        ..Default::default()
                    },
                )),
            })
            .await
            .map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let mut stream = c
            .watch
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| CatalogError::Unavailable(s.message().to_owned()))?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // Keep the request side open for the life of the watch.
            let _keep = req_tx;
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled {
                            let _ = tx
                                .send(Err(format!(
                                    "watch cancelled (compact revision {})",
                                    resp.compact_revision
                                )))
                                .await;
                            return;
                        }
                        for ev in resp.events {
                            let Some(kv) = ev.kv else { continue };
                            let name =
                                String::from_utf8_lossy(&kv.key[PREFIX.len().min(kv.key.len())..])
                                    .into_owned();
                            let record = if ev.r#type
                                == chainfire::etcdpb::mvccpb::event::EventType::Delete as i32
                            {
                                None
                            } else {
                                serde_json::from_slice(&kv.value).ok()
                            };
                            if tx.send(Ok((name, record))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err("watch stream ended".into())).await;
                        return;
                    }
                    Err(s) if s.code() == Code::Cancelled => return,
                    Err(s) => {
                        let _ = tx.send(Err(s.message().to_owned())).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
