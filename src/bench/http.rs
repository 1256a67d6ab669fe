//! A lean HTTP/1.1 client: one kept-alive TCP connection per bench worker.
//!
//! Why not `reqwest` (which [`crate::client`] uses)? On a small machine the
//! load generator shares the CPU with the nodes it measures, and every
//! microsecond it spends per request is taken from them. A connection that
//! reuses its buffers, writes each request with one `write` and parses only
//! the status line, `Content-Length`, `Transfer-Encoding` and `Connection`
//! costs a fraction of a general-purpose client, and it makes "N connections"
//! mean exactly N sockets. It also never retries behind the caller's back, so
//! every failure is counted.
//!
//! Supported: `Content-Length` and `chunked` bodies, bodies delimited by the
//! server closing the connection, `Connection: close`. Not supported (not
//! needed against RaftKV or etcd's gateway): TLS, pipelining, `1xx`
//! responses, compression.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body accepted (RaftKV values are at most 1 MiB).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum HttpError {
    /// The TCP connection could not be opened (refused, unreachable, or not
    /// within the connect timeout).
    Connect(io::Error),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection failed mid-request (reset, closed early).
    Io(io::Error),
    /// The server's answer is not HTTP/1.x as this client understands it.
    Protocol(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Io(e) => write!(f, "connection failed: {e}"),
            HttpError::Protocol(m) => write!(f, "invalid HTTP response: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// The parsed status line and the headers that matter for framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The server will close the connection after this response.
    pub close: bool,
    /// Length of the head including the blank line.
    pub head_len: usize,
}

/// Finds the end of the response head (`\r\n\r\n`) and parses it. `Ok(None)`
/// means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(format!("response head over {MAX_HEAD_BYTES} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: http10,
        head_len: end + 4,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    head.close = false;
                }
            }
        }
    }
    Ok(Some(head))
}

/// One kept-alive connection to one server, reconnecting when needed.
pub struct Conn {
    /// `host:port` to connect to (also the `Host` header).
    authority: String,
    stream: Option<TcpStream>,
    /// The request being sent (reused).
    out: Vec<u8>,
    /// Bytes read from the socket and not yet consumed.
    inbuf: Vec<u8>,
    /// The last response's body.
    body: Vec<u8>,
    timeout: Duration,
    connect_timeout: Duration,
}

/// The outcome of one attempt on one connection.
enum Attempt {
    Done(u16),
    /// The server closed a kept-alive connection before answering: it did
    /// not process the request, which may be sent again on a new connection.
    ClosedIdle,
    Failed(HttpError),
}

