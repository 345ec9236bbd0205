//! Making SQL deterministic for replication. Every replica applies the same statements in the
//! same order and must end byte-identical, so anything that depends on the clock, randomness
//! or connection history is either pinned to values the leader chose (carried in the log
//! entry) or rejected with a clear error:
//!
//! - `now()`, `CURRENT_TIMESTAMP`, `CURRENT_DATE`, `CURRENT_TIME` and the `'now'` argument of
//!   SQLite's date functions read the entry's fixed time (also when they are column defaults);
//! - `random()`, `randomblob(n)` and `gen_random_uuid()` draw from a generator seeded by the
//!   entry;
//! - `last_insert_rowid()`, `changes()`, `total_changes()` (connection history, lost when a
//!   replica is rebuilt from a snapshot) and `PRAGMA`, `ATTACH`, `DETACH`, `VACUUM` and
//!   transaction-control statements in writes are rejected.
//!
//! The rewrite is textual over a small tokenizer that knows SQLite's quoting and comments, so
//! string literals, quoted identifiers and comments are never touched.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use super::types::{SqlError, sqlstate};

/// The values a replicated entry pins: when it happened and how to be random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    /// Microseconds since the Unix epoch, chosen by the node that accepted the request.
    pub now_micros: i64,
    pub seed: u64,
}

impl Pinned {
    /// Values for a request accepted now (on the receiving node, before replication).
    pub fn now() -> Self {
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Self {
            now_micros,
            seed: rand::random(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Str(&'a str),
    Other(&'a str),
}

/// Splits SQL into words, string literals and everything else (quoted identifiers,
/// comments, whitespace, punctuation), keeping every byte.
fn tokenize(sql: &str) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        if c == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if i + 1 < b.len() && b[i + 1] == b'\'' {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Token::Str(&sql[start..i]));
        } else if c == b'"' || c == b'`' || c == b'[' {
            let close = if c == b'[' { b']' } else { c };
            i += 1;
            while i < b.len() {
                if b[i] == close {
                    if close != b']' && i + 1 < b.len() && b[i + 1] == close {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Token::Other(&sql[start..i]));
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            out.push(Token::Other(&sql[start..i]));
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            out.push(Token::Other(&sql[start..i]));
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Token::Word(&sql[start..i]));
        } else {
            // One character (or a run of digits, to keep 1e5 etc. together).
            i += 1;
            if c.is_ascii_digit() {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            } else {
                while i < b.len() && !sql.is_char_boundary(i) {
                    i += 1;
                }
            }
            out.push(Token::Other(&sql[start..i]));
        }
    }
    out
}

/// The first keyword of a statement, uppercased (for classifying statements).
pub fn first_keyword(sql: &str) -> Option<String> {
    tokenize(sql).into_iter().find_map(|t| match t {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    })
}

/// Rewrites one statement for deterministic replication, or rejects it.
pub fn rewrite(sql: &str) -> Result<String, SqlError> {
    let tokens = tokenize(sql);
    let mut out = String::with_capacity(sql.len() + 16);
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Word(w) => {
                let upper = w.to_ascii_uppercase();
                let next_is_paren = tokens[i + 1..]
                    .iter()
                    .find(|t| !matches!(t, Token::Other(o) if o.trim().is_empty()))
                    .is_some_and(|t| *t == Token::Other("("));
                match upper.as_str() {
                    "CURRENT_TIMESTAMP" => out.push_str("(uc_current_timestamp())"),
                    "CURRENT_DATE" => out.push_str("(uc_current_date())"),
                    "CURRENT_TIME" => out.push_str("(uc_current_time())"),
                    "LAST_INSERT_ROWID" | "CHANGES" | "TOTAL_CHANGES" if next_is_paren => {
                        return Err(SqlError::new(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!(
                                "{}() depends on connection history and cannot be replicated \
                                 deterministically; use RETURNING instead",
                                w.to_ascii_lowercase()
                            ),
                        ));
                    }
                    _ => out.push_str(w),
                }
            }
            Token::Str(s) if s.eq_ignore_ascii_case("'now'") => out.push_str("(uc_now_text())"),
            Token::Str(s) | Token::Other(s) => out.push_str(s),
        }
    }
    Ok(out)
}

/// Statements a replicated write may not contain (checked on the first keyword).
pub fn check_writable(sql: &str) -> Result<(), SqlError> {
    match first_keyword(sql).as_deref() {
        Some(k @ ("PRAGMA" | "ATTACH" | "DETACH" | "VACUUM")) => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{k} cannot be used in a replicated write"),
        )),
        Some(k @ ("BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE")) => {
            Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "{k} inside a request: a request is already one transaction (send the statements together)"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// PRAGMAs that only report on the schema or the data, allowed in reads.
const INFORMATIONAL_PRAGMAS: &[&str] = &[
    "TABLE_INFO",
    "TABLE_XINFO",
    "TABLE_LIST",
    "INDEX_LIST",
    "INDEX_INFO",
    "INDEX_XINFO",
    "FOREIGN_KEY_LIST",
    "FOREIGN_KEY_CHECK",
    "INTEGRITY_CHECK",
    "QUICK_CHECK",
    "COLLATION_LIST",
    "FUNCTION_LIST",
    "PRAGMA_LIST",
    "COMPILE_OPTIONS",
];

/// Statements a read may not contain: SQLite calls `PRAGMA foreign_keys = OFF` or `ATTACH`
/// read-only (they write no table), but they change how this one replica behaves.
pub fn check_readable(sql: &str) -> Result<(), SqlError> {
    let tokens = tokenize(sql);
    let mut words = tokens.iter().filter_map(|t| match t {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        _ => None,
    });
    match words.next().as_deref() {
        Some("PRAGMA") => {
            let name = words.next().unwrap_or_default();
            let assigns = tokens
                .iter()
                .any(|t| matches!(t, Token::Other(o) if o.contains('=')));
            if assigns || !INFORMATIONAL_PRAGMAS.contains(&name.as_str()) {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "PRAGMA {} is not allowed: only informational pragmas ({}) can be used",
                        name.to_ascii_lowercase(),
                        INFORMATIONAL_PRAGMAS.join(", ").to_ascii_lowercase()
                    ),
                ));
            }
            Ok(())
        }
        Some(k @ ("ATTACH" | "DETACH" | "VACUUM")) => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{k} is not supported"),
        )),
        _ => Ok(()),
    }
}

