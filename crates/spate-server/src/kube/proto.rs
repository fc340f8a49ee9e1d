//! The protobuf bodies kubectl's typed clients send for core kinds
//! (`kubectl create namespace|secret|configmap`): the `k8s\0` envelope around
//! a `runtime.Unknown`, decoded into the JSON object admission reads. Only the
//! fields Spate keeps are declared (field numbers from
//! `k8s.io/api/core/v1/generated.proto`); others are skipped.

use std::collections::HashMap;

use base64::Engine;
use prost::Message;
use serde_json::{Value, json};

use crate::control::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(map = "string, string", tag = "11")]
    labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "12")]
    annotations: HashMap<String, String>,
}

/// Namespace, Secret and ConfigMap share field 1 (metadata); the rest differ.
#[derive(Clone, PartialEq, Message)]
struct Object {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    /// Secret: `map<string, bytes>`; ConfigMap: `map<string, string>` (same wire shape).
    #[prost(map = "string, bytes", tag = "2")]
    data: HashMap<String, Vec<u8>>,
    /// Secret: `type`.
    #[prost(string, optional, tag = "3")]
    secret_type: Option<String>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("the protobuf body does not decode: {e}"))
}

/// The JSON form of a protobuf Namespace, Secret or ConfigMap.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let inner = body.strip_prefix(MAGIC).ok_or_else(|| bad("no k8s envelope"))?;
    let unknown = Unknown::decode(inner).map_err(bad)?;
    let tm = unknown.type_meta.unwrap_or_default();
    let o = Object::decode(unknown.raw.as_slice()).map_err(bad)?;
    let m = o.metadata.unwrap_or_default();
    let mut meta = json!({"name": m.name});
    if !m.namespace.is_empty() {
        meta["namespace"] = json!(m.namespace);
    }
    if !m.labels.is_empty() {
        meta["labels"] = json!(m.labels);
    }
    if !m.annotations.is_empty() {
        meta["annotations"] = json!(m.annotations);
    }
    let mut v = json!({"apiVersion": tm.api_version, "kind": tm.kind, "metadata": meta});
    let b64 = base64::engine::general_purpose::STANDARD;
    match tm.kind.as_str() {
        "Secret" => {
            let data: serde_json::Map<String, Value> =
                o.data.iter().map(|(k, b)| (k.clone(), json!(b64.encode(b)))).collect();
            v["data"] = Value::Object(data);
            if let Some(t) = o.secret_type {
                v["type"] = json!(t);
            }
        }
        "ConfigMap" => {
            let data: serde_json::Map<String, Value> =
                o.data.iter().map(|(k, b)| (k.clone(), json!(String::from_utf8_lossy(b)))).collect();
            v["data"] = Value::Object(data);
        }
        "Namespace" => {}
        other => return Err(ApiError::UnsupportedMediaType(format!("application/json (not protobuf for {other})"))),
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_as_kubectl_create_sends_it() {
        let ns = Object {
            metadata: Some(ObjectMeta {
                name: "team".into(),
                labels: [("a".into(), "b".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let u = Unknown {
            type_meta: Some(TypeMeta { api_version: "v1".into(), kind: "Namespace".into() }),
            raw: ns.encode_to_vec(),
        };
        let mut body = MAGIC.to_vec();
        body.extend(u.encode_to_vec());
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"a": "b"}}})
        );
        assert!(decode(b"k8s\0\xff\xff").is_err());
        assert!(decode(b"{}").is_err());
    }
}
