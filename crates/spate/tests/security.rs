//! The admin API against a real server: bearer tokens, browser contexts
//! refused even on loopback, and no unauthenticated admin API on a network.

mod common;

use common::*;

const TOKEN: &str = "s3cr3t-admin-token-for-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_the_cli_sends_spate_token() {
    let dir = tempdir();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, format!("# operators\n{TOKEN}\n")).unwrap();
    let s = Server::start(&dir.path().join("data"), &["--admin-token-file", tokens.to_str().unwrap()]);
    let brokers = format!("{}/apis/eventing.knative.dev/v1/namespaces/default/brokers", s.admin);

    let r = client().get(&brokers).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = client().get(&brokers).bearer_auth("not-the-token-at-all").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client().get(&brokers).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client().get(format!("{}/healthz", s.admin)).send().await.unwrap().status(), 200, "probes stay open");
    let apply = |token: Option<&str>| {
        let mut r = client()
            .post(format!("{}/apply", s.admin))
            .header("content-type", "application/yaml")
            .body("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(apply(None).await.unwrap().status(), 401, "no resource without the token");
    assert_eq!(apply(Some(TOKEN)).await.unwrap().status(), 200);

    // The CLI: refused without the token, listed with SPATE_TOKEN or --token.
    let cli = |env: Option<&str>, flag: Option<&str>| {
        let mut c = std::process::Command::new(BIN);
        c.args(["get", "brokers", "--server", &s.admin, "-o", "json"]).env_remove("SPATE_TOKEN");
        if let Some(t) = env {
            c.env("SPATE_TOKEN", t);
        }
        if let Some(t) = flag {
            c.args(["--token", t]);
        }
        c.output().unwrap()
    };
    let out = cli(None, None);
    assert!(!out.status.success(), "refused without a token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401") || String::from_utf8_lossy(&out.stderr).contains("token")
    );
    for out in [cli(Some(TOKEN), None), cli(None, Some(TOKEN))] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "b", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_apply_even_on_loopback() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let script = dir.path().join("pwned");
    let manifest = format!(
        "apiVersion: sources.knative.dev/v1\nkind: ContainerSource\nmetadata: {{name: x}}\nspec:\n  template:\n    spec:\n      containers:\n        - image: sh\n          command: [/bin/sh, -c, 'touch {}']\n  sink:\n    uri: http://127.0.0.1:9/\n",
        script.display()
    );
    let post = |ct: Option<&'static str>, origin: Option<&'static str>, host: Option<&'static str>| {
        let mut r = client().post(format!("{}/apply", s.admin)).body(manifest.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.send()
    };
    // What a cross-site page can send without a preflight: text/plain, a form, a typeless Blob.
    let plain = post(Some("text/plain;charset=UTF-8"), Some("http://evil.example"), None).await.unwrap();
    assert_eq!(plain.status(), 403);
    assert!(plain.text().await.unwrap().contains("cross-origin"));
    assert_eq!(post(Some("text/plain"), None, None).await.unwrap().status(), 415);
    assert_eq!(post(Some("application/x-www-form-urlencoded"), None, None).await.unwrap().status(), 415);
    assert_eq!(post(None, None, None).await.unwrap().status(), 415);
    // DNS rebinding: the attacker's name resolves to 127.0.0.1.
    assert_eq!(post(Some("application/yaml"), None, Some("evil.example:8081")).await.unwrap().status(), 403);
    let v = s.admin_json("/apis/sources.knative.dev/v1/namespaces/default/containersources").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "nothing was applied: {v}");
    assert!(!script.exists());
}

#[test]
fn serve_refuses_an_open_admin_api_on_the_network() {
    let dir = tempdir();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token-file") && err.contains("loopback"), "{err}");
}

#[test]
fn validate_applies_kubernetes_name_rules_with_field_paths() {
    let dir = tempdir();
    let file = dir.path().join("names.yaml");
    std::fs::write(
        &file,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: Bad_Name}\n---\n\
         apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b, namespace: ../etc}\n---\n\
         apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: orders.v1}\n\
         spec: {broker: default, subscriber: {uri: 'http://127.0.0.1:9/'}}\n---\n\
         apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: 1abc}\n\
         spec: {template: {spec: {containers: [{image: x, command: [/bin/true]}]}}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["validate", "-f"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("metadata.name: 'Bad_Name'"), "{text}");
    assert!(text.contains("metadata.namespace: '../etc'"), "{text}");
    assert!(text.contains("metadata.name: '1abc'") && text.contains("DNS-1035"), "{text}");
    assert!(!text.contains("orders.v1"), "the dotted Trigger is valid: {text}");
}

