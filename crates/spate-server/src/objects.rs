//! Objects as a Kubernetes API server shows them, and their change feed.
//!
//! [`Objects`] follows the config store's watch (every instance sees the same
//! writes in the same order) and keeps, for each stored resource, the object a
//! client reads: the manifest, the server's metadata (`uid`, `generation`,
//! `creationTimestamp`, `resourceVersion`) and the last status the reconcilers
//! reported. Every change is an event in a bounded history, so a client can
//! list at a version and then watch every change after it.
//!
//! **Resource versions.** A spec write's version is the config store's
//! revision `R` (the KV revision on NATS, so every instance agrees on it; a
//! persisted counter in the data directory otherwise), written `"R"`. A status
//! change is local to the instance that reconciled it: it takes the next
//! `"R.k"` (k = 1, 2, ... since the last write). Versions compare as pairs.
//!
//! Architecture Invariant: reads and watches never take the control plane's
//! store lock, so a slow reconcile never delays `GET` or a watch.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};
use spate_api::Kind;
use spate_log::Change;
use tokio::sync::{broadcast, watch};

use crate::store::{Key, redact_secret};

/// How many changes a watch can resume from.
pub const HISTORY: usize = 10_000;
/// How many Kubernetes Events (condition transitions) are kept, all objects together.
const EVENTS: usize = 2000;
/// How many changes a watcher may fall behind before its watch is closed (it relists).
const FANOUT: usize = 4096;

/// A resource version: the store revision and the local status changes since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rv {
    pub rev: u64,
    pub status: u64,
}

impl Rv {
    pub fn of(rev: u64) -> Rv {
        Rv { rev, status: 0 }
    }

    /// Parses `"R"` or `"R.k"`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Rv> {
        fn number(p: &str) -> Option<u64> {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok()).flatten()
        }
        match s.split_once('.') {
            None => Some(Rv::of(number(s)?)),
            Some((r, k)) => Some(Rv { rev: number(r)?, status: number(k)? }),
        }
    }
}

impl fmt::Display for Rv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 0 { write!(f, "{}", self.rev) } else { write!(f, "{}.{}", self.rev, self.status) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change: the object after it (before it, for a deletion), kept as
/// compact JSON (a parsed `Value` costs several times its text: with ten
/// thousand objects and their history that was most of the server's memory).
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: EventType,
    pub key: Key,
    pub rv: Rv,
    json: Bytes,
}

impl WatchEvent {
    /// The object, parsed.
    pub fn object(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// An object as compact JSON, without spare capacity.
fn compact(object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(object).unwrap_or_default();
    v.shrink_to_fit();
    Bytes::from(v)
}

/// A watch: the changes already made (since the version asked), then the live feed.
pub type Watch = (Vec<Arc<WatchEvent>>, broadcast::Receiver<Arc<WatchEvent>>);

/// A watch asked for a version the history no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub asked: Rv,
    pub oldest: Rv,
}

/// An object as the map keeps it: its latest change, shared with the history.
struct Stored {
    latest: Arc<WatchEvent>,
    /// Owned by another object (a flow's channels and subscriptions): not in the config store.
    derived: bool,
}

impl Stored {
    fn rv(&self) -> Rv {
        self.latest.rv
    }

