//! The PostgreSQL wire front-end against an in-memory `LocalBackend`: tokio-postgres (binary
//! formats, prepared statements, transactions), a raw protocol client (text formats, exact
//! messages and transaction status bytes) and the real `psql`.

use std::net::SocketAddr;
use std::sync::Arc;

use flaredb::backend::LocalBackend;
use flaredb::pgwire_server::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use uc_runtime::Shutdown;

const PASSWORD: &str = "app-secret-1";
const OTHER_PASSWORD: &str = "other-secret-2";

struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with_tls(None).await
    }

    async fn start_with_tls(
        tls: Option<Arc<pgwire::tokio::tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        let backend = Arc::new(LocalBackend::default());
        backend.add_namespace("app", PASSWORD);
        backend.add_namespace("other", OTHER_PASSWORD);
        let server = PgServer::bind("127.0.0.1:0".parse().unwrap(), backend, tls)
            .await
            .unwrap();
        let addr = server.local_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.addr.port())
            .user(user)
            .password(password)
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(db) = db {
            config.dbname(db);
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    async fn connect(&self) -> Client {
        self.connect_as("app", PASSWORD, Some("app"))
            .await
            .expect("app connects")
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test]
async fn typed_crud_with_parameters_and_error_codes() {
    let server = Server::start().await;
    let client = server.connect().await;

    client
        .batch_execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price REAL, \
             active BOOLEAN, data BLOB, note VARCHAR(20))",
        )
        .await
        .unwrap();
    let n = client
        .execute(
            "INSERT INTO items (id, name, price, active, data, note) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&1i64, &"apple", &1.5f64, &true, &vec![1u8, 2, 3], &None::<String>],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute(
            "INSERT INTO items (id, name, price, active) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)",
            &[
                &2i64, &"pear", &2.25f64, &false, &3i64, &"plum", &0.5f64, &true,
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);

    // Parameter and column types come from the schema.
    let stmt = client
        .prepare("SELECT id, name, price, active, data, note FROM items WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[Type::INT8]);
    let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![
            Type::INT8,
            Type::TEXT,
            Type::FLOAT8,
            Type::BOOL,
            Type::BYTEA,
            Type::VARCHAR
        ]
    );
    let row = client.query_one(&stmt, &[&1i64]).await.unwrap();
    assert_eq!(row.get::<_, i64>("id"), 1);
    assert_eq!(row.get::<_, &str>("name"), "apple");
    assert_eq!(row.get::<_, f64>("price"), 1.5);
    assert!(row.get::<_, bool>("active"));
    assert_eq!(row.get::<_, Vec<u8>>("data"), vec![1, 2, 3]);
    assert_eq!(row.get::<_, Option<String>>("note"), None);

    // Comparisons, IN lists and LIMIT type their parameters too; expressions are typed.
    let rows = client
        .query(
            "SELECT name FROM items WHERE price > $1 AND id IN ($2, $3) ORDER BY id LIMIT $4",
            &[&1.0f64, &1i64, &2i64, &10i64],
        )
        .await
        .unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["apple", "pear"]);
    let row = client
        .query_one(
            "SELECT count(*), max(price), lower(name) AS l FROM items WHERE active = $1",
            &[&true],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, f64>(1), 1.5);
    let _: &str = row.get("l");
    // A cast names the parameter's type (and the column's, when selected as is).
    let row = client
        .query_one(
            "SELECT $1::int4 AS n, CAST($2 AS INTEGER) + 1 AS m",
            &[&41i32, &1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>("n"), 41);
    assert_eq!(
        row.get::<_, &str>("m"),
        "2",
        "arithmetic on parameters is reported as text"
    );

    // UPDATE / DELETE report their row counts; RETURNING returns rows.
    assert_eq!(
        client
            .execute(
                "UPDATE items SET price = price * 2 WHERE active = $1",
                &[&true]
            )
            .await
            .unwrap(),
        2
    );
    let row = client
        .query_one(
            "INSERT INTO items (id, name) VALUES ($1, $2) RETURNING id, name",
            &[&4i64, &"fig"],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, &str>(1)), (4, "fig"));
    assert_eq!(
        client
            .execute("DELETE FROM items WHERE id >= $1", &[&3i64])
            .await
            .unwrap(),
        2
    );

    // Errors carry SQLSTATEs and leave the connection usable.
    let e = client
        .execute(
            "INSERT INTO items (id, name) VALUES ($1, $2)",
            &[&9i64, &"apple"],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNIQUE_VIOLATION), "{e:?}");
    let e = client.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::SYNTAX_ERROR), "{e:?}");
    let e = client.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::SYNTAX_ERROR), "{e:?}");
    let e = client
        .query("SELECT * FROM missing", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");
    let e = client
        .execute("INSERT INTO items (id) VALUES ($1)", &[&10i64])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::NOT_NULL_VIOLATION), "{e:?}");
    // Wrong parameter counts: caught by the driver against the described statement …
    let e = client
        .query("SELECT * FROM items WHERE id = $1", &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("parameters"), "{e}");
    // … and by the server when the client declares the types itself.
    let e = client
        .query_typed("SELECT $1, $2", &[(&1i64, Type::INT8)])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::PROTOCOL_VIOLATION), "{e:?}");
    // Several statements cannot be prepared as one.
    let e = client.prepare("SELECT 1; SELECT 2").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::SYNTAX_ERROR), "{e:?}");

    // query_typed: Parse with client types, Describe portal, binary results.
    let rows = client
        .query_typed(
            "SELECT name, price FROM items WHERE id = $1",
            &[(&1i64, Type::INT8)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "apple");
    assert_eq!(rows[0].get::<_, f64>(1), 3.0);

    // Probes and session commands clients send.
    let row = client.query_one("SELECT version()", &[]).await.unwrap();
    assert!(row.get::<_, &str>(0).starts_with("PostgreSQL 15.0"));
    let row = client
        .query_one("SELECT current_database(), current_user", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, &str>(0), row.get::<_, &str>(1)),
        ("app", "app")
    );
    client
        .batch_execute("SET application_name = 'x'; SET TIME ZONE 'UTC'")
        .await
        .unwrap();
    let row = client
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "serializable");
    let e = client.query("SHOW no_such_setting", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNDEFINED_OBJECT), "{e:?}");

    server.stop().await;
}

