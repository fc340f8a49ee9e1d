//! The Kubernetes API with real clients: the machine's kubectl (1.32) and the
//! `kubernetes` Python client, against a real `spate serve`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// kubectl on the PATH, or why the test cannot run (a failure under CI).
fn kubectl_available() -> bool {
    let ok = Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").is_err(), "kubectl is not on the PATH (CI must provide it)");
        eprintln!("skipped: kubectl is not on the PATH");
    }
    ok
}

/// kubectl with its own kubeconfig (from `spate kubeconfig`) and discovery cache.
struct Kubectl {
    config: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn new(dir: &Path, server: &str, extra: &[&str]) -> Kubectl {
        let out = Command::new(BIN).args(["kubeconfig", "--server", server]).args(extra).output().unwrap();
        assert!(out.status.success(), "spate kubeconfig: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("kubeconfig");
        std::fs::write(&config, &out.stdout).unwrap();
        Kubectl { config, cache: dir.join("kube-cache") }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.config).env("KUBECACHEDIR", &self.cache).arg("--request-timeout=30s").args(args);
        c
    }

    /// Runs kubectl: (succeeded, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().expect("kubectl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        eprintln!("$ kubectl {}\n{text}", args.join(" "));
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }
}

fn manifest(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn pipeline(sink: &str, ty: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n---\n\
         apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: b\n  filter:\n    attributes:\n      type: {ty}\n  subscriber:\n    uri: {sink}\n---\n\
         apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  steps:\n    - uri: {sink}\n---\n\
         apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: ping\nspec:\n  schedule: \"0 0 1 1 *\"\n  data: '{{}}'\n  sink:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: b\n---\n\
         apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: fn\nspec:\n  template:\n    spec:\n      containers:\n        - command: [python3, -c, 'import time; time.sleep(3600)']\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_waits_lists_describes_explains_and_deletes() {
    if !kubectl_available() {
        return;
    }
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), &[]);
    let k = Kubectl::new(dir.path(), &s.admin, &[]);
    let sink = Sink::start().await;
    let file = manifest(dir.path(), "m.yaml", &pipeline(&sink.url, "a"));
    let out = k.ok(&["apply", "-f", &file]);
    for what in [
        "broker.eventing.knative.dev/b",
        "trigger.eventing.knative.dev/t",
        "sequence.flows.knative.dev/seq",
        "pingsource.sources.knative.dev/ping",
        "service.serving.knative.dev/fn",
    ] {
        assert!(out.contains(&format!("{what} created")), "{out}");
    }
    let again = k.ok(&["apply", "-f", &file]);
    assert_eq!(again.matches("unchanged").count(), 5, "{again}");
    // A changed filter: configured, and in effect for the next event.
    let file = manifest(dir.path(), "m.yaml", &pipeline(&sink.url, "b"));
    let changed = k.ok(&["apply", "-f", &file]);
    assert!(changed.contains("trigger.eventing.knative.dev/t configured"), "{changed}");
    assert_eq!(changed.matches("unchanged").count(), 4, "{changed}");
    k.ok(&["wait", "--for=condition=Ready", "trigger/t", "broker/b", "--timeout=60s"]);
    assert_eq!(send(&s.broker_url("default", "b"), "e-a", "a", "{}").await, 202);
    assert_eq!(send(&s.broker_url("default", "b"), "e-b", "b", "{}").await, 202);
    let got = sink.wait_for_id("e-b").await;
    assert!(got.iter().all(|r| r.event.id != "e-a"), "the old filter no longer applies");

    let brokers = k.ok(&["get", "brokers"]);
    let header: Vec<&str> = brokers.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "URL", "AGE", "READY", "REASON"], "{brokers}");
    assert!(brokers.lines().nth(1).unwrap().split_whitespace().any(|c| c == "True"), "{brokers}");
    let children = k.ok(&["get", "imc,sub"]);
    assert!(children.contains("inmemorychannel.messaging.knative.dev/seq-kn-sequence-0"), "{children}");
    assert!(children.contains("subscription.messaging.knative.dev/seq-kn-sequence-0"), "{children}");
    let owned = k.ok(&["get", "imc", "seq-kn-sequence-0", "-o", "json"]);
    let owned: serde_json::Value = serde_json::from_str(&owned).unwrap();
    assert_eq!(owned["metadata"]["ownerReferences"][0]["kind"], "Sequence", "{owned}");
    assert!(owned["metadata"]["creationTimestamp"].is_string(), "a flow's channel has its owner's age: {owned}");
    let all = k.ok(&["get", "all", "-A"]);
    for what in [
        "NAMESPACE",
        "broker.eventing.knative.dev/b",
        "trigger.eventing.knative.dev/t",
        "service.serving.knative.dev/fn",
        "pingsource.sources.knative.dev/ping",
    ] {
        assert!(all.contains(what), "get all -A lacks {what}:\n{all}");
    }
    assert!(k.ok(&["get", "ksvc"]).contains("fn"), "short names resolve through discovery");
    // kn finds source kinds by their CRDs' labels.
    let crds = k.ok(&["get", "crd", "-l", "duck.knative.dev/source=true", "-o", "name"]);
    assert!(crds.contains("pingsources.sources.knative.dev"), "{crds}");
    assert!(!crds.contains("brokers.eventing.knative.dev"), "{crds}");
    let described = k.ok(&["describe", "trigger", "t"]);
    assert!(described.contains("Conditions:") && described.contains("SubscriberResolved"), "{described}");
    assert!(described.contains("Events:") && described.contains("Ready is now True"), "{described}");
    let explained = k.ok(&["explain", "triggers.spec.subscriber"]);
    assert!(explained.contains("Subscriber is the addressable"), "{explained}");
    assert!(explained.contains("uri"), "{explained}");

    k.ok(&["delete", "-f", &file]);
    let (found, text) = k.run(&["get", "trigger", "t"]);
    assert!(!found && text.contains("NotFound"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_namespaces_server_side_apply_and_refusals() {
    if !kubectl_available() {
        return;
    }
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), &[]);
    let k = Kubectl::new(dir.path(), &s.admin, &[]);
    let trigger = |name: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:9/x\n"
        )
    };
    // `get -w` prints a trigger applied while it watches.
    let mut watch = k.command(&["get", "triggers", "-w"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The watch has listed (an empty list prints a notice on stderr); give it the list first.
    let first = manifest(dir.path(), "first.yaml", &trigger("first"));
    k.ok(&["apply", "-f", &first]);
    let seen = |name: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(name) => return,
                Ok(_) => {}
                Err(_) => panic!("kubectl get -w never printed {name}"),
            }
        }
    };
    seen("first");
    let meanwhile = manifest(dir.path(), "meanwhile.yaml", &trigger("meanwhile"));
    k.ok(&["apply", "-f", &meanwhile]);
    seen("meanwhile");
    let _ = watch.kill();
    let _ = watch.wait();

    // A namespace, then server-side apply into it.
    k.ok(&["create", "namespace", "team"]);
    assert!(k.ok(&["get", "namespaces"]).contains("team"));
    let b = manifest(
        dir.path(),
        "b.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: team-broker\n",
    );
    let out = k.ok(&["apply", "--server-side", "-n", "team", "-f", &b]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert!(k.ok(&["get", "brokers", "-n", "team"]).contains("team-broker"));
    // Server-side apply removes what the manager no longer applies.
    let t = |filter: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: ssa\nspec:\n  broker: team-broker\n{filter}  subscriber:\n    uri: http://127.0.0.1:9/x\n"
        )
    };
    let ssa = manifest(dir.path(), "ssa.yaml", &t("  filter:\n    attributes:\n      type: a\n"));
    k.ok(&["apply", "--server-side", "-n", "team", "-f", &ssa]);
    let got: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "trigger", "ssa", "-n", "team", "-o", "json"])).unwrap();
    assert_eq!(got["spec"]["filter"]["attributes"]["type"], "a", "{got}");
    let ssa = manifest(dir.path(), "ssa.yaml", &t(""));
    k.ok(&["apply", "--server-side", "-n", "team", "-f", &ssa]);
    let got: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "trigger", "ssa", "-n", "team", "-o", "json"])).unwrap();
    assert!(got["spec"].get("filter").is_none(), "the dropped filter is removed: {got}");
    // Deleting the namespace deletes what it holds.
    k.ok(&["delete", "namespace", "team"]);
    let (found, text) = k.run(&["get", "broker", "team-broker", "-n", "team"]);
    assert!(!found && text.contains("NotFound"), "{text}");

    // An invalid trigger is refused with the field named, and nothing is stored.
    let bad = manifest(
        dir.path(),
        "bad.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  broker: default\n  filters:\n    - cesql: \"type = = 'x'\"\n  subscriber:\n    uri: http://127.0.0.1:9/x\n",
    );
    let (ok, text) = k.run(&["apply", "-f", &bad]);
    assert!(!ok && text.contains("spec.filters[0].cesql"), "{text}");
    let (found, text) = k.run(&["get", "trigger", "bad"]);
    assert!(!found && text.contains("NotFound"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_over_https_with_the_token_from_spate_kubeconfig() {
    if !kubectl_available() {
        return;
    }
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "admin-ca");
    let (cert, key) = ca.leaf("admin");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "kubectl-token-0123456789\n").unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--admin-tls-cert",
            cert.to_str().unwrap(),
            "--admin-tls-key",
            key.to_str().unwrap(),
            "--admin-token-file",
            tokens.to_str().unwrap(),
        ],
    );
    assert!(s.admin.starts_with("https://"));
    let ca_file = ca.cert.to_str().unwrap().to_string();
    let with = Kubectl::new(
        &dir.path().join("with"),
        &s.admin,
        &["--token", "kubectl-token-0123456789", "--ca-file", &ca_file],
    );
    let b = manifest(
        dir.path(),
        "b.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: secure\n",
    );
    assert!(with.ok(&["apply", "-f", &b]).contains("created"));
    assert!(with.ok(&["get", "brokers"]).contains("secure"));
    // kubectl prompts for a username when its user has no credentials at all: a wrong token instead.
    let wrong =
        Kubectl::new(&dir.path().join("wrong"), &s.admin, &["--token", "not-the-token-at-all", "--ca-file", &ca_file]);
    let (ok, text) = wrong.run(&["get", "brokers"]);
    // kubectl words a 401 as "You must be logged in to the server (Unauthorized)" or as below.
    assert!(!ok && (text.contains("Unauthorized") || text.contains("provide credentials")), "{text}");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = trusting.get(format!("{}/apis/eventing.knative.dev/v1/brokers", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("Unauthorized")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_discovers_creates_patches_conflicts_watches_and_deletes() {
    let has_client =
        Command::new("python3").args(["-c", "import kubernetes"]).output().is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(std::env::var("CI").is_err(), "the kubernetes Python client is not installed (CI installs it)");
        eprintln!("skipped: pip install kubernetes");
        return;
    }
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube_client.py");
    let out = Command::new("python3").arg(script).arg(&s.admin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    for step in ["discovery ok", "created", "patched", "stale replace 409", "watch ADDED MODIFIED DELETED"] {
        assert!(text.contains(step), "missing '{step}':\n{text}");
    }
}

/// Bad input gets a Kubernetes `Status` with the right code and reason, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_status_and_change_nothing() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), &[]);
    let base = format!("{}/apis/eventing.knative.dev/v1/namespaces/default/triggers", s.admin);
    let trigger = serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "t"}, "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"}}});
    let r = client().post(&base).json(&trigger).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let before = s.admin_json("/apis/eventing.knative.dev/v1/namespaces/default/triggers/t").await;
    let call = |method: reqwest::Method, url: String, ty: &str, body: String| {
        client().request(method, url).header("content-type", ty).body(body).send()
    };
    let status = |r: reqwest::Response| async move {
        let code = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(v["kind"], "Status", "{v}");
        (code, v["reason"].as_str().unwrap_or("").to_string(), v["message"].as_str().unwrap_or("").to_string())
    };
    let get = reqwest::Method::GET;
    // Unknown group, version or kind: 404 naming it.
    for path in [
        "/apis/nope.dev/v1/namespaces/default/things",
        "/apis/eventing.knative.dev/v9/brokers",
        "/apis/eventing.knative.dev/v1/widgets",
    ] {
        let (code, reason, message) =
            status(call(get.clone(), format!("{}{path}", s.admin), "", String::new()).await.unwrap()).await;
        assert_eq!((code, reason.as_str()), (404, "NotFound"), "{path}: {message}");
        assert!(message.contains("nope.dev") || message.contains("v9") || message.contains("widgets"), "{message}");
    }
    // A body whose kind does not match the path: 400.
    let broker = r#"{"apiVersion":"eventing.knative.dev/v1","kind":"Broker","metadata":{"name":"x"}}"#;
    let (code, reason, _) =
        status(call(reqwest::Method::POST, base.clone(), "application/json", broker.into()).await.unwrap()).await;
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    // Creating what exists: 409 AlreadyExists.
    let (code, reason, message) =
        status(call(reqwest::Method::POST, base.clone(), "application/json", trigger.to_string()).await.unwrap()).await;
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"), "{message}");
    assert!(message.contains(r#"triggers.eventing.knative.dev "t" already exists"#), "{message}");
    // A patch that does not parse: 400 with the reason; strategic merge patch: 415.
    let item = format!("{base}/t");
    let (code, _, message) = status(
        call(reqwest::Method::PATCH, item.clone(), "application/merge-patch+json", "{nope".into()).await.unwrap(),
    )
    .await;
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("merge patch is not JSON"), "{message}");
    let (code, reason, _) = status(
        call(reqwest::Method::PATCH, item.clone(), "application/strategic-merge-patch+json", "{}".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    // A replace without a resourceVersion: 422 naming the field; with a stale one: 409 Conflict.
    let (code, reason, message) =
        status(call(reqwest::Method::PUT, item.clone(), "application/json", trigger.to_string()).await.unwrap()).await;
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("metadata.resourceVersion"), "{message}");
    let mut newer = before.clone();
    newer["spec"]["subscriber"]["uri"] = "http://127.0.0.1:9/newer".into();
    let r = call(reqwest::Method::PUT, item.clone(), "application/json", newer.to_string()).await.unwrap();
    assert_eq!(r.status(), 200, "a replace at the current version");
    let mut stale = before.clone();
    stale["spec"]["subscriber"]["uri"] = "http://127.0.0.1:9/stale".into();
    let (code, reason, _) =
        status(call(reqwest::Method::PUT, item.clone(), "application/json", stale.to_string()).await.unwrap()).await;
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    // A watch from a malformed version: 400.
    let (code, _, _) =
        status(call(get.clone(), format!("{base}?watch=1&resourceVersion=abc"), "", String::new()).await.unwrap())
            .await;
    assert_eq!(code, 400);
    // The status subresource is the reconcilers': clients cannot write it.
    let (code, _, _) = status(
        call(reqwest::Method::PUT, format!("{item}/status"), "application/json", newer.to_string()).await.unwrap(),
    )
    .await;
    assert_eq!(code, 405);
    // An oversized body: 413.
    let huge = format!(
        r#"{{"apiVersion":"eventing.knative.dev/v1","kind":"Trigger","metadata":{{"name":"h","annotations":{{"a":"{}"}}}}}}"#,
        "x".repeat(4 << 20)
    );
    let r = call(reqwest::Method::POST, base.clone(), "application/json", huge).await.unwrap();
    assert_eq!(r.status(), 413);
    // fieldValidation: Strict refuses an unknown field (400), Warn (the default) drops it with a
    // Warning header, Ignore drops it silently.
    let typo = |name: &str| {
        serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": name},
            "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"}, "filtr": {}}})
    };
    let (code, reason, message) = status(
        call(
            reqwest::Method::POST,
            format!("{base}?fieldValidation=Strict"),
            "application/json",
            typo("s").to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{message}");
    assert!(message.contains(r#"strict decoding error: unknown field "spec.filtr""#), "{message}");
    let r = call(reqwest::Method::POST, base.clone(), "application/json", typo("w").to_string()).await.unwrap();
    assert_eq!(r.status(), 201);
    let warning = r.headers().get("warning").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(warning.starts_with("299 - ") && warning.contains("spec.filtr"), "{warning}");
    let created: serde_json::Value = r.json().await.unwrap();
    assert!(created["spec"].get("filtr").is_none(), "{created}");
    let r = call(
        reqwest::Method::POST,
        format!("{base}?fieldValidation=Ignore"),
        "application/json",
        typo("i").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("warning").is_none());
    for n in ["w", "i"] {
        assert_eq!(client().delete(format!("{base}/{n}")).send().await.unwrap().status(), 200);
    }
    // None of them changed the stored trigger but the one good replace.
    let after = s.admin_json("/apis/eventing.knative.dev/v1/namespaces/default/triggers/t").await;
    assert_eq!(after["spec"]["subscriber"]["uri"], "http://127.0.0.1:9/newer", "{after}");
    assert_eq!(after["metadata"]["generation"], 2, "{after}");
    let list = s.admin_json("/apis/eventing.knative.dev/v1/triggers").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
}

/// EventType is served in v1beta3 (stored), v1beta2 and v1beta1 (spec.type, spec.source,
/// spec.schema), converted both ways; kubectl prints each version's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_are_served_in_every_version_knative_serves() {
    let dir = tempdir();
    let s = Server::start(&dir.path().join("data"), &[]);
    let old = serde_json::json!({"apiVersion": "eventing.knative.dev/v1beta2", "kind": "EventType",
        "metadata": {"name": "orders"}, "spec": {"type": "order.created", "source": "/shop",
        "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}});
    let base = |v: &str| format!("{}/apis/eventing.knative.dev/{v}/namespaces/default/eventtypes", s.admin);
    let r = client().post(base("v1beta2")).json(&old).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (created["apiVersion"].as_str(), &created["spec"]["type"]),
        (Some("eventing.knative.dev/v1beta2"), &old["spec"]["type"])
    );
    let stored = s.admin_json("/apis/eventing.knative.dev/v1beta3/namespaces/default/eventtypes/orders").await;
    let attrs = stored["spec"]["attributes"].as_array().unwrap();
    assert!(attrs.iter().any(|a| a["name"] == "type" && a["value"] == "order.created"), "{stored}");
    let v1beta1 = s.admin_json("/apis/eventing.knative.dev/v1beta1/namespaces/default/eventtypes/orders").await;
    assert_eq!(v1beta1["spec"]["source"], "/shop", "{v1beta1}");
    if !kubectl_available() {
        return;
    }
    let k = Kubectl::new(dir.path(), &s.admin, &[]);
    let table = k.ok(&["get", "eventtypes.v1beta2.eventing.knative.dev"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], ["NAME", "TYPE", "SOURCE", "SCHEMA"], "{table}");
    assert!(table.contains("order.created"), "{table}");
}
