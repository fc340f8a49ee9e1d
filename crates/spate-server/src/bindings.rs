//! SinkBinding: `K_SINK` and `K_CE_OVERRIDES` injected into the processes of the
//! Services it names. The variables go into the Service's revision template, so a
//! new sink URL makes a new revision and its processes restart with it (as the
//! binding's webhook does to a Deployment's pod template in Knative).

use std::collections::HashMap;

use serde_json::{Value, json};
use spate_api::{Condition, Kind, ServiceConfig, SinkBindingConfig};
use spate_core::Destination;

pub type Key = (Kind, String, String);

/// One binding's state after [`apply`].
pub struct BindingStatus {
    pub key: Key,
    pub conditions: Vec<Condition>,
    pub sink_uri: Option<String>,
}

fn set_env(env: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    env.retain(|(k, _)| k != name);
    if let Some(v) = value {
        env.push((name.to_string(), v.to_string()));
    }
}

fn set_manifest_env(template: &mut Value, name: &str, value: Option<&str>) {
    let Some(c) = template.pointer_mut("/spec/containers/0").and_then(Value::as_object_mut) else { return };
    let env = c.entry("env").or_insert_with(|| json!([]));
    if !env.is_array() {
        *env = json!([]);
    }
    let list = env.as_array_mut().expect("array");
    list.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
    if let Some(v) = value {
        list.push(json!({"name": name, "value": v}));
    }
}

/// Injects every binding's sink into its subjects (in `services`) and reports each binding.
pub fn apply(
    bindings: &[SinkBindingConfig],
    services: &mut [ServiceConfig],
    labels: &HashMap<(String, String), Vec<(String, String)>>,
    resolve: &dyn Fn(&Destination) -> Result<String, spate_core::destination::ResolveError>,
) -> Vec<BindingStatus> {
    let mut out = vec![];
    for b in bindings {
        let key = (Kind::SinkBinding, b.namespace.clone(), b.name.clone());
        let sink = resolve(&b.sink);
        let subjects: Vec<usize> = services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.namespace == b.subject.namespace)
            .filter(|(_, s)| match &b.subject.name {
                Some(n) => &s.name == n,
                None => {
                    let have = labels.get(&(s.namespace.clone(), s.name.clone()));
                    b.subject.match_labels.iter().all(|l| have.is_some_and(|h| h.contains(l)))
                }
            })
            .map(|(i, _)| i)
            .collect();
        let mut conditions = vec![];
        match &sink {
            Ok(_) => conditions.push(Condition::ok("SinkProvided")),
            Err(e) => conditions.push(Condition::fail("SinkProvided", "NotFound", e.to_string())),
        }
        if subjects.is_empty() {
            let what = match &b.subject.name {
                Some(n) => format!("Service {}/{n} does not exist", b.subject.namespace),
                None => format!("no Service in {} has labels {:?}", b.subject.namespace, b.subject.match_labels),
            };
            conditions.push(Condition::fail("BindingAvailable", "SubjectMissing", what));
        } else {
            conditions.push(Condition::ok("BindingAvailable"));
        }
        if let Ok(url) = &sink {
            let overrides = spate_api::ce_overrides_env(&b.ce_overrides);
            for i in &subjects {
                let s = &mut services[*i];
                set_env(&mut s.template.container.env, "K_SINK", Some(url));
                set_env(&mut s.template.container.env, "K_CE_OVERRIDES", overrides.as_deref());
                set_manifest_env(&mut s.template_manifest, "K_SINK", Some(url));
                set_manifest_env(&mut s.template_manifest, "K_CE_OVERRIDES", overrides.as_deref());
            }
        }
        out.push(BindingStatus { key, conditions: Condition::ready_first(conditions), sink_uri: sink.ok() });
    }
    out
}
