//! The control plane's view of applied resources: `Entry` (a resource, its
//! compiled config and server metadata; its stored `record` form) and the
//! `Store` cache. Persistence is the `ConfigStore`'s (see `file_store.rs`).

use std::collections::BTreeMap;
use std::path::Path;

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
    pub resource: Stored,
    pub compiled: Compiled,
    pub status: Status,
    pub generation: u64,
    pub uid: String,
    pub created: String,
    /// The shared store's revision of this entry (0 with the file store, or not yet written).
    pub revision: u64,
    /// Server-side apply: what each field manager last applied (so fields it drops are removed).
    pub applied: BTreeMap<String, Value>,
}

/// An admitted resource as an entry keeps it: its key, the manifest as compact
/// JSON (a parsed `Value` costs about ten times its text: 3.9 KB for a small
/// Trigger), and what the control plane reads of the manifest at every
/// reconcile, taken out once (labels, destinations' CAs).
pub struct Stored {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    manifest: Box<str>,
    /// `metadata.labels`.
    pub labels: Vec<(String, String)>,
    /// The CAs its https destinations trust (`spate_api::trusted_cas`).
    pub trusted_cas: Vec<(String, String)>,
}

impl Stored {
    pub fn new(resource: &Resource) -> Stored {
        Stored {
            kind: resource.kind,
            namespace: resource.namespace.clone(),
            name: resource.name.clone(),
            manifest: resource.manifest.to_string().into_boxed_str(),
            labels: spate_api::labels(&resource.manifest["metadata"]),
            trusted_cas: spate_api::trusted_cas(&resource.manifest),
        }
    }

    pub fn key(&self) -> Key {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// The manifest, parsed.
    pub fn manifest(&self) -> Value {
        serde_json::from_str(&self.manifest).expect("a stored manifest is JSON it wrote")
    }

    /// Whether `other` is this manifest (JSON objects serialize with sorted keys: one text per value).
    pub fn same_manifest(&self, other: &Value) -> bool {
        *self.manifest == *other.to_string()
    }

    /// Whether two entries hold the same manifest.
    pub fn same_as(&self, other: &Stored) -> bool {
        self.manifest == other.manifest
    }

    /// The admitted resource again (for checks of an update against it).
    pub fn resource(&self) -> Resource {
        Resource {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            manifest: self.manifest(),
        }
    }
}

impl Entry {
    /// The stored form: the manifest (Secret values included only if
    /// `with_secret_values`) and the server's metadata.
    pub fn record(&self, with_secret_values: bool) -> Value {
        let mut manifest = self.resource.manifest();
        if self.resource.kind == Kind::Secret
            && !with_secret_values
            && let Some(m) = manifest.as_object_mut()
        {
            m.remove("data");
        }
        let mut r =
            json!({"manifest": manifest, "generation": self.generation, "uid": self.uid, "created": self.created});
        if !self.applied.is_empty() && (self.resource.kind != Kind::Secret || with_secret_values) {
            r["applied"] = json!(self.applied);
        }
        r
    }

    /// Re-admits a stored record (a manifest that no longer passes admission is refused).
    pub fn from_record(record: &Value, index: usize, revision: u64) -> Result<Entry, Vec<spate_api::FieldError>> {
        let (resource, compiled) = spate_api::admit_document(&record["manifest"], index)?;
        let resource = Stored::new(&resource);
        Ok(Entry {
            generation: record["generation"].as_u64().unwrap_or(1),
            uid: record["uid"].as_str().unwrap_or_default().to_string(),
            created: record["created"].as_str().unwrap_or_default().to_string(),
            status: Status::default(),
            resource,
            compiled,
            revision,
            applied: record["applied"].as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default(),
        })
    }

    /// The key in a shared store: `<Kind>.<namespace>.<name>`.
    pub fn shared_key(key: &Key) -> String {
        spate_log::config_store::resource_key(key.0.name(), &key.1, &key.2)
    }

    /// The object as `get` shows it: manifest, server metadata and status.
    pub fn object(&self) -> Value {
        let mut v = self.resource.manifest();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("uid".into(), json!(self.uid));
            m.insert("generation".into(), json!(self.generation));
            m.insert("creationTimestamp".into(), json!(self.created));
        }
        if self.resource.kind == Kind::Secret {
            redact_secret(&mut v);
            return v;
        }
        v["status"] = self.status.get();
        v
    }
}

