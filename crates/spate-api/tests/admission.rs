use spate_api::{AdmissionError, Compiled, Kind, admit_text, check_update};

const GOOD: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
spec:
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
    deadLetterSink:
      uri: http://127.0.0.1:9/dls
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t1
  namespace: team-a
  annotations:
    kafka.eventing.knative.dev/delivery.order: ordered
spec:
  broker: default
  filter:
    attributes:
      type: com.example.a
      myext: ""
  subscriber:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: other
    uri: /extra
  delivery:
    timeout: PT2S
    format: json
"#;

#[test]
fn valid_file_compiles() {
    let out = admit_text(GOOD).unwrap();
    assert_eq!(out.len(), 2);
    let (b, Compiled::Broker(bc)) = &out[0] else { panic!("broker first") };
    assert_eq!((b.kind, b.namespace.as_str(), b.name.as_str()), (Kind::Broker, "default", "default"));
    let d = bc.delivery.as_ref().unwrap();
    assert_eq!(d.retry, Some(3));
    assert_eq!(d.backoff_delay, Some(std::time::Duration::from_millis(500)));
    let (t, Compiled::Trigger(tc)) = &out[1] else { panic!("trigger second") };
    assert_eq!(t.namespace, "team-a");
    assert!(tc.ordered);
    let kref = tc.subscriber.kref.as_ref().unwrap();
    assert_eq!(
        (kref.kind.as_str(), kref.namespace.as_str()),
        ("Broker", "team-a"),
        "ref namespace defaults to the trigger's"
    );
    let mut ev = spate_core::CloudEvent::new("1", "/s", "com.example.a");
    assert!(!tc.filter.matches(&ev), "myext must be present");
    ev.set_extension("myext", spate_core::ExtValue::String("any".into()));
    assert!(tc.filter.matches(&ev));
}

const BAD: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: Bad_Name
spec:
  delivery:
    retry: -1
    backoffDelay: 5s
    backoffPolicy: random
  colour: blue
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t
spec:
  broker: default
  filters:
    - exact:
        type: a
      prefix:
        type: b
    - exact:
        Type: x
        source: ""
  filter:
    attributes:
      my-key: v
  subscriber:
    uri: not a url
  delivery:
    timeout: forever
---
apiVersion: eventing.knative.dev/v2
kind: Trigger
metadata:
  name: t2
"#;

#[test]
fn invalid_file_lists_every_error_with_its_path() {
    let Err(AdmissionError::Invalid(errs)) = admit_text(BAD) else { panic!("must be rejected") };
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let want = [
        ("document 1", "metadata.name: 'Bad_Name' is not a valid name"),
        ("document 1", "spec.delivery.retry: must be a whole number"),
        ("document 1", "spec.delivery.backoffDelay: '5s' is not an ISO 8601 duration"),
        ("document 1", "spec.delivery.backoffPolicy: 'random' is not one of linear, exponential"),
        ("document 1", "spec.colour: unknown field"),
        ("document 2", "spec.filters[0]: exactly one dialect per filter"),
        ("document 2", "spec.filters[1].exact.Type: invalid attribute key 'Type'"),
        ("document 2", "spec.filters[1].exact.source: empty value"),
        ("document 2", "spec.filter.attributes.my-key: invalid attribute key 'my-key'"),
        ("document 2", "spec.subscriber.uri: 'not a url' must be an absolute http"),
        ("document 2", "spec.delivery.timeout: 'forever' is not an ISO 8601 duration"),
        ("document 3", "kind: Trigger needs apiVersion eventing.knative.dev/v1"),
    ];
    for (doc, w) in want {
        assert!(
            text.iter().any(|t| t.starts_with(doc) && t.contains(w)),
            "missing '{doc} … {w}' in:\n{}",
            text.join("\n")
        );
    }
    assert_eq!(text.len(), want.len(), "unexpected extra errors:\n{}", text.join("\n"));
}

#[test]
fn syntax_and_empty_input() {
    assert!(matches!(admit_text("a: [unclosed"), Err(AdmissionError::Syntax(_))));
    assert!(matches!(admit_text("---\n"), Err(AdmissionError::Empty)));
    let Err(AdmissionError::Invalid(e)) = admit_text("kind: Widget\napiVersion: x/v1\nmetadata: {name: w}\n") else {
        panic!()
    };
    assert!(e[0].to_string().contains("unsupported kind 'Widget'"), "{}", e[0]);
}

