//! Label and field selectors, as `kubectl -l` and `--field-selector` send them.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_req(p: &str, fields: bool) -> Result<Req, String> {
    let bad = || format!("'{p}' is not a valid {} selector requirement", if fields { "field" } else { "label" });
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Req::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    if fields {
        return Err(bad());
    }
    if let Some((k, v)) = p.split_once(" notin ") {
        return Ok(Req::NotIn(k.trim().into(), set(v).ok_or_else(bad)?));
    }
    if let Some((k, v)) = p.split_once(" in ") {
        return Ok(Req::In(k.trim().into(), set(v).ok_or_else(bad)?));
    }
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Req::Absent(k.trim().into()));
    }
    if p.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
        return Ok(Req::Exists(p.into()));
    }
    Err(bad())
}

impl Selector {
    /// `labelSelector` and `fieldSelector` query values; the error names the one at fault.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let mut s = Selector::default();
        for p in labels.map(split_top).unwrap_or_default() {
            s.labels.push(parse_req(p, false)?);
        }
        for p in fields.map(split_top).unwrap_or_default() {
            s.fields.push(parse_req(p, true)?);
        }
        Ok(s)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let field = |k: &str| {
            let v = k.split('.').try_fold(object, |v, p| v.get(p));
            match v {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            }
        };
        let ok_labels = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v),
            Req::Ne(k, v) => label(k) != Some(v),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Req::Exists(k) => label(k).is_some(),
            Req::Absent(k) => label(k).is_none(),
        });
        ok_labels
            && self.fields.iter().all(|r| match r {
                // An absent field reads as empty, as on a real server.
                Req::Eq(k, v) => field(k).unwrap_or_default() == *v,
                Req::Ne(k, v) => field(k).unwrap_or_default() != *v,
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_fields() {
        let o = json!({"metadata": {"name": "t", "namespace": "default", "labels": {"app": "a", "tier": "web"}}});
        let ok = |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).unwrap().matches(&o);
        assert!(ok(Some("app=a"), Some("metadata.name=t,metadata.namespace==default")));
        assert!(!ok(None, Some("metadata.name=u")));
        assert!(ok(Some("tier in (web, db),!missing,app"), None));
        assert!(!ok(Some("tier notin (web)"), None));
        assert!(ok(Some("app!=b"), Some("metadata.name!=u")));
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
        assert!(Selector::parse(Some("a in b"), None).is_err());
    }
}
