//! Applied resources, persisted in `<data-dir>/resources.json` (written to a
//! temporary file, synced, then renamed, so a crash leaves the old or the new
//! set, never a mix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use spate_api::{Compiled, Kind, Resource};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Corrupt { path: String, source: serde_json::Error },
}

pub struct Entry {
    pub resource: Resource,
    pub compiled: Compiled,
    pub status: Value,
    pub generation: u64,
    pub uid: String,
    pub created: String,
    /// The shared store's revision of this entry (0 with the file store, or not yet written).
    pub revision: u64,
}

impl Entry {
    /// The stored form: the manifest (Secret values included only if
    /// `with_secret_values`) and the server's metadata.
    pub fn record(&self, with_secret_values: bool) -> Value {
        let mut manifest = self.resource.manifest.clone();
        if self.resource.kind == Kind::Secret
            && !with_secret_values
            && let Some(m) = manifest.as_object_mut()
        {
            m.remove("data");
        }
        json!({"manifest": manifest, "generation": self.generation, "uid": self.uid, "created": self.created})
    }

    /// Re-admits a stored record (a manifest that no longer passes admission is refused).
    pub fn from_record(record: &Value, index: usize, revision: u64) -> Result<Entry, Vec<spate_api::FieldError>> {
        let (resource, compiled) = spate_api::admit_document(&record["manifest"], index)?;
        Ok(Entry {
            generation: record["generation"].as_u64().unwrap_or(1),
            uid: record["uid"].as_str().unwrap_or_default().to_string(),
            created: record["created"].as_str().unwrap_or_default().to_string(),
            status: Value::Null,
            resource,
            compiled,
            revision,
        })
    }

    /// The key in a shared store: `<Kind>.<namespace>.<name>`.
    pub fn shared_key(key: &Key) -> String {
        spate_log::config_store::resource_key(key.0.name(), &key.1, &key.2)
    }

    /// The object as `get` shows it: manifest, server metadata and status.
    pub fn object(&self) -> Value {
        let mut v = self.resource.manifest.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("uid".into(), json!(self.uid));
            m.insert("generation".into(), json!(self.generation));
            m.insert("creationTimestamp".into(), json!(self.created));
        }
        if self.resource.kind == Kind::Secret {
            // Values never leave the data directory: `get` shows the keys and sizes only.
            if let Some(d) = v.get_mut("data").and_then(Value::as_object_mut) {
                for (_, val) in d.iter_mut() {
                    let n = val.as_str().map(|b| b.len() / 4 * 3).unwrap_or(0);
                    *val = json!(format!("<redacted, about {n} bytes>"));
                }
            }
            return v;
        }
        v["status"] = self.status.clone();
        v
    }
}

pub type Key = (Kind, String, String);

/// Secret values live in `<data-dir>/secrets/<namespace>.<name>.json`, readable by the owner
/// only; `resources.json` holds the Secret without them.
fn secret_file(dir: &Path, ns: &str, name: &str) -> PathBuf {
    dir.join("secrets").join(format!("{ns}.{name}.json"))
}

pub struct Store {
    path: PathBuf,
    pub entries: BTreeMap<Key, Entry>,
    /// False when a shared store keeps the resources: `save` writes nothing.
    persist: bool,
}

impl Store {
    /// Loads the stored resources, re-admitting each (a manifest that no
    /// longer passes admission is reported and skipped, never half-run).
    /// An empty store that is never written to disk (resources live in a shared store).
    pub fn in_memory(dir: &Path) -> Store {
        Store { path: dir.join("resources.json"), entries: BTreeMap::new(), persist: false }
    }

    pub fn load(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("resources.json");
        let mut store = Store { path: path.clone(), entries: BTreeMap::new(), persist: true };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => {
                return Err(StoreError::Read { path: path.display().to_string(), source: e });
            }
        };
        let saved: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt { path: path.display().to_string(), source: e })?;
        for (i, s) in saved.iter().enumerate() {
            let mut manifest = s["manifest"].clone();
            if manifest["kind"] == "Secret" {
                let (ns, name) = (
                    manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string(),
                    manifest.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string(),
                );
                let file = secret_file(dir, &ns, &name);
                match std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                    Some(data) => manifest["data"] = data,
                    None => {
                        tracing::error!(file = %file.display(), "the values of Secret {ns}/{name} are missing; it is empty until applied again")
                    }
                }
            }
            let mut record = s.clone();
            record["manifest"] = manifest;
            match Entry::from_record(&record, i, 0) {
                Ok(entry) => {
                    store.entries.insert(entry.resource.key(), entry);
                }
                Err(errs) => {
                    for e in errs {
                        tracing::error!(error = %e, "stored resource no longer passes admission; skipped");
                    }
                }
            }
        }
        Ok(store)
    }

    pub fn save(&self) -> Result<(), StoreError> {
        if !self.persist {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut keep = std::collections::HashSet::new();
        for e in self.entries.values().filter(|e| e.resource.kind == Kind::Secret) {
            let file = secret_file(&dir, &e.resource.namespace, &e.resource.name);
            write_private(&file, &serde_json::to_vec(&e.resource.manifest["data"]).expect("JSON"))
                .map_err(|source| StoreError::Write { path: file.display().to_string(), source })?;
            keep.insert(file);
        }
        if let Ok(files) = std::fs::read_dir(dir.join("secrets")) {
            for f in files.flatten() {
                if !keep.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let saved: Vec<Value> = self.entries.values().map(|e| e.record(false)).collect();
        let w = |source| StoreError::Write { path: self.path.display().to_string(), source };
        let bytes = serde_json::to_vec_pretty(&saved).expect("JSON values serialize");
        // Manifests can hold tokens in annotations or env: owner-only, like Secrets.
        write_private(&self.path, &bytes).map_err(w)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Writes a file only its owner can read (0600; its directory 0700), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(d) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d)?;
    }
    let tmp = path.with_extension("json.tmp");
    // A leftover temporary file from a crash may have the wrong mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
