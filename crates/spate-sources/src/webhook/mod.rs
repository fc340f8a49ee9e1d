//! GitHubSource and GitLabSource: a receive endpoint on the data plane that
//! verifies each delivery (GitHub: `X-Hub-Signature-256`, an HMAC-SHA256 of
//! the body with `secretToken`; GitLab: `X-Gitlab-Token`), maps it to a
//! CloudEvent and answers only once the sink (or the dead-letter sink) took
//! it, so the sender redelivers what Spate could not pass on. With an
//! `accessToken`, the webhook is registered through the provider's API.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde_json::{Value, json};
use sha2::Sha256;
use spate_api::WebhookSpec;
use spate_core::CloudEvent;
use spate_delivery::Outcome;

use crate::emit::{Emitter, uuid};

mod registrar;
pub(crate) use registrar::{Hooks, Registered, load_registrations, start};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
}

/// Why a delivery was refused; the data plane maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// 401: bad or missing signature or token. Nothing is emitted.
    #[error("{0}")]
    Unauthorized(String),
    /// 400: not a delivery this source understands.
    #[error("{0}")]
    BadRequest(String),
    /// 502: neither the sink nor a dead-letter sink accepted the event; the sender should redeliver.
    #[error("the event could not be delivered: {0}")]
    Undelivered(String),
    /// 404: no such source.
    #[error("{0} not found")]
    NotFound(String),
}

/// What happened to an accepted delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Emitted {
        id: String,
        ty: String,
    },
    /// A verified delivery of an event type the source does not subscribe to (or GitHub's ping).
    Ignored {
        event: String,
    },
    /// A delivery id already emitted (a provider's redelivery): not emitted twice.
    Duplicate {
        id: String,
    },
}

/// The delivery ids a webhook emitted recently: a redelivery of one of them
/// (GitHub's "Redeliver", a retry after a lost answer) is not emitted again.
/// Bounded: the oldest ids are forgotten first.
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

/// How many delivery ids each webhook remembers.
pub(crate) const RECENT_IDS: usize = 10_000;

