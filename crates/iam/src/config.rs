//! `[iam]` in the node config file.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct IamConfig {
    /// iam's API (tokens, JWKS, identities, authorize).
    pub port: u16,
    /// The `iss` of every token; verifiers accept only this issuer.
    pub issuer: String,
    /// Access-token lifetime. Revoking a credential stops new tokens at once; tokens already
    /// issued live at most this long.
    pub token_ttl_secs: u64,
    /// Failed logins allowed per principal per minute before answering 429.
    pub login_failures_per_minute: u32,
    /// 64 hex characters: the key that seals stored secrets. Default: the node's
    /// `secrets/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// 64 hex characters: the seed of the first signing key. Default: `secrets/signing.key`.
    pub signing_key_file: Option<PathBuf>,
    /// flaredb REST endpoint holding iam's namespace. Default: the node's own flaredb.
    pub flaredb_endpoint: Option<String>,
    pub flaredb_namespace: String,
    /// The namespace's password. Default: `secrets/iam-flaredb-password`, which `up` creates
    /// together with the namespace.
    pub flaredb_password_file: Option<PathBuf>,
    /// Refuse to start on generated or weak bootstrap secrets: the admin token, master key
    /// and signing key must each be given explicitly.
    pub production: bool,
}

impl Default for IamConfig {
    fn default() -> Self {
        Self {
            port: 8083,
            issuer: "ultracloud-iam".into(),
            token_ttl_secs: 900,
            login_failures_per_minute: 5,
            master_key_file: None,
            signing_key_file: None,
            flaredb_endpoint: None,
            flaredb_namespace: "iam".into(),
            flaredb_password_file: None,
            production: false,
        }
    }
}
