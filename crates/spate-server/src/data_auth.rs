//! Sender identity and authorization on the data plane: the OIDC verifier,
//! the snapshot of audiences and policies the control plane rebuilds at each
//! reconcile, the check every addressable's handler makes (401, 403), and the
//! tokens Spate's own deliveries carry to its own addressables.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use spate_core::CloudEvent;

use crate::authz::{AuthState, Identity};
use crate::oidc::{Oidc, Unauthenticated};

/// The kinds of addressable paths the data plane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `/<ns>/<name>`
    Broker,
    /// `/channels/<ns>/<name>` (user channels and flows' channels)
    Channel,
    /// `/kafkasinks/<ns>/<name>`
    KafkaSink,
}

/// What one addressable path requires: its audience and the names policies may use for it.
#[derive(Debug, Clone)]
pub struct Addressable {
    pub audience: String,
    pub ids: Vec<Identity>,
}

/// Rebuilt at each reconcile.
pub struct Snapshot {
    pub auth: AuthState,
    pub addressables: HashMap<(Target, String, String), Addressable>,
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
}

pub struct DataAuth {
    oidc: Oidc,
    /// The data plane's own base URL: deliveries under it carry Spate's tokens.
    base_url: String,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl DataAuth {
    pub fn new(oidc: Oidc, base_url: String, auth: AuthState) -> DataAuth {
        let empty = Snapshot { auth, addressables: HashMap::new() };
        DataAuth { oidc, base_url: base_url.trim_end_matches('/').to_string(), snapshot: RwLock::new(Arc::new(empty)) }
    }

    pub fn set(&self, snapshot: Snapshot) {
        *self.snapshot.write().expect("auth snapshot") = Arc::new(snapshot);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("auth snapshot").clone()
    }

    /// The token's subject must be allowed to send `events` to the addressable.
    pub fn check(
        &self,
        target: Target,
        namespace: &str,
        name: &str,
        authorization: Option<&str>,
        events: &[CloudEvent],
    ) -> Result<(), Refusal> {
        let snap = self.snapshot();
        let Some(a) = snap.addressables.get(&(target, namespace.to_string(), name.to_string())) else {
            return Err(Refusal::Unauthenticated(format!("{namespace}/{name} has no audience yet; retry shortly")));
        };
        let sub = self.oidc.verify(authorization, &a.audience).map_err(|e| match e {
            Unauthenticated::Missing => Refusal::Unauthenticated(format!("{e}; audience {}", a.audience)),
            Unauthenticated::Invalid(_) => Refusal::Unauthenticated(e.to_string()),
        })?;
        snap.auth.authorize(namespace, &a.ids, &sub, events).map_err(|f| Refusal::Forbidden(f.0))
    }

    /// A built-in helper (`/_spate/fn/<name>`, `/_spate/display/<label>`):
    /// any valid token for its audience ([`helper_audience`]) may call it.
    /// With OIDC on, nothing on the data plane answers an anonymous sender.
    pub fn check_helper(&self, kind: &str, name: &str, authorization: Option<&str>) -> Result<(), Refusal> {
        let audience = helper_audience(kind, name);
        self.oidc.verify(authorization, &audience).map(|_| ()).map_err(|e| match e {
            Unauthenticated::Missing => Refusal::Unauthenticated(format!("{e}; audience {audience}")),
            Unauthenticated::Invalid(_) => Refusal::Unauthenticated(e.to_string()),
        })
    }

    /// The audience of a URL of this data plane: an addressable's, or a helper's.
    fn audience_of(&self, url: &str) -> Option<String> {
        let path = url.strip_prefix(&self.base_url)?;
        let path = path.split(['?', '#']).next().unwrap_or("");
        if let Some((kind, name)) = helper_of(path) {
            return Some(helper_audience(kind, name));
        }
        let key = self.target_of(url)?;
        Some(self.snapshot().addressables.get(&key)?.audience.clone())
    }

    /// The addressable a URL of this data plane names.
    fn target_of(&self, url: &str) -> Option<(Target, String, String)> {
        let path = url.strip_prefix(&self.base_url)?;
        let path = path.split(['?', '#']).next().unwrap_or("");
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["channels", ns, name] => Some((Target::Channel, ns.to_string(), name.to_string())),
            ["kafkasinks", ns, name] => Some((Target::KafkaSink, ns.to_string(), name.to_string())),
            [ns, name] if !ns.starts_with('_') && *ns != "services" => {
                Some((Target::Broker, ns.to_string(), name.to_string()))
            }
            _ => None,
        }
    }
}

/// The helper a data-plane path names: `("fn", name)` or `("display", label)`.
pub fn helper_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.trim_start_matches('/').strip_prefix("_spate/")?;
    let (kind, name) = rest.split_once('/')?;
    (matches!(kind, "fn" | "display") && !name.is_empty() && !name.contains('/')).then_some((kind, name))
}

/// A helper's audience, in Knative's `group/kind/namespace/name` form.
pub fn helper_audience(kind: &str, name: &str) -> String {
    spate_api::event_policy::audience("spate.dev", if kind == "fn" { "function" } else { "display" }, "_spate", name)
}

