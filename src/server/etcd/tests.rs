//! The forwarding wire: what a follower sends the leader and back.

use super::leader::{decode, encode, Failure, LeaderAnswer, LeaderOp, WireError};
use crate::etcd::EtcdError;
use crate::kv::{
    Command, CommandResponse, KeyValue, KvError, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Revisioned,
};

#[test]
fn ops_and_answers_round_trip() {
    let ops = [
        LeaderOp::Propose(Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![0, 255, 7],
            prev_kv: true,
            ..Default::default()
        })),
        LeaderOp::Range(RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit: 3,
            revision: 9,
            ..Default::default()
        }),
    ];
    for op in ops {
        let bytes = encode(&op).unwrap();
        assert_eq!(decode::<LeaderOp>(&bytes).unwrap(), op);
    }
    let answers = [
        LeaderAnswer::Applied(Revisioned {
            revision: 5,
            body: CommandResponse::Put(PutResponse {
                prev_kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    create_revision: 2,
                    mod_revision: 4,
                    version: 2,
                    value: b"old".to_vec(),
                    lease: 0,
                }),
            }),
        }),
        LeaderAnswer::Range(Revisioned {
            revision: 5,
            body: RangeResponse::default(),
        }),
        LeaderAnswer::NotLeader(Some(7)),
        LeaderAnswer::NotLeader(None),
        LeaderAnswer::Retry,
        LeaderAnswer::Failed(Failure::Kv(KvError::Compacted {
            compact_revision: 3,
        })),
        LeaderAnswer::Failed(Failure::Unavailable("why".into())),
    ];
    for a in answers {
        let bytes = encode(&a).unwrap();
        assert_eq!(decode::<LeaderAnswer>(&bytes).unwrap(), a);
    }
}

#[test]
fn foreign_or_damaged_bodies_are_refused() {
    assert_eq!(decode::<LeaderOp>(&[]), Err(WireError::Empty));
    let mut bytes = encode(&LeaderOp::Range(RangeRequest::default())).unwrap();
    bytes[0] = 9;
    assert_eq!(decode::<LeaderOp>(&bytes), Err(WireError::Version(9)));
    let mut bytes = encode(&LeaderOp::Range(RangeRequest::default())).unwrap();
    bytes.push(0);
    assert_eq!(decode::<LeaderOp>(&bytes), Err(WireError::Trailing(1)));
    assert!(matches!(
        decode::<LeaderOp>(&[1, 200]),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn failures_keep_etcds_error_across_the_hop() {
    let errors = [
        EtcdError::Kv(KvError::FutureRevision),
        EtcdError::NoLeader,
        EtcdError::LeaderChanged,
        EtcdError::Stopped,
        EtcdError::Timeout,
        EtcdError::TooManyRequests,
        EtcdError::Unavailable("disk".into()),
        EtcdError::Internal("bug".into()),
    ];
    for e in errors {
        let back = EtcdError::from(Failure::from(e.clone()));
        assert_eq!(back, e);
    }
    // Errors without a wire form keep their text and code class.
    let back = EtcdError::from(Failure::from(EtcdError::Corrupt));
    assert_eq!(back.to_string(), EtcdError::Corrupt.to_string());
}
