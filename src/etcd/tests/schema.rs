//! The schema on the wire: messages encoded by the generated types are
//! decoded by hand (field numbers and wire types written down from the
//! protocol), and hand-made bytes decode into the generated types.

use prost::Message;

use crate::etcd::pb::etcdserverpb as rpc;
use crate::etcd::pb::mvccpb;

/// One decoded field: number, and a varint or the bytes of a
/// length-delimited field.
#[derive(Debug, PartialEq, Eq)]
enum Field {
    Varint(u32, u64),
    Bytes(u32, Vec<u8>),
}

fn varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().expect("truncated varint");
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long")
}

fn fields(mut b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = varint(&mut b);
        let number = (tag >> 3) as u32;
        match tag & 7 {
            0 => out.push(Field::Varint(number, varint(&mut b))),
            2 => {
                let len = varint(&mut b) as usize;
                out.push(Field::Bytes(number, b[..len].to_vec()));
                b = &b[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

#[test]
fn key_value_fields_are_numbered_one_to_six() {
    let kv = mvccpb::KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: b"v".to_vec(),
        lease: 6,
    };
    let bytes = kv.encode_to_vec();
    assert_eq!(
        bytes,
        [0x0a, 1, b'k', 0x10, 2, 0x18, 3, 0x20, 4, 0x2a, 1, b'v', 0x30, 6]
    );
}

#[test]
fn compare_puts_its_operand_in_the_union_and_range_end_at_64() {
    let c = rpc::Compare {
        result: rpc::compare::CompareResult::Greater as i32,
        target: rpc::compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        target_union: Some(rpc::compare::TargetUnion::ModRevision(7)),
        range_end: b"z".to_vec(),
    };
    let bytes = c.encode_to_vec();
    // Field 64, wire type 2: tag 514 = varint 0x82 0x04.
    assert!(bytes.windows(3).any(|w| w == [0x82, 0x04, 1]));
    assert_eq!(
        fields(&bytes),
        vec![
            Field::Varint(1, 1),
            Field::Varint(2, 2),
            Field::Bytes(3, b"k".to_vec()),
            Field::Varint(6, 7),
            Field::Bytes(64, b"z".to_vec()),
        ]
    );
}

#[test]
fn watch_response_events_are_field_11() {
    let resp = rpc::WatchResponse {
        header: Some(rpc::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        }),
        watch_id: 5,
        created: true,
        canceled: true,
        compact_revision: 6,
        cancel_reason: "r".into(),
        fragment: true,
        events: vec![mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec(),
                mod_revision: 3,
                ..Default::default()
            }),
            prev_kv: None,
        }],
    };
    let f = fields(&resp.encode_to_vec());
    assert_eq!(
        f[0],
        Field::Bytes(1, vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4])
    );
    assert_eq!(
        f[1..7],
        [
            Field::Varint(2, 5),
            Field::Varint(3, 1),
            Field::Varint(4, 1),
            Field::Varint(5, 6),
            Field::Bytes(6, b"r".to_vec()),
            Field::Varint(7, 1),
        ]
    );
    let Field::Bytes(11, event) = &f[7] else {
        panic!("events must be field 11: {:?}", f[7]);
    };
    assert_eq!(
        fields(event),
        vec![
            Field::Varint(1, 1),
            Field::Bytes(2, vec![0x0a, 1, b'k', 0x18, 3]),
        ]
    );
}

#[test]
fn hand_made_bytes_decode_into_the_generated_types() {
    // RangeRequest: key "a" (1), range_end "\0" (2), limit 10 (3),
    // sort_order DESCEND (5), sort_target MOD (6), keys_only (8),
    // max_create_revision 9 (13).
    let bytes = [
        0x0a, 1, b'a', 0x12, 1, 0, 0x18, 10, 0x28, 2, 0x30, 3, 0x40, 1, 0x68, 9,
    ];
    let r = rpc::RangeRequest::decode(&bytes[..]).unwrap();
    assert_eq!(
        r,
        rpc::RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit: 10,
            sort_order: rpc::range_request::SortOrder::Descend as i32,
            sort_target: rpc::range_request::SortTarget::Mod as i32,
            keys_only: true,
            max_create_revision: 9,
            ..Default::default()
        }
    );
    // Member: ID 7 (1), name "n" (2), peerURLs (3), clientURLs (4),
    // isLearner (5).
    let bytes = [
        0x08, 7, 0x12, 1, b'n', 0x1a, 1, b'p', 0x22, 1, b'c', 0x28, 1,
    ];
    let m = rpc::Member::decode(&bytes[..]).unwrap();
    assert_eq!((m.id, m.name.as_str(), m.is_learner), (7, "n", true));
    assert_eq!(
        (m.peer_ur_ls, m.client_ur_ls),
        (vec!["p".into()], vec!["c".into()])
    );
    // LeaseGrantRequest: TTL (1), ID (2). WatchCreateRequest: filters
    // packed (5), watch_id (7), fragment (8).
    let g = rpc::LeaseGrantRequest::decode(&[0x08, 60, 0x10, 5][..]).unwrap();
    assert_eq!((g.ttl, g.id), (60, 5));
    let w = rpc::WatchCreateRequest::decode(&[0x2a, 2, 0, 1, 0x38, 4, 0x40, 1][..]).unwrap();
    assert_eq!((w.filters, w.watch_id, w.fragment), (vec![0, 1], 4, true));
    // StatusResponse: raftAppliedIndex (7), dbSizeInUse (9), isLearner (10).
    let s = rpc::StatusResponse::decode(&[0x38, 3, 0x48, 4, 0x50, 1][..]).unwrap();
    assert_eq!(
        (s.raft_applied_index, s.db_size_in_use, s.is_learner),
        (3, 4, true)
    );
}