/// A reconciled status, kept as compact JSON: a parsed `Value` costs about ten
/// times its text (a Trigger's status: 6 KB parsed, 600 bytes as text), and
/// with 10,000 Triggers that was most of the server's memory. Parsed when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status(Option<Box<str>>);

impl Status {
    /// The status (`null` before the first reconcile).
    pub fn get(&self) -> Value {
        self.0.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null)
    }

    pub fn set(&mut self, status: &Value) {
        self.0 = (!status.is_null()).then(|| status.to_string().into_boxed_str());
    }

    /// Whether it says a condition waits on the outside world (`retry::waiting`),
    /// without parsing a status that cannot.
    pub fn waiting(&self) -> bool {
        self.0.as_deref().is_some_and(|t| {
            crate::retry::WAITING_REASONS.iter().any(|r| t.contains(r)) && crate::retry::waiting(&self.get())
        })
    }
}

pub type Key = (Kind, String, String);

/// How Kubernetes names a key's resource in messages: `<plural>.<group>` (`triggers.eventing.knative.dev`).
pub trait KeyExt {
    fn resource(&self) -> String;
}

impl KeyExt for Key {
    fn resource(&self) -> String {
        match self.0.group() {
            "" => self.0.plural().to_string(),
            g => format!("{}.{g}", self.0.plural()),
        }
    }
}

/// The control plane's cache of applied resources. The `ConfigStore` (the
/// data-dir file or a NATS KV bucket) holds them; this map follows it.
pub struct Store {
    pub entries: BTreeMap<Key, Entry>,
}

impl Store {
    pub fn new() -> Store {
        Store { entries: BTreeMap::new() }
    }
}

/// Secret values never leave the data directory: the keys and sizes only.
pub fn redact_secret(v: &mut Value) {
    if let Some(d) = v.get_mut("data").and_then(Value::as_object_mut) {
        for (_, val) in d.iter_mut() {
            let n = val.as_str().map(|b| b.len() / 4 * 3).unwrap_or(0);
            *val = json!(format!("<redacted, about {n} bytes>"));
        }
    }
}

/// Writes a file only its owner can read (0600; its directory 0700), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::{Status, Stored};
    use serde_json::{Value, json};

    #[test]
    fn a_stored_manifest_reads_back_whole_and_compares_whatever_its_key_order() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let doc = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "t", "labels": {"app": "a"}},
            "spec": {"broker": "b", "subscriber": {"uri": "https://sink.example/x", "CACerts": pem}}});
        let (resource, _) = spate_api::admit_document(&doc, 0).unwrap();
        let stored = Stored::new(&resource);
        assert_eq!(stored.manifest(), resource.manifest);
        assert_eq!(stored.key(), resource.key());
        assert_eq!(stored.labels, vec![("app".to_string(), "a".to_string())]);
        assert_eq!(stored.trusted_cas, vec![("sink.example:443".to_string(), pem.to_string())]);
        // The same manifest written with its keys in another order is the same manifest.
        let reordered: Value = serde_json::from_str(&serde_json::to_string(&resource.manifest).unwrap()).unwrap();
        assert!(stored.same_manifest(&reordered));
        let mut changed = resource.manifest.clone();
        changed["spec"]["broker"] = json!("other");
        assert!(!stored.same_manifest(&changed));
    }

    #[test]
    fn a_status_reads_back_as_it_was_set_and_says_when_it_waits() {
        let mut s = Status::default();
        assert_eq!(s.get(), Value::Null, "nothing before the first reconcile");
        let ready = json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]});
        s.set(&ready);
        assert_eq!(s.get(), ready);
        assert!(!s.waiting());
        let down = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "StorageUnavailable"}]});
        s.set(&down);
        assert!(s.waiting(), "a condition False for StorageUnavailable waits");
        let mentions =
            json!({"conditions": [{"type": "Ready", "status": "True", "message": "was StorageUnavailable"}]});
        s.set(&mentions);
        assert!(!s.waiting(), "the word alone is not a waiting condition");
        s.set(&Value::Null);
        assert_eq!(s, Status::default());
    }
}
