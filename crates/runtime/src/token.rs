//! UltraCloud access tokens, written once for every service.
//!
//! - iam signs them: [`SigningKey`] (Ed25519) turns [`Claims`] into a JWT (`alg: EdDSA`, header
//!   `kid`) and publishes its public half as a [`Jwk`] in the set served at `GET /v1/jwks`.
//! - Every service verifies them offline: [`Verifier`] checks signature, issuer, audience and
//!   time window against a cached [`JwkSet`]; [`JwksAuthenticator`] is the auth hook
//!   ([`crate::auth::Authenticator`]) that keeps that cache filled from iam.
//! - Handlers check permissions with [`crate::auth::Principal::allows`] /
//!   [`crate::auth::Principal::require`], which match the token's patterns with
//!   [`permission_matches`].
//!
//! The JWT work is done by `jsonwebtoken` with a crypto provider backed by `ring` (already the
//! TLS stack's) that knows exactly one algorithm, EdDSA over Ed25519: no other algorithm can be
//! signed or verified through it, whatever a token's header claims.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result as JwtResult};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Authenticator, BoxFuture, Principal, StaticTokenAuthenticator};
use crate::client::{ApiClient, ClientOptions};
use crate::secret::Secret;

/// The audience of tokens meant for UltraCloud's own services.
pub const DEFAULT_AUDIENCE: &str = "ultracloud";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// [`Claims::kind`] of a person.
pub const KIND_USER: &str = "user";
/// [`Claims::kind`] of a workload identity.
pub const KIND_SERVICE_ACCOUNT: &str = "service_account";
/// [`JwksAuthenticator`] fetches the key set at most this often.
pub const MIN_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// [`JwksAuthenticator`] refreshes a key set older than this in the background, so keys iam
/// retired stop verifying.
pub const DEFAULT_MAX_KEY_AGE: Duration = Duration::from_secs(300);

/// Access-token claims (a JWT, EdDSA/Ed25519, header has `kid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: iam's configured issuer string.
    pub iss: String,
    /// Principal id.
    pub sub: String,
    /// Audience ([`DEFAULT_AUDIENCE`] for UltraCloud's services).
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// [`KIND_USER`] or [`KIND_SERVICE_ACCOUNT`].
    pub kind: String,
    /// The org the token is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The project the token is scoped to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Permission patterns granted at that scope: `*`, `plasmavmc.*`, `plasmavmc.vm.*`,
    /// `plasmavmc.vm.create`.
    #[serde(default)]
    pub perms: Vec<String>,
}

impl Claims {
    /// The principal a verified token stands for. Only users and service accounts hold tokens;
    /// a token of any other kind is refused (the operator is the node's admin token, never a
    /// JWT).
    pub fn into_principal(self) -> Result<Principal, VerifyError> {
        if self.kind != KIND_USER && self.kind != KIND_SERVICE_ACCOUNT {
            return Err(VerifyError::Invalid(format!(
                "token kind `{}` is neither `{KIND_USER}` nor `{KIND_SERVICE_ACCOUNT}`",
                self.kind
            )));
        }
        Ok(Principal {
            subject: self.sub,
            org: self.org,
            project: self.project,
            admin: false,
            kind: self.kind,
            permissions: self.perms,
        })
    }
}

