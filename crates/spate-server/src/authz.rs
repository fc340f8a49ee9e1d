//! Who may send to which addressable, as Knative's EventPolicy defines it.
//! Pure over a snapshot the control plane rebuilds at each reconcile
//! ([`AuthState`]): every addressable's identities (its own kind and name, and
//! for a flow's ingress channel the flow's too) with their labels, and every
//! EventPolicy with its resolved subjects. An addressable no policy names
//! falls back to `--authorization-mode`.

use std::collections::{BTreeMap, HashMap};

use spate_api::event_policy::{EventPolicyConfig, PolicySender, PolicyTarget, subject, subject_allowed};
use spate_core::CloudEvent;
use spate_filter::Filter;

/// Knative's `default-authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    AllowAll,
    AllowSameNamespace,
    DenyAll,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "allow-all" => Ok(Mode::AllowAll),
            "allow-same-namespace" => Ok(Mode::AllowSameNamespace),
            "deny-all" => Ok(Mode::DenyAll),
            other => Err(format!("--authorization-mode '{other}': use allow-all, allow-same-namespace or deny-all")),
        }
    }
}

/// One name an addressable answers to in policies: `group`, lower-case `kind`, `name`, labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A policy ready to apply.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub to: Vec<PolicyTarget>,
    /// Resolved subjects (`status.from`).
    pub subjects: Vec<String>,
    pub filter: Option<Filter>,
}

impl Policy {
    pub fn resolve(p: &EventPolicyConfig) -> Policy {
        let subjects = p
            .from
            .iter()
            .map(|f| match f {
                PolicySender::Sub(s) => s.clone(),
                PolicySender::Ref { api_version, kind, name, namespace } => {
                    let group = api_version.split_once('/').map_or("", |(g, _)| g);
                    subject(namespace, name, group, kind)
                }
            })
            .collect();
        Policy { name: p.name.clone(), to: p.to.clone(), subjects, filter: p.filter.clone() }
    }

    fn applies_to(&self, ids: &[Identity]) -> bool {
        self.to.is_empty()
            || self.to.iter().any(|t| {
                ids.iter().any(|id| match t {
                    PolicyTarget::Ref { group, kind, name } => {
                        group.eq_ignore_ascii_case(&id.group) && *kind == id.kind && name.eq_ignore_ascii_case(&id.name)
                    }
                    PolicyTarget::Selector { group, kind, match_labels } => {
                        group.eq_ignore_ascii_case(&id.group)
                            && *kind == id.kind
                            && match_labels.iter().all(|(k, v)| id.labels.get(k) == Some(v))
                    }
                })
            })
    }
}

/// The snapshot: policies per namespace, and the default mode.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub mode: Mode,
    pub policies: HashMap<String, Vec<Policy>>,
}

/// Why a sender is refused (403).
#[derive(Debug, PartialEq, Eq)]
pub struct Forbidden(pub String);

impl AuthState {
    pub fn new(mode: Mode) -> AuthState {
        AuthState { mode, policies: HashMap::new() }
    }

    /// The policies of `namespace` that apply to an addressable with `ids`.
    pub fn applying<'a>(&'a self, namespace: &str, ids: &'a [Identity]) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.get(namespace).into_iter().flatten().filter(move |p| p.applies_to(ids))
    }

    /// Whether `sub` may send `events` to the addressable `ids` in `namespace`.
    pub fn authorize(
        &self,
        namespace: &str,
        ids: &[Identity],
        sub: &str,
        events: &[CloudEvent],
    ) -> Result<(), Forbidden> {
        let policies: Vec<&Policy> = self.applying(namespace, ids).collect();
        if policies.is_empty() {
            let same = format!("system:serviceaccount:{namespace}:");
            return match self.mode {
                Mode::AllowAll => Ok(()),
                Mode::AllowSameNamespace if sub.starts_with(&same) => Ok(()),
                Mode::AllowSameNamespace => Err(Forbidden(format!(
                    "no EventPolicy names this addressable and '{sub}' is not in namespace {namespace} (allow-same-namespace)"
                ))),
                Mode::DenyAll => Err(Forbidden("no EventPolicy allows senders here (deny-all)".into())),
            };
        }
        let allowed = |ev: &CloudEvent| {
            policies
                .iter()
                .any(|p| subject_allowed(sub, &p.subjects) && p.filter.as_ref().is_none_or(|f| f.matches_guarded(ev)))
        };
        match events.iter().find(|ev| !allowed(ev)) {
            None => Ok(()),
            Some(ev) => Err(Forbidden(format!("no EventPolicy allows '{sub}' to send event {} here", ev.id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, name: &str) -> Vec<Identity> {
        vec![Identity {
            group: "eventing.knative.dev".into(),
            kind: kind.into(),
            name: name.into(),
            labels: [("app".to_string(), "shop".to_string())].into(),
        }]
    }

    fn policy(to: Vec<PolicyTarget>, subjects: &[&str], filter: Option<Filter>) -> Policy {
        Policy { name: "p".into(), to, subjects: subjects.iter().map(|s| s.to_string()).collect(), filter }
    }

    #[test]
    fn modes_apply_where_no_policy_names_the_addressable() {
        let ev = [CloudEvent::new("1", "/s", "t")];
        let ids = id("broker", "b");
        let mine = "system:serviceaccount:ns:app";
        let other = "system:serviceaccount:other:app";
        assert!(AuthState::new(Mode::AllowAll).authorize("ns", &ids, other, &ev).is_ok());
        assert!(AuthState::new(Mode::AllowSameNamespace).authorize("ns", &ids, mine, &ev).is_ok());
        assert!(AuthState::new(Mode::AllowSameNamespace).authorize("ns", &ids, other, &ev).is_err());
        assert!(AuthState::new(Mode::DenyAll).authorize("ns", &ids, mine, &ev).is_err());
    }

    #[test]
    fn policies_match_targets_subjects_globs_and_filters() {
        let mut st = AuthState::new(Mode::AllowAll);
        let by_ref =
            PolicyTarget::Ref { group: "eventing.knative.dev".into(), kind: "broker".into(), name: "b".into() };
        let filter = Some(spate_filter::Filter::cesql("type = 'order'").unwrap());
        st.policies.insert("ns".into(), vec![policy(vec![by_ref], &["system:serviceaccount:ns:shop-*"], filter)]);
        let order = [CloudEvent::new("1", "/s", "order")];
        let other_type = [CloudEvent::new("2", "/s", "refund")];
        assert!(st.authorize("ns", &id("broker", "b"), "system:serviceaccount:ns:shop-api", &order).is_ok());
        assert!(st.authorize("ns", &id("broker", "b"), "system:serviceaccount:ns:shop-api", &other_type).is_err());
        assert!(st.authorize("ns", &id("broker", "b"), "system:serviceaccount:ns:billing", &order).is_err());
        // Another broker is not named by the policy: the mode (allow-all) applies.
        assert!(st.authorize("ns", &id("broker", "c"), "system:serviceaccount:x:y", &order).is_ok());
        let by_label = PolicyTarget::Selector {
            group: "eventing.knative.dev".into(),
            kind: "broker".into(),
            match_labels: [("app".to_string(), "shop".to_string())].into(),
        };
        st.policies.insert("ns".into(), vec![policy(vec![by_label], &["system:serviceaccount:ns:exact"], None)]);
        assert!(st.authorize("ns", &id("broker", "c"), "system:serviceaccount:ns:exact", &order).is_ok());
        assert!(st.authorize("ns", &id("broker", "c"), "system:serviceaccount:ns:exactly", &order).is_err());
    }
}
