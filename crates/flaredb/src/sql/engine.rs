//! A namespace's state machine: an in-memory SQLite database that applies replicated SQL.
//! Each request is one transaction (all its statements commit, or none); reads run on the same
//! connection between applies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, ErrorCode};
use serde::{Deserialize, Serialize};

use super::determinism::{self, FunctionState, Pinned, SharedFunctionState};
use super::types::*;

/// A statement as replicated: already rewritten for determinism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogStatement {
    pub sql: String,
    pub params: Vec<LogValue>,
}

/// One replicated request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SqlCommand {
    pub statements: Vec<LogStatement>,
    pub pinned: Pinned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogResult {
    pub kind: StatementKind,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<LogValue>>,
    pub rows_affected: u64,
}

impl From<LogResult> for StatementResult {
    fn from(r: LogResult) -> Self {
        StatementResult {
            kind: r.kind,
            columns: r.columns,
            rows: r
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(SqlValue::from).collect())
                .collect(),
            rows_affected: r.rows_affected,
        }
    }
}

/// What applying a request answers.
pub(crate) type SqlOutcome = Result<Vec<LogResult>, SqlError>;

struct Db {
    conn: Connection,
    functions: SharedFunctionState,
}

pub struct Engine {
    db: Mutex<Db>,
    /// Statements known to only read, with their deterministic rewrite: a repeated read skips
    /// classifying (a trip through the connection lock) and rewriting it. Only reads are
    /// remembered; a read stays a read whatever the schema becomes.
    reads: Mutex<HashMap<String, Arc<str>>>,
}

/// Distinct read statements remembered before the memory is cleared.
const READ_CACHE_LIMIT: usize = 4096;

/// Largest value or statement SQLite accepts here (the request limit is enforced earlier).
const SQLITE_MAX_LENGTH: i32 = 64 * 1024 * 1024;

fn open() -> rusqlite::Result<Db> {
    let conn = Connection::open_in_memory()?;
    let functions = FunctionState::new(Pinned {
        now_micros: 0,
        seed: 0,
    });
    determinism::register(&conn, &functions)?;
    conn.set_prepared_statement_cache_capacity(256);
    conn.set_limit(
        rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
        SQLITE_MAX_LENGTH,
    )?;
    // Constraints behave like PostgreSQL's by default.
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    Ok(Db { conn, functions })
}

