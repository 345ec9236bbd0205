//! What the protocol front-ends (REST, PostgreSQL wire) need from flaredb: credentials and
//! SQL execution per namespace. The real implementation is the namespace registry; tests of a
//! front-end can use [`LocalBackend`], one unreplicated engine per namespace.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::sql::determinism::{self, Pinned};
use crate::sql::engine::{Engine, LogStatement, SqlCommand};
use crate::sql::{Column, SqlError, Statement, StatementResult, sqlstate};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A namespace credential as SCRAM-SHA-256 stores it: the salt, the iteration count and the
/// salted password (`Hi(password, salt, i)`). The password itself is never kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScramSecret {
    pub salt: Vec<u8>,
    pub iterations: usize,
    pub salted_password: Vec<u8>,
}

pub const SCRAM_ITERATIONS: usize = 4096;

impl ScramSecret {
    /// Derives the secret for `password` with a fresh random salt.
    pub fn derive(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Self {
            salted_password: pgwire::api::auth::sasl::scram::gen_salted_password(
                password,
                &salt,
                SCRAM_ITERATIONS,
            ),
            salt: salt.to_vec(),
            iterations: SCRAM_ITERATIONS,
        }
    }

    /// Whether `password` is the one this secret was derived from (constant-time compare).
    pub fn verify(&self, password: &str) -> bool {
        let candidate = pgwire::api::auth::sasl::scram::gen_salted_password(
            password,
            &self.salt,
            self.iterations,
        );
        candidate.len() == self.salted_password.len()
            && candidate
                .iter()
                .zip(&self.salted_password)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

pub trait SqlBackend: Send + Sync + 'static {
    /// The credential of a namespace (`None`: no such namespace). The PostgreSQL user name
    /// is the namespace name.
    fn scram_secret(&self, namespace: &str) -> Option<ScramSecret>;

    /// Runs a request (one transaction) in a namespace.
    fn execute<'a>(
        &'a self,
        namespace: &'a str,
        statements: Vec<Statement>,
    ) -> BoxFuture<'a, Result<Vec<StatementResult>, SqlError>>;

    /// Parameter count and result columns of a statement (extended query Describe).
    fn describe(&self, namespace: &str, sql: &str) -> Result<(usize, Vec<Column>), SqlError>;

    /// `(column name, declared type)` of a table, for parameter type inference.
    fn table_columns(&self, namespace: &str, table: &str) -> Vec<(String, String)>;
}

pub(crate) fn undefined_namespace(name: &str) -> SqlError {
    SqlError::new(
        sqlstate::UNDEFINED_NAMESPACE,
        format!("namespace \"{name}\" does not exist"),
    )
}

/// Turns a request into the replicated command (rewritten for determinism, values pinned).
pub(crate) fn to_command(statements: &[Statement]) -> Result<SqlCommand, SqlError> {
    let mut out = Vec::with_capacity(statements.len());
    for (i, st) in statements.iter().enumerate() {
        determinism::check_writable(&st.sql).map_err(|e| e.at(i))?;
        out.push(LogStatement {
            sql: determinism::rewrite(&st.sql).map_err(|e| e.at(i))?,
            params: st.params.iter().map(Into::into).collect(),
        });
    }
    Ok(SqlCommand {
        statements: out,
        pinned: Pinned::now(),
    })
}

/// Unreplicated namespaces in memory, for front-end tests.
#[derive(Default)]
pub struct LocalBackend {
    namespaces: Mutex<HashMap<String, (ScramSecret, Arc<Engine>)>>,
}

impl LocalBackend {
    pub fn add_namespace(&self, name: &str, password: &str) {
        self.namespaces.lock().unwrap().insert(
            name.to_owned(),
            (ScramSecret::derive(password), Arc::new(Engine::new())),
        );
    }

    fn engine(&self, name: &str) -> Result<Arc<Engine>, SqlError> {
        self.namespaces
            .lock()
            .unwrap()
            .get(name)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| undefined_namespace(name))
    }
}

impl SqlBackend for LocalBackend {
    fn scram_secret(&self, namespace: &str) -> Option<ScramSecret> {
        self.namespaces
            .lock()
            .unwrap()
            .get(namespace)
            .map(|(s, _)| s.clone())
    }

    fn execute<'a>(
        &'a self,
        namespace: &'a str,
        statements: Vec<Statement>,
    ) -> BoxFuture<'a, Result<Vec<StatementResult>, SqlError>> {
        Box::pin(async move {
            let engine = self.engine(namespace)?;
            if let Some(read) = engine.try_read(&statements)? {
                return Ok(read);
            }
            let command = to_command(&statements)?;
            Ok(engine
                .apply(&command)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    fn describe(&self, namespace: &str, sql: &str) -> Result<(usize, Vec<Column>), SqlError> {
        self.engine(namespace)?.describe(sql)
    }

    fn table_columns(&self, namespace: &str, table: &str) -> Vec<(String, String)> {
        self.engine(namespace)
            .map(|e| e.table_columns(table))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_secrets_verify_only_their_password() {
        let s = ScramSecret::derive("correct horse");
        assert!(s.verify("correct horse"));
        assert!(!s.verify("correct horsE"));
        assert_ne!(
            ScramSecret::derive("correct horse").salt,
            s.salt,
            "fresh salt each time"
        );
    }
}
