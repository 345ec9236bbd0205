//! `x-request-id`: taken from the caller when it is sane, generated otherwise, echoed on the
//! response, attached to log lines and error bodies.

use axum::http::HeaderMap;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The request id, as a request extension for handlers that want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

pub(crate) async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// The caller's id if it is short and made of safe characters (it ends up in logs);
/// a fresh UUID otherwise.
pub(crate) fn accept_or_generate(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn is_acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, "abc-123".parse().unwrap());
        assert_eq!(accept_or_generate(&h), "abc-123");
        h.insert(HEADER, "bad id\twith spaces".parse().unwrap());
        assert_ne!(accept_or_generate(&h), "bad id\twith spaces");
        h.insert(HEADER, "x".repeat(200).parse().unwrap());
        assert_eq!(accept_or_generate(&h).len(), 36);
    }
}