#[tokio::test]
async fn credentials_open_only_their_own_namespace() {
    let server = Server::start().await;
    let app = server.connect().await;
    app.batch_execute("CREATE TABLE secret (v TEXT); INSERT INTO secret VALUES ('app only')")
        .await
        .unwrap();

    for (user, password, db) in [
        ("app", "wrong password", Some("app")),
        ("nobody", PASSWORD, Some("nobody")),
        ("app", PASSWORD, Some("other")),
        ("other", PASSWORD, Some("other")),
    ] {
        let e = server
            .connect_as(user, password, db)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}/{db:?} must be refused"));
        assert_eq!(
            code(&e),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}/{db:?}: {e:?}"
        );
    }
    // The error names the user, like PostgreSQL's.
    let e = server
        .connect_as("app", "nope", Some("app"))
        .await
        .err()
        .unwrap();
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message() == "password authentication failed for user \"app\""),
        "{e}"
    );

    // Another namespace's own credential opens it, and it does not see app's tables.
    let other = server
        .connect_as("other", OTHER_PASSWORD, Some("other"))
        .await
        .unwrap();
    let e = other.query("SELECT * FROM secret", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNDEFINED_TABLE));
    // The database name may be omitted (it defaults to the user).
    let omitted = server.connect_as("app", PASSWORD, None).await.unwrap();
    let row = omitted
        .query_one("SELECT v FROM secret", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "app only");

    server.stop().await;
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn transaction_blocks_commit_atomically_or_not_at_all() {
    let server = Server::start().await;
    let mut client = server.connect().await;
    client
        .batch_execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, owner TEXT UNIQUE, balance INTEGER NOT NULL)")
        .await
        .unwrap();

    // A committed block applies all its writes; reads inside see committed state only.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO acct VALUES ($1, $2, $3)",
        &[&1i64, &"ann", &100i64],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO acct VALUES ($1, $2, $3)",
        &[&2i64, &"bob", &50i64],
    )
    .await
    .unwrap();
    let visible: i64 = tx
        .query_one("SELECT count(*) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 0, "queued writes are not visible before COMMIT");
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "acct").await, 2);

    // A block whose batch fails at COMMIT leaves nothing behind.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "UPDATE acct SET balance = balance - $1 WHERE id = $2",
        &[&30i64, &1i64],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO acct VALUES ($1, $2, $3)",
        &[&3i64, &"ann", &0i64],
    )
    .await
    .unwrap();
    let e = tx.commit().await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNIQUE_VIOLATION), "{e:?}");
    let balance: i64 = client
        .query_one("SELECT balance FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 100, "the failed block had no effect");
    assert_eq!(count(&client, "acct").await, 2);

    // ROLLBACK (here: dropping the transaction) discards the queued writes.
    {
        let tx = client.transaction().await.unwrap();
        tx.execute("DELETE FROM acct", &[]).await.unwrap();
    }
    assert_eq!(count(&client, "acct").await, 2);

    // An error inside a block aborts it: later statements get 25P02 until ROLLBACK.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO acct VALUES ($1, $2, $3)",
            &[&5i64, &"eve", &1i64],
        )
        .await
        .unwrap();
    let e = client
        .batch_execute("INSERT INTO nowhere VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNDEFINED_TABLE));
    let e = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        code(&e),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{e:?}"
    );
    let e = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        code(&e),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{e:?}"
    );
    // COMMIT of a failed block is a rollback.
    let msgs = client.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(0))
    ));
    assert_eq!(count(&client, "acct").await, 2);

    // A whole block in one query string, with DDL the later statements depend on.
    client
        .batch_execute(
            "BEGIN; CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT); \
             INSERT INTO log (msg) VALUES ('a'); INSERT INTO log (msg) VALUES ('b'); COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(count(&client, "log").await, 2);

    // Outside a block, a multi-statement query string is one implicit transaction.
    let e = client
        .batch_execute(
            "INSERT INTO log (msg) VALUES ('c'); INSERT INTO log (id, msg) VALUES (1, 'dup')",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(count(&client, "log").await, 2);

    // RETURNING cannot be answered before COMMIT.
    let tx = client.transaction().await.unwrap();
    let e = tx
        .query("INSERT INTO log (msg) VALUES ($1) RETURNING id", &[&"x"])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e:?}");
    tx.rollback().await.unwrap();

    server.stop().await;
}

