//! GitHubSource and GitLabSource (`sources.knative.dev/v1alpha1`): a receive
//! endpoint that verifies each delivery, and registration with an access token.

use serde_json::{Map, Value};

use super::{CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams, secret_ref, strings, w_has};
use crate::walk::Walker;

pub(super) static GITHUB: SourceKindDef = SourceKindDef {
    name: "GitHubSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "githubsources",
    also_accepts: &[],
    fields: &[
        "ownerAndRepository",
        "eventTypes",
        "accessToken",
        "secretToken",
        "githubAPIURL",
        "secure",
        "serviceAccountName",
    ],
    compile: github,
};

pub(super) static GITLAB: SourceKindDef = SourceKindDef {
    name: "GitLabSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "gitlabsources",
    also_accepts: &[],
    fields: &["projectUrl", "eventTypes", "accessToken", "secretToken", "sslverify", "serviceAccountName"],
    compile: gitlab,
};

impl SourceParams for WebhookSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        self.secret_token.iter().chain(&self.access_token).collect()
    }
}

/// GitHubSource or GitLabSource.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSpec {
    /// GitHub (else GitLab).
    pub github: bool,
    /// GitHub: `owner/repo` or `org`. GitLab: the project URL.
    pub target: String,
    /// GitHub event names (`push`, `pull_request`) or GitLab hook kinds (`push_events`, `issues_events`).
    pub event_types: Vec<String>,
    pub access_token: Option<SecretKeyRef>,
    pub secret_token: Option<SecretKeyRef>,
    /// GitHub: `githubAPIURL` (default `https://api.github.com`). GitLab: derived from the project URL.
    pub api_url: String,
    /// GitHub `secure` / GitLab `sslverify`.
    pub secure: bool,
}
fn webhook_common(w: &mut Walker, m: &Map<String, Value>) -> (Vec<String>, Option<SecretKeyRef>, Option<SecretKeyRef>) {
    let event_types = strings(w, m, "eventTypes", "spec", true);
    let access_token = secret_ref(w, m, "accessToken", "spec");
    let secret_token = secret_ref(w, m, "secretToken", "spec");
    if secret_token.is_none() && !w_has(m, "secretToken") {
        w.error(
            "spec.secretToken",
            "is required: deliveries are verified with it, and an unverified webhook would accept events from anyone",
        );
    }
    (event_types, access_token, secret_token)
}

fn github(w: &mut Walker, m: &Map<String, Value>, _cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let target = w.req_str(m, "ownerAndRepository", "spec");
    if let Some(t) = target {
        let parts: Vec<&str> = t.split('/').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            w.error("spec.ownerAndRepository", format!("'{t}' must be 'owner/repository' or an organization"));
        }
    }
    let (event_types, access_token, secret_token) = webhook_common(w, m);
    let api_url = w.opt_str(m, "githubAPIURL", "spec").unwrap_or("https://api.github.com").trim_end_matches('/');
    if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
        w.error("spec.githubAPIURL", format!("'{api_url}' must be an http(s) URL"));
    }
    let secure = m.get("secure").and_then(Value::as_bool).unwrap_or(false);
    Some(CompiledSource::new(WebhookSpec {
        github: true,
        target: target?.to_string(),
        event_types,
        access_token,
        secret_token,
        api_url: api_url.to_string(),
        secure,
    }))
}

fn gitlab(w: &mut Walker, m: &Map<String, Value>, _cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let target = w.req_str(m, "projectUrl", "spec");
    let mut api_url = String::new();
    if let Some(t) = target {
        match t.strip_prefix("https://").or_else(|| t.strip_prefix("http://")) {
            Some(rest) if rest.split('/').filter(|s| !s.is_empty()).count() >= 3 => {
                let host = rest.split('/').next().unwrap_or_default();
                let scheme = if t.starts_with("https") { "https" } else { "http" };
                api_url = format!("{scheme}://{host}/api/v4");
            }
            _ => w.error(
                "spec.projectUrl",
                format!("'{t}' must be a project URL such as https://gitlab.com/group/project"),
            ),
        }
    }
    let (event_types, access_token, secret_token) = webhook_common(w, m);
    let secure = m.get("sslverify").and_then(Value::as_bool).unwrap_or(true);
    Some(CompiledSource::new(WebhookSpec {
        github: false,
        target: target?.trim_end_matches('/').to_string(),
        event_types,
        access_token,
        secret_token,
        api_url,
        secure,
    }))
}
