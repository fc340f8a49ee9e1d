//! The EventTypes Spate sees flow: each distinct (type, source, dataschema) a
//! Broker or Channel stores is remembered, so that `spate get eventtypes` lists
//! what actually flows through each addressable, as Knative's EventType
//! auto-creation does. Kept in memory (seen again after a restart as soon as
//! traffic flows) and bounded: a sender inventing types cannot grow it past
//! [`MAX_EVENT_TYPES`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use spate_core::CloudEvent;

/// Distinct event types remembered across every addressable.
pub const MAX_EVENT_TYPES: usize = 10_000;

/// One kind of event seen on one addressable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenType {
    /// `Broker` or the channel's kind.
    pub kind: &'static str,
    pub namespace: String,
    /// The addressable's name.
    pub name: String,
    pub ty: String,
    pub source: String,
    pub schema: Option<String>,
}

impl SeenType {
    /// A stable, DNS-1123 name for the EventType object: `et-<addressable>-<hash>`.
    pub fn object_name(&self) -> String {
        let prefix: String = self.name.chars().take(40).collect();
        format!(
            "et-{prefix}-{:016x}",
            key(self.kind, &self.namespace, &self.name, &self.ty, &self.source, self.schema.as_deref())
        )
    }
}

/// FNV-1a over the parts (stable across runs and versions, unlike std's hasher).
fn key(kind: &str, ns: &str, name: &str, ty: &str, source: &str, schema: Option<&str>) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for part in [kind, ns, name, ty, source, schema.unwrap_or("")] {
        h.write(part.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// Types not seen before, to be recorded once the events are stored.
pub struct Pending(Vec<(u64, SeenType)>);

#[derive(Default)]
pub struct EventTypes {
    seen: Mutex<HashMap<u64, SeenType>>,
    full: AtomicBool,
}

impl EventTypes {
    /// The types among `events` (for addressable `kind` `ns`/`name`) not seen yet.
    pub fn pending(&self, kind: &'static str, ns: &str, name: &str, events: &[CloudEvent]) -> Pending {
        let seen = self.seen.lock().expect("event types");
        let mut out: Vec<(u64, SeenType)> = vec![];
        for ev in events {
            let schema = ev.dataschema.as_deref();
            let k = key(kind, ns, name, &ev.ty, &ev.source, schema);
            if !seen.contains_key(&k) && !out.iter().any(|(x, _)| *x == k) {
                let t = SeenType {
                    kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    ty: ev.ty.clone(),
                    source: ev.source.clone(),
                    schema: schema.map(str::to_string),
                };
                out.push((k, t));
            }
        }
        Pending(out)
    }

    /// Records types whose events were stored.
    pub fn record(&self, p: Pending) {
        if p.0.is_empty() {
            return;
        }
        let mut seen = self.seen.lock().expect("event types");
        for (k, t) in p.0 {
            if seen.len() >= MAX_EVENT_TYPES {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max = MAX_EVENT_TYPES,
                        "too many distinct event types; new ones are no longer listed"
                    );
                }
                return;
            }
            seen.insert(k, t);
        }
    }

    /// Every type seen, in a stable order.
    pub fn list(&self) -> Vec<SeenType> {
        let mut v: Vec<SeenType> = self.seen.lock().expect("event types").values().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name, &a.ty, &a.source).cmp(&(&b.namespace, &b.name, &b.ty, &b.source)));
        v
    }

    /// Forgets the types of an addressable that was deleted.
    pub fn forget(&self, ns: &str, name: &str, kind: &str) {
        self.seen.lock().expect("event types").retain(|_, t| !(t.namespace == ns && t.name == name && t.kind == kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_distinct_type_and_source_is_recorded_once_and_bounded() {
        let types = EventTypes::default();
        let evs =
            [CloudEvent::new("1", "/a", "t1"), CloudEvent::new("2", "/a", "t1"), CloudEvent::new("3", "/b", "t1")];
        let p = types.pending("Broker", "ns", "default", &evs);
        types.record(p);
        assert_eq!(types.list().len(), 2, "(t1, /a) and (t1, /b)");
        assert!(types.pending("Broker", "ns", "default", &evs).0.is_empty(), "nothing new the second time");
        assert_eq!(types.pending("Broker", "ns", "other", &evs).0.len(), 2, "another broker's are its own");
        let name = types.list()[0].object_name();
        assert!(name.starts_with("et-default-") && name.len() <= 63, "{name}");
        for i in 0..MAX_EVENT_TYPES + 5 {
            types.record(types.pending("Broker", "ns", "default", &[CloudEvent::new("x", "/s", format!("t{i}"))]));
        }
        assert_eq!(types.list().len(), MAX_EVENT_TYPES, "bounded");
        types.forget("ns", "default", "Broker");
        assert!(types.list().is_empty());
    }
}

#[cfg(test)]
mod stable_hash {
    /// Keys are FNV-1a 64 (as they were when hand-written): the same across runs and versions.
    #[test]
    fn keys_are_fnv_1a() {
        use std::hash::Hasher;
        let mut h = fnv::FnvHasher::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let manual = [b'B', 0xff]
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        let mut h = fnv::FnvHasher::default();
        h.write(b"B");
        h.write_u8(0xff);
        assert_eq!(h.finish(), manual);
    }
}