#[tokio::test]
async fn simple_query_results_are_text_with_postgres_tags() {
    let server = Server::start().await;
    let client = server.connect().await;
    let msgs = client
        .simple_query(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price REAL, ok BOOLEAN, data BLOB); \
             INSERT INTO t VALUES (1, 'a;b', 1.5, 1, x'0102'), (2, NULL, 2.0, 0, NULL); \
             UPDATE t SET price = 3 WHERE id = 2; \
             SELECT id, name, price, ok, data, 1 + 1 AS two FROM t ORDER BY id; \
             DELETE FROM t WHERE id = 2",
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    let mut counts = Vec::new();
    for m in &msgs {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_owned))
                    .collect::<Vec<_>>(),
            ),
            SimpleQueryMessage::CommandComplete(n) => counts.push(*n),
            _ => {}
        }
    }
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![
            vec![s("1"), s("a;b"), s("1.5"), s("t"), s("\\x0102"), s("2")],
            vec![s("2"), None, s("3"), s("f"), None, s("2")],
        ]
    );
    assert_eq!(counts, vec![0, 2, 1, 2, 1]);
    // An empty query string is answered (EmptyQueryResponse, which tokio-postgres reports
    // as a zero count, as it does against PostgreSQL), not an error.
    for query in ["", " ; -- nothing\n"] {
        let empty = client.simple_query(query).await.unwrap();
        assert!(
            matches!(empty.as_slice(), [SimpleQueryMessage::CommandComplete(0)]),
            "{query:?}: {empty:?}"
        );
    }
    server.stop().await;
}