impl Engine {
    pub fn new() -> Self {
        Self {
            db: Mutex::new(open().expect("an in-memory SQLite database opens")),
            reads: Mutex::new(HashMap::new()),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one replicated request as one transaction.
    pub(crate) fn apply(&self, command: &SqlCommand) -> SqlOutcome {
        let db = self.db();
        determinism::pin(&db.functions, command.pinned);
        db.conn.execute_batch("BEGIN").map_err(|e| map_error(&e))?;
        let mut results = Vec::with_capacity(command.statements.len());
        for (i, st) in command.statements.iter().enumerate() {
            match run(&db.conn, &st.sql, &st.params, false) {
                Ok(r) => results.push(r),
                Err(e) => {
                    let _ = db.conn.execute_batch("ROLLBACK");
                    return Err(e.at(i));
                }
            }
        }
        db.conn.execute_batch("COMMIT").map_err(|e| map_error(&e))?;
        Ok(results)
    }

    /// Whether every statement only reads (a statement that cannot be prepared yet counts as
    /// a write: it may depend on an earlier statement of the same request).
    pub(crate) fn is_read_only(&self, statements: &[Statement]) -> bool {
        {
            let reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            if statements.iter().all(|st| reads.contains_key(&st.sql)) {
                return true;
            }
        }
        let db = self.db();
        statements
            .iter()
            .all(|st| db.conn.prepare_cached(&st.sql).is_ok_and(|s| s.readonly()))
    }

    /// Runs read-only statements against the current state. `Ok(None)` when a statement
    /// writes (or cannot be prepared yet, e.g. it reads a table an earlier statement of the same
    /// request creates): the request must then go through Raft.
    pub(crate) fn try_read(
        &self,
        statements: &[Statement],
    ) -> Result<Option<Vec<StatementResult>>, SqlError> {
        // Reads are rewritten like writes: `last_insert_rowid()` would expose this replica's
        // connection history, which differs between replicas.
        let cached: Option<Vec<Arc<str>>> = {
            let reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            statements
                .iter()
                .map(|st| reads.get(&st.sql).cloned())
                .collect()
        };
        let db;
        let rewritten = match cached {
            Some(rewritten) => {
                db = self.db();
                rewritten
            }
            None => {
                let rewritten: Vec<Arc<str>> = statements
                    .iter()
                    .enumerate()
                    .map(|(i, st)| {
                        determinism::check_readable(&st.sql)
                            .and_then(|()| determinism::rewrite(&st.sql))
                            .map(Arc::from)
                            .map_err(|e| e.at(i))
                    })
                    .collect::<Result<_, _>>()?;
                db = self.db();
                for sql in &rewritten {
                    match db.conn.prepare_cached(sql) {
                        Ok(stmt) if stmt.readonly() => {}
                        _ => return Ok(None),
                    }
                }
                let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                if reads.len() >= READ_CACHE_LIMIT {
                    reads.clear();
                }
                for (st, sql) in statements.iter().zip(&rewritten) {
                    reads.insert(st.sql.clone(), sql.clone());
                }
                rewritten
            }
        };
        determinism::pin(&db.functions, Pinned::now());
        let mut out = Vec::with_capacity(statements.len());
        for (i, (st, sql)) in statements.iter().zip(&rewritten).enumerate() {
            let params: Vec<LogValue> = st.params.iter().map(LogValue::from).collect();
            out.push(
                run(&db.conn, sql, &params, true)
                    .map_err(|e| e.at(i))?
                    .into(),
            );
        }
        Ok(Some(out))
    }

    /// Parameter count and result columns of a statement, without running it (for the
    /// extended query protocol's Describe).
    pub fn describe(&self, sql: &str) -> Result<(usize, Vec<Column>), SqlError> {
        let db = self.db();
        let stmt = db.conn.prepare_cached(sql).map_err(|e| map_error(&e))?;
        Ok((stmt.parameter_count(), columns(&stmt)))
    }

    /// Declared column types of a table (`PRAGMA table_info`), for parameter type inference.
    pub fn table_columns(&self, table: &str) -> Vec<(String, String)> {
        let db = self.db();
        let Ok(mut stmt) = db
            .conn
            .prepare("SELECT name, type FROM pragma_table_info(?1)")
        else {
            return Vec::new();
        };
        stmt.query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
    }

    /// User tables and their `CREATE` statements.
    pub fn tables(&self) -> Vec<(String, String)> {
        let db = self.db();
        let Ok(mut stmt) = db.conn.prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        ) else {
            return Vec::new();
        };
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
    }

    /// The database image (SQLite's own file format).
    pub fn image(&self) -> Vec<u8> {
        let mut db = self.db();
        db.conn
            .serialize("main")
            .map(|d| d.to_vec())
            .unwrap_or_default()
    }

    /// Replaces the database with an image.
    pub fn load_image(&self, image: &[u8]) -> Result<(), String> {
        let mut db = self.db();
        if image.is_empty() {
            *db = open().map_err(|e| e.to_string())?;
            return Ok(());
        }
        db.conn.flush_prepared_statement_cache();
        db.conn
            .deserialize_read_exact("main", image, image.len(), false)
            .map_err(|e| format!("not a SQLite database image: {e}"))?;
        // A foreign image must be a healthy database before it replaces ours.
        let ok: String = db
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| format!("database image fails its check: {e}"))?;
        if ok != "ok" {
            return Err(format!("database image fails its check: {ok}"));
        }
        db.conn
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// SHA-256 over every user table's rows in primary-key order: equal on replicas with
    /// equal contents.
    pub fn checksum(&self) -> String {
        use sha2::Digest;
        let tables = self.tables();
        let db = self.db();
        let mut hash = sha2::Sha256::new();
        for (name, sql) in tables {
            hash.update(name.as_bytes());
            hash.update(sql.as_bytes());
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let Ok(mut stmt) = db
                .conn
                .prepare(&format!("SELECT * FROM {quoted} ORDER BY rowid"))
            else {
                continue;
            };
            let n = stmt.column_count();
            let Ok(mut rows) = stmt.query([]) else {
                continue;
            };
            while let Ok(Some(row)) = rows.next() {
                for i in 0..n {
                    let v: Value = row.get(i).unwrap_or(Value::Null);
                    hash.update(format!("{v:?}|").as_bytes());
                }
                hash.update(b"\n");
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

fn columns(stmt: &rusqlite::Statement<'_>) -> Vec<Column> {
    stmt.columns()
        .map(|c| Column {
            name: c.name().to_owned(),
            decl_type: c.decl_type().map(str::to_owned),
        })
        .collect()
}

fn kind_of(sql: &str) -> StatementKind {
    match determinism::first_keyword(sql).as_deref() {
        Some("SELECT" | "WITH" | "VALUES" | "PRAGMA" | "EXPLAIN") => StatementKind::Select,
        Some("INSERT" | "REPLACE") => StatementKind::Insert,
        Some("UPDATE") => StatementKind::Update,
        Some("DELETE") => StatementKind::Delete,
        Some("CREATE") => StatementKind::Create,
        Some("DROP") => StatementKind::Drop,
        Some("ALTER") => StatementKind::Alter,
        _ => StatementKind::Other,
    }
}

fn to_sql_value(v: &LogValue) -> Value {
    match v {
        LogValue::Null => Value::Null,
        LogValue::Integer(i) => Value::Integer(*i),
        LogValue::Real(f) => Value::Real(*f),
        LogValue::Text(t) => Value::Text(t.clone()),
        LogValue::Blob(b) => Value::Blob(b.clone()),
    }
}

fn from_sql_value(v: ValueRef<'_>) -> LogValue {
    match v {
        ValueRef::Null => LogValue::Null,
        ValueRef::Integer(i) => LogValue::Integer(i),
        ValueRef::Real(f) => LogValue::Real(f),
        ValueRef::Text(t) => LogValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => LogValue::Blob(b.to_vec()),
    }
}

/// Binds `$n`/`?n`/`?` parameters: `$n` names the n-th value wherever it appears.
fn bind(stmt: &mut rusqlite::Statement<'_>, params: &[LogValue]) -> Result<(), SqlError> {
    let count = stmt.parameter_count();
    let mut highest = 0usize;
    for index in 1..=count {
        let position = match stmt.parameter_name(index) {
            None => index,
            Some(name) => {
                let digits = name.trim_start_matches(['$', '?', ':', '@']);
                digits.parse::<usize>().map_err(|_| {
                    SqlError::new(
                        sqlstate::UNDEFINED_PARAMETER,
                        format!("named parameter {name} is not supported; use $1, $2, …"),
                    )
                })?
            }
        };
        if position == 0 || position > params.len() {
            return Err(SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "statement needs parameter ${position}, but {} were supplied",
                    params.len()
                ),
            ));
        }
        highest = highest.max(position);
        stmt.raw_bind_parameter(index, to_sql_value(&params[position - 1]))
            .map_err(|e| map_error(&e))?;
    }
    if highest != params.len() {
        return Err(SqlError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "bind message supplies {} parameters, but the statement requires {highest}",
                params.len()
            ),
        ));
    }
    Ok(())
}

fn run(
    conn: &Connection,
    sql: &str,
    params: &[LogValue],
    read_only: bool,
) -> Result<LogResult, SqlError> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| map_error(&e))?;
    if read_only && !stmt.readonly() {
        return Err(SqlError::new(
            sqlstate::READ_ONLY_SQL_TRANSACTION,
            "statement writes but was sent as a read",
        ));
    }
    stmt.clear_bindings();
    bind(&mut stmt, params)?;
    let kind = kind_of(sql);
    let cols = columns(&stmt);
    if cols.is_empty() {
        let changed = stmt.raw_execute().map_err(|e| map_error(&e))?;
        let rows_affected = match kind {
            StatementKind::Insert | StatementKind::Update | StatementKind::Delete => changed as u64,
            _ => 0,
        };
        return Ok(LogResult {
            kind,
            columns: cols,
            rows: Vec::new(),
            rows_affected,
        });
    }
    let n = cols.len();
    let mut rows = Vec::new();
    {
        let mut cursor = stmt.raw_query();
        while let Some(row) = cursor.next().map_err(|e| map_error(&e))? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(from_sql_value(row.get_ref(i).map_err(|e| map_error(&e))?));
            }
            rows.push(values);
        }
    }
    let rows_affected = match kind {
        StatementKind::Select => rows.len() as u64,
        // INSERT … RETURNING: the returned rows are the affected ones.
        _ => rows.len() as u64,
    };
    Ok(LogResult {
        kind,
        columns: cols,
        rows,
        rows_affected,
    })
}