/// Whether a granted permission `pattern` covers `permission` (both dot-separated, e.g.
/// `plasmavmc.vm.create`): `*` covers everything; `a.*` covers everything below `a`
/// (`a.x`, `a.x.y`, not `a` itself nor `ab.x`); anything else covers exactly itself.
pub fn permission_matches(pattern: &str, permission: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => {
            permission.len() > prefix.len() && permission.starts_with(prefix)
        }
        _ => !pattern.is_empty() && pattern == permission,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid signing key: {0}")]
    InvalidKey(String),
    #[error("invalid JWK `{kid}`: {reason}")]
    InvalidJwk { kid: String, reason: String },
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Signed (supposedly) by a key not in the key set: refresh the set and try once more.
    #[error("token is signed by unknown key `{kid}`")]
    UnknownKey { kid: String },
    /// Malformed, badly signed, expired, not yet valid, or meant for someone else.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// An Ed25519 key iam signs access tokens with.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pkcs8: Secret<Vec<u8>>,
    public: Vec<u8>,
    encoding: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("x", &URL_SAFE_NO_PAD.encode(&self.public))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the system's random source.
    pub fn generate(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system random source failed");
        Self::from_pkcs8(kid, pkcs8.as_ref()).expect("ring generated an unreadable Ed25519 key")
    }

    /// A stored key (PKCS#8 v1 or v2 DER, as [`SigningKey::to_pkcs8`] writes it).
    pub fn from_pkcs8(kid: &str, pkcs8_der: &[u8]) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der)
            .map_err(|e| TokenError::InvalidKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            kid: kid.to_owned(),
            pkcs8: Secret::new(pkcs8_der.to_vec()),
            public: pair.public_key().as_ref().to_vec(),
            encoding: EncodingKey::from_ed_der(pkcs8_der),
        })
    }

    /// The private key as PKCS#8 DER, for storage (iam encrypts it).
    pub fn to_pkcs8(&self) -> Secret<Vec<u8>> {
        self.pkcs8.clone()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(&self.public),
            kid: self.kid.clone(),
            alg: "EdDSA".to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// The compact JWT for `claims`, header `{"typ":"JWT","alg":"EdDSA","kid":…}`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        ensure_jwt_provider();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

/// One public key of a JWKS (RFC 7517/8037). Fields other than `kty` default to empty when
/// absent, so a set that also holds keys of other types still parses (they are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    #[serde(default)]
    pub crv: String,
    /// The public key, base64url without padding.
    #[serde(default)]
    pub x: String,
    #[serde(default)]
    pub kid: String,
    /// `EdDSA`.
    #[serde(default)]
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use", default)]
    pub use_: String,
}

/// The body of iam's `GET /v1/jwks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Verifies access tokens offline against a key set. Thread-safe; share it in an `Arc`.
pub struct Verifier {
    issuer: String,
    audience: String,
    validation: Validation,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// The published form (`kid` → `x`) of `keys`, to tell a real change from a refresh.
    published: Mutex<HashMap<String, String>>,
    /// Tokens already verified, by the SHA-256 of their whole text, with their claims: a
    /// signature check costs tens of microseconds and clients repeat the same token for its
    /// whole life. Only `exp` is checked again on a hit. Cleared whenever the key set changes
    /// (a retired key's tokens stop verifying at once).
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

/// Verified tokens remembered before the memory is cleared.
const VERIFIED_CACHE_LIMIT: usize = 10_000;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &self.kids())
            .finish()
    }
}

impl Verifier {
    /// Accepts tokens from `issuer` for `audience`, EdDSA only, with [`LEEWAY_SECS`] of clock
    /// skew on `exp`/`nbf`. It knows no key until [`Verifier::set_keys`].
    pub fn new(issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            validation,
            keys: RwLock::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the key set with the Ed25519 signing keys of `set`; keys of other types,
    /// algorithms or uses are ignored. A malformed Ed25519 key (bad `x`, no `kid`, a `kid`
    /// twice) is an error and leaves the current set in place.
    pub fn set_keys(&self, set: &JwkSet) -> Result<(), TokenError> {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let is_ed25519_sig = jwk.kty == "OKP"
                && jwk.crv == "Ed25519"
                && (jwk.alg.is_empty() || jwk.alg == "EdDSA")
                && (jwk.use_.is_empty() || jwk.use_ == "sig");
            if !is_ed25519_sig {
                continue;
            }
            let invalid = |reason: String| TokenError::InvalidJwk {
                kid: jwk.kid.clone(),
                reason,
            };
            if jwk.kid.is_empty() {
                return Err(invalid("no `kid`".to_owned()));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|e| invalid(format!("`x` is not base64url without padding: {e}")))?;
            if raw.len() != 32 {
                return Err(invalid(format!(
                    "`x` is {} bytes; an Ed25519 public key is 32",
                    raw.len()
                )));
            }
            let key =
                DecodingKey::from_ed_components(&jwk.x).map_err(|e| invalid(e.to_string()))?;
            if keys.insert(jwk.kid.clone(), key).is_some() {
                return Err(invalid("`kid` appears twice in the set".to_owned()));
            }
        }
        let published: HashMap<String, String> = set
            .keys
            .iter()
            .filter(|jwk| keys.contains_key(&jwk.kid))
            .map(|jwk| (jwk.kid.clone(), jwk.x.clone()))
            .collect();
        let mut known = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        if *known != published {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            *known = published;
        }
        Ok(())
    }

