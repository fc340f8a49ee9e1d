use std::time::Duration;

use serde_json::Value;
use spate_core::delivery::{BackoffPolicy, DeliveryFormat, RetryPolicy};
use spate_core::{Destination, KRef};

use crate::walk::{Walker, join};

/// Knative's DeliverySpec, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliverySpec {
    pub retry: Option<u32>,
    pub backoff_policy: Option<BackoffPolicy>,
    pub backoff_delay: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retry_after_max: Option<Duration>,
    pub dead_letter_sink: Option<Destination>,
    pub format: Option<DeliveryFormat>,
}

impl DeliverySpec {
    /// The retry policy this spec describes. Unset fields: no retries,
    /// exponential backoff, `default_delay` between attempts.
    pub fn retry_policy(&self, default_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            retry: self.retry.unwrap_or(0),
            backoff_policy: self.backoff_policy.unwrap_or(BackoffPolicy::Exponential),
            backoff_delay: self.backoff_delay.unwrap_or(default_delay),
            timeout: self.timeout,
            retry_after_max: self.retry_after_max,
        }
    }
}

pub fn parse(w: &mut Walker, v: &Value, path: &str, namespace: &str) -> Option<DeliverySpec> {
    let m = w.object(
        v,
        path,
        &[
            "deadLetterSink",
            "retry",
            "backoffPolicy",
            "backoffDelay",
            "timeout",
            "retryAfterMax",
            "format",
            "backoffMax",
        ],
    )?;
    let mut d = DeliverySpec {
        retry: w.opt_u32(m, "retry", path),
        backoff_delay: w.opt_duration(m, "backoffDelay", path),
        timeout: w.opt_duration(m, "timeout", path),
        retry_after_max: w.opt_duration(m, "retryAfterMax", path),
        ..DeliverySpec::default()
    };
    if d.timeout == Some(Duration::ZERO) {
        w.error(&join(path, "timeout"), "must be greater than zero");
    }
    if m.contains_key("backoffMax") {
        w.error(&join(path, "backoffMax"), "is not supported yet (Knative alpha feature)");
    }
    d.backoff_policy = match w.opt_str(m, "backoffPolicy", path) {
        None => None,
        Some("linear") => Some(BackoffPolicy::Linear),
        Some("exponential") => Some(BackoffPolicy::Exponential),
        Some(other) => {
            w.error(&join(path, "backoffPolicy"), format!("'{other}' is not one of linear, exponential"));
            None
        }
    };
    d.format = match w.opt_str(m, "format", path) {
        None => None,
        Some("binary") => Some(DeliveryFormat::Binary),
        Some("json") => Some(DeliveryFormat::Json),
        Some(other) => {
            w.error(&join(path, "format"), format!("'{other}' is not one of binary, json"));
            None
        }
    };
    if let Some(dls) = m.get("deadLetterSink") {
        d.dead_letter_sink = destination(w, dls, &join(path, "deadLetterSink"), namespace);
    }
    Some(d)
}

/// A Destination: `ref`, `uri`, or both (relative `uri` resolved against the ref).
pub fn destination(w: &mut Walker, v: &Value, path: &str, namespace: &str) -> Option<Destination> {
    let m = w.object(v, path, &["ref", "uri", "CACerts", "audience"])?;
    let uri = w.opt_str(m, "uri", path).map(str::to_string);
    if let Some(pem) = w.opt_str(m, "CACerts", path)
        && let Err(e) = check_pem_certificates(pem)
    {
        w.error(&join(path, "CACerts"), e);
    }
    let kref = match m.get("ref") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let rp = join(path, "ref");
            let rm = w.object(r, &rp, &["apiVersion", "kind", "name", "namespace", "group"])?;
            let kind = w.req_str(rm, "kind", &rp);
            let name = w.req_str(rm, "name", &rp);
            let api_version = w.req_str(rm, "apiVersion", &rp);
            let ns = w.opt_str(rm, "namespace", &rp).unwrap_or(namespace);
            match (kind, name, api_version) {
                (Some(kind), Some(name), Some(api_version)) => Some(KRef {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    namespace: ns.to_string(),
                }),
                _ => None,
            }
        }
    };
    match (&kref, &uri) {
        (None, None) => {
            w.error(path, "needs either ref or uri");
            None
        }
        (None, Some(u)) => {
            if spate_core::rules::check_absolute_uri("uri", u).is_err()
                || !(u.starts_with("http://") || u.starts_with("https://"))
            {
                w.error(
                    &join(path, "uri"),
                    format!("'{u}' must be an absolute http:// or https:// URL (or relative, together with ref)"),
                );
            }
            Some(Destination { kref, uri })
        }
        _ => Some(Destination { kref, uri }),
    }
}

/// Largest `CACerts` bundle accepted.
const MAX_CA_BYTES: usize = 1024 * 1024;

/// `CACerts` (Knative: PEM-encoded CA certificates trusted for this destination,
/// besides the system's roots): one or more well-formed CERTIFICATE blocks.
pub fn check_pem_certificates(pem: &str) -> Result<(), String> {
    use base64::Engine;
    if pem.len() > MAX_CA_BYTES {
        return Err(format!("is {} bytes; at most {MAX_CA_BYTES}", pem.len()));
    }
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = pem;
    let mut n = 0;
    while let Some(start) = rest.find(BEGIN) {
        let body_start = start + BEGIN.len();
        let Some(len) = rest[body_start..].find(END) else {
            return Err(format!("certificate {} has no '{END}' line", n + 1));
        };
        let body: String = rest[body_start..body_start + len].chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if body.is_empty() || base64::engine::general_purpose::STANDARD.decode(&body).is_err() {
            return Err(format!("certificate {} is not valid base64 PEM", n + 1));
        }
        n += 1;
        rest = &rest[body_start + len + END.len()..];
    }
    if n == 0 {
        return Err(format!("holds no PEM certificate (expected '{BEGIN}' blocks)"));
    }
    Ok(())
}

/// Every `https://` destination of a manifest that names `CACerts`, as
/// (`host:port`, PEM): what the dispatcher trusts for that authority besides
/// the system roots. Found wherever a destination appears (subscriber, reply,
/// dead-letter sink, sink, Sequence steps, Parallel branches).
pub fn trusted_cas(manifest: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, depth: usize, out: &mut Vec<(String, String)>) {
        if depth > 64 {
            return;
        }
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(uri)), Some(Value::String(pem))) = (m.get("uri"), m.get("CACerts"))
                    && let Some(authority) = spate_core::destination::https_authority(uri)
                {
                    out.push((authority, pem.clone()));
                }
                for x in m.values() {
                    walk(x, depth + 1, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, depth + 1, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    if let Some(spec) = manifest.get("spec") {
        walk(spec, 0, &mut out);
    }
    out
}
