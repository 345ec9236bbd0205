//! Just enough SQL lexing for the wire protocol: splitting a query string into statements,
//! classifying them (transaction control, session commands, client probes, SQL for the
//! engine), numbering `$n` parameters and guessing their types from context.
//!
//! The lexer knows SQLite's quoting (`'…'`, `"…"`, `` `…` ``, `[…]`, `x'…'`) and comments, so
//! a `;` or a keyword inside a literal, a quoted identifier or a comment is never seen.

use pgwire::api::Type;

use super::values;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// An identifier or keyword.
    Word,
    /// A quoted identifier.
    Quoted,
    /// A string or blob literal.
    Str,
    Number,
    /// `$1`, `?`, `?2`, `:name`, `@name`, `$name`.
    Param,
    Punct,
    Space,
    Comment,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
    /// Byte offset in the lexed text.
    pub start: usize,
}

impl Token<'_> {
    pub fn is(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    pub fn is_punct(&self, p: &str) -> bool {
        self.kind == Kind::Punct && self.text == p
    }

    pub fn significant(&self) -> bool {
        !matches!(self.kind, Kind::Space | Kind::Comment)
    }

    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// The identifier this token names (unquoted), if it is one.
    pub fn ident(&self) -> Option<String> {
        match self.kind {
            Kind::Word => Some(self.text.to_owned()),
            Kind::Quoted => {
                let t = self.text;
                let (open, close) = match t.as_bytes().first() {
                    Some(b'[') => ('[', ']'),
                    Some(b'`') => ('`', '`'),
                    _ => ('"', '"'),
                };
                let inner = t.strip_prefix(open)?;
                let inner = inner.strip_suffix(close).unwrap_or(inner);
                Some(if open == '[' {
                    inner.to_owned()
                } else {
                    inner.replace(&format!("{close}{close}"), &close.to_string())
                })
            }
            _ => None,
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Index just past a quoted run starting at `i` (the opening quote); a doubled quote escapes.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8) -> usize {
    i += 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

const OPERATORS: [&str; 12] = [
    "->>", "<=", ">=", "<>", "!=", "==", "||", "::", "<<", ">>", "->", "~~",
];

/// Splits SQL into tokens, keeping every byte.
pub(super) fn tokenize(sql: &str) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let next = b.get(i + 1).copied();
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if c == b'-' && next == Some(b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if c == b'/' && next == Some(b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            Kind::Comment
        } else if c == b'\'' {
            i = skip_quoted(b, i, b'\'');
            Kind::Str
        } else if (c == b'x' || c == b'X') && next == Some(b'\'') {
            i = skip_quoted(b, i + 1, b'\'');
            Kind::Str
        } else if c == b'"' || c == b'`' {
            i = skip_quoted(b, i, c);
            Kind::Quoted
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i = (i + 1).min(b.len());
            Kind::Quoted
        } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            let hex = c == b'0' && matches!(next, Some(b'x' | b'X'));
            i += 1;
            while i < b.len() {
                let d = b[i];
                let exponent_sign =
                    (d == b'+' || d == b'-') && !hex && matches!(b[i - 1], b'e' | b'E');
                if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            Kind::Number
        } else if c == b'?' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            Kind::Param
        } else if (c == b'$' && next.is_some_and(|n| n.is_ascii_alphanumeric() || n == b'_'))
            || ((c == b':' || c == b'@') && next.is_some_and(is_word_start))
        {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Kind::Param
        } else if is_word_start(c) {
            while i < b.len() && is_word_byte(b[i]) {
                i += 1;
            }
            Kind::Word
        } else {
            let rest = &sql[i..];
            let len = OPERATORS
                .iter()
                .find(|op| rest.starts_with(**op))
                .map_or(1, |op| op.len());
            i += len;
            Kind::Punct
        };
        out.push(Token {
            kind,
            text: &sql[start..i],
            start,
        });
    }
    out
}

/// The significant tokens (no whitespace, no comments).
pub(super) fn significant<'a>(tokens: &[Token<'a>]) -> Vec<Token<'a>> {
    tokens.iter().filter(|t| t.significant()).copied().collect()
}

/// Splits a query string into its statements (without the terminating `;`), dropping empty
/// ones. Semicolons inside a `CREATE TRIGGER … BEGIN … END` body do not end the statement.
pub(super) fn split(sql: &str) -> Vec<&str> {
    let tokens = tokenize(sql);
    let mut out = Vec::new();
    let mut first: Option<usize> = None; // first significant token of the current statement
    let mut last_end = 0;
    let mut words: Vec<String> = Vec::new();
    let mut trigger = false;
    let mut depth = 0usize;
    for t in &tokens {
        if t.is_punct(";") && depth == 0 {
            if let Some(f) = first.take() {
                out.push(sql[f..last_end].trim());
            }
            words.clear();
            trigger = false;
            continue;
        }
        if !t.significant() {
            continue;
        }
        if first.is_none() {
            first = Some(t.start);
        }
        last_end = t.end();
        if t.kind != Kind::Word {
            continue;
        }
        if words.len() < 4 {
            words.push(t.text.to_ascii_uppercase());
            let w: Vec<&str> = words.iter().map(String::as_str).collect();
            trigger = matches!(
                w.as_slice(),
                ["CREATE", "TRIGGER", ..] | ["CREATE", "TEMP" | "TEMPORARY", "TRIGGER", ..]
            );
        }
        if trigger {
            if t.is("BEGIN") || (t.is("CASE") && depth > 0) {
                depth += 1;
            } else if t.is("END") {
                depth = depth.saturating_sub(1);
            }
        }
    }
    if let Some(f) = first {
        out.push(sql[f..last_end].trim());
    }
    out
}

