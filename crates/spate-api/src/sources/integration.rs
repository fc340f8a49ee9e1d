//! IntegrationSource (`sources.knative.dev/v1alpha1`): Knative's Kamelet-backed
//! source, of which Spate runs `timer`, `aws.s3` and `aws.sqs` natively.

use serde_json::{Map, Value};

use super::{CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams};
use crate::walk::{Walker, join};

pub(super) static INTEGRATION: SourceKindDef = SourceKindDef {
    name: "IntegrationSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "integrationsources",
    also_accepts: &[],
    fields: &["timer", "aws", "template"],
    compile,
};

#[derive(Debug, Clone, PartialEq)]
pub enum IntegrationSpec {
    Timer(TimerSpec),
    S3(S3Spec),
    Sqs(SqsSpec),
}

/// `spec.timer`: an event every `period` milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerSpec {
    pub period_ms: u64,
    pub message: String,
    pub content_type: String,
    /// Stop after this many events (`None`: never).
    pub repeat_count: Option<u64>,
}

/// `spec.aws.auth.secret.ref.name`: a Secret with `aws.accessKey` and `aws.secretKey`.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsAuth {
    pub access_key: SecretKeyRef,
    pub secret_key: SecretKeyRef,
}

/// What S3 and SQS share: where the service is and how to sign.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsCommon {
    pub region: String,
    /// `uriEndpointOverride` when `overrideEndpoint` is true (an S3-compatible server).
    pub endpoint: Option<String>,
    pub auth: Option<AwsAuth>,
    pub delete_after_read: bool,
    /// Milliseconds between polls (`delay`, default 500).
    pub delay_ms: u64,
    pub max_messages_per_poll: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Spec {
    pub common: AwsCommon,
    pub bucket: String,
    pub prefix: Option<String>,
    pub move_after_read: bool,
    pub destination_bucket: Option<String>,
    pub destination_bucket_prefix: String,
    pub destination_bucket_suffix: String,
    pub force_path_style: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqsSpec {
    pub common: AwsCommon,
    pub queue: String,
    /// `queueURL`: used as given instead of building it from the endpoint and the queue name.
    pub queue_url: Option<String>,
    pub wait_time_seconds: u32,
    pub visibility_timeout: Option<u32>,
}

impl SourceParams for IntegrationSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let auth = match self {
            IntegrationSpec::Timer(_) => None,
            IntegrationSpec::S3(s) => s.common.auth.as_ref(),
            IntegrationSpec::Sqs(s) => s.common.auth.as_ref(),
        };
        auth.map(|a| vec![&a.access_key, &a.secret_key]).unwrap_or_default()
    }
}

impl IntegrationSpec {
    /// Knative's `type`, `source` and `subject` for this connector.
    pub fn event_identity(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            IntegrationSpec::Timer(_) => {
                ("dev.knative.eventing.timer", "dev.knative.eventing.timer-source", "timer-source")
            }
            IntegrationSpec::S3(_) => {
                ("dev.knative.eventing.aws-s3", "dev.knative.eventing.aws-s3-source", "aws-s3-source")
            }
            IntegrationSpec::Sqs(_) => {
                ("dev.knative.eventing.aws-sqs", "dev.knative.eventing.aws-sqs-source", "aws-sqs-source")
            }
        }
    }
}

fn compile(w: &mut Walker, m: &Map<String, Value>, _cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let timer = m.get("timer").filter(|v| !v.is_null());
    let aws = m.get("aws").filter(|v| !v.is_null());
    if m.get("template").is_some_and(|v| !v.is_null()) {
        w.error("spec.template", "a Camel pod template has no counterpart in Spate; use timer or aws");
    }
    match (timer, aws) {
        (Some(t), None) => timer_spec(w, t).map(|t| CompiledSource::new(IntegrationSpec::Timer(t))),
        (None, Some(a)) => aws_spec(w, a).map(CompiledSource::new),
        (Some(_), Some(_)) => {
            w.error("spec", "give one of timer or aws, not both");
            None
        }
        (None, None) => {
            w.error("spec", "needs one of timer or aws (s3 or sqs)");
            None
        }
    }
}