    fn object(&self) -> Value {
        self.latest.object()
    }
}

struct Inner {
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Arc<WatchEvent>>,
    /// Every change after this version is in `history`.
    floor: Rv,
    current: Rv,
    /// Still loading the store's initial state (no history is kept).
    syncing: bool,
    /// Condition transitions as core `v1` Events (compact JSON), newest last.
    events: VecDeque<Bytes>,
    events_made: u64,
}

pub struct Objects {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    /// The latest store revision seen (writers wait on it to read their writes).
    seen: watch::Sender<u64>,
}

impl Default for Objects {
    fn default() -> Self {
        Objects::new()
    }
}

/// The object a client reads, from a stored record: the manifest with server metadata.
pub fn object_of(record: &Value, rv: Rv) -> Value {
    let mut v = record["manifest"].clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("uid".into(), record["uid"].clone());
        m.insert("generation".into(), record["generation"].clone());
        m.insert("creationTimestamp".into(), record["created"].clone());
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    if v["kind"] == "Secret" {
        redact_secret(&mut v);
    }
    v
}

/// `(Kind, namespace, name)` of a shared-store key `<Kind>.<namespace>.<name>`.
fn parse_key(shared: &str) -> Option<Key> {
    let (kind, rest) = shared.split_once('.')?;
    let (ns, name) = rest.split_once('.')?;
    let kind = Kind::all().find(|k| k.name() == kind)?;
    Some((kind, ns.to_string(), name.to_string()))
}

fn key_of(object: &Value) -> Option<Key> {
    let kind = Kind::all().find(|k| object["kind"] == k.name())?;
    let s = |p: &str| object.pointer(p).and_then(Value::as_str).map(str::to_string);
    // Namespaces are cluster-scoped (stored with namespace "").
    let ns = if kind == Kind::Namespace {
        String::new()
    } else {
        s("/metadata/namespace").unwrap_or_else(|| "default".into())
    };
    Some((kind, ns, s("/metadata/name")?))
}

fn set_rv(object: &mut Value, rv: Rv) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

impl Objects {
    pub fn new() -> Objects {
        Objects {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: Rv::default(),
                current: Rv::default(),
                syncing: true,
                events: VecDeque::new(),
                events_made: 0,
            }),
            tx: broadcast::channel(FANOUT).0,
            seen: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows one change of the config store (in the store's order).
    pub fn apply(&self, change: &Change) {
        let mut g = self.lock();
        match change {
            Change::Synced => {
                g.syncing = false;
                g.floor = g.current;
            }
            Change::Put(v) => {
                let Ok(record) = serde_json::from_slice::<Value>(&v.value) else { return };
                let mut object = object_of(&record, Rv::of(v.revision));
                let Some(key) = key_of(&object) else { return };
                let kind = match g.objects.get(&key) {
                    Some(old) if old.rv().rev >= v.revision => return,
                    Some(old) => {
                        if let Some(st) = old.object().get_mut("status") {
                            object["status"] = st.take();
                        }
                        EventType::Modified
                    }
                    None => EventType::Added,
                };
                self.record(&mut g, kind, key, object, Rv::of(v.revision), false);
            }
            Change::Delete { key, revision } => {
                let Some(key) = parse_key(key) else { return };
                let Some(old) = g.objects.get(&key) else { return };
                let rv = if *revision > g.current.rev { Rv::of(*revision) } else { g.next_status() };
                let object = old.object();
                self.record(&mut g, EventType::Deleted, key, object, rv, false);
            }
        }
        let rev = g.current.rev;
        drop(g);
        self.seen.send_if_modified(|s| {
            let changed = *s < rev;
            *s = rev.max(*s);
            changed
        });
    }

    /// Notes one change: the object map, the history and the live watchers.
    fn record(&self, g: &mut Inner, kind: EventType, key: Key, mut object: Value, rv: Rv, derived: bool) {
        set_rv(&mut object, rv);
        g.current = g.current.max(rv);
        let event = Arc::new(WatchEvent { kind, key: key.clone(), rv, json: compact(&object) });
        if kind == EventType::Deleted {
            g.objects.remove(&key);
        } else {
            g.objects.insert(key, Stored { latest: event.clone(), derived });
        }
        if g.syncing {
            return;
        }
        g.history.push_back(event.clone());
        while g.history.len() > HISTORY {
            if let Some(old) = g.history.pop_front() {
                g.floor = old.rv;
            }
        }
        let _ = self.tx.send(event);
    }

    /// A reconciler's status for a stored object: a change (and an event) only if it differs.
    pub fn set_status(&self, key: &Key, status: &Value) {
        let mut g = self.lock();
        let Some(old) = g.objects.get(key) else { return };
        let mut object = old.object();
        if object.get("status").unwrap_or(&Value::Null) == status {
            return;
        }
        let before = object.get("status").cloned().unwrap_or(Value::Null);
        object["status"] = status.clone();
        let rv = g.next_status();
        g.note_transitions(&object, &before, status);
        self.record(&mut g, EventType::Modified, key.clone(), object, rv, false);
    }

    /// The Events of `namespace` (all if `None`), oldest first.
    pub fn events(&self, namespace: Option<&str>) -> Vec<Value> {
        let g = self.lock();
        let parsed = g.events.iter().filter_map(|e| serde_json::from_slice::<Value>(e).ok());
        parsed.filter(|e| namespace.is_none_or(|n| e["metadata"]["namespace"] == n)).collect()
    }

    /// Replaces the derived objects (owned by others) with `objects`: added, changed and gone.
    pub fn set_derived(&self, objects: Vec<Value>) {
        let mut g = self.lock();
        let mut wanted: BTreeMap<Key, Value> = objects.into_iter().filter_map(|o| Some((key_of(&o)?, o))).collect();
        let gone: Vec<Key> =
            g.objects.iter().filter(|(k, s)| s.derived && !wanted.contains_key(*k)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            let object = g.objects[&key].object();
            let rv = g.next_status();
            self.record(&mut g, EventType::Deleted, key, object, rv, true);
        }
        for (key, mut object) in std::mem::take(&mut wanted) {
            let kind = match g.objects.get(&key) {
                // A stored object of the same name wins over a derived one.
                Some(old) if !old.derived => continue,
                Some(old) => {
                    set_rv(&mut object, old.rv());
                    if old.object() == object {
                        continue;
                    }
                    EventType::Modified
                }
                None => EventType::Added,
            };
            let rv = g.next_status();
            self.record(&mut g, kind, key, object, rv, true);
        }
    }

    /// Objects of `kind` (every kind if `None`) in `namespace` (all if `None`), and the current version.
    pub fn list(&self, kind: Option<Kind>, namespace: Option<&str>) -> (Vec<Value>, Rv) {
        let g = self.lock();
        let items = g
            .objects
            .iter()
            .filter(|((k, ns, _), _)| kind.is_none_or(|w| w == *k) && namespace.is_none_or(|w| w == ns))
            .map(|(_, s)| s.object())
            .collect();
        (items, g.current)
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.lock().objects.get(key).map(Stored::object)
    }

    /// The store revision of a stored (not derived) object.
    pub fn contains(&self, key: &Key) -> bool {
        self.lock().objects.contains_key(key)
    }

    pub fn current(&self) -> Rv {
        self.lock().current
    }

    /// Every change after `from` (or, from `None`, the current objects as
    /// additions), then the live feed; or [`Expired`] if the history no longer
    /// reaches back to `from`. Nothing can happen between the two.
    pub fn watch(&self, from: Option<Rv>) -> Result<Watch, Expired> {
        let g = self.lock();
        let rx = self.tx.subscribe();
        let past = match from {
            None => g
                .objects
                .iter()
                .map(|(k, s)| {
                    let json = s.latest.json.clone();
                    Arc::new(WatchEvent { kind: EventType::Added, key: k.clone(), rv: s.rv(), json })
                })
                .collect(),
            Some(v) if v < g.floor => return Err(Expired { asked: v, oldest: g.floor }),
            Some(v) => g.history.iter().filter(|e| e.rv > v).cloned().collect(),
        };
        Ok((past, rx))
    }

    /// Waits until this view has seen store revision `rev` (a writer reads its own write).
    pub async fn seen(&self, rev: u64) {
        let mut rx = self.seen.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|s| *s >= rev)).await;
    }