/// A client probe answered without the engine (`SELECT version()` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProbeKind {
    Version,
    CurrentDatabase,
    CurrentSchema,
    CurrentUser,
    BackendPid,
    Setting(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Probe {
    pub kind: ProbeKind,
    /// The result column's name.
    pub column: String,
}

/// What a statement is, as far as the wire front-end is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    Begin,
    Commit,
    Rollback,
    /// Accepted and ignored, answered with this command tag (`SET`, `RESET`, …).
    Ignored(String),
    /// `SHOW name` (`all` for `SHOW ALL`).
    Show(String),
    Probe(Vec<Probe>),
    /// Refused with 0A000 and this message.
    Unsupported(String),
    /// Anything else goes to the engine.
    Sql,
}

/// Classifies one statement.
pub(super) fn classify(sql: &str) -> Command {
    let tokens = tokenize(sql);
    let sig = significant(&tokens);
    let word = |i: usize| -> String {
        sig.get(i)
            .filter(|t| t.kind == Kind::Word)
            .map(|t| t.text.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let first = word(0);
    let second = word(1);
    match first.as_str() {
        "BEGIN" | "START" => Command::Begin,
        "COMMIT" | "END" if second == "PREPARED" => {
            Command::Unsupported("two-phase commit is not supported".into())
        }
        "COMMIT" | "END" => Command::Commit,
        "ROLLBACK" | "ABORT" => {
            let rest: Vec<String> = (1..sig.len()).map(word).collect();
            if rest.iter().any(|w| w == "TO") {
                Command::Unsupported("savepoints are not supported".into())
            } else if second == "PREPARED" {
                Command::Unsupported("two-phase commit is not supported".into())
            } else {
                Command::Rollback
            }
        }
        "SAVEPOINT" | "RELEASE" => Command::Unsupported("savepoints are not supported".into()),
        "SET" => Command::Ignored("SET".into()),
        "RESET" => Command::Ignored("RESET".into()),
        "DISCARD" => Command::Ignored(format!(
            "DISCARD {}",
            if second.is_empty() {
                "ALL".into()
            } else {
                second
            }
        )),
        "DEALLOCATE" => Command::Ignored(if sig.iter().any(|t| t.is("ALL")) {
            "DEALLOCATE ALL".into()
        } else {
            "DEALLOCATE".into()
        }),
        "UNLISTEN" => Command::Ignored("UNLISTEN".into()),
        "SHOW" => Command::Show(show_name(&sig[1..])),
        "LISTEN" | "NOTIFY" | "COPY" | "LOCK" | "PREPARE" | "EXECUTE" | "DECLARE" | "FETCH"
        | "MOVE" | "CLOSE" | "GRANT" | "REVOKE" | "TRUNCATE" | "CHECKPOINT" | "CLUSTER"
        | "COMMENT" | "SECURITY" | "LOAD" | "CALL" | "DO" | "IMPORT" => Command::Unsupported(
            format!("{first} is not supported by flaredb (a SQLite dialect)"),
        ),
        "SELECT" => match probes(&sig[1..]) {
            Some(p) => Command::Probe(p),
            None => Command::Sql,
        },
        _ => Command::Sql,
    }
}

fn show_name(rest: &[Token<'_>]) -> String {
    let words: Vec<String> = rest
        .iter()
        .filter_map(|t| match t.kind {
            Kind::Word | Kind::Quoted => t.ident().map(|s| s.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    match words.join(" ").as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        "session authorization" => "session_authorization".into(),
        other => other.replace(' ', "_"),
    }
}

/// `SELECT <probe> [[AS] alias], …` with nothing else (no FROM, no expressions).
fn probes(sig: &[Token<'_>]) -> Option<Vec<Probe>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // optional pg_catalog. prefix
        if sig.get(i).is_some_and(|t| t.is("pg_catalog")) && sig.get(i + 1)?.is_punct(".") {
            i += 2;
        }
        let name = sig.get(i)?;
        if name.kind != Kind::Word {
            return None;
        }
        let lname = name.text.to_ascii_lowercase();
        i += 1;
        let has_parens = sig.get(i).is_some_and(|t| t.is_punct("("));
        let kind = match (lname.as_str(), has_parens) {
            ("version", true) => ProbeKind::Version,
            ("current_database", true) | ("current_catalog", false) => ProbeKind::CurrentDatabase,
            ("current_schema", _) => ProbeKind::CurrentSchema,
            ("current_user" | "session_user" | "user" | "current_role", false) => {
                ProbeKind::CurrentUser
            }
            ("pg_backend_pid", true) => ProbeKind::BackendPid,
            ("current_setting", true) => {
                let arg = sig.get(i + 1)?;
                if arg.kind != Kind::Str || arg.text.starts_with(['x', 'X']) {
                    return None;
                }
                let inner = &arg.text[1..arg.text.len().saturating_sub(1).max(1)];
                ProbeKind::Setting(inner.replace("''", "'").to_ascii_lowercase())
            }
            _ => return None,
        };
        if has_parens {
            // `(` [argument] `)`
            i += 1;
            if matches!(kind, ProbeKind::Setting(_)) {
                i += 1;
            }
            if !sig.get(i)?.is_punct(")") {
                return None;
            }
            i += 1;
        }
        let mut column = lname;
        match sig.get(i) {
            Some(t) if t.is("AS") => {
                column = sig.get(i + 1)?.ident()?;
                i += 2;
            }
            Some(t) if matches!(t.kind, Kind::Word | Kind::Quoted) && !t.is("FROM") => {
                column = t.ident()?;
                i += 1;
            }
            _ => {}
        }
        out.push(Probe { kind, column });
        match sig.get(i) {
            None => return Some(out),
            Some(t) if t.is_punct(",") => i += 1,
            Some(_) => return None,
        }
    }
}

fn first_word(sig: &[Token<'_>]) -> String {
    sig.iter()
        .find(|t| t.kind == Kind::Word)
        .map(|t| t.text.to_ascii_uppercase())
        .unwrap_or_default()
}

/// Whether a statement only reads (executed right away inside a transaction block).
pub(super) fn is_read(sql: &str) -> bool {
    let tokens = tokenize(sql);
    let sig = significant(&tokens);
    match first_word(&sig).as_str() {
        "SELECT" | "VALUES" | "EXPLAIN" | "PRAGMA" => true,
        "WITH" => !sig
            .iter()
            .any(|t| t.is("INSERT") || t.is("UPDATE") || t.is("DELETE") || t.is("REPLACE")),
        _ => false,
    }
}

/// Whether a write returns rows (`RETURNING`).
pub(super) fn has_returning(sql: &str) -> bool {
    tokenize(sql).iter().any(|t| t.is("RETURNING"))
}

/// Whether a statement changes the schema.
pub(super) fn is_ddl(sql: &str) -> bool {
    let tokens = tokenize(sql);
    matches!(
        first_word(&significant(&tokens)).as_str(),
        "CREATE" | "DROP" | "ALTER"
    )
}

/// The command tag of a DDL or other non-row statement: `CREATE TABLE`, `DROP INDEX`,
/// `ALTER TABLE`, otherwise its first keyword.
pub(super) fn command_word(sql: &str) -> String {
    let tokens = tokenize(sql);
    let words: Vec<String> = significant(&tokens)
        .iter()
        .filter(|t| t.kind == Kind::Word)
        .take(4)
        .map(|t| t.text.to_ascii_uppercase())
        .collect();
    let Some(first) = words.first() else {
        return String::new();
    };
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => {
            let object = words[1..]
                .iter()
                .find(|w| !matches!(w.as_str(), "UNIQUE" | "TEMP" | "TEMPORARY" | "VIRTUAL"));
            match object {
                Some(o) => format!("{first} {o}"),
                None => first.clone(),
            }
        }
        _ => first.clone(),
    }
}

/// A parameter's number: `$n`/`?n` name the n-th; a bare `?` takes the next number.
fn param_numbers(tokens: &[Token<'_>]) -> Vec<Option<usize>> {
    let mut highest = 0;
    tokens
        .iter()
        .map(|t| {
            if t.kind != Kind::Param {
                return None;
            }
            let n = if t.text == "?" {
                highest + 1
            } else if let Some(digits) = t.text.strip_prefix(['$', '?']) {
                digits.parse::<usize>().ok()?
            } else {
                return None;
            };
            highest = highest.max(n);
            Some(n)
        })
        .collect()
}

/// The number of parameters a statement takes (its highest `$n`).
pub(super) fn param_count(sql: &str) -> usize {
    let tokens = tokenize(sql);
    param_numbers(&tokens)
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

/// Removes PostgreSQL casts on parameters (`$1::int8`, which SQLite cannot parse), keeping
/// the type as a hint for the parameter. Also notes `CAST($1 AS type)`.
pub(super) fn strip_param_casts(sql: &str) -> (String, Vec<(usize, Type)>) {
    let tokens = tokenize(sql);
    let numbers = param_numbers(&tokens);
    let mut out = String::with_capacity(sql.len());
    let mut hints = Vec::new();
    let mut copied = 0;
    let next_sig = |from: usize| (from..tokens.len()).find(|&j| tokens[j].significant());
    for (i, t) in tokens.iter().enumerate() {
        let Some(n) = numbers[i] else { continue };
        // $n :: type
        if let Some(op) = next_sig(i + 1).filter(|&j| tokens[j].is_punct("::"))
            && let Some((ty, end)) = type_name_at(&tokens, op + 1)
        {
            out.push_str(&sql[copied..t.end()]);
            copied = end;
            hints.push((n, ty));
            continue;
        }
        // CAST ( $n AS type )
        let prev: Vec<usize> = (0..i)
            .rev()
            .filter(|&j| tokens[j].significant())
            .take(2)
            .collect();
        if prev.len() == 2
            && tokens[prev[0]].is_punct("(")
            && tokens[prev[1]].is("CAST")
            && let Some(as_kw) = next_sig(i + 1).filter(|&j| tokens[j].is("AS"))
            && let Some((ty, _)) = type_name_at(&tokens, as_kw + 1)
        {
            hints.push((n, ty));
        }
    }
    out.push_str(&sql[copied..]);
    (out, hints)
}

/// A PostgreSQL type name starting at (or after whitespace from) `from`: the type and the
/// byte offset just past the name.
fn type_name_at(tokens: &[Token<'_>], from: usize) -> Option<(Type, usize)> {
    let idx: Vec<usize> = (from..tokens.len())
        .filter(|&j| tokens[j].significant())
        .take(4)
        .collect();
    let w = |k: usize| -> String {
        idx.get(k)
            .map(|&j| tokens[j])
            .filter(|t| t.kind == Kind::Word)
            .map(|t| t.text.to_ascii_lowercase())
            .unwrap_or_default()
    };
    let (name, used) = match (w(0).as_str(), w(1).as_str(), w(2).as_str(), w(3).as_str()) {
        ("double", "precision", _, _) => ("float8".to_owned(), 2),
        ("character", "varying", _, _) => ("varchar".to_owned(), 2),
        ("timestamp" | "time", "with", "time", "zone") => (format!("{}tz", w(0)), 4),
        ("timestamp" | "time", "without", "time", "zone") => (w(0), 4),
        (first, ..) if !first.is_empty() => (first.to_owned(), 1),
        _ => return None,
    };
    let ty = values::pg_type_by_name(&name)?;
    let mut end = tokens[idx[used - 1]].end();
    // varchar(20), numeric(10, 2)
    let mut j = idx[used - 1] + 1;
    while j < tokens.len() && !tokens[j].significant() {
        j += 1;
    }
    if j < tokens.len() && tokens[j].is_punct("(") {
        while j < tokens.len() && !tokens[j].is_punct(")") {
            j += 1;
        }
        end = tokens.get(j).map_or(end, Token::end);
    }
    Some((ty, end))
}

/// Looks up the declared type of a column in the tables a statement names.
pub(super) struct ColumnLookup<'f> {
    tables: Vec<(String, Vec<(String, String)>)>,
    fetch: &'f dyn Fn(&str) -> Vec<(String, String)>,
}

impl<'f> ColumnLookup<'f> {
    pub fn new(fetch: &'f dyn Fn(&str) -> Vec<(String, String)>) -> Self {
        Self {
            tables: Vec::new(),
            fetch,
        }
    }

    fn table(&mut self, name: &str) -> &[(String, String)] {
        let pos = match self
            .tables
            .iter()
            .position(|(t, _)| t.eq_ignore_ascii_case(name))
        {
            Some(p) => p,
            None => {
                let cols = (self.fetch)(name);
                self.tables.push((name.to_owned(), cols));
                self.tables.len() - 1
            }
        };
        &self.tables[pos].1
    }

    fn load(&mut self, names: &[String]) {
        for n in names {
            self.table(n);
        }
    }

    /// The declared type of `column` in the first loaded table that has it.
    pub fn decl(&self, column: &str) -> Option<&str> {
        self.tables.iter().find_map(|(_, cols)| {
            cols.iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(column))
                .map(|(_, d)| d.as_str())
        })
    }

    fn pg_type(&self, column: &str) -> Option<Type> {
        self.decl(column).and_then(values::pg_type_for_decl)
    }
}

/// Tables a statement reads or writes (after FROM, JOIN, UPDATE, INTO; comma lists after FROM).
fn table_names(sig: &[Token<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sig.len() {
        let t = sig[i];
        if t.is("FROM") || t.is("JOIN") || t.is("UPDATE") || t.is("INTO") {
            let mut j = i + 1;
            // UPDATE OR REPLACE t / INSERT OR IGNORE INTO handled by INTO
            if t.is("UPDATE") && sig.get(j).is_some_and(|t| t.is("OR")) {
                j += 2;
            }
            while let Some(name_tok) = sig.get(j) {
                let Some(mut name) = name_tok.ident() else {
                    break;
                };
                if name_tok.kind == Kind::Word && is_clause_keyword(name_tok) {
                    break;
                }
                // schema.table
                if sig.get(j + 1).is_some_and(|t| t.is_punct("."))
                    && let Some(n) = sig.get(j + 2).and_then(Token::ident)
                {
                    name = n;
                    j += 2;
                }
                out.push(name);
                j += 1;
                if !t.is("FROM") {
                    break;
                }
                // skip an alias, then continue a comma list
                if sig.get(j).is_some_and(|t| t.is("AS")) {
                    j += 2;
                } else if sig.get(j).is_some_and(|t| {
                    matches!(t.kind, Kind::Word | Kind::Quoted) && !is_clause_keyword(t)
                }) {
                    j += 1;
                }
                if sig.get(j).is_some_and(|t| t.is_punct(",")) {
                    j += 1;
                } else {
                    break;
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn is_clause_keyword(t: &Token<'_>) -> bool {
    const KEYWORDS: [&str; 24] = [
        "WHERE",
        "GROUP",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "HAVING",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "CROSS",
        "NATURAL",
        "ON",
        "USING",
        "SET",
        "VALUES",
        "SELECT",
        "DEFAULT",
        "RETURNING",
        "WINDOW",
    ];
    t.kind == Kind::Word && KEYWORDS.iter().any(|k| t.is(k))
}

fn is_comparison(t: &Token<'_>) -> bool {
    (t.kind == Kind::Punct && matches!(t.text, "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="))
        || t.is("LIKE")
        || t.is("GLOB")
        || t.is("IS")
}

/// An operator whose other operand gives a parameter its type: comparisons and arithmetic
/// (`balance - $1` takes `balance`'s type, as PostgreSQL infers it).
fn is_typing_operator(t: &Token<'_>) -> bool {
    is_comparison(t) || (t.kind == Kind::Punct && matches!(t.text, "+" | "-" | "*" | "/" | "%"))
}

/// The column named by the identifier at `sig[k]` (the last part of `a.b`), if it is one.
fn column_at(sig: &[Token<'_>], k: usize) -> Option<String> {
    let t = sig.get(k)?;
    if !matches!(t.kind, Kind::Word | Kind::Quoted)
        || (t.kind == Kind::Word && is_clause_keyword(t))
    {
        return None;
    }
    // not a function call
    if sig.get(k + 1).is_some_and(|n| n.is_punct("(")) {
        return None;
    }
    t.ident()
}

/// Guesses the types of a statement's `$n` parameters from context: the target columns of
/// `INSERT … VALUES`, comparisons (`col = $1`, `$1 < col`, `SET col = $1`), `IN (…)` lists,
/// `BETWEEN`, `LIMIT`/`OFFSET`. `None` where nothing tells.
pub(super) fn infer_param_types(
    sql: &str,
    count: usize,
    lookup: &mut ColumnLookup<'_>,
) -> Vec<Option<Type>> {
    let mut types: Vec<Option<Type>> = vec![None; count];
    if count == 0 {
        return types;
    }
    let tokens = tokenize(sql);
    let sig = significant(&tokens);
    let numbers = param_numbers(&sig);
    lookup.load(&table_names(&sig));
    let mut set = |n: usize, ty: Option<Type>| {
        if let (Some(slot), Some(ty)) = (n.checked_sub(1).and_then(|i| types.get_mut(i)), ty)
            && slot.is_none()
        {
            *slot = Some(ty);
        }
    };

    // INSERT INTO t [(cols)] VALUES (…), (…)
    if matches!(first_word(&sig).as_str(), "INSERT" | "REPLACE")
        && let Some(into) = sig.iter().position(|t| t.is("INTO"))
        && let Some(mut table) = sig.get(into + 1).and_then(Token::ident)
    {
        let mut j = into + 2;
        if sig.get(j).is_some_and(|t| t.is_punct("."))
            && let Some(n) = sig.get(j + 1).and_then(Token::ident)
        {
            table = n;
            j += 2;
        }
        if sig.get(j).is_some_and(|t| t.is("AS")) {
            j += 2;
        }
        let mut columns: Vec<String> = Vec::new();
        if sig.get(j).is_some_and(|t| t.is_punct("(")) {
            j += 1;
            while let Some(t) = sig.get(j) {
                j += 1;
                if t.is_punct(")") {
                    break;
                }
                if let Some(c) = t.ident() {
                    columns.push(c);
                }
            }
        } else {
            columns = lookup
                .table(&table)
                .iter()
                .map(|(c, _)| c.clone())
                .collect();
        }
        let decls: Vec<Option<Type>> = {
            let table_cols = lookup.table(&table).to_vec();
            columns
                .iter()
                .map(|c| {
                    table_cols
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(c))
                        .and_then(|(_, d)| values::pg_type_for_decl(d))
                })
                .collect()
        };
        if sig.get(j).is_some_and(|t| t.is("VALUES")) {
            j += 1;
            // tuples
            while sig.get(j).is_some_and(|t| t.is_punct("(")) {
                let mut depth = 0usize;
                let mut position = 0usize;
                let mut element: Vec<usize> = Vec::new();
                j += 1;
                while let Some(t) = sig.get(j) {
                    let close = t.is_punct(")") && depth == 0;
                    if (t.is_punct(",") && depth == 0) || close {
                        if let [only] = element.as_slice()
                            && let Some(n) = numbers[*only]
                        {
                            set(n, decls.get(position).cloned().flatten());
                        }
                        element.clear();
                        position += 1;
                        j += 1;
                        if close {
                            break;
                        }
                        continue;
                    }
                    if t.is_punct("(") {
                        depth += 1;
                    } else if t.is_punct(")") {
                        depth -= 1;
                    }
                    element.push(j);
                    j += 1;
                }
                if sig.get(j).is_some_and(|t| t.is_punct(",")) {
                    j += 1;
                } else {
                    break;
                }
            }
        }
    }

    // Paren groups: the index of the `(` enclosing each token.
    let mut enclosing: Vec<Option<usize>> = Vec::with_capacity(sig.len());
    let mut stack: Vec<usize> = Vec::new();
    for (k, t) in sig.iter().enumerate() {
        if t.is_punct(")") {
            stack.pop();
        }
        enclosing.push(stack.last().copied());
        if t.is_punct("(") {
            stack.push(k);
        }
    }

    for (k, n) in numbers.iter().enumerate() {
        let Some(n) = *n else { continue };
        let prev = |d: usize| k.checked_sub(d).and_then(|i| sig.get(i));
        // col <op> $n, col IS [NOT] $n, col NOT LIKE $n
        let op_at = if prev(1).is_some_and(|t| t.is("NOT")) && prev(2).is_some_and(|t| t.is("IS")) {
            k.checked_sub(2)
        } else {
            k.checked_sub(1)
        };
        if let Some(op) = op_at
            && is_typing_operator(&sig[op])
            && let Some(mut c) = op.checked_sub(1)
        {
            if sig[c].is("NOT") {
                c = c.saturating_sub(1);
            }
            if let Some(col) = column_at(&sig, c) {
                set(n, lookup.pg_type(&col));
            }
        }
        // $n <op> col
        if sig.get(k + 1).is_some_and(is_typing_operator)
            && let Some(col) = column_at(&sig, k + 2)
        {
            let qualified = sig.get(k + 3).is_some_and(|t| t.is_punct("."));
            let col = if qualified {
                column_at(&sig, k + 4)
            } else {
                Some(col)
            };
            if let Some(col) = col {
                set(n, lookup.pg_type(&col));
            }
        }
        // col BETWEEN $n AND $m
        if prev(1).is_some_and(|t| t.is("BETWEEN"))
            && let Some(col) = k.checked_sub(2).and_then(|c| column_at(&sig, c))
        {
            set(n, lookup.pg_type(&col));
        }
        if prev(1).is_some_and(|t| t.is("AND"))
            && prev(3).is_some_and(|t| t.is("BETWEEN"))
            && let Some(col) = k.checked_sub(4).and_then(|c| column_at(&sig, c))
        {
            set(n, lookup.pg_type(&col));
        }
        // LIMIT $n / OFFSET $n
        if prev(1).is_some_and(|t| t.is("LIMIT") || t.is("OFFSET")) {
            set(n, Some(Type::INT8));
        }
        // col [NOT] IN ($n, $m)
        if let Some(open) = enclosing[k]
            && open >= 2
            && sig[open - 1].is("IN")
        {
            let c = if sig[open - 2].is("NOT") {
                open.checked_sub(3)
            } else {
                Some(open - 2)
            };
            if let Some(col) = c.and_then(|c| column_at(&sig, c)) {
                set(n, lookup.pg_type(&col));
            }
        }
    }
    types
}

/// Best-effort types of the result columns of a `SELECT` whose columns SQLite cannot type
/// (expressions): `count(*)` is int8, `avg(x)` float8, `lower(x)` text, `max(col)` the
/// column's type, literals their own, `CAST(x AS t)` t. One entry per select-list item, or
/// `None` when the list cannot be read (e.g. `*`).
pub(super) fn select_item_types(
    sql: &str,
    lookup: &mut ColumnLookup<'_>,
    params: &[Type],
) -> Option<Vec<Option<Type>>> {
    let tokens = tokenize(sql);
    let sig = significant(&tokens);
    lookup.load(&table_names(&sig));
    // the first SELECT at depth 0
    let mut depth = 0i32;
    let mut start = None;
    for (k, t) in sig.iter().enumerate() {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
        } else if depth == 0 && t.is("SELECT") {
            start = Some(k + 1);
            break;
        }
    }
    let mut k = start?;
    if sig.get(k).is_some_and(|t| t.is("DISTINCT") || t.is("ALL")) {
        k += 1;
    }
    let mut items: Vec<Vec<Token<'_>>> = vec![Vec::new()];
    let mut depth = 0i32;
    while let Some(t) = sig.get(k) {
        if depth == 0 && (is_clause_keyword(t) || t.is("FROM")) && !t.is("DEFAULT") {
            break;
        }
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
        }
        if depth == 0 && t.is_punct(",") {
            items.push(Vec::new());
        } else if let Some(item) = items.last_mut() {
            item.push(*t);
        }
        k += 1;
    }
    // `*` and `t.*` expand to an unknown number of columns
    let is_star = |item: &Vec<Token<'_>>| match item.as_slice() {
        [star] => star.is_punct("*"),
        [.., dot, star] => star.is_punct("*") && dot.is_punct("."),
        _ => false,
    };
    if items.iter().any(|i| i.is_empty() || is_star(i)) {
        return None;
    }
    Some(
        items
            .iter()
            .map(|item| expr_type(strip_alias(item), lookup, params))
            .collect(),
    )
}

fn strip_alias<'t, 'a>(item: &'t [Token<'a>]) -> &'t [Token<'a>] {
    let mut depth = 0i32;
    for (k, t) in item.iter().enumerate() {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
        } else if depth == 0 && t.is("AS") && k > 0 {
            return &item[..k];
        }
    }
    if item.len() >= 2 {
        let last = item[item.len() - 1];
        let before = item[item.len() - 2];
        let alias_like = matches!(last.kind, Kind::Word | Kind::Quoted) && !last.is("END");
        let after_expr = before.is_punct(")")
            || matches!(
                before.kind,
                Kind::Word | Kind::Quoted | Kind::Number | Kind::Str
            );
        if alias_like && after_expr {
            return &item[..item.len() - 1];
        }
    }
    item
}

fn expr_type(expr: &[Token<'_>], lookup: &ColumnLookup<'_>, params: &[Type]) -> Option<Type> {
    let number_type = |t: &Token<'_>| {
        let lower = t.text.to_ascii_lowercase();
        if !lower.starts_with("0x") && (lower.contains('.') || lower.contains('e')) {
            Type::FLOAT8
        } else {
            Type::INT8
        }
    };
    match expr {
        [t] if t.kind == Kind::Number => return Some(number_type(t)),
        // a parameter selected as is has the parameter's type
        [t] if t.kind == Kind::Param => {
            let n: usize = t.text.strip_prefix(['$', '?'])?.parse().ok()?;
            return params.get(n.checked_sub(1)?).cloned();
        }
        [sign, t] if t.kind == Kind::Number && (sign.is_punct("-") || sign.is_punct("+")) => {
            return Some(number_type(t));
        }
        [t] if t.kind == Kind::Str => {
            return Some(if t.text.starts_with(['x', 'X']) {
                Type::BYTEA
            } else {
                Type::TEXT
            });
        }
        [t] if matches!(t.kind, Kind::Word | Kind::Quoted) => return lookup.pg_type(&t.ident()?),
        [_, dot, t] if dot.is_punct(".") => return lookup.pg_type(&t.ident()?),
        _ => {}
    }
    let (name, open) = match expr {
        [n, open, ..] if n.kind == Kind::Word && open.is_punct("(") => {
            (n.text.to_ascii_lowercase(), 1)
        }
        _ => return None,
    };
    if !expr.last()?.is_punct(")") {
        return None;
    }
    let args = &expr[open + 1..expr.len() - 1];
    // the type of a single column argument (first argument of coalesce/ifnull)
    let arg_column_type = || -> Option<Type> {
        let first_arg: Vec<Token<'_>> = {
            let mut depth = 0i32;
            args.iter()
                .take_while(|t| {
                    if t.is_punct("(") {
                        depth += 1;
                    } else if t.is_punct(")") {
                        depth -= 1;
                    }
                    !(depth == 0 && t.is_punct(","))
                })
                .copied()
                .collect()
        };
        let first_arg: &[Token<'_>] = match first_arg.as_slice() {
            [d, rest @ ..] if d.is("DISTINCT") => rest,
            all => all,
        };
        expr_type(first_arg, lookup, params)
    };
    match name.as_str() {
        "count" | "length" | "octet_length" | "char_length" | "instr" | "unicode" | "random"
        | "row_number" | "rank" | "dense_rank" | "ntile" | "sign" | "json_array_length" => {
            Some(Type::INT8)
        }
        "avg" | "total" | "round" | "stddev" | "variance" => Some(Type::FLOAT8),
        "lower" | "upper" | "substr" | "substring" | "trim" | "ltrim" | "rtrim" | "replace"
        | "printf" | "format" | "hex" | "quote" | "group_concat" | "string_agg" | "typeof"
        | "date" | "time" | "datetime" | "strftime" | "julianday_text" | "json" | "json_object"
        | "json_array" | "json_group_array" | "json_group_object" | "concat" | "concat_ws"
        | "char" | "gen_random_uuid" | "now" | "sqlite_version" | "soundex" => Some(Type::TEXT),
        "randomblob" | "zeroblob" | "unhex" => Some(Type::BYTEA),
        "exists" => Some(Type::BOOL),
        "sum" | "min" | "max" | "abs" | "coalesce" | "ifnull" | "nullif" | "first_value"
        | "last_value" | "lag" | "lead" => arg_column_type(),
        "cast" => {
            let as_kw = args.iter().rposition(|t| t.is("AS"))?;
            let decl: Vec<&str> = args[as_kw + 1..].iter().map(|t| t.text).collect();
            values::pg_type_for_decl(&decl.join(" "))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_literals_comments_and_trigger_bodies() {
        let q =
            "SELECT 'a;b'; -- c;d\n SELECT \"x;y\" FROM t /* ; */;;  ; INSERT INTO t VALUES (1)";
        assert_eq!(
            split(q),
            vec![
                "SELECT 'a;b'",
                "SELECT \"x;y\" FROM t",
                "INSERT INTO t VALUES (1)"
            ]
        );
        assert!(split("  ;; -- nothing\n").is_empty());
        let trig = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = CASE WHEN 1 THEN 2 END; DELETE FROM u; END; SELECT 1";
        assert_eq!(
            split(trig),
            vec![
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = CASE WHEN 1 THEN 2 END; DELETE FROM u; END",
                "SELECT 1"
            ]
        );
        assert_eq!(
            split("BEGIN; SELECT 1; END;"),
            vec!["BEGIN", "SELECT 1", "END"]
        );
        assert_eq!(split("select 'it''s';"), vec!["select 'it''s'"]);
    }

    #[test]
    fn classifies_control_session_probe_and_sql() {
        assert_eq!(classify("begin"), Command::Begin);
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Command::Begin
        );
        assert_eq!(classify("commit work"), Command::Commit);
        assert_eq!(classify("END"), Command::Commit);
        assert_eq!(classify("ROLLBACK"), Command::Rollback);
        assert!(matches!(
            classify("ROLLBACK TO SAVEPOINT a"),
            Command::Unsupported(_)
        ));
        assert_eq!(
            classify("SET client_encoding = 'UTF8'"),
            Command::Ignored("SET".into())
        );
        assert_eq!(
            classify("SHOW server_version"),
            Command::Show("server_version".into())
        );
        assert_eq!(
            classify("SHOW TRANSACTION ISOLATION LEVEL"),
            Command::Show("transaction_isolation".into())
        );
        assert_eq!(
            classify("SELECT version()"),
            Command::Probe(vec![Probe {
                kind: ProbeKind::Version,
                column: "version".into()
            }])
        );
        assert_eq!(
            classify("select pg_catalog.current_database() as db, current_user"),
            Command::Probe(vec![
                Probe {
                    kind: ProbeKind::CurrentDatabase,
                    column: "db".into()
                },
                Probe {
                    kind: ProbeKind::CurrentUser,
                    column: "current_user".into()
                }
            ])
        );
        assert_eq!(
            classify("SELECT current_setting('server_version_num')"),
            Command::Probe(vec![Probe {
                kind: ProbeKind::Setting("server_version_num".into()),
                column: "current_setting".into()
            }])
        );
        assert_eq!(classify("SELECT version FROM t"), Command::Sql);
        assert_eq!(classify("SELECT version() || 'x'"), Command::Sql);
        assert_eq!(classify("UPDATE t SET a = 1"), Command::Sql);
        assert!(matches!(
            classify("COPY t FROM STDIN"),
            Command::Unsupported(_)
        ));
    }

    #[test]
    fn reads_writes_and_tags() {
        assert!(is_read("select 1"));
        assert!(is_read("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!is_read(
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"
        ));
        assert!(!is_read("INSERT INTO t VALUES ('SELECT')"));
        assert!(has_returning("insert into t values (1) returning id"));
        assert!(!has_returning("insert into t values ('returning')"));
        assert_eq!(
            command_word("create unique index i on t(a)"),
            "CREATE INDEX"
        );
        assert_eq!(command_word("CREATE TEMP TABLE x (a)"), "CREATE TABLE");
        assert_eq!(command_word("drop table if exists x"), "DROP TABLE");
        assert_eq!(command_word("ANALYZE"), "ANALYZE");
    }

    #[test]
    fn strips_parameter_casts_and_counts_parameters() {
        let (sql, hints) = strip_param_casts(
            "SELECT * FROM t WHERE a = $1::int8 AND b = $2 :: character varying(20) AND c = '$3::x'",
        );
        assert_eq!(
            sql,
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = '$3::x'"
        );
        assert_eq!(hints, vec![(1, Type::INT8), (2, Type::VARCHAR)]);
        let (sql, hints) =
            strip_param_casts("SELECT CAST($1 AS INTEGER), $2::timestamp with time zone");
        assert_eq!(sql, "SELECT CAST($1 AS INTEGER), $2");
        assert_eq!(hints, vec![(1, Type::INT4), (2, Type::TIMESTAMPTZ)]);
        assert_eq!(param_count("SELECT $2, $1, $2"), 2);
        assert_eq!(param_count("SELECT ?, ?"), 2);
        assert_eq!(param_count("SELECT '$9'"), 0);
    }

    fn schema(table: &str) -> Vec<(String, String)> {
        let cols: &[(&str, &str)] = match table.to_ascii_lowercase().as_str() {
            "t" => &[
                ("id", "INTEGER"),
                ("name", "TEXT"),
                ("score", "REAL"),
                ("ok", "BOOLEAN"),
                ("data", "BLOB"),
            ],
            "u" => &[("uid", "BIGINT"), ("label", "VARCHAR(10)")],
            _ => &[],
        };
        cols.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn infer(sql: &str) -> Vec<Option<Type>> {
        let fetch = schema;
        let mut lookup = ColumnLookup::new(&fetch);
        infer_param_types(sql, param_count(sql), &mut lookup)
    }

    #[test]
    fn infers_parameter_types_from_context() {
        assert_eq!(
            infer("INSERT INTO t (name, id, data) VALUES ($1, $2, $3), ($4, 5, upper($5))"),
            vec![
                Some(Type::TEXT),
                Some(Type::INT8),
                Some(Type::BYTEA),
                Some(Type::TEXT),
                None
            ]
        );
        assert_eq!(
            infer("insert into main.t values ($1, $2, $3, $4, $5)"),
            vec![
                Some(Type::INT8),
                Some(Type::TEXT),
                Some(Type::FLOAT8),
                Some(Type::BOOL),
                Some(Type::BYTEA)
            ]
        );
        assert_eq!(
            infer("SELECT * FROM t WHERE id = $1 AND $2 < t.score AND name LIKE $3 LIMIT $4"),
            vec![
                Some(Type::INT8),
                Some(Type::FLOAT8),
                Some(Type::TEXT),
                Some(Type::INT8)
            ]
        );
        assert_eq!(
            infer("UPDATE t SET name = $1, ok = $2 WHERE id IN ($3, $4)"),
            vec![
                Some(Type::TEXT),
                Some(Type::BOOL),
                Some(Type::INT8),
                Some(Type::INT8)
            ]
        );
        assert_eq!(
            infer(
                "SELECT t.name FROM t JOIN u ON u.uid = t.id WHERE label = $1 AND uid BETWEEN $2 AND $3"
            ),
            vec![Some(Type::VARCHAR), Some(Type::INT8), Some(Type::INT8)]
        );
        assert_eq!(infer("SELECT $1"), vec![None]);
        assert_eq!(
            infer("SELECT * FROM t, u WHERE uid = $1"),
            vec![Some(Type::INT8)]
        );
    }

    #[test]
    fn types_select_expressions() {
        let fetch = schema;
        let mut lookup = ColumnLookup::new(&fetch);
        assert_eq!(
            select_item_types(
                "SELECT count(*), avg(score) AS a, lower(name) n, max(id), 1, 2.5, 'x', CAST(name AS INTEGER), exists(select 1), id + 1, $1 FROM t",
                &mut lookup,
                &[Type::INT4]
            ),
            Some(vec![
                Some(Type::INT8),
                Some(Type::FLOAT8),
                Some(Type::TEXT),
                Some(Type::INT8),
                Some(Type::INT8),
                Some(Type::FLOAT8),
                Some(Type::TEXT),
                Some(Type::INT8),
                Some(Type::BOOL),
                None,
                Some(Type::INT4)
            ])
        );
        assert_eq!(select_item_types("SELECT * FROM t", &mut lookup, &[]), None);
    }
}
