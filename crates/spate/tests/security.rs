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

/// An OIDC issuer for tests: a P-256 key, its JWKS file, and tokens signed with it.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
    jwks: std::path::PathBuf,
}

const ISSUER: &str = "https://issuer.example";

impl Issuer {
    fn new(dir: &std::path::Path, name: &str) -> Issuer {
        use base64::Engine;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": name, "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
        let path = dir.join(format!("{name}.jwks.json"));
        std::fs::write(&path, jwks.to_string()).unwrap();
        Issuer { key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwks: path }
    }

    fn token(&self, sub: &str, aud: &str, expires_in: i64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = serde_json::json!({"iss": ISSUER, "sub": sub, "aud": aud, "iat": now, "exp": now + expires_in});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &self.key).unwrap()
    }
}

async fn post_as(url: &str, token: Option<&str>, id: &str, ty: &str) -> u16 {
    let mut r = client()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/oidc")
        .header("ce-type", ty)
        .body("x");
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_and_event_policies_guard_every_addressable() {
    let dir = tempdir();
    let issuer = Issuer::new(dir.path(), "idp");
    let stranger = Issuer::new(dir.path(), "stranger");
    let sink = Sink::start().await;
    let s = Server::start(
        &dir.path().join("data"),
        &["--oidc-issuer", ISSUER, "--oidc-jwks", issuer.jwks.to_str().unwrap()],
    );
    let appender = |m: &str| format!("{}/_spate/fn/appender?message={m}", s.data);
    let yaml = [
        broker("default", ""),
        broker("second", ""),
        trigger("direct", "default", &type_filter("direct"), &sink.url, ""),
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: hop}\nspec:\n  broker: default\n  filter: {attributes: {type: hop}}\n  subscriber:\n    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: second}\n".to_string(),
        trigger("after-hop", "second", "", &sink.url, ""),
        // A reply loop: `ask` is answered by a function whose reply re-enters the broker as `answer`.
        trigger("ask", "default", &type_filter("ask"), &format!("{}&type=answer", appender("-a")), ""),
        trigger("answers", "default", &type_filter("answer"), &sink.url, ""),
        format!(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {{name: seq}}\nspec:\n  steps:\n    - uri: \"{}\"\n    - uri: \"{}\"\n  reply:\n    uri: {}\n",
            appender("-1"),
            appender("-2"),
            sink.url
        ),
    ]
    .join("---\n");
    s.apply_ok(&yaml).await;
    let b = s.get("brokers", "default", "default").await;
    let aud = b["status"]["address"]["audience"].as_str().unwrap_or_default().to_string();
    assert_eq!(aud, "eventing.knative.dev/broker/default/default", "{b}");
    let url = s.broker_url("default", "default");
    let me = "system:serviceaccount:default:app";

    // 401: missing, badly signed, expired, wrong audience.
    assert_eq!(post_as(&url, None, "n1", "direct").await, 401);
    assert_eq!(post_as(&url, Some(&stranger.token(me, &aud, 300)), "n2", "direct").await, 401);
    assert_eq!(post_as(&url, Some(&issuer.token(me, &aud, -600)), "n3", "direct").await, 401);
    let other_aud = "eventing.knative.dev/broker/default/second";
    assert_eq!(post_as(&url, Some(&issuer.token(me, other_aud, 300)), "n4", "direct").await, 401);
    // 202 for a sender of this namespace (allow-same-namespace); 403 for another namespace's.
    assert_eq!(post_as(&url, Some(&issuer.token(me, &aud, 300)), "ok1", "direct").await, 202);
    let outsider = "system:serviceaccount:partners:feed";
    assert_eq!(post_as(&url, Some(&issuer.token(outsider, &aud, 300)), "no1", "direct").await, 403);
    // Spate's own deliveries carry their identity: a Trigger to another Broker.
    assert_eq!(post_as(&url, Some(&issuer.token(me, &aud, 300)), "hop1", "hop").await, 202);
    assert_eq!(post_as(&url, Some(&issuer.token(me, &aud, 300)), "ask1", "ask").await, 202);
    sink.wait_until("ok1 directly, hop1 through the second broker, ask1's reply", |g| {
        g.iter().any(|r| r.event.id == "ok1")
            && g.iter().any(|r| r.event.id == "hop1")
            && g.iter().any(|r| r.event.id == "ask1" && r.event.ty == "answer")
    })
    .await;
    // A Sequence: its address has its own audience; its inner channels take its steps' replies.
    let seq = s.admin_json("/apis/flows.knative.dev/v1/namespaces/default/sequences/seq").await;
    let (seq_url, seq_aud) =
        (seq["status"]["address"]["url"].as_str().unwrap(), seq["status"]["address"]["audience"].as_str().unwrap());
    assert_eq!(seq_aud, "messaging.knative.dev/inmemorychannel/default/seq-kn-sequence-0");
    assert_eq!(post_as(seq_url, Some(&issuer.token(me, seq_aud, 300)), "seq1", "t").await, 202);
    let got = sink.wait_for_id("seq1").await;
    let data = got.iter().find(|r| r.event.id == "seq1").unwrap().event.data.clone().unwrap();
    assert_eq!(&data[..], b"x-1-2", "both steps ran");

    // An EventPolicy on the broker: only the partners' feed, and only orders.
    s.apply_ok(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata: {name: partners}\nspec:\n  to:\n    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}\n  from:\n    - sub: 'system:serviceaccount:partners:*'\n  filters:\n    - exact: {type: direct}\n",
    )
    .await;
    let p = s.admin_json("/apis/eventing.knative.dev/v1alpha1/namespaces/default/eventpolicies/partners").await;
    assert_eq!(p["status"]["from"], serde_json::json!(["system:serviceaccount:partners:*"]), "{p}");
    assert_eq!(post_as(&url, Some(&issuer.token(outsider, &aud, 300)), "ok2", "direct").await, 202);
    assert_eq!(post_as(&url, Some(&issuer.token(outsider, &aud, 300)), "no2", "hop").await, 403, "filtered out");
    assert_eq!(
        post_as(&url, Some(&issuer.token(me, &aud, 300)), "no3", "direct").await,
        403,
        "not named by the policy"
    );
    sink.wait_for_id("ok2").await;
    assert!(sink.events().iter().all(|r| !r.event.id.starts_with("no") && !r.event.id.starts_with('n')));

    // The built-in helpers follow the data plane's authentication (they answered anyone before).
    let filter = format!("{}/_spate/fn/filter?cesql=type%20%3D%20'direct'", s.data);
    let display = format!("{}/_spate/display/probe", s.data);
    assert_eq!(post_as(&filter, None, "h1", "direct").await, 401);
    assert_eq!(post_as(&display, None, "h2", "direct").await, 401);
    assert_eq!(post_as(&appender("-x"), None, "h3", "direct").await, 401);
    let wrong = issuer.token(me, &aud, 300);
    assert_eq!(post_as(&filter, Some(&wrong), "h4", "direct").await, 401, "a broker's audience is not the helper's");
    let fn_token = issuer.token(me, "spate.dev/function/_spate/filter", 300);
    assert_eq!(post_as(&filter, Some(&fn_token), "h5", "direct").await, 200, "the event comes back: it matched");
    let display_token = issuer.token(me, "spate.dev/display/_spate/probe", 300);
    assert_eq!(post_as(&display, Some(&display_token), "h6", "direct").await, 202);
}
