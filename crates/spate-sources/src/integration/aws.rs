//! Just enough AWS for the S3 and SQS connectors: Signature Version 4 over
//! reqwest (`hmac` + `sha2`, already dependencies), and the endpoint of a
//! service. No SDK: the two connectors need five calls between them.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use spate_api::AwsCommon;

/// Credentials from the source's Secret (`aws.accessKey`, `aws.secretKey`).
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// Where a service answers: `uriEndpointOverride`, else AWS's regional endpoint.
pub(crate) fn endpoint(common: &AwsCommon, service: &str) -> String {
    match &common.endpoint {
        Some(e) => e.clone(),
        None => format!("https://{service}.{}.amazonaws.com", common.region),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 wants it (unreserved kept; `/` kept in paths when `path`).
pub(crate) fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b'/' if path => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A request about to be signed: method, host, already-encoded path, query pairs (raw), body.
pub(crate) struct Unsigned<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
    /// Extra headers that are signed too (lowercase names), such as `x-amz-target`.
    pub headers: &'a [(&'a str, String)],
}

/// The headers to add: `x-amz-date`, `x-amz-content-sha256` and, with credentials, `authorization`.
pub(crate) fn sign(
    r: &Unsigned<'_>,
    creds: Option<&Credentials>,
    region: &str,
    service: &str,
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let payload = sha256_hex(r.body);
    let mut out =
        vec![("x-amz-date".to_string(), amz_date.clone()), ("x-amz-content-sha256".to_string(), payload.clone())];
    let Some(c) = creds else { return out };
    let mut query: Vec<(String, String)> =
        r.query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    query.sort();
    let canonical_query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), r.host.to_string()),
        ("x-amz-content-sha256".into(), payload.clone()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    headers.extend(r.headers.iter().map(|(k, v)| (k.to_string(), v.trim().to_string())));
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical =
        format!("{}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}", r.method, r.path, canonical_query.join("&"));
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
    let mut key = hmac(format!("AWS4{}", c.secret_key).as_bytes(), date);
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex(&hmac(&key, &to_sign));
    out.push((
        "authorization".into(),
        format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}", c.access_key),
    ));
    out
}

/// Answers of API calls (listings, receives) are read up to this size.
pub(crate) const MAX_ANSWER: usize = 16 << 20;

/// Sends a signed request; the answer's body (at most `limit` bytes), or an
/// error naming the call and AWS's message.
pub(crate) async fn call(
    client: &reqwest::Client,
    base: &str,
    r: Unsigned<'_>,
    creds: Option<&Credentials>,
    region: &str,
    service: &str,
    limit: usize,
) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), String> {
    let mut url = format!("{base}{}", r.path);
    if !r.query.is_empty() {
        let q: Vec<String> =
            r.query.iter().map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false))).collect();
        url.push('?');
        url.push_str(&q.join("&"));
    }
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, &url).body(r.body.to_vec());
    for (k, v) in r.headers {
        req = req.header(*k, v);
    }
    for (k, v) in sign(&r, creds, region, service, Utc::now()) {
        req = req.header(k, v);
    }
    let mut resp = req.send().await.map_err(|e| format!("{} {url}: {e}", r.method))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let too_big = || format!("{} {url}: the answer is larger than {limit} bytes", r.method);
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{} {url}: {e}", r.method))? {
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(format!("{} {url}: HTTP {status}: {text}", r.method));
    }
    Ok((headers, body))
}

/// The host (and port) of a base URL, for the signature.
pub(crate) fn host_of(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known answer from an independent implementation: botocore's `SigV4Auth` signing the
    /// same SQS request (POST /, JSON body, the same headers) at 2015-08-30T12:36:00Z.
    #[test]
    fn signature_matches_botocore() {
        let creds = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        };
        let now = DateTime::parse_from_rfc3339("2015-08-30T12:36:00Z").unwrap().with_timezone(&Utc);
        let body = br#"{"QueueName":"q"}"#;
        let headers = [
            ("content-type", "application/x-amz-json-1.0".to_string()),
            ("x-amz-target", "AmazonSQS.GetQueueUrl".to_string()),
        ];
        let r = Unsigned { method: "POST", host: "127.0.0.1:5000", path: "/", query: &[], body, headers: &headers };
        let h = sign(&r, Some(&creds), "us-east-1", "sqs", now);
        let auth = &h.iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target, \
             Signature=a50ce9d0521757ec53a508444aed864ac9136fe29834ea3c8a879c2a9f67daa4"
        );
        assert!(sign(&r, None, "us-east-1", "sqs", now).iter().all(|(k, _)| k != "authorization"));
        assert_eq!(uri_encode("a b/c+d", true), "a%20b/c%2Bd");
    }
}