#[test]
fn an_empty_spec_is_an_empty_map() {
    let out = admit_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\nspec:\n").unwrap();
    assert_eq!(out[0].0.manifest["spec"], serde_json::json!({}));
}

#[test]
fn duplicate_resources_in_one_file_are_rejected() {
    let doc = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n";
    let Err(AdmissionError::Invalid(e)) = admit_text(&format!("{doc}---\n{doc}")) else { panic!() };
    assert!(e[0].to_string().contains("defined twice"));
}

#[test]
fn immutable_fields() {
    let t = |broker: &str| {
        admit_text(&format!("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: {broker}\n  subscriber: {{uri: 'http://x/'}}\n")).unwrap().remove(0).0
    };
    assert!(check_update(&t("a"), &t("a")).is_empty());
    let e = check_update(&t("a"), &t("b"));
    assert!(e[0].to_string().contains("spec.broker: is immutable"), "{}", e[0]);
    let b = |class: &str| {
        admit_text(&format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: b, annotations: {{eventing.knative.dev/broker.class: {class}}}}}\n")).unwrap().remove(0).0
    };
    assert!(check_update(&b("MTChannelBasedBroker"), &b("Kafka"))[0].to_string().contains("broker class is immutable"));
}

#[test]
fn cesql_errors_are_reported_with_field_path_and_position() {
    let t = |expr: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: b\n  filters:\n    - exact: {{type: x.y}}\n    - cesql: \"{expr}\"\n  subscriber: {{uri: 'http://x/'}}\n"
        )
    };
    assert!(admit_text(&t("type = 'a' AND source LIKE 'b%'")).is_ok());
    let Err(AdmissionError::Invalid(e)) = admit_text(&t("type = 'a' AND (source")) else { panic!("must be rejected") };
    assert!(e[0].to_string().contains("spec.filters[1].cesql: CESQL syntax error at position 23"), "{}", e[0]);
    let Err(AdmissionError::Invalid(e)) = admit_text(&t("FOO(type) = 1")) else { panic!("must be rejected") };
    assert!(e[0].to_string().contains("spec.filters[1].cesql: CESQL: no function FOO()"), "{}", e[0]);
}

#[test]
fn cel_filters_compile_at_admission() {
    let t = |filters: &str| {
        admit_text(&format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: b\n  filters:\n{filters}  subscriber: {{uri: 'http://x/'}}\n"
        ))
    };
    assert!(t("    - cel: \"event.type.startsWith('live.') && data.score > 0.8\"\n").is_ok());
    let Err(AdmissionError::Invalid(e)) =
        t("    - cel: \"event.type ==\"\n    - cel: \"payload.x > 1\"\n    - cel: \"true\"\n      exact: {type: a}\n")
    else {
        panic!("must be rejected")
    };
    let text: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert!(text[0].contains("spec.filters[0].cel: CEL syntax error"), "{text:?}");
    assert!(text[1].contains("spec.filters[1].cel: CEL: unknown variable(s) payload"), "{text:?}");
    assert!(text[2].contains("spec.filters[2]: exactly one dialect per filter"), "{text:?}");
}

#[test]
fn source_and_type_is_sugar_for_exact_matches() {
    let t = |st: &str| {
        admit_text(&format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: b\n  filter:\n    sourceAndType: {st}\n  subscriber: {{uri: 'http://x/'}}\n"
        ))
    };
    let Compiled::Trigger(tc) = t("{type: com.a, source: /s}").unwrap().remove(0).1 else { panic!() };
    let mut ev = spate_core::CloudEvent::new("1", "/s", "com.a");
    assert!(tc.filter.matches(&ev));
    ev.source = "/other".into();
    assert!(!tc.filter.matches(&ev));
    let Compiled::Trigger(any) = t("{type: com.a, source: Any}").unwrap().remove(0).1 else { panic!() };
    assert!(any.filter.matches(&ev), "Any is a wildcard");
    let Err(AdmissionError::Invalid(e)) = t("{type: com.a, colour: red}") else { panic!() };
    assert!(e[0].to_string().contains("spec.filter.sourceAndType.colour: unknown field"), "{}", e[0]);
}

