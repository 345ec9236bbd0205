//! The Rust client other components use to keep their metadata in a flaredb namespace: SQL with
//! typed rows, and a typed key-value API with compare-and-set.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flaredb::client::FlaredbError> {
//! use flaredb::client::{FlaredbClient, params};
//! use uc_runtime::Secret;
//! let db = FlaredbClient::for_namespace(
//!     "http://127.0.0.1:8082",
//!     "iam",
//!     Secret::new("namespace password".to_owned()),
//!     Default::default(),
//! )?;
//! db.execute("CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT)", vec![]).await?;
//! db.execute("INSERT INTO users VALUES ($1, $2)", params!["u1", "Ann"]).await?;
//! #[derive(serde::Deserialize)]
//! struct User { id: String, name: String }
//! let users: Vec<User> = db.query("SELECT id, name FROM users", vec![]).await?;
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use uc_runtime::Secret;
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::rest::{KvItem, KvPut, ScanPage, SqlRequest, SqlResponse, TableView};
use crate::sql::{SqlValue, Statement, StatementResult};

/// Builds a `Vec<SqlValue>` from Rust values: `params![1, "a", 2.5, None::<i64>]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::sql::SqlValue::from($value)),*]
    };
}
pub use params;

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}
impl From<i32> for SqlValue {
    fn from(v: i32) -> Self {
        Self::Integer(v.into())
    }
}
impl From<u32> for SqlValue {
    fn from(v: u32) -> Self {
        Self::Integer(v.into())
    }
}
impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        Self::Integer(v.into())
    }
}
impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}
impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}
impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        Self::blob(v)
    }
}
impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlaredbError {
    /// The statement failed in the engine (syntax, constraint, missing table, …).
    #[error("SQLSTATE {sqlstate}: {message}")]
    Sql {
        sqlstate: String,
        message: String,
        status: u16,
    },
    /// A compare-and-set found another version.
    #[error("version conflict: {0}")]
    VersionConflict(String),
    /// Rows did not decode into the requested type.
    #[error("cannot decode row: {0}")]
    Decode(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl FlaredbError {
    /// The SQLSTATE of an engine error (e.g. `23505` for a unique violation).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Sql { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        self.sqlstate() == Some(crate::sql::sqlstate::UNIQUE_VIOLATION)
    }
}

/// The server puts the SQLSTATE at the front of the message (see the REST error mapping).
fn classify(e: ClientError) -> FlaredbError {
    if let ClientError::Api(failure) = &e
        && let Some(rest) = failure.message.strip_prefix("SQLSTATE ")
        && let Some((code, message)) = rest.split_once(": ")
    {
        return FlaredbError::Sql {
            sqlstate: code.to_owned(),
            message: message.to_owned(),
            status: failure.status,
        };
    }
    e.into()
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection to one namespace through a flaredb member's REST API (any member: writes are
/// forwarded to the leader).
#[derive(Clone)]
pub struct FlaredbClient {
    api: ApiClient,
    /// Sent with every request when authenticated as the operator; a namespace credential
    /// implies its namespace.
    namespace: Option<String>,
}

impl FlaredbClient {
    /// Authenticates with a namespace credential (user = namespace).
    pub fn for_namespace(
        base_url: &str,
        namespace: &str,
        password: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, FlaredbError> {
        let api = ApiClient::new(
            base_url,
            ClientOptions {
                token: None,
                ..options
            },
        )?
        .with_basic_auth(namespace, password);
        Ok(Self {
            api,
            namespace: None,
        })
    }

    /// Authenticates as the operator (bearer token in `options`), working in `namespace`.
    pub fn as_operator(
        base_url: &str,
        namespace: &str,
        options: ClientOptions,
    ) -> Result<Self, FlaredbError> {
        Ok(Self {
            api: ApiClient::new(base_url, options)?,
            namespace: Some(namespace.to_owned()),
        })
    }

    fn query_suffix(&self, first: bool) -> String {
        match &self.namespace {
            Some(ns) => format!(
                "{}namespace={}",
                if first { '?' } else { '&' },
                encode(ns, false)
            ),
            None => String::new(),
        }
    }

    /// Runs statements as one atomic request.
    pub async fn batch(
        &self,
        statements: Vec<Statement>,
    ) -> Result<Vec<StatementResult>, FlaredbError> {
        let body = SqlRequest {
            namespace: self.namespace.clone(),
            statements,
        };
        let answer: SqlResponse = self
            .api
            .post("/api/v1/sql", &body)
            .await
            .map_err(classify)?;
        Ok(answer.results)
    }

    /// Runs one statement; the number of rows it changed.
    pub async fn execute(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, FlaredbError> {
        let mut results = self
            .batch(vec![Statement::with_params(sql, params)])
            .await?;
        Ok(results.pop().map_or(0, |r| r.rows_affected))
    }

    /// Runs a query and decodes each row into `T` by column name (as a JSON object, so
    /// `#[derive(Deserialize)]` structs work; blobs come as `{"blob": "<hex>"}`).
    pub async fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<T>, FlaredbError> {
        let mut results = self
            .batch(vec![Statement::with_params(sql, params)])
            .await?;
        let Some(result) = results.pop() else {
            return Ok(Vec::new());
        };
        result
            .rows
            .into_iter()
            .map(|row| {
                let object: serde_json::Map<String, serde_json::Value> = result
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| Ok((c.name.clone(), serde_json::to_value(v)?)))
                    .collect::<Result<_, serde_json::Error>>()
                    .map_err(|e| FlaredbError::Decode(e.to_string()))?;
                serde_json::from_value(serde_json::Value::Object(object))
                    .map_err(|e| FlaredbError::Decode(e.to_string()))
            })
            .collect()
    }

    /// The namespace's tables and their `CREATE` statements.
    pub async fn tables(&self) -> Result<Vec<TableView>, FlaredbError> {
        let path = format!("/api/v1/tables{}", self.query_suffix(true));
        self.api.get(&path).await.map_err(classify)
    }

    fn kv_path(&self, key: &str) -> String {
        format!(
            "/api/v1/kv/{}{}",
            encode(key, true),
            self.query_suffix(true)
        )
    }

    /// A key, or `None`.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvItem>, FlaredbError> {
        match self.api.get(&self.kv_path(key)).await {
            Ok(item) => Ok(Some(item)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    /// Writes a key. With `expected_version` it is a compare-and-set (`Some(0)`: create only);
    /// a mismatch is [`FlaredbError::VersionConflict`]. Returns the new version.
    pub async fn kv_put(
        &self,
        key: &str,
        value: &str,
        expected_version: Option<i64>,
    ) -> Result<KvItem, FlaredbError> {
        let body = KvPut {
            value: value.to_owned(),
            expected_version,
            namespace: self.namespace.clone(),
        };
        let path = format!("/api/v1/kv/{}", encode(key, true));
        match self.api.put(&path, &body).await {
            Ok(item) => Ok(item),
            Err(ClientError::Api(f)) if f.status == 409 => {
                Err(FlaredbError::VersionConflict(f.message))
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Deletes a key; whether it existed.
    pub async fn kv_delete(&self, key: &str) -> Result<bool, FlaredbError> {
        match self.api.delete_no_content(&self.kv_path(key)).await {
            Ok(()) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    /// One page of keys with `prefix`, in key order; pass the page's `next_page_token` back
    /// for the next one.
    pub async fn kv_scan(
        &self,
        prefix: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> Result<ScanPage, FlaredbError> {
        let mut path = format!(
            "/api/v1/kv?prefix={}&limit={limit}{}",
            encode(prefix, false),
            self.query_suffix(false)
        );
        if let Some(token) = page_token {
            path.push_str(&format!("&page_token={}", encode(token, false)));
        }
        self.api.get(&path).await.map_err(classify)
    }

    /// Every key with `prefix` (follows the pages).
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvItem>, FlaredbError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.kv_scan(prefix, 1000, token.as_deref()).await?;
            items.extend(page.items);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(items),
            }
        }
    }

    /// A JSON-encoded value, decoded.
    pub async fn kv_get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, FlaredbError> {
        match self.kv_get(key).await? {
            Some(item) => Ok(Some((
                serde_json::from_str(&item.value)
                    .map_err(|e| FlaredbError::Decode(format!("{key}: {e}")))?,
                item.version,
            ))),
            None => Ok(None),
        }
    }

    /// Stores a value as JSON (compare-and-set like [`Self::kv_put`]); the new version.
    pub async fn kv_put_json<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        expected_version: Option<i64>,
    ) -> Result<i64, FlaredbError> {
        let text = serde_json::to_string(value).map_err(|e| FlaredbError::Decode(e.to_string()))?;
        Ok(self.kv_put(key, &text, expected_version).await?.version)
    }
}
