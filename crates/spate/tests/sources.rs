//! Event sources against a real `spate serve`: PingSource, ContainerSource,
//! GitHub and GitLab webhooks, Secrets and SinkBinding. (KafkaSource: `kafka.rs`.)

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--default-retry", "2", "--default-backoff-ms", "20"]);
    (dir, s)
}

async fn source(s: &Server, api: &str, plural: &str, name: &str) -> Value {
    s.admin_json(&format!("/apis/{api}/namespaces/default/{plural}/{name}")).await
}

async fn wait_status(
    s: &Server,
    api: &str,
    plural: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    s.wait_json(&format!("/apis/{api}/namespaces/default/{plural}/{name}"), what, pred).await
}

fn ready(v: &Value) -> Option<&Value> {
    v.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")
}

#[tokio::test]
async fn a_ping_source_ticks_through_a_broker_in_its_timezone_with_overrides() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    // Kathmandu is UTC+05:45 all year. The schedule fires every second, but only during the
    // current and next hour *in Kathmandu*: if the timezone were ignored, no hour would match.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let hour = ((now + 5 * 3600 + 45 * 60) / 3600) % 24;
    let yaml = format!(
        "{}---\n{}---\napiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: tick\nspec:\n  schedule: \"* * {hour},{} * * *\"\n  timezone: Asia/Kathmandu\n  contentType: application/json\n  data: '{{\"message\": \"hello\"}}'\n  ceOverrides:\n    extensions:\n      team: viewers\n  sink:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n",
        broker("default", ""),
        trigger("pings", "default", &type_filter("dev.knative.sources.ping"), &sink.url, ""),
        (hour + 1) % 24
    );
    s.apply_ok(&yaml).await;
    let got = sink.wait_for(2).await;
    for r in &got[..2] {
        let e = &r.event;
        assert_eq!(e.ty, "dev.knative.sources.ping");
        assert_eq!(e.source, "/apis/v1/namespaces/default/pingsources/tick");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.data.as_deref(), Some(&b"{\"message\": \"hello\"}"[..]));
        assert_eq!(e.extension("team").map(|v| v.to_canonical().into_owned()).as_deref(), Some("viewers"));
        let time = e.time.as_deref().unwrap();
        assert!(time.ends_with("+05:45"), "the tick time is given in the source's timezone: {time}");
        let h: u64 = time[11..13].parse().unwrap();
        assert!(h == hour || h == (hour + 1) % 24, "tick at {time}, expected hour {hour} in Kathmandu");
    }
    assert_ne!(got[0].event.id, got[1].event.id);
    let st = wait_status(&s, "sources.knative.dev/v1", "pingsources", "tick", "emitted counter", |v| {
        v.pointer("/status/spate/emitted").and_then(Value::as_u64).is_some_and(|n| n >= 2)
    })
    .await;
    assert_eq!(ready(&st).unwrap()["status"], "True", "{st:#}");
    assert_eq!(st["status"]["sinkUri"], json!(format!("{}/default/default", s.data)));
}

#[tokio::test]
async fn sources_are_validated_with_every_problem_named() {
    let (_d, s) = start();
    let yaml = "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: bad\nspec:\n  schedule: \"every minute\"\n  timezone: Mars/Olympus\n  data: x\n  dataBase64: eA==\n  ceOverrides:\n    extensions:\n      type: overridden\n      Bad-Name: x\n---\napiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata:\n  name: k\nspec:\n  topics: []\n  ordering: sometimes\n  sink:\n    uri: http://x\n";
    let (code, body) = s.apply(yaml).await;
    assert_eq!(code, 422, "{body:#}");
    let errs = body["errors"].to_string();
    for needle in [
        "spec.schedule",
        "spec.timezone",
        "spec.dataBase64",
        "spec.ceOverrides.extensions.type",
        "spec.ceOverrides.extensions.Bad-Name",
        "spec.sink",
        "spec.bootstrapServers",
        "spec.topics",
        "spec.ordering",
    ] {
        assert!(errs.contains(needle), "{needle} is reported: {errs}");
    }
    // Five fields (Knative) and six with seconds (Spate's extension) are both schedules.
    let ok = "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: five\nspec:\n  schedule: \"*/5 * * * *\"\n  sink:\n    uri: http://127.0.0.1:9/\n---\napiVersion: sources.eventing.knative.dev/v1alpha1\nkind: CronJobSource\nmetadata:\n  name: old\nspec:\n  schedule: \"0 * * * *\"\n  sink:\n    uri: http://127.0.0.1:9/\n";
    s.apply_ok(ok).await;
}

