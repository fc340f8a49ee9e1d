//! IntegrationSource `aws.sqs`: long-polls the queue (`ReceiveMessage`, AWS's
//! JSON protocol, up to 10 messages and `waitTimeSeconds`), emits each message's
//! body and deletes it by its receipt handle once the sink accepted it
//! (`deleteAfterRead`, the default). A message not deleted becomes visible again
//! after its visibility timeout: nothing is lost while Spate is down. With S3
//! bucket notifications into the queue, an upload fires the function.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use spate_api::{IntegrationSpec, SqsSpec};
use spate_core::ExtValue;
use tokio::sync::watch;

use super::aws::{self, Credentials, Unsigned};
use crate::held::Held;

pub(crate) struct Sqs {
    pub spec: SqsSpec,
    pub creds: Option<Credentials>,
    pub client: reqwest::Client,
    pub held: Held,
}

impl Sqs {
    async fn call(&self, action: &str, body: Value) -> Result<Value, String> {
        let base = aws::endpoint(&self.spec.common, "sqs");
        let host = aws::host_of(&base).to_string();
        let body = serde_json::to_vec(&body).expect("JSON");
        let headers = [
            ("content-type", "application/x-amz-json-1.0".to_string()),
            ("x-amz-target", format!("AmazonSQS.{action}")),
        ];
        let r = Unsigned { method: "POST", host: &host, path: "/", query: &[], body: &body, headers: &headers };
        let (_, out) =
            aws::call(&self.client, &base, r, self.creds.as_ref(), &self.spec.common.region, "sqs", aws::MAX_ANSWER)
                .await?;
        if out.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&out).map_err(|e| format!("{action}: the answer is not JSON: {e}"))
    }

    async fn queue_url(&self) -> Result<String, String> {
        if let Some(u) = &self.spec.queue_url {
            return Ok(u.clone());
        }
        let v = self.call("GetQueueUrl", json!({"QueueName": self.spec.queue})).await?;
        v["QueueUrl"].as_str().map(str::to_string).ok_or_else(|| format!("GetQueueUrl: no QueueUrl in {v}"))
    }

    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = std::sync::Arc::new(self);
        let spec = IntegrationSpec::Sqs(this.spec.clone());
        let mut url = None;
        let mut last_depth: Option<tokio::time::Instant> = None;
        loop {
            if url.is_none() {
                match this.queue_url().await {
                    Ok(u) => url = Some(u),
                    Err(e) => tracing::warn!(source = %this.held.label(), error = %e, "cannot find the queue"),
                }
            }
            if let Some(u) = url.clone()
                && last_depth.is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                last_depth = Some(tokio::time::Instant::now());
                let attrs = json!({"QueueUrl": u, "AttributeNames": ["ApproximateNumberOfMessages"]});
                if let Ok(a) = this.call("GetQueueAttributes", attrs).await
                    && let Some(n) =
                        a["Attributes"]["ApproximateNumberOfMessages"].as_str().and_then(|n| n.parse().ok())
                {
                    this.held.set_lag(n);
                }
            }
            if let Some(u) = url.clone() {
                let mut req = json!({
                    "QueueUrl": u,
                    "MaxNumberOfMessages": this.spec.common.max_messages_per_poll.clamp(1, 10),
                    "WaitTimeSeconds": this.spec.wait_time_seconds,
                    "MessageAttributeNames": ["All"],
                });
                if let Some(v) = this.spec.visibility_timeout {
                    req["VisibilityTimeout"] = json!(v);
                }
                let got = tokio::select! {
                    r = this.call("ReceiveMessage", req) => r,
                    _ = stop.changed() => break,
                };
                match got {
                    Ok(v) => {
                        for m in v["Messages"].as_array().cloned().unwrap_or_default() {
                            let body = m["Body"].as_str().unwrap_or_default().to_string();
                            let ct = if body.trim_start().starts_with(['{', '[']) {
                                "application/json"
                            } else {
                                "text/plain"
                            };
                            let mut ev = super::event(&spec, Bytes::from(body), Some(ct.to_string()));
                            if let Some(id) = m["MessageId"].as_str() {
                                ev.set_extension("messageid", ExtValue::String(id.to_string()));
                            }
                            let handle = m["ReceiptHandle"].as_str().unwrap_or_default().to_string();
                            let (me, qurl) = (this.clone(), u.clone());
                            let ack = move || async move {
                                if !me.spec.common.delete_after_read {
                                    return Ok(());
                                }
                                me.call("DeleteMessage", json!({"QueueUrl": qurl, "ReceiptHandle": handle}))
                                    .await
                                    .map(|_| ())
                            };
                            if !this.held.deliver(ev, ack).await {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = %this.held.label(), error = %e, "ReceiveMessage failed");
                        url = None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(this.spec.common.delay_ms.min(60_000))) => {}
                _ = stop.changed() => break,
            }
        }
        this.held.drain().await;
    }
}