/// Runs `f` on a thread with a tokio worker's stack (2 MiB), where the admin API admits.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 * 1024 * 1024).spawn(f).expect("spawn").join().expect("no panic")
}

fn trigger_with(filters: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  filters:\n{filters}\n  subscriber:\n    uri: http://127.0.0.1:9/\n"
    )
}

fn invalid_paths(text: String) -> Vec<(String, String)> {
    match on_worker_stack(move || admit_text(&text).map(|_| ())) {
        Err(AdmissionError::Invalid(errs)) => errs.into_iter().map(|e| (e.path, e.message)).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

#[test]
fn hostile_expressions_are_refused_with_the_field_path() {
    let huge = vec!["type = 'x'"; 8000].join(" AND ");
    let deep = format!("{}true{}", "(".repeat(3000), ")".repeat(3000));
    let cel_deep = format!("{}true{}", "(".repeat(3000), ")".repeat(3000));
    let errs =
        invalid_paths(trigger_with(&format!("  - cesql: \"{huge}\"\n  - cesql: \"{deep}\"\n  - cel: \"{cel_deep}\"")));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["spec.filters[0].cesql", "spec.filters[1].cesql", "spec.filters[2].cel"], "{errs:?}");
    assert!(errs[1].1.contains("nests deeper than"), "{errs:?}");
}

#[test]
fn deeply_nested_yaml_and_filter_trees_are_refused_not_a_crash() {
    // 3,000 levels of flow and block nesting, and of `not:`.
    for text in [
        format!("{}1{}", "[".repeat(3000), "]".repeat(3000)),
        format!("{}1{}", "{a: ".repeat(3000), "}".repeat(3000)),
        trigger_with(&format!("  - {}cesql: 'true'{}", "not: {".repeat(3000), "}".repeat(3000))),
    ] {
        let r = on_worker_stack(move || admit_text(&text).map(|_| ()));
        assert!(r.is_err(), "deep nesting must be refused");
    }
}

/// xorshift64*: deterministic randomness for the mutation run.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn mutated_manifests_are_admitted_or_refused_never_a_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seeds = vec![GOOD.to_string()];
    for f in std::fs::read_dir(&dir).expect("examples").filter_map(Result::ok) {
        if f.path().extension().is_some_and(|x| x == "yaml") {
            seeds.push(std::fs::read_to_string(f.path()).expect("read example"));
        }
    }
    let (ok, refused) = on_worker_stack(move || {
        let mut state = 0x00C0_FFEE_1234_5678u64;
        let (mut ok, mut refused) = (0, 0);
        for i in 0..3000 {
            let mut b = seeds[i % seeds.len()].clone().into_bytes();
            for _ in 0..=(rng(&mut state) % 4) {
                if b.is_empty() {
                    b.push(b'a');
                }
                let at = (rng(&mut state) as usize) % b.len();
                match rng(&mut state) % 4 {
                    0 => b[at] = b":-[]{}'\"#&*!|> \n0aZ"[(rng(&mut state) % 19) as usize],
                    1 => {
                        b.remove(at);
                    }
                    2 => {
                        let len = ((rng(&mut state) % 40) as usize).min(b.len() - at);
                        let chunk = b[at..at + len].to_vec();
                        b.splice(at..at, chunk);
                    }
                    _ => b.insert(at, b"\t\r\0\x7f"[(rng(&mut state) % 4) as usize]),
                }
            }
            match admit_text(&String::from_utf8_lossy(&b)) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
            }
        }
        (ok, refused)
    });
    println!("admission mutation run: {ok} admitted, {refused} refused");
    assert!(ok > 0 && refused > 0, "the mutations should both keep and break manifests");
}

