//! The checks etcd makes on an incoming KV request before proposing it
//! (its v3rpc `check*Request` functions), as one step from the wire type
//! to a valid data-model request or [`Command`].
//!
//! The rules themselves are [`crate::kv::validate`]'s (the same functions
//! apply runs, so a request accepted here cannot be refused for its shape
//! later); this module adds what only the wire can get wrong: enum values
//! outside the schema and empty transaction operations
//! ([`super::convert`]). Those are reported first, except that an empty
//! range key is reported before a bad sort option, as etcd checks the key
//! first.

use super::error::EtcdError;
use super::pb::etcdserverpb as rpc;
use crate::kv::{self, validate, Command, KvError};

/// A range request, converted and checked.
pub fn checked_range(r: rpc::RangeRequest) -> Result<kv::RangeRequest, EtcdError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey.into());
    }
    let r = kv::RangeRequest::try_from(r)?;
    validate::validate_range(&r)?;
    Ok(r)
}

/// A put, as the command to propose.
pub fn checked_put(p: rpc::PutRequest) -> Result<Command, EtcdError> {
    checked(Command::Put(p.into()))
}

/// A range delete, as the command to propose.
pub fn checked_delete_range(d: rpc::DeleteRangeRequest) -> Result<Command, EtcdError> {
    checked(Command::DeleteRange(d.into()))
}

/// A transaction, as the command to propose.
pub fn checked_txn(t: rpc::TxnRequest) -> Result<Command, EtcdError> {
    checked(Command::Txn(t.try_into()?))
}

/// A compaction, as the command to propose.
pub fn checked_compaction(c: rpc::CompactionRequest) -> Result<Command, EtcdError> {
    checked(Command::Compact(c.into()))
}

fn checked(cmd: Command) -> Result<Command, EtcdError> {
    validate::validate_command(&cmd)?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::pb::etcdserverpb::{compare, request_op};

    fn put(key: &[u8]) -> rpc::RequestOp {
        rpc::RequestOp {
            request: Some(request_op::Request::RequestPut(rpc::PutRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn range_checks_the_key_first_then_the_sort_options_then_numbers() {
        let bad_sort = rpc::RangeRequest {
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            checked_range(bad_sort.clone()),
            Err(KvError::EmptyKey.into())
        );
        let keyed = rpc::RangeRequest {
            key: b"k".to_vec(),
            ..bad_sort
        };
        assert_eq!(checked_range(keyed), Err(KvError::InvalidSortOption.into()));
        let negative = rpc::RangeRequest {
            key: b"k".to_vec(),
            limit: -1,
            ..Default::default()
        };
        assert_eq!(
            checked_range(negative),
            Err(KvError::negative("limit", -1).into())
        );
        let fine = rpc::RangeRequest {
            key: b"k".to_vec(),
            range_end: vec![0],
            limit: 3,
            ..Default::default()
        };
        let r = checked_range(fine).unwrap();
        assert_eq!((r.key, r.range_end, r.limit), (b"k".to_vec(), vec![0], 3));
    }

    #[test]
    fn put_checks_are_etcds_and_raftkvs() {
        let cases = [
            (rpc::PutRequest::default(), KvError::EmptyKey),
            (
                rpc::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                },
                KvError::ValueProvided,
            ),
            (
                rpc::PutRequest {
                    key: b"k".to_vec(),
                    lease: 5,
                    ignore_lease: true,
                    ..Default::default()
                },
                KvError::LeaseProvided,
            ),
            (
                rpc::PutRequest {
                    key: vec![b'k'; kv::MAX_KEY_BYTES + 1],
                    ..Default::default()
                },
                KvError::KeyTooLong {
                    len: kv::MAX_KEY_BYTES + 1,
                    max: kv::MAX_KEY_BYTES,
                },
            ),
        ];
        for (req, err) in cases {
            assert_eq!(checked_put(req), Err(err.into()));
        }
        let ok = checked_put(rpc::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: true,
            ..Default::default()
        });
        assert_eq!(
            ok,
            Ok(Command::Put(kv::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                prev_kv: true,
                ..Default::default()
            }))
        );
    }

    #[test]
    fn delete_and_compaction_checks() {
        assert_eq!(
            checked_delete_range(rpc::DeleteRangeRequest::default()),
            Err(KvError::EmptyKey.into())
        );
        assert_eq!(
            checked_compaction(rpc::CompactionRequest {
                revision: -2,
                physical: false
            }),
            Err(KvError::negative("revision", -2).into())
        );
        assert!(checked_compaction(rpc::CompactionRequest {
            revision: 4,
            physical: true
        })
        .is_ok());
    }

    #[test]
    fn txn_checks_ops_duplicates_empty_ops_and_enums() {
        let too_many = rpc::TxnRequest {
            success: (0..=validate::MAX_TXN_OPS)
                .map(|i| put(format!("k{i}").as_bytes()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(checked_txn(too_many), Err(KvError::TooManyOps.into()));
        let duplicate = rpc::TxnRequest {
            success: vec![put(b"a"), put(b"a")],
            ..Default::default()
        };
        assert_eq!(checked_txn(duplicate), Err(KvError::DuplicateKey.into()));
        let empty_op = rpc::TxnRequest {
            failure: vec![rpc::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(checked_txn(empty_op), Err(KvError::KeyNotFound.into()));
        let keyless_compare = rpc::TxnRequest {
            compare: vec![rpc::Compare::default()],
            ..Default::default()
        };
        assert_eq!(checked_txn(keyless_compare), Err(KvError::EmptyKey.into()));
        let bad_target = rpc::TxnRequest {
            compare: vec![rpc::Compare {
                key: b"a".to_vec(),
                target: 17,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            checked_txn(bad_target),
            Err(EtcdError::InvalidEnum {
                field: "Compare.target",
                value: 17
            })
        );
        let fine = rpc::TxnRequest {
            compare: vec![rpc::Compare {
                key: b"a".to_vec(),
                target: compare::CompareTarget::Mod as i32,
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![put(b"a")],
            failure: vec![put(b"a")],
        };
        assert!(checked_txn(fine).is_ok());
    }
}
