//! A kept-alive HTTP/1.1 client that sends the request target exactly as
//! given, used by [`crate::client`] and by a follower forwarding a client
//! request to the leader.
//!
//! Why not `reqwest`? It parses every URL with the `url` crate, which follows
//! the WHATWG URL standard: `.` and `..` path segments are folded away, and
//! `%2E` counts as a dot while doing so. `PUT /kv/%2E%2E` would leave the
//! process as `PUT /`, so the keys `.` and `..` could be neither written nor
//! forwarded. hyper takes an `http::Uri`, which keeps the path as it is.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How an [`HttpClient`] connects and keeps connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpClientConfig {
    /// TCP connect timeout (a partitioned host hangs instead of refusing).
    pub connect_timeout: Duration,
    /// How long an idle kept-alive connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle kept-alive connections per host.
    pub max_idle_per_host: usize,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 256,
        }
    }
}

/// Why a request got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not a valid `http://host:port/path` request target.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be opened: the request surely never left.
    #[error("cannot connect ({0})")]
    Connect(String),
    /// No complete answer within the timeout; the request may have arrived.
    #[error("timed out")]
    Timeout,
    /// The connection failed after it was opened; the request may have
    /// arrived.
    #[error("request failed ({0})")]
    Failed(String),
}

impl HttpError {
    /// True when the request surely did not reach the server.
    pub fn is_connect(&self) -> bool {
        matches!(self, HttpError::Connect(_) | HttpError::InvalidUrl { .. })
    }
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// A cheap-to-clone client with a shared connection pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client configured by `config`.
    pub fn new(config: HttpClientConfig) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpClient { inner }
    }

    /// Sends `method url` with `headers` and, if given, a JSON `body`, and
    /// reads the whole answer, all within `timeout`. `url` is used byte for
    /// byte: its path must already be percent-encoded.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let uri: Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| HttpError::InvalidUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(HttpError::InvalidUrl {
                url: url.to_string(),
                reason: "expected http://host:port/path".into(),
            });
        }
        if body.is_some() && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let mut req = hyper::Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(root_cause(&e))
                } else {
                    HttpError::Failed(root_cause(&e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| HttpError::Failed(root_cause(&e)))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }
}

/// The innermost cause of an error (hyper's own messages hide it, e.g.
/// "connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut root = e;
    while let Some(src) = root.source() {
        root = src;
    }
    root.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server that records the raw request line it receives.
    async fn echo_request_line() -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before sending a request");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = "{}";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nretry-after: 1\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
            let text = String::from_utf8_lossy(&buf).to_string();
            text.lines().next().unwrap_or_default().to_string()
        });
        (url, task)
    }

    #[tokio::test]
    async fn dot_segments_are_sent_as_given() {
        for path in ["/kv/%2E%2E", "/kv/..", "/kv/.", "/kv/%2e", "/kv/a%2F..%2Fb"] {
            let (url, server) = echo_request_line().await;
            let client = HttpClient::new(HttpClientConfig::default());
            let resp = client
                .request(
                    Method::GET,
                    &format!("{url}{path}"),
                    HeaderMap::new(),
                    None,
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, StatusCode::OK);
            assert_eq!(resp.headers["retry-after"], "1");
            assert_eq!(&resp.body[..], b"{}");
            assert_eq!(server.await.unwrap(), format!("GET {path} HTTP/1.1"));
        }
    }

    #[tokio::test]
    async fn refused_connections_and_bad_urls_are_connect_errors() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = HttpClient::new(HttpClientConfig::default());
        let get = |url: String| {
            let client = client.clone();
            async move {
                client
                    .request(
                        Method::GET,
                        &url,
                        HeaderMap::new(),
                        None,
                        Duration::from_secs(10),
                    )
                    .await
            }
        };
        let refused = get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap_err();
        assert!(matches!(refused, HttpError::Connect(_)), "{refused:?}");
        for bad in ["not a url", "https://127.0.0.1:1/x", "/relative"] {
            let e = get(bad.to_string()).await.unwrap_err();
            assert!(matches!(e, HttpError::InvalidUrl { .. }), "{bad}: {e:?}");
            assert!(e.is_connect());
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let client = HttpClient::new(HttpClientConfig::default());
        let e = client
            .request(
                Method::GET,
                &url,
                HeaderMap::new(),
                None,
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert_eq!(e, HttpError::Timeout);
        assert!(!e.is_connect());
        drop(listener);
    }
}
