//! One connection's SQL session: simple and extended query handling, explicit transaction
//! blocks, and the session commands and probes answered without the engine.
//!
//! flaredb applies each request atomically, so an explicit transaction block is buffered:
//! its writes are validated and queued (answered with a provisional command tag reporting 0
//! rows) and sent as one request at `COMMIT`; reads inside the block run right away against
//! committed state and do not see the block's own queued writes.
//!
//! pgwire's traits are declared with `#[async_trait]`; the impls here spell out what that
//! macro generates (boxed `Send` futures), so this crate needs no macro dependency.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::sink::{Sink, SinkExt};
use futures_util::stream;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response,
    send_ready_for_query,
};
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ErrorHandler, METADATA_APPLICATION_NAME, METADATA_USER,
    PgWireConnectionState, Type,
};
use pgwire::error::{
    ErrorInfo, PgWireError, PgWireResult, SEVERITY_ERROR, SEVERITY_FATAL, SEVERITY_WARNING,
};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::{EmptyQueryResponse, NoticeResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;

use super::sqltext::{self, ColumnLookup, Command, Probe, ProbeKind};
use super::values::{self, ColType};
use crate::backend::{ScramSecret, SqlBackend};
use crate::sql::{
    SqlError, SqlValue, Statement, StatementKind, StatementResult, determinism, sqlstate,
};

/// What `#[async_trait]` methods return.
type PgFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The server version reported to clients (`server_version`, `SHOW`, `version()`).
pub(super) const SERVER_VERSION: &str = "15.0 (flaredb)";
const SERVER_VERSION_NUM: &str = "150000";

const IN_FAILED_TRANSACTION: &str = "25P02";
const ACTIVE_TRANSACTION: &str = "25001";
const NO_ACTIVE_TRANSACTION: &str = "25P01";
const UNDEFINED_OBJECT: &str = "42704";

/// An error to report: the engine's error and an optional detail line.
#[derive(Debug)]
enum Failure {
    Sql {
        error: SqlError,
        detail: Option<String>,
    },
    /// The connection itself failed; nothing more can be sent.
    Wire(PgWireError),
}

impl From<SqlError> for Failure {
    fn from(error: SqlError) -> Self {
        Failure::Sql {
            error,
            detail: None,
        }
    }
}

impl From<PgWireError> for Failure {
    fn from(e: PgWireError) -> Self {
        Failure::Wire(e)
    }
}

fn error_info(error: SqlError, detail: Option<String>) -> ErrorInfo {
    let mut info = ErrorInfo::new(SEVERITY_ERROR.to_owned(), error.sqlstate, error.message);
    info.detail = detail;
    info
}

fn user_error(error: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error, None)))
}

fn failure_to_pgwire(f: Failure) -> PgWireError {
    match f {
        Failure::Sql { error, detail } => {
            PgWireError::UserError(Box::new(error_info(error, detail)))
        }
        Failure::Wire(e) => e,
    }
}

fn aborted() -> SqlError {
    SqlError::new(
        IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn namespace<C: ClientInfo + ?Sized>(client: &C) -> String {
    client
        .metadata()
        .get(METADATA_USER)
        .cloned()
        .unwrap_or_default()
}

fn format_at(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => codes
            .get(i)
            .map_or(FieldFormat::Text, |c| FieldFormat::from(*c)),
    }
}

/// A statement prepared by Parse.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    /// The SQL sent to the engine (parameter casts removed).
    sql: String,
    command: Command,
    /// Inferred parameter types, one per parameter the SQL uses.
    param_types: Vec<Type>,
    /// Result columns; `None` when the statement could not be described yet (it uses a table
    /// an earlier statement of the open transaction block creates).
    columns: Option<Vec<ColType>>,
}

/// What a statement answered.
enum Reply {
    Rows {
        cols: Vec<ColType>,
        rows: Vec<Vec<SqlValue>>,
        /// Command tag without the row count (`SELECT`, `INSERT 0`, …).
        tag: String,
    },
    Done(Tag),
}

fn done_tag(sql: &str, kind: StatementKind, rows: u64) -> Tag {
    let rows = rows as usize;
    match kind {
        StatementKind::Insert => Tag::new("INSERT").with_oid(0).with_rows(rows),
        StatementKind::Update => Tag::new("UPDATE").with_rows(rows),
        StatementKind::Delete => Tag::new("DELETE").with_rows(rows),
        _ => Tag::new(&sqltext::command_word(sql)),
    }
}

