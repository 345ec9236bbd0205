//! A throwaway certificate authority for TLS tests: a CA, a server certificate and a client
//! certificate, written as PEM files (keys 0600) into a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestPki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by the same CA, for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A CA and a server certificate valid for `server_names` (DNS names or IP addresses).
    pub fn new(server_names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: with rcgen's default name on both, OpenSSL (libpq) takes
        // the leaf for self-signed and fails verification.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "UltraCloud test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names.clone()).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].clone());
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(server_names.iter().map(|n| n.to_string()).collect());
        let (client_cert, client_key) = leaf(vec!["client".into()]);
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert.pem()).expect("write CA");
        std::fs::write(path("server.pem"), server_cert).expect("write certificate");
        std::fs::write(path("client.pem"), client_cert).expect("write certificate");
        uc_runtime::secret::write_secret_file(&path("server.key"), server_key.as_bytes())
            .expect("write key");
        uc_runtime::secret::write_secret_file(&path("client.key"), client_key.as_bytes())
            .expect("write key");
        Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            _dir: dir,
        }
    }
}
