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

/// DNS-1123 subdomain (Kubernetes object names): at most 253 characters,
/// dot-separated parts of lowercase letters, digits and '-', each starting and
/// ending with a letter or digit.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let part_ok = |p: &[u8]| {
        !p.is_empty()
            && p.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && p[0] != b'-'
            && p[p.len() - 1] != b'-'
    };
    if !s.is_empty() && s.len() <= 253 && s.as_bytes().split(|c| *c == b'.').all(part_ok) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending \
             with a letter or digit (a DNS-1123 subdomain)"
        ))
    }
}

/// DNS-1035 label (Kubernetes Service names, and so Knative Services): a
/// DNS-1123 label that starts with a letter.
pub fn check_dns1035_label(s: &str) -> Result<(), String> {
    if check_dns_label(s).is_ok() && s.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid Service name: start with a lowercase letter, then at most 62 lowercase letters, \
             digits and '-', ending with a letter or digit (a DNS-1035 label)"
        ))
    }
}

/// Validates `metadata`, defaulting the namespace to `default`. Returns the
/// namespace, the name and the normalized metadata (name, namespace, labels,
/// annotations only: server-managed fields are dropped).
/// Names follow Kubernetes: DNS-1123 subdomains, DNS-1035 labels for Services,
/// DNS-1123 labels for namespaces.
pub fn validate(w: &mut Walker, v: Option<&Value>, kind: Option<crate::Kind>) -> (String, String, Value) {
    let Some(v) = v else {
        w.error("metadata", "is required (with at least metadata.name)");
        return ("default".into(), String::new(), Value::Null);
    };
    let Some(m) = w.object(v, "metadata", ALLOWED) else {
        return ("default".into(), String::new(), Value::Null);
    };
    let name = w.req_str(m, "name", "metadata").unwrap_or("").to_string();
    let rule = match kind {
        Some(crate::Kind::Service) => check_dns1035_label,
        _ => check_dns_subdomain,
    };
    if !name.is_empty()
        && let Err(e) = rule(&name)
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
