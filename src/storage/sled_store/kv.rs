//! The state-machine half of [`SledStore`]: the `kv` tree and
//! [`StateMachine`].

use std::ops::Bound;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::*;
use crate::kv::{decide, ApplyResult, Effect, KvCommand, KvItem};

/// The value of a user key: its mod index first, so that [`decide`]'s
/// input can be read without copying the value out.
///
/// Format: a checksummed record (see [`record`]) under the user key's
/// UTF-8 bytes, whose payload is `index` as a varint, then `value` as a
/// varint length and UTF-8 bytes. [`KvRecord`] decodes the same bytes.
#[derive(Serialize)]
struct KvRecordRef<'a> {
    index: u64,
    value: &'a str,
}

/// The owned twin of [`KvRecordRef`] (same format).
#[derive(Deserialize)]
struct KvRecord {
    index: u64,
    value: String,
}

impl Inner {
    /// The active key-value tree and its name. Callers that must not see
    /// an install switch trees under them hold the apply lock (writers) or
    /// use [`Inner::kv`] directly (readers).
    pub(super) fn active_kv(&self) -> (Tree, &'static str) {
        let slots = read(&self.kv);
        (slots.active().clone(), slots.active_name())
    }

    pub(super) fn read_applied(&self) -> Result<SnapshotMeta, StorageError> {
        let (tree, name) = self.active_kv();
        read_applied_in(self, &tree, name)
    }

    /// Verifies the records of key-value tree `tree` (named `name`) that
    /// come after key `after` (from the first one when `None`), at most
    /// `limit` of them: checksum, UTF-8 key, decodable record, and no
    /// reserved key but the applied index. Returns the last key checked
    /// when it stopped at `limit`, `None` once it reached the end, so that
    /// a caller can walk a large tree in chunks without holding an
    /// iterator (see [`KvCheck`]).
    pub(super) fn verify_kv(
        &self,
        tree: &Tree,
        name: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<sled::IVec>, StorageError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.verify_kv_range(tree, name, start, None, limit)
    }

