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
}

impl Entry {
    /// The object as `get` shows it: manifest, server metadata and status.
    pub fn object(&self) -> Value {
        let mut v = self.resource.manifest.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("uid".into(), json!(self.uid));
            m.insert("generation".into(), json!(self.generation));
            m.insert("creationTimestamp".into(), json!(self.created));
        }
        v["status"] = self.status.clone();
        v
    }
}

pub type Key = (Kind, String, String);

pub struct Store {
    path: PathBuf,
    pub entries: BTreeMap<Key, Entry>,
}

impl Store {
    /// Loads the stored resources, re-admitting each (a manifest that no
    /// longer passes admission is reported and skipped, never half-run).
    pub fn load(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("resources.json");
        let mut store = Store { path: path.clone(), entries: BTreeMap::new() };
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
            match spate_api::admit_document(&s["manifest"], i) {
                Ok((resource, compiled)) => {
                    let entry = Entry {
                        generation: s["generation"].as_u64().unwrap_or(1),
                        uid: s["uid"].as_str().unwrap_or_default().to_string(),
                        created: s["created"].as_str().unwrap_or_default().to_string(),
                        status: Value::Null,
                        resource,
                        compiled,
                    };
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
        let saved: Vec<Value> = self
            .entries
            .values()
            .map(|e| json!({"manifest": e.resource.manifest, "generation": e.generation, "uid": e.uid, "created": e.created}))
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        let w = |source| StoreError::Write { path: self.path.display().to_string(), source };
        let bytes = serde_json::to_vec_pretty(&saved).expect("JSON values serialize");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(w)?;
            f.write_all(&bytes).map_err(w)?;
            f.sync_all().map_err(w)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(w)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