/// Knative's subject for a sender label (`trigger/<ns>/<name>`, `pingsources/<ns>/<name>`, …).
pub fn sender_subject(label: &str) -> Option<String> {
    let label = label.split('#').next().unwrap_or(label);
    let mut parts = label.splitn(3, '/');
    let (kind, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
    let kind = spate_api::Kind::from_cli(kind)?;
    Some(spate_api::event_policy::subject(ns, name, kind.group(), &kind.name().to_ascii_lowercase()))
}

impl spate_delivery::TokenSource for DataAuth {
    fn token(&self, sender: &str, url: &str) -> Option<String> {
        let audience = self.audience_of(url)?;
        self.oidc.issue(&sender_subject(sender)?, &audience)
    }
}

/// The audiences, identities and policies of every stored resource.
pub fn build_snapshot<'a>(
    entries: impl Iterator<Item = &'a crate::store::Entry>,
    mode: crate::authz::Mode,
) -> Snapshot {
    use spate_api::event_policy::{PolicyTarget, audience};
    use spate_api::{ChannelStorage, Compiled, Kind};

    use crate::authz::Policy;

    let mut auth = AuthState::new(mode);
    let mut addressables = HashMap::new();
    let channel_kind =
        |s: ChannelStorage| if s == ChannelStorage::Nats { "natsjetstreamchannel" } else { "inmemorychannel" };
    for e in entries {
        let (ns, name) = (e.resource.namespace.clone(), e.resource.name.clone());
        let labels: std::collections::BTreeMap<String, String> = e.resource.labels.iter().cloned().collect();
        let id = |group: &str, kind: &str, name: &str| Identity {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
            labels: labels.clone(),
        };
        let mut add = |target: Target, chan: String, group: &str, kind: &str, extra: Option<Identity>| {
            let mut ids = vec![id(group, kind, &chan)];
            ids.extend(extra);
            let a = Addressable { audience: audience(group, kind, &ns, &chan), ids };
            addressables.insert((target, ns.clone(), chan), a);
        };
        // A flow's inner channels take events only from the flow's own subscriptions.
        let mut internal = |chan: String, kind: &str, flow: &str| {
            auth.policies.entry(ns.clone()).or_default().push(Policy {
                name: format!("{flow} (inner channel {chan})"),
                to: vec![PolicyTarget::Ref { group: "messaging.knative.dev".into(), kind: kind.into(), name: chan }],
                subjects: vec![format!("system:serviceaccount:{ns}:{flow}-kn-*")],
                filter: None,
            });
        };
        match &e.compiled {
            Compiled::Broker(_) => add(Target::Broker, name, "eventing.knative.dev", "broker", None),
            Compiled::KafkaSink(_) => add(Target::KafkaSink, name, "eventing.knative.dev", "kafkasink", None),
            Compiled::Channel(_) => {
                let kind = e.resource.kind.name().to_ascii_lowercase();
                add(Target::Channel, name, "messaging.knative.dev", &kind, None)
            }
            Compiled::Sequence(s) => {
                let (ingress, inner) = spate_eventing::flow_channels(Kind::Sequence, &name, s.steps.len());
                let (kind, flow) = (channel_kind(s.storage), Some(id("flows.knative.dev", "sequence", &name)));
                add(Target::Channel, ingress, "messaging.knative.dev", kind, flow);
                for chan in inner {
                    add(Target::Channel, chan.clone(), "messaging.knative.dev", kind, None);
                    internal(chan, kind, &name);
                }
            }
            Compiled::Parallel(p) => {
                let (ingress, inner) = spate_eventing::flow_channels(Kind::Parallel, &name, p.branches.len());
                let (kind, flow) = (channel_kind(p.storage), Some(id("flows.knative.dev", "parallel", &name)));
                add(Target::Channel, ingress, "messaging.knative.dev", kind, flow);
                for chan in inner {
                    add(Target::Channel, chan.clone(), "messaging.knative.dev", kind, None);
                    internal(chan, kind, &name);
                }
            }
            Compiled::EventPolicy(p) => auth.policies.entry(ns).or_default().push(Policy::resolve(p)),
            _ => {}
        }
    }
    Snapshot { auth, addressables }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_labels_map_to_knative_subjects() {
        assert_eq!(
            sender_subject("trigger/default/t1").as_deref(),
            Some("system:serviceaccount:default:t1-oidc-eventing.knative.dev-trigger")
        );
        assert_eq!(
            sender_subject("pingsources/prod/tick").as_deref(),
            Some("system:serviceaccount:prod:tick-oidc-sources.knative.dev-pingsource")
        );
        assert_eq!(
            sender_subject("kafkasources/a/k#2").as_deref(),
            Some("system:serviceaccount:a:k-oidc-sources.knative.dev-kafkasource")
        );
        assert_eq!(sender_subject("nonsense"), None);
    }

    #[test]
    fn helper_paths_and_audiences() {
        assert_eq!(helper_of("/_spate/fn/filter"), Some(("fn", "filter")));
        assert_eq!(helper_of("/_spate/display/x"), Some(("display", "x")));
        assert_eq!(helper_of("/_spate/other/x"), None);
        assert_eq!(helper_of("/default/broker"), None);
        assert_eq!(helper_audience("fn", "filter"), "spate.dev/function/_spate/filter");
    }
}