#[test]
fn names_follow_kubernetes_rules_per_kind() {
    let doc = |kind: &str, api: &str, name: &str, ns: &str, spec: &str| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: '{name}'\n  namespace: '{ns}'\n{spec}")
    };
    let trigger_spec = "spec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:9/\n";
    let svc_spec =
        "spec:\n  template:\n    spec:\n      containers:\n        - image: x\n          command: [/bin/true]\n";
    // Dotted names are DNS-1123 subdomains, as Kubernetes accepts them.
    admit_text(&doc("Trigger", "eventing.knative.dev/v1", "orders.v1", "default", trigger_spec))
        .expect("dotted Trigger");
    admit_text(&doc("Broker", "eventing.knative.dev/v1", "team.events", "default", "")).expect("dotted Broker");
    let refused = |text: &str, path: &str, what: &str| {
        let Err(AdmissionError::Invalid(errs)) = admit_text(text) else { panic!("{text} must be refused") };
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(all.iter().any(|e| e.contains(path) && e.contains(what)), "want {path} … {what} in {all:?}");
    };
    refused(
        &doc("Trigger", "eventing.knative.dev/v1", "Bad_Name", "default", trigger_spec),
        "metadata.name",
        "DNS-1123 subdomain",
    );
    refused(
        &doc("Trigger", "eventing.knative.dev/v1", "a..b", "default", trigger_spec),
        "metadata.name",
        "not a valid name",
    );
    refused(
        &doc("Trigger", "eventing.knative.dev/v1", "t", "../etc", trigger_spec),
        "metadata.namespace",
        "not a valid name",
    );
    refused(&doc("Broker", "eventing.knative.dev/v1", "b", "team.a", ""), "metadata.namespace", "not a valid name");
    refused(&doc("Broker", "eventing.knative.dev/v1", &"a".repeat(254), "default", ""), "metadata.name", "253");
    // Services are DNS-1035 labels: a letter first, no dots.
    refused(&doc("Service", "serving.knative.dev/v1", "1abc", "default", svc_spec), "metadata.name", "DNS-1035");
    refused(&doc("Service", "serving.knative.dev/v1", "a.b", "default", svc_spec), "metadata.name", "DNS-1035");
    admit_text(&doc("Service", "serving.knative.dev/v1", "abc1", "default", svc_spec)).expect("a valid Service name");
}

/// Every example manifest (`examples/*.yaml`, the sources showcase among them) is admitted.
#[test]
fn every_example_manifest_is_admitted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for f in std::fs::read_dir(&dir).expect("examples").filter_map(Result::ok) {
        if f.path().extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(f.path()).expect("read example");
            if let Err(e) = admit_text(&text) {
                panic!("{} is refused: {e:?}", f.path().display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 6, "the examples were found ({seen})");
}

/// The new source kinds name every problem with its field path, all at once.
#[test]
fn source_kinds_refuse_bad_fields_with_their_paths() {
    let sink = "  sink:\n    uri: http://127.0.0.1:9/\n";
    let doc = |kind: &str, api: &str, spec: &str| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: s\nspec:\n{spec}{sink}")
    };
    let text = [
        doc("RabbitmqSource", "sources.knative.dev/v1alpha1", "  rabbitmqClusterReference:\n    name: cluster\n  rabbitmqResourcesConfig:\n    queueName: q\n    parallelism: 0\n"),
        doc("RedisStreamSource", "sources.knative.dev/v1alpha1", "  address: nohost\n  stream: s\n  numConsumers: 100\n"),
        doc("IntegrationSource", "sources.knative.dev/v1alpha1", "  aws:\n    sqs:\n      arn: q\n      waitTimeSeconds: 30\n      overrideEndpoint: true\n"),
        doc("IntegrationSource", "sources.knative.dev/v1alpha1", "  timer:\n    period: 0\n"),
        doc("ApiServerSource", "sources.knative.dev/v1", "  resources:\n    - apiVersion: apps/v1\n      kind: Deployment\n  mode: Everything\n"),
        doc("RocketMQSource", "sources.knative.dev/v1alpha1", "  topic: t\n  namesrvAddr: nohost\n  accessKey:\n    secretKeyRef: {name: s, key: k}\n"),
    ]
    .join("---\n");
    let got = invalid_paths(text);
    let want = [
        "spec.rabbitmqClusterReference.connectionSecret",
        "spec.rabbitmqResourcesConfig.exchangeName",
        "spec.rabbitmqResourcesConfig.parallelism",
        "spec.address",
        "spec.numConsumers",
        "spec.aws.sqs.waitTimeSeconds",
        "spec.aws.sqs.uriEndpointOverride",
        "spec.timer.period",
        "spec.timer.message",
        "spec.resources[0]",
        "spec.mode",
        "spec.namesrvAddr",
        "spec.secretKey",
    ];
    for w in want {
        assert!(got.iter().any(|(p, _)| p == w), "no error at {w}; got {got:#?}");
    }
    assert_eq!(got.len(), want.len(), "unexpected extra errors: {got:#?}");
}
