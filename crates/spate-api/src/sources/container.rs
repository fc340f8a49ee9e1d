//! ContainerSource (`sources.knative.dev/v1`): processes Spate supervises, given `K_SINK`.

use serde_json::{Map, Value};

use super::{CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams};
use crate::serving::{ContainerSpec, container};
use crate::walk::{Walker, join};

pub(super) static CONTAINER: SourceKindDef = SourceKindDef {
    name: "ContainerSource",
    group: "sources.knative.dev",
    version: "v1",
    plural: "containersources",
    also_accepts: &["sources.knative.dev/v1beta1"],
    fields: &["template"],
    compile,
};

/// The containers of `spec.template.spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSourceSpec(pub Vec<ContainerSpec>);

impl SourceParams for ContainerSourceSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        self.0.iter().flat_map(|c| c.env_secrets.iter().map(|(_, r)| r)).collect()
    }
}

fn compile(w: &mut Walker, m: &Map<String, Value>, _cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    containers(w, m).map(|c| CompiledSource::new(ContainerSourceSpec(c)))
}

fn containers(w: &mut Walker, m: &Map<String, Value>) -> Option<Vec<ContainerSpec>> {
    let Some(t) = m.get("template") else {
        w.error("spec.template", "is required (a pod template with spec.containers)");
        return None;
    };
    let tm = w.object(t, "spec.template", &["metadata", "spec"])?;
    let Some(ps) = tm.get("spec") else {
        w.error("spec.template.spec", "is required");
        return None;
    };
    let pm = w.object(ps, "spec.template.spec", &["containers", "serviceAccountName", "volumes"])?;
    let Some(Value::Array(cs)) = pm.get("containers") else {
        w.error("spec.template.spec.containers", "is required (a list of containers)");
        return None;
    };
    if cs.is_empty() {
        w.error("spec.template.spec.containers", "must name at least one container");
    }
    let out: Vec<Option<ContainerSpec>> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = format!("spec.template.spec.containers[{i}]");
            let c = container(w, c, &p)?;
            for k in c.env.iter().map(|(k, _)| k).chain(c.env_secrets.iter().map(|(k, _)| k)) {
                if k == "K_SINK" || k == "K_CE_OVERRIDES" {
                    w.error(&join(&p, "env"), format!("{k} is set by Spate from spec.sink and spec.ceOverrides"));
                }
            }
            Some(c)
        })
        .collect();
    out.into_iter().collect()
}