fn opt_u64(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
    match m.get(key)? {
        Value::Null => None,
        v => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                w.error(&join(path, key), format!("must be a whole number ≥ 0, got {v}"));
                None
            }
        },
    }
}

fn flag(m: &Map<String, Value>, key: &str, default: bool) -> bool {
    m.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn timer_spec(w: &mut Walker, v: &Value) -> Option<TimerSpec> {
    let p = "spec.timer";
    let t = w.object(v, p, &["period", "message", "contentType", "repeatCount"])?;
    let period_ms = opt_u64(w, t, "period", p).unwrap_or(1000);
    if period_ms == 0 {
        w.error(&join(p, "period"), "must be at least 1 (milliseconds)");
    }
    let message = w.req_str(t, "message", p).map(str::to_string);
    let content_type = w.opt_str(t, "contentType", p).unwrap_or("text/plain").to_string();
    let repeat_count = opt_u64(w, t, "repeatCount", p).filter(|n| *n > 0);
    Some(TimerSpec { period_ms, message: message?, content_type, repeat_count })
}

const COMMON_AWS: &[&str] = &[
    "arn",
    "region",
    "deleteAfterRead",
    "delay",
    "maxMessagesPerPoll",
    "uriEndpointOverride",
    "overrideEndpoint",
    "autoCreateBucket",
    "autoCreateQueue",
];

fn aws_spec(w: &mut Walker, v: &Value) -> Option<IntegrationSpec> {
    let a = w.object(v, "spec.aws", &["s3", "sqs", "ddbStreams", "auth"])?;
    let auth = aws_auth(w, a);
    if a.get("ddbStreams").is_some_and(|v| !v.is_null()) {
        w.error("spec.aws.ddbStreams", "is not supported by Spate (s3 and sqs are)");
    }
    match (a.get("s3").filter(|v| !v.is_null()), a.get("sqs").filter(|v| !v.is_null())) {
        (Some(s), None) => s3(w, s, auth).map(IntegrationSpec::S3),
        (None, Some(q)) => sqs(w, q, auth).map(IntegrationSpec::Sqs),
        (Some(_), Some(_)) => {
            w.error("spec.aws", "give one of s3 or sqs, not both");
            None
        }
        (None, None) => {
            w.error("spec.aws", "needs s3 or sqs");
            None
        }
    }
}

fn aws_auth(w: &mut Walker, a: &Map<String, Value>) -> Option<AwsAuth> {
    let p = "spec.aws.auth";
    let v = a.get("auth").filter(|v| !v.is_null())?;
    let am = w.object(v, p, &["secret", "serviceAccountName"])?;
    let Some(s) = am.get("secret").filter(|v| !v.is_null()) else {
        w.error(&join(p, "secret"), "is required here: Spate has no pod identity, so credentials come from a Secret");
        return None;
    };
    let sm = w.object(s, &join(p, "secret"), &["ref"])?;
    let rp = "spec.aws.auth.secret.ref";
    let r = w.object(sm.get("ref").unwrap_or(&Value::Null), rp, &["name"])?;
    let name = w.req_str(r, "name", rp)?.to_string();
    Some(AwsAuth {
        access_key: SecretKeyRef { name: name.clone(), key: "aws.accessKey".into() },
        secret_key: SecretKeyRef { name, key: "aws.secretKey".into() },
    })
}

fn common(w: &mut Walker, m: &Map<String, Value>, p: &str, auth: Option<AwsAuth>) -> AwsCommon {
    let region = w.opt_str(m, "region", p).unwrap_or("us-east-1").to_string();
    let endpoint = w.opt_str(m, "uriEndpointOverride", p).map(|s| s.trim_end_matches('/').to_string());
    let override_endpoint = flag(m, "overrideEndpoint", false);
    if override_endpoint && endpoint.is_none() {
        w.error(&join(p, "uriEndpointOverride"), "is required when overrideEndpoint is true");
    }
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        w.error(&join(p, "uriEndpointOverride"), format!("'{e}' must be an http(s) URL"));
    }
    let max = w.opt_u32(m, "maxMessagesPerPoll", p).unwrap_or(10);
    if !(1..=1000).contains(&max) {
        w.error(&join(p, "maxMessagesPerPoll"), format!("must be from 1 to 1000, got {max}"));
    }
    AwsCommon {
        region,
        endpoint: endpoint.filter(|_| override_endpoint),
        auth,
        delete_after_read: flag(m, "deleteAfterRead", true),
        delay_ms: opt_u64(w, m, "delay", p).unwrap_or(500),
        max_messages_per_poll: max,
    }
}

