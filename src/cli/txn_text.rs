//! The text form of a transaction, as `raftkv txn` reads it from stdin (in
//! the style of `etcdctl txn`), and the text of its answer.
//!
//! # Input
//!
//! Three sections separated by one blank line each: compares, success ops,
//! failure ops, one per line. Lines starting with `#` are comments.
//!
//! ```text
//! mod("counter") = "7"
//! value("owner") != "me"
//!
//! put counter 8
//! put note "value with spaces"
//! get owner
//!
//! get counter
//! ```
//!
//! - compare: `TARGET("KEY") OP "VALUE"` with TARGET one of `value`,
//!   `version`, `create`, `mod`, `lease`, OP one of `=`, `!=`, `<`, `>`;
//!   the value of a numeric target is an integer, quoted or not.
//! - ops: `put KEY VALUE`, `del KEY [END]`, `del --prefix PREFIX`,
//!   `get KEY [END]`, `get --prefix PREFIX`; `put` and `del` also take
//!   `--prev-kv`. `END` is etcd's range end (`"\x00"`, i.e. a NUL byte,
//!   means every key ≥ KEY; write it as `"\0"`).
//! - words are separated by spaces; a word with spaces is double-quoted,
//!   with `\"`, `\\`, `\n`, `\t` and `\0` escapes.
//!
//! Input whose first non-blank character is `{` is the JSON body of
//! `POST /txn` instead ([`crate::server::json`]).
//!
//! # Output
//!
//! [`format_txn_response`]: `SUCCESS` or `FAILURE`, then for each op of
//! the branch that ran a blank line and its result: `OK` for a put (then
//! the previous key and value when asked for), the number of deleted keys
//! for a delete (then the deleted keys and values when asked for), each
//! key and value on their own lines for a get, and a nested transaction's
//! own output.

