//! TLS with rustls (ring provider): server configs from PEM files, optional client-certificate
//! verification for mutually authenticated listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[http.tls]`: serve TLS with this certificate.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (mode 0600).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of these PEM CAs.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// PEM CAs this node trusts (besides the system's) when it calls other nodes over TLS,
    /// e.g. the CA that signed every node's certificate.
    #[serde(default)]
    pub trusted_ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    KeyFile(#[from] crate::secret::SecretFileError),
    #[error("invalid TLS configuration: {0}")]
    Invalid(String),
}

/// Installs ring as the process's rustls provider (idempotent). Everything that builds a
/// rustls config calls this first.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Read {
        what: "certificate file",
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificates in file".to_owned()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // A private key is a secret: same permission rule as every secret file.
    crate::secret::read_secret_file(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "private key file",
        path: path.to_owned(),
        message: e.to_string(),
    })
}

pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    ensure_crypto_provider();
    let certs = load_certs(&cfg.cert_file)?;
    let key = load_key(&cfg.key_file)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
