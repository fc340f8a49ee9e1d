//! Knative Services on a running `spate serve`: scale from and to zero,
//! autoscaling under load, containerConcurrency, traffic split and tags,
//! triggers delivering to services, and process hygiene.
//!
//! The function is `tests/fixtures/fn.py` (Python standard library only).
//! Waiting on the autoscaler uses status polls with a deadline: scaling is
//! observed from outside, through the admin API, as a user would.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn fn_py() -> String {
    format!("{}/tests/fixtures/fn.py", env!("CARGO_MANIFEST_DIR"))
}

/// A Service running fn.py with the given template annotations, spec lines and env.
fn service(name: &str, annotations: &[(&str, &str)], spec_extra: &str, env: &[(&str, &str)]) -> String {
    let mut ann = String::new();
    for (k, v) in annotations {
        ann.push_str(&format!("        {k}: \"{v}\"\n"));
    }
    let mut envs = String::new();
    for (k, v) in env {
        envs.push_str(&format!("            - name: {k}\n              value: \"{v}\"\n"));
    }
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 6s\n{ann}    spec:\n{spec_extra}      containers:\n        - command: [python3, {}]\n          env:\n            - name: UNUSED\n              value: x\n{envs}",
        fn_py()
    )
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--grace-seconds", "2"]);
    (dir, s)
}

