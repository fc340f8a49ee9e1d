//! Knative Service (`serving.knative.dev/v1`): the revision template (one
//! container run as local processes), its autoscaling annotations, and traffic.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::meta;
use crate::walk::{Walker, join, parse_duration};

/// How an instance is judged ready to take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connect to the instance's port succeeds (Knative's default).
    TcpConnect,
    /// `GET path` answers 2xx.
    HttpGet { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `command` followed by `args`; empty when no `command` is given (then `image` runs).
    pub argv: Vec<String>,
    pub image: Option<String>,
    /// `args` for the image's entrypoint, when there is no `command`.
    pub image_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `env[].valueFrom.secretKeyRef`: resolved from Secrets when the process starts.
    pub env_secrets: Vec<(String, crate::SecretKeyRef)>,
    pub working_dir: Option<String>,
    /// `ports[0].containerPort` (for images; processes get `PORT`).
    pub container_port: Option<u16>,
    pub readiness: Readiness,
}

/// What `metric` the autoscaler follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleMetric {
    Concurrency,
    Rps,
    /// Spate's extension: undelivered events of the triggers and subscriptions that deliver here.
    Backlog,
}

/// Knative KPA settings (`autoscaling.knative.dev/*` on the template), with Knative's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaling {
    pub min_scale: u32,
    /// 0: no limit but the server's.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub metric: ScaleMetric,
    /// Target per instance: concurrent requests, requests/s, or waiting events.
    pub target: f64,
    pub target_utilization: f64,
    pub window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub scale_to_zero_retention: Duration,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling {
            min_scale: 0,
            max_scale: 0,
            initial_scale: 0,
            metric: ScaleMetric::Concurrency,
            target: 100.0,
            target_utilization: 70.0,
            window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            scale_to_zero_retention: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RevisionTemplate {
    /// `spec.template.metadata.name`, if the user names revisions.
    pub name: Option<String>,
    pub container: ContainerSpec,
    /// `containerConcurrency`: hard limit of requests per instance (0: none).
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub autoscaling: Autoscaling,
}

/// Which revision a traffic entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficRevision {
    Latest,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficTarget {
    pub revision: TrafficRevision,
    pub percent: u32,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    pub template: RevisionTemplate,
    /// The normalized `spec.template`: a new revision is made whenever it changes.
    pub template_manifest: Value,
    pub traffic: Vec<TrafficTarget>,
}

/// Annotations of the autoscaling class Spate implements, and others it accepts and ignores.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";
pub const SCALE_METRIC_ANNOTATION: &str = "spate.dev/scale-metric";
pub const TARGET_BACKLOG_ANNOTATION: &str = "spate.dev/target-backlog";

fn number(w: &mut Walker, path: &str, v: &str, min: f64, max: f64) -> Option<f64> {
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && (min..=max).contains(&n) => Some(n),
        _ => {
            w.error(path, format!("'{v}' must be a number from {min} to {max}"));
            None
        }
    }
}

fn whole(w: &mut Walker, path: &str, v: &str) -> Option<u32> {
    match v.trim().parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            w.error(path, format!("'{v}' must be a whole number ≥ 0"));
            None
        }
    }
}

