//! API errors: always a JSON body `{"error": "...", ...}` with the status
//! code the contract gives, and `Retry-After` on every 503.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// Seconds a client is told to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The JSON body; always has `error`.
    pub body: Map<String, Value>,
}

impl ApiError {
    /// An error with `status` and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(message.into()));
        ApiError { status, body }
    }

    /// Adds a field to the body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.into(), value.into());
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 404 for a missing key.
    pub fn key_not_found(key: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "key not found").with("key", key)
    }

    /// 503; the response carries `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 503 for a write that may or may not have been applied.
    pub fn outcome_unknown(message: impl Into<String>, key: &str) -> Self {
        Self::unavailable(message)
            .with("outcome", "unknown")
            .with("key", key)
    }

    /// 500: a bug, reported instead of a dropped connection.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(Value::Object(self.body))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unavailable_carries_retry_after_and_json() {
        let resp = ApiError::outcome_unknown("timed out", "k").into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["outcome"], "unknown");
        assert_eq!(v["key"], "k");
        assert_eq!(v["error"], "timed out");
    }

    #[tokio::test]
    async fn other_errors_have_no_retry_after() {
        let resp = ApiError::bad_request("nope").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }
}
