//! OpenAPI v3 per group-version (so `kubectl apply` knows the server validates
//! — the PATCH operations declare `fieldValidation` — and `kubectl explain`
//! has fields to show), and the read-only CustomResourceDefinitions that
//! describe Spate's kinds to tools that list them (kn).
//!
//! The schemas describe the fields admission (`spate-api`) reads, with
//! Knative's descriptions; admission stays the validator (unknown fields are
//! refused there, with their path).

use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use spate_api::Kind;

use super::resources::{self, Def, Res};
use crate::control::ApiError;

fn obj(description: &str, props: Value) -> Value {
    json!({"type": "object", "description": description, "properties": props})
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn open(description: &str) -> Value {
    json!({"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": true})
}

fn kref() -> Value {
    obj(
        "Ref points to an Addressable.",
        json!({"apiVersion": string("API version of the referent."), "kind": string("Kind of the referent."),
            "name": string("Name of the referent."), "namespace": string("Namespace of the referent (defaults to the object's).")}),
    )
}

fn destination(description: &str) -> Value {
    obj(
        description,
        json!({"ref": kref(), "uri": string("URI can be an absolute URL (non-empty scheme and non-empty host) pointing to the target or a relative URI. Relative URIs will be resolved using the base URI retrieved from Ref."),
            "CACerts": string("CACerts are the Certification Authority (CA) certificates in PEM format that the source trusts when sending events to the sink."),
            "audience": string("Audience is the OIDC audience. This need only be set if the target is not an Addressable and thus the Audience can't be received from the target itself.")}),
    )
}

fn delivery() -> Value {
    obj(
        "Delivery contains the delivery spec for this specific trigger.",
        json!({"deadLetterSink": destination("DeadLetterSink is the sink receiving event that could not be sent to a destination."),
            "retry": {"type": "integer", "format": "int32", "description": "Retry is the minimum number of retries the sender should attempt when sending an event before moving it to the dead letter sink."},
            "backoffPolicy": string("BackoffPolicy is the retry backoff policy (linear, exponential)."),
            "backoffDelay": string("BackoffDelay is the delay before retrying, an ISO 8601 duration."),
            "timeout": string("Timeout is the timeout of each single request, an ISO 8601 duration.")}),
    )
}

/// The `spec` schema of a kind.
fn spec(kind: Kind) -> Value {
    match kind {
        Kind::Trigger => obj(
            "Spec defines the desired state of the Trigger.",
            json!({"broker": string("Broker is the broker that this trigger receives events from."),
                "filter": obj("Filter is the filter to apply against all events from the Broker. Only events that pass this filter will be sent to the Subscriber.",
                    json!({"attributes": {"type": "object", "description": "Attributes filters events by exact match on event context attributes.", "additionalProperties": {"type": "string"}}})),
                "filters": {"type": "array", "description": "Filters is an array of SubscriptionsAPIFilter that evaluate to true or false (exact, prefix, suffix, all, any, not, cesql).", "items": open("A SubscriptionsAPIFilter.")},
                "subscriber": destination("Subscriber is the addressable that receives events from the Broker that pass the Filter."),
                "delivery": delivery()}),
        ),
        Kind::Broker => {
            obj("Spec defines the desired state of the Broker.", json!({"config": kref(), "delivery": delivery()}))
        }
        Kind::Subscription => obj(
            "Spec defines the desired state of the Subscription.",
            json!({"channel": kref(), "subscriber": destination("Subscriber is reference to function for processing events."),
                "reply": destination("Reply specifies (optionally) how to handle events returned from the Subscriber target."),
                "delivery": delivery()}),
        ),
        Kind::Sequence => obj(
            "Spec defines the desired state of the Sequence.",
            json!({"steps": {"type": "array", "description": "Steps is the list of Destinations (processors / functions) that will be called in the order provided.", "items": destination("A step.")},
                "channelTemplate": open("ChannelTemplate specifies which Channel CRD to use."),
                "reply": destination("Reply is a Reference to where the result of the last Subscriber gets sent to.")}),
        ),
        Kind::Parallel => obj(
            "Spec defines the desired state of the Parallel.",
            json!({"branches": {"type": "array", "description": "Branches is the list of Filter/Subscribers pairs.", "items": obj("A branch.", json!({
                    "filter": destination("Filter is the expression guarding the branch."), "subscriber": destination("Subscriber receiving the event when the filter passes."),
                    "reply": destination("Reply is a Reference to where the result of Subscriber of this case gets sent to.")}))},
                "channelTemplate": open("ChannelTemplate specifies which Channel CRD to use."),
                "reply": destination("Reply is a Reference to where the result of a case Subscriber gets sent to when the case does not have a Reply.")}),
        ),
        k if k.is_source() || k == Kind::SinkBinding => {
            let mut s = open("Spec defines the desired state of the source.");
            s["properties"] = json!({"sink": destination("Sink is a reference to an object that will resolve to a uri to use as the sink."),
                "ceOverrides": open("CloudEventOverrides defines overrides to control the output format and modifications of the event sent to the sink.")});
            s
        }
        _ => open("Spec defines the desired state."),
    }
}

/// The schema of a whole object of `def`.
fn schema(def: &Def, version: &str) -> Value {
    let mut props = json!({"apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
        "kind": string("Kind is a string value representing the REST resource this object represents."),
        "metadata": open("Standard object's metadata.")});
    match def.res {
        Res::Stored(k @ (Kind::Secret | Kind::ConfigMap)) => {
            props["data"] = json!({"type": "object", "description": "Data contains the values.", "additionalProperties": {"type": "string"}});
            if k == Kind::Secret {
                props["stringData"] = json!({"type": "object", "additionalProperties": {"type": "string"}});
                props["type"] = string("Used to facilitate programmatic handling of secret data.");
            }
        }
        Res::Stored(k) => {
            props["spec"] = spec(k);
            props["status"] = open("Status represents the current state. This data may be out of date.");
        }
        _ => {
            props["spec"] = open("Spec.");
            props["status"] = open("Status.");
        }
    }
    let mut s = obj(&format!("{} as Knative (and Spate) serve it.", def.kind), props);
    s["x-kubernetes-group-version-kind"] = json!([{"group": def.group, "version": version, "kind": def.kind}]);
    s
}

fn schema_name(def: &Def, version: &str) -> String {
    if def.group.is_empty() {
        return format!("io.k8s.api.core.{version}.{}", def.kind);
    }
    let reversed: Vec<&str> = def.group.split('.').rev().collect();
    format!("{}.{version}.{}", reversed.join("."), def.kind)
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

pub async fn index() -> Json<Value> {
    let mut paths = Map::new();
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    for (g, vs) in resources::groups() {
        gvs.extend(vs.into_iter().map(|v| (g, v)));
    }
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}")}));
    }
    Json(json!({"paths": paths}))
}

