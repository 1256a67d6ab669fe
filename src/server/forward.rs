//! Forwarding a client request from a follower to the leader.
//!
//! The follower replays the request as received (method, path, query,
//! body) against the leader's advertised URL and hands the leader's answer
//! back unchanged. A hop counter in a header bounds how often a request may
//! be passed on, so two nodes with stale views of the leader cannot bounce
//! it between them forever. The path is replayed byte for byte
//! ([`crate::http_client`]), so a key such as `..` reaches the leader as is.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::http_client::{HttpClient, HttpError};

/// Header counting how many nodes forwarded a request.
pub const HOPS_HEADER: &str = "x-raftkv-hops";
/// A request is forwarded at most this many times (so once more after a
/// leader change seen late by the first follower).
pub const MAX_HOPS: u32 = 2;

/// Hops a request has made so far.
pub fn hops(headers: &HeaderMap) -> u32 {
    headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The parts of a client request needed to replay it on another node.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Method.
    pub method: Method,
    /// Path and query, still encoded.
    pub uri: Uri,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as received.
    pub body: Bytes,
}

/// Why forwarding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The leader could not be connected to: the request never left.
    #[error(transparent)]
    NotSent(HttpError),
    /// The request may have reached the leader, but no answer came back.
    #[error(transparent)]
    Lost(HttpError),
}

/// Replays `req` on `base_url` (the leader) and returns its response.
pub async fn forward(
    client: &HttpClient,
    base_url: &str,
    req: &Incoming,
    timeout: Duration,
) -> Result<Response, ForwardError> {
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut headers = HeaderMap::new();
    headers.insert(HOPS_HEADER, HeaderValue::from(hops(&req.headers) + 1));
    if let Some(ct) = req.headers.get(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    let body = (!req.body.is_empty() || req.method == Method::PUT).then(|| req.body.clone());
    let resp = client
        .request(
            req.method.clone(),
            &format!("{base_url}{path}"),
            headers,
            body,
            timeout,
        )
        .await
        .map_err(|e| {
            if e.is_connect() {
                ForwardError::NotSent(e)
            } else {
                ForwardError::Lost(e)
            }
        })?;
    let mut out = (resp.status, resp.body).into_response();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = resp.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out.headers_mut()
        .insert("x-raftkv-forwarded", HeaderValue::from_static("1"));
    Ok(out)
}