/// The per-connection state the registered functions read.
#[derive(Debug)]
pub struct FunctionState {
    pinned: Pinned,
    rng: u64,
}

pub type SharedFunctionState = Arc<Mutex<FunctionState>>;

impl FunctionState {
    pub fn new(pinned: Pinned) -> SharedFunctionState {
        Arc::new(Mutex::new(Self {
            pinned,
            rng: pinned.seed,
        }))
    }
}

/// Pins the values the next statements see.
pub fn pin(state: &SharedFunctionState, pinned: Pinned) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.pinned = pinned;
    s.rng = pinned.seed;
}

fn next_random(state: &SharedFunctionState) -> u64 {
    // splitmix64: tiny, deterministic, and good enough for SQL random().
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.rng = s.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = s.rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pinned_micros(state: &SharedFunctionState) -> i64 {
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pinned
        .now_micros
}

/// (year, month, day, hour, minute, second, microsecond) in UTC.
fn civil(micros: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = micros.div_euclid(1_000_000);
    let micro = micros.rem_euclid(1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, sod / 3600, (sod / 60) % 60, sod % 60, micro)
}

/// Registers the deterministic replacements on a connection.
pub fn register(conn: &Connection, state: &SharedFunctionState) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    let s = state.clone();
    conn.create_scalar_function("now", 0, flags, move |_| {
        let (y, mo, d, h, mi, se, us) = civil(pinned_micros(&s));
        Ok(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}.{us:06}+00:00"
        ))
    })?;
    let s = state.clone();
    conn.create_scalar_function("uc_now_text", 0, flags, move |_| {
        let (y, mo, d, h, mi, se, us) = civil(pinned_micros(&s));
        Ok(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}.{:03}",
            us / 1000
        ))
    })?;
    let s = state.clone();
    conn.create_scalar_function("uc_current_timestamp", 0, flags, move |_| {
        let (y, mo, d, h, mi, se, _) = civil(pinned_micros(&s));
        Ok(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}"))
    })?;
    let s = state.clone();
    conn.create_scalar_function("uc_current_date", 0, flags, move |_| {
        let (y, mo, d, ..) = civil(pinned_micros(&s));
        Ok(format!("{y:04}-{mo:02}-{d:02}"))
    })?;
    let s = state.clone();
    conn.create_scalar_function("uc_current_time", 0, flags, move |_| {
        let (_, _, _, h, mi, se, _) = civil(pinned_micros(&s));
        Ok(format!("{h:02}:{mi:02}:{se:02}"))
    })?;
    let s = state.clone();
    conn.create_scalar_function("random", 0, flags, move |_| Ok(next_random(&s) as i64))?;
    let s = state.clone();
    conn.create_scalar_function("randomblob", 1, flags, move |ctx| {
        let n = ctx.get::<i64>(0).unwrap_or(1).clamp(1, 1 << 20) as usize;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.extend_from_slice(&next_random(&s).to_le_bytes());
        }
        out.truncate(n);
        Ok(out)
    })?;
    let s = state.clone();
    conn.create_scalar_function("gen_random_uuid", 0, flags, move |_| {
        let (a, b) = (next_random(&s), next_random(&s));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_clock_keywords_and_now_literals_but_not_strings_or_identifiers() {
        let sql = "INSERT INTO t (a, \"CURRENT_TIMESTAMP\", b) VALUES (CURRENT_TIMESTAMP, 'CURRENT_DATE', datetime('now')) -- CURRENT_TIME";
        let out = rewrite(sql).unwrap();
        assert_eq!(
            out,
            "INSERT INTO t (a, \"CURRENT_TIMESTAMP\", b) VALUES ((uc_current_timestamp()), 'CURRENT_DATE', datetime((uc_now_text()))) -- CURRENT_TIME"
        );
        let ddl = rewrite("CREATE TABLE t (at TEXT DEFAULT CURRENT_TIMESTAMP)").unwrap();
        assert_eq!(
            ddl,
            "CREATE TABLE t (at TEXT DEFAULT (uc_current_timestamp()))"
        );
        assert_eq!(rewrite("SELECT 'it''s now'").unwrap(), "SELECT 'it''s now'");
    }

    #[test]
    fn rejects_connection_history_functions() {
        for sql in [
            "SELECT last_insert_rowid()",
            "UPDATE t SET a = changes ()",
            "select TOTAL_CHANGES()",
        ] {
            let e = rewrite(sql).unwrap_err();
            assert_eq!(e.sqlstate, sqlstate::FEATURE_NOT_SUPPORTED, "{sql}");
            assert!(e.message.contains("RETURNING"));
        }
        // A column that happens to be called "changes" is fine.
        assert!(rewrite("SELECT changes FROM t").is_ok());
    }

    #[test]
    fn writes_may_not_control_transactions_or_pragmas() {
        assert!(check_writable("  PRAGMA foreign_keys = OFF").is_err());
        assert!(check_writable("begin").is_err());
        assert!(check_writable("/* c */ INSERT INTO t VALUES (1)").is_ok());
    }

    #[test]
    fn pinned_functions_are_deterministic() {
        let run = |pinned: Pinned| -> Vec<String> {
            let conn = Connection::open_in_memory().unwrap();
            let state = FunctionState::new(pinned);
            register(&conn, &state).unwrap();
            let sql = rewrite(
                "SELECT now(), CURRENT_TIMESTAMP, CURRENT_DATE, datetime('now'), random(), hex(randomblob(8)), gen_random_uuid()",
            )
            .unwrap();
            conn.query_row(&sql, [], |r| {
                (0..7)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect()
            })
            .unwrap()
        };
        let p = Pinned {
            now_micros: 1_795_331_553_123_456, // 2026-11-22 07:12:33.123456 UTC
            seed: 42,
        };
        let a = run(p);
        assert_eq!(a, run(p), "same pinned values, same results");
        assert!(a[0].contains("2026-11-22 07:12:33.123456+00:00"), "{a:?}");
        assert!(a[1].contains("2026-11-22 07:12:33"), "{a:?}");
        assert!(a[2].contains("2026-11-22"), "{a:?}");
        assert!(a[3].contains("2026-11-22 07:12:33"), "{a:?}");
        assert_ne!(a[4], run(Pinned { seed: 43, ..p })[4], "the seed matters");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0, 0));
        assert_eq!(civil(951_782_400 * 1_000_000), (2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(civil(-1), (1969, 12, 31, 23, 59, 59, 999_999));
    }
}