/// `CACerts` as a YAML block scalar under `indent` spaces.
fn cacerts_yaml(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let body: String = pem.lines().map(|l| format!("{pad}  {l}\n")).collect();
    format!("{pad}CACerts: |\n{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_ingress_and_https_subscribers_trusted_through_cacerts() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "ours");
    let other = TestCa::new(dir.path(), "theirs");
    let (spate_cert, spate_key) = ca.leaf("spate");
    let (good_cert, good_key) = ca.leaf("good");
    let (bad_cert, bad_key) = other.leaf("bad");
    let good = Sink::start_tls(&good_cert, &good_key).await;
    let bad = Sink::start_tls(&bad_cert, &bad_key).await;
    let s = Server::start(
        &dir.path().join("data"),
        &["--tls-cert", spate_cert.to_str().unwrap(), "--tls-key", spate_key.to_str().unwrap()],
    );
    assert!(s.data.starts_with("https://"), "published addresses are https: {}", s.data);
    let sub = |uri: &str| format!("  subscriber:\n    uri: {uri}\n{}", cacerts_yaml(&ca.pem(), 4));
    let yaml = [
        broker("default", ""),
        broker("second", ""),
        // Trusted only through CACerts (the system roots do not know this CA).
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: trusted}}\nspec:\n  broker: default\n  filter: {{attributes: {{type: direct}}}}\n{}",
            sub(&good.url)
        ),
        // The wrong CA for that subscriber: every attempt fails, then the event is dropped.
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: untrusted}}\nspec:\n  broker: default\n  filter: {{attributes: {{type: direct}}}}\n  delivery: {{retry: 0}}\n{}",
            sub(&bad.url)
        ),
        // Spate's own https address: a Trigger to another Broker, then to the subscriber.
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: hop}\nspec:\n  broker: default\n  filter: {attributes: {type: hop}}\n  subscriber:\n    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: second}\n".to_string(),
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: after-hop}}\nspec:\n  broker: second\n{}",
            sub(&good.url)
        ),
    ]
    .join("---\n");
    s.apply_ok(&yaml).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    for (id, ty) in [("e1", "direct"), ("e2", "hop")] {
        let r = https
            .post(s.broker_url("default", "default"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/tls")
            .header("ce-type", ty)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let got = good
        .wait_until("e1 directly and e2 through the second broker", |g| {
            g.iter().any(|r| r.event.id == "e1") && g.iter().any(|r| r.event.id == "e2")
        })
        .await;
    assert_eq!(got.iter().filter(|r| r.event.id == "e1").count(), 1);
    // The untrusted subscriber never saw the event; the log says why.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = s.log.lock().unwrap().join("\n");
        if log.contains("untrusted") && log.contains("event dropped") {
            assert!(log.to_lowercase().contains("certificate"), "the reason names the certificate: {log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no dropped-event line in the log:\n{log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bad.count(), 0);
}

#[test]
fn admission_refuses_unusable_destinations() {
    let dir = tempdir();
    let file = dir.path().join("d.yaml");
    std::fs::write(
        &file,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: default\n  subscriber:\n    uri: ftp://example.com/x\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: u}\nspec:\n  broker: default\n  subscriber:\n    uri: https://example.com/x\n    CACerts: not a certificate\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["validate", "-f"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("spec.subscriber.uri: 'ftp://example.com/x'"), "{text}");
    assert!(text.contains("spec.subscriber.CACerts: holds no PEM certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_certificate_is_reloaded_when_its_files_change() {
    let dir = tempdir();
    let (first, second) = (TestCa::new(dir.path(), "first"), TestCa::new(dir.path(), "second"));
    let (cert, key) = first.leaf("admin");
    let s = Server::start(
        &dir.path().join("data"),
        &["--admin-tls-cert", cert.to_str().unwrap(), "--admin-tls-key", key.to_str().unwrap()],
    );
    assert!(s.admin.starts_with("https://"), "{}", s.admin);
    // No pooled connections: every request makes a new handshake.
    let trusting = |ca: &TestCa| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let (by_first, by_second) = (trusting(&first), trusting(&second));
    let health = format!("{}/healthz", s.admin);
    assert_eq!(by_first.get(&health).send().await.unwrap().status(), 200);
    assert!(by_second.get(&health).send().await.is_err(), "the second CA is not trusted yet");
    // Replace the pair in place (a renewal), key first.
    let (new_cert, new_key) = second.leaf("renewed");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while by_second.get(&health).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A new client (no TLS session to resume) no longer accepts what is served.
    assert!(trusting(&first).get(&health).send().await.is_err(), "the old certificate is no longer served");
}

/// A nats-server with JetStream that speaks only TLS, on a free port; killed on drop.
struct TlsNats {
    child: std::process::Child,
    url: String,
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_nats(dir: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Option<TlsNats> {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(std::env::var_os("CI").is_none(), "CI needs nats-server for the TLS test");
        eprintln!("skipping: no nats-server binary");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            dir.join("js").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args(["-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the TLS nats-server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(TlsNats { child, url: format!("tls://127.0.0.1:{port}") })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_broker_over_tls_verified_by_the_nats_ca_file() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "nats");
    let (cert, key) = ca.leaf("nats-server");
    let Some(nats) = tls_nats(dir.path(), &cert, &key) else { return };
    let sink = Sink::start().await;
    let args = [
        "--default-broker-class",
        "NatsJetStreamBroker",
        "--nats-url",
        &nats.url,
        "--nats-ca-file",
        ca.cert.to_str().unwrap(),
        "--cluster-name",
        "tls",
    ];
    let s = Server::start(&dir.path().join("data"), &args);
    s.apply_ok(&(broker("default", "") + "---\n" + &trigger("all", "default", "", &sink.url, ""))).await;
    assert_eq!(send(&s.broker_url("default", "default"), "over-tls", "t", "x").await, 202);
    assert_eq!(sink.wait_for(1).await[0].event.id, "over-tls");
    drop(s);

    // Without the CA the server's certificate is not trusted: no connection, so ingress says 503.
    let without_ca = [&args[..4], &args[6..]].concat();
    let s = Server::start(&dir.path().join("data2"), &without_ca);
    s.apply_ok(&broker("b", "")).await;
    assert_eq!(send(&s.broker_url("default", "b"), "untrusted", "t", "x").await, 503);
}