    /// The key ids currently known, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        kids.sort();
        kids
    }

    /// The claims of a valid token: three base64url parts, header `alg: EdDSA` with a known
    /// `kid`, a good signature, `iss` and `aud` as configured, and now within
    /// `[nbf - leeway, exp + leeway]`.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some(claims) = hit {
            let now = jsonwebtoken::get_current_timestamp() as i64;
            if now <= claims.exp + LEEWAY_SECS as i64 {
                return Ok(claims);
            }
            return Err(VerifyError::Invalid("token expired".to_owned()));
        }
        let claims = self.verify_signed(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, VerifyError> {
        ensure_jwt_provider();
        if token.split('.').count() != 3 {
            return Err(VerifyError::Invalid(
                "not a JWT: expected three dot-separated parts".to_owned(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Invalid(format!("unreadable header: {e}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Invalid(format!(
                "algorithm {:?} is not accepted (only EdDSA)",
                header.alg
            )));
        }
        let Some(kid) = header.kid else {
            return Err(VerifyError::Invalid("header has no `kid`".to_owned()));
        };
        let key = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&kid)
            .cloned();
        let Some(key) = key else {
            return Err(VerifyError::UnknownKey { kid });
        };
        jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| VerifyError::Invalid(e.to_string()))
    }
}

/// The auth hook for services: verifies iam's tokens offline with the cached key set, and
/// accepts the node's admin token as the operator.
///
/// A token signed by a key not in the cache makes it fetch iam's JWKS (at most once per
/// [`MIN_JWKS_REFRESH_INTERVAL`]; concurrent requests share one fetch) and verify once more:
/// still unknown → `401`; iam unreachable → [`AuthError::Unavailable`] (`503`). Known keys
/// keep verifying while iam is down. A set older than [`DEFAULT_MAX_KEY_AGE`] is refreshed in
/// the background, so a key iam retires stops verifying within that age.
pub struct JwksAuthenticator {
    inner: Arc<JwksInner>,
    min_refresh_interval: Duration,
    max_key_age: Duration,
}

