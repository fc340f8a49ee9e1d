//! Versions of a kind whose shape differs from the stored one, converted on
//! the way out (reads, watches) and in (writes), as a conversion webhook does.
//! Only EventType has them: v1beta3 (stored) describes CloudEvents attributes
//! (`spec.attributes[]`); v1beta2 and v1beta1 name `spec.type`, `spec.source`
//! and `spec.schema`.

use serde_json::{Value, json};
use spate_api::Kind;

/// The attribute `name`'s value in a v1beta3 spec.
fn attribute<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    spec["attributes"].as_array()?.iter().find(|a| a["name"] == name).and_then(|a| a.get("value"))
}

/// A stored object shown in `version` of its kind.
pub fn to_served(kind: Kind, version: &str, mut o: Value) -> Value {
    if kind != Kind::EventType || version == kind.version() {
        return o;
    }
    let spec = o["spec"].take();
    let mut out = json!({});
    for (field, attr) in [("type", "type"), ("source", "source"), ("schema", "dataschema")] {
        if let Some(v) = attribute(&spec, attr) {
            out[field] = v.clone();
        }
    }
    for keep in ["reference", "description"] {
        if let Some(v) = spec.get(keep) {
            out[keep] = v.clone();
        }
    }
    o["spec"] = out;
    o
}

/// A document written in an older version, in the stored version's shape.
pub fn to_stored(kind: Kind, mut doc: Value) -> Value {
    let older = doc["apiVersion"].as_str().is_some_and(|v| v != kind.api_version());
    if kind != Kind::EventType || !older || doc["spec"].get("attributes").is_some() {
        return doc;
    }
    let spec = doc["spec"].take();
    let mut attributes = vec![];
    for (attr, field, required) in [("type", "type", true), ("source", "source", true), ("dataschema", "schema", false)]
    {
        match spec.get(field) {
            Some(v) => attributes.push(json!({"name": attr, "value": v, "required": required})),
            None if required => attributes.push(json!({"name": attr, "required": true})),
            None => {}
        }
    }
    attributes.push(json!({"name": "specversion", "required": true}));
    attributes.push(json!({"name": "id", "required": true}));
    let mut out = json!({"attributes": attributes});
    for keep in ["reference", "description"] {
        if let Some(v) = spec.get(keep) {
            out[keep] = v.clone();
        }
    }
    doc["spec"] = out;
    doc["apiVersion"] = json!(kind.api_version());
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_between_v1beta2_and_v1beta3() {
        let v1beta2 = json!({"apiVersion": "eventing.knative.dev/v1beta2", "kind": "EventType",
            "metadata": {"name": "e"}, "spec": {"type": "order.created", "source": "/shop", "schema": "https://s/o.json",
            "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}, "description": "d"}});
        let stored = to_stored(Kind::EventType, v1beta2.clone());
        assert_eq!(stored["apiVersion"], "eventing.knative.dev/v1beta3");
        assert_eq!(attribute(&stored["spec"], "type"), Some(&json!("order.created")));
        assert_eq!(attribute(&stored["spec"], "dataschema"), Some(&json!("https://s/o.json")));
        let mut shown = to_served(Kind::EventType, "v1beta2", stored);
        shown["apiVersion"] = json!("eventing.knative.dev/v1beta2");
        assert_eq!(shown, v1beta2);
    }
}