/// Knative durations in annotations: `60s`, `1m30s`, `500ms`, or an ISO 8601 duration.
fn duration(w: &mut Walker, path: &str, v: &str) -> Option<Duration> {
    if v.starts_with('P') {
        return parse_duration(v).map_err(|e| w.error(path, e)).ok();
    }
    let mut total = Duration::ZERO;
    let mut rest = v.trim();
    if rest.is_empty() {
        w.error(path, "must not be empty");
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match (num.parse::<f64>(), unit) {
            (Ok(n), "ms") => n / 1000.0,
            (Ok(n), "s") => n,
            (Ok(n), "m") => n * 60.0,
            (Ok(n), "h") => n * 3600.0,
            _ => {
                w.error(path, format!("'{v}' is not a duration such as 500ms, 6s, 1m30s or PT6S"));
                return None;
            }
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Some(total)
}

fn autoscaling(w: &mut Walker, annotations: &Map<String, Value>, path: &str) -> Autoscaling {
    let mut a = Autoscaling::default();
    let mut explicit_target = false;
    let mut target_backlog = None;
    for (k, v) in annotations {
        let Some(v) = v.as_str() else { continue };
        let p = format!("{path}[{k}]");
        if k == SCALE_METRIC_ANNOTATION {
            match v {
                "backlog" => a.metric = ScaleMetric::Backlog,
                "concurrency" => a.metric = ScaleMetric::Concurrency,
                "rps" => a.metric = ScaleMetric::Rps,
                other => w.error(&p, format!("'{other}' is not one of backlog, concurrency, rps")),
            }
            continue;
        }
        if k == TARGET_BACKLOG_ANNOTATION {
            target_backlog = number(w, &p, v, 1.0, 1e9);
            continue;
        }
        let Some(key) = k.strip_prefix(AUTOSCALING_PREFIX) else { continue };
        match key {
            "min-scale" | "minScale" => a.min_scale = whole(w, &p, v).unwrap_or(0),
            "max-scale" | "maxScale" => a.max_scale = whole(w, &p, v).unwrap_or(0),
            "initial-scale" => a.initial_scale = whole(w, &p, v).unwrap_or(0),
            "target" => {
                a.target = number(w, &p, v, 0.01, 1e9).unwrap_or(a.target);
                explicit_target = true;
            }
            "target-utilization-percentage" => a.target_utilization = number(w, &p, v, 1.0, 100.0).unwrap_or(70.0),
            "metric" => match v {
                "concurrency" => a.metric = ScaleMetric::Concurrency,
                "rps" => a.metric = ScaleMetric::Rps,
                other => w.error(&p, format!("'{other}' is not a KPA metric (concurrency, rps)")),
            },
            "window" => {
                if let Some(d) = duration(w, &p, v) {
                    if d < Duration::from_secs(6) || d > Duration::from_secs(3600) {
                        w.error(&p, format!("'{v}' must be between 6s and 1h (Knative's bounds)"));
                    }
                    a.window = d;
                }
            }
            "panic-window-percentage" => {
                a.panic_window_percentage = number(w, &p, v, 1.0, 100.0).unwrap_or(10.0);
            }
            "panic-threshold-percentage" => {
                a.panic_threshold_percentage = number(w, &p, v, 110.0, 1000.0).unwrap_or(200.0);
            }
            "scale-to-zero-pod-retention-period" => {
                a.scale_to_zero_retention = duration(w, &p, v).unwrap_or_default();
            }
            "class" => {
                // KPA is what Spate implements; HPA's CPU/memory metrics have no meaning for
                // local processes, so its services are scaled by KPA on concurrency too.
                if !v.ends_with(".autoscaling.knative.dev") {
                    w.error(&p, format!("'{v}' is not an autoscaler class (kpa.autoscaling.knative.dev)"));
                }
            }
            // Accepted, no effect here (documented in spec-compat.md).
            "scale-down-delay" | "activation-scale" | "target-burst-capacity" | "pod-buffer-size" | "gc-time" => {}
            other => w.error(&p, format!("unknown autoscaling annotation '{other}'")),
        }
    }
    if a.metric == ScaleMetric::Rps && !explicit_target {
        a.target = 200.0;
    }
    if a.metric == ScaleMetric::Backlog {
        a.target = target_backlog.unwrap_or(10.0);
    } else if target_backlog.is_some() {
        w.error(
            &format!("{path}[{TARGET_BACKLOG_ANNOTATION}]"),
            format!("only applies with {SCALE_METRIC_ANNOTATION}: backlog"),
        );
    }
    if a.max_scale > 0 && a.min_scale > a.max_scale {
        w.error(&format!("{path}[{AUTOSCALING_PREFIX}min-scale]"), "must not exceed max-scale");
    }
    a
}

fn string_list(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
    match m.get(key) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => {
                    w.error(&format!("{}[{i}]", join(path, key)), "must be a string");
                    None
                }
            })
            .collect(),
        Some(_) => {
            w.error(&join(path, key), "must be a list of strings");
            vec![]
        }
    }
}

pub(crate) fn container(w: &mut Walker, v: &Value, path: &str) -> Option<ContainerSpec> {
    let m = w.object(
        v,
        path,
        &[
            "name",
            "image",
            "command",
            "args",
            "env",
            "workingDir",
            "ports",
            "readinessProbe",
            "livenessProbe",
            "resources",
            "imagePullPolicy",
            "securityContext",
        ],
    )?;
    let mut argv = string_list(w, m, "command", path);
    let args = string_list(w, m, "args", path);
    let image = w.opt_str(m, "image", path).map(str::to_string);
    if argv.is_empty() && image.is_none() {
        w.error(path, "needs command (run as a local process) or image (run under a container engine)");
    }
    let image_args = if argv.is_empty() {
        args
    } else {
        argv.extend(args);
        vec![]
    };
    let mut env = vec![];
    let mut env_secrets = vec![];
    match m.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, e) in items.iter().enumerate() {
                let p = format!("{}[{i}]", join(path, "env"));
                let Some(em) = w.object(e, &p, &["name", "value", "valueFrom"]) else { continue };
                let name = w.req_str(em, "name", &p);
                let secret = crate::walk::secret_ref(w, em, "valueFrom", &p);
                let value = w.opt_str(em, "value", &p).unwrap_or("");
                if let Some(n) = name {
                    if n == "PORT" {
                        w.error(&join(&p, "name"), "PORT is set by Spate for each instance");
                    }
                    match secret {
                        Some(r) => env_secrets.push((n.to_string(), r)),
                        None => env.push((n.to_string(), value.to_string())),
                    }
                }
            }
        }
        Some(_) => w.error(&join(path, "env"), "must be a list of {name, value}"),
    }
    let working_dir = w.opt_str(m, "workingDir", path).map(str::to_string);
    let container_port = match m.get("ports") {
        Some(Value::Array(ps)) => {
            ps.first().and_then(|p| p.get("containerPort")).and_then(Value::as_u64).and_then(|p| {
                u16::try_from(p).ok().or_else(|| {
                    w.error(&format!("{}[0].containerPort", join(path, "ports")), "must be a port number");
                    None
                })
            })
        }
        _ => None,
    };
    let readiness = match m.get("readinessProbe").and_then(|p| p.get("httpGet")) {
        Some(h) => Readiness::HttpGet { path: h.get("path").and_then(Value::as_str).unwrap_or("/").to_string() },
        None => Readiness::TcpConnect,
    };
    Some(ContainerSpec { argv, image, image_args, env, env_secrets, working_dir, container_port, readiness })
}