async fn call(url: &str) -> Value {
    let r = client().get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

async fn revision(s: &Server, name: &str) -> Value {
    s.admin_json(&format!("/apis/serving.knative.dev/v1/namespaces/default/revisions/{name}")).await
}

/// Polls a revision's status until `pred` holds (deadline 60 s).
async fn wait_revision(s: &Server, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = revision(s, name).await;
        if pred(&v["status"]) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scale(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Whether `pid` is gone within 3 s. Spate's stop ends an instance's process group with
/// SIGKILL after its main process exits and does not wait for the kernel to tear the
/// rest down, so a grandchild can still be exiting for a few ms after Spate has.
async fn gone_soon(pid: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_the_first_request_waits_for_an_instance_and_idle_returns_to_zero() {
    let (_d, s) = start();
    s.apply_ok(&service("hello", &[], "", &[("MESSAGE", "hi")])).await;
    let v = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/services/hello").await;
    assert_eq!(v["status"]["latestCreatedRevisionName"], "hello-00001", "{v}");
    assert_eq!(v["status"]["conditions"][0]["status"], "True", "{v}");
    let rev = revision(&s, "hello-00001").await;
    assert_eq!((scale(&rev["status"], "actualScale"), scale(&rev["status"], "startingInstances")), (0, 0), "{rev}");

    let url = v["status"]["address"]["url"].as_str().unwrap();
    let got = call(&format!("{url}/some/path?q=1")).await;
    assert_eq!(got["message"], "hi");
    assert_eq!(got["path"], "/some/path?q=1");
    assert_eq!(got["revision"], "hello-00001");
    let pid = got["pid"].as_u64().unwrap();
    assert!(alive(pid));

    // With a 6 s window and no retention, idle brings it back to zero and the process ends.
    wait_revision(&s, "hello-00001", "scale to zero", |st| {
        scale(st, "actualScale") == 0 && scale(st, "desiredScale") == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "instance {pid} still runs after scale to zero");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And from zero again.
    assert_eq!(call(url).await["message"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_requests_scale_out_within_max_scale_and_back_down() {
    let (_d, s) = start();
    let ann = [("autoscaling.knative.dev/target", "1"), ("autoscaling.knative.dev/max-scale", "6")];
    s.apply_ok(&service("busy", &ann, "", &[])).await;
    let url = format!("{}/services/default/busy?sleep=4000", s.data);
    let load: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let u = url.clone();
                async move { call(&u).await }
            })
        })
        .collect();
    let mut peak = 0;
    let watch_until = Instant::now() + Duration::from_secs(30);
    while load.iter().any(|h| !h.is_finished()) {
        let st = revision(&s, "busy-00001").await["status"].clone();
        let (desired, ready) = (scale(&st, "desiredScale"), scale(&st, "actualScale"));
        assert!(desired <= 6 && ready + scale(&st, "startingInstances") <= 6, "past max-scale: {st}");
        peak = peak.max(ready);
        assert!(Instant::now() < watch_until, "load did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in load {
        h.await.unwrap();
    }
    assert!(peak >= 5, "10 concurrent requests with target 1 reached only {peak} ready instance(s)");
    wait_revision(&s, "busy-00001", "scale down after the load", |st| scale(st, "actualScale") == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_never_gives_an_instance_two_requests() {
    let (_d, s) = start();
    let ann = [("autoscaling.knative.dev/max-scale", "3")];
    s.apply_ok(&service("single", &ann, "      containerConcurrency: 1\n", &[])).await;
    let url = format!("{}/services/default/single?sleep=100", s.data);
    let load: Vec<_> = (0..24)
        .map(|_| {
            tokio::spawn({
                let u = url.clone();
                async move { call(&u).await }
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for h in load {
        let v = h.await.unwrap();
        assert_eq!(v["concurrent"], 1, "an instance saw two requests at once: {v}");
        pids.insert(v["pid"].as_u64().unwrap());
    }
    assert!(pids.len() <= 3, "max-scale 3, saw {} instances", pids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_splits_80_20_and_a_tag_has_its_own_url() {
    let (_d, s) = start();
    let min1 = [("autoscaling.knative.dev/min-scale", "1")];
    s.apply_ok(&service("split", &min1, "", &[("MESSAGE", "v1")])).await;
    let v2 = service("split", &min1, "", &[("MESSAGE", "v2")]).replace(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: split\nspec:\n",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: split\nspec:\n  traffic:\n    - revisionName: split-00001\n      percent: 80\n    - latestRevision: true\n      percent: 20\n      tag: canary\n",
    );
    s.apply_ok(&v2).await;
    let v = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/services/split").await;
    assert_eq!(v["status"]["latestCreatedRevisionName"], "split-00002", "{v}");
    let traffic = v["status"]["traffic"].as_array().unwrap();
    assert_eq!(traffic.len(), 2, "{v}");
    let tag_url = traffic[1]["url"].as_str().unwrap();
    // Published URLs need no DNS: path-based on the data plane's address (any HTTP client).
    assert_eq!(tag_url, format!("{}/tags/default/split/canary", s.data), "{v}");
    assert_eq!(v["status"]["url"], format!("{}/services/default/split", s.data), "{v}");
    for _ in 0..20 {
        assert_eq!(call(tag_url).await["message"], "v2", "the tag URL always answers with its revision");
    }
    // Any client on the machine reaches both URLs: Python's requests (no `.localhost` special case).
    let py = "import sys\ntry:\n    import requests\n    get = lambda u: requests.get(u, timeout=10).json()['message']\n    how = 'requests'\nexcept ImportError:\n    import json, urllib.request\n    get = lambda u: json.load(urllib.request.urlopen(u, timeout=10))['message']\n    how = 'urllib'\nprint(how, get(sys.argv[1]), get(sys.argv[2]))\n";
    let svc_url = v["status"]["url"].as_str().unwrap().to_string();
    let out = std::process::Command::new("python3").args(["-c", py, &svc_url, tag_url]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = said.split_whitespace().collect();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(matches!(words.get(1), Some(&"v1" | &"v2")) && words.get(2) == Some(&"v2"), "{said}");

    let mut counts: HashMap<String, u32> = HashMap::new();
    let url = format!("{}/services/default/split", s.data);
    for _ in 0..1000 {
        *counts.entry(call(&url).await["message"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let (a, b) = (counts["v1"], counts["v2"]);
    assert!((760..=840).contains(&a) && a + b == 1000, "80/20 split off: {counts:?}");

    // Host-based routing still works (curl and browsers resolve *.localhost).
    let host = format!("canary-split.default.localhost:{}", s.data.rsplit(':').next().unwrap());
    for _ in 0..20 {
        let r = client().get(format!("{}/", s.data)).header("host", &host).send().await.unwrap();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["message"], "v2", "the tag always answers with its revision");
    }
    // The service URL by Host header follows the split.
    let r = client()
        .get(format!("{}/x", s.data))
        .header("host", format!("split.default.localhost:{}", host.rsplit(':').next().unwrap()));
    let v: Value = serde_json::from_str(&r.send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(v["path"], "/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_delivers_to_a_service_from_zero() {
    let sink = Sink::start().await;
    let (_d, s) = start();
    let svc = service("consumer", &[], "", &[("FORWARD_TO", &sink.url)]);
    let trig = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-svc\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: consumer\n";
    s.apply_ok(&[broker("default", ""), svc, trig.to_string()].join("---\n")).await;
    let t = s.get("triggers", "default", "to-svc").await;
    assert!(t["status"]["subscriberUri"].as_str().unwrap().ends_with("/services/default/consumer"), "{t}");
    let rev = revision(&s, "consumer-00001").await;
    assert_eq!(scale(&rev["status"], "actualScale"), 0, "starts at zero: {rev}");
    for i in 0..5 {
        assert_eq!(send(&s.broker_url("default", "default"), &format!("e{i}"), "t", "{}").await, 202);
    }
    sink.wait_for(5).await;
    let ids: HashSet<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_replaced_and_stopping_spate_leaves_no_process() {
    let (_d, mut s) = start();
    s.apply_ok(&service("tough", &[("autoscaling.knative.dev/min-scale", "1")], "", &[])).await;
    let url = format!("{}/services/default/tough", s.data);
    let first = call(&url).await["pid"].as_u64().unwrap();
    // SAFETY: signalling a process this test started (through spate).
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let st = wait_revision(&s, "tough-00001", "a replacement", |st| {
        scale(st, "restarts") >= 1 && scale(st, "actualScale") == 1
    })
    .await;
    assert!(st["status"]["lastError"].as_str().unwrap().contains("exited"), "{st}");
    let second = call(&url).await["pid"].as_u64().unwrap();
    assert_ne!(first, second);
    let logs = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["logs", "service/tough", "--server", &s.admin])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.matches("fn listening on").count() >= 2, "both instances' output is kept:\n{text}");
    assert!(text.contains("exited"), "the crash is in the log:\n{text}");
    s.terminate();
    assert!(gone_soon(second).await, "instance {second} outlived spate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_next_start_reaps_what_survived() {
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &["--grace-seconds", "2"]);
    // A shell that starts the function as its child: the grandchild survives the shell's PDEATHSIG.
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: nested\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n    spec:\n      containers:\n        - command: [sh, -c, \"python3 {} & wait\"]\n",
        fn_py()
    );
    s.apply_ok(&yaml).await;
    let pid = call(&format!("{}/services/default/nested", s.data)).await["pid"].as_u64().unwrap();
    s.kill();
    let mut s = Server::start(dir.path(), &["--grace-seconds", "2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} from the killed spate still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The service itself comes back.
    let again = call(&format!("{}/services/default/nested", s.data)).await["pid"].as_u64().unwrap();
    assert_ne!(again, pid);
    s.terminate();
    assert!(gone_soon(again).await, "process {again} (a grandchild of the instance) outlived spate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_cannot_run_are_not_ready_and_say_why() {
    let (_d, s) = start();
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  template:\n    spec:\n      containers:\n        - command: [no-such-program-xyz]\n";
    let image = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: img\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/knative/helloworld-go:latest\n";
    s.apply_ok(&[bad, image].join("---\n")).await;
    let v = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/services/bad").await;
    let ready = &v["status"]["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("CommandNotFound")), "{v}");
    assert!(ready["message"].as_str().unwrap().contains("no-such-program-xyz"), "{v}");
    let r = client().get(format!("{}/services/default/bad", s.data)).send().await.unwrap();
    assert_eq!(r.status(), 503, "a request to a service that cannot start is refused, not hung");

    let v = s.admin_json("/apis/serving.knative.dev/v1/namespaces/default/services/img").await;
    if spate_process::container_engine().is_err() {
        let ready = &v["status"]["conditions"][0];
        assert_eq!(ready["reason"], "ContainerEngineMissing", "{v}");
        assert!(ready["message"].as_str().unwrap().contains("ghcr.io/knative/helloworld-go"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_example_makes_a_thumbnail_from_an_object_event() {
    let sink = Sink::start().await;
    let (_d, s) = start();
    let root = format!("{}/../../", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{root}examples/serving.yaml");
    let yaml =
        std::fs::read_to_string(&path).unwrap().replace("examples/functions/", &format!("{root}examples/functions/"));
    let tap = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: tap\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.thumbnail.created\n  subscriber:\n    uri: {}\n",
        sink.url
    );
    s.apply_ok(&format!("{yaml}\n---\n{tap}")).await;
    let bucket = tempdir();
    let (w, h) = (100usize, 60usize);
    let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
    ppm.extend((0..w * h).flat_map(|i| [(i % 256) as u8, 0, 255]));
    std::fs::write(bucket.path().join("img.ppm"), ppm).unwrap();
    let data = format!(r#"{{"bucket":"{}","key":"img.ppm"}}"#, bucket.path().display());
    assert_eq!(
        send_as(&s.broker_url("default", "default"), "o1", "com.example.object.created", "application/json", &data)
            .await,
        202
    );
    let got = sink.wait_for(1).await;
    let v: Value = serde_json::from_slice(got[0].event.data.as_deref().unwrap()).unwrap();
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(25), Some(15)),
        "100x60 fits 32 px by a factor of 4: {v}"
    );
    let thumb = std::fs::read(bucket.path().join("thumbnails/img.ppm")).unwrap();
    assert!(thumb.starts_with(b"P6\n25 15\n255\n") && thumb.len() == 13 + 25 * 15 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_scales_on_the_backlog_of_the_triggers_that_feed_it() {
    let sink = Sink::start().await;
    let (_d, s) = start();
    let ann = [
        ("spate.dev/scale-metric", "backlog"),
        ("spate.dev/target-backlog", "10"),
        ("autoscaling.knative.dev/max-scale", "4"),
    ];
    let svc = service("worker", &ann, "", &[("FORWARD_TO", &sink.url), ("EVENT_SLEEP_MS", "30")]);
    // One event in flight: by concurrency alone one instance would do.
    let trig = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: work\n  annotations:\n    spate.dev/max-in-flight: \"1\"\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: worker\n";
    s.apply_ok(&[broker("default", ""), svc, trig.to_string()].join("---\n")).await;
    for i in 0..150 {
        assert_eq!(send(&s.broker_url("default", "default"), &format!("w{i}"), "t", "{}").await, 202);
    }
    let st = wait_revision(&s, "worker-00001", "scale-out on backlog", |st| scale(st, "actualScale") >= 3).await;
    assert!(scale(&st["status"], "desiredScale") <= 4, "{st}");
    sink.wait_for(150).await;
    wait_revision(&s, "worker-00001", "scale to zero once drained", |st| scale(st, "actualScale") == 0).await;
}