/// The tag of a write queued in a transaction block (its row count is not known yet).
fn provisional_tag(sql: &str) -> Tag {
    let word = sqltext::command_word(sql);
    match word.as_str() {
        "INSERT" | "REPLACE" => Tag::new("INSERT").with_oid(0).with_rows(0),
        "UPDATE" | "DELETE" => Tag::new(&word).with_rows(0),
        _ => Tag::new(&word),
    }
}

/// Turns an engine result into a reply. `described`: the columns Describe reported (extended
/// protocol), which the rows must then match.
fn reply_for(
    sql: &str,
    r: StatementResult,
    described: Option<&[ColType]>,
) -> Result<Reply, SqlError> {
    if r.columns.is_empty() {
        return Ok(Reply::Done(done_tag(sql, r.kind, r.rows_affected)));
    }
    let cols = match described {
        Some(d) if d.len() == r.columns.len() => d.to_vec(),
        Some(_) => {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "cached plan must not change result type",
            ));
        }
        None => values::column_types_from_rows(&r.columns, &r.rows),
    };
    let tag = match r.kind {
        StatementKind::Insert => "INSERT 0",
        StatementKind::Update => "UPDATE",
        StatementKind::Delete => "DELETE",
        _ => "SELECT",
    };
    Ok(Reply::Rows {
        cols,
        rows: r.rows,
        tag: tag.to_owned(),
    })
}

fn query_response(
    cols: &[ColType],
    rows: Vec<Vec<SqlValue>>,
    tag: &str,
    format: impl Fn(usize) -> FieldFormat,
) -> Result<QueryResponse, SqlError> {
    let schema = Arc::new(values::field_infos(cols, format));
    let rows = values::encode_rows(&schema, rows)?;
    let mut response = QueryResponse::new(schema, stream::iter(rows.into_iter().map(Ok)));
    response.set_command_tag(tag);
    Ok(response)
}

async fn send_failure<C>(
    client: &mut C,
    error: SqlError,
    detail: Option<String>,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client
        .feed(PgWireBackendMessage::ErrorResponse(
            error_info(error, detail).into(),
        ))
        .await?;
    Ok(())
}

async fn send_warning<C>(client: &mut C, code: &str, message: &str) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let info = ErrorInfo::new(
        SEVERITY_WARNING.to_owned(),
        code.to_owned(),
        message.to_owned(),
    );
    client
        .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
            info,
        )))
        .await?;
    Ok(())
}