fn poster_script() -> String {
    // Posts one event per 100 ms to $K_SINK, carrying its pid, with the overrides from K_CE_OVERRIDES.
    r#"
import json, os, sys, time, urllib.request
ext = json.loads(os.environ.get("K_CE_OVERRIDES", "{}")).get("extensions", {})
print("poster", os.getpid(), "sending to", os.environ["K_SINK"], flush=True)
n = 0
while True:
    n += 1
    h = {"ce-specversion": "1.0", "ce-id": f"{os.getpid()}-{n}", "ce-source": "/poster", "ce-type": "poster.tick",
         "content-type": "application/json"}
    for k, v in ext.items():
        h["ce-" + k] = v
    req = urllib.request.Request(os.environ["K_SINK"], data=json.dumps({"pid": os.getpid()}).encode(), headers=h)
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except Exception as e:
        print("post failed:", e, file=sys.stderr, flush=True)
    time.sleep(0.1)
"#
    .to_string()
}

fn container_source(name: &str, command: &str, script: &str, sink: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: ContainerSource\nmetadata:\n  name: {name}\nspec:\n  ceOverrides:\n    extensions:\n      origin: container\n  template:\n    spec:\n      containers:\n        - name: poster\n          command: [\"{command}\", \"-c\", {script}]\n  sink:\n    uri: {sink}\n"
    )
}

fn pid_of(r: &Received) -> u64 {
    serde_json::from_slice::<Value>(r.event.data.as_deref().unwrap()).unwrap()["pid"].as_u64().unwrap()
}

