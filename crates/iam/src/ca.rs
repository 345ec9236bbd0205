//! The internal certificate authority: mTLS identities for services and nodes.
//!
//! Rotation is overlap-and-cutover: `rotate` makes a new CA the issuer while the old one stays
//! in the trust bundle (`previous`), so certificates from both are accepted while services are
//! re-issued; `retire` removes the old CA from the bundle (the cutover), after which its
//! certificates are refused by everyone who reloads the bundle.

use flaredb::client::{FlaredbClient, params};
use flaredb::sql::Statement;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::crypto::{self, MasterKey};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cas (id TEXT PRIMARY KEY, name TEXT NOT NULL, cert_pem TEXT NOT NULL, private_key TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('active', 'previous', 'retired')), created_at INTEGER NOT NULL, rotated_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS certificates (id TEXT PRIMARY KEY, ca_id TEXT NOT NULL, name TEXT NOT NULL, sans TEXT NOT NULL, issued_at INTEGER NOT NULL, not_after INTEGER NOT NULL)",
];

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CaView {
    pub id: String,
    pub name: String,
    /// `active` issues; `previous` is still trusted; `retired` is gone from the bundle.
    pub state: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
    pub cert_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueCertificate {
    /// The identity (certificate common name), e.g. `plasmavmc` or `node-1`.
    pub name: String,
    /// DNS names and IP addresses the certificate is valid for.
    pub sans: Vec<String>,
    /// Validity in days (1–825, default 90).
    pub days: Option<u32>,
}

/// A new identity: the private key is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCertificate {
    pub id: String,
    pub ca_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CAs to trust (active and previous), for the peer side of mTLS.
    pub ca_bundle_pem: String,
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "UltraCloud");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn unix(t: time::OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub struct Ca<'a> {
    pub db: &'a FlaredbClient,
    pub master: &'a MasterKey,
}

#[derive(Deserialize)]
struct Row {
    id: String,
    name: String,
    cert_pem: String,
    private_key: String,
    state: String,
    created_at: i64,
    rotated_at: Option<i64>,
}

