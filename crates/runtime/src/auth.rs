//! The auth hook: every API route passes through `require_bearer`, which asks the server's
//! [`Authenticator`] who the bearer token belongs to and puts the [`Principal`] into the
//! request. The node's admin token ([`StaticTokenAuthenticator`]) is the operator's credential;
//! iam's access tokens are verified offline by [`crate::token::JwksAuthenticator`], which plugs
//! into the same slot (and still accepts the admin token).
//!
//! Authorization is per route: a handler calls [`Principal::require`], or a route is wrapped in
//! [`require_permission`]; both answer `403 permission_denied` naming the missing permission.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::secret::Secret;
use crate::token::permission_matches;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id of the user or service account (`admin` for the node's admin token).
    pub subject: String,
    pub org: Option<String>,
    pub project: Option<String>,
    /// The cluster operator: may act on every tenant and holds every permission.
    pub admin: bool,
    /// `user`, `service_account` or `admin` (the node's admin token).
    pub kind: String,
    /// Permission patterns granted at the token's scope (`*`, `plasmavmc.*`,
    /// `plasmavmc.vm.*`, `plasmavmc.vm.create`); see [`permission_matches`].
    pub permissions: Vec<String>,
}

impl Principal {
    /// Whether this principal holds `permission` (e.g. `plasmavmc.vm.create`): always for the
    /// operator, otherwise when one of its patterns matches. This checks the permission only;
    /// the handler still checks that the resource belongs to the principal's org/project.
    pub fn allows(&self, permission: &str) -> bool {
        self.admin
            || self
                .permissions
                .iter()
                .any(|pattern| permission_matches(pattern, permission))
    }

    /// [`Principal::allows`] as a handler guard: `403 permission_denied` naming the permission.
    pub fn require(&self, permission: &str) -> Result<(), ApiError> {
        if self.allows(permission) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "permission `{permission}` is required; the credentials of `{}` do not grant it",
                self.subject
            )))
        }
    }
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
                kind: "admin".to_owned(),
                permissions: vec!["*".to_owned()],
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

/// A layer that lets a request through only if its [`Principal`] holds `permission`
/// (`403 permission_denied` otherwise). It must sit inside the auth hook, i.e. on routes given to
/// [`crate::http::HttpServer::api`]:
///
/// ```ignore
/// Router::new().route("/v1/vms", post(create_vm).route_layer(require_permission("plasmavmc.vm.create")))
/// ```
pub fn require_permission(permission: &'static str) -> RequirePermissionLayer {
    RequirePermissionLayer { permission }
}

/// See [`require_permission`].
#[derive(Debug, Clone, Copy)]
pub struct RequirePermissionLayer {
    permission: &'static str,
}

impl<S> Layer<S> for RequirePermissionLayer {
    type Service = RequirePermission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePermission {
            inner,
            permission: self.permission,
        }
    }
}

/// The service [`RequirePermissionLayer`] wraps a route in.
#[derive(Debug, Clone)]
pub struct RequirePermission<S> {
    inner: S,
    permission: &'static str,
}

impl<S> Service<Request> for RequirePermission<S>
where
    S: Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let decision = match req.extensions().get::<Principal>() {
            Some(principal) => principal.require(self.permission),
            None => Err(ApiError::unauthenticated(
                "route is not behind authentication",
            )),
        };
        match decision {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => Box::pin(async move { Ok(e.into_response()) }),
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
        let p = a.authenticate("s3cret-token").await.unwrap();
        assert!(p.admin);
        assert_eq!(p.kind, "admin");
        assert!(p.allows("anything.at.all"));
        assert!(a.authenticate("s3cret-tokeN").await.is_err());
        assert!(a.authenticate("s3cret").await.is_err());
    }

    fn user(permissions: &[&str]) -> Principal {
        Principal {
            subject: "u-1".into(),
            org: Some("o-1".into()),
            project: None,
            admin: false,
            kind: "user".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn allows_and_require() {
        let p = user(&["plasmavmc.vm.*", "flashdns.zone.read"]);
        assert!(p.allows("plasmavmc.vm.create"));
        assert!(p.allows("flashdns.zone.read"));
        assert!(!p.allows("flashdns.zone.write"));
        assert!(!p.allows("plasmavmc.image.create"));
        assert!(p.require("plasmavmc.vm.delete").is_ok());
        let err = p.require("flashdns.zone.write").unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(err.code, "permission_denied");
        assert!(
            err.message.contains("flashdns.zone.write"),
            "{}",
            err.message
        );
        assert!(!user(&[]).allows("plasmavmc.vm.create"));
        assert!(user(&["*"]).allows("plasmavmc.vm.create"));
        // An operator holds everything, whatever its pattern list says.
        let admin = Principal {
            admin: true,
            permissions: vec![],
            ..user(&[])
        };
        assert!(admin.allows("iam.user.delete"));
    }
}