    /// [`Self::verify_kv`] from `start`, for the keys before `until` (to
    /// the end when `None`).
    pub(super) fn verify_kv_range(
        &self,
        tree: &Tree,
        name: &str,
        start: Bound<&[u8]>,
        until: Option<&[u8]>,
        limit: usize,
    ) -> Result<Option<sled::IVec>, StorageError> {
        let start = start.map(<[u8]>::to_vec);
        let end = until.map_or(Bound::Unbounded, |u| Bound::Excluded(u.to_vec()));
        let mut checked = 0usize;
        for kv in tree.range::<Vec<u8>, _>((start, end)) {
            let (k, v) = kv.map_err(|e| self.sled_err(name, "scan", e))?;
            if k.first() == Some(&0xFF) {
                if &*k != APPLIED_KEY {
                    return Err(StorageError::Corruption {
                        tree: name.into(),
                        key: describe_key(name, &k),
                        reason: "unknown reserved key".into(),
                    });
                }
            } else {
                if std::str::from_utf8(&k).is_err() {
                    return Err(StorageError::Corruption {
                        tree: name.into(),
                        key: describe_key(name, &k),
                        reason: "key is not UTF-8".into(),
                    });
                }
                // The checksum (over key and payload) is what detects
                // damage; decoding every value as well doubled the walk's
                // time at 1M keys and catches nothing the crc misses, since
                // only this code writes the records.
                record::verify(&k, &v).map_err(|e| e.into_storage(name, describe_key(name, &k)))?;
            }
            checked += 1;
            if checked >= limit {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}

/// The applied index recorded in `tree` (default when none).
pub(super) fn read_applied_in(
    inner: &Inner,
    tree: &Tree,
    name: &str,
) -> Result<SnapshotMeta, StorageError> {
    match tree
        .get(APPLIED_KEY)
        .map_err(|e| inner.sled_err(name, &describe_key(name, APPLIED_KEY), e))?
    {
        None => Ok(SnapshotMeta::default()),
        Some(b) => record::decode(APPLIED_KEY, &b)
            .map_err(|e| e.into_storage(name, describe_key(name, APPLIED_KEY))),
    }
}

/// The mod index of `key` in `tree` (None = absent), verifying its record.
fn current_mod_index(
    inner: &Inner,
    tree: &Tree,
    name: &str,
    key: &[u8],
) -> Result<Option<u64>, StorageError> {
    match tree
        .get(key)
        .map_err(|e| inner.sled_err(name, &describe_key(name, key), e))?
    {
        None => Ok(None),
        Some(b) => record::decode_leading_u64(key, &b)
            .map(Some)
            .map_err(|e| e.into_storage(name, describe_key(name, key))),
    }
}

/// Encodes a user key's record (mod index + value) into `buf`.
pub(in crate::storage) fn encode_kv_record(
    key: &[u8],
    index: u64,
    value: &str,
    buf: &mut Vec<u8>,
) -> Result<(), StorageError> {
    record::encode_into(key, &KvRecordRef { index, value }, buf).map_err(StorageError::Encode)
}

/// Verifies and decodes a user key's record from `tree` into an item.
pub(in crate::storage) fn decode_kv_item(
    name: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<KvItem, StorageError> {
    let desc = || describe_key(name, key);
    let k = std::str::from_utf8(key)
        .map_err(|_| StorageError::Corruption {
            tree: name.into(),
            key: desc(),
            reason: "key is not UTF-8".into(),
        })?
        .to_string();
    let r: KvRecord = record::decode(key, bytes).map_err(|e| e.into_storage(name, desc()))?;
    Ok(KvItem {
        key: k,
        value: r.value,
        index: r.index,
    })
}

impl StateMachine for SledStore {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index.load(Ordering::Acquire)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, StorageError> {
        let inner = &*self.inner;
        let _g = write_lock(&inner.apply_lock);
        // Stable while the apply lock is held: installs take it too.
        let (tree, name) = inner.active_kv();
        // Snapshot sessions in progress: each modified key's pre-image goes
        // into their undo maps before the batch reaches sled.
        let sessions: Vec<Arc<snapshot::SessionShared>> = lock(&inner.sessions)
            .iter()
            .filter(|s| !s.is_aborted())
            .cloned()
            .collect();
        let mut applied = inner.applied_meta();
        let mut results = Vec::with_capacity(entries.len());
        let mut batch = Batch::default();
        // Keys changed earlier in this batch: their mod index (None =
        // removed), since the batch is not visible in the tree yet.
        let mut pending: std::collections::HashMap<String, Option<u64>> =
            std::collections::HashMap::new();
        let mut buf = Vec::with_capacity(128);
        for e in entries {
            if e.index <= applied.index {
                results.push(ApplyResult::Noop);
                continue;
            }
            if e.index != applied.index + 1 {
                return Err(StorageError::Inconsistent(format!(
                    "cannot apply entry {}: the state machine has applied only up to {}",
                    e.index, applied.index
                )));
            }
            applied = SnapshotMeta {
                index: e.index,
                term: e.term,
            };
            let cmd = match &e.payload {
                EntryPayload::Noop => None,
                EntryPayload::Command(bytes) => KvCommand::decode(bytes).ok(),
            };
            let Some(cmd) = cmd else {
                results.push(ApplyResult::Noop);
                continue;
            };
            let key = cmd.key();
            let current = match pending.get(key) {
                Some(c) => *c,
                None => current_mod_index(inner, &tree, name, key.as_bytes())?,
            };
            let (effect, result) = decide(&cmd, e.index, current);
            if !matches!(effect, Effect::None) && !sessions.is_empty() {
                snapshot::record_pre_images(inner, &sessions, &tree, name, key.as_bytes())?;
            }
            match effect {
                Effect::Set { value, index } => {
                    encode_kv_record(key.as_bytes(), index, &value, &mut buf)?;
                    inner.durability.note_record(buf.len());
                    batch.insert(key.as_bytes(), buf.as_slice());
                    pending.insert(key.to_string(), Some(index));
                }
                Effect::Remove => {
                    batch.remove(key.as_bytes());
                    pending.insert(key.to_string(), None);
                }
                Effect::None => {}
            }
            results.push(result);
        }
        if applied.index != inner.applied_index.load(Ordering::Acquire) {
            record::encode_into(APPLIED_KEY, &applied, &mut buf).map_err(StorageError::Encode)?;
            batch.insert(APPLIED_KEY, buf.as_slice());
            inner.healthy()?;
            let written = tree
                .apply_batch(batch)
                .map_err(|e| inner.sled_err(name, "apply batch", e));
            inner.fail(written)?;
            inner.applied_term.store(applied.term, Ordering::Release);
            inner.applied_index.store(applied.index, Ordering::Release);
        }
        Ok(results)
    }

    fn get(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
        let inner = &*self.inner;
        let k = key.as_bytes();
        if k.first() == Some(&0xFF) {
            return Ok(None);
        }
        let slots = read(&inner.kv);
        let name = slots.active_name();
        match slots
            .active()
            .get(k)
            .map_err(|e| inner.sled_err(name, &describe_key(name, k), e))?
        {
            None => Ok(None),
            Some(b) => {
                let r: KvRecord = record::decode(k, &b)
                    .map_err(|e| e.into_storage(name, describe_key(name, k)))?;
                Ok(Some((r.value, r.index)))
            }
        }
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KvItem>, bool), StorageError> {
        use std::ops::Bound;
        let inner = &*self.inner;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.as_bytes().to_vec()),
            _ => Bound::Included(prefix.as_bytes().to_vec()),
        };
        let slots = read(&inner.kv);
        let name = slots.active_name();
        let mut items = Vec::new();
        for kv in slots
            .active()
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (k, v) = kv.map_err(|e| inner.sled_err(name, "scan", e))?;
            if !k.starts_with(prefix.as_bytes()) || k.first() == Some(&0xFF) {
                break;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            items.push(decode_kv_item(name, &k, &v)?);
        }
        Ok((items, false))
    }

    /// The whole image in memory, built by a [`SnapshotSession`] (so it
    /// does not block `apply` either). The node streams images instead.
    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let session = self.begin_snapshot()?;
        let meta = session.meta();
        let mut image = Vec::new();
        for chunk in session.chunks(IMAGE_CHUNK_BYTES) {
            image.extend_from_slice(&chunk?.data);
        }
        Ok((meta, image))
    }

    /// Stages the image in the inactive tree, then makes that tree the
    /// state machine (one durable pointer flip). The log is not touched:
    /// see [`SledStore::install_snapshot`] for the atomic install with the
    /// log reset.
    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let staged = self.stage_whole_image(meta, data)?;
        self.switch_state_machine(staged)
    }
}
