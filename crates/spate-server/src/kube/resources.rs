//! What the Kubernetes API serves, as Knative's CRDs declare it: each
//! resource's group, versions, plural, singular, short names, categories and
//! printer columns (`additionalPrinterColumns`, with their exact JSONPaths).
//! Discovery, Tables, OpenAPI and the CRD objects all read this one table.

use spate_api::Kind;

use crate::control::Derived;

/// One printer column: name, type, JSONPath, priority (1: only with `-o wide`).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub path: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, ty: &'static str, path: &'static str) -> Column {
    Column { name, ty, path, priority: 0 }
}

const URL: Column = col("URL", "string", ".status.address.url");
const AGE: Column = col("Age", "date", ".metadata.creationTimestamp");
const READY: Column = col("Ready", "string", ".status.conditions[?(@.type==\"Ready\")].status");
const REASON: Column = col("Reason", "string", ".status.conditions[?(@.type==\"Ready\")].reason");
const SINK: Column = col("Sink", "string", ".status.sinkUri");
const SVC_URL: Column = col("URL", "string", ".status.url");
const LATEST_CREATED: Column = col("LatestCreated", "string", ".status.latestCreatedRevisionName");
const LATEST_READY: Column = col("LatestReady", "string", ".status.latestReadyRevisionName");

/// A resource the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    /// A kind stored in the config store (and the derived objects of that kind).
    Stored(Kind),
    /// Revisions, Configurations and Routes: derived from Services, read-only.
    Derived(Derived),
    Events,
    /// `apiextensions.k8s.io/v1` CustomResourceDefinitions describing the kinds above: read-only.
    Crds,
}

/// Discovery's description of one resource.
#[derive(Debug, Clone)]
pub struct Def {
    pub res: Res,
    pub group: &'static str,
    /// Served versions, the preferred (storage) one first.
    pub versions: Vec<&'static str>,
    pub plural: &'static str,
    pub singular: String,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub columns: Vec<Column>,
    pub read_only: bool,
}

const DERIVED: [Derived; 3] = [Derived::Revision, Derived::Configuration, Derived::Route];

/// Every resource served, in discovery order.
pub fn all() -> Vec<Def> {
    let mut out: Vec<Def> = Kind::all().map(stored).collect();
    out.extend(DERIVED.into_iter().map(derived));
    out.push(Def {
        res: Res::Events,
        group: "",
        versions: vec!["v1"],
        plural: "events",
        singular: "event".into(),
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        columns: vec![],
        read_only: true,
    });
    out.push(Def {
        res: Res::Crds,
        group: "apiextensions.k8s.io",
        versions: vec!["v1"],
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition".into(),
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        columns: vec![col("Created At", "date", ".metadata.creationTimestamp")],
        read_only: true,
    });
    out
}

/// The resource at `/apis/<group>/<version>/<plural>` (group "" or "core": `/api/v1`), with
/// that version's printer columns.
pub fn find(group: &str, version: &str, plural: &str) -> Option<Def> {
    let group = if group == "core" { "" } else { group };
    let mut def =
        all().into_iter().find(|d| d.group == group && d.plural == plural && d.versions.contains(&version))?;
    if def.res == Res::Stored(Kind::EventType) && version != Kind::EventType.version() {
        // v1beta2 and v1beta1 EventTypes have `spec.type`, `spec.source`, `spec.schema`.
        def.columns = vec![
            col("Type", "string", ".spec.type"),
            col("Source", "string", ".spec.source"),
            col("Schema", "string", ".spec.schema"),
            col("Reference Name", "string", ".spec.reference.name"),
            col("Reference Kind", "string", ".spec.reference.kind"),
            col("Description", "string", ".spec.description"),
            READY,
            REASON,
        ];
    }
    Some(def)
}