/// Server settings answered by `SHOW` and `current_setting()`.
fn setting<C: ClientInfo + ?Sized>(name: &str, client: &C) -> Option<String> {
    let ns = namespace(client);
    Some(match name {
        "server_version" => SERVER_VERSION.into(),
        "server_version_num" => SERVER_VERSION_NUM.into(),
        "transaction_isolation" | "default_transaction_isolation" => "serializable".into(),
        "transaction_read_only"
        | "default_transaction_read_only"
        | "is_superuser"
        | "in_hot_standby" => "off".into(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "standard_conforming_strings" | "integer_datetimes" => "on".into(),
        "datestyle" => "ISO, MDY".into(),
        "timezone" | "log_timezone" => "UTC".into(),
        "intervalstyle" => "postgres".into(),
        "search_path" => "public".into(),
        "max_identifier_length" => "63".into(),
        "extra_float_digits" => "1".into(),
        "lc_collate" | "lc_ctype" | "lc_messages" | "lc_monetary" | "lc_numeric" | "lc_time" => {
            "C".into()
        }
        "application_name" => client
            .metadata()
            .get(METADATA_APPLICATION_NAME)
            .cloned()
            .unwrap_or_default(),
        "session_authorization" => ns,
        _ => return None,
    })
}

const SHOW_ALL: [&str; 19] = [
    "application_name",
    "client_encoding",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "in_hot_standby",
    "integer_datetimes",
    "intervalstyle",
    "is_superuser",
    "max_identifier_length",
    "search_path",
    "server_encoding",
    "server_version",
    "server_version_num",
    "session_authorization",
    "standard_conforming_strings",
    "timezone",
    "transaction_isolation",
];

fn unknown_setting(name: &str) -> SqlError {
    SqlError::new(
        UNDEFINED_OBJECT,
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

fn show_columns(name: &str) -> Result<Vec<ColType>, SqlError> {
    let text = |n: &str| ColType {
        name: n.to_owned(),
        ty: Type::TEXT,
    };
    if name == "all" {
        Ok(vec![text("name"), text("setting"), text("description")])
    } else if SHOW_ALL.contains(&name)
        || name.starts_with("lc_")
        || name == "log_timezone"
        || name == "transaction_read_only"
    {
        Ok(vec![text(name)])
    } else {
        Err(unknown_setting(name))
    }
}

fn show<C: ClientInfo + ?Sized>(name: &str, client: &C) -> Result<Reply, SqlError> {
    let cols = show_columns(name)?;
    let rows = if name == "all" {
        SHOW_ALL
            .iter()
            .map(|n| {
                vec![
                    SqlValue::Text((*n).to_owned()),
                    SqlValue::Text(setting(n, client).unwrap_or_default()),
                    SqlValue::Text(String::new()),
                ]
            })
            .collect()
    } else {
        vec![vec![SqlValue::Text(
            setting(name, client).ok_or_else(|| unknown_setting(name))?,
        )]]
    };
    Ok(Reply::Rows {
        cols,
        rows,
        tag: "SHOW".into(),
    })
}

fn probe_columns(probes: &[Probe]) -> Vec<ColType> {
    probes
        .iter()
        .map(|p| ColType {
            name: p.column.clone(),
            ty: if p.kind == ProbeKind::BackendPid {
                Type::INT4
            } else {
                Type::TEXT
            },
        })
        .collect()
}

fn probe<C: ClientInfo + ?Sized>(probes: &[Probe], client: &C) -> Result<Reply, SqlError> {
    let ns = namespace(client);
    let row = probes
        .iter()
        .map(|p| {
            Ok(match &p.kind {
                ProbeKind::Version => SqlValue::Text(format!(
                    "PostgreSQL {SERVER_VERSION}, SQLite {} dialect, flaredb {}",
                    rusqlite::version(),
                    env!("CARGO_PKG_VERSION")
                )),
                ProbeKind::CurrentDatabase | ProbeKind::CurrentUser => SqlValue::Text(ns.clone()),
                ProbeKind::CurrentSchema => SqlValue::Text("public".into()),
                ProbeKind::BackendPid => SqlValue::Integer(client.pid_and_secret_key().0.into()),
                ProbeKind::Setting(name) => {
                    SqlValue::Text(setting(name, client).ok_or_else(|| unknown_setting(name))?)
                }
            })
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    Ok(Reply::Rows {
        cols: probe_columns(probes),
        rows: vec![row],
        tag: "SELECT".into(),
    })
}

#[derive(Default)]
struct Block {
    /// The writes of the open transaction block, sent as one request at COMMIT.
    pending: Vec<Statement>,
    /// Whether a queued write changes the schema (later statements may then name tables
    /// that do not exist yet).
    has_ddl: bool,
}

/// One connection's SQL session.
pub(super) struct Session {
    backend: Arc<dyn SqlBackend>,
    block: Mutex<Block>,
}

impl Session {
    pub fn new(backend: Arc<dyn SqlBackend>) -> Self {
        Self {
            backend,
            block: Mutex::new(Block::default()),
        }
    }

    fn block(&self) -> MutexGuard<'_, Block> {
        self.block.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset_block(&self) {
        *self.block() = Block::default();
    }

    /// Whether a validation error may be a table/column a queued DDL statement creates.
    fn lenient(&self, e: &SqlError) -> bool {
        self.block().has_ddl
            && matches!(
                e.sqlstate.as_str(),
                sqlstate::UNDEFINED_TABLE
                    | sqlstate::UNDEFINED_COLUMN
                    | sqlstate::DUPLICATE_TABLE
                    | "42000"
            )
    }

    /// A statement inside an open transaction block: a read runs now (`Some`), a write is
    /// validated and queued (`None`). `validate`: check it against the schema (the extended
    /// protocol already did at Parse).
    async fn in_block(
        &self,
        ns: &str,
        stmt: Statement,
        validate: bool,
    ) -> Result<Option<StatementResult>, SqlError> {
        if sqltext::is_read(&stmt.sql) {
            let mut results = self.backend.execute(ns, vec![stmt]).await?;
            return Ok(results.pop());
        }
        if sqltext::has_returning(&stmt.sql) {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "RETURNING is not supported inside a transaction block: flaredb applies the block's writes atomically at COMMIT",
            ));
        }
        determinism::check_writable(&stmt.sql)?;
        determinism::rewrite(&stmt.sql)?;
        if validate
            && let Err(e) = self.backend.describe(ns, &stmt.sql)
            && !self.lenient(&e)
        {
            return Err(e);
        }
        let ddl = sqltext::is_ddl(&stmt.sql);
        let mut block = self.block();
        block.has_ddl |= ddl;
        block.pending.push(stmt);
        Ok(None)
    }

    /// Sends the block's queued writes as one request.
    async fn commit(&self, ns: &str) -> Result<(), Failure> {
        let pending = std::mem::take(&mut *self.block()).pending;
        if pending.is_empty() {
            return Ok(());
        }
        let sqls: Vec<String> = pending.iter().map(|s| s.sql.clone()).collect();
        match self.backend.execute(ns, pending).await {
            Ok(_) => Ok(()),
            Err(error) => {
                let detail = Some(match error.statement.and_then(|i| sqls.get(i).map(|s| (i, s))) {
                    Some((i, sql)) => format!(
                        "COMMIT applies the transaction's {} writes as one request; write {} failed: {sql}. Nothing was written.",
                        sqls.len(),
                        i + 1
                    ),
                    None => "COMMIT applies the transaction's writes as one request. Nothing was written.".to_owned(),
                });
                Err(Failure::Sql { error, detail })
            }
        }
    }

    // ---- simple query protocol ----

    async fn simple_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let statements = sqltext::split(query);
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        } else {
            self.run_simple(client, &statements).await?;
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        let status = client.transaction_status();
        send_ready_for_query(client, status).await
    }

    /// Runs a query string's statements in order, stopping at the first error. Outside a
    /// transaction block consecutive SQL statements go to the engine as one request, so the
    /// string is one implicit transaction like in PostgreSQL.
    async fn run_simple<C>(&self, client: &mut C, statements: &[&str]) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let ns = namespace(client);
        let commands: Vec<Command> = statements.iter().map(|s| sqltext::classify(s)).collect();
        let mut i = 0;
        while i < statements.len() {
            let outcome = match self
                .simple_step(client, &ns, statements, &commands, i)
                .await
            {
                Ok(next) => {
                    i = next;
                    continue;
                }
                Err(f) => f,
            };
            match outcome {
                Failure::Wire(e) => return Err(e),
                Failure::Sql { error, detail } => {
                    send_failure(client, error, detail).await?;
                    let status = client.transaction_status();
                    client.set_transaction_status(status.to_error_state());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Runs statement `i` (and, for a batch, the ones after it); the index to continue at.
    async fn simple_step<C>(
        &self,
        client: &mut C,
        ns: &str,
        statements: &[&str],
        commands: &[Command],
        i: usize,
    ) -> Result<usize, Failure>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let status = client.transaction_status();
        let sql = statements[i];
        if status == TransactionStatus::Error
            && !matches!(commands[i], Command::Commit | Command::Rollback)
        {
            return Err(aborted().into());
        }
        match &commands[i] {
            Command::Sql if status == TransactionStatus::Idle => {
                let end = (i..statements.len())
                    .find(|&j| commands[j] != Command::Sql)
                    .unwrap_or(statements.len());
                let batch: Vec<Statement> = statements[i..end]
                    .iter()
                    .map(|s| Statement::new(*s))
                    .collect();
                let results = self.backend.execute(ns, batch).await.map_err(|error| {
                    let detail = (end - i > 1).then(|| {
                        format!(
                            "statement {} of the {} in this query string failed; they run as one transaction, so none took effect",
                            error.statement.map_or(1, |k| k + 1),
                            end - i
                        )
                    });
                    Failure::Sql { error, detail }
                })?;
                for (sql, r) in statements[i..end].iter().zip(results) {
                    self.send_simple_reply(client, reply_for(sql, r, None)?)
                        .await?;
                }
                return Ok(end);
            }
            Command::Sql => match self.in_block(ns, Statement::new(sql), true).await? {
                Some(r) => {
                    self.send_simple_reply(client, reply_for(sql, r, None)?)
                        .await?
                }
                None => send_execution_response(client, provisional_tag(sql)).await?,
            },
            Command::Begin
                if status == TransactionStatus::Idle
                    && let Some(commit) = (i + 1..statements.len())
                        .find(|&j| commands[j] != Command::Sql)
                        .filter(|&j| commands[j] == Command::Commit) =>
            {
                // A whole `BEGIN; …; COMMIT` in one query string is one request, so the
                // statements report their real row counts instead of provisional ones.
                send_execution_response(client, Tag::new("BEGIN")).await?;
                client.set_transaction_status(TransactionStatus::Transaction);
                let batch: Vec<Statement> = statements[i + 1..commit]
                    .iter()
                    .map(|s| Statement::new(*s))
                    .collect();
                let results = self.backend.execute(ns, batch).await.map_err(|error| {
                    let detail = Some(format!(
                        "statement {} of the transaction block failed; the block is applied as one request, so none of it took effect",
                        error.statement.map_or(1, |k| k + 1)
                    ));
                    Failure::Sql { error, detail }
                })?;
                for (sql, r) in statements[i + 1..commit].iter().zip(results) {
                    self.send_simple_reply(client, reply_for(sql, r, None)?)
                        .await?;
                }
                client.set_transaction_status(TransactionStatus::Idle);
                send_execution_response(client, Tag::new("COMMIT")).await?;
                return Ok(commit + 1);
            }
            Command::Begin => {
                if status == TransactionStatus::Idle {
                    self.reset_block();
                    client.set_transaction_status(TransactionStatus::Transaction);
                } else {
                    send_warning(
                        client,
                        ACTIVE_TRANSACTION,
                        "there is already a transaction in progress",
                    )
                    .await?;
                }
                send_execution_response(client, Tag::new("BEGIN")).await?;
            }
            Command::Commit => match status {
                TransactionStatus::Idle => {
                    send_warning(
                        client,
                        NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    )
                    .await?;
                    send_execution_response(client, Tag::new("COMMIT")).await?;
                }
                TransactionStatus::Error => {
                    self.reset_block();
                    client.set_transaction_status(TransactionStatus::Idle);
                    send_execution_response(client, Tag::new("ROLLBACK")).await?;
                }
                TransactionStatus::Transaction => {
                    let committed = self.commit(ns).await;
                    client.set_transaction_status(TransactionStatus::Idle);
                    committed?;
                    send_execution_response(client, Tag::new("COMMIT")).await?;
                }
            },
            Command::Rollback => {
                if status == TransactionStatus::Idle {
                    send_warning(
                        client,
                        NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    )
                    .await?;
                }
                self.reset_block();
                client.set_transaction_status(TransactionStatus::Idle);
                send_execution_response(client, Tag::new("ROLLBACK")).await?;
            }
            Command::Ignored(tag) => send_execution_response(client, Tag::new(tag)).await?,
            Command::Show(name) => {
                let reply = show(name, &*client)?;
                self.send_simple_reply(client, reply).await?;
            }
            Command::Probe(probes) => {
                let reply = probe(probes, &*client)?;
                self.send_simple_reply(client, reply).await?;
            }
            Command::Unsupported(message) => {
                return Err(SqlError::new(sqlstate::FEATURE_NOT_SUPPORTED, message.clone()).into());
            }
        }
        Ok(i + 1)
    }

    async fn send_simple_reply<C>(&self, client: &mut C, reply: Reply) -> Result<(), Failure>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match reply {
            Reply::Rows { cols, rows, tag } => {
                let response = query_response(&cols, rows, &tag, |_| FieldFormat::Text)?;
                send_query_response(client, response, true).await?;
            }
            Reply::Done(tag) => send_execution_response(client, tag).await?,
        }
        Ok(())
    }

    // ---- extended query protocol ----

    /// Parse: one statement, described now (parameter and result types).
    fn parse<C>(
        &self,
        client: &C,
        sql: &str,
        client_types: &[Option<Type>],
    ) -> Result<Option<Prepared>, SqlError>
    where
        C: ClientInfo + ?Sized,
    {
        let statements = sqltext::split(sql);
        let text = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(SqlError::syntax(
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
        };
        let command = sqltext::classify(text);
        let status = client.transaction_status();
        if status == TransactionStatus::Error
            && !matches!(command, Command::Commit | Command::Rollback)
        {
            return Err(aborted());
        }
        let ns = namespace(client);
        let plain = |command: Command, columns: Vec<ColType>| Prepared {
            sql: text.to_owned(),
            command,
            param_types: Vec::new(),
            columns: Some(columns),
        };
        Ok(Some(match command {
            Command::Sql => {
                self.prepare_sql(&ns, text, status != TransactionStatus::Idle, client_types)?
            }
            Command::Show(name) => {
                let cols = show_columns(&name)?;
                plain(Command::Show(name), cols)
            }
            Command::Probe(probes) => {
                let cols = probe_columns(&probes);
                plain(Command::Probe(probes), cols)
            }
            Command::Unsupported(message) => {
                return Err(SqlError::new(sqlstate::FEATURE_NOT_SUPPORTED, message));
            }
            other => plain(other, Vec::new()),
        }))
    }

    fn prepare_sql(
        &self,
        ns: &str,
        text: &str,
        in_block: bool,
        client_types: &[Option<Type>],
    ) -> Result<Prepared, SqlError> {
        let (sql, hints) = sqltext::strip_param_casts(text);
        let (described_count, columns) = match self.backend.describe(ns, &sql) {
            Ok((n, cols)) => (n, Some(cols)),
            Err(e) if in_block && self.lenient(&e) => (0, None),
            Err(e) => return Err(e),
        };
        let count = sqltext::param_count(&sql).max(described_count);
        let fetch = |table: &str| self.backend.table_columns(ns, table);
        let mut lookup = ColumnLookup::new(&fetch);
        let inferred = sqltext::infer_param_types(&sql, count, &mut lookup);
        let param_types: Vec<Type> = (0..count)
            .map(|i| {
                client_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .or_else(|| {
                        hints
                            .iter()
                            .find(|(n, _)| *n == i + 1)
                            .map(|(_, t)| t.clone())
                    })
                    .or_else(|| inferred[i].clone())
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let columns = columns.map(|cols| {
            let guesses = if cols.iter().any(|c| c.decl_type.is_none()) {
                sqltext::select_item_types(&sql, &mut lookup, &param_types)
                    .filter(|g| g.len() == cols.len())
            } else {
                None
            };
            cols.iter()
                .enumerate()
                .map(|(i, c)| ColType {
                    name: c.name.clone(),
                    ty: c
                        .decl_type
                        .as_deref()
                        .and_then(values::pg_type_for_decl)
                        .or_else(|| guesses.as_ref().and_then(|g| g[i].clone()))
                        .unwrap_or(Type::TEXT),
                })
                .collect()
        });
        Ok(Prepared {
            sql,
            command: Command::Sql,
            param_types,
            columns,
        })
    }

    /// Decodes a portal's parameters with the client's types, else the inferred ones.
    fn bind_params(portal: &Portal<Prepared>) -> Result<Vec<SqlValue>, SqlError> {
        let prepared = &portal.statement.statement;
        let client_types = &portal.statement.parameter_types;
        let expected = prepared.param_types.len().max(client_types.len());
        if portal.parameters.len() != expected {
            return Err(SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {} parameters, but prepared statement \"{}\" requires {expected}",
                    portal.parameters.len(),
                    portal.statement.id
                ),
            ));
        }
        let mut params = portal
            .parameters
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let ty = client_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .or_else(|| prepared.param_types.get(i).cloned())
                    .unwrap_or(Type::TEXT);
                let binary = format_at(&portal.parameter_format, i) == FieldFormat::Binary;
                values::decode_param(raw.as_deref(), &ty, binary)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Parameters the client declared but the SQL does not use.
        params.truncate(prepared.param_types.len());
        Ok(params)
    }

    async fn execute_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let status = client.transaction_status();
        if status == TransactionStatus::Error
            && !matches!(prepared.command, Command::Commit | Command::Rollback)
        {
            return Err(user_error(aborted()));
        }
        let ns = namespace(client);
        let rows = |reply: Reply| -> PgWireResult<Response> {
            Ok(match reply {
                Reply::Rows { cols, rows, tag } => Response::Query(
                    query_response(&cols, rows, &tag, |i| {
                        format_at(&portal.result_column_format, i)
                    })
                    .map_err(user_error)?,
                ),
                Reply::Done(tag) => Response::Execution(tag),
            })
        };
        match &prepared.command {
            Command::Begin => {
                if status == TransactionStatus::Idle {
                    self.reset_block();
                } else {
                    send_warning(
                        client,
                        ACTIVE_TRANSACTION,
                        "there is already a transaction in progress",
                    )
                    .await?;
                }
                Ok(Response::TransactionStart(Tag::new("BEGIN")))
            }
            Command::Commit => match status {
                TransactionStatus::Idle => {
                    send_warning(
                        client,
                        NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    )
                    .await?;
                    Ok(Response::TransactionEnd(Tag::new("COMMIT")))
                }
                TransactionStatus::Error => {
                    self.reset_block();
                    Ok(Response::TransactionEnd(Tag::new("ROLLBACK")))
                }
                TransactionStatus::Transaction => match self.commit(&ns).await {
                    Ok(()) => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
                    Err(f) => {
                        // The block is over either way: the error leaves the session idle.
                        client.set_transaction_status(TransactionStatus::Idle);
                        Err(failure_to_pgwire(f))
                    }
                },
            },
            Command::Rollback => {
                if status == TransactionStatus::Idle {
                    send_warning(
                        client,
                        NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    )
                    .await?;
                }
                self.reset_block();
                Ok(Response::TransactionEnd(Tag::new("ROLLBACK")))
            }
            Command::Ignored(tag) => Ok(Response::Execution(Tag::new(tag))),
            Command::Show(name) => rows(show(name, &*client).map_err(user_error)?),
            Command::Probe(probes) => rows(probe(probes, &*client).map_err(user_error)?),
            Command::Unsupported(message) => Err(user_error(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                message.clone(),
            ))),
            Command::Sql => {
                let params = Self::bind_params(portal).map_err(user_error)?;
                let stmt = Statement::with_params(prepared.sql.clone(), params);
                let result = if status == TransactionStatus::Idle {
                    let mut results = self
                        .backend
                        .execute(&ns, vec![stmt])
                        .await
                        .map_err(user_error)?;
                    results.pop()
                } else {
                    match self.in_block(&ns, stmt, false).await.map_err(user_error)? {
                        Some(r) => Some(r),
                        None => return Ok(Response::Execution(provisional_tag(&prepared.sql))),
                    }
                };
                let result = result.ok_or_else(|| {
                    user_error(SqlError::new(sqlstate::INTERNAL_ERROR, "no result"))
                })?;
                rows(
                    reply_for(&prepared.sql, result, prepared.columns.as_deref())
                        .map_err(user_error)?,
                )
            }
        }
    }
}

impl QueryParser for Session {
    type Statement = Prepared;

    fn parse_sql<'life0, 'life1, 'life2, 'life3, 'async_trait, C>(
        &'life0 self,
        client: &'life1 C,
        sql: &'life2 str,
        types: &'life3 [Option<Type>],
    ) -> PgFuture<'async_trait, PgWireResult<Option<Prepared>>>
    where
        C: 'async_trait + ClientInfo + Unpin + Send + Sync,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        let result = self.parse(client, sql, types).map_err(user_error);
        Box::pin(async move { result })
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let cols = stmt.columns.as_deref().unwrap_or_default();
        Ok(values::field_infos(cols, |i| {
            column_format.map_or(FieldFormat::Text, |f| format_at(f, i))
        }))
    }
}

