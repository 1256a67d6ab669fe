//! [`Command`]: the key-value state machine's log payload.
//!
//! # Format
//!
//! A command travels inside [`crate::raft::EntryPayload::Command`] as
//!
//! ```text
//! +----------------------+----------------------------------------------+
//! | format (1 byte) = 2  | bincode 2, standard config, serde: Command   |
//! +----------------------+----------------------------------------------+
//! ```
//!
//! bincode's standard config writes integers as varints (`u32`/`u64`: one
//! byte below 251, else a marker byte 251/252/253 and 2/4/8 little-endian
//! bytes; `i64` zigzag-mapped first: 0→0, -1→1, 1→2, …), an enum as its
//! variant index (declaration order) followed by its fields, a struct as its
//! fields in declaration order, `bool` as one byte, `Option` as 0 or 1 and
//! the value, `Vec<T>` as its length and elements, and byte strings (keys,
//! values, range ends: `serde_bytes`) as their length and the raw bytes.
//! So the layout is fixed by the declaration order of every field and
//! variant in [`crate::kv::request`]: never reorder them; add new commands
//! (leases, sessions) as new variants at the end, which old entries never
//! use. A change that cannot be made that way bumps [`COMMAND_FORMAT`].
//! The golden test in this module pins the bytes.

use serde::{Deserialize, Serialize};

use super::request::{CompactionRequest, DeleteRangeRequest, PutRequest, TxnRequest};

/// The first byte of every encoded [`Command`]. It starts at 2 because the
/// entries of the retired single-key command format begin with its variant
/// index, 0 or 1: an entry of that older log format is refused as an
/// unknown format instead of being misread as a command.
pub const COMMAND_FORMAT: u8 = 2;

/// A write to the key-value state machine, as stored in the Raft log.
/// Variants are appended only (see the module's Format section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set one key.
    Put(PutRequest),
    /// Delete a range of keys.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Compact the history.
    Compact(CompactionRequest),
}

/// Why log bytes are not a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandDecodeError {
    /// The payload is empty.
    #[error("empty command payload")]
    Empty,
    /// The first byte names a format this build does not know (written by a
    /// newer RaftKV, or not a command at all).
    #[error("unknown command format {found} (this build reads format {COMMAND_FORMAT})")]
    UnknownFormat {
        /// The format byte found.
        found: u8,
    },
    /// The bytes after the format byte are not a valid command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// A command was decoded but bytes were left over.
    #[error("malformed command: {0} trailing bytes")]
    TrailingBytes(usize),
}

impl Command {
    /// Encodes the command for a log entry (see the module's Format section).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_FORMAT];
        bincode::serde::encode_into_std_write(self, &mut out, bincode::config::standard())
            .expect("encoding a Command into a Vec cannot fail");
        out
    }

    /// Decodes a command from a log entry; every byte must be used.
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandDecodeError> {
        let (&format, body) = bytes.split_first().ok_or(CommandDecodeError::Empty)?;
        if format != COMMAND_FORMAT {
            return Err(CommandDecodeError::UnknownFormat { found: format });
        }
        let (cmd, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| CommandDecodeError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(CommandDecodeError::TrailingBytes(body.len() - used));
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests;
