use serde_json::{Map, Value};

use crate::walk::Walker;

const ALLOWED: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "deletionTimestamp",
];

/// DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Validates `metadata`, defaulting the namespace to `default`. Returns the
/// namespace, the name and the normalized metadata (name, namespace, labels,
/// annotations only: server-managed fields are dropped).
pub fn validate(w: &mut Walker, v: Option<&Value>) -> (String, String, Value) {
    let Some(v) = v else {
        w.error("metadata", "is required (with at least metadata.name)");
        return ("default".into(), String::new(), Value::Null);
    };
    let Some(m) = w.object(v, "metadata", ALLOWED) else {
        return ("default".into(), String::new(), Value::Null);
    };
    let name = w.req_str(m, "name", "metadata").unwrap_or("").to_string();
    if !name.is_empty()
        && let Err(e) = check_dns_label(&name)
    {
        w.error("metadata.name", e);
    }
    let namespace = w.opt_str(m, "namespace", "metadata").unwrap_or("default").to_string();
    if let Err(e) = check_dns_label(&namespace) {
        w.error("metadata.namespace", e);
    }
    let mut out = Map::new();
    out.insert("name".into(), Value::String(name.clone()));
    out.insert("namespace".into(), Value::String(namespace.clone()));
    for key in ["labels", "annotations"] {
        if let Some(v) = m.get(key) {
            let pairs = w.string_map(v, &format!("metadata.{key}"));
            if !pairs.is_empty() {
                out.insert(
                    key.into(),
                    Value::Object(
                        pairs.into_iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect(),
                    ),
                );
            }
        }
    }
    (namespace, name, Value::Object(out))
}

pub fn annotation<'a>(metadata: &'a Value, key: &str) -> Option<&'a str> {
    metadata.get("annotations")?.get(key)?.as_str()
}
