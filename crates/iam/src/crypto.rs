//! Secrets at rest: everything iam stores that could authenticate someone (password hashes,
//! credential digests, signing keys) is sealed with the 32-byte master key
//! (ChaCha20-Poly1305, random nonce, the record's identity as associated data so a sealed
//! value cannot be moved to another record).

use argon2::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uc_runtime::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key: {0}")]
    BadKey(String),
    #[error("stored secret cannot be opened (wrong master key or tampered record)")]
    Open,
    #[error("password hashing: {0}")]
    Hash(String),
}

pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl MasterKey {
    /// From the master key file's contents: 64 hex characters (32 bytes).
    pub fn from_hex(text: &Secret<String>) -> Result<Self, CryptoError> {
        let hex = text.expose().trim();
        if hex.len() != 64 {
            return Err(CryptoError::BadKey(format!(
                "must be 64 hex characters (32 bytes), got {} characters",
                hex.len()
            )));
        }
        let bytes = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| CryptoError::BadKey("not hexadecimal".into()))?;
        if bytes.iter().all(|b| *b == bytes[0]) {
            return Err(CryptoError::BadKey(
                "too weak (all bytes equal); generate 32 random bytes".into(),
            ));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| CryptoError::BadKey("rejected by the cipher".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Seals `plain`, bound to `context` (e.g. the record id); text form for a TEXT column.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("v1:{}", B64.encode(out))
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let data = sealed
            .strip_prefix("v1:")
            .and_then(|b| B64.decode(b).ok())
            .ok_or(CryptoError::Open)?;
        if data.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An argon2id hash in PHC form (salt and parameters inside).
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .expect("system randomness");
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Credentials are long random secrets, so a fast digest is enough (no brute force against
/// 256 bits); the digest is what gets sealed and stored.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// PKCS#8 v1 (RFC 8410) for an Ed25519 seed, so a seed file becomes a signing key.
pub fn ed25519_pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

/// A 32-byte value from a hex secret file (the signing-key seed).
pub fn seed_from_hex(text: &Secret<String>) -> Result<[u8; 32], CryptoError> {
    let hex = text.expose().trim();
    if hex.len() != 64 {
        return Err(CryptoError::BadKey(format!(
            "signing key seed must be 64 hex characters (32 bytes), got {}",
            hex.len()
        )));
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| CryptoError::BadKey("signing key seed is not hexadecimal".into()))?;
    }
    if out.iter().all(|b| *b == out[0]) {
        return Err(CryptoError::BadKey(
            "signing key seed is too weak (all bytes equal)".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_hex(&Secret::new(random_hex(32))).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = key();
        let sealed = k.seal("usr-1", b"secret");
        assert!(!sealed.contains("secret"));
        assert_eq!(k.open("usr-1", &sealed).unwrap(), b"secret");
        assert!(k.open("usr-2", &sealed).is_err(), "moved to another record");
        assert!(key().open("usr-1", &sealed).is_err(), "another master key");
        // Flip one bit of the ciphertext (editing the base64 text could hit unused bits).
        let mut raw = B64.decode(sealed.strip_prefix("v1:").unwrap()).unwrap();
        let middle = raw.len() / 2;
        raw[middle] ^= 0x01;
        let tampered = format!("v1:{}", B64.encode(raw));
        assert!(k.open("usr-1", &tampered).is_err());
        assert_ne!(k.seal("usr-1", b"secret"), sealed, "fresh nonce each time");
    }

    #[test]
    fn weak_or_malformed_master_keys_are_refused() {
        for bad in ["", "abcd", &"0".repeat(64), &"zz".repeat(32)] {
            assert!(MasterKey::from_hex(&Secret::new(bad.to_string())).is_err());
        }
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