    /// Waits until `key` is gone from this view (a deleter reads its own delete).
    pub async fn gone(&self, key: &Key) {
        let mut rx = self.seen.subscribe();
        let wait = async {
            while self.contains(key) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
    }
}

/// Conditions by type: `(status, reason, message)`.
fn conditions(status: &Value) -> BTreeMap<String, (String, String, String)> {
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or("").to_string();
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (s(c, "type"), (s(c, "status"), s(c, "reason"), s(c, "message"))))
        .collect()
}

impl Inner {
    /// One Event per condition whose status changed (a Warning when it turned False).
    fn note_transitions(&mut self, object: &Value, before: &Value, after: &Value) {
        let (old, new) = (conditions(before), conditions(after));
        let now = crate::status::now_rfc3339();
        let meta = &object["metadata"];
        for (ty, (st, reason, message)) in new {
            if old.get(&ty).is_some_and(|(o, _, _)| *o == st) {
                continue;
            }
            self.events_made += 1;
            let warning = st == "False";
            let reason =
                if reason.is_empty() { format!("{ty}{}", if st == "True" { "" } else { "Not" }) } else { reason };
            let message = if message.is_empty() { format!("{ty} is now {st}") } else { message };
            self.events.push_back(compact(&json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{}.{:x}", meta["name"].as_str().unwrap_or(""), self.events_made),
                    "namespace": meta["namespace"], "creationTimestamp": now, "uid": uuid::Uuid::new_v4().to_string()},
                "involvedObject": {"apiVersion": object["apiVersion"], "kind": object["kind"], "name": meta["name"],
                    "namespace": meta["namespace"], "uid": meta["uid"]},
                "reason": reason, "message": message, "type": if warning { "Warning" } else { "Normal" },
                "count": 1, "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": "spate"}, "reportingComponent": "spate"})));
            if self.events.len() > EVENTS {
                self.events.pop_front();
            }
        }
    }

    /// The next local (status) version.
    fn next_status(&self) -> Rv {
        Rv { rev: self.current.rev, status: self.current.status + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_log::Versioned;

    fn put(name: &str, rev: u64, spec: Value) -> Change {
        let record = json!({"manifest": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec},
            "generation": 1, "uid": "u", "created": "2026-01-01T00:00:00Z"});
        Change::Put(Versioned {
            key: format!("Trigger.default.{name}"),
            value: Bytes::from(serde_json::to_vec(&record).unwrap()),
            revision: rev,
        })
    }

    fn key(name: &str) -> Key {
        (Kind::Trigger, "default".into(), name.into())
    }

    #[test]
    fn versions_parse_print_and_order() {
        assert_eq!(Rv::parse("12"), Some(Rv::of(12)));
        assert_eq!(Rv::parse("12.3"), Some(Rv { rev: 12, status: 3 }));
        for bad in ["", "x", "1.", ".1", "1.2.3", "-1", "99999999999999999999999"] {
            assert_eq!(Rv::parse(bad), None, "{bad}");
        }
        assert!(Rv { rev: 12, status: 3 } < Rv::of(13));
        assert_eq!(Rv { rev: 12, status: 3 }.to_string(), "12.3");
    }

    #[test]
    fn list_then_watch_sees_every_later_change_in_order() {
        let o = Objects::new();
        o.apply(&put("a", 1, json!({})));
        o.apply(&Change::Synced);
        let (items, rv) = o.list(Some(Kind::Trigger), None);
        assert_eq!(items.len(), 1);
        assert_eq!(rv, Rv::of(1));
        let (past, mut rx) = o.watch(Some(rv)).unwrap();
        assert!(past.is_empty());
        o.apply(&put("b", 2, json!({})));
        o.set_status(&key("b"), &json!({"conditions": []}));
        o.apply(&put("b", 3, json!({"broker": "x"})));
        o.apply(&Change::Delete { key: "Trigger.default.b".into(), revision: 4 });
        let got: Vec<(EventType, String)> =
            (0..4).map(|_| rx.try_recv().unwrap()).map(|e| (e.kind, e.rv.to_string())).collect();
        assert_eq!(
            got,
            vec![
                (EventType::Added, "2".into()),
                (EventType::Modified, "2.1".into()),
                (EventType::Modified, "3".into()),
                (EventType::Deleted, "4".into())
            ]
        );
        // The status survives a spec change; a watch from the list's version replays all four.
        let (past, _) = o.watch(Some(rv)).unwrap();
        assert_eq!(past.len(), 4);
        assert_eq!(past[2].object()["status"], json!({"conditions": []}));
    }

    #[test]
    fn a_version_older_than_the_history_is_expired() {
        let o = Objects::new();
        o.apply(&put("a", 5, json!({})));
        o.apply(&Change::Synced);
        assert_eq!(o.watch(Some(Rv::of(4))).unwrap_err(), Expired { asked: Rv::of(4), oldest: Rv::of(5) });
        for i in 0..(HISTORY as u64 + 10) {
            o.apply(&put("a", 6 + i, json!({"n": i})));
        }
        assert!(o.watch(Some(Rv::of(5))).is_err());
        let (past, _) = o.watch(Some(o.current())).unwrap();
        assert!(past.is_empty());
        // From no version: the current objects as additions.
        let (past, _) = o.watch(None).unwrap();
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].kind, EventType::Added);
    }

    #[test]
    fn a_replayed_or_older_write_is_not_a_change() {
        let o = Objects::new();
        o.apply(&Change::Synced);
        o.apply(&put("a", 2, json!({"v": 2})));
        o.apply(&put("a", 2, json!({"v": 2})));
        o.apply(&put("a", 1, json!({"v": 1})));
        let (past, _) = o.watch(Some(Rv::of(0))).unwrap();
        assert_eq!(past.len(), 1);
        assert_eq!(o.get(&key("a")).unwrap()["spec"]["v"], 2);
    }
}
