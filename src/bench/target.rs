//! One bench connection and the requests it sends: the same operations
//! (put, get, compare-and-swap) spoken to RaftKV's API or to etcd's v3 JSON
//! gateway.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::etcd;
use super::http::{Conn, HttpError};
use super::report::{ErrorKind, Outcome};

/// The system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// RaftKV's HTTP API (`/kv/{key}`).
    RaftKv,
    /// etcd's v3 JSON gateway (`/v3/kv/...`).
    Etcd,
}

/// The key space: key `i` is `prefix` followed by `i` zero-padded to fill
/// the key size.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// `prefix`, percent-encoded for a URL path.
    prefix_path: String,
    width: usize,
    /// Number of keys.
    pub count: u64,
}

impl Keys {
    /// `count` keys of exactly `key_size` bytes starting with `prefix`.
    pub fn new(prefix: &str, key_size: usize, count: u64) -> Result<Keys, String> {
        if count == 0 {
            return Err("--keys must be at least 1".into());
        }
        let digits = (count - 1).max(1).ilog10() as usize + 1;
        if key_size > crate::kv::MAX_KEY_BYTES {
            return Err(format!(
                "--key-size {key_size} is over the {}-byte key limit",
                crate::kv::MAX_KEY_BYTES
            ));
        }
        if key_size < prefix.len() + digits {
            return Err(format!(
                "--key-size {key_size} is too small for the prefix {prefix:?} ({} bytes) and {count} keys ({digits} digits)",
                prefix.len()
            ));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
            prefix_path: crate::client::encode_component(prefix),
            width: key_size - prefix.len(),
            count,
        })
    }

    /// Writes key `i` into `buf` (cleared first).
    pub fn key_into(&self, i: u64, buf: &mut String) {
        buf.clear();
        buf.push_str(&self.prefix);
        let _ = write!(buf, "{i:0w$}", w = self.width);
    }

    /// Key `i` as a new string.
    pub fn key(&self, i: u64) -> String {
        let mut s = String::new();
        self.key_into(i, &mut s);
        s
    }

    /// Writes RaftKV's path for key `i` (`/kv/...`) into `buf`.
    fn path_into(&self, i: u64, buf: &mut String) {
        buf.clear();
        buf.push_str("/kv/");
        buf.push_str(&self.prefix_path);
        let _ = write!(buf, "{i:0w$}", w = self.width);
    }
}

/// Which answer RaftKV gives to a linearizable read used by a
/// read-modify-write (only the index matters).
#[derive(Deserialize)]
struct KvIndex {
    index: u64,
}

/// One bench connection: a kept-alive HTTP connection to one node (moving
/// on to the next node if it cannot connect) and reusable buffers, so an
/// operation allocates nothing.
pub struct Session {
    system: System,
    conn: Conn,
    /// Nodes to use, the preferred one first.
    endpoints: Arc<Vec<String>>,
    current: usize,
    timeout: Duration,
    connect_timeout: Duration,
    keys: Arc<Keys>,
    stale: bool,
    /// RaftKV's put body (`{"value":...}`): the same for every put.
    raftkv_body: Vec<u8>,
    /// The value, base64-encoded for etcd.
    value_b64: String,
    key_buf: String,
    path_buf: String,
    body_buf: Vec<u8>,
}

impl Session {
    /// A session on `endpoints[first % len]` (base URLs), writing `value`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        system: System,
        endpoints: Arc<Vec<String>>,
        first: usize,
        keys: Arc<Keys>,
        value: &str,
        stale: bool,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Session, String> {
        if endpoints.is_empty() {
            return Err("no endpoints".into());
        }
        let current = first % endpoints.len();
        let conn = Conn::new(&endpoints[current], timeout, connect_timeout)?;
        let raftkv_body = serde_json::to_vec(&serde_json::json!({ "value": value }))
            .map_err(|e| e.to_string())?;
        Ok(Session {
            system,
            conn,
            endpoints,
            current,
            timeout,
            connect_timeout,
            keys,
            stale,
            raftkv_body,
            value_b64: etcd::b64(value.as_bytes()),
            key_buf: String::with_capacity(64),
            path_buf: String::with_capacity(64),
            body_buf: Vec::with_capacity(512),
        })
    }