impl RecentIds {
    /// Claims `id`; false if it is already claimed (emitted or in progress).
    fn claim(&mut self, id: &str) -> bool {
        if !self.set.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Gives a claim back (the emission failed: the provider's retry must get through).
    fn release(&mut self, id: &str) {
        if self.set.remove(id)
            && let Some(i) = self.order.iter().rposition(|x| x == id)
        {
            self.order.remove(i);
        }
    }
}

pub(crate) struct Webhook {
    pub provider: Provider,
    pub spec: WebhookSpec,
    pub secret_token: Vec<u8>,
    pub emitter: Arc<Emitter>,
    pub recent: std::sync::Mutex<RecentIds>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>` in constant time.
pub fn verify_github_signature(secret: &[u8], body: &[u8], signature: Option<&str>) -> Result<(), String> {
    let sig = signature.ok_or("missing X-Hub-Signature-256 header")?;
    let hex = sig.strip_prefix("sha256=").ok_or("X-Hub-Signature-256 must start with sha256=")?;
    let bytes = hex_decode(hex).ok_or("X-Hub-Signature-256 is not hexadecimal")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(body);
    mac.verify_slice(&bytes).map_err(|_| "X-Hub-Signature-256 does not match the body and secretToken".to_string())
}

/// Constant-time equality for tokens.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// GitLab's `X-Gitlab-Event` header → (the spec's `eventTypes` name, the CloudEvent type suffix).
fn gitlab_event(header: &str) -> Option<(&'static str, &'static str)> {
    Some(match header {
        "Push Hook" => ("push_events", "push"),
        "Tag Push Hook" => ("tag_push_events", "tag_push"),
        "Issue Hook" => ("issues_events", "issue"),
        "Confidential Issue Hook" => ("confidential_issues_events", "confidential_issue"),
        "Note Hook" | "Confidential Note Hook" => ("note_events", "note"),
        "Merge Request Hook" => ("merge_requests_events", "merge_request"),
        "Wiki Page Hook" => ("wiki_page_events", "wiki_page"),
        "Pipeline Hook" => ("pipeline_events", "pipeline"),
        "Job Hook" => ("job_events", "build"),
        "Deployment Hook" => ("deployment_events", "deployment"),
        "Release Hook" => ("releases_events", "release"),
        _ => return None,
    })
}

impl Webhook {
    pub(crate) fn source_attr(&self) -> String {
        match self.provider {
            Provider::GitHub => format!("https://github.com/{}", self.spec.target),
            Provider::GitLab => self.spec.target.clone(),
        }
    }

    /// Verifies and maps a delivery. Nothing is emitted unless verification passed.
    pub(crate) fn to_event(&self, headers: &HeaderMap, body: &Bytes) -> Result<Option<CloudEvent>, WebhookError> {
        let (ty, id, event) = match self.provider {
            Provider::GitHub => {
                verify_github_signature(&self.secret_token, body, header(headers, "x-hub-signature-256"))
                    .map_err(WebhookError::Unauthorized)?;
                let event = header(headers, "x-github-event")
                    .ok_or_else(|| WebhookError::BadRequest("missing X-GitHub-Event header".into()))?;
                if !self.spec.event_types.iter().any(|t| t == event) {
                    return Ok(None);
                }
                let id = header(headers, "x-github-delivery").map(str::to_string).unwrap_or_else(uuid);
                (format!("dev.knative.source.github.{event}"), id, event)
            }
            Provider::GitLab => {
                let token = header(headers, "x-gitlab-token")
                    .ok_or_else(|| WebhookError::Unauthorized("missing X-Gitlab-Token header".into()))?;
                if !same(token.as_bytes(), &self.secret_token) {
                    return Err(WebhookError::Unauthorized("X-Gitlab-Token does not match secretToken".into()));
                }
                let hook = header(headers, "x-gitlab-event")
                    .ok_or_else(|| WebhookError::BadRequest("missing X-Gitlab-Event header".into()))?;
                let (spec_name, suffix) = gitlab_event(hook)
                    .ok_or_else(|| WebhookError::BadRequest(format!("unknown X-Gitlab-Event '{hook}'")))?;
                if !self.spec.event_types.iter().any(|t| t == spec_name) {
                    return Ok(None);
                }
                let id = header(headers, "x-gitlab-event-uuid").map(str::to_string).unwrap_or_else(uuid);
                (format!("dev.knative.sources.gitlab.{suffix}"), id, suffix)
            }
        };
        let payload: Value = serde_json::from_slice(body)
            .map_err(|e| WebhookError::BadRequest(format!("the {event} payload is not JSON: {e}")))?;
        let mut ev = CloudEvent::new(id, self.source_attr(), ty);
        ev.time = Some(crate::emit::now_rfc3339());
        ev.datacontenttype = Some("application/json".into());
        ev.subject = subject(self.provider, &payload);
        ev.data = Some(body.clone());
        ev.validate().map_err(|e| WebhookError::BadRequest(e.to_string()))?;
        Ok(Some(ev))
    }

    pub(crate) async fn receive(&self, headers: &HeaderMap, body: Bytes) -> Result<Received, WebhookError> {
        let Some(ev) = self.to_event(headers, &body)? else {
            let event = header(headers, "x-github-event").or_else(|| header(headers, "x-gitlab-event")).unwrap_or("");
            return Ok(Received::Ignored { event: event.to_string() });
        };
        let (id, ty) = (ev.id.clone(), ev.ty.clone());
        if !self.recent.lock().expect("recent ids").claim(&id) {
            return Ok(Received::Duplicate { id });
        }
        match self.emitter.emit(ev).await {
            Outcome::Delivered { .. } | Outcome::DeadLettered { .. } => Ok(Received::Emitted { id, ty }),
            Outcome::Dropped { reason, .. } => {
                self.recent.lock().expect("recent ids").release(&id);
                Err(WebhookError::Undelivered(reason))
            }
        }
    }
}

/// A short subject naming what the delivery is about, where the payload says.
fn subject(provider: Provider, p: &Value) -> Option<String> {
    let s = |ptr: &str| p.pointer(ptr).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
    match provider {
        Provider::GitHub => s("/pull_request/number").or_else(|| s("/issue/number")).or_else(|| s("/after")),
        Provider::GitLab => s("/object_attributes/iid").or_else(|| s("/checkout_sha")),
    }
    .filter(|v| !v.is_empty() && v != "null")
}

/// The webhook as registered with the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    pub hooks_url: String,
}

/// Registers `url` as a webhook for the source's events. Returns the hook's id.
pub(crate) async fn register(
    client: &reqwest::Client,
    provider: Provider,
    spec: &WebhookSpec,
    access_token: &str,
    secret_token: &str,
    url: &str,
) -> Result<Registration, String> {
    let (hooks_url, req) = match provider {
        Provider::GitHub => {
            let path = if spec.target.contains('/') {
                format!("repos/{}", spec.target)
            } else {
                format!("orgs/{}", spec.target)
            };
            let hooks = format!("{}/{path}/hooks", spec.api_url);
            let body = json!({
                "name": "web",
                "active": true,
                "events": spec.event_types,
                "config": {"url": url, "content_type": "json", "secret": secret_token,
                           "insecure_ssl": if spec.secure { "0" } else { "1" }},
            });
            let req = client
                .post(&hooks)
                .header("authorization", format!("Bearer {access_token}"))
                .header("accept", "application/vnd.github+json")
                .header("user-agent", "spate")
                .json(&body);
            (hooks, req)
        }
        Provider::GitLab => {
            let project = spec.target.splitn(4, '/').nth(3).unwrap_or_default();
            let encoded: String = project.replace('%', "%25").replace('/', "%2F");
            let hooks = format!("{}/projects/{encoded}/hooks", spec.api_url);
            let mut body = json!({"url": url, "token": secret_token, "enable_ssl_verification": spec.secure});
            for t in &spec.event_types {
                body[t] = json!(true);
            }
            // GitLab subscribes to push events unless told otherwise.
            if !spec.event_types.iter().any(|t| t == "push_events") {
                body["push_events"] = json!(false);
            }
            let req = client.post(&hooks).header("private-token", access_token).json(&body);
            (hooks, req)
        }
    };
    let resp = req.send().await.map_err(|e| format!("POST {hooks_url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("POST {hooks_url}: HTTP {status}: {}", text.chars().take(300).collect::<String>()));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("POST {hooks_url}: answer is not JSON: {e}"))?;
    let id = v.get("id").map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()));
    match id {
        Some(id) if id != "null" => Ok(Registration { id, hooks_url }),
        _ => Err(format!("POST {hooks_url}: the answer has no hook id")),
    }
}

/// Removes a webhook registered earlier.
pub(crate) async fn unregister(
    client: &reqwest::Client,
    provider: Provider,
    reg: &Registration,
    access_token: &str,
) -> Result<(), String> {
    let url = format!("{}/{}", reg.hooks_url, reg.id);
    let req = match provider {
        Provider::GitHub => client
            .delete(&url)
            .header("authorization", format!("Bearer {access_token}"))
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "spate"),
        Provider::GitLab => client.delete(&url).header("private-token", access_token),
    };
    let resp = req.send().await.map_err(|e| format!("DELETE {url}: {e}"))?;
    if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(format!("DELETE {url}: HTTP {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    #[test]
    fn github_signatures_are_checked() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = sign(b"s3cret", body);
        assert!(verify_github_signature(b"s3cret", body, Some(&good)).is_ok());
        assert!(verify_github_signature(b"other", body, Some(&good)).is_err());
        assert!(verify_github_signature(b"s3cret", b"{}", Some(&good)).is_err());
        assert!(verify_github_signature(b"s3cret", body, None).unwrap_err().contains("missing"));
        assert!(verify_github_signature(b"s3cret", body, Some("sha1=00")).is_err());
        assert!(verify_github_signature(b"s3cret", body, Some("sha256=zz")).is_err());
    }

    #[test]
    fn gitlab_hooks_map_to_knative_types() {
        assert_eq!(gitlab_event("Push Hook"), Some(("push_events", "push")));
        assert_eq!(gitlab_event("Merge Request Hook"), Some(("merge_requests_events", "merge_request")));
        assert_eq!(gitlab_event("Nope"), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