fn operations(def: &Def, version: &str, r: &Value) -> (Value, Value) {
    let gvk = json!({"group": def.group, "version": version, "kind": def.kind});
    let op = |verb: &str| {
        json!({"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": verb,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": r}}}}})
    };
    let mut patch = op("patch");
    patch["parameters"] = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}, {"name": "dryRun", "in": "query", "schema": {"type": "string"}}]);
    patch["requestBody"] = json!({"content": {"application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}}, "application/apply-patch+yaml": {"schema": {"type": "object"}}}});
    let mut post = op("post");
    post["parameters"] =
        json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
    let item = if def.read_only {
        json!({"get": op("get")})
    } else {
        json!({"get": op("get"), "put": op("put"), "patch": patch, "delete": op("delete")})
    };
    let collection = if def.read_only { json!({"get": op("list")}) } else { json!({"get": op("list"), "post": post}) };
    (collection, item)
}

pub async fn group_version(Path(gv): Path<String>) -> Result<Response, ApiError> {
    let segs: Vec<&str> = gv.split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::NotFound(format!("no OpenAPI document for {gv}"))),
    };
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for def in resources::all().into_iter().filter(|d| d.group == group && d.versions.contains(&version)) {
        let name = schema_name(&def, version);
        schemas.insert(name.clone(), schema(&def, version));
        let r = json!({"$ref": format!("#/components/schemas/{name}")});
        let (collection, item) = operations(&def, version, &r);
        let base = if def.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(group, version), def.plural)
        } else {
            format!("/{}/{}", gv_path(group, version), def.plural)
        };
        paths.insert(format!("{base}/{{name}}"), item);
        paths.insert(base, collection);
    }
    if schemas.is_empty() {
        return Err(ApiError::NotFound(format!("no OpenAPI document for {gv}")));
    }
    let doc = json!({"openapi": "3.0.0", "info": {"title": "Spate", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths, "components": {"schemas": schemas}});
    Ok(Json(doc).into_response())
}

/// Labels kn and other tools find kinds by.
fn duck_labels(kind: Kind) -> Value {
    let mut l = json!({"eventing.knative.dev/release": "spate", "knative.dev/crd-install": "true"});
    if kind.is_source() {
        l["duck.knative.dev/source"] = json!("true");
    }
    if kind.is_channel() {
        l["messaging.knative.dev/subscribable"] = json!("true");
    }
    if kind.addressable() {
        l["duck.knative.dev/addressable"] = json!("true");
    }
    l
}

/// A CustomResourceDefinition for each Knative kind Spate serves (read-only).
pub fn crds() -> Vec<Value> {
    resources::all()
        .into_iter()
        .filter(|d| !d.group.is_empty() && d.res != Res::Crds)
        .map(|d| {
            let versions: Vec<Value> = d
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let cols: Vec<Value> = d
                        .columns
                        .iter()
                        .map(|c| json!({"name": c.name, "type": c.ty, "jsonPath": c.path, "priority": c.priority}))
                        .collect();
                    json!({"name": v, "served": true, "storage": i == 0, "subresources": {"status": {}},
                        "additionalPrinterColumns": cols, "schema": {"openAPIV3Schema": schema(&d, v)}})
                })
                .collect();
            let labels = match d.res {
                Res::Stored(k) => duck_labels(k),
                _ => json!({}),
            };
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{}.{}", d.plural, d.group), "labels": labels},
                "spec": {"group": d.group, "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                    "names": {"kind": d.kind, "listKind": format!("{}List", d.kind), "plural": d.plural,
                        "singular": d.singular, "shortNames": d.short_names, "categories": d.categories},
                    "versions": versions},
                "status": {"conditions": [{"type": "Established", "status": "True"}],
                    "acceptedNames": {"kind": d.kind, "plural": d.plural}}})
        })
        .collect()
}