impl Conn {
    /// A connection to `base_url` (`http://host:port`); nothing is opened
    /// until the first request (or [`Conn::connect`]).
    pub fn new(
        base_url: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Conn, String> {
        let authority = base_url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base_url}: only http:// URLs are supported"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{base_url}: expected http://host:port"));
        }
        Ok(Conn {
            authority: authority.to_string(),
            stream: None,
            out: Vec::with_capacity(1024),
            inbuf: Vec::with_capacity(8192),
            body: Vec::with_capacity(1024),
            timeout,
            connect_timeout,
        })
    }

    /// `host:port` this connection talks to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The body of the last successful [`Conn::request`].
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Opens the TCP connection now if it is not open.
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
                .await
                .map_err(|_| {
                    HttpError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                })?
                .map_err(HttpError::Connect)?;
        // Requests are small and latency-bound: never wait for Nagle.
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends one request and reads the whole answer; returns the status (the
    /// body is in [`Conn::body`]). `body`, when given, is sent as JSON.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<u16, HttpError> {
        self.out.clear();
        build_request(&mut self.out, method, &self.authority, path, body);
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => {
                // The answer may still arrive on this socket: never reuse it.
                self.stream = None;
                Err(HttpError::Timeout)
            }
        }
    }

    async fn exchange(&mut self) -> Result<u16, HttpError> {
        let reused = self.stream.is_some();
        self.connect().await?;
        match self.attempt().await {
            Attempt::Done(status) => return Ok(status),
            Attempt::Failed(e) => {
                self.stream = None;
                return Err(e);
            }
            Attempt::ClosedIdle if !reused => {
                self.stream = None;
                return Err(HttpError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response",
                )));
            }
            Attempt::ClosedIdle => self.stream = None,
        }
        // The server had closed the idle connection: one more try on a new one.
        self.connect().await?;
        match self.attempt().await {
            Attempt::Done(status) => Ok(status),
            Attempt::Failed(e) => {
                self.stream = None;
                Err(e)
            }
            Attempt::ClosedIdle => {
                self.stream = None;
                Err(HttpError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response",
                )))
            }
        }
    }

    async fn attempt(&mut self) -> Attempt {
        let Some(stream) = self.stream.as_mut() else {
            return Attempt::Failed(HttpError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected",
            )));
        };
        self.inbuf.clear();
        self.body.clear();
        if let Err(e) = stream.write_all(&self.out).await {
            return if is_reset(&e) {
                Attempt::ClosedIdle
            } else {
                Attempt::Failed(HttpError::Io(e))
            };
        }
        // Head.
        let head = loop {
            match parse_head(&self.inbuf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(m) => return Attempt::Failed(HttpError::Protocol(m)),
            }
            match read_more(stream, &mut self.inbuf).await {
                Ok(0) if self.inbuf.is_empty() => return Attempt::ClosedIdle,
                Ok(0) => return Attempt::Failed(eof("in the response head")),
                Ok(_) => {}
                Err(e) if self.inbuf.is_empty() && is_reset(&e) => return Attempt::ClosedIdle,
                Err(e) => return Attempt::Failed(HttpError::Io(e)),
            }
        };
        let mut pos = head.head_len;
        let no_body = head.status == 204 || head.status == 304 || head.status < 200;
        let mut close = head.close;
        let result = if no_body {
            Ok(())
        } else if head.chunked {
            read_chunked(stream, &mut self.inbuf, &mut pos, &mut self.body).await
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY_BYTES {
                Err(HttpError::Protocol(format!(
                    "body of {len} bytes is too large"
                )))
            } else {
                read_exact_body(stream, &mut self.inbuf, pos, len, &mut self.body).await
            }
        } else {
            // Delimited by the end of the connection.
            close = true;
            read_to_close(stream, &mut self.inbuf, pos, &mut self.body).await
        };
        if let Err(e) = result {
            return Attempt::Failed(e);
        }
        if close {
            self.stream = None;
        }
        Attempt::Done(head.status)
    }
}

