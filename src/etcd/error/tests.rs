use super::*;
use crate::node::Uncertain;

/// (error, code, exact message): the texts are etcd's `rpctypes` texts
/// where etcd has the error.
fn table() -> Vec<(EtcdError, Code, &'static str)> {
    use EtcdError as E;
    vec![
        (
            E::Kv(KvError::Compacted {
                compact_revision: 7,
            }),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            E::Kv(KvError::FutureRevision),
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            E::Kv(KvError::EmptyKey),
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ),
        (
            E::Kv(KvError::KeyNotFound),
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            E::Kv(KvError::ValueProvided),
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            E::Kv(KvError::LeaseProvided),
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        ),
        (
            E::Kv(KvError::TooManyOps),
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        (
            E::Kv(KvError::DuplicateKey),
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        (
            E::Kv(KvError::LeaseNotFound),
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            E::LeaseNotFound,
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (E::NoLeader, Code::Unavailable, "etcdserver: no leader"),
        (
            E::NotLeader,
            Code::FailedPrecondition,
            "etcdserver: not leader",
        ),
        (
            E::LeaderChanged,
            Code::Unavailable,
            "etcdserver: leader changed",
        ),
        (E::Stopped, Code::Unavailable, "etcdserver: server stopped"),
        (
            E::Timeout,
            Code::Unavailable,
            "etcdserver: request timed out",
        ),
        (
            E::TooManyRequests,
            Code::ResourceExhausted,
            "etcdserver: too many requests",
        ),
        (
            E::BadLeaderTransferee,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        (
            E::LeaderTransferTimeout,
            Code::Unavailable,
            "etcdserver: request timed out, leader transfer took too long",
        ),
        (E::Corrupt, Code::DataLoss, "etcdserver: corrupt cluster"),
        // RaftKV's own refusals: no etcdserver prefix.
        (
            E::Kv(KvError::KeyTooLong {
                len: 2000,
                max: 1024,
            }),
            Code::InvalidArgument,
            "key is too long: 2000 bytes, at most 1024 allowed",
        ),
        (
            E::Kv(KvError::ValueTooLarge {
                len: 2 << 20,
                max: 1 << 20,
            }),
            Code::InvalidArgument,
            "value is too large: 2097152 bytes, at most 1048576 allowed",
        ),
        (
            E::Kv(KvError::InvalidSortOption),
            Code::InvalidArgument,
            "invalid sort option",
        ),
        (
            E::Kv(KvError::NegativeField {
                field: "limit".into(),
                value: -1,
            }),
            Code::InvalidArgument,
            "limit must not be negative, got -1",
        ),
        (
            E::InvalidEnum {
                field: "Compare.result",
                value: 9,
            },
            Code::InvalidArgument,
            "invalid Compare.result: 9 is not a value of the enum",
        ),
        (
            E::unimplemented("the Lease service", issue::LEASES),
            Code::Unimplemented,
            "the Lease service is not implemented by RaftKV yet (issue 17: leases)",
        ),
        (
            E::Unavailable("the node is busy".into()),
            Code::Unavailable,
            "the node is busy",
        ),
        (E::Internal("disk".into()), Code::Internal, "disk"),
    ]
}

#[test]
fn every_error_has_etcds_code_and_exact_text() {
    for (err, code, message) in table() {
        let status = Status::from(err.clone());
        assert_eq!(status.code(), code, "{err:?}");
        assert_eq!(status.message(), message, "{err:?}");
    }
}

#[test]
fn every_data_model_error_is_in_the_table() {
    // A new KvError variant must get a row (and a deliberate code/text).
    let covered: Vec<std::mem::Discriminant<KvError>> = table()
        .into_iter()
        .filter_map(|(e, _, _)| match e {
            EtcdError::Kv(k) => Some(std::mem::discriminant(&k)),
            _ => None,
        })
        .collect();
    let all = [
        KvError::Compacted {
            compact_revision: 0,
        },
        KvError::FutureRevision,
        KvError::EmptyKey,
        KvError::KeyTooLong { len: 0, max: 0 },
        KvError::ValueTooLarge { len: 0, max: 0 },
        KvError::ValueProvided,
        KvError::LeaseProvided,
        KvError::KeyNotFound,
        KvError::TooManyOps,
        KvError::DuplicateKey,
        KvError::InvalidSortOption,
        KvError::NegativeField {
            field: String::new(),
            value: 0,
        },
        KvError::LeaseNotFound,
    ];
    for e in all {
        assert!(
            covered.contains(&std::mem::discriminant(&e)),
            "{e:?} has no row"
        );
    }
}

#[test]
fn node_write_errors_map_to_etcds() {
    let cases = [
        (WriteError::NotLeader { leader: None }, EtcdError::NoLeader),
        (
            WriteError::NotLeader { leader: Some(2) },
            EtcdError::LeaderChanged,
        ),
        (WriteError::NotApplied, EtcdError::LeaderChanged),
        (
            WriteError::Unknown(Uncertain::TimedOut { ms: 5000 }),
            EtcdError::Timeout,
        ),
        (
            WriteError::Unavailable(Unavailable::ShuttingDown),
            EtcdError::Stopped,
        ),
        (
            WriteError::Unavailable(Unavailable::Overloaded),
            EtcdError::TooManyRequests,
        ),
        (
            WriteError::Unavailable(Unavailable::Refused(RaftError::TransferInProgress)),
            EtcdError::LeaderChanged,
        ),
    ];
    for (from, to) in cases {
        assert_eq!(EtcdError::from(from.clone()), to, "{from:?}");
    }
}

#[test]
fn node_read_errors_map_to_etcds() {
    let cases = [
        (ReadError::NotLeader { leader: None }, EtcdError::NoLeader),
        (
            ReadError::NotLeader { leader: Some(3) },
            EtcdError::LeaderChanged,
        ),
        (
            ReadError::Unavailable(Unavailable::NotConfirmed { ms: 5000 }),
            EtcdError::Timeout,
        ),
        (
            ReadError::Unavailable(Unavailable::Stopped),
            EtcdError::Stopped,
        ),
        (
            ReadError::Unavailable(Unavailable::Overloaded),
            EtcdError::TooManyRequests,
        ),
    ];
    for (from, to) in cases {
        assert_eq!(EtcdError::from(from.clone()), to, "{from:?}");
    }
}
