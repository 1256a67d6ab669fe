//! The etcd API end to end: the schema on the wire, the gateway's JSON, and
//! the services through the real gRPC stack (tonic client → HTTP/2 on a
//! loopback listener → axum → the services → the in-memory fake backend).

mod grpc;
mod json;
mod schema;
mod watch;
