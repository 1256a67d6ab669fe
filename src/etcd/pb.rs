//! The generated etcd v3 API types: prost messages, tonic clients and
//! server traits, and protobuf-JSON serde impls (see `build.rs`). Generated
//! code has no doc comments of its own, so the lints that want them are
//! switched off here, and only here.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's `mvccpb`: `KeyValue` and `Event`.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's `authpb`: users, roles, permissions.
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's `etcdserverpb`: the six services and their messages.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
