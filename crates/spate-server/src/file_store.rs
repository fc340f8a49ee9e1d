//! The single-instance `ConfigStore`: resources in `<data-dir>/resources.json`
//! (owner-only; written to a temporary file, synced, then renamed, so a crash
//! leaves the old or the new set, never a mix), Secret values apart in
//! `<data-dir>/secrets/<namespace>.<name>.json` (0600), never in
//! `resources.json`. Revisions count writes (puts and deletes) over the life
//! of the data directory: each record keeps the revision it was written at and
//! the file the last one, so they keep increasing across restarts (they are
//! what `metadata.resourceVersion` is made of). The watch sees this process's
//! writes (it is the only writer: the data directory is locked).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::Value;
use spate_log::config_store::resource_key;
use spate_log::{BoxFuture, Change, ConfigError, ConfigStore, Versioned};
use tokio::sync::mpsc;

use crate::store::{StoreError, write_private};

pub struct FileConfigStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// How many times `resources.json` was written (a bulk apply is one).
    saves: std::sync::atomic::AtomicU64,
}

/// One stored record as compact JSON (with its Secret values, and its
/// `revision`): a parsed `Value` costs several times its text, and the store
/// only hands records out as bytes.
#[derive(Clone)]
struct Record {
    json: Bytes,
    revision: u64,
    /// A Secret: its values go to their own file, never to `resources.json`.
    secret: bool,
}

impl Record {
    fn new(record: &Value, revision: u64) -> Record {
        let mut v = serde_json::to_vec(record).expect("JSON values serialize");
        v.shrink_to_fit();
        Record { json: Bytes::from(v), revision, secret: identity(record).0 == "Secret" }
    }
}

struct Inner {
    /// Key → record.
    records: BTreeMap<String, Record>,
    last_revision: u64,
    watchers: Vec<mpsc::UnboundedSender<Change>>,
}

fn secret_file(dir: &Path, ns: &str, name: &str) -> PathBuf {
    dir.join("secrets").join(format!("{ns}.{name}.json"))
}

/// `(kind, namespace, name)` of a stored record's manifest.
fn identity(record: &Value) -> (String, String, String) {
    let m = &record["manifest"];
    let s = |p: &str, d: &str| m.pointer(p).and_then(Value::as_str).unwrap_or(d).to_string();
    (s("/kind", ""), s("/metadata/namespace", "default"), s("/metadata/name", ""))
}