struct JwksInner {
    verifier: Arc<Verifier>,
    jwks_url: String,
    /// The client and the path under its base URL, or why the URL or options are unusable.
    client: Result<(ApiClient, String), String>,
    admin: Option<StaticTokenAuthenticator>,
    /// Held while fetching, so concurrent refreshes wait for one fetch instead of each doing
    /// their own.
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Fetch attempts completed, so a caller that waited on `refresh` knows one happened.
    attempts: AtomicU64,
    epoch: Instant,
    /// Milliseconds since `epoch` after which a request triggers a background refresh.
    next_background_ms: AtomicU64,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

impl RefreshState {
    fn outcome(&self) -> Result<(), String> {
        match &self.last_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl JwksAuthenticator {
    /// `jwks_url`: iam's `GET /v1/jwks` (public). `admin`: the node admin token, still accepted
    /// as the operator. `client_options` govern the JWKS fetch; a request waits for it when its
    /// key is unknown, so keep the timeout short and retries few.
    pub fn new(
        verifier: Arc<Verifier>,
        jwks_url: String,
        client_options: ClientOptions,
        admin: Option<Secret<String>>,
    ) -> Self {
        let client = jwks_client(&jwks_url, client_options);
        if let Err(e) = &client {
            tracing::error!(url = %jwks_url, error = %e, "cannot set up the JWKS client; only the admin token and already known keys will verify");
        }
        Self {
            inner: Arc::new(JwksInner {
                verifier,
                jwks_url,
                client,
                admin: admin.map(StaticTokenAuthenticator::admin),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                attempts: AtomicU64::new(0),
                epoch: Instant::now(),
                next_background_ms: AtomicU64::new(0),
            }),
            min_refresh_interval: MIN_JWKS_REFRESH_INTERVAL,
            max_key_age: DEFAULT_MAX_KEY_AGE,
        }
    }

    /// Refreshes the key set in the background once it is older than `age` (default
    /// [`DEFAULT_MAX_KEY_AGE`]); never more often than [`MIN_JWKS_REFRESH_INTERVAL`].
    pub fn with_max_key_age(mut self, age: Duration) -> Self {
        self.max_key_age = age;
        self
    }

    /// The verifier whose key set this authenticator keeps filled.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.inner.verifier
    }

    /// Fetches the key set now (e.g. at startup, so the first request need not wait), sharing
    /// a fetch already under way.
    pub async fn refresh_keys(&self) -> Result<(), AuthError> {
        let seen = self.inner.attempts.load(Ordering::Acquire);
        let mut state = self.inner.refresh.lock().await;
        let outcome = if self.inner.attempts.load(Ordering::Acquire) != seen {
            state.outcome()
        } else {
            self.inner
                .fetch_locked(&mut state, self.min_refresh_interval, self.max_key_age)
                .await
        };
        outcome.map_err(AuthError::Unavailable)
    }

    /// A refresh after `UnknownKey`: shares the outcome of an attempt that finished since
    /// `seen`, or of one younger than the minimum interval; otherwise fetches.
    async fn refresh_after(&self, seen: u64) -> Result<(), String> {
        let mut state = self.inner.refresh.lock().await;
        if self.inner.attempts.load(Ordering::Acquire) != seen {
            return state.outcome();
        }
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh_interval)
        {
            return state.outcome();
        }
        self.inner
            .fetch_locked(&mut state, self.min_refresh_interval, self.max_key_age)
            .await
    }

    /// Starts a background refresh when the key set is due for one, without making the
    /// request wait for it.
    fn schedule_background_refresh(&self) {
        let now = self.inner.now_ms();
        let due = self.inner.next_background_ms.load(Ordering::Acquire);
        if now < due {
            return;
        }
        let next = now.saturating_add(duration_ms(self.min_refresh_interval));
        if self
            .inner
            .next_background_ms
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another request claimed it
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let (min_interval, max_age) = (self.min_refresh_interval, self.max_key_age);
        runtime.spawn(async move {
            let Ok(mut state) = inner.refresh.try_lock() else {
                return; // a refresh is under way
            };
            if state
                .last_attempt
                .is_some_and(|at| at.elapsed() < min_interval)
            {
                return;
            }
            let _ = inner.fetch_locked(&mut state, min_interval, max_age).await;
        });
    }

    async fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |reason| AuthError::InvalidToken { reason };
        self.schedule_background_refresh();
        let seen = self.inner.attempts.load(Ordering::Acquire);
        let kid = match self.inner.verifier.verify(token) {
            Ok(claims) => return principal(claims),
            Err(VerifyError::Invalid(reason)) => return Err(invalid(reason)),
            Err(VerifyError::UnknownKey { kid }) => kid,
        };
        let refreshed = self.refresh_after(seen).await;
        match self.inner.verifier.verify(token) {
            Ok(claims) => principal(claims),
            Err(VerifyError::Invalid(reason)) => Err(invalid(reason)),
            Err(VerifyError::UnknownKey { .. }) => match refreshed {
                Ok(()) => Err(invalid(format!(
                    "signed by key `{kid}`, which {} does not publish",
                    self.inner.jwks_url
                ))),
                Err(why) => Err(AuthError::Unavailable(format!(
                    "token signed by key `{kid}`, which is not cached, and the key set cannot be fetched from {}: {why}",
                    self.inner.jwks_url
                ))),
            },
        }
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    claims
        .into_principal()
        .map_err(|e| AuthError::InvalidToken {
            reason: e.to_string(),
        })
}

impl Authenticator for JwksAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async move {
            if let Some(admin) = &self.inner.admin
                && let Ok(operator) = admin.authenticate(token).await
            {
                return Ok(operator);
            }
            self.verify_jwt(token).await
        })
    }
}