// ---- a raw protocol client, for text formats and exact protocol messages ----

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(val(*c)) << (18 - 6 * i))
        });
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let mut inner = pad(0x36);
    inner.extend_from_slice(msg);
    let mut outer = pad(0x5c);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

struct Raw {
    stream: TcpStream,
}

type Msg = (u8, Vec<u8>);

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Raw {
    async fn connect(addr: SocketAddr, user: &str, password: &str) -> Raw {
        let mut raw = Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
        };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", user)] {
            body.extend(cstr(k));
            body.extend(cstr(v));
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend(body);
        raw.stream.write_all(&startup).await.unwrap();

        let (t, m) = raw.recv().await;
        assert_eq!(
            (t, &m[..4]),
            (b'R', &10i32.to_be_bytes()[..]),
            "SASL offered"
        );
        let nonce = "rawclientnonce0123456789";
        let client_first_bare = format!("n=,r={nonce}");
        let mut sasl = cstr("SCRAM-SHA-256");
        let first = format!("n,,{client_first_bare}");
        sasl.extend((first.len() as i32).to_be_bytes());
        sasl.extend(first.as_bytes());
        raw.send(b'p', &sasl).await;
        let (t, m) = raw.recv().await;
        assert_eq!(
            (t, &m[..4]),
            (b'R', &11i32.to_be_bytes()[..]),
            "SASL continue"
        );
        let server_first = String::from_utf8(m[4..].to_vec()).unwrap();
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_owned()
        };
        let (r, salt, iterations) = (
            field("r"),
            unb64(&field("s")),
            field("i").parse::<usize>().unwrap(),
        );
        let salted =
            pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c=biws,r={r}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        raw.send(
            b'p',
            format!("{without_proof},p={}", b64(&proof)).as_bytes(),
        )
        .await;
        let (msgs, status) = raw.until_ready().await;
        assert!(
            msgs.iter()
                .any(|(t, m)| *t == b'R' && m[..4] == 0i32.to_be_bytes()),
            "AuthenticationOk"
        );
        assert!(
            msgs.iter()
                .any(|(t, m)| *t == b'S' && m.starts_with(b"server_version\0")),
            "server_version parameter"
        );
        assert_eq!(status, b'I');
        raw
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend(((body.len() + 4) as i32).to_be_bytes());
        msg.extend(body);
        self.stream.write_all(&msg).await.unwrap();
    }

    async fn recv(&mut self) -> Msg {
        let tag = self.stream.read_u8().await.unwrap();
        let len = self.stream.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    /// Messages up to ReadyForQuery, and its transaction status byte.
    async fn until_ready(&mut self) -> (Vec<Msg>, u8) {
        let mut out = Vec::new();
        loop {
            let (t, m) = self.recv().await;
            if t == b'Z' {
                return (out, m[0]);
            }
            out.push((t, m));
        }
    }

    async fn query(&mut self, sql: &str) -> (Vec<Msg>, u8) {
        self.send(b'Q', &cstr(sql)).await;
        self.until_ready().await
    }

    /// Parse (with parameter type OIDs), Bind (formats, values), Describe portal, Execute, Sync.
    async fn extended(
        &mut self,
        sql: &str,
        types: &[u32],
        param_formats: &[i16],
        params: &[Option<&[u8]>],
        result_formats: &[i16],
    ) -> (Vec<Msg>, u8) {
        let mut parse = cstr("");
        parse.extend(cstr(sql));
        parse.extend((types.len() as i16).to_be_bytes());
        for t in types {
            parse.extend(t.to_be_bytes());
        }
        self.send(b'P', &parse).await;
        let mut bind = cstr("");
        bind.extend(cstr(""));
        bind.extend((param_formats.len() as i16).to_be_bytes());
        for f in param_formats {
            bind.extend(f.to_be_bytes());
        }
        bind.extend((params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    bind.extend((v.len() as i32).to_be_bytes());
                    bind.extend(*v);
                }
                None => bind.extend((-1i32).to_be_bytes()),
            }
        }
        bind.extend((result_formats.len() as i16).to_be_bytes());
        for f in result_formats {
            bind.extend(f.to_be_bytes());
        }
        self.send(b'B', &bind).await;
        let mut describe = vec![b'P'];
        describe.extend(cstr(""));
        self.send(b'D', &describe).await;
        let mut execute = cstr("");
        execute.extend(0i32.to_be_bytes());
        self.send(b'E', &execute).await;
        self.send(b'S', &[]).await;
        self.until_ready().await
    }
}

