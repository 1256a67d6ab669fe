//! Forwarding a client request from a follower to the leader.
//!
//! The follower replays the request as received (method, path, query,
//! body) against the leader's advertised URL and hands the leader's answer
//! back unchanged. A hop counter in a header bounds how often a request may
//! be passed on, so two nodes with stale views of the leader cannot bounce
//! it between them forever.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::node::error_chain;

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
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The leader could not be connected to: the request never left.
    #[error("{}", error_chain(.0))]
    NotSent(reqwest::Error),
    /// The request may have reached the leader, but no answer came back.
    #[error("{}", error_chain(.0))]
    Lost(reqwest::Error),
}

/// Replays `req` on `base_url` (the leader) and returns its response.
pub async fn forward(
    client: &reqwest::Client,
    base_url: &str,
    req: &Incoming,
    timeout: Duration,
) -> Result<Response, ForwardError> {
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = client
        .request(req.method.clone(), format!("{base_url}{path}"))
        .timeout(timeout)
        .header(HOPS_HEADER, (hops(&req.headers) + 1).to_string());
    if let Some(ct) = req.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct.clone());
    }
    if !req.body.is_empty() || req.method == Method::PUT {
        builder = builder.body(req.body.clone());
    }
    let resp = builder.send().await.map_err(|e| {
        if e.is_connect() {
            ForwardError::NotSent(e)
        } else {
            ForwardError::Lost(e)
        }
    })?;
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let body = resp.bytes().await.map_err(ForwardError::Lost)?;
    let mut out = (status, body).into_response();
    for (name, value) in headers.iter() {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    out.headers_mut()
        .insert("x-raftkv-forwarded", HeaderValue::from_static("1"));
    Ok(out)
}
