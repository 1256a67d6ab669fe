//! Validation of everything a client sends: keys, query parameters and
//! bodies. Each check turns bad input into the contract's status code with
//! a message that says what was wrong.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::Value;

use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

use super::error::ApiError;

/// Largest accepted body of a `PUT /kv/{key}`: a 1 MiB value may need up
/// to six bytes of JSON per byte (`\u0000`), plus room for the object.
pub const MAX_KV_BODY_BYTES: usize = 6 * MAX_VALUE_BYTES + 64 * 1024;

/// Largest body read (and discarded) to answer 413 cleanly instead of
/// resetting a client that is still sending.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Default page size of `GET /kv`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest page size of `GET /kv`; bigger `limit`s are clamped (`more`
/// tells the client to continue with `after`).
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Extracts and checks the key of a `/kv/{key}` request from the raw
/// (still percent-encoded) path: everything after `/kv/`, slashes included,
/// byte for byte (`.`, `..` and `a/../b` are keys like any other).
pub fn key_from_path(path: &str) -> Result<String, ApiError> {
    let raw = path
        .strip_prefix("/kv/")
        .or_else(|| path.strip_prefix("/kv").map(|_| ""))
        .unwrap_or_default();
    let bytes = percent_decode_strict(raw, "the key")?;
    let key = String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("the key is not valid UTF-8 after percent-decoding"))?;
    check_key(&key)?;
    Ok(key)
}

/// Percent-decodes `s`, refusing a `%` that is not followed by two hex
/// digits: `bad%ZZ` is a client bug, and storing it as a literal key would
/// make `bad%2541` and `bad%41` name different keys only by accident.
/// `what` names the input in the error ("the key", "query parameter `p`").
pub fn percent_decode_strict(s: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                let escape: String = s[i..].chars().take(3).collect();
                return Err(ApiError::bad_request(format!(
                    "{what} has a malformed percent-escape `{escape}` at byte {i}: \
                     `%` must be followed by two hex digits (write a literal `%` as `%25`)"
                )));
            }
        }
    }
    Ok(out)
}

/// Checks the contract's key rules: 1–1024 bytes.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "the key must not be empty: use /kv/{key}",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "the key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    Ok(())
}

/// Query parameters, decoded; unknown names and repeats are errors.
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.unwrap_or_default().split('&') {
            if part.is_empty() {
                continue;
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode_component(name, "a query parameter name")?;
            let value = decode_component(value, &format!("query parameter `{name}`"))?;
            if !allowed.contains(&name.as_str()) {
                let allowed = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{name}` (allowed here: {allowed})"
                )));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{name}` given more than once"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter `{name}` must be a non-negative integer, got `{v}`"
                ))
            }),
        }
    }
}

/// Query values use form encoding: `+` is a space.
fn decode_component(s: &str, what: &str) -> Result<String, ApiError> {
    let spaced = s.replace('+', " ");
    let bytes = percent_decode_strict(&spaced, what)?;
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("{what} is not valid UTF-8")))
}

/// Parameters of `PUT` and `DELETE /kv/{key}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteParams {
    /// `?cas=M`.
    pub cas: Option<u64>,
}

/// Parses `?cas=`.
pub fn write_params(query: Option<&str>) -> Result<WriteParams, ApiError> {
    let q = Query::parse(query, &["cas"])?;
    Ok(WriteParams { cas: q.u64("cas")? })
}

/// Checks that a request has no query parameters.
pub fn no_params(query: Option<&str>) -> Result<(), ApiError> {
    Query::parse(query, &[]).map(|_| ())
}