/// The query handlers of one connection.
pub(super) struct Handler {
    session: Arc<Session>,
}

impl Handler {
    pub fn new(backend: Arc<dyn SqlBackend>) -> Self {
        Self {
            session: Arc::new(Session::new(backend)),
        }
    }
}

impl SimpleQueryHandler for Handler {
    fn on_query<'life0, 'life1, 'async_trait, C>(
        &'life0 self,
        client: &'life1 mut C,
        query: Query,
    ) -> PgFuture<'async_trait, PgWireResult<()>>
    where
        C: 'async_trait
            + ClientInfo
            + ClientPortalStore
            + Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.session.simple_query(client, &query.query).await })
    }

    fn do_query<'life0, 'life1, 'life2, 'async_trait, C>(
        &'life0 self,
        _client: &'life1 mut C,
        _query: &'life2 str,
    ) -> PgFuture<'async_trait, PgWireResult<Vec<Response>>>
    where
        C: 'async_trait
            + ClientInfo
            + ClientPortalStore
            + Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        // `on_query` is overridden and never calls this.
        Box::pin(async {
            Err(user_error(SqlError::new(
                sqlstate::INTERNAL_ERROR,
                "simple query path not in use",
            )))
        })
    }
}

impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = Session;

    fn query_parser(&self) -> Arc<Session> {
        self.session.clone()
    }

    fn do_query<'life0, 'life1, 'life2, 'async_trait, C>(
        &'life0 self,
        client: &'life1 mut C,
        portal: &'life2 Portal<Prepared>,
        _max_rows: usize,
    ) -> PgFuture<'async_trait, PgWireResult<Response>>
    where
        C: 'async_trait
            + ClientInfo
            + ClientPortalStore
            + Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.session.execute_portal(client, portal).await })
    }
}

