//! The auth hook: every API route passes through [`require_bearer`], which asks the server's
//! [`Authenticator`] who the bearer token belongs to and puts the [`Principal`] into the
//! request. Until iam lands, the node's admin token ([`StaticTokenAuthenticator`]) is the only
//! credential; iam's verifier plugs into the same slot.

use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::secret::Secret;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id of the user or service account (`admin` for the node's admin token).
    pub subject: String,
    pub org: Option<String>,
    pub project: Option<String>,
    /// The cluster operator: may act on every tenant.
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is not valid; the reason goes to the debug log, never to the caller.
    #[error("invalid token")]
    InvalidToken { reason: String },
    /// Verification could not be done (e.g. keys not reachable); the caller may retry.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Verifies bearer tokens.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, AuthError>>;
}

/// Accepts exactly one token (compared in constant time) as one principal.
pub struct StaticTokenAuthenticator {
    token: Secret<String>,
    principal: Principal,
}

impl StaticTokenAuthenticator {
    /// The node's admin token, acting as the cluster operator.
    pub fn admin(token: Secret<String>) -> Self {
        Self {
            token,
            principal: Principal {
                subject: "admin".to_owned(),
                org: None,
                project: None,
                admin: true,
            },
        }
    }
}

impl Authenticator for StaticTokenAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async move {
            let expected = self.token.expose().as_bytes();
            if bool::from(expected.ct_eq(token.as_bytes())) {
                Ok(self.principal.clone())
            } else {
                Err(AuthError::InvalidToken {
                    reason: "does not match the configured token".to_owned(),
                })
            }
        })
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(parts_headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts_headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub(crate) async fn require_bearer(
    State(auth): State<Arc<dyn Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer_token(req.headers()) else {
        return ApiError::unauthenticated("missing bearer token (Authorization: Bearer <token>)")
            .into_response();
    };
    match auth.authenticate(token).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(AuthError::InvalidToken { reason }) => {
            tracing::debug!(%reason, "token rejected");
            ApiError::unauthenticated("invalid token").into_response()
        }
        Err(AuthError::Unavailable(why)) => {
            tracing::warn!(%why, "cannot verify token");
            ApiError::unavailable("cannot verify token now; retry").into_response()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("route is not behind authentication"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }

    #[tokio::test]
    async fn static_token() {
        let a = StaticTokenAuthenticator::admin(Secret::new("s3cret-token".into()));
        assert!(a.authenticate("s3cret-token").await.unwrap().admin);
        assert!(a.authenticate("s3cret-tokeN").await.is_err());
        assert!(a.authenticate("s3cret").await.is_err());
    }
}
