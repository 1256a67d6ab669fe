//! The client's typed errors.

/// Why a client request did not succeed.
///
/// The variants mirror the contract's status codes, so callers (the CLI's
/// exit codes, `raftkv bench`'s error counts) can tell a missing key from a
/// failed precondition from an unavailable cluster without parsing text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The key does not exist (HTTP 404 on a key).
    #[error("key not found: {key}")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// A compare-and-swap precondition failed (HTTP 412); nothing changed.
    #[error(
        "precondition failed: key {key} was expected at index {expected}{}, but it is {}",
        if *.expected == 0 { " (absent)" } else { "" },
        if *.current == 0 { "absent (index 0)".to_string() } else { format!("at index {}", .current) }
    )]
    CasMismatch {
        /// The key.
        key: String,
        /// The mod index the write required (`--cas`; 0 = absent).
        expected: u64,
        /// The key's current mod index (0 = absent).
        current: u64,
    },
    /// No node could serve the request in time: every node was down, no
    /// leader was known, or the cluster had lost its quorum (HTTP 503).
    #[error("cluster unavailable: {message}{}", if *.outcome_unknown {
        " (the write may or may not have been applied)"
    } else { "" })]
    Unavailable {
        /// True when a write reached a node but its fate is unknown: it may
        /// still commit. Retrying a non-idempotent write is then unsafe.
        outcome_unknown: bool,
        /// What went wrong, with the node it came from.
        message: String,
    },
    /// The request was rejected as invalid (HTTP 400 or 413, or refused by
    /// the client before sending).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A status the contract does not use for this request.
    #[error("unexpected HTTP {status} from {url}: {message}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The node that answered.
        url: String,
        /// The error message from the body, or the body itself.
        message: String,
    },
    /// A node answered with a body that could not be understood.
    #[error("invalid response from {url}: {message}")]
    InvalidResponse {
        /// The node that answered.
        url: String,
        /// What could not be parsed.
        message: String,
    },
    /// The data model refused the request: a revision below the compact
    /// revision ([`crate::kv::KvError::Compacted`], HTTP 410) or above the
    /// current one, or a request it does not allow (HTTP 400/413). The
    /// text is etcd's where etcd has one.
    #[error("{}", kv_message(.0))]
    Kv(crate::kv::KvError),
    /// The client itself is misconfigured (e.g. a bad node URL).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// A short, stable name for the kind of error, for counting errors by
    /// kind (e.g. in `raftkv bench`).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::NotFound { .. } => "not_found",
            ClientError::CasMismatch { .. } => "cas_mismatch",
            ClientError::Unavailable {
                outcome_unknown: true,
                ..
            } => "outcome_unknown",
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::BadRequest(_) => "bad_request",
            ClientError::Http { .. } => "http",
            ClientError::InvalidResponse { .. } => "invalid_response",
            ClientError::Config(_) => "config",
            ClientError::Kv(crate::kv::KvError::Compacted { .. }) => "compacted",
            ClientError::Kv(crate::kv::KvError::FutureRevision) => "future_revision",
            ClientError::Kv(_) => "refused",
        }
    }

    /// True if a write may have been applied although it was not confirmed.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable {
                outcome_unknown: true,
                ..
            }
        )
    }
}

/// A refusal's text, with the compact revision for a compacted read (the
/// number a caller needs to re-list).
fn kv_message(e: &crate::kv::KvError) -> String {
    match e {
        crate::kv::KvError::Compacted { compact_revision } if *compact_revision > 0 => {
            format!("{e} (compact revision {compact_revision})")
        }
        _ => e.to_string(),
    }
}