impl FileConfigStore {
    /// Reads `resources.json` and the Secret values beside it.
    pub fn open(dir: &Path) -> Result<FileConfigStore, StoreError> {
        let path = dir.join("resources.json");
        let saved: Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt { path: path.display().to_string(), source: e })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(StoreError::Read { path: path.display().to_string(), source: e }),
        };
        // Written by an earlier version: a bare array of records, with no revisions.
        let (saved, mut last_revision) = match saved {
            Value::Array(a) => (a, 0),
            Value::Object(mut o) => {
                let rev = o.get("revision").and_then(Value::as_u64).unwrap_or(0);
                match o.remove("resources") {
                    Some(Value::Array(a)) => (a, rev),
                    _ => (vec![], rev),
                }
            }
            _ => (vec![], 0),
        };
        let mut records = BTreeMap::new();
        for (i, mut record) in saved.into_iter().enumerate() {
            let (kind, ns, name) = identity(&record);
            if kind == "Secret" {
                let file = secret_file(dir, &ns, &name);
                match std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                    Some(data) => record["manifest"]["data"] = data,
                    None => {
                        tracing::error!(file = %file.display(), "the values of Secret {ns}/{name} are missing; it is empty until applied again")
                    }
                }
            }
            let rev = record.get("revision").and_then(Value::as_u64).unwrap_or(i as u64 + 1);
            last_revision = last_revision.max(rev);
            records.insert(resource_key(&kind, &ns, &name), Record::new(&record, rev));
        }
        Ok(FileConfigStore {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner { records, last_revision, watchers: vec![] }),
            saves: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Writes every Secret's values, removes those of deleted Secrets, then `resources.json`.
    fn save(&self, records: &BTreeMap<String, Record>, revision: u64) -> Result<(), StoreError> {
        let mut keep = HashSet::new();
        // `{"revision": N, "resources": [record, ...]}`, each record as stored (compact);
        // only Secrets are parsed, to take their values out.
        let size: usize = records.values().map(|r| r.json.len() + 1).sum();
        let mut bytes = Vec::with_capacity(size + 64);
        bytes.extend_from_slice(format!("{{\"revision\":{revision},\"resources\":[").as_bytes());
        for (i, r) in records.values().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            if !r.secret {
                bytes.extend_from_slice(&r.json);
                continue;
            }
            let mut record: Value = serde_json::from_slice(&r.json).expect("stored records are JSON");
            let (_, ns, name) = identity(&record);
            let file = secret_file(&self.dir, &ns, &name);
            let data = record["manifest"].as_object_mut().and_then(|m| m.remove("data")).unwrap_or(Value::Null);
            write_private(&file, &serde_json::to_vec(&data).expect("JSON"))
                .map_err(|source| StoreError::Write { path: file.display().to_string(), source })?;
            keep.insert(file);
            bytes.extend_from_slice(&serde_json::to_vec(&record).expect("JSON values serialize"));
        }
        bytes.extend_from_slice(b"]}");
        if let Ok(files) = std::fs::read_dir(self.dir.join("secrets")) {
            for f in files.flatten() {
                if !keep.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let path = self.dir.join("resources.json");
        // Manifests can hold tokens in annotations or env: owner-only, like Secrets.
        write_private(&path, &bytes)
            .map_err(|source| StoreError::Write { path: path.display().to_string(), source })?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.saves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// All or nothing: a conflict on any key, or a failed write, changes nothing.
    fn write_many(&self, items: Vec<(String, Bytes, u64)>) -> Result<Vec<u64>, ConfigError> {
        let mut records = Vec::with_capacity(items.len());
        for (key, value, expected) in items {
            let record: Value =
                serde_json::from_slice(&value).map_err(|e| ConfigError::Unavailable(format!("not a record: {e}")))?;
            records.push((key, record, expected));
        }
        let mut g = self.inner.lock().expect("file store");
        for (key, _, expected) in &records {
            if g.records.get(key).map_or(0, |r| r.revision) != *expected {
                return Err(ConfigError::Conflict { key: key.clone() });
            }
        }
        // Changed in place (no copy of the whole store per apply); put back if the write fails.
        let mut revision = g.last_revision;
        let mut revisions = Vec::with_capacity(records.len());
        let mut previous = Vec::with_capacity(records.len());
        let mut written = Vec::with_capacity(records.len());
        for (key, mut record, _) in records {
            revision += 1;
            record["revision"] = revision.into();
            let r = Record::new(&record, revision);
            previous.push((key.clone(), g.records.insert(key.clone(), r.clone())));
            revisions.push(revision);
            written.push((key, r));
        }
        if let Err(e) = self.save(&g.records, revision) {
            for (key, old) in previous.into_iter().rev() {
                match old {
                    Some(old) => g.records.insert(key, old),
                    None => g.records.remove(&key),
                };
            }
            return Err(unavailable(e));
        }
        g.last_revision = revision;
        for (key, r) in &written {
            Self::notify(&mut g, Change::Put(versioned(key, r)));
        }
        Ok(revisions)
    }

    fn notify(inner: &mut Inner, change: Change) {
        inner.watchers.retain(|w| w.send(change.clone()).is_ok());
    }
}

fn unavailable(e: StoreError) -> ConfigError {
    ConfigError::Unavailable(e.to_string())
}

fn versioned(key: &str, r: &Record) -> Versioned {
    Versioned { key: key.to_string(), value: r.json.clone(), revision: r.revision }
}

impl ConfigStore for FileConfigStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Versioned>, ConfigError>> {
        let g = self.inner.lock().expect("file store");
        let out = g.records.iter().map(|(k, r)| versioned(k, r)).collect();
        Box::pin(async move { Ok(out) })
    }

    fn put(&self, key: &str, value: Bytes, expected: u64) -> BoxFuture<'_, Result<u64, ConfigError>> {
        let r = self.write_many(vec![(key.to_string(), value, expected)]).map(|revs| revs[0]);
        Box::pin(async move { r })
    }

    /// Every revision checked first, then one write of `resources.json`.
    fn put_many(&self, items: Vec<(String, Bytes, u64)>) -> BoxFuture<'_, Result<Vec<u64>, ConfigError>> {
        let r = self.write_many(items);
        Box::pin(async move { r })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), ConfigError>> {
        let r = (|| {
            let mut g = self.inner.lock().expect("file store");
            let Some(old) = g.records.remove(key) else {
                return Ok(());
            };
            let revision = g.last_revision + 1;
            if let Err(e) = self.save(&g.records, revision) {
                g.records.insert(key.to_string(), old);
                return Err(unavailable(e));
            }
            g.last_revision = revision;
            Self::notify(&mut g, Change::Delete { key: key.to_string(), revision });
            Ok(())
        })();
        Box::pin(async move { r })
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::UnboundedReceiver<Change>, ConfigError>> {
        let mut g = self.inner.lock().expect("file store");
        let (tx, rx) = mpsc::unbounded_channel();
        for (k, r) in &g.records {
            let _ = tx.send(Change::Put(versioned(k, r)));
        }
        let _ = tx.send(Change::Synced);
        g.watchers.push(tx);
        Box::pin(async move { Ok(rx) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, name: &str, extra: Value) -> Bytes {
        let mut manifest =
            serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "default"}});
        if let (Some(m), Some(e)) = (manifest.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        Bytes::from(serde_json::to_vec(&serde_json::json!({"manifest": manifest, "generation": 1})).unwrap())
    }

    #[tokio::test]
    async fn compare_and_swap_watch_secrets_apart_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileConfigStore::open(dir.path()).unwrap();
        let mut watch = store.watch().await.unwrap();
        assert_eq!(watch.recv().await, Some(Change::Synced), "an empty store is synced at once");
        let key = resource_key("Secret", "default", "gh");
        let secret = record("Secret", "gh", serde_json::json!({"data": {"token": "c2VjcmV0"}}));
        let r1 = store.put(&key, secret.clone(), 0).await.unwrap();
        assert!(matches!(store.put(&key, secret.clone(), 0).await, Err(ConfigError::Conflict { .. })));
        let r2 = store.put(&key, secret.clone(), r1).await.unwrap();
        assert!(r2 > r1);
        assert!(matches!(watch.recv().await, Some(Change::Put(v)) if v.revision == r1));
        // The values live apart, owner-only; resources.json never holds them.
        let resources = std::fs::read_to_string(dir.path().join("resources.json")).unwrap();
        assert!(!resources.contains("c2VjcmV0"), "{resources}");
        let file = dir.path().join("secrets/default.gh.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        drop(store);
        // Reopened: the values are joined back.
        let store = FileConfigStore::open(dir.path()).unwrap();
        let all = store.list().await.unwrap();
        assert_eq!(all.len(), 1);
        assert!(String::from_utf8_lossy(&all[0].value).contains("c2VjcmV0"));
        store.delete(&key).await.unwrap();
        assert!(!file.exists(), "a deleted Secret's values are removed");
    }

    #[tokio::test]
    async fn put_many_is_one_write_all_or_nothing() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let store = FileConfigStore::open(dir.path()).unwrap();
        let items = |names: &[&str], expected: u64| -> Vec<(String, Bytes, u64)> {
            names
                .iter()
                .map(|n| (resource_key("Trigger", "default", n), record("Trigger", n, serde_json::json!({})), expected))
                .collect()
        };
        let revs = store.put_many(items(&["a", "b", "c"], 0)).await.unwrap();
        assert_eq!(revs, [1, 2, 3]);
        assert_eq!(store.saves.load(Relaxed), 1, "three objects, one write");
        // One stale revision: nothing is written, not even the others.
        let mut mixed = items(&["d"], 0);
        mixed.extend(items(&["a"], 0));
        assert!(matches!(store.put_many(mixed).await, Err(ConfigError::Conflict { key }) if key.ends_with(".a")));
        assert_eq!(store.list().await.unwrap().len(), 3, "d was not written");
        assert_eq!(store.saves.load(Relaxed), 1);
        drop(store);
        assert_eq!(FileConfigStore::open(dir.path()).unwrap().list().await.unwrap().len(), 3);
    }
}