    /// Opens the connection ahead of the measured run (failures are left
    /// for the first operation to count).
    pub async fn warm_up_connection(&mut self) {
        if self.conn.connect().await.is_err() {
            self.next_endpoint();
        }
    }

    /// The node this session currently talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Moves to the next node after a connection failure (the leader may
    /// have died; a follower forwards).
    pub fn next_endpoint(&mut self) {
        if self.endpoints.len() > 1 {
            self.current = (self.current + 1) % self.endpoints.len();
            if let Ok(c) = Conn::new(
                &self.endpoints[self.current],
                self.timeout,
                self.connect_timeout,
            ) {
                self.conn = c;
            }
        }
    }

    /// Writes key `i`.
    pub async fn put(&mut self, i: u64) -> Outcome {
        let status = match self.system {
            System::RaftKv => {
                self.keys.path_into(i, &mut self.path_buf);
                self.conn
                    .request("PUT", &self.path_buf, Some(&self.raftkv_body))
                    .await
            }
            System::Etcd => {
                self.keys.key_into(i, &mut self.key_buf);
                self.body_buf.clear();
                etcd::put_body(&mut self.body_buf, self.key_buf.as_bytes(), &self.value_b64);
                self.conn
                    .request("POST", etcd::PUT_PATH, Some(&self.body_buf))
                    .await
            }
        };
        match status {
            Ok(200) => Outcome::Ok,
            Ok(code) => Outcome::Error(ErrorKind::Status(code)),
            Err(e) => Outcome::Error(transport(&e)),
        }
    }

    /// Reads key `i` (stale if the session was made so).
    pub async fn get(&mut self, i: u64) -> Outcome {
        match self.read(i, self.stale).await {
            Ok(Some(_)) => Outcome::Ok,
            Ok(None) => Outcome::Error(ErrorKind::NotFound),
            Err(e) => Outcome::Error(e),
        }
    }

    /// Read-modify-write of key `i`: a linearizable read of its mod index,
    /// then a write conditional on that index (RaftKV's `?cas=`, etcd's txn
    /// on `mod_revision`).
    pub async fn cas(&mut self, i: u64) -> Outcome {
        let index = match self.read(i, false).await {
            Ok(found) => found.unwrap_or(0),
            Err(e) => return Outcome::Error(e),
        };
        match self.system {
            System::RaftKv => {
                self.keys.path_into(i, &mut self.path_buf);
                let _ = write!(self.path_buf, "?cas={index}");
                match self
                    .conn
                    .request("PUT", &self.path_buf, Some(&self.raftkv_body))
                    .await
                {
                    Ok(200) => Outcome::Ok,
                    Ok(412) => Outcome::Conflict,
                    Ok(code) => Outcome::Error(ErrorKind::Status(code)),
                    Err(e) => Outcome::Error(transport(&e)),
                }
            }
            System::Etcd => {
                self.keys.key_into(i, &mut self.key_buf);
                self.body_buf.clear();
                let revision = i64::try_from(index).unwrap_or(i64::MAX);
                etcd::cas_txn_body(
                    &mut self.body_buf,
                    self.key_buf.as_bytes(),
                    &self.value_b64,
                    revision,
                );
                match self
                    .conn
                    .request("POST", etcd::TXN_PATH, Some(&self.body_buf))
                    .await
                {
                    Ok(200) => match etcd::parse_txn(self.conn.body()) {
                        Ok(true) => Outcome::Ok,
                        Ok(false) => Outcome::Conflict,
                        Err(_) => Outcome::Error(ErrorKind::InvalidResponse),
                    },
                    Ok(code) => Outcome::Error(ErrorKind::Status(code)),
                    Err(e) => Outcome::Error(transport(&e)),
                }
            }
        }
    }

