//! A typed JSON client for UltraCloud APIs, used by components (to call each other) and by the
//! CLI: timeouts, bearer auth, the shared error shape decoded, and retries with jittered
//! exponential backoff for calls that are safe to repeat.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::http::request_id;
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request timeout, per attempt.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after the first for retryable failures.
    pub retries: u32,
    /// First backoff delay; doubles each attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub token: Option<Secret<String>>,
    /// PEM CA bundle to trust in addition to the system roots (e.g. the cluster CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            token: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error in the shared shape (or a bare status).
    #[error("{0}")]
    Api(Box<ApiFailure>),
    /// No usable answer: connection refused, timeout, TLS failure, …
    /// `target` is "METHOD URL".
    #[error("{target}: {message}")]
    Transport { target: String, message: String },
    #[error("{target}: cannot decode response: {message}")]
    Decode { target: String, message: String },
    #[error("invalid client setup: {0}")]
    Setup(String),
}

/// An error answer from the server.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {url}: {code} ({status}): {message} [request {request_id}]")]
pub struct ApiFailure {
    pub method: Method,
    pub url: Url,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api(failure) => Some(failure.status),
            _ => None,
        }
    }

    /// The machine-readable error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api(failure) => Some(&failure.code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret<String>>,
    /// HTTP Basic credentials (e.g. a flaredb namespace credential), instead of the token.
    basic: Option<(String, Secret<String>)>,
    options: ClientOptions,
}

/// Whether a failed attempt may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// GET/PUT/DELETE, or POST with an idempotency key: retry transport and 429/502/503/504.
    Idempotent,
    /// Plain POST: retry only when the connection was never made (nothing was sent).
    ConnectOnly,
}

impl ApiClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        crate::tls::ensure_crypto_provider();
        let mut base = Url::parse(base_url)
            .map_err(|e| ClientError::Setup(format!("base URL `{base_url}`: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("ultracloud/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Setup(format!("CA file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Setup(format!("CA file {}: {e}", path.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            base,
            token: options.token.clone(),
            basic: None,
            options,
        })
    }

    pub fn with_token(mut self, token: Secret<String>) -> Self {
        self.token = Some(token);
        self
    }

    /// Authenticates with HTTP Basic credentials instead of a bearer token.
    pub fn with_basic_auth(mut self, user: &str, password: Secret<String>) -> Self {
        self.token = None;
        self.basic = Some((user.to_owned(), password));
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, None, Repeat::Idempotent)
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None, None, Repeat::Idempotent)
            .await
    }

    /// A bodiless POST whose success has no body (204); sent once.
    pub async fn post_no_content(&self, path: &str) -> Result<(), ClientError> {
        self.call_raw(Method::POST, path, None, None, Repeat::ConnectOnly)
            .await
            .map(|_| ())
    }

    /// A DELETE whose success has no body (204).
    pub async fn delete_no_content(&self, path: &str) -> Result<(), ClientError> {
        self.call_raw(Method::DELETE, path, None, None, Repeat::Idempotent)
            .await
            .map(|_| ())
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = encode(body)?;
        self.call(Method::PUT, path, Some(body), None, Repeat::Idempotent)
            .await
    }

    /// A POST sent once (retried only if the connection could not be made).
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = encode(body)?;
        self.call(Method::POST, path, Some(body), None, Repeat::ConnectOnly)
            .await
    }

    /// A POST carrying an `Idempotency-Key`, so the server dedupes and it is safe to retry.
    pub async fn post_idempotent<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: &str,
    ) -> Result<T, ClientError> {
        let body = encode(body)?;
        self.call(
            Method::POST,
            path,
            Some(body),
            Some(idempotency_key),
            Repeat::Idempotent,
        )
        .await
    }

    /// Raw bytes from a GET (backups, images); retried like any GET.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.call_raw(Method::GET, path, None, None, Repeat::Idempotent)
            .await
            .map(|(_, bytes)| bytes)
    }

    /// A POST of raw bytes (`application/octet-stream`) with a JSON answer; sent once.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let (target, bytes) = self
            .call_raw(
                Method::POST,
                path,
                Some((body, "application/octet-stream")),
                None,
                Repeat::ConnectOnly,
            )
            .await?;
        decode_json(&target, &bytes)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
        repeat: Repeat,
    ) -> Result<T, ClientError> {
        let (target, bytes) = self
            .call_raw(
                method,
                path,
                body.map(|b| (b, "application/json")),
                idempotency_key,
                repeat,
            )
            .await?;
        decode_json(&target, &bytes)
    }

    /// One call with retries; on success the "METHOD URL" and the body.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &'static str)>,
        idempotency_key: Option<&str>,
        repeat: Repeat,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| ClientError::Setup(format!("path `{path}`: {e}")))?;
        // One id for every attempt of this call, so the server logs tie them together.
        let request_id = request_id::current().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(request_id::HEADER, &request_id)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(token) = &self.token {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| ClientError::Setup("token is not a valid header value".into()))?;
                value.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, value);
            }
            if let Some((user, password)) = &self.basic {
                req = req.basic_auth(user, Some(password.expose()));
            }
            if let Some(key) = idempotency_key {
                req = req.header("idempotency-key", key);
            }
            if let Some((body, content_type)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(body.clone());
            }

            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.bytes().await {
                        Ok(bytes) => Ok((status, bytes, retry_after)),
                        Err(e) => Err((e.to_string(), false)),
                    }
                }
                Err(e) => Err((describe(&e), e.is_connect())),
            };

            let retryable = match &outcome {
                Ok((status, _, _)) => repeat == Repeat::Idempotent && is_retryable_status(*status),
                Err((_, connect)) => repeat == Repeat::Idempotent || *connect,
            };
            if retryable && attempt < self.options.retries {
                let hinted = outcome.as_ref().ok().and_then(|(_, _, ra)| *ra);
                let delay = hinted
                    .map(|d| d.min(self.options.max_backoff))
                    .unwrap_or_else(|| self.backoff(attempt));
                tracing::debug!(%method, %url, attempt, ?delay, "retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }

            return match outcome {
                Err((message, _)) => Err(ClientError::Transport {
                    target: format!("{method} {url}"),
                    message,
                }),
                Ok((status, bytes, _)) if status.is_success() => {
                    Ok((format!("{method} {url}"), bytes.to_vec()))
                }
                Ok((status, bytes, _)) => Err(api_error(method, url, status, &bytes, &request_id)),
            };
        }
    }

    /// Full jitter over an exponentially growing window.
    fn backoff(&self, attempt: u32) -> Duration {
        let window = self
            .options
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.options.max_backoff);
        let nanos = window.as_nanos().max(1) as u64;
        Duration::from_nanos(rand::random_range(nanos / 2..=nanos))
    }
}

fn decode_json<T: DeserializeOwned>(target: &str, bytes: &[u8]) -> Result<T, ClientError> {
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
        target: target.to_owned(),
        message: e.to_string(),
    })
}

fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| ClientError::Setup(format!("cannot encode body: {e}")))
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn api_error(
    method: Method,
    url: Url,
    status: StatusCode,
    bytes: &[u8],
    sent_id: &str,
) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api(Box::new(ApiFailure {
            method,
            url,
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            request_id: body.error.request_id,
        })),
        Err(_) => ClientError::Api(Box::new(ApiFailure {
            method,
            url,
            status: status.as_u16(),
            code: crate::error::code_for_status(status).to_owned(),
            message: String::from_utf8_lossy(bytes).chars().take(512).collect(),
            request_id: sent_id.to_owned(),
        })),
    }
}
