//! Deterministic simulation of a Raft cluster. (Stub: filled in by the simulation author.)
