//! [`EtcdError`]: every way an etcd API call can fail, with etcd's gRPC
//! status code and exact text.
//!
//! Go clients (`clientv3`, etcdctl) turn a status back into an error value
//! by comparing its *message* with etcd's texts (`rpctypes.Error`), and
//! retry by code, so both are copied exactly where etcd has the error
//! (the texts of etcd's `api/v3rpc/rpctypes/error.go`, the codes it gives
//! them). Errors etcd does not have (RaftKV's own key/value limits, negative
//! numbers, enum values etcd would accept silently, services not built yet)
//! keep RaftKV's own text, without the `etcdserver: ` prefix, so no client
//! mistakes them for one of etcd's.

use tonic::{Code, Status};

use crate::kv::KvError;
use crate::node::{ReadError, Unavailable, WriteError};
use crate::raft::RaftError;

/// The issue that brings each service not implemented yet, named in the
/// `Unimplemented` answers so a user knows where to look.
pub mod issue {
    /// Leases (the Lease service, `lease` on puts).
    pub const LEASES: &str = "issue 17: leases";
    /// Membership changes (MemberAdd/Remove/Update/Promote).
    pub const MEMBERSHIP: &str = "issue 18: membership changes";
    /// Users, roles and authentication (the Auth service).
    pub const AUTH: &str = "issue 19: security";
    /// The rest of the etcd API (snapshot, hash, downgrade).
    pub const ETCD_API: &str = "issue 16: etcd v3 API";
}

/// Why an etcd API call failed. `Display` is the exact gRPC status message
/// and [`EtcdError::code`] the status code; `From<EtcdError> for Status`
/// puts them together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// The request was refused by the data model (validation or state).
    #[error("{}", kv_message(.0))]
    Kv(#[from] KvError),
    /// An enum field holds a value outside the schema's enum, where etcd
    /// would silently pick a default; RaftKV refuses it instead.
    #[error("invalid {field}: {value} is not a value of the enum")]
    InvalidEnum {
        /// The field, as named in the schema (`Compare.result`, ...).
        field: &'static str,
        /// The value received.
        value: i32,
    },
    /// etcd: no leader is known (a new election, a partition).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// etcd: the operation needs the leader and this member is not it.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// etcd: leadership moved while the request was in flight; nothing was
    /// applied, retrying is safe.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// etcd: the member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// etcd: the deadline passed; the outcome of a write is unknown.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// etcd: too many requests are queued; nothing was proposed.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// etcd: MoveLeader to a member that cannot lead (unknown, itself).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// etcd: MoveLeader was accepted but the target did not take over
    /// before the deadline.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// etcd: a lease named by the request does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// etcd: the data on this member failed a corruption check.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The member cannot serve right now for a reason etcd has no text for
    /// (RaftKV's own words).
    #[error("{0}")]
    Unavailable(String),
    /// A service or option RaftKV does not implement (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// A fault of the member itself (storage, a bug); never the request's.
    #[error("{0}")]
    Internal(String),
}

impl EtcdError {
    /// The gRPC status code etcd gives this error.
    pub fn code(&self) -> Code {
        match self {
            EtcdError::Kv(e) => kv_code(e),
            EtcdError::InvalidEnum { .. } => Code::InvalidArgument,
            EtcdError::NoLeader
            | EtcdError::LeaderChanged
            | EtcdError::Stopped
            | EtcdError::Timeout
            | EtcdError::LeaderTransferTimeout
            | EtcdError::Unavailable(_) => Code::Unavailable,
            EtcdError::NotLeader | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::TooManyRequests => Code::ResourceExhausted,
            EtcdError::LeaseNotFound => Code::NotFound,
            EtcdError::Corrupt => Code::DataLoss,
            EtcdError::Unimplemented(_) => Code::Unimplemented,
            EtcdError::Internal(_) => Code::Internal,
        }
    }