impl ErrorHandler for Handler {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        if let PgWireError::InvalidPassword(_) = error {
            // PostgreSQL's wording, naming the startup user (SCRAM clients send no user name).
            let user = namespace(client);
            *error = PgWireError::UserError(Box::new(ErrorInfo::new(
                SEVERITY_FATAL.to_owned(),
                sqlstate::INVALID_PASSWORD.to_owned(),
                format!("password authentication failed for user \"{user}\""),
            )));
        }
        tracing::debug!(peer = %client.socket_addr(), error = %error, "pgwire error");
    }
}

/// SCRAM credentials from the namespace registry. The user names the namespace, and the
/// database must be the same namespace (or omitted). Anything else gets a mock credential
/// that no password matches, so a refused login looks the same whether or not the namespace
/// exists (28P01 after the full exchange, as PostgreSQL does for unknown users).
pub(super) struct NamespaceAuth {
    backend: Arc<dyn SqlBackend>,
    mock_key: [u8; 32],
}

impl Debug for NamespaceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceAuth").finish_non_exhaustive()
    }
}

impl NamespaceAuth {
    pub fn new(backend: Arc<dyn SqlBackend>) -> Self {
        Self {
            backend,
            mock_key: rand::random(),
        }
    }

    fn secret(&self, login: &LoginInfo<'_>) -> ScramSecret {
        let user = login.user().unwrap_or_default();
        let database = login.database().filter(|d| !d.is_empty()).unwrap_or(user);
        if !user.is_empty()
            && database == user
            && let Some(secret) = self.backend.scram_secret(user)
        {
            return secret;
        }
        // A stable salt per user name (so probing twice shows nothing new), a random key.
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(self.mock_key);
        hash.update(user.as_bytes());
        let salt = hash.finalize()[..16].to_vec();
        let salted_password: [u8; 32] = rand::random();
        ScramSecret {
            salt,
            iterations: crate::backend::SCRAM_ITERATIONS,
            salted_password: salted_password.to_vec(),
        }
    }
}

impl AuthSource for NamespaceAuth {
    fn get_password<'life0, 'life1, 'async_trait>(
        &'life0 self,
        login: &'life1 LoginInfo,
    ) -> PgFuture<'async_trait, PgWireResult<Password>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let secret = self.secret(login);
        Box::pin(async move { Ok(Password::new(Some(secret.salt), secret.salted_password)) })
    }

    fn get_scram_secret<'life0, 'life1, 'async_trait>(
        &'life0 self,
        login: &'life1 LoginInfo,
    ) -> PgFuture<
        'async_trait,
        PgWireResult<(pgwire::api::auth::sasl::scram::ScramSecret, Option<()>)>,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let secret = self.secret(login);
        Box::pin(async move {
            Ok((
                pgwire::api::auth::sasl::scram::ScramSecret::verifier_from_salted_password(
                    secret.salt,
                    secret.salted_password,
                    secret.iterations,
                ),
                None,
            ))
        })
    }
}