/// Field (type OID, format code) pairs of a RowDescription.
fn row_description(body: &[u8]) -> Vec<(String, u32, i16)> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|b| *b == 0).unwrap();
        let name = String::from_utf8(body[at..end].to_vec()).unwrap();
        at = end + 1 + 4 + 2;
        let oid = u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4 + 2 + 4;
        let format = i16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
        out.push((name, oid, format));
    }
    out
}

fn data_row(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            (len >= 0).then(|| {
                let v = body[at..at + len as usize].to_vec();
                at += len as usize;
                v
            })
        })
        .collect()
}

fn tags(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter().map(|(t, _)| *t).collect()
}

fn command_complete(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'C')
        .map(|(_, m)| String::from_utf8(m[..m.len() - 1].to_vec()).unwrap())
        .collect()
}

fn error_code(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
}

#[tokio::test]
async fn raw_protocol_text_and_binary_formats_and_transaction_status() {
    let server = Server::start().await;
    let mut raw = Raw::connect(server.addr, "app", PASSWORD).await;

    let (msgs, status) = raw
        .query(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price REAL, ok BOOLEAN, data BLOB)",
        )
        .await;
    assert_eq!(
        (command_complete(&msgs), status),
        (vec!["CREATE TABLE".to_owned()], b'I')
    );

    // Text-format parameters (types inferred from the columns) and text results.
    let (msgs, status) = raw
        .extended(
            "INSERT INTO t (id, name, price, ok, data) VALUES ($1, $2, $3, $4, $5)",
            &[],
            &[],
            &[
                Some(b"7"),
                Some(b"seven"),
                Some(b"7.25"),
                Some(b"true"),
                Some(b"\\x00ff"),
            ],
            &[],
        )
        .await;
    assert_eq!(tags(&msgs), b"12nC", "{msgs:?}");
    assert_eq!(
        (command_complete(&msgs), status),
        (vec!["INSERT 0 1".to_owned()], b'I')
    );

    let (msgs, _) = raw
        .extended(
            "SELECT id, name, price, ok, data FROM t WHERE id = $1",
            &[],
            &[],
            &[Some(b"7")],
            &[],
        )
        .await;
    assert_eq!(tags(&msgs), b"12TDC");
    let desc = row_description(&msgs[2].1);
    assert_eq!(
        desc.iter()
            .map(|(_, oid, f)| (*oid, *f))
            .collect::<Vec<_>>(),
        vec![(20, 0), (25, 0), (701, 0), (16, 0), (17, 0)]
    );
    let row = data_row(&msgs[3].1);
    let text: Vec<Option<String>> = row
        .into_iter()
        .map(|v| v.map(|b| String::from_utf8(b).unwrap()))
        .collect();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        text,
        vec![s("7"), s("seven"), s("7.25"), s("t"), s("\\x00ff")]
    );
    assert_eq!(command_complete(&msgs), vec!["SELECT 1".to_owned()]);

    // Binary parameters with client-declared types (int4, float4) and mixed result formats.
    let (msgs, _) = raw
        .extended(
            "SELECT id, name, price FROM t WHERE id = $1 AND price > $2",
            &[23, 700],
            &[1],
            &[Some(&7i32.to_be_bytes()), Some(&1.0f32.to_be_bytes())],
            &[1, 0, 1],
        )
        .await;
    assert_eq!(tags(&msgs), b"12TDC", "{msgs:?}");
    let desc = row_description(&msgs[2].1);
    assert_eq!(
        desc.iter()
            .map(|(_, oid, f)| (*oid, *f))
            .collect::<Vec<_>>(),
        vec![(20, 1), (25, 0), (701, 1)]
    );
    let row = data_row(&msgs[3].1);
    assert_eq!(row[0].as_deref(), Some(&7i64.to_be_bytes()[..]));
    assert_eq!(row[1].as_deref(), Some(&b"seven"[..]));
    assert_eq!(row[2].as_deref(), Some(&7.25f64.to_be_bytes()[..]));

    // A bad text parameter is a clean error.
    let (msgs, status) = raw
        .extended(
            "SELECT name FROM t WHERE id = $1",
            &[],
            &[],
            &[Some(b"seven")],
            &[],
        )
        .await;
    assert_eq!(
        (error_code(&msgs).as_deref(), status),
        (Some("22P02"), b'I')
    );

    // ReadyForQuery tracks the transaction block: T, then E after an error, I after ROLLBACK.
    let (_, status) = raw.query("BEGIN").await;
    assert_eq!(status, b'T');
    let (msgs, status) = raw.query("INSERT INTO t (id) VALUES (8)").await;
    assert_eq!(
        (command_complete(&msgs), status),
        (vec!["INSERT 0 0".to_owned()], b'T')
    );
    let (msgs, status) = raw.query("SELECT * FROM nowhere").await;
    assert_eq!(
        (error_code(&msgs).as_deref(), status),
        (Some("42P01"), b'E')
    );
    let (msgs, status) = raw.query("SELECT 1").await;
    assert_eq!(
        (error_code(&msgs).as_deref(), status),
        (Some("25P02"), b'E')
    );
    let (msgs, status) = raw.extended("SELECT 1", &[], &[], &[], &[]).await;
    assert_eq!(
        (error_code(&msgs).as_deref(), status),
        (Some("25P02"), b'E')
    );
    let (msgs, status) = raw.query("ROLLBACK").await;
    assert_eq!(
        (command_complete(&msgs), status),
        (vec!["ROLLBACK".to_owned()], b'I')
    );
    let (msgs, _) = raw.query("SELECT count(*) FROM t").await;
    assert_eq!(data_row(&msgs[1].1)[0].as_deref(), Some(&b"1"[..]));

    // A failing COMMIT reports the error and ends the block.
    let (_, status) = raw
        .query("BEGIN; INSERT INTO t (id) VALUES (9); INSERT INTO t (id) VALUES (7)")
        .await;
    assert_eq!(status, b'T');
    let (msgs, status) = raw.query("COMMIT").await;
    assert_eq!(
        (error_code(&msgs).as_deref(), status),
        (Some("23505"), b'I')
    );
    let (msgs, _) = raw.query("SELECT count(*) FROM t").await;
    assert_eq!(data_row(&msgs[1].1)[0].as_deref(), Some(&b"1"[..]));

    // Empty queries, notices for stray COMMIT, several results in one string.
    let (msgs, status) = raw.query("").await;
    assert_eq!((tags(&msgs), status), (b"I".to_vec(), b'I'));
    let (msgs, _) = raw.query("COMMIT").await;
    assert_eq!(tags(&msgs), b"NC");
    let (msgs, _) = raw.query("SELECT 1 AS a; SELECT 'x' AS b, 2.5 AS c").await;
    assert_eq!(tags(&msgs), b"TDCTDC");
    let desc = row_description(&msgs[3].1);
    assert_eq!(
        desc,
        vec![("b".to_owned(), 25, 0), ("c".to_owned(), 701, 0)]
    );
    server.stop().await;
}

