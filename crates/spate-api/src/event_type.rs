//! Knative's EventType (`eventing.knative.dev/v1beta3`): a kind of event an
//! addressable (a Broker or Channel) carries, described by CloudEvents attribute
//! definitions. Users apply them by hand; Spate also lists the ones it sees flow
//! (see `spate_eventing::event_types`). As in Knative, the attributes must define
//! `type`, `source`, `specversion` and `id`, and the spec never changes.

use serde_json::Value;

use crate::walk::{Walker, join};

/// The attributes every EventType must define (Knative's validation).
pub const REQUIRED_ATTRIBUTES: [&str; 4] = ["type", "source", "specversion", "id"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeDefinition {
    pub name: String,
    pub required: bool,
    /// A value, or a template with `{placeholders}`; empty when any value goes.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypeConfig {
    pub namespace: String,
    pub name: String,
    /// The addressable carrying these events: (apiVersion, kind, name).
    pub reference: Option<(String, String, String)>,
    pub description: String,
    pub attributes: Vec<AttributeDefinition>,
}

impl EventTypeConfig {
    /// The value given for attribute `name`, if any.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|a| a.name == name).map(|a| a.value.as_str()).filter(|v| !v.is_empty())
    }
}

/// CloudEvents attribute names: lower-case ASCII letters and digits (at most 20 recommended; 64 enforced).
fn attribute_name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn attribute(w: &mut Walker, v: &Value, p: &str) -> Option<AttributeDefinition> {
    let m = w.object(v, p, &["name", "required", "value"])?;
    let name = w.req_str(m, "name", p)?.to_string();
    if !attribute_name_ok(&name) {
        w.error(
            &join(p, "name"),
            format!("'{name}' is not a CloudEvents attribute name (lower-case letters and digits)"),
        );
    }
    let required = match m.get("required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            w.error(&join(p, "required"), "must be true or false");
            false
        }
    };
    let value = w.opt_str(m, "value", p).unwrap_or("").to_string();
    Some(AttributeDefinition { name, required, value })
}

fn reference(w: &mut Walker, v: &Value, p: &str) -> Option<(String, String, String)> {
    let m = w.object(v, p, &["apiVersion", "kind", "name", "namespace"])?;
    let (api, kind, name) = (w.req_str(m, "apiVersion", p), w.req_str(m, "kind", p), w.req_str(m, "name", p));
    Some((api?.to_string(), kind?.to_string(), name?.to_string()))
}

pub fn compile(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<EventTypeConfig> {
    let m = w.object(spec, "spec", &["reference", "description", "attributes"])?;
    let reference = m.get("reference").and_then(|r| reference(w, r, "spec.reference"));
    let description = w.opt_str(m, "description", "spec").unwrap_or("").to_string();
    let mut attributes = vec![];
    // Linear in the number of attributes, however many a hostile manifest lists.
    let mut names = std::collections::HashSet::new();
    match m.get("attributes") {
        Some(Value::Array(list)) => {
            for (i, a) in list.iter().enumerate() {
                let p = format!("spec.attributes[{i}]");
                if let Some(a) = attribute(w, a, &p) {
                    if !names.insert(a.name.clone()) {
                        w.error(&join(&p, "name"), format!("'{}' is defined twice", a.name));
                    }
                    attributes.push(a);
                }
            }
        }
        Some(_) => w.error("spec.attributes", "must be a list of {name, required, value}"),
        None => {}
    }
    let missing: Vec<&str> =
        REQUIRED_ATTRIBUTES.iter().copied().filter(|r| !attributes.iter().any(|a| a.name == *r)).collect();
    if !missing.is_empty() {
        w.error(
            "spec.attributes",
            format!("must define {}: missing {}", REQUIRED_ATTRIBUTES.join(", "), missing.join(", ")),
        );
    }
    Some(EventTypeConfig { namespace: ns.to_string(), name: name.to_string(), reference, description, attributes })
}