impl Ca<'_> {
    fn unavailable(e: impl std::fmt::Display) -> CaError {
        CaError::Unavailable(format!("certificate authority: {e}"))
    }

    async fn rows(&self) -> Result<Vec<Row>, CaError> {
        self.db
            .query(
                "SELECT id, name, cert_pem, private_key, state, created_at, rotated_at FROM cas ORDER BY created_at, id",
                vec![],
            )
            .await
            .map_err(Self::unavailable)
    }

    /// A new CA: its self-signed certificate and its sealed key, as an INSERT.
    fn new_ca(&self, state: &str) -> Result<Statement, CaError> {
        let id = format!("ca-{}", crypto::random_hex(6));
        let name = format!("UltraCloud CA {id}");
        let key = KeyPair::generate().map_err(Self::unavailable)?;
        let mut params = ca_params(&name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(Self::unavailable)?;
        let sealed = self
            .master
            .seal(&format!("ca:{id}"), key.serialize_pem().as_bytes());
        Ok(Statement::with_params(
            "INSERT INTO cas (id, name, cert_pem, private_key, state, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            params![&id, name, cert.pem(), sealed, state, unix(now)],
        ))
    }

    /// Creates the first CA if there is none.
    pub async fn init(&self) -> Result<(), CaError> {
        if self.rows().await?.is_empty() {
            self.db
                .batch(vec![self.new_ca("active")?])
                .await
                .map_err(Self::unavailable)?;
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<CaView>, CaError> {
        Ok(self
            .rows()
            .await?
            .into_iter()
            .map(|r| CaView {
                id: r.id,
                name: r.name,
                state: r.state,
                created_at: r.created_at,
                rotated_at: r.rotated_at,
                cert_pem: r.cert_pem,
            })
            .collect())
    }

    /// The trust bundle: the active and previous CA certificates.
    pub async fn bundle(&self) -> Result<String, CaError> {
        Ok(self
            .rows()
            .await?
            .into_iter()
            .filter(|r| r.state != "retired")
            .map(|r| r.cert_pem)
            .collect::<Vec<_>>()
            .join(""))
    }

    pub async fn issue(&self, req: IssueCertificate) -> Result<IssuedCertificate, CaError> {
        crate::catalog::check_name("certificate", &req.name).map_err(CaError::Invalid)?;
        if req.sans.is_empty() || req.sans.len() > 20 {
            return Err(CaError::Invalid(
                "give 1 to 20 subject alternative names (DNS names or IP addresses)".into(),
            ));
        }
        for san in &req.sans {
            let ok = san.parse::<std::net::IpAddr>().is_ok()
                || (!san.is_empty()
                    && san.len() <= 253
                    && san
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !ok {
                return Err(CaError::Invalid(format!(
                    "subject alternative name {:?} is neither a DNS name nor an IP address",
                    san.chars().take(100).collect::<String>()
                )));
            }
        }
        let days = req.days.unwrap_or(90);
        if !(1..=825).contains(&days) {
            return Err(CaError::Invalid("days must be between 1 and 825".into()));
        }
        let rows = self.rows().await?;
        let Some(active) = rows.iter().rev().find(|r| r.state == "active") else {
            return Err(CaError::Unavailable("no active CA".into()));
        };
        let ca_key_pem = self
            .master
            .open(&format!("ca:{}", active.id), &active.private_key)
            .map_err(Self::unavailable)?;
        let ca_key =
            KeyPair::from_pem(&String::from_utf8_lossy(&ca_key_pem)).map_err(Self::unavailable)?;
        // The issuer is rebuilt from the CA's name and key: that is all a signature needs
        // (issuer name, and the key identifier derived from the public key).
        let issuer = Issuer::new(ca_params(&active.name), ca_key);

        let key = KeyPair::generate().map_err(Self::unavailable)?;
        let mut params = CertificateParams::new(req.sans.clone())
            .map_err(|e| CaError::Invalid(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, &req.name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(days.into());
        let cert = params.signed_by(&key, &issuer).map_err(Self::unavailable)?;
        let id = format!("crt-{}", crypto::random_hex(8));
        self.db
            .execute(
                "INSERT INTO certificates (id, ca_id, name, sans, issued_at, not_after) VALUES ($1, $2, $3, $4, $5, $6)",
                params![
                    &id,
                    &active.id,
                    &req.name,
                    req.sans.join(","),
                    unix(now),
                    unix(params.not_after)
                ],
            )
            .await
            .map_err(Self::unavailable)?;
        Ok(IssuedCertificate {
            id,
            ca_id: active.id.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_bundle_pem: self.bundle().await?,
            not_after: unix(params.not_after),
        })
    }

    /// A new issuing CA; the current one stays trusted as `previous` until retired.
    pub async fn rotate(&self) -> Result<(), CaError> {
        let now = unix(time::OffsetDateTime::now_utc());
        self.db
            .batch(vec![
                Statement::with_params(
                    "UPDATE cas SET state = 'previous', rotated_at = $1 WHERE state = 'active'",
                    params![now],
                ),
                self.new_ca("active")?,
            ])
            .await
            .map_err(Self::unavailable)?;
        Ok(())
    }

    /// The cutover: a previous CA leaves the trust bundle.
    pub async fn retire(&self, id: &str) -> Result<(), CaError> {
        let rows = self.rows().await?;
        let Some(row) = rows.iter().find(|r| r.id == id) else {
            return Err(CaError::NotFound(format!("CA {id:?} not found")));
        };
        if row.state != "previous" {
            return Err(CaError::Conflict(format!(
                "CA {id} is {}; only a previous (rotated-out) CA can be retired",
                row.state
            )));
        }
        self.db
            .execute(
                "UPDATE cas SET state = 'retired' WHERE id = $1",
                params![id],
            )
            .await
            .map_err(Self::unavailable)?;
        Ok(())
    }
}