#[tokio::test]
async fn a_container_source_posts_to_k_sink_and_is_restarted_when_killed() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&container_source("poster", "python3", &poster_script(), &sink.url)).await;
    let first = sink.wait_for(2).await;
    let pid = pid_of(&first[0]);
    assert_eq!(first[0].event.ty, "poster.tick");
    assert_eq!(
        first[0].event.extension("origin").map(|v| v.to_canonical().into_owned()).as_deref(),
        Some("container"),
        "K_CE_OVERRIDES reached the process"
    );
    // SAFETY: a signal to the test's own grandchild.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let after = sink.wait_until("an event from a restarted process", |g| g.iter().any(|r| pid_of(r) != pid)).await;
    let new_pid = pid_of(after.iter().find(|r| pid_of(r) != pid).unwrap());
    assert_ne!(new_pid, pid);
    let st = wait_status(&s, "sources.knative.dev/v1", "containersources", "poster", "a restart", |v| {
        v.pointer("/status/spate/restarts").and_then(Value::as_u64).is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(ready(&st).unwrap()["status"], "True", "{st:#}");
    let logs = client()
        .get(format!("{}/logs/containersource/default/poster", s.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(logs.contains(&format!("poster {pid} sending")), "{logs}");
    assert!(logs.contains(&format!("poster {new_pid} sending")), "{logs}");
    assert!(logs.contains("exited"), "the crash is in the log: {logs}");
}

#[tokio::test]
async fn a_container_source_with_a_bad_command_is_not_ready_and_says_why() {
    let (_d, s) = start();
    s.apply_ok(&container_source("broken", "no-such-program-xyz", "", "http://127.0.0.1:9/")).await;
    let st = wait_status(&s, "sources.knative.dev/v1", "containersources", "broken", "not Ready", |v| {
        ready(v).is_some_and(|c| c["status"] == "False")
    })
    .await;
    let c = ready(&st).unwrap();
    assert_eq!(c["reason"], "CommandNotFound", "{st:#}");
    assert!(c["message"].as_str().unwrap().contains("no-such-program-xyz"), "{st:#}");
    let out = std::process::Command::new(BIN).args(["get", "sources", "--server", &s.admin]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("broken") && text.contains("ContainerSource") && text.contains("CommandNotFound"), "{text}");
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A fake GitHub/GitLab API: records hook creations and deletions, answers with id 42.
async fn fake_api() -> (String, Arc<Mutex<Vec<(String, String, Value)>>>) {
    let calls: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let c = calls.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let c = c.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .or_else(|| headers.get("private-token"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                c.lock().unwrap().push((format!("{method} {}", uri.path()), auth, v));
                if method == axum::http::Method::POST {
                    (StatusCode::CREATED, axum::Json(json!({"id": 42}))).into_response()
                } else {
                    StatusCode::NO_CONTENT.into_response()
                }
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, calls)
}

async fn post_hook(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut req = client().post(url).header("content-type", "application/json").body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn github_deliveries_are_verified_mapped_and_the_webhook_is_registered() {
    let (dir, s) = start();
    let sink = Sink::start().await;
    let (api, calls) = fake_api().await;
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\nstringData:\n  accessToken: ghp_test_token\n  secretToken: s3cr3t-hook\n---\napiVersion: sources.knative.dev/v1alpha1\nkind: GitHubSource\nmetadata:\n  name: repo\nspec:\n  ownerAndRepository: octo/spoon\n  eventTypes: [push, pull_request]\n  githubAPIURL: {api}\n  accessToken:\n    secretKeyRef: {{name: gh, key: accessToken}}\n  secretToken:\n    secretKeyRef: {{name: gh, key: secretToken}}\n  sink:\n    uri: {}\n",
        sink.url
    );
    s.apply_ok(&yaml).await;
    let st = wait_status(&s, "sources.knative.dev/v1alpha1", "githubsources", "repo", "webhook registered", |v| {
        v.pointer("/status/webhookIDKey").is_some()
    })
    .await;
    assert_eq!(st["status"]["webhookIDKey"], "42");
    let url = st["status"]["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("{}/sources/github/default/repo", s.data));
    {
        let c = calls.lock().unwrap();
        let (what, auth, body) = &c[0];
        assert_eq!(what, "POST /repos/octo/spoon/hooks");
        assert_eq!(auth, "Bearer ghp_test_token");
        assert_eq!(body["config"]["url"], json!(url));
        assert_eq!(body["config"]["secret"], "s3cr3t-hook");
        assert_eq!(body["events"], json!(["push", "pull_request"]));
    }

    // A wrong signature and a missing one: 401, nothing emitted.
    let payload = br#"{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"octo/spoon"}}"#;
    let forged = sign("not-the-secret", payload);
    let (code, _) = post_hook(
        &url,
        &[("x-github-event", "push".into()), ("x-github-delivery", "forged-1".into()), ("x-hub-signature-256", forged)],
        payload,
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) =
        post_hook(&url, &[("x-github-event", "push".into()), ("x-github-delivery", "unsigned-1".into())], payload)
            .await;
    assert_eq!(code, 401);
    // An event type the source does not subscribe to: accepted, not emitted.
    let good = sign("s3cr3t-hook", payload);
    let (code, _) = post_hook(
        &url,
        &[
            ("x-github-event", "issues".into()),
            ("x-github-delivery", "issue-1".into()),
            ("x-hub-signature-256", good.clone()),
        ],
        payload,
    )
    .await;
    assert_eq!(code, 200);
    // A correct one: an event carrying the payload.
    let (code, body) = post_hook(
        &url,
        &[("x-github-event", "push".into()), ("x-github-delivery", "delivery-1".into()), ("x-hub-signature-256", good)],
        payload,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let got = sink.wait_for_id("delivery-1").await;
    assert_eq!(
        got.len(),
        1,
        "only the verified, subscribed delivery was emitted: {:?}",
        got.iter().map(|r| &r.event.id).collect::<Vec<_>>()
    );
    let e = &got[0].event;
    assert_eq!(e.ty, "dev.knative.source.github.push");
    assert_eq!(e.source, "https://github.com/octo/spoon");
    assert_eq!(e.data.as_deref(), Some(&payload[..]));

    // The Secret's values are never shown and are stored owner-only.
    let secret = s.admin_json("/apis/core/v1/namespaces/default/secrets/gh").await;
    let shown = secret.to_string();
    assert!(!shown.contains("ghp_test_token") && !shown.contains("s3cr3t"), "{shown}");
    assert!(secret["data"]["accessToken"].as_str().unwrap().contains("redacted"), "{shown}");
    let resources = std::fs::read_to_string(dir.path().join("resources.json")).unwrap();
    assert!(
        !resources.contains("Z2hwX3Rlc3RfdG9rZW4") && !resources.contains("ghp_test_token"),
        "resources.json holds no value"
    );
    let file = dir.path().join("secrets/default.gh.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Deleting the source removes the webhook it registered.
    let resp = client()
        .delete(format!("{}/apis/sources.knative.dev/v1alpha1/namespaces/default/githubsources/repo", s.admin))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(
        calls.lock().unwrap().iter().any(|(w, _, _)| w == "DELETE /repos/octo/spoon/hooks/42"),
        "{:?}",
        calls.lock().unwrap()
    );
    let (code, _) = post_hook(&url, &[], payload).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn gitlab_deliveries_need_the_token() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gl\ndata:\n  token: {}\n---\napiVersion: sources.knative.dev/v1alpha1\nkind: GitLabSource\nmetadata:\n  name: proj\nspec:\n  projectUrl: https://gitlab.example.com/group/proj\n  eventTypes: [push_events]\n  secretToken:\n    secretKeyRef: {{name: gl, key: token}}\n  sink:\n    uri: {}\n",
        "Z2wtc2VjcmV0", // base64 of gl-secret
        sink.url
    );
    s.apply_ok(&yaml).await;
    let url = format!("{}/sources/gitlab/default/proj", s.data);
    let payload = br#"{"object_kind":"push","checkout_sha":"def456"}"#;
    let (code, _) =
        post_hook(&url, &[("x-gitlab-event", "Push Hook".into()), ("x-gitlab-token", "wrong".into())], payload).await;
    assert_eq!(code, 401);
    let (code, body) = post_hook(
        &url,
        &[
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", "gl-secret".into()),
            ("x-gitlab-event-uuid", "gl-1".into()),
        ],
        payload,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let got = sink.wait_for_id("gl-1").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.ty, "dev.knative.sources.gitlab.push");
    assert_eq!(got[0].event.source, "https://gitlab.example.com/group/proj");
    assert_eq!(got[0].event.subject.as_deref(), Some("def456"));
}

#[tokio::test]
async fn a_missing_secret_or_sink_leaves_a_source_not_ready() {
    let (_d, s) = start();
    let yaml = "apiVersion: sources.knative.dev/v1alpha1\nkind: GitHubSource\nmetadata:\n  name: nosecret\nspec:\n  ownerAndRepository: octo/spoon\n  eventTypes: [push]\n  secretToken:\n    secretKeyRef: {name: absent, key: t}\n  sink:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: nowhere\n";
    s.apply_ok(yaml).await;
    let st = wait_status(&s, "sources.knative.dev/v1alpha1", "githubsources", "nosecret", "not Ready", |v| {
        ready(v).is_some_and(|c| c["status"] == "False")
    })
    .await;
    let conds = st["status"]["conditions"].to_string();
    assert!(conds.contains("Secret default/absent does not exist"), "{conds}");
    assert!(conds.contains("Broker default/nowhere does not exist"), "{conds}");
}

#[tokio::test]
async fn a_sink_binding_puts_k_sink_into_its_service_and_a_new_sink_makes_a_new_revision() {
    let (_d, s) = start();
    let service = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: producer\n  labels:\n    app: producer\nspec:\n  template:\n    spec:\n      containers:\n        - command: [python3, -c, 'pass']\n";
    let binding = |broker: &str| {
        format!(
            "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata:\n  name: bind\nspec:\n  subject:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    selector:\n      matchLabels:\n        app: producer\n  ceOverrides:\n    extensions:\n      via: binding\n  sink:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: {broker}\n"
        )
    };
    s.apply_ok(&format!("{}---\n{}---\n{service}---\n{}", broker("one", ""), broker("two", ""), binding("one"))).await;
    let env_of = |rev: &Value| -> BTreeMap<String, String> {
        rev.pointer("/spec/containers/0/env")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .map(|v| (v["name"].as_str().unwrap().to_string(), v["value"].as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let revs = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/revisions").await;
    let items = revs["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{revs:#}");
    let env = env_of(&items[0]);
    assert_eq!(env.get("K_SINK"), Some(&format!("{}/default/one", s.data)));
    assert_eq!(env.get("K_CE_OVERRIDES").map(String::as_str), Some(r#"{"extensions":{"via":"binding"}}"#));
    let b = source(&s, "sources.knative.dev/v1", "sinkbindings", "bind").await;
    assert_eq!(ready(&b).unwrap()["status"], "True", "{b:#}");
    assert_eq!(b["status"]["sinkUri"], json!(format!("{}/default/one", s.data)));

    // A new sink: a new revision carries it.
    s.apply_ok(&binding("two")).await;
    let revs = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/revisions").await;
    let items = revs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{revs:#}");
    assert_eq!(env_of(&items[1]).get("K_SINK"), Some(&format!("{}/default/two", s.data)));
    let svc = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/services/producer").await;
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "producer-00002");
}

#[tokio::test]
async fn a_replayed_github_delivery_is_emitted_once_and_large_payloads_are_accepted() {
    let (_dir, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\nstringData:\n  secretToken: hook-secret\n---\napiVersion: sources.knative.dev/v1alpha1\nkind: GitHubSource\nmetadata:\n  name: big\nspec:\n  ownerAndRepository: octo/big\n  eventTypes: [push]\n  secretToken:\n    secretKeyRef: {{name: gh, key: secretToken}}\n  sink:\n    uri: {}\n",
        sink.url
    ))
    .await;
    let url = format!("{}/sources/github/default/big", s.data);
    wait_status(&s, "sources.knative.dev/v1alpha1", "githubsources", "big", "Ready", |v| {
        ready(v).is_some_and(|c| c["status"] == "True")
    })
    .await;
    // 1.5 MB: above the 1 MiB event limit (the old webhook cap), within GitHub's 25 MB.
    let payload = format!("{{\"blob\": \"{}\"}}", "x".repeat(1536 * 1024));
    let headers = |id: &str| {
        vec![
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", id.to_string()),
            ("x-hub-signature-256", sign("hook-secret", payload.as_bytes())),
        ]
    };
    let (code, body) = post_hook(&url, &headers("d-1"), payload.as_bytes()).await;
    assert_eq!(code, 202, "{body}");
    // GitHub's "Redeliver" sends the same delivery id again: not a second event.
    let (code, body) = post_hook(&url, &headers("d-1"), payload.as_bytes()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");
    let (code, _) = post_hook(&url, &headers("d-2"), payload.as_bytes()).await;
    assert_eq!(code, 202);
    let got = sink.wait_for_id("d-2").await;
    let ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(ids, ["d-1", "d-2"], "each delivery id emitted once");
    assert_eq!(got[0].event.data.as_ref().map(|d| d.len()), Some(payload.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_registered_once_per_cluster_and_its_id_survives_its_registrar() {
    if !nats_available() {
        return;
    }
    let nats = NatsCluster::new("webhook");
    let (api, calls) = fake_api().await;
    // One public address for the cluster, as a load balancer in front of it would be.
    let mut args = nats.args();
    args.extend(["--config-store", "nats", "--public-url", "http://hooks.example"].map(String::from));
    // The GitHub token Secret is shared through NATS: sealed with one key on every instance.
    let key_dir = tempdir();
    let key_file = key_dir.path().join("secret.key");
    std::fs::write(&key_file, "5a".repeat(32)).unwrap();
    args.extend(["--secret-key-file".to_string(), key_file.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempdir()).collect();
    let mut servers: Vec<Server> = dirs.iter().map(|d| Server::start(d.path(), &args)).collect();
    servers[0]
        .apply_ok(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\nstringData:\n  accessToken: ghp_t\n  secretToken: s\n---\napiVersion: sources.knative.dev/v1alpha1\nkind: GitHubSource\nmetadata:\n  name: repo\nspec:\n  ownerAndRepository: octo/spoon\n  eventTypes: [push]\n  githubAPIURL: {api}\n  accessToken:\n    secretKeyRef: {{name: gh, key: accessToken}}\n  secretToken:\n    secretKeyRef: {{name: gh, key: secretToken}}\n  sink:\n    uri: http://127.0.0.1:9/\n"
        ))
        .await;
    // Every instance reports the one hook.
    for s in &servers {
        let st = wait_status(s, "sources.knative.dev/v1alpha1", "githubsources", "repo", "webhook id", |v| {
            v.pointer("/status/webhookIDKey").is_some()
        })
        .await;
        assert_eq!(st["status"]["webhookIDKey"], "42");
    }
    let posts = |c: &[(String, String, Value)]| c.iter().filter(|(w, _, _)| w.starts_with("POST")).count();
    assert_eq!(posts(&calls.lock().unwrap()), 1, "registered once for the cluster");
    // The registrar dies; its lease moves; the next holder adopts the hook instead of adding one.
    let registrar = (0..3).find(|i| dirs[*i].path().join("sources/webhooks.json").exists()).expect("a registrar");
    servers[registrar].kill();
    let survivor = (registrar + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..3).any(|i| i != registrar && dirs[i].path().join("sources/webhooks.json").exists()) {
        assert!(Instant::now() < deadline, "no instance took the webhook over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(posts(&calls.lock().unwrap()), 1, "the new holder adopted the hook: {:?}", calls.lock().unwrap());
    // Deleted on a survivor: removed once.
    let r = client()
        .delete(format!(
            "{}/apis/sources.knative.dev/v1alpha1/namespaces/default/githubsources/repo",
            servers[survivor].admin
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !calls.lock().unwrap().iter().any(|(w, _, _)| w == "DELETE /repos/octo/spoon/hooks/42") {
        assert!(Instant::now() < deadline, "the hook was not removed: {:?}", calls.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    servers.clear();
    let deletes = calls.lock().unwrap().iter().filter(|(w, _, _)| w.starts_with("DELETE")).count();
    assert_eq!(deletes, 1, "removed once: {:?}", calls.lock().unwrap());
}