impl JwksInner {
    fn now_ms(&self) -> u64 {
        duration_ms(self.epoch.elapsed())
    }

    /// One fetch, with `state` locked: records the attempt and its outcome, and schedules the
    /// next background refresh (after `max_age` on success, `min_interval` on failure).
    async fn fetch_locked(
        &self,
        state: &mut RefreshState,
        min_interval: Duration,
        max_age: Duration,
    ) -> Result<(), String> {
        state.last_attempt = Some(Instant::now());
        let result = self.fetch().await;
        let wait = match &result {
            Ok(()) => {
                tracing::debug!(url = %self.jwks_url, kids = ?self.verifier.kids(), "key set refreshed");
                max_age
            }
            Err(e) => {
                tracing::warn!(url = %self.jwks_url, error = %e, "cannot refresh the token key set");
                min_interval
            }
        };
        self.next_background_ms.store(
            self.now_ms().saturating_add(duration_ms(wait)),
            Ordering::Release,
        );
        state.last_error = result.as_ref().err().cloned();
        self.attempts.fetch_add(1, Ordering::AcqRel);
        result
    }

    async fn fetch(&self) -> Result<(), String> {
        let (client, path) = self.client.as_ref().map_err(Clone::clone)?;
        let set: JwkSet = client.get(path).await.map_err(|e| e.to_string())?;
        self.verifier
            .set_keys(&set)
            .map_err(|e| format!("unusable key set: {e}"))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An [`ApiClient`] whose base is the JWKS URL's directory, and the last segment (plus query)
/// to GET under it: the client's base always ends in `/`, the JWKS path must not.
fn jwks_client(jwks_url: &str, options: ClientOptions) -> Result<(ApiClient, String), String> {
    let url = reqwest::Url::parse(jwks_url).map_err(|e| format!("JWKS URL `{jwks_url}`: {e}"))?;
    let base = url
        .join("./")
        .map_err(|e| format!("JWKS URL `{jwks_url}`: {e}"))?;
    let Some(rest) = url.as_str().strip_prefix(base.as_str()) else {
        return Err(format!("JWKS URL `{jwks_url}` has no usable path"));
    };
    let client = ApiClient::new(base.as_str(), options).map_err(|e| e.to_string())?;
    Ok((client, rest.to_owned()))
}

// ---- the ring-backed jsonwebtoken crypto provider: EdDSA (Ed25519) and nothing else ----

fn ensure_jwt_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if RING_EDDSA.install_default().is_err() {
            tracing::debug!("jsonwebtoken already has a process-wide crypto provider; using it");
        }
    });
}

static RING_EDDSA: CryptoProvider = CryptoProvider {
    signer_factory: eddsa_signer,
    verifier_factory: eddsa_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: unsupported_rsa,
        rsa_pub_components_from_public_key: unsupported_rsa,
        ec_pub_components_from_private_key: unsupported_ec,
        ed_pub_components_from_private_key: ed_public_from_pkcs8,
        compute_digest,
    },
};

struct EdDsaSigner(Ed25519KeyPair);

impl jsonwebtoken::signature::Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(Vec<u8>);

impl jsonwebtoken::signature::Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, signature)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn eddsa_signer(algorithm: &Algorithm, key: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::EdDSA {
        return Err(ErrorKind::UnsupportedAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdDsaSigner(pair)))
}

fn eddsa_verifier(algorithm: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::EdDSA {
        return Err(ErrorKind::UnsupportedAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let raw = key.try_get_as_bytes()?;
    if raw.len() != 32 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    Ok(Box::new(EdDsaVerifier(raw.to_vec())))
}

fn unsupported_rsa(_: &[u8]) -> JwtResult<(Vec<u8>, Vec<u8>)> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

fn unsupported_ec(_: &[u8], _: Algorithm) -> JwtResult<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

fn ed_public_from_pkcs8(pkcs8: &[u8], curve: &EllipticCurve) -> JwtResult<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::UnsupportedAlgorithm.into());
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> JwtResult<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests;
