//! The values, statements, results and errors of flaredb's SQL engine, shared by the REST API
//! and the PostgreSQL wire protocol.

use serde::{Deserialize, Serialize};

/// A SQLite value. In JSON: `null`, a number, a string, or `{"blob": "<hex>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob { blob: HexBytes },
}

/// Bytes written as hex in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("hex blob has an odd length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map(HexBytes)
            .map_err(|_| serde::de::Error::custom("blob is not hex"))
    }
}

impl SqlValue {
    pub fn blob(bytes: Vec<u8>) -> Self {
        Self::Blob {
            blob: HexBytes(bytes),
        }
    }
}

/// The replicated form of a value. (The JSON form above is untagged, which postcard cannot
/// decode, so the Raft log uses this one.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum LogValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&SqlValue> for LogValue {
    fn from(v: &SqlValue) -> Self {
        match v {
            SqlValue::Null => Self::Null,
            SqlValue::Integer(i) => Self::Integer(*i),
            SqlValue::Real(f) => Self::Real(*f),
            SqlValue::Text(t) => Self::Text(t.clone()),
            SqlValue::Blob { blob } => Self::Blob(blob.0.clone()),
        }
    }
}

impl From<LogValue> for SqlValue {
    fn from(v: LogValue) -> Self {
        match v {
            LogValue::Null => Self::Null,
            LogValue::Integer(i) => Self::Integer(i),
            LogValue::Real(f) => Self::Real(f),
            LogValue::Text(t) => Self::Text(t),
            LogValue::Blob(b) => Self::blob(b),
        }
    }
}

/// One SQL statement with its `$1`… parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<SqlValue>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    pub fn with_params(sql: impl Into<String>, params: Vec<SqlValue>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }
}

/// A result column: its name and the type the table declared (SQLite's `decltype`), which
/// the wire protocol maps to a PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub decl_type: Option<String>,
}

/// What kind of statement ran (for PostgreSQL command tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Create,
    Drop,
    Alter,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    pub kind: StatementKind,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<SqlValue>>,
    pub rows_affected: u64,
}

/// An engine error with its PostgreSQL SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// PostgreSQL SQLSTATE, e.g. `42601` (syntax error), `23505` (unique violation).
    pub sqlstate: String,
    pub message: String,
    /// Index of the failing statement in the request, when one failed.
    pub statement: Option<usize>,
}

impl SqlError {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Self {
        Self {
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            statement: None,
        }
    }

    pub fn at(mut self, index: usize) -> Self {
        self.statement = Some(index);
        self
    }

    pub fn syntax(message: impl Into<String>) -> Self {
        Self::new(sqlstate::SYNTAX_ERROR, message)
    }

    /// The HTTP status this error maps to in the REST API.
    pub fn http_status(&self) -> u16 {
        match self.sqlstate.as_str() {
            sqlstate::UNDEFINED_NAMESPACE => 404,
            s if s.starts_with("23") => 409,
            sqlstate::PROGRAM_LIMIT_EXCEEDED => 413,
            sqlstate::CANNOT_CONNECT_NOW | sqlstate::CONNECTION_FAILURE => 503,
            sqlstate::INTERNAL_ERROR => 500,
            _ => 400,
        }
    }
}

/// The SQLSTATE codes flaredb reports (PostgreSQL's Appendix A).
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const INTEGRITY_CONSTRAINT_VIOLATION: &str = "23000";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const UNDEFINED_PARAMETER: &str = "42P02";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const UNDEFINED_NAMESPACE: &str = "3D000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const INTERNAL_ERROR: &str = "XX000";
}