/// The last part of an ARN (`arn:aws:s3:::bucket`, `arn:aws:sqs:region:acct:queue`), or the name as given.
fn arn_name(s: &str) -> String {
    if s.starts_with("arn:") { s.rsplit(':').next().unwrap_or(s).to_string() } else { s.to_string() }
}

fn s3(w: &mut Walker, v: &Value, auth: Option<AwsAuth>) -> Option<S3Spec> {
    let p = "spec.aws.s3";
    let extra = [
        "bucketNameOrArn",
        "prefix",
        "moveAfterRead",
        "destinationBucket",
        "destinationBucketPrefix",
        "destinationBucketSuffix",
        "forcePathStyle",
        "ignoreBody",
    ];
    let fields: Vec<&str> = COMMON_AWS.iter().chain(&extra).copied().collect();
    let m = w.object(v, p, &fields)?;
    let arn = w.opt_str(m, "arn", p).or(w.opt_str(m, "bucketNameOrArn", p));
    if arn.is_none() {
        w.error(&join(p, "arn"), "is required (the bucket's name or ARN)");
    }
    let move_after_read = flag(m, "moveAfterRead", false);
    let destination_bucket = w.opt_str(m, "destinationBucket", p).map(arn_name);
    if move_after_read && destination_bucket.is_none() {
        w.error(&join(p, "destinationBucket"), "is required when moveAfterRead is true");
    }
    Some(S3Spec {
        common: common(w, m, p, auth),
        bucket: arn_name(arn?),
        prefix: w.opt_str(m, "prefix", p).map(str::to_string),
        move_after_read,
        destination_bucket,
        destination_bucket_prefix: w.opt_str(m, "destinationBucketPrefix", p).unwrap_or("").to_string(),
        destination_bucket_suffix: w.opt_str(m, "destinationBucketSuffix", p).unwrap_or("").to_string(),
        force_path_style: flag(m, "forcePathStyle", false),
    })
}

fn sqs(w: &mut Walker, v: &Value, auth: Option<AwsAuth>) -> Option<SqsSpec> {
    let p = "spec.aws.sqs";
    let extra = ["queueNameOrArn", "queueURL", "waitTimeSeconds", "visibilityTimeout", "host", "protocol", "greedy"];
    let fields: Vec<&str> = COMMON_AWS.iter().chain(&extra).copied().collect();
    let m = w.object(v, p, &fields)?;
    let arn = w.opt_str(m, "arn", p).or(w.opt_str(m, "queueNameOrArn", p));
    if arn.is_none() {
        w.error(&join(p, "arn"), "is required (the queue's name or ARN)");
    }
    let wait = w.opt_u32(m, "waitTimeSeconds", p).unwrap_or(1);
    if wait > 20 {
        w.error(&join(p, "waitTimeSeconds"), format!("must be from 0 to 20 (SQS's limit), got {wait}"));
    }
    let mut common = common(w, m, p, auth);
    common.max_messages_per_poll = common.max_messages_per_poll.min(10);
    Some(SqsSpec {
        common,
        queue: arn_name(arn?),
        queue_url: w.opt_str(m, "queueURL", p).map(str::to_string),
        wait_time_seconds: wait,
        visibility_timeout: w.opt_u32(m, "visibilityTimeout", p),
    })
}