/// Appends an HTTP/1.1 request to `out`.
pub fn build_request(out: &mut Vec<u8>, method: &str, host: &str, path: &str, body: Option<&[u8]>) {
    use std::io::Write;
    // Writes to a Vec cannot fail.
    let _ = write!(out, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    match body {
        Some(b) => {
            let _ = write!(
                out,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

fn eof(where_: &str) -> HttpError {
    HttpError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {where_}"),
    ))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

async fn read_exact_body(
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    pos: usize,
    len: usize,
    body: &mut Vec<u8>,
) -> Result<(), HttpError> {
    while inbuf.len() < pos + len {
        match read_more(stream, inbuf).await {
            Ok(0) => return Err(eof("in the response body")),
            Ok(_) => {}
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
    body.extend_from_slice(&inbuf[pos..pos + len]);
    Ok(())
}

async fn read_to_close(
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    pos: usize,
    body: &mut Vec<u8>,
) -> Result<(), HttpError> {
    loop {
        if inbuf.len() - pos > MAX_BODY_BYTES {
            return Err(HttpError::Protocol("response body is too large".into()));
        }
        match read_more(stream, inbuf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
    body.extend_from_slice(&inbuf[pos..]);
    Ok(())
}

/// Reads until `inbuf[*pos..]` holds a CRLF; returns the line without it and
/// moves `pos` past it.
async fn read_line(
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    pos: &mut usize,
) -> Result<String, HttpError> {
    loop {
        if let Some(i) = inbuf[*pos..].windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&inbuf[*pos..*pos + i]).into_owned();
            *pos += i + 2;
            return Ok(line);
        }
        if inbuf.len() - *pos > MAX_HEAD_BYTES {
            return Err(HttpError::Protocol("chunk header line too long".into()));
        }
        match read_more(stream, inbuf).await {
            Ok(0) => return Err(eof("in a chunked body")),
            Ok(_) => {}
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
}

async fn read_chunked(
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    pos: &mut usize,
    body: &mut Vec<u8>,
) -> Result<(), HttpError> {
    loop {
        let line = read_line(stream, inbuf, pos).await?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Protocol(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the blank line.
            while !read_line(stream, inbuf, pos).await?.is_empty() {}
            return Ok(());
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(HttpError::Protocol("response body is too large".into()));
        }
        while inbuf.len() < *pos + size + 2 {
            match read_more(stream, inbuf).await {
                Ok(0) => return Err(eof("in a chunk")),
                Ok(_) => {}
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
        body.extend_from_slice(&inbuf[*pos..*pos + size]);
        if &inbuf[*pos + size..*pos + size + 2] != b"\r\n" {
            return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
        }
        *pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"a\":1}")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length, Some(12));
        assert!(!h.chunked && !h.close);
        assert_eq!(h.head_len, 39);

        let h = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 503);
        assert!(h.chunked && h.close);

        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(h.close, "HTTP/1.0 closes unless keep-alive");
        let h = parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.close);

        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap(), None);
        assert!(parse_head(b"SPDY/3 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn builds_requests() {
        let mut out = Vec::new();
        build_request(&mut out, "PUT", "127.0.0.1:1", "/kv/a", Some(b"{}"));
        assert_eq!(
            out,
            b"PUT /kv/a HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        out.clear();
        build_request(&mut out, "GET", "h:2", "/x", None);
        assert_eq!(out, b"GET /x HTTP/1.1\r\nHost: h:2\r\n\r\n");
    }

    /// Reads one request head (and its Content-Length body) from `s`.
    async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    if read_more(s, &mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
                return Some(buf);
            }
            if read_more(s, &mut buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A server that answers the requests on each accepted connection with
    /// the canned responses of `script`, in order, then closes.
    async fn canned_server(script: Vec<Vec<&'static [u8]>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for responses in script {
                let (mut s, _) = listener.accept().await.unwrap();
                for r in responses {
                    if read_request(&mut s).await.is_none() {
                        break;
                    }
                    // Written in two pieces to exercise partial reads.
                    let (a, b) = r.split_at(r.len() / 2);
                    s.write_all(a).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    s.write_all(b).await.unwrap();
                }
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn reads_length_chunked_and_close_delimited_bodies() {
        let url = canned_server(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.0 200 OK\r\n\r\nuntil close",
            ],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],
        ])
        .await;
        let mut c = Conn::new(&url, Duration::from_secs(5), Duration::from_secs(1)).unwrap();
        assert_eq!(c.request("GET", "/a", None).await.unwrap(), 200);
        assert_eq!(c.body(), b"hello");
        assert_eq!(c.request("PUT", "/b", Some(b"{}")).await.unwrap(), 404);
        assert_eq!(c.body(), b"abc0123456789abcdef");
        assert_eq!(c.request("GET", "/c", None).await.unwrap(), 204);
        assert_eq!(c.body(), b"");
        assert_eq!(c.request("GET", "/d", None).await.unwrap(), 200);
        assert_eq!(c.body(), b"until close");
        // The server closed: the next request opens a new connection.
        assert_eq!(c.request("GET", "/e", None).await.unwrap(), 200);
        assert_eq!(c.body(), b"ok");
    }

    #[tokio::test]
    async fn resends_once_when_an_idle_connection_was_closed() {
        // The first connection answers one request and then closes without
        // answering the second; the client must resend it on a new one.
        let url = canned_server(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"],
        ])
        .await;
        let mut c = Conn::new(&url, Duration::from_secs(5), Duration::from_secs(1)).unwrap();
        assert_eq!(c.request("GET", "/1", None).await.unwrap(), 200);
        assert_eq!(c.body(), b"1");
        assert_eq!(c.request("GET", "/2", None).await.unwrap(), 200);
        assert_eq!(c.body(), b"2");
    }

    #[tokio::test]
    async fn reports_truncated_bodies_refused_connections_and_timeouts() {
        let url = canned_server(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
        ]])
        .await;
        let mut c = Conn::new(&url, Duration::from_secs(5), Duration::from_secs(1)).unwrap();
        let e = c.request("GET", "/", None).await.unwrap_err();
        assert!(matches!(e, HttpError::Io(_)), "{e}");

        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c = Conn::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .unwrap();
        let e = c.request("GET", "/", None).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect(_)), "{e}");

        // A server that accepts but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let mut c = Conn::new(
            &format!("http://{addr}"),
            Duration::from_millis(200),
            Duration::from_secs(1),
        )
        .unwrap();
        let e = c.request("GET", "/", None).await.unwrap_err();
        assert!(matches!(e, HttpError::Timeout), "{e}");
        hold.abort();
    }

    #[test]
    fn rejects_non_http_urls() {
        let t = Duration::from_secs(1);
        assert!(Conn::new("https://a:1", t, t).is_err());
        assert!(Conn::new("http://a:1/path", t, t).is_err());
        assert_eq!(Conn::new("http://a:1/", t, t).unwrap().authority(), "a:1");
    }
}
