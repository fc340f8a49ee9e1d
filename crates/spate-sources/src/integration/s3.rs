//! IntegrationSource `aws.s3`: polls the bucket (`ListObjectsV2`, `prefix`,
//! `maxMessagesPerPoll` objects, every `delay` ms), emits each object (its body
//! as data, its content type) and, once the sink accepted it, deletes it
//! (`deleteAfterRead`, the default) or moves it to `destinationBucket`
//! (`moveAfterRead`: copy with prefix/suffix, then delete). Without either, an
//! object is emitted once per run (its key and ETag remembered, bounded).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spate_api::{IntegrationSpec, S3Spec};
use spate_core::ExtValue;
use tokio::sync::watch;

use super::aws::{self, Credentials, Unsigned};
use crate::held::Held;

/// Objects remembered when they are neither deleted nor moved.
const SEEN: usize = 100_000;

pub(crate) struct S3 {
    pub spec: S3Spec,
    /// `--max-event-size`: larger objects are left in the bucket, unread.
    pub max_object: usize,
    pub creds: Option<Credentials>,
    pub client: reqwest::Client,
    pub held: Held,
}

impl S3 {
    fn base(&self) -> (String, String) {
        let ep = aws::endpoint(&self.spec.common, "s3");
        // Path style for an endpoint override or when asked (S3-compatible servers); virtual host on AWS.
        if self.spec.force_path_style || self.spec.common.endpoint.is_some() {
            (ep, format!("/{}", aws::uri_encode(&self.spec.bucket, false)))
        } else {
            let host = aws::host_of(&ep).to_string();
            (format!("https://{}.{host}", self.spec.bucket), String::new())
        }
    }

    async fn request(
        &self,
        method: &str,
        bucket_path: &str,
        key: &str,
        query: &[(String, String)],
        extra: &[(&str, String)],
    ) -> Result<(reqwest::header::HeaderMap, Bytes), String> {
        let (base, _) = self.base();
        let path = if key.is_empty() {
            format!("{bucket_path}/")
        } else {
            format!("{bucket_path}/{}", aws::uri_encode(key, true))
        };
        let host = aws::host_of(&base).to_string();
        let r = Unsigned { method, host: &host, path: &path, query, body: b"", headers: extra };
        let limit = if method == "GET" && !key.is_empty() { self.max_object } else { aws::MAX_ANSWER };
        aws::call(&self.client, &base, r, self.creds.as_ref(), &self.spec.common.region, "s3", limit).await
    }