fn traffic(w: &mut Walker, v: Option<&Value>, path: &str) -> Vec<TrafficTarget> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return vec![TrafficTarget { revision: TrafficRevision::Latest, percent: 100, tag: None }];
    };
    let Value::Array(items) = v else {
        w.error(path, "must be a list");
        return vec![];
    };
    let mut out = vec![];
    let mut total = 0;
    for (i, t) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(m) =
            w.object(t, &p, &["revisionName", "latestRevision", "percent", "tag", "configurationName", "url"])
        else {
            continue;
        };
        let name = w.opt_str(m, "revisionName", &p);
        let latest = m.get("latestRevision").and_then(Value::as_bool);
        let revision = match (name, latest) {
            (Some(n), None | Some(false)) => TrafficRevision::Named(n.to_string()),
            (None, Some(true)) => TrafficRevision::Latest,
            (Some(_), Some(true)) => {
                w.error(&p, "give revisionName or latestRevision: true, not both");
                continue;
            }
            (None, _) => {
                w.error(&p, "needs revisionName or latestRevision: true");
                continue;
            }
        };
        let percent = w.opt_u32(m, "percent", &p).unwrap_or(0);
        if percent > 100 {
            w.error(&join(&p, "percent"), "must be at most 100");
        }
        total += percent;
        let tag = w.opt_str(m, "tag", &p).map(str::to_string);
        if let Some(t) = &tag
            && let Err(e) = meta::check_dns_label(t)
        {
            w.error(&join(&p, "tag"), e);
        }
        out.push(TrafficTarget { revision, percent, tag });
    }
    if !items.is_empty() && total != 100 {
        w.error(path, format!("percentages must add up to 100, got {total}"));
    }
    out
}