/// Reads a body of at most `limit` bytes. A bigger body is answered 413;
/// it is read and discarded (up to a bound) first, so a client still
/// sending it sees the answer rather than a reset connection.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        let expects_continue = headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        // A client waiting for `100 Continue` has not sent the body yet:
        // answering now costs it nothing. Others are drained below.
        if len > limit as u64 && (expects_continue || len > MAX_DRAIN_BYTES as u64) {
            return Err(too_large());
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    let mut total: usize = 0;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > MAX_DRAIN_BYTES {
            break;
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// Parses the body of `PUT /kv/{key}`: a JSON object whose `value` is a
/// string of at most 1 MiB.
pub fn parse_put_body(body: &[u8]) -> Result<String, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if body.iter().all(u8::is_ascii_whitespace) {
            ApiError::bad_request("the body is empty; expected {\"value\": \"...\"}")
        } else {
            ApiError::bad_request(format!("malformed JSON: {e}"))
        }
    })?;
    let Value::Object(mut obj) = v else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object like {\"value\": \"...\"}",
        ));
    };
    match obj.remove("value") {
        None => Err(ApiError::bad_request(
            "the body has no `value` field; expected {\"value\": \"...\"}",
        )),
        Some(Value::String(s)) => {
            if s.len() > MAX_VALUE_BYTES {
                Err(ApiError::too_large(format!(
                    "the value is {} bytes long; at most {MAX_VALUE_BYTES} are allowed",
                    s.len()
                )))
            } else {
                Ok(s)
            }
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "`value` must be a JSON string, got {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn keys_are_percent_decoded_and_may_contain_slashes() {
        assert_eq!(key_from_path("/kv/a/b%2Fc").unwrap(), "a/b/c");
        assert_eq!(key_from_path("/kv/h%C3%A9llo%20w").unwrap(), "héllo w");
        assert_eq!(key_from_path("/kv/a+b").unwrap(), "a+b");
        assert_eq!(key_from_path("/kv/100%25").unwrap(), "100%");
        // Dot segments are keys like any other, raw or encoded.
        for (path, key) in [
            ("/kv/.", "."),
            ("/kv/..", ".."),
            ("/kv/%2E", "."),
            ("/kv/%2e%2E", ".."),
            ("/kv/a/../b", "a/../b"),
            ("/kv/./x", "./x"),
            ("/kv//lead/", "/lead/"),
        ] {
            assert_eq!(key_from_path(path).unwrap(), key, "{path}");
        }
    }

    #[test]
    fn malformed_percent_escapes_are_400_with_a_clear_message() {
        for path in [
            "/kv/bad%ZZ",
            "/kv/%",
            "/kv/%4",
            "/kv/100%",
            "/kv/a%G1b",
            "/kv/%%41",
        ] {
            let e = key_from_path(path).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{path}");
            let msg = e.body["error"].as_str().unwrap();
            assert!(msg.contains("malformed percent-escape"), "{path}: {msg}");
            assert!(msg.contains("%25"), "{path}: {msg}");
        }
        let e = key_from_path("/kv/bad%ZZ").unwrap_err();
        assert!(e.body["error"]
            .as_str()
            .unwrap()
            .contains("`%ZZ` at byte 3"));
        // Query parameters follow the same rule.
        let e = write_params(Some("cas=%")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.body["error"].as_str().unwrap().contains("`cas`"));
        // A multi-byte character after `%` is reported, not split.
        let e = key_from_path("/kv/%é").unwrap_err();
        assert!(e.body["error"].as_str().unwrap().contains("`%é`"));
    }

    #[test]
    fn bad_keys_are_400() {
        for path in ["/kv/", "/kv", "/kv/%FF", "/kv/%C3"] {
            let e = key_from_path(path).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{path}");
        }
        let long = format!("/kv/{}", "k".repeat(1025));
        assert_eq!(
            key_from_path(&long).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let max = format!("/kv/{}", "k".repeat(1024));
        assert_eq!(key_from_path(&max).unwrap().len(), 1024);
        // 1024 bytes of multi-byte characters count as bytes, not chars.
        let wide = format!("/kv/{}", "%C3%A9".repeat(513));
        assert!(key_from_path(&wide).is_err());
    }

    #[test]
    fn write_params_parse() {
        assert_eq!(write_params(None).unwrap().cas, None);
        assert_eq!(write_params(Some("cas=0")).unwrap().cas, Some(0));
        assert_eq!(write_params(Some("cas=17")).unwrap().cas, Some(17));
        for bad in ["cas=", "cas=-1", "cas=x", "cas=1&cas=2", "foo=1", "cas=1.5"] {
            assert_eq!(
                write_params(Some(bad)).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn put_bodies() {
        assert_eq!(parse_put_body(br#"{"value":"v"}"#).unwrap(), "v");
        assert_eq!(parse_put_body(br#"{"value":"","extra":1}"#).unwrap(), "");
        let cases: [(&[u8], StatusCode); 8] = [
            (b"", StatusCode::BAD_REQUEST),
            (b"{", StatusCode::BAD_REQUEST),
            (b"not json", StatusCode::BAD_REQUEST),
            (br#"{"val":"v"}"#, StatusCode::BAD_REQUEST),
            (br#"{"value":1}"#, StatusCode::BAD_REQUEST),
            (br#"{"value":null}"#, StatusCode::BAD_REQUEST),
            (br#"["value"]"#, StatusCode::BAD_REQUEST),
            (br#""value""#, StatusCode::BAD_REQUEST),
        ];
        for (body, status) in cases {
            assert_eq!(
                parse_put_body(body).unwrap_err().status,
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(
            parse_put_body(big.as_bytes()).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let max = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES));
        assert_eq!(
            parse_put_body(max.as_bytes()).unwrap().len(),
            MAX_VALUE_BYTES
        );
    }

    #[tokio::test]
    async fn body_limit_is_413() {
        let headers = HeaderMap::new();
        let ok = read_body(&headers, Body::from(vec![b'a'; 10]), 10)
            .await
            .unwrap();
        assert_eq!(ok.len(), 10);
        let err = read_body(&headers, Body::from(vec![b'a'; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