    /// Deletes key `i`: `Ok(true)` if it existed, `Ok(false)` if not.
    pub async fn delete(&mut self, i: u64) -> Result<bool, ErrorKind> {
        match self.system {
            System::RaftKv => {
                self.keys.path_into(i, &mut self.path_buf);
                match self.conn.request("DELETE", &self.path_buf, None).await {
                    Ok(200) => Ok(true),
                    Ok(404) => Ok(false),
                    Ok(code) => Err(ErrorKind::Status(code)),
                    Err(e) => Err(transport(&e)),
                }
            }
            System::Etcd => {
                self.keys.key_into(i, &mut self.key_buf);
                self.body_buf.clear();
                etcd::delete_body(&mut self.body_buf, self.key_buf.as_bytes());
                match self
                    .conn
                    .request("POST", etcd::DELETE_PATH, Some(&self.body_buf))
                    .await
                {
                    Ok(200) => etcd::parse_deleted(self.conn.body())
                        .map(|n| n > 0)
                        .map_err(|_| ErrorKind::InvalidResponse),
                    Ok(code) => Err(ErrorKind::Status(code)),
                    Err(e) => Err(transport(&e)),
                }
            }
        }
    }

    /// Reads key `i`: `Some(mod index)` if it exists, `None` if not.
    async fn read(&mut self, i: u64, stale: bool) -> Result<Option<u64>, ErrorKind> {
        match self.system {
            System::RaftKv => {
                self.keys.path_into(i, &mut self.path_buf);
                if stale {
                    self.path_buf.push_str("?consistency=stale");
                }
                match self.conn.request("GET", &self.path_buf, None).await {
                    Ok(200) => serde_json::from_slice::<KvIndex>(self.conn.body())
                        .map(|v| Some(v.index))
                        .map_err(|_| ErrorKind::InvalidResponse),
                    Ok(404) => Ok(None),
                    Ok(code) => Err(ErrorKind::Status(code)),
                    Err(e) => Err(transport(&e)),
                }
            }
            System::Etcd => {
                self.keys.key_into(i, &mut self.key_buf);
                self.body_buf.clear();
                etcd::range_body(&mut self.body_buf, self.key_buf.as_bytes(), stale);
                match self
                    .conn
                    .request("POST", etcd::RANGE_PATH, Some(&self.body_buf))
                    .await
                {
                    Ok(200) => match etcd::parse_range(self.conn.body()) {
                        Ok(Some(rev)) => Ok(Some(u64::try_from(rev).unwrap_or(0))),
                        Ok(None) => Ok(None),
                        Err(_) => Err(ErrorKind::InvalidResponse),
                    },
                    Ok(code) => Err(ErrorKind::Status(code)),
                    Err(e) => Err(transport(&e)),
                }
            }
        }
    }
}

/// The error kind of a transport failure.
pub fn transport(e: &HttpError) -> ErrorKind {
    match e {
        HttpError::Connect(_) => ErrorKind::Connect,
        HttpError::Timeout => ErrorKind::Timeout,
        HttpError::Io(_) => ErrorKind::Io,
        HttpError::Protocol(_) => ErrorKind::InvalidResponse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_are_distinct() {
        let k = Keys::new("bench/", 16, 10_000).unwrap();
        assert_eq!(k.key(0), "bench/0000000000");
        assert_eq!(k.key(9_999), "bench/0000009999");
        assert_eq!(k.key(7).len(), 16);
        let mut p = String::new();
        k.path_into(42, &mut p);
        assert_eq!(p, "/kv/bench%2F0000000042");

        let k = Keys::new("a b", 5, 100).unwrap();
        assert_eq!(k.key(5), "a b05");
        k.path_into(5, &mut p);
        assert_eq!(p, "/kv/a%20b05");

        assert!(Keys::new("bench/", 8, 1000).is_err(), "3 digits do not fit");
        assert!(Keys::new("", 2000, 10).is_err(), "over the key limit");
        assert!(Keys::new("x", 4, 0).is_err());
        assert_eq!(Keys::new("", 1, 1).unwrap().key(0), "0");
    }
}