pub fn compile_service(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<ServiceConfig> {
    let m = w.object(spec, "spec", &["template", "traffic"])?;
    let Some(t) = m.get("template") else {
        w.error("spec.template", "is required");
        return None;
    };
    let tm = w.object(t, "spec.template", &["metadata", "spec"])?;
    let empty = Map::new();
    let (tname, annotations) = match tm.get("metadata") {
        Some(md) => match w.object(md, "spec.template.metadata", &["name", "annotations", "labels"]) {
            Some(mm) => {
                let n = w.opt_str(mm, "name", "spec.template.metadata").map(str::to_string);
                if let Some(n) = &n
                    && !n.starts_with(&format!("{name}-"))
                {
                    w.error("spec.template.metadata.name", format!("'{n}' must start with '{name}-' (Knative's rule)"));
                }
                let ann = mm.get("annotations").and_then(Value::as_object).unwrap_or(&empty);
                w.string_map(mm.get("annotations").unwrap_or(&Value::Null), "spec.template.metadata.annotations");
                (n, ann)
            }
            None => (None, &empty),
        },
        None => (None, &empty),
    };
    let autoscaling = autoscaling(w, annotations, "spec.template.metadata.annotations");
    let Some(ts) = tm.get("spec") else {
        w.error("spec.template.spec", "is required");
        return None;
    };
    let sm = w.object(
        ts,
        "spec.template.spec",
        &[
            "containers",
            "containerConcurrency",
            "timeoutSeconds",
            "responseStartTimeoutSeconds",
            "idleTimeoutSeconds",
            "serviceAccountName",
            "volumes",
            "imagePullSecrets",
            "enableServiceLinks",
        ],
    )?;
    let container = match sm.get("containers") {
        Some(Value::Array(cs)) if cs.len() == 1 => {
            let c = container(w, &cs[0], "spec.template.spec.containers[0]");
            if c.as_ref().is_some_and(|c| !c.env_secrets.is_empty()) {
                w.error(
                    "spec.template.spec.containers[0].env",
                    "valueFrom.secretKeyRef is supported in ContainerSources; a Service's env takes value only (for now)",
                );
            }
            c
        }
        Some(Value::Array(cs)) if cs.len() > 1 => {
            w.error("spec.template.spec.containers", "Spate runs one container per revision (no sidecars)");
            None
        }
        _ => {
            w.error("spec.template.spec.containers", "needs exactly one container");
            None
        }
    };
    let container_concurrency = w.opt_u32(sm, "containerConcurrency", "spec.template.spec").unwrap_or(0);
    if container_concurrency > 1000 {
        w.error("spec.template.spec.containerConcurrency", "must be at most 1000");
    }
    let timeout = Duration::from_secs(u64::from(w.opt_u32(sm, "timeoutSeconds", "spec.template.spec").unwrap_or(300)));
    let traffic = traffic(w, m.get("traffic"), "spec.traffic");
    let template = RevisionTemplate { name: tname, container: container?, container_concurrency, timeout, autoscaling };
    Some(ServiceConfig { namespace: ns.into(), name: name.into(), template, template_manifest: t.clone(), traffic })
}

/// Compiles a stored revision template (from the revision history) again.
pub fn compile_template(ns: &str, service: &str, template: &Value) -> Result<RevisionTemplate, String> {
    let mut w = Walker::new(0);
    let spec = serde_json::json!({ "template": template });
    let out = compile_service(&mut w, &spec, ns, service);
    match out {
        Some(s) if w.ok() => Ok(s.template),
        _ => Err(w.finish_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<ServiceConfig, Vec<String>> {
        let doc: Value = serde_saphyr::from_str(yaml).unwrap();
        let mut w = Walker::new(0);
        let out = compile_service(&mut w, &doc, "default", "hello");
        if w.ok() { Ok(out.unwrap()) } else { Err(w.finish_err().iter().map(ToString::to_string).collect()) }
    }

    #[test]
    fn a_process_service_with_every_autoscaling_setting() {
        let s = compile(
            "template:\n  metadata:\n    annotations:\n      autoscaling.knative.dev/min-scale: \"1\"\n      autoscaling.knative.dev/max-scale: \"5\"\n      autoscaling.knative.dev/target: \"2\"\n      autoscaling.knative.dev/window: 6s\n      autoscaling.knative.dev/scale-to-zero-pod-retention-period: 1m30s\n      autoscaling.knative.dev/class: kpa.autoscaling.knative.dev\n  spec:\n    containerConcurrency: 1\n    containers:\n      - command: [python3, app.py]\n        args: [\"--x\"]\n        env: [{name: A, value: b}]\n",
        )
        .unwrap();
        let a = &s.template.autoscaling;
        assert_eq!((a.min_scale, a.max_scale, a.target), (1, 5, 2.0));
        assert_eq!(a.window, Duration::from_secs(6));
        assert_eq!(a.scale_to_zero_retention, Duration::from_secs(90));
        assert_eq!(s.template.container.argv, ["python3", "app.py", "--x"]);
        assert_eq!(s.template.container_concurrency, 1);
        assert_eq!(s.traffic, vec![TrafficTarget { revision: TrafficRevision::Latest, percent: 100, tag: None }]);
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let errs = compile(
            "template:\n  metadata:\n    name: other-1\n    annotations:\n      autoscaling.knative.dev/window: 2s\n      autoscaling.knative.dev/min-scale: lots\n      autoscaling.knative.dev/bogus: x\n  spec:\n    containers:\n      - env: [{name: PORT, value: \"1\"}]\ntraffic:\n  - latestRevision: true\n    percent: 60\n  - revisionName: hello-1\n    percent: 20\n    tag: Bad_Tag\n",
        )
        .unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "spec.template.metadata.name",
            "autoscaling.knative.dev/window]: '2s' must be between 6s and 1h",
            "autoscaling.knative.dev/min-scale]: 'lots'",
            "unknown autoscaling annotation 'bogus'",
            "spec.template.spec.containers[0]: needs command",
            "containers[0].env[0].name: PORT is set by Spate",
            "spec.traffic: percentages must add up to 100, got 80",
            "spec.traffic[1].tag",
        ] {
            assert!(all.contains(needle), "missing '{needle}' in:\n{all}");
        }
    }

    #[test]
    fn knative_durations() {
        let mut w = Walker::new(0);
        assert_eq!(duration(&mut w, "p", "500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration(&mut w, "p", "1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration(&mut w, "p", "PT6S"), Some(Duration::from_secs(6)));
        assert!(w.ok());
        assert_eq!(duration(&mut w, "p", "6 parsecs"), None);
        assert!(!w.ok());
    }
}