use crate::kv::{
    prefix_end, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest,
    RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use crate::server::input::check_key;
use crate::server::json::{parse_txn_body, JsonError};

/// Why the text of a transaction could not be parsed. Line numbers start
/// at 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnTextError {
    /// A compare line that does not follow `TARGET("KEY") OP "VALUE"`.
    #[error("line {line}: bad compare: {reason} (expected e.g. `mod(\"key\") > \"5\"`)")]
    BadCompare {
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An op line whose first word is not `put`, `del` or `get`.
    #[error("line {line}: unknown operation `{word}` (expected put, del or get)")]
    UnknownOp {
        /// The line.
        line: usize,
        /// The word found.
        word: String,
    },
    /// An op with the wrong arguments.
    #[error("line {line}: {op}: {reason}")]
    BadArgs {
        /// The line.
        line: usize,
        /// The op.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A quoted word with no closing quote.
    #[error("line {line}: unterminated quoted string")]
    Unterminated {
        /// The line.
        line: usize,
    },
    /// An unknown backslash escape in a quoted word.
    #[error("line {line}: unknown escape `\\{escape}` (use \\\", \\\\, \\n, \\t or \\0)")]
    BadEscape {
        /// The line.
        line: usize,
        /// The character after the backslash.
        escape: char,
    },
    /// Text after the failure section has ended.
    #[error(
        "line {line}: unexpected text after the failure ops (a transaction has three sections)"
    )]
    TrailingText {
        /// The line.
        line: usize,
    },
    /// The JSON form did not parse.
    #[error("{0}")]
    Json(#[from] JsonError),
}

/// Parses a transaction from its text (or JSON) form.
pub fn parse_txn_text(input: &str) -> Result<TxnRequest, TxnTextError> {
    if input.trim_start().starts_with('{') {
        return Ok(parse_txn_body(input.as_bytes())?);
    }
    let mut txn = TxnRequest::default();
    let mut section = 0;
    for (i, raw) in input.lines().enumerate() {
        let line = i + 1;
        let text = raw.trim();
        if text.starts_with('#') {
            continue;
        }
        if text.is_empty() {
            section += 1;
            continue;
        }
        match section {
            0 => txn.compare.push(parse_compare(line, text)?),
            1 => txn.success.push(parse_op(line, text)?),
            2 => txn.failure.push(parse_op(line, text)?),
            _ => return Err(TxnTextError::TrailingText { line }),
        }
    }
    Ok(txn)
}

/// Splits a line into words (see the module's Input section).
fn words(line: usize, text: &str) -> Result<Vec<String>, TxnTextError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            out.push(quoted(line, &mut chars)?);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

/// The rest of a quoted word, the opening quote already consumed.
fn quoted(
    line: usize,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<String, TxnTextError> {
    let mut w = String::new();
    loop {
        match chars.next() {
            None => return Err(TxnTextError::Unterminated { line }),
            Some('"') => return Ok(w),
            Some('\\') => match chars.next() {
                Some('"') => w.push('"'),
                Some('\\') => w.push('\\'),
                Some('n') => w.push('\n'),
                Some('t') => w.push('\t'),
                Some('0') => w.push('\0'),
                Some(other) => {
                    return Err(TxnTextError::BadEscape {
                        line,
                        escape: other,
                    })
                }
                None => return Err(TxnTextError::Unterminated { line }),
            },
            Some(c) => w.push(c),
        }
    }
}

fn parse_compare(line: usize, text: &str) -> Result<Compare, TxnTextError> {
    let bad = |reason: String| TxnTextError::BadCompare { line, reason };
    let open = text
        .find('(')
        .ok_or_else(|| bad("no `(` after the target".into()))?;
    let target = text[..open].trim();
    let mut chars = text[open + 1..].trim_start().chars().peekable();
    if chars.next() != Some('"') {
        return Err(bad("the key must be double-quoted".into()));
    }
    let key = quoted(line, &mut chars)?;
    let rest: String = chars.collect();
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or_else(|| bad("no `)` after the key".into()))?
        .trim_start();
    let (result, rest) = if let Some(r) = rest.strip_prefix("!=") {
        (CompareResult::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (CompareResult::Equal, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (CompareResult::Less, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (CompareResult::Greater, r)
    } else {
        return Err(bad(format!(
            "expected one of =, !=, <, > after the key, got `{rest}`"
        )));
    };
    if let Some(r) = rest.strip_prefix('=') {
        // `>=`, `<=` and `==` are not etcd's operators; say so rather than
        // reading `=` as the value.
        let op = &text[text.len() - r.len() - 2..text.len() - r.len()];
        return Err(bad(format!(
            "`{op}` is not an operator (use one of =, !=, <, >)"
        )));
    }
    let value = match words(line, rest)?.as_slice() {
        [v] => v.clone(),
        [] => return Err(bad("no value after the operator".into())),
        [_, extra, ..] => return Err(bad(format!("unexpected `{extra}` after the value"))),
    };
    let number = || {
        value.parse::<i64>().map_err(|_| {
            bad(format!(
                "a `{target}` compare needs an integer, got `{value}`"
            ))
        })
    };
    let target = match target {
        "value" | "val" => CompareTarget::Value(value.clone().into_bytes()),
        "version" | "ver" => CompareTarget::Version(number()?),
        "create" | "c" => CompareTarget::CreateRevision(number()?),
        "mod" | "m" => CompareTarget::ModRevision(number()?),
        "lease" => CompareTarget::Lease(number()?),
        other => {
            return Err(bad(format!(
                "unknown target `{other}` (expected value, version, create, mod or lease)"
            )))
        }
    };
    checked_key(&key).map_err(bad)?;
    Ok(Compare {
        key: key.into_bytes(),
        range_end: Vec::new(),
        result,
        target,
    })
}

/// The server's key rules ([`check_key`]), with a message that does not
/// point at `/kv/{key}`.
fn checked_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key must not be empty".into());
    }
    check_key(key).map_err(|e| {
        e.body
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("invalid key")
            .to_string()
    })
}

fn parse_op(line: usize, text: &str) -> Result<RequestOp, TxnTextError> {
    let words = words(line, text)?;
    let (name, args) = match words.split_first() {
        Some((n, a)) => (n.as_str(), a),
        None => {
            return Err(TxnTextError::UnknownOp {
                line,
                word: String::new(),
            })
        }
    };
    let op: &'static str = match name {
        "put" => "put",
        "del" | "delete" => "del",
        "get" => "get",
        other => {
            return Err(TxnTextError::UnknownOp {
                line,
                word: other.to_string(),
            })
        }
    };
    let bad = |reason: String| TxnTextError::BadArgs { line, op, reason };
    let mut prefix = false;
    let mut prev_kv = false;
    let mut pos: Vec<&str> = Vec::new();
    for a in args {
        match a.as_str() {
            "--prefix" if op != "put" => prefix = true,
            "--prev-kv" if op != "get" => prev_kv = true,
            f if f.starts_with("--") => return Err(bad(format!("unknown flag `{f}`"))),
            w => pos.push(w),
        }
    }
    match op {
        "put" => match pos.as_slice() {
            [k, v] => {
                checked_key(k).map_err(bad)?;
                Ok(RequestOp::Put(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    prev_kv,
                    ..PutRequest::default()
                }))
            }
            _ => Err(bad(format!(
                "expected `put KEY VALUE`, got {} argument(s) (quote a value with spaces)",
                pos.len()
            ))),
        },
        _ => {
            let (key, range_end) = match (prefix, pos.as_slice()) {
                (true, [""]) => (vec![0], vec![0]),
                (true, [p]) => {
                    checked_key(p).map_err(bad)?;
                    (p.as_bytes().to_vec(), prefix_end(p.as_bytes()))
                }
                (false, [k]) => {
                    checked_key(k).map_err(bad)?;
                    (k.as_bytes().to_vec(), Vec::new())
                }
                (false, [k, e]) => {
                    checked_key(k).map_err(bad)?;
                    if e.is_empty() {
                        return Err(bad("the range end must not be empty".into()));
                    }
                    (k.as_bytes().to_vec(), e.as_bytes().to_vec())
                }
                (true, _) => return Err(bad(format!("expected `{op} --prefix PREFIX`"))),
                (false, _) => return Err(bad(format!("expected `{op} KEY [END]`"))),
            };
            Ok(if op == "del" {
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv,
                })
            } else {
                RequestOp::Range(RangeRequest {
                    key,
                    range_end,
                    ..RangeRequest::default()
                })
            })
        }
    }
}

/// The text of a transaction's answer (see the module's Output section).
/// Keys and values that are not UTF-8 are shown with U+FFFD in place of
/// the bad bytes.
pub fn format_txn_response(resp: &TxnResponse) -> String {
    let mut out = String::new();
    write_txn(&mut out, resp);
    out
}

fn write_txn(out: &mut String, resp: &TxnResponse) {
    out.push_str(if resp.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for r in &resp.responses {
        out.push('\n');
        match r {
            ResponseOp::Put(p) => {
                out.push_str("OK\n");
                if let Some(kv) = &p.body.prev_kv {
                    write_kv(out, kv);
                }
            }
            ResponseOp::DeleteRange(d) => {
                out.push_str(&format!("{}\n", d.body.deleted));
                for kv in &d.body.prev_kvs {
                    write_kv(out, kv);
                }
            }
            ResponseOp::Range(g) => {
                for kv in &g.body.kvs {
                    write_kv(out, kv);
                }
            }
            ResponseOp::Txn(t) => write_txn(out, t),
        }
    }
}

fn write_kv(out: &mut String, kv: &KeyValue) {
    out.push_str(&String::from_utf8_lossy(&kv.key));
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&kv.value));
    out.push('\n');
}

#[cfg(test)]
mod tests;