    /// `Unimplemented`, naming what is missing and the issue that brings it.
    pub fn unimplemented(what: &str, issue: &str) -> EtcdError {
        EtcdError::Unimplemented(format!("{what} is not implemented by RaftKV yet ({issue})"))
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// etcd's status code for a data-model refusal.
fn kv_code(e: &KvError) -> Code {
    match e {
        KvError::Compacted { .. } | KvError::FutureRevision => Code::OutOfRange,
        KvError::LeaseNotFound => Code::NotFound,
        KvError::EmptyKey
        | KvError::KeyTooLong { .. }
        | KvError::ValueTooLarge { .. }
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::KeyNotFound
        | KvError::TooManyOps
        | KvError::DuplicateKey
        | KvError::InvalidSortOption
        | KvError::NegativeField { .. } => Code::InvalidArgument,
        KvError::MalformedCommand(_) => Code::Internal,
    }
}

/// The status message of a data-model refusal: etcd's errors get etcd's
/// `etcdserver: ` prefix, RaftKV's own keep their text.
fn kv_message(e: &KvError) -> String {
    if has_etcd_text(e) {
        format!("etcdserver: {e}")
    } else {
        e.to_string()
    }
}

/// Whether etcd's gRPC API has this error with this text. (Listed here
/// rather than taken from [`KvError::is_etcd_error`], which also counts
/// "invalid sort option": etcd has no such error, it ignores unknown sort
/// values.)
fn has_etcd_text(e: &KvError) -> bool {
    match e {
        KvError::Compacted { .. }
        | KvError::FutureRevision
        | KvError::EmptyKey
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::KeyNotFound
        | KvError::TooManyOps
        | KvError::DuplicateKey
        | KvError::LeaseNotFound => true,
        KvError::KeyTooLong { .. }
        | KvError::ValueTooLarge { .. }
        | KvError::InvalidSortOption
        | KvError::NegativeField { .. }
        | KvError::MalformedCommand(_) => false,
    }
}

/// The node's write errors, in etcd's terms. Nothing here was applied
/// except where the outcome is unknown ([`EtcdError::Timeout`], as etcd
/// answers a proposal whose deadline passed).
impl From<WriteError> for EtcdError {
    fn from(e: WriteError) -> EtcdError {
        match e {
            WriteError::NotLeader { leader: None } => EtcdError::NoLeader,
            // The handle refuses before proposing: leadership has moved
            // since the request was routed here. A client may retry on any
            // member (Unavailable), as after etcd's "leader changed".
            WriteError::NotLeader { leader: Some(_) } => EtcdError::LeaderChanged,
            WriteError::NotApplied => EtcdError::LeaderChanged,
            WriteError::Unknown(_) => EtcdError::Timeout,
            WriteError::Unavailable(why) => unavailable(why),
        }
    }
}

/// The node's linearizable-read errors, in etcd's terms.
impl From<ReadError> for EtcdError {
    fn from(e: ReadError) -> EtcdError {
        match e {
            ReadError::NotLeader { leader: None } => EtcdError::NoLeader,
            ReadError::NotLeader { leader: Some(_) } => EtcdError::LeaderChanged,
            ReadError::Unavailable(Unavailable::NotConfirmed { .. }) => EtcdError::Timeout,
            ReadError::Unavailable(why) => unavailable(why),
        }
    }
}

/// Sorts the node's "nothing was done" causes into etcd's errors.
fn unavailable(why: Unavailable) -> EtcdError {
    match why {
        Unavailable::ShuttingDown | Unavailable::Stopped => EtcdError::Stopped,
        Unavailable::Overloaded => EtcdError::TooManyRequests,
        Unavailable::Refused(RaftError::TransferInProgress)
        | Unavailable::Refused(RaftError::NotLeader { .. }) => EtcdError::LeaderChanged,
        Unavailable::NotConfirmed { .. } => EtcdError::Timeout,
        other @ (Unavailable::StorageFailed(_) | Unavailable::Refused(_)) => {
            EtcdError::Unavailable(other.to_string())
        }
    }
}

#[cfg(test)]
mod tests;
