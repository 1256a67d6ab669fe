//! The state-machine half of [`SledStore`]: the `kv` tree and
//! [`StateMachine`].

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::Batch;

use super::*;
use crate::kv::{decide, ApplyResult, Effect, KvCommand, KvItem};

/// The value of a user key: its mod index first, so that [`decide`]'s
/// input can be read without copying the value out.
#[derive(Serialize)]
struct KvRecordRef<'a> {
    index: u64,
    value: &'a str,
}

#[derive(Deserialize)]
struct KvRecord {
    index: u64,
    value: String,
}

impl Inner {
    pub(super) fn read_applied(&self) -> Result<SnapshotMeta, StorageError> {
        match self
            .kv
            .get(APPLIED_KEY)
            .map_err(|e| self.sled_err(KV_TREE, &describe_key(KV_TREE, APPLIED_KEY), e))?
        {
            None => Ok(SnapshotMeta::default()),
            Some(b) => record::decode(APPLIED_KEY, &b)
                .map_err(|e| e.into_storage(KV_TREE, describe_key(KV_TREE, APPLIED_KEY))),
        }
    }

    /// Verifies every record of the `kv` tree.
    pub(super) fn verify_kv(&self) -> Result<(), StorageError> {
        for kv in self.kv.iter() {
            let (k, v) = kv.map_err(|e| self.sled_err(KV_TREE, "scan", e))?;
            if k.first() == Some(&0xFF) {
                if &*k != APPLIED_KEY {
                    return Err(StorageError::Corruption {
                        tree: KV_TREE.into(),
                        key: describe_key(KV_TREE, &k),
                        reason: "unknown reserved key".into(),
                    });
                }
                continue;
            }
            if std::str::from_utf8(&k).is_err() {
                return Err(StorageError::Corruption {
                    tree: KV_TREE.into(),
                    key: describe_key(KV_TREE, &k),
                    reason: "key is not UTF-8".into(),
                });
            }
            record::decode::<KvRecord>(&k, &v)
                .map_err(|e| e.into_storage(KV_TREE, describe_key(KV_TREE, &k)))?;
        }
        Ok(())
    }

    /// The mod index of `key` (None = absent), verifying its record.
    pub(super) fn current_mod_index(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        match self
            .kv
            .get(key)
            .map_err(|e| self.sled_err(KV_TREE, &describe_key(KV_TREE, key), e))?
        {
            None => Ok(None),
            Some(b) => record::decode_leading_u64(key, &b)
                .map(Some)
                .map_err(|e| e.into_storage(KV_TREE, describe_key(KV_TREE, key))),
        }
    }
}

impl StateMachine for SledStore {
    fn applied_index(&self) -> u64 {
        self.inner.applied_index.load(Ordering::Acquire)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<ApplyResult>, StorageError> {
        let inner = &*self.inner;
        let _g = write_lock(&inner.apply_lock);
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
                None => inner.current_mod_index(key.as_bytes())?,
            };
            let (effect, result) = decide(&cmd, e.index, current);
            match effect {
                Effect::Set { value, index } => {
                    record::encode_into(
                        key.as_bytes(),
                        &KvRecordRef {
                            index,
                            value: &value,
                        },
                        &mut buf,
                    )
                    .map_err(|err| StorageError::Io(err.0))?;
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
            record::encode_into(APPLIED_KEY, &applied, &mut buf)
                .map_err(|e| StorageError::Io(e.0))?;
            batch.insert(APPLIED_KEY, buf.as_slice());
            inner.healthy()?;
            let written = inner
                .kv
                .apply_batch(batch)
                .map_err(|e| inner.sled_err(KV_TREE, "apply batch", e));
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
        match inner
            .kv
            .get(k)
            .map_err(|e| inner.sled_err(KV_TREE, &describe_key(KV_TREE, k), e))?
        {
            None => Ok(None),
            Some(b) => {
                let r: KvRecord = record::decode(k, &b)
                    .map_err(|e| e.into_storage(KV_TREE, describe_key(KV_TREE, k)))?;
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
        let mut items = Vec::new();
        for kv in inner.kv.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv.map_err(|e| inner.sled_err(KV_TREE, "scan", e))?;
            if !k.starts_with(prefix.as_bytes()) || k.first() == Some(&0xFF) {
                break;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            let desc = || describe_key(KV_TREE, &k);
            let key = std::str::from_utf8(&k)
                .map_err(|_| StorageError::Corruption {
                    tree: KV_TREE.into(),
                    key: desc(),
                    reason: "key is not UTF-8".into(),
                })?
                .to_string();
            let r: KvRecord =
                record::decode(&k, &v).map_err(|e| e.into_storage(KV_TREE, desc()))?;
            items.push(KvItem {
                key,
                value: r.value,
                index: r.index,
            });
        }
        Ok((items, false))
    }

    fn snapshot(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let inner = &*self.inner;
        let _g = read_lock(&inner.apply_lock);
        let meta = inner.applied_meta();
        let mut w = ImageWriter::new(meta)?;
        for kv in inner.kv.iter() {
            let (k, v) = kv.map_err(|e| inner.sled_err(KV_TREE, "snapshot scan", e))?;
            if k.first() == Some(&0xFF) {
                break;
            }
            let desc = || describe_key(KV_TREE, &k);
            let key = std::str::from_utf8(&k).map_err(|_| StorageError::Corruption {
                tree: KV_TREE.into(),
                key: desc(),
                reason: "key is not UTF-8".into(),
            })?;
            let r: KvRecord =
                record::decode(&k, &v).map_err(|e| e.into_storage(KV_TREE, desc()))?;
            w.push(key, &r.value, r.index)?;
        }
        Ok((meta, w.finish()?))
    }

    fn restore(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let inner = &*self.inner;
        let (mut reader, image_meta) = ImageReader::new(data)?;
        if image_meta != meta {
            return Err(StorageError::Inconsistent(format!(
                "snapshot image is of index {} term {}, expected index {} term {}",
                image_meta.index, image_meta.term, meta.index, meta.term
            )));
        }
        // Build the complete new content first (verifying the whole image),
        // then switch in one batch: remove every current key, insert the
        // image's keys and the new applied index.
        let mut batch = Batch::default();
        let _g = write_lock(&inner.apply_lock);
        for k in inner.kv.iter().keys() {
            let k = k.map_err(|e| inner.sled_err(KV_TREE, "scan", e))?;
            batch.remove(k);
        }
        let mut buf = Vec::with_capacity(128);
        while let Some(item) = reader.next_item()? {
            record::encode_into(
                item.key.as_bytes(),
                &KvRecordRef {
                    index: item.index,
                    value: &item.value,
                },
                &mut buf,
            )
            .map_err(|e| StorageError::Io(e.0))?;
            inner.durability.note_record(buf.len());
            batch.insert(item.key.as_bytes(), buf.as_slice());
        }
        record::encode_into(APPLIED_KEY, &meta, &mut buf).map_err(|e| StorageError::Io(e.0))?;
        batch.insert(APPLIED_KEY, buf.as_slice());
        inner.healthy()?;
        let written = inner
            .kv
            .apply_batch(batch)
            .map_err(|e| inner.sled_err(KV_TREE, "restore batch", e));
        inner.fail(written)?;
        inner.sync()?;
        inner.applied_term.store(meta.term, Ordering::Release);
        inner.applied_index.store(meta.index, Ordering::Release);
        Ok(())
    }
}
