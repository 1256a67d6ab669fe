//! HTTP client for the RaftKV API with leader discovery and retry. (Stub: filled in by the CLI author.)
