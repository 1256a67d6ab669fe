//! In-memory [`LogStore`](super::LogStore) and
//! [`StateMachine`](super::StateMachine), used by the simulation. (Stub:
//! filled in by the simulation's author.)
