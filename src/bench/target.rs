//! One bench connection and the requests it sends: the same operations
//! (put, get, compare-and-swap) spoken to RaftKV's API or to etcd's v3 JSON
//! gateway, and RaftKV's two-key transaction (`POST /txn`). With
//! `--protocol grpc` a session hands every operation to a
//! [`super::grpc::GrpcSession`] instead (etcd's gRPC API, either system).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
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

/// The `index` of RaftKV's answer to a put: the revision it created.
#[derive(Deserialize)]
struct PutIndex {
    index: i64,
}

/// The last `mod_revision` the bench saw for each key of the key space
/// (0: absent or not seen yet), shared by every connection of a txn run.
/// A transaction compares against it; its answer updates it (the new
/// revision after a success, the keys' current records after a failure),
/// so a transaction fails only when another connection wrote one of its
/// keys in between, or the key space held keys from before the run.
#[derive(Debug)]
pub struct ModCache {
    revisions: Vec<AtomicI64>,
}

impl ModCache {
    /// A cache for `count` keys, all unseen.
    pub fn new(count: u64) -> ModCache {
        ModCache {
            revisions: (0..count).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Key `i`'s last seen mod_revision.
    pub fn get(&self, i: u64) -> i64 {
        self.revisions
            .get(i as usize)
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }

    /// Records key `i`'s mod_revision, never moving it backwards (a slower
    /// connection's answer may carry an older one).
    pub fn saw(&self, i: u64, revision: i64) {
        if let Some(r) = self.revisions.get(i as usize) {
            r.fetch_max(revision, Ordering::Relaxed);
        }
    }

    /// Records key `i`'s mod_revision read from the store, which may be
    /// lower than what was cached (the key was deleted and re-created is
    /// impossible to tell from here, so the store wins).
    pub fn set(&self, i: u64, revision: i64) {
        if let Some(r) = self.revisions.get(i as usize) {
            r.store(revision, Ordering::Relaxed);
        }
    }
}

/// What the bench reads of RaftKV's `POST /txn` answer.
#[derive(Debug, Deserialize)]
pub struct TxnAnswer {
    /// Whether the success branch ran.
    pub succeeded: bool,
    /// The store revision after the transaction.
    #[serde(default)]
    pub index: i64,
    /// One answer per op of the branch that ran.
    #[serde(default)]
    pub responses: Vec<TxnOpAnswer>,
}

/// One op's answer; only ranges are read (the failure branch's reads).
#[derive(Debug, Deserialize)]
pub struct TxnOpAnswer {
    /// A range's answer.
    #[serde(default)]
    pub range: Option<RangeAnswer>,
}

/// A range answer: only the records' mod revisions are read.
#[derive(Debug, Deserialize)]
pub struct RangeAnswer {
    /// The records.
    #[serde(default)]
    pub items: Vec<ModRevision>,
}

/// A record's mod revision.
#[derive(Debug, Deserialize)]
pub struct ModRevision {
    /// The key's mod revision.
    pub mod_revision: i64,
}

impl TxnAnswer {
    /// The mod revision op `n`'s range found (0: the key is absent, or op
    /// `n` is not a range).
    pub fn range_mod_revision(&self, n: usize) -> i64 {
        self.responses
            .get(n)
            .and_then(|r| r.range.as_ref())
            .and_then(|r| r.items.first())
            .map_or(0, |kv| kv.mod_revision)
    }
}

/// Appends the body of the bench's transfer transaction to `out`: "if `a`
/// and `b` still have the mod revisions `ra` and `rb` (0 = absent), put
/// `value` into both; otherwise read both" (docs/api.md, `POST /txn`).
pub fn transfer_txn_body(out: &mut Vec<u8>, a: &str, ra: i64, b: &str, rb: i64, value: &str) {
    let cmp = |k: &str, r: i64| serde_json::json!({"key": k, "target": "mod", "result": "=", "mod_revision": r});
    let body = serde_json::json!({
        "compare": [cmp(a, ra), cmp(b, rb)],
        "success": [{"put": {"key": a, "value": value}}, {"put": {"key": b, "value": value}}],
        "failure": [{"range": {"key": a}}, {"range": {"key": b}}],
    });
    // Serializing a JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &body);
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
    /// The value, as given (for JSON bodies built per request).
    value: String,
    /// Shared mod revisions of a txn run.
    mod_cache: Option<Arc<ModCache>>,
    /// `--protocol grpc`: every operation goes to this client instead (the
    /// HTTP connection above is then never opened).
    grpc: Option<super::grpc::GrpcSession>,
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
            value: value.to_string(),
            mod_cache: None,
            grpc: None,
        })
    }

    /// Makes this session speak gRPC through `client`.
    pub fn with_grpc(mut self, client: super::grpc::GrpcSession) -> Session {
        self.grpc = Some(client);
        self
    }

    /// Makes this session's transactions use (and update) `cache`.
    pub fn with_mod_cache(mut self, cache: Arc<ModCache>) -> Session {
        self.mod_cache = Some(cache);
        self
    }

    /// Writes key `i` and returns, on success, the revision it created
    /// (RaftKV's `index`; `None` for etcd or an answer without one).
    pub async fn put_revision(&mut self, i: u64) -> (Outcome, Option<i64>) {
        if let Some(g) = &mut self.grpc {
            return g.put(i).await;
        }
        let outcome = self.put(i).await;
        if outcome != Outcome::Ok || self.system != System::RaftKv {
            return (outcome, None);
        }
        // A put that succeeded without a readable index still counts as a
        // success; it just cannot be matched with its watch events.
        let revision = serde_json::from_slice::<PutIndex>(self.conn.body())
            .ok()
            .map(|p| p.index);
        (outcome, revision)
    }

    /// The transfer transaction on keys `a` and `b` (RaftKV `POST /txn`,
    /// etcd's gateway `POST /v3/kv/txn`, or gRPC `KV.Txn`):
    /// compare both keys' mod revisions with the shared cache, put both on
    /// success, read both on failure. A failure branch is a
    /// [`Outcome::Conflict`].
    pub async fn txn(&mut self, a: u64, b: u64) -> Outcome {
        let Some(cache) = self.mod_cache.clone() else {
            return Outcome::Error(ErrorKind::InvalidResponse);
        };
        if let Some(g) = &mut self.grpc {
            return g.txn(a, b, &cache).await;
        }
        if self.system == System::Etcd {
            return self.etcd_txn(a, b, &cache).await;
        }
        let (ka, kb) = (self.keys.key(a), self.keys.key(b));
        self.body_buf.clear();
        transfer_txn_body(
            &mut self.body_buf,
            &ka,
            cache.get(a),
            &kb,
            cache.get(b),
            &self.value,
        );
        match self
            .conn
            .request("POST", "/txn", Some(&self.body_buf))
            .await
        {
            Ok(200) => match serde_json::from_slice::<TxnAnswer>(self.conn.body()) {
                Ok(t) if t.succeeded => {
                    cache.saw(a, t.index);
                    cache.saw(b, t.index);
                    Outcome::Ok
                }
                Ok(t) => {
                    cache.set(a, t.range_mod_revision(0));
                    cache.set(b, t.range_mod_revision(1));
                    Outcome::Conflict
                }
                Err(_) => Outcome::Error(ErrorKind::InvalidResponse),
            },
            Ok(code) => Outcome::Error(ErrorKind::Status(code)),
            Err(e) => Outcome::Error(transport(&e)),
        }
    }

    /// The transfer transaction through etcd's JSON gateway
    /// (`POST /v3/kv/txn`, the same compares and branches).
    async fn etcd_txn(&mut self, a: u64, b: u64, cache: &ModCache) -> Outcome {
        let (ka, kb) = (self.keys.key(a), self.keys.key(b));
        self.body_buf.clear();
        etcd::transfer_txn_body(
            &mut self.body_buf,
            ka.as_bytes(),
            cache.get(a),
            kb.as_bytes(),
            cache.get(b),
            &self.value_b64,
        );
        match self
            .conn
            .request("POST", etcd::TXN_PATH, Some(&self.body_buf))
            .await
        {
            Ok(200) => match etcd::parse_transfer_txn(self.conn.body()) {
                Ok(t) if t.succeeded => {
                    cache.saw(a, t.revision);
                    cache.saw(b, t.revision);
                    Outcome::Ok
                }
                Ok(t) => {
                    cache.set(a, t.mod_revisions.first().copied().unwrap_or(0));
                    cache.set(b, t.mod_revisions.get(1).copied().unwrap_or(0));
                    Outcome::Conflict
                }
                Err(_) => Outcome::Error(ErrorKind::InvalidResponse),
            },
            Ok(code) => Outcome::Error(ErrorKind::Status(code)),
            Err(e) => Outcome::Error(transport(&e)),
        }
    }

    /// Opens the connection ahead of the measured run (failures are left
    /// for the first operation to count).
    pub async fn warm_up_connection(&mut self) {
        if let Some(g) = &mut self.grpc {
            return g.warm_up_connection().await;
        }
        if self.conn.connect().await.is_err() {
            self.next_endpoint();
        }
    }

    /// The node this session currently talks to.
    pub fn endpoint(&self) -> &str {
        if let Some(g) = &self.grpc {
            return g.endpoint();
        }
        &self.endpoints[self.current]
    }

    /// Moves to the next node after a connection failure (the leader may
    /// have died; a follower forwards).
    pub fn next_endpoint(&mut self) {
        if let Some(g) = &mut self.grpc {
            return g.next_endpoint();
        }
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
        if let Some(g) = &mut self.grpc {
            return g.put(i).await.0;
        }
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
        if let Some(g) = &mut self.grpc {
            return g.get(i).await;
        }
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
        if let Some(g) = &mut self.grpc {
            return g.cas(i).await;
        }
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
        if let Some(g) = &mut self.grpc {
            return g.delete(i).await;
        }
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

    #[test]
    fn the_transfer_txn_body_has_the_documented_shape() {
        let mut out = Vec::new();
        transfer_txn_body(&mut out, "b/1", 7, "b/\"2", 0, "v");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "compare": [
                    {"key": "b/1", "target": "mod", "result": "=", "mod_revision": 7},
                    {"key": "b/\"2", "target": "mod", "result": "=", "mod_revision": 0}],
                "success": [{"put": {"key": "b/1", "value": "v"}}, {"put": {"key": "b/\"2", "value": "v"}}],
                "failure": [{"range": {"key": "b/1"}}, {"range": {"key": "b/\"2"}}]
            })
        );
    }

    #[test]
    fn txn_answers_give_the_branch_and_the_revisions() {
        // Success (docs/api.md's answer shape).
        let ok: TxnAnswer = serde_json::from_str(
            r#"{"succeeded":true,"responses":[{"put":{}},{"put":{"prev_kv":{"key":"a","value":"1","index":3,"create_revision":3,"mod_revision":3,"version":1,"lease":0}}}],
                "index":11,"header":{"cluster_id":1,"member_id":1,"revision":11,"raft_term":2}}"#,
        )
        .unwrap();
        assert!(ok.succeeded);
        assert_eq!(ok.index, 11);
        assert_eq!(ok.range_mod_revision(0), 0, "a put is not a range");
        // Failure: the first key exists at 9, the second is absent.
        let failed: TxnAnswer = serde_json::from_str(
            r#"{"succeeded":false,"responses":[
                {"range":{"items":[{"key":"a","value":"x","index":9,"create_revision":4,"mod_revision":9,"version":2,"lease":0}],"more":false,"count":1}},
                {"range":{"items":[],"more":false,"count":0}}],
                "index":12,"header":{"cluster_id":1,"member_id":1,"revision":12,"raft_term":2}}"#,
        )
        .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.range_mod_revision(0), 9);
        assert_eq!(failed.range_mod_revision(1), 0);
        assert_eq!(failed.range_mod_revision(5), 0);
        assert!(serde_json::from_str::<TxnAnswer>(r#"{"index":1}"#).is_err());
    }

    #[test]
    fn the_mod_cache_moves_forward_on_success_and_to_the_store_on_failure() {
        let c = ModCache::new(3);
        assert_eq!(c.get(1), 0);
        c.saw(1, 10);
        c.saw(1, 8);
        assert_eq!(c.get(1), 10, "an older success does not move it back");
        c.set(1, 4);
        assert_eq!(c.get(1), 4, "what the store says wins");
        c.saw(99, 5);
        assert_eq!(c.get(99), 0, "outside the key space: ignored");
    }
}
