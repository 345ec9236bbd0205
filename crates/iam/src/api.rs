//! Request and response types of iam's API (also used by its client and the CLI).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    ServiceAccount,
    Group,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServiceAccount => "service_account",
            Self::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "service_account" => Some(Self::ServiceAccount),
            "group" => Some(Self::Group),
            _ => None,
        }
    }

    /// The id prefix of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::User => "usr",
            Self::ServiceAccount => "sa",
            Self::Group => "grp",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub org_id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Role {
    pub id: String,
    /// Empty for the built-in roles every organization has.
    pub org_id: String,
    pub name: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Binding {
    pub id: String,
    pub org_id: String,
    /// Empty: the binding applies to the whole organization.
    pub project_id: String,
    pub principal_id: String,
    pub role_id: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub org_id: String,
    pub principal_id: String,
    pub created_at: i64,
    /// Unix seconds after which it no longer works; absent: no expiry.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A new API key: the secret is shown once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedCredential {
    #[serde(flatten)]
    pub credential: Credential,
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SigningKeyView {
    pub kid: String,
    /// `active` signs new tokens; `previous` still verifies; `retired` is gone from the JWKS.
    pub state: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: i64,
    /// Who acted (principal id, `admin`, or the name presented at a failed login).
    pub actor: String,
    pub org_id: String,
    pub action: String,
    pub target: String,
    /// `allow` or `deny`.
    pub outcome: String,
    pub reason: String,
    pub request_id: String,
}

// ---- requests

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamed {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    /// At least 12 characters.
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub name: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBinding {
    pub principal_id: String,
    /// A built-in role (`admin`, `member`, `viewer`) or one of the organization's roles.
    pub role: String,
    /// A project name or id; absent: the whole organization.
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub principal_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    pub principal_id: String,
    /// Lifetime in seconds; absent: no expiry.
    pub expires_in_secs: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCredential {
    /// Keep working this many more seconds (the overlap of a rotation); absent or 0: now.
    pub after_secs: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenRequest {
    Password {
        /// Organization name or id.
        org: String,
        username: String,
        password: String,
        /// Project name or id to scope the token to.
        project: Option<String>,
    },
    ApiKey {
        api_key: String,
        project: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// An access token to decide for; absent: the caller's own token.
    pub token: Option<String>,
    /// `<service>.<resource>.<verb>`.
    pub permission: String,
    /// The organization (id) owning the resource.
    pub org: String,
    /// The project (id) owning the resource, if any.
    pub project: Option<String>,
    /// The resource, for the audit trail.
    pub resource: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuthorizeResponse {
    pub allowed: bool,
    pub reason: String,
    pub principal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
}