// ---- psql ----

async fn psql(server: &Server, args: &[&str]) -> std::process::Output {
    let port = server.addr.port().to_string();
    tokio::process::Command::new("/usr/bin/psql")
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-d",
            "app",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(args)
        .output()
        .await
        .expect("/usr/bin/psql runs (Debian package postgresql-client)")
}

#[tokio::test]
async fn psql_creates_inserts_selects_and_shows_sqlstates() {
    let server = Server::start().await;

    let out = psql(
        &server,
        &[
            "-c",
            "CREATE TABLE fruit (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, price REAL)",
            "-c",
            "INSERT INTO fruit VALUES (1, 'apple', 1.25), (2, 'pear', 2)",
            "-c",
            "SELECT id, name, price FROM fruit ORDER BY id",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CREATE TABLE"), "{stdout}");
    assert!(stdout.contains("INSERT 0 2"), "{stdout}");
    assert!(stdout.contains(" id | name  | price"), "{stdout}");
    assert!(stdout.contains("  1 | apple |  1.25"), "{stdout}");
    assert!(stdout.contains("  2 | pear  |     2"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    // Unaligned, tuples only: exact values; a transaction block in one -c.
    let out = psql(
        &server,
        &[
            "-A",
            "-t",
            "-c",
            "BEGIN; UPDATE fruit SET price = price + 1 WHERE id = 1; COMMIT",
            "-c",
            "SELECT name || '=' || price FROM fruit WHERE id = 1",
            "-c",
            "SHOW server_version",
            "-c",
            "SELECT current_database()",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "BEGIN",
            "UPDATE 1",
            "COMMIT",
            "apple=2.25",
            "15.0 (flaredb)",
            "app"
        ]
    );

    // A unique violation: psql reports it with its SQLSTATE and fails (ON_ERROR_STOP).
    let out = psql(
        &server,
        &[
            "-c",
            "\\set VERBOSITY verbose",
            "-c",
            "INSERT INTO fruit VALUES (3, 'apple', 0)",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ERROR:  23505:"), "{stderr}");
    assert!(stderr.contains("UNIQUE constraint failed"), "{stderr}");

    // A wrong password is refused with PostgreSQL's message.
    let out = tokio::process::Command::new("/usr/bin/psql")
        .env("PGPASSWORD", "wrong")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.addr.port().to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-X",
            "-c",
            "SELECT 1",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed for user \"app\""),
        "{stderr}"
    );

    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let server = Server::start().await;
    let client = server.connect().await;
    client.query_one("SELECT 1", &[]).await.unwrap();
    let addr = server.addr;
    server.stop().await;
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "connection closed"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    // A taken port is reported by bind.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Arc::new(LocalBackend::default());
    assert!(
        PgServer::bind(taken.local_addr().unwrap(), backend, None)
            .await
            .is_err()
    );
}

/// With a certificate, psql connects over TLS and verifies the server (`verify-full`); the
/// session reports SSL in use.
#[tokio::test]
async fn psql_connects_over_tls_when_a_certificate_is_configured() {
    let pki = uc_testkit::pki::TestPki::new(&["localhost"]);
    let tls = uc_runtime::tls::server_config(&uc_runtime::tls::TlsConfig {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: None,
        trusted_ca_file: None,
    })
    .unwrap();
    let server = Server::start_with_tls(Some(tls)).await;
    let conninfo = format!(
        "host=localhost port={} user=app dbname=app sslmode=verify-full sslrootcert={}",
        server.addr.port(),
        pki.ca.display()
    );
    let out = tokio::process::Command::new("/usr/bin/psql")
        .env("PGPASSWORD", PASSWORD)
        .args([
            &conninfo,
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 40 + 2",
            "-c",
            "\\conninfo",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("42\n"), "{stdout}");
    assert!(
        stdout.contains("SSL connection (protocol: TLSv1.3"),
        "{stdout}"
    );

    // A client that trusts another CA refuses the server.
    let other = uc_testkit::pki::TestPki::new(&["localhost"]);
    let conninfo = format!(
        "host=localhost port={} user=app dbname=app sslmode=verify-full sslrootcert={}",
        server.addr.port(),
        other.ca.display()
    );
    let out = tokio::process::Command::new("/usr/bin/psql")
        .env("PGPASSWORD", PASSWORD)
        .args([&conninfo, "-X", "-c", "SELECT 1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    server.stop().await;
}
