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
