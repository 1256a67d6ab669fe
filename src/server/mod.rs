//! The HTTP server: client API and Raft RPC routes (axum). (Stub: filled in by the runtime author.)
