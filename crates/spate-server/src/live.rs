//! Live state the control plane adds to stored objects when they are read: a
//! Trigger's counters, backlog and last failures (`status.spate`), shown by
//! `spate describe` and the admin API. Typed here, serialised once.

use serde::Serialize;
use serde_json::{Value, json};
use spate_api::Kind;
use spate_eventing::event_types::SeenType;
use spate_eventing::{Failure, TriggerStats};

/// `status.spate` of a Trigger.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerLive {
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub in_flight: u64,
    /// Attempts beyond the first, over every event.
    pub retries: u64,
    /// Events stored in the broker that the trigger has not finished with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
    /// The last dead-lettered or dropped events, oldest first.
    pub recent_failures: Vec<FailureJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureJson {
    pub time: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `DeadLettered` or `Dropped`.
    pub outcome: &'static str,
    pub reason: String,
}

impl TriggerLive {
    pub fn new(stats: &TriggerStats, backlog: Option<u64>) -> TriggerLive {
        use std::sync::atomic::Ordering::Relaxed;
        TriggerLive {
            delivered: stats.delivered.load(Relaxed),
            dead_lettered: stats.dead_lettered.load(Relaxed),
            dropped: stats.dropped.load(Relaxed),
            in_flight: stats.in_flight.load(Relaxed),
            retries: stats.retries.load(Relaxed),
            backlog,
            recent_failures: stats.recent_failures().iter().map(FailureJson::from).collect(),
        }
    }
}

impl From<&Failure> for FailureJson {
    fn from(f: &Failure) -> FailureJson {
        let d = f.at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let t = spate_core::rules::format_rfc3339(d.as_secs() as i64, d.subsec_nanos());
        FailureJson {
            time: t,
            id: f.id.clone(),
            source: f.source.clone(),
            event_type: f.event_type.clone(),
            outcome: if f.dead_lettered { "DeadLettered" } else { "Dropped" },
            reason: f.reason.clone(),
        }
    }
}

/// The EventTypes seen flowing, as Knative's auto-created EventType objects
/// (`eventing.knative.dev/v1beta3`, owned by their Broker or Channel). `owner`
/// gives the addressable's kind, or `None` when it no longer exists (its types
/// are then not listed); `stored` says a hand-applied EventType has the name.
pub fn seen_event_types(
    seen: &[SeenType],
    owner: impl Fn(&str, &str, &str) -> Option<Kind>,
    stored: impl Fn(&str, &str) -> bool,
) -> Vec<Value> {
    let mut out = vec![];
    for t in seen {
        let Some(kind) = owner(t.kind, &t.namespace, &t.name) else { continue };
        let name = t.object_name();
        if stored(&t.namespace, &name) {
            continue;
        }
        let reference =
            json!({"apiVersion": kind.api_version(), "kind": kind.name(), "name": t.name, "namespace": t.namespace});
        let mut attributes = vec![
            json!({"name": "type", "value": t.ty, "required": true}),
            json!({"name": "source", "value": t.source, "required": true}),
            json!({"name": "specversion", "value": "1.0", "required": true}),
            json!({"name": "id", "required": true}),
        ];
        if let Some(schema) = &t.schema {
            attributes.push(json!({"name": "dataschema", "value": schema, "required": true}));
        }
        out.push(json!({
            "apiVersion": Kind::EventType.api_version(),
            "kind": "EventType",
            "metadata": {
                "name": name,
                "namespace": t.namespace,
                "ownerReferences": [{"apiVersion": kind.api_version(), "kind": kind.name(), "name": t.name, "controller": true}],
            },
            "spec": {"reference": reference, "description": "Event type seen by Spate", "attributes": attributes},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_keeps_its_last_failures_with_their_reasons() {
        let stats = TriggerStats::default();
        let mut ev = spate_core::CloudEvent::new("e0", "/src", "t");
        for i in 0..12 {
            ev.id = format!("e{i}");
            stats.record_failure(&ev, i % 2 == 0, &format!("HTTP 500 #{i}"));
        }
        let live = serde_json::to_value(TriggerLive::new(&stats, Some(3))).unwrap();
        assert_eq!((live["deadLettered"].as_u64(), live["dropped"].as_u64()), (Some(6), Some(6)), "{live}");
        assert_eq!(live["backlog"], 3);
        let recent = live["recentFailures"].as_array().unwrap();
        assert_eq!(recent.len(), spate_eventing::RECENT_FAILURES, "bounded: {live}");
        assert_eq!((recent[0]["id"].as_str(), recent[9]["id"].as_str()), (Some("e2"), Some("e11")), "newest last");
        assert_eq!(recent[9]["outcome"], "Dropped");
        assert_eq!(recent[9]["reason"], "HTTP 500 #11");
        assert_eq!(recent[9]["type"], "t");
    }
}