/// SQLite errors in PostgreSQL's vocabulary.
pub(crate) fn map_error(e: &rusqlite::Error) -> SqlError {
    use rusqlite::ffi;
    match e {
        rusqlite::Error::SqliteFailure(err, message) => {
            let text = message.clone().unwrap_or_else(|| err.to_string());
            let state = match err.code {
                ErrorCode::ConstraintViolation => match err.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        sqlstate::UNIQUE_VIOLATION
                    }
                    ffi::SQLITE_CONSTRAINT_NOTNULL => sqlstate::NOT_NULL_VIOLATION,
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlstate::FOREIGN_KEY_VIOLATION,
                    ffi::SQLITE_CONSTRAINT_CHECK => sqlstate::CHECK_VIOLATION,
                    _ => sqlstate::INTEGRITY_CONSTRAINT_VIOLATION,
                },
                ErrorCode::TooBig => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                ErrorCode::TypeMismatch => sqlstate::DATATYPE_MISMATCH,
                _ if text.starts_with("no such table") => sqlstate::UNDEFINED_TABLE,
                _ if text.starts_with("no such column") => sqlstate::UNDEFINED_COLUMN,
                _ if text.contains("already exists") => sqlstate::DUPLICATE_TABLE,
                _ if text.contains("syntax error")
                    || text.starts_with("near ")
                    || text.contains("incomplete input")
                    || text.contains("unrecognized token") =>
                {
                    sqlstate::SYNTAX_ERROR
                }
                _ => "42000",
            };
            SqlError::new(state, text)
        }
        rusqlite::Error::SqlInputError { msg, .. } => SqlError::syntax(msg.clone()),
        other => SqlError::new(sqlstate::INTERNAL_ERROR, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(statements: &[(&str, Vec<LogValue>)]) -> SqlCommand {
        SqlCommand {
            statements: statements
                .iter()
                .map(|(sql, params)| LogStatement {
                    sql: determinism::rewrite(sql).unwrap(),
                    params: params.clone(),
                })
                .collect(),
            pinned: Pinned {
                now_micros: 1_000_000,
                seed: 7,
            },
        }
    }

    #[test]
    fn requests_are_atomic_and_errors_carry_sqlstates() {
        let e = Engine::new();
        e.apply(&cmd(&[(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
            vec![],
        )]))
        .unwrap();
        let r = e
            .apply(&cmd(&[(
                "INSERT INTO t (id, name) VALUES ($1, $2)",
                vec![LogValue::Integer(1), LogValue::Text("a".into())],
            )]))
            .unwrap();
        assert_eq!(r[0].rows_affected, 1);
        // Second statement violates uniqueness: the first must not stick.
        let err = e
            .apply(&cmd(&[
                ("INSERT INTO t (id, name) VALUES (2, 'b')", vec![]),
                ("INSERT INTO t (id, name) VALUES (3, 'a')", vec![]),
            ]))
            .unwrap_err();
        assert_eq!(
            (err.sqlstate.as_str(), err.statement),
            (sqlstate::UNIQUE_VIOLATION, Some(1))
        );
        let rows = e
            .try_read(&[Statement::new("SELECT count(*) FROM t")])
            .unwrap()
            .unwrap();
        assert_eq!(rows[0].rows, vec![vec![SqlValue::Integer(1)]]);

        let err = e.apply(&cmd(&[("SELEC nonsense", vec![])])).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::SYNTAX_ERROR);
        let err = e
            .apply(&cmd(&[("INSERT INTO missing VALUES (1)", vec![])]))
            .unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNDEFINED_TABLE);
        let err = e
            .apply(&cmd(&[("INSERT INTO t (id) VALUES (9)", vec![])]))
            .unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::NOT_NULL_VIOLATION);
    }

    #[test]
    fn parameters_are_counted_and_bound_by_number() {
        let e = Engine::new();
        e.apply(&cmd(&[("CREATE TABLE p (a, b)", vec![])])).unwrap();
        e.apply(&cmd(&[(
            "INSERT INTO p VALUES ($2, $1)",
            vec![LogValue::Text("one".into()), LogValue::Integer(2)],
        )]))
        .unwrap();
        let r = e
            .try_read(&[Statement::new("SELECT a, b FROM p")])
            .unwrap()
            .unwrap();
        assert_eq!(
            r[0].rows,
            vec![vec![SqlValue::Integer(2), SqlValue::Text("one".into())]]
        );
        let err = e
            .apply(&cmd(&[(
                "INSERT INTO p VALUES ($1, $2)",
                vec![LogValue::Integer(1)],
            )]))
            .unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::PROTOCOL_VIOLATION);
        let err = e
            .apply(&cmd(&[(
                "INSERT INTO p VALUES ($1, 1)",
                vec![LogValue::Integer(1), LogValue::Integer(2)],
            )]))
            .unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::PROTOCOL_VIOLATION, "{err}");
    }

    #[test]
    fn replicas_applying_the_same_commands_are_identical_even_with_clock_and_randomness() {
        let (a, b) = (Engine::new(), Engine::new());
        let script = [
            cmd(&[(
                "CREATE TABLE r (id INTEGER PRIMARY KEY, x INTEGER DEFAULT (random()), at TEXT DEFAULT CURRENT_TIMESTAMP)",
                vec![],
            )]),
            cmd(&[
                ("INSERT INTO r (id) VALUES (1), (2)", vec![]),
                ("UPDATE r SET x = random() WHERE id = 2", vec![]),
            ]),
            cmd(&[("INSERT INTO r (id, at) VALUES (3, now())", vec![])]),
        ];
        for c in &script {
            a.apply(c).unwrap();
            b.apply(c).unwrap();
        }
        assert_eq!(a.checksum(), b.checksum());
        // And a replica rebuilt from an image matches too.
        let c = Engine::new();
        c.load_image(&a.image()).unwrap();
        assert_eq!(c.checksum(), a.checksum());
        assert!(c.load_image(b"definitely not sqlite").is_err());
    }

    #[test]
    fn remembered_reads_follow_the_data_and_schema() {
        let e = Engine::new();
        e.apply(&cmd(&[
            ("CREATE TABLE m (a INTEGER)", vec![]),
            ("INSERT INTO m VALUES (1)", vec![]),
        ]))
        .unwrap();
        let read = [Statement::new("SELECT count(*) FROM m")];
        for expected in [1, 1] {
            assert!(e.is_read_only(&read));
            let r = e.try_read(&read).unwrap().unwrap();
            assert_eq!(r[0].rows, vec![vec![SqlValue::Integer(expected)]]);
        }
        e.apply(&cmd(&[("INSERT INTO m VALUES (2)", vec![])]))
            .unwrap();
        let r = e.try_read(&read).unwrap().unwrap();
        assert_eq!(r[0].rows, vec![vec![SqlValue::Integer(2)]]);
        e.apply(&cmd(&[("DROP TABLE m", vec![])])).unwrap();
        let err = e.try_read(&read).unwrap_err();
        assert_eq!(err.sqlstate, sqlstate::UNDEFINED_TABLE);
        // A refused read is never remembered as a read.
        let pragma = [Statement::new("PRAGMA foreign_keys = OFF")];
        assert!(e.try_read(&pragma).is_err());
        assert!(e.try_read(&pragma).is_err());
    }

    #[test]
    fn reads_are_refused_for_writes_and_classified() {
        let e = Engine::new();
        assert!(
            e.try_read(&[Statement::new("CREATE TABLE x (a)")])
                .unwrap()
                .is_none()
        );
        assert!(e.try_read(&[Statement::new("SELECT 1")]).unwrap().is_some());
        // Reads a table that does not exist yet: go through Raft (and fail there).
        assert!(
            e.try_read(&[Statement::new("SELECT * FROM later")])
                .unwrap()
                .is_none()
        );
        // A PRAGMA that changes this replica's settings is not a read (it would make the
        // replicas behave differently); one that only reports is.
        for sql in [
            "PRAGMA foreign_keys = OFF",
            "PRAGMA recursive_triggers = 1",
            "ATTACH ':memory:' AS other",
        ] {
            let r = e.try_read(&[Statement::new(sql)]);
            assert!(!matches!(r, Ok(Some(_))), "{sql} ran as a read: {r:?}");
        }
        assert!(
            e.try_read(&[Statement::new("PRAGMA table_info(x)")])
                .unwrap()
                .is_some()
        );
    }
}
