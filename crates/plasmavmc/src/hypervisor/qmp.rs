//! A small async QMP client: greeting, `qmp_capabilities`, `execute` with ids, events.
//! One reader task owns the read half; commands wait for the reply carrying their id.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, broadcast, oneshot};

/// An asynchronous event QEMU sent (`SHUTDOWN`, `RESET`, `STOP`, `RESUME`, `MIGRATION`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QmpEvent {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU answered the command with an error object.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// The connection closed (QEMU exited) before the reply came.
    #[error("QMP connection closed")]
    Closed,
    /// QEMU did not answer in time (a wedged QEMU must not wedge the worker).
    #[error("QMP command {0} got no reply within {1:?}")]
    Timeout(String, std::time::Duration),
}

/// Every QMP command here answers in milliseconds (migration is polled, not awaited).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Pending = Arc<std::sync::Mutex<Option<HashMap<u64, oneshot::Sender<Value>>>>>;

/// A connected, capability-negotiated QMP session. Cheap to share behind an `Arc`.
pub struct QmpClient {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient").finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to QEMU's QMP unix socket, reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path) -> Result<Arc<Self>, QmpError> {
        let stream = UnixStream::connect(path).await?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // QEMU serves one QMP client at a time; a second one waits here for the greeting.
        let greeting = tokio::time::timeout(REPLY_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into(), REPLY_TIMEOUT))??
            .ok_or(QmpError::Closed)?;
        let greeting: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Protocol(format!("bad greeting: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        let (events, _) = broadcast::channel(256);
        let pending: Pending = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let client = Arc::new(Self {
            writer: Mutex::new(write),
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        });
        tokio::spawn(async move {
            loop {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    _ => break,
                };
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(line, "unparseable QMP message");
                    continue;
                };
                if msg.get("event").is_some() {
                    if let Ok(event) = serde_json::from_value::<QmpEvent>(msg) {
                        let _ = events.send(event);
                    }
                    continue;
                }
                let id = msg.get("id").and_then(Value::as_u64);
                let waiter = id.and_then(|id| {
                    pending
                        .lock()
                        .expect("qmp pending lock")
                        .as_mut()
                        .and_then(|p| p.remove(&id))
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(msg);
                }
            }
            // Dropping the senders wakes every waiter with `Closed`; later calls fail fast.
            pending.lock().expect("qmp pending lock").take();
        });
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("qmp pending lock");
            let Some(pending) = pending.as_mut() else {
                return Err(QmpError::Closed);
            };
            pending.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            msg["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&msg).expect("json");
        line.push(b'\n');
        {
            let mut writer = self.writer.lock().await;
            if let Err(e) = writer.write_all(&line).await {
                if let Some(p) = self.pending.lock().expect("qmp pending lock").as_mut() {
                    p.remove(&id);
                }
                return Err(e.into());
            }
        }
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(reply) => reply.map_err(|_| QmpError::Closed)?,
            Err(_) => {
                if let Some(p) = self.pending.lock().expect("qmp pending lock").as_mut() {
                    p.remove(&id);
                }
                return Err(QmpError::Timeout(command.to_string(), REPLY_TIMEOUT));
            }
        };
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: err["class"].as_str().unwrap_or("").to_string(),
                desc: err["desc"].as_str().unwrap_or("").to_string(),
            });
        }
        Err(QmpError::Protocol(format!(
            "reply without return or error: {reply}"
        )))
    }

    /// Events from now on (subscribe before triggering what you wait for).
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// True once QEMU closed the connection.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().expect("qmp pending lock").is_none()
    }
}
