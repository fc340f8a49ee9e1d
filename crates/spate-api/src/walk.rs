//! A small walker over untyped manifests that records every problem with its
//! field path instead of stopping at the first.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::errors::FieldError;

pub struct Walker {
    document: usize,
    resource: String,
    errors: Vec<FieldError>,
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

impl Walker {
    pub fn new(document: usize) -> Self {
        Walker { document, resource: "?".into(), errors: vec![] }
    }

    pub fn set_identity(&mut self, kind: &str, ns: &str, name: &str) {
        self.resource = format!("{kind} {ns}/{}", if name.is_empty() { "?" } else { name });
        for e in &mut self.errors {
            e.resource = self.resource.clone();
        }
    }

    pub fn error(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push(FieldError::new(Some(self.document), self.resource.clone(), path, msg));
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn finish_err(self) -> Vec<FieldError> {
        self.errors
    }

    /// A map whose keys must all be in `allowed`; reports unknown fields.
    pub fn object<'a>(&mut self, v: &'a Value, path: &str, allowed: &[&str]) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(m) => {
                for k in m.keys() {
                    if !allowed.contains(&k.as_str()) {
                        self.error(&join(path, k), format!("unknown field (allowed here: {})", allowed.join(", ")));
                    }
                }
                Some(m)
            }
            other => {
                self.error(path, format!("must be a map, got {}", type_name(other)));
                None
            }
        }
    }

    pub fn opt_str<'a>(&mut self, m: &'a Map<String, Value>, key: &str, path: &str) -> Option<&'a str> {
        match m.get(key)? {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => {
                self.error(&join(path, key), format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    pub fn req_str<'a>(&mut self, m: &'a Map<String, Value>, key: &str, path: &str) -> Option<&'a str> {
        match self.opt_str(m, key, path) {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                self.error(&join(path, key), "must not be empty");
                None
            }
            None => {
                if !m.contains_key(key) || m[key].is_null() {
                    self.error(&join(path, key), "is required");
                }
                None
            }
        }
    }

    pub fn opt_u32(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<u32> {
        match m.get(key)? {
            Value::Null => None,
            Value::Number(n) => match n.as_u64().and_then(|u| u32::try_from(u).ok()) {
                Some(u) => Some(u),
                None => {
                    self.error(&join(path, key), format!("must be a whole number ≥ 0, got {n}"));
                    None
                }
            },
            other => {
                self.error(&join(path, key), format!("must be a number, got {}", type_name(other)));
                None
            }
        }
    }

    /// An ISO 8601 duration such as `PT0.2S`, `PT1M`, `P1D`.
    pub fn opt_duration(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<Duration> {
        let s = self.opt_str(m, key, path)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(&join(path, key), e);
                None
            }
        }
    }

    /// A map of string to string (labels, annotations, attribute filters).
    pub fn string_map<'a>(&mut self, v: &'a Value, path: &str) -> Vec<(&'a str, &'a str)> {
        match v {
            Value::Object(m) => m
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.as_str(), s.as_str())),
                    other => {
                        self.error(&join(path, k), format!("must be a string, got {} (quote it)", type_name(other)));
                        None
                    }
                })
                .collect(),
            Value::Null => vec![],
            other => {
                self.error(path, format!("must be a map of strings, got {}", type_name(other)));
                vec![]
            }
        }
    }
}

/// Parses an ISO 8601 duration. Years and months have no fixed length and are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not an ISO 8601 duration such as PT0.2S, PT30S, PT1M or P1D");
    let d = iso8601::duration(s).map_err(|_| bad())?;
    if let iso8601::Duration::YMDHMS { year, month, .. } = d
        && (year > 0 || month > 0)
    {
        return Err(format!("'{s}': years and months have no fixed length; use days (P30D) or smaller units"));
    }
    Ok(Duration::from(d))
}

/// `{secretKeyRef: {name, key}}` at `path.key`: a value kept in a Secret.
pub(crate) fn secret_ref(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str) -> Option<crate::SecretKeyRef> {
    let v = m.get(key).filter(|v| !v.is_null())?;
    let p = join(path, key);
    let sm = w.object(v, &p, &["secretKeyRef"])?;
    let Some(r) = sm.get("secretKeyRef") else {
        w.error(&join(&p, "secretKeyRef"), "is required (a value comes from a Secret: {name, key})");
        return None;
    };
    let rp = join(&p, "secretKeyRef");
    let rm = w.object(r, &rp, &["name", "key", "optional"])?;
    let name = w.req_str(rm, "name", &rp);
    let k = w.req_str(rm, "key", &rp);
    Some(crate::SecretKeyRef { name: name?.to_string(), key: k?.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT0.2S").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("PT1M").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("P1D").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("1s").is_err());
        assert!(parse_duration("P1M").is_err());
    }
}
