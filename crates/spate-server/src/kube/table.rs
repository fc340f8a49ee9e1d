//! `meta.k8s.io/v1` Tables: what `kubectl get` prints, with each kind's
//! printer columns evaluated on the server as a CRD server does.

use serde_json::{Value, json};

use super::resources::{Column, Def};

/// Evaluates the JSONPath subset Knative's printer columns use:
/// `.a.b`, escaped dots (`.a\.b/c`), `['x\.y']` and `[?(@.k=="v")]`. Missing keys give `None`.
pub fn eval<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let (name, tail) = take_name(r);
            cur = cur.get(&name)?;
            rest = tail;
        } else if let Some(r) = rest.strip_prefix("[?(@.") {
            let end = r.find(")]")?;
            let (cond, tail) = (&r[..end], &r[end + 2..]);
            let (field, want) = cond.split_once("==")?;
            let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
            cur = cur.as_array()?.iter().find(|e| e.get(field.trim()).and_then(Value::as_str) == Some(want))?;
            rest = tail;
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            cur = cur.get(r[..end].replace("\\.", "."))?;
            rest = &r[end + 2..];
        } else {
            return None;
        }
    }
    Some(cur)
}

/// A field name up to the next unescaped `.` or `[`, with `\.` unescaped.
fn take_name(s: &str) -> (String, &str) {
    let mut name = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some((_, '.'))) => {
                name.push('.');
                chars.next();
            }
            '.' | '[' => return (name, &s[i..]),
            c => name.push(c),
        }
    }
    (name, "")
}

/// Kubernetes' `HumanDuration`: `45s`, `5m30s`, `5h10m`, `3d4h`, `2y`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r}s", s / 60),
        },
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => match (s / 60) % 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m}m", s / 3600),
        },
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => match (s / 3600) % 24 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d{h}h", s / 86400),
        },
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s if s < 8 * 365 * 86400 => match (s / 86400) % 365 {
            0 => format!("{}y", s / (365 * 86400)),
            d => format!("{}y{d}d", s / (365 * 86400)),
        },
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn cell(object: &Value, c: &Column, now: i64) -> Value {
    let Some(v) = eval(object, c.path) else { return Value::Null };
    match c.ty {
        "date" => v
            .as_str()
            .and_then(spate_core::rules::parse_rfc3339)
            .map_or(Value::Null, |(secs, _)| json!(human_duration(now - secs))),
        "integer" | "number" | "boolean" => v.clone(),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

/// The columns of a kind: `Name` first, then its printer columns (or `Age` alone).
pub fn columns(def: &Def) -> Vec<Value> {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."})];
    let printer: Vec<Column> = if def.columns.is_empty() {
        vec![Column { name: "Age", ty: "date", path: ".metadata.creationTimestamp", priority: 0 }]
    } else {
        def.columns.clone()
    };
    for c in printer {
        cols.push(json!({"name": c.name, "type": c.ty, "format": "", "priority": c.priority,
            "description": format!("Custom resource definition column (in JSONPath format): {}", c.path)}));
    }
    cols
}

/// One row: the cells, and the object as metadata only unless `full`.
pub fn row(def: &Def, object: &Value, full: bool, now: i64) -> Value {
    let mut cells = vec![object["metadata"]["name"].clone()];
    if def.columns.is_empty() {
        cells.push(cell(
            object,
            &Column { name: "Age", ty: "date", path: ".metadata.creationTimestamp", priority: 0 },
            now,
        ));
    }
    cells.extend(def.columns.iter().map(|c| cell(object, c, now)));
    let object = if full {
        object.clone()
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
    };
    json!({"cells": cells, "object": object})
}

/// A Table of `objects`; `headers` false leaves the column definitions out (later watch events).
pub fn table(def: &Def, objects: &[Value], rv: &str, full: bool, headers: bool) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let rows: Vec<Value> = objects.iter().map(|o| row(def, o, full, now)).collect();
    let cols = if headers { columns(def) } else { vec![] };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": cols, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knative_column_paths() {
        let o = json!({"metadata": {"annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"},
                "labels": {"serving.knative.dev/configuration": "fn"}},
            "spec": {"attributes": [{"name": "source", "value": "s"}, {"name": "type", "value": "t"}]},
            "status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(&o, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(eval(&o, ".spec.attributes[?(@.name=='type')].value"), Some(&json!("t")));
        assert_eq!(
            eval(&o, ".metadata.annotations.eventing\\.knative\\.dev/broker\\.class"),
            Some(&json!("MTChannelBasedBroker"))
        );
        assert_eq!(eval(&o, ".metadata.labels['serving\\.knative\\.dev/configuration']"), Some(&json!("fn")));
        assert_eq!(eval(&o, ".status.address.url"), None);
    }

    #[test]
    fn durations_read_as_kubectl_prints_them() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (330, "5m30s"),
            (900, "15m"),
            (18600, "5h10m"),
            (100_000, "27h"),
            (273_600, "3d4h"),
            (63_072_000, "2y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