    async fn list(&self) -> Result<Vec<Listed>, String> {
        let (_, bucket_path) = self.base();
        let mut q = vec![
            ("list-type".to_string(), "2".to_string()),
            ("max-keys".to_string(), self.spec.common.max_messages_per_poll.to_string()),
        ];
        if let Some(p) = &self.spec.prefix {
            q.push(("prefix".into(), p.clone()));
        }
        let (_, body) = self.request("GET", &bucket_path, "", &q, &[]).await?;
        Ok(list_keys(&String::from_utf8_lossy(&body)))
    }

    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let seen: Seen = Default::default();
        let in_flight: Arc<Mutex<HashSet<String>>> = Default::default();
        let spec = IntegrationSpec::S3(this.spec.clone());
        loop {
            match this.list().await {
                Ok(objects) => {
                    for Listed { key, etag, size } in objects {
                        let mark = format!("{key}\u{0}{etag}");
                        if seen.lock().expect("seen").0.contains(&mark) {
                            continue;
                        }
                        if size > this.max_object as u64 {
                            // Left in the bucket, said once (until the object changes).
                            let why = format!(
                                "object '{key}' is {size} bytes, more than --max-event-size ({}); left in the bucket",
                                this.max_object
                            );
                            tracing::warn!(source = %this.held.label(), "{why}");
                            this.held.record_failure(why);
                            remember(&seen, mark);
                            continue;
                        }
                        if !in_flight.lock().expect("in flight").insert(key.clone()) {
                            continue;
                        }
                        let (_, bucket_path) = this.base();
                        let got = this.request("GET", &bucket_path, &key, &[], &[]).await;
                        let (headers, body) = match got {
                            Ok(x) => x,
                            Err(e) => {
                                in_flight.lock().expect("in flight").remove(&key);
                                tracing::warn!(source = %this.held.label(), key = %key, error = %e, "cannot read object");
                                continue;
                            }
                        };
                        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
                        let mut ev = super::event(&spec, body, ct);
                        ev.set_extension("bucket", ExtValue::String(this.spec.bucket.clone()));
                        ev.set_extension("key", ExtValue::String(key.clone()));
                        let (me, seen, in_flight) = (this.clone(), seen.clone(), in_flight.clone());
                        let ack = move || async move {
                            let r = me.after_read(&key).await;
                            if r.is_ok() && !me.spec.common.delete_after_read && !me.spec.move_after_read {
                                remember(&seen, mark);
                            }
                            in_flight.lock().expect("in flight").remove(&key);
                            r
                        };
                        if !this.held.deliver(ev, ack).await {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!(source = %this.held.label(), error = %e, "cannot list the bucket"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(this.spec.common.delay_ms.max(10))) => {}
                _ = stop.changed() => break,
            }
        }
        this.held.drain().await;
    }

    /// After the sink accepted: move (copy, then delete) or delete, as configured.
    async fn after_read(&self, key: &str) -> Result<(), String> {
        let (_, bucket_path) = self.base();
        if self.spec.move_after_read
            && let Some(dest) = &self.spec.destination_bucket
        {
            let target = format!("{}{key}{}", self.spec.destination_bucket_prefix, self.spec.destination_bucket_suffix);
            let source = format!("/{}/{}", self.spec.bucket, aws::uri_encode(key, true));
            let dest_path = format!("/{}", aws::uri_encode(dest, false));
            self.request("PUT", &dest_path, &target, &[], &[("x-amz-copy-source", source)]).await?;
            return self.request("DELETE", &bucket_path, key, &[], &[]).await.map(|_| ());
        }
        if self.spec.common.delete_after_read {
            return self.request("DELETE", &bucket_path, key, &[], &[]).await.map(|_| ());
        }
        Ok(())
    }
}

type Seen = Arc<Mutex<(HashSet<String>, VecDeque<String>)>>;

/// Remembers an object (key and ETag) not to emit again; the oldest are forgotten past [`SEEN`].
fn remember(seen: &Seen, mark: String) {
    let mut s = seen.lock().expect("seen");
    if s.0.insert(mark.clone()) {
        s.1.push_back(mark);
    }
    while s.1.len() > SEEN {
        let old = s.1.pop_front().expect("non-empty");
        s.0.remove(&old);
    }
}

/// One object of a listing.
#[derive(Debug, PartialEq)]
pub(crate) struct Listed {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// Each `<Contents>` of a ListObjectsV2 answer (XML entities decoded).
pub(crate) fn list_keys(xml: &str) -> Vec<Listed> {
    let mut out = vec![];
    let mut rest = xml;
    while let Some(i) = rest.find("<Contents>") {
        let after = &rest[i + "<Contents>".len()..];
        let end = after.find("</Contents>").unwrap_or(after.len());
        let item = &after[..end];
        if let Some(k) = tag(item, "Key") {
            let etag = tag(item, "ETag").map(unescape).unwrap_or_default();
            let size = tag(item, "Size").and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            out.push(Listed { key: unescape(k), etag, size });
        }
        rest = &after[end..];
    }
    out
}

fn tag<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let i = s.find(&open)? + open.len();
    let j = s[i..].find(&format!("</{name}>"))?;
    Some(&s[i..i + j])
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_parse_with_entities() {
        let xml = r#"<?xml version="1.0"?><ListBucketResult><Name>b</Name><Contents><Key>a &amp; b.txt</Key><ETag>&quot;e1&quot;</ETag><Size>12</Size></Contents><Contents><Key>dir/c</Key><ETag>"e2"</ETag></Contents></ListBucketResult>"#;
        let l = |k: &str, e: &str, size| Listed { key: k.into(), etag: e.into(), size };
        assert_eq!(list_keys(xml), vec![l("a & b.txt", "\"e1\"", 12), l("dir/c", "\"e2\"", 0)]);
        assert!(list_keys("<ListBucketResult/>").is_empty());
        assert!(list_keys("<Contents><Key>unterminated").is_empty());
    }
}