fn stored(kind: Kind) -> Def {
    let (short_names, categories, columns): (&'static [&'static str], &'static [&'static str], Vec<Column>) = match kind
    {
        Kind::Broker => (
            &[],
            &["all", "knative", "eventing"],
            vec![
                URL,
                AGE,
                READY,
                REASON,
                Column {
                    priority: 1,
                    ..col("Class", "string", ".metadata.annotations.eventing\\.knative\\.dev/broker\\.class")
                },
            ],
        ),
        Kind::Trigger => (
            &[],
            &["all", "knative", "eventing"],
            vec![
                col("Broker", "string", ".spec.broker"),
                col("Subscriber_URI", "string", ".status.subscriberUri"),
                AGE,
                READY,
                REASON,
            ],
        ),
        Kind::Channel => (&["ch"], &["all", "knative", "messaging", "channel"], vec![URL, AGE, READY, REASON]),
        Kind::InMemoryChannel => (&["imc"], &["all", "knative", "messaging", "channel"], vec![URL, AGE, READY, REASON]),
        Kind::NatsJetStreamChannel => {
            (&["natsjsc"], &["all", "knative", "messaging", "channel"], vec![URL, AGE, READY, REASON])
        }
        Kind::KafkaChannel => (&["kc"], &["all", "knative", "messaging", "channel"], vec![READY, REASON, URL, AGE]),
        Kind::Subscription => (&["sub"], &["all", "knative", "messaging"], vec![AGE, READY, REASON]),
        Kind::Sequence | Kind::Parallel => (&[], &["all", "knative", "flows"], vec![URL, AGE, READY, REASON]),
        Kind::Service => (
            &["kservice", "ksvc"],
            &["all", "knative", "serving"],
            vec![SVC_URL, LATEST_CREATED, LATEST_READY, READY, REASON],
        ),
        Kind::Secret | Kind::ConfigMap => (if kind == Kind::Secret { &[] } else { &["cm"] }, &[], vec![AGE]),
        Kind::Namespace => (&["ns"], &[], vec![col("Status", "string", ".status.phase"), AGE]),
        Kind::SinkBinding => (&[], &["all", "knative", "sources", "bindings"], vec![SINK, AGE, READY, REASON]),
        Kind::KafkaSink => (&[], &["all", "knative", "eventing"], vec![URL, AGE, READY, REASON]),
        Kind::EventPolicy => (&[], &["all", "knative", "eventing"], vec![READY, REASON]),
        Kind::EventType => (
            &[],
            &["all", "knative", "eventing"],
            vec![
                col("Type", "string", ".spec.attributes[?(@.name=='type')].value"),
                col("Source", "string", ".spec.attributes[?(@.name=='source')].value"),
                col("Reference Name", "string", ".spec.reference.name"),
                col("Reference Kind", "string", ".spec.reference.kind"),
                col("Description", "string", ".spec.description"),
                READY,
                REASON,
            ],
        ),
        Kind::Source(_) if kind.name() == "PingSource" => (
            &[],
            &["all", "knative", "sources"],
            vec![SINK, col("Schedule", "string", ".spec.schedule"), AGE, READY, REASON],
        ),
        Kind::Source(_) if kind.name() == "KafkaSource" => (
            &[],
            &["all", "knative", "eventing", "sources"],
            vec![
                col("Topics", "string", ".spec.topics"),
                col("BootstrapServers", "string", ".spec.bootstrapServers"),
                READY,
                REASON,
                AGE,
            ],
        ),
        Kind::Source(_) => (&[], &["all", "knative", "sources"], vec![SINK, AGE, READY, REASON]),
    };
    let mut versions = vec![kind.version()];
    versions.extend(other_versions(kind));
    Def {
        res: Res::Stored(kind),
        group: kind.group(),
        versions,
        plural: kind.plural(),
        singular: kind.name().to_ascii_lowercase(),
        kind: kind.name(),
        namespaced: kind != Kind::Namespace,
        short_names,
        categories,
        columns,
        read_only: false,
    }
}

/// Versions Knative also serves for a kind, with the same schema as Spate's.
fn other_versions(kind: Kind) -> Vec<&'static str> {
    let group = kind.group();
    let also: &[&str] = match kind {
        Kind::Source(k) => k.def().also_accepts,
        Kind::SinkBinding => &["sources.knative.dev/v1beta1"],
        // Converted on the way in and out (`convert.rs`): their spec has another shape.
        Kind::EventType => &["eventing.knative.dev/v1beta2", "eventing.knative.dev/v1beta1"],
        _ => &[],
    };
    also.iter().filter_map(|av| av.strip_prefix(group)?.strip_prefix('/')).collect()
}

fn derived(d: Derived) -> Def {
    let (short_names, columns): (&'static [&'static str], Vec<Column>) = match d {
        Derived::Revision => (
            &["rev"],
            vec![
                col("Config Name", "string", ".metadata.labels['serving\\.knative\\.dev/configuration']"),
                col("Generation", "string", ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']"),
                READY,
                REASON,
                col("Actual Replicas", "integer", ".status.actualReplicas"),
                col("Desired Replicas", "integer", ".status.desiredReplicas"),
            ],
        ),
        Derived::Configuration => (&["config", "cfg"], vec![LATEST_CREATED, LATEST_READY, READY, REASON]),
        Derived::Route => (&["rt"], vec![SVC_URL, READY, REASON]),
    };
    Def {
        res: Res::Derived(d),
        group: "serving.knative.dev",
        versions: vec!["v1"],
        plural: d.plural(),
        singular: d.name().to_ascii_lowercase(),
        kind: d.name(),
        namespaced: true,
        short_names,
        categories: &["all", "knative", "serving"],
        columns,
        read_only: true,
    }
}

/// Groups and their versions, each group's preferred version first.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = vec![];
    for d in all().into_iter().filter(|d| !d.group.is_empty()) {
        let entry = match out.iter_mut().find(|(g, _)| *g == d.group) {
            Some(e) => e,
            None => {
                out.push((d.group, vec![]));
                out.last_mut().expect("pushed")
            }
        };
        for v in d.versions {
            if !entry.1.contains(&v) {
                entry.1.push(v);
            }
        }
    }
    for (_, versions) in &mut out {
        versions.sort_by_key(|v| std::cmp::Reverse(version_rank(v)));
    }
    out
}

/// Kubernetes' version priority: GA over beta over alpha, higher numbers first.
fn version_rank(v: &str) -> (u8, u32, u32) {
    let rest = v.trim_start_matches('v');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n.parse().unwrap_or(0))
    } else {
        (2, 0)
    };
    (stage, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knative_names_columns_and_versions() {
        let b = find("eventing.knative.dev", "v1", "brokers").unwrap();
        assert_eq!(b.columns.iter().map(|c| c.name).collect::<Vec<_>>(), ["URL", "Age", "Ready", "Reason", "Class"]);
        assert_eq!(find("messaging.knative.dev", "v1", "inmemorychannels").unwrap().short_names, ["imc"]);
        assert_eq!(find("serving.knative.dev", "v1", "services").unwrap().short_names, ["kservice", "ksvc"]);
        assert!(find("sources.knative.dev", "v1beta2", "pingsources").is_some(), "PingSource v1beta2 is served");
        assert!(find("core", "v1", "secrets").is_some());
        assert!(find("eventing.knative.dev", "v2", "brokers").is_none());
        let (_, sources) = groups().into_iter().find(|(g, _)| *g == "sources.knative.dev").unwrap();
        assert_eq!(sources[0], "v1", "GA first: {sources:?}");
    }
}
