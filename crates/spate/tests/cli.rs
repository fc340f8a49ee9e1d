//! The CLI's global options (`--server`, `--token`, `-n`, `-o`) are accepted by
//! every subcommand, before or after it.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_options_are_accepted_by_every_subcommand() {
    let dir = tempdir();
    let file = dir.path().join("b.yaml");
    std::fs::write(&file, "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b, namespace: team}\n")
        .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).env_remove("SPATE_SERVER").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    // Offline commands accept them too (they are simply unused there).
    let f = file.to_str().unwrap();
    let (ok, text) =
        run(&["validate", "-f", f, "--server", "http://127.0.0.1:1", "-n", "x", "-o", "json", "--token", "t"]);
    assert!(ok, "{text}");

    let s = Server::start(&dir.path().join("data"), &[]);
    let (ok, text) = run(&["--server", &s.admin, "apply", "-f", f]);
    assert!(ok, "global option before the subcommand: {text}");
    let (ok, text) = run(&["get", "brokers", "-n", "team", "-o", "json", "--server", &s.admin]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["items"][0]["metadata"]["namespace"], "team", "{v}");
    let (ok, text) = run(&["-n", "team", "delete", "broker", "b", "--server", &s.admin]);
    assert!(ok, "{text}");
    let (_, text) = run(&["get", "brokers", "-n", "team", "--server", &s.admin, "-o", "json"]);
    assert!(text.contains("\"items\":[]") || text.contains("\"items\": []"), "deleted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_lists_every_kind_with_objects() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "{}---\n{}---\napiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {{name: seq}}\nspec:\n  steps:\n    - uri: {}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: hidden}}\nstringData: {{k: v}}\n",
        broker("default", ""),
        trigger("t", "default", "", &sink.url, ""),
        sink.url
    ))
    .await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let table = run(&["get", "all", "--server", &s.admin]);
    for section in ["# brokers", "# triggers", "# sequences", "# inmemorychannels", "# subscriptions"] {
        assert!(table.contains(section), "missing {section} in:\n{table}");
    }
    assert!(!table.contains("hidden") && !table.contains("# secrets"), "Secrets are not part of `all`:\n{table}");
    let v: serde_json::Value =
        serde_json::from_str(&run(&["get", "all", "-A", "-o", "json", "--server", &s.admin])).unwrap();
    let kinds: std::collections::BTreeSet<&str> =
        v["items"].as_array().unwrap().iter().filter_map(|i| i["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["Broker", "InMemoryChannel", "Sequence", "Subscription", "Trigger"].into_iter().collect(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_conditions_with_reasons_addresses_and_delivery() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&format!(
        "{}---\n{}",
        broker("default", ""),
        trigger(
            "lost",
            "default",
            "",
            "http://127.0.0.1:9/",
            "  delivery:\n    retry: 3\n    deadLetterSink:\n      ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: nowhere}\n"
        )
    ))
    .await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let t = run(&["describe", "trigger", "lost", "--server", &s.admin]);
    assert!(t.contains("Kind:") && t.contains("Trigger (eventing.knative.dev/v1)"), "{t}");
    assert!(t.contains("Delivery:") && t.contains("retry=3"), "{t}");
    assert!(t.contains("DeadLetterSinkResolved") && t.contains("nowhere"), "the failing condition and why:\n{t}");
    let b = run(&["describe", "broker/default", "--server", &s.admin]);
    assert!(b.contains("Address:") && b.contains("/default/default"), "{b}");
    assert!(b.contains("Ready") && b.contains("True"), "{b}");
}

/// `spate tail …` running until it said it is connected (its first line on stderr). The
/// stderr pipe is held open while it runs (a closed pipe would fail its later messages).
struct Tail(std::process::Child, String, #[allow(dead_code)] std::io::BufReader<std::process::ChildStderr>);

impl Tail {
    fn start(admin: &str, args: &[&str]) -> Tail {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(BIN)
            .arg("tail")
            .args(args)
            .args(["-o", "json", "--server", admin])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        Tail(child, first, err)
    }

    /// The next `n` lines it prints, as JSON; then it is stopped.
    async fn lines(mut self, n: usize) -> Vec<serde_json::Value> {
        use std::io::{BufRead, BufReader};
        tokio::task::spawn_blocking(move || {
            let mut out = BufReader::new(self.0.stdout.take().unwrap());
            let mut lines = vec![];
            for _ in 0..n {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                lines.push(serde_json::from_str::<serde_json::Value>(&l).unwrap_or_else(|e| panic!("{e}: {l}")));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
            lines
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_a_brokers_events_through_a_cesql_filter() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&(broker("default", "") + "---\n" + &broker("other", ""))).await;
    let tail = Tail::start(&s.admin, &["broker/default", "--filter", "type = 'order'"]);
    assert!(tail.1.contains("tailing broker/default/default"), "{}", tail.1);
    assert_eq!(send(&s.broker_url("default", "default"), "o1", "order", "x").await, 202);
    assert_eq!(send(&s.broker_url("default", "default"), "r1", "refund", "x").await, 202);
    assert_eq!(send(&s.broker_url("default", "other"), "o2", "order", "x").await, 202);
    assert_eq!(send(&s.broker_url("default", "default"), "o3", "order", "x").await, 202);
    let lines = tail.lines(2).await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|v| {
            assert_eq!(v["target"], "broker/default/default");
            v["event"]["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["o1", "o3"], "only the filtered broker's matching events, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_outcomes_show_in_tail_and_its_failures_in_describe() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    // The subscriber refuses "bad" events (500, no retry): they go to the dead-letter sink.
    use axum::response::IntoResponse;
    let subscriber = Sink::with(
        std::sync::Arc::new(|r: &Received, _| {
            let status = if r.event.ty == "bad" { 500 } else { 202 };
            axum::http::StatusCode::from_u16(status).unwrap().into_response()
        }),
        std::time::Duration::ZERO,
    )
    .await;
    let dls = Sink::start().await;
    let delivery = format!("  delivery:\n    retry: 0\n    deadLetterSink:\n      uri: {}\n", dls.url);
    s.apply_ok(&format!("{}---\n{}", broker("default", ""), trigger("t", "default", "", &subscriber.url, &delivery)))
        .await;
    let tail = Tail::start(&s.admin, &["trigger/t"]);
    assert!(tail.1.contains("tailing trigger/default/t"), "{}", tail.1);
    assert_eq!(send(&s.broker_url("default", "default"), "g1", "good", "x").await, 202);
    assert_eq!(send(&s.broker_url("default", "default"), "b1", "bad", "x").await, 202);
    let lines = tail.lines(2).await;
    let outcome = |id: &str| {
        let l = lines.iter().find(|l| l["event"]["id"] == id).unwrap_or_else(|| panic!("{id} tailed: {lines:?}"));
        assert_eq!(l["target"], "trigger/default/t");
        l["outcome"].as_str().unwrap().to_string()
    };
    assert!(outcome("g1").starts_with("delivered"), "{lines:?}");
    let bad = outcome("b1");
    assert!(bad.starts_with("dead-lettered") && bad.contains("HTTP 500"), "{bad}");

    // The status and `describe` keep the failure with its reason.
    dls.wait_for_id("b1").await;
    let t = s.get("triggers", "default", "t").await;
    let live = &t["status"]["spate"];
    assert_eq!((live["delivered"].as_u64(), live["deadLettered"].as_u64()), (Some(1), Some(1)), "{t:#}");
    assert_eq!(live["recentFailures"][0]["id"], "b1", "{t:#}");
    assert_eq!(live["recentFailures"][0]["outcome"], "DeadLettered", "{t:#}");
    assert!(live["backlog"].is_u64(), "{t:#}");
    assert_eq!(live["retries"], 0, "retry: 0 means one attempt each: {t:#}");
    let out = std::process::Command::new(BIN).args(["describe", "trigger/t", "--server", &s.admin]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Recent failures:") && text.contains("b1") && text.contains("HTTP 500"), "{text}");
    assert!(text.contains("Live deadLettered:") && text.contains("Live backlog:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_eventtypes_lists_the_types_that_flowed_through_a_broker_and_those_applied_by_hand() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let et = |name: &str, attrs: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {{name: {name}}}\nspec:\n  reference: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}\n  description: Orders placed\n  attributes:\n{attrs}"
        )
    };
    let full = "    - {name: type, value: com.example.order, required: true}\n    - {name: source, value: /shop, required: true}\n    - {name: specversion, value: \"1.0\", required: true}\n    - {name: id, required: true}\n";
    s.apply_ok(&format!("{}---\n{}", broker("default", ""), et("orders", full))).await;
    // Knative's rules: type, source, specversion and id must be defined; the spec never changes.
    let (code, body) = s.apply(&et("partial", "    - {name: type, value: x}\n    - {name: Bad_Name}\n")).await;
    assert_eq!(code, 422, "{body}");
    let errs = body["errors"].to_string();
    assert!(errs.contains("spec.attributes") && errs.contains("missing source, specversion, id"), "{errs}");
    assert!(errs.contains("spec.attributes[1].name"), "{errs}");
    let (code, body) = s.apply(&et("orders", &full.replace("/shop", "/store"))).await;
    assert_eq!(code, 422, "an EventType's spec is immutable: {body}");

    for (id, ty, source) in
        [("1", "com.example.order", "/shop"), ("2", "com.example.order", "/shop"), ("3", "com.example.refund", "/shop")]
    {
        let h = [("ce-specversion", "1.0"), ("ce-id", id), ("ce-type", ty), ("ce-source", source)];
        assert_eq!(post_with(&s.broker_url("default", "default"), &h, "{}").await, 202);
    }
    let out = std::process::Command::new(BIN)
        .args(["get", "eventtypes", "-o", "json", "--server", &s.admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    let seen: Vec<(String, String)> = items
        .iter()
        .filter(|i| i["metadata"]["ownerReferences"].is_array())
        .map(|i| {
            assert_eq!(i["spec"]["reference"]["kind"], "Broker", "{i}");
            assert_eq!(i["spec"]["reference"]["name"], "default", "{i}");
            let attr = |n: &str| {
                i["spec"]["attributes"].as_array().unwrap().iter().find(|a| a["name"] == n).unwrap()["value"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            (attr("type"), attr("source"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("com.example.order".to_string(), "/shop".to_string()),
            ("com.example.refund".to_string(), "/shop".to_string())
        ],
        "one per distinct type and source: {v:#}"
    );
    assert!(items.iter().any(|i| i["metadata"]["name"] == "orders"), "the hand-applied one too: {v:#}");
    let table = std::process::Command::new(BIN).args(["get", "eventtypes", "--server", &s.admin]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("com.example.refund") && table.contains("Broker/default"), "{table}");
    let orders = table.lines().find(|l| l.contains("orders")).unwrap_or_default();
    assert!(orders.contains("com.example.order") && orders.trim_end().ends_with("True"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_a_time_range_to_one_trigger_and_no_other() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let (one, other) = (Sink::start().await, Sink::start().await);
    s.apply_ok(&format!(
        "{}---\n{}---\n{}",
        broker("default", ""),
        trigger("one", "default", "", &one.url, ""),
        trigger("other", "default", "", &other.url, "")
    ))
    .await;
    let url = s.broker_url("default", "default");
    for id in ["e1", "e2"] {
        assert_eq!(send(&url, id, "t", "x").await, 202);
    }
    one.wait_for(2).await;
    // Stored times are in milliseconds: the range starts strictly after e2's.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let from = {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        spate_core::rules::format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    for id in ["e3", "e4", "e5"] {
        assert_eq!(send(&url, id, "t", "x").await, 202);
    }
    one.wait_for(5).await;
    other.wait_for(5).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).args(["--server", &s.admin]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = run(&["replay", "trigger/one", "--from-time", &from]);
    assert!(ok, "{text}");
    assert!(text.contains("3 event(s) read") && text.contains("3 delivered"), "{text}");
    let mut ids: Vec<String> = one.events().iter().skip(5).map(|r| r.event.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["e3", "e4", "e5"], "the range, to that trigger");
    assert_eq!(other.count(), 5, "no other trigger gets a replay");
    // From an offset: everything retained.
    let (ok, text) = run(&["replay", "trigger/one", "--from-offset", "0"]);
    assert!(ok && text.contains("5 delivered"), "{text}");
    assert_eq!((one.count(), other.count()), (5 + 3 + 5, 5));
    // Refusals name what is wrong.
    let (ok, text) = run(&["replay", "trigger/nope", "--from-offset", "0"]);
    assert!(!ok && text.contains("not running"), "{text}");
    let (ok, text) = run(&["replay", "trigger/one", "--from-time", "yesterday"]);
    assert!(!ok && text.contains("RFC 3339"), "{text}");
    let (ok, text) = run(&["replay", "trigger/one"]);
    assert!(!ok && text.contains("--from-time"), "clap requires one of the two: {text}");
}

#[test]
fn bench_can_run_its_sink_and_load_generator_as_processes_of_their_own() {
    let child = std::process::Command::new(BIN)
        .args(["bench", "--events", "300", "--concurrency", "8", "--separate-processes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bench_pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line =
        text.lines().find(|l| l.starts_with("sink in its own process (pid ")).unwrap_or_else(|| panic!("{text}"));
    let sink_pid: u32 = line["sink in its own process (pid ".len()..].split(')').next().unwrap().parse().unwrap();
    assert_ne!(sink_pid, bench_pid, "{text}");
    assert!(line.ends_with("load generator in its own process for each phase"), "{line}");
    // Every phase completed through the child processes: both baselines and the broker.
    for label in ["/ baseline throughput:", "/ forwarding proxy throughput:"] {
        let l = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}"));
        let r: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(r > 0.0 && r.is_finite(), "{label} {r}");
    }
    assert!(!text.contains("INCOMPLETE"), "{text}");
}

#[test]
fn bench_baselines_count_every_event_of_a_batch() {
    let out = std::process::Command::new(BIN)
        .args(["bench", "--events", "400", "--concurrency", "4", "--batch", "8"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("forwarding proxy (hyper, one hop, nothing stored)"), "{text}");
    // Each baseline waits until the sink saw every event of every batch.
    assert!(!text.contains("INCOMPLETE"), "{text}");
}

#[test]
fn bench_measures_the_broker_against_the_sink_and_a_forwarding_proxy_in_one_run() {
    let out =
        std::process::Command::new(BIN).args(["bench", "--events", "400", "--concurrency", "8"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let ratio = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    assert!(text.contains("forwarding proxy (hyper, one hop, nothing stored)"), "{text}");
    for label in ["/ baseline throughput:", "/ forwarding proxy throughput:"] {
        let r = ratio(label);
        assert!(r > 0.0 && r.is_finite(), "{label} {r}");
    }
}

#[test]
fn bench_measures_a_nats_broker_against_raw_jetstream_with_defaults_with_spates_settings_and_a_zero_cost_ceiling() {
    if !nats_available() {
        return;
    }
    let out = std::process::Command::new(BIN)
        .args(["bench", "--broker-class", "NatsJetStreamBroker", "--nats-url", &nats_url()])
        .args(["--events", "600", "--concurrency", "8", "--no-baseline", "--rounds", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let rate = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}"));
        let figure = line.rsplit(':').next().unwrap().trim().trim_end_matches(" events/s");
        figure.parse().unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // Both raw baselines ran in this run, and the end-to-end figure is set against each;
    // the second round's events are new ones, not repeats JetStream drops as duplicates.
    for label in [
        "  throughput:",
        "with Spate's stream settings (interest retention, a Nats-Msg-Id per publish):",
        "end-to-end / raw JetStream throughput:",
        "end-to-end / raw JetStream with Spate's stream settings:",
        "the zero-cost broker's ceiling (raw JetStream with Spate's settings and that HTTP, per event):",
        "end-to-end / the zero-cost broker's ceiling:",
        "the zero-cost broker's ceiling / raw JetStream throughput:",
    ] {
        let r = rate(label);
        assert!(r > 0.0 && r.is_finite(), "{label} {r}");
    }
    // The ceiling adds, per event, the engine's work and one HTTP delivery's, each measured alone.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("one event per request straight to the sink")).expect(&text);
    let http: f64 = lines[at + 1].split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect(lines[at + 1]);
    let engine = rate("with Spate's stream settings (interest retention, a Nats-Msg-Id per publish):");
    let ceiling = rate("the zero-cost broker's ceiling (raw JetStream");
    let expected = 1.0 / (1.0 / engine + 1.0 / http);
    assert!((ceiling - expected).abs() <= 1.0 + expected * 0.001, "ceiling {ceiling}, expected {expected}:\n{text}");
    assert!(!text.contains("INCOMPLETE"), "{text}");
}

#[test]
fn bench_rounds_alternate_baselines_and_broker_and_print_each_ratios_median() {
    let out = std::process::Command::new(BIN)
        .args(["bench", "--events", "300", "--concurrency", "8", "--rounds", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for round in ["== round 1 of 3", "== round 2 of 3", "== round 3 of 3", "medians over 3 rounds"] {
        assert!(text.contains(round), "no '{round}' in:\n{text}");
    }
    let medians = &text[text.find("medians over 3 rounds").unwrap()..];
    for label in
        ["end-to-end deliveries / baseline throughput:", "end-to-end deliveries / forwarding proxy throughput:"]
    {
        let line = medians.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{medians}"));
        let figures: Vec<f64> = line
            .split(|c: char| c == ':' || c == '(' || c == ')' || c.is_whitespace())
            .filter_map(|w| w.parse().ok())
            .collect();
        // The median, then the three rounds sorted: the median is the middle one.
        assert_eq!(figures.len(), 4, "{line}");
        assert_eq!(figures[0], figures[2], "{line}");
        assert!(figures[1] <= figures[2] && figures[2] <= figures[3], "{line}");
    }
    // The latency tails too: each median line lists the rounds' own p99 (p999) figures, sorted.
    for (section, quantile) in
        [("ingress ack latency", "p99"), ("ingress ack latency", "p999"), ("end-to-end latency", "p99")]
    {
        let mut per_round: Vec<String> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{section}: ")))
            .map(|l| {
                let after =
                    &l[l.find(&format!(" {quantile} ")).unwrap_or_else(|| panic!("{l}")) + quantile.len() + 2..];
                after.split_whitespace().next().unwrap().to_string()
            })
            .collect();
        assert_eq!(per_round.len(), 3, "three rounds of '{section}' in:\n{text}");
        per_round.sort_by(|x, y| x.parse::<f64>().unwrap().total_cmp(&y.parse::<f64>().unwrap()));
        let label = format!("{section} {quantile} (ms): ");
        let line =
            medians.lines().find(|l| l.contains(&label)).unwrap_or_else(|| panic!("no '{label}' in:\n{medians}"));
        assert!(
            line.ends_with(&format!("{} (rounds, sorted: {})", per_round[1], per_round.join(" "))),
            "{line} vs {per_round:?}"
        );
    }
    let refused =
        std::process::Command::new(BIN).args(["bench", "--target", "channel", "--rounds", "2"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--rounds applies to --target broker"));
}

/// `--triggers N` measures, in each round, the same load through a broker where
/// the matching trigger is alone, and prints the ratio of the two rates (the
/// issue's "1,000 exact-type triggers ≥ 0.9 × one trigger", side by side).
#[test]
fn bench_with_many_triggers_compares_them_with_the_trigger_alone_in_each_round() {
    let out = std::process::Command::new(BIN)
        .args(["bench", "--events", "300", "--concurrency", "8", "--triggers", "40", "--rounds", "2", "--no-baseline"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let label = "end-to-end with 40 triggers / with the trigger alone:";
    for round in text.split("== round ").skip(1) {
        // The trigger alone first, then the 40 triggers; the ratio is theirs.
        let rates: Vec<f64> = round
            .lines()
            .filter(|l| l.contains("end-to-end throughput:"))
            .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert_eq!(rates.len(), 2, "{round}");
        assert!(round.find("its trigger alone").unwrap() < round.find("broker (ingress").unwrap(), "{round}");
        let line = round.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no ratio in:\n{round}"));
        let printed: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let expected = rates[1] / rates[0];
        // The rates are printed rounded to whole events/s.
        assert!((printed - expected).abs() <= 0.011 + expected * 0.01, "{line}: expected {expected:.3}");
    }
    let medians = &text[text.find("medians over 2 rounds").unwrap_or_else(|| panic!("{text}"))..];
    assert!(medians.contains(label), "{medians}");
    assert!(!text.contains("INCOMPLETE"), "{text}");
}

/// `--target channel --subscriptions N` also measures a channel with one
/// subscription in the same run and prints the fan-out figure: the N
/// subscriptions' deliveries over min(N × one's rate, the forwarding proxy's).
#[test]
fn bench_channel_fan_out_is_compared_with_one_subscription_and_the_proxy() {
    let out = std::process::Command::new(BIN)
        .args(["bench", "--target", "channel", "--subscriptions", "3", "--events", "300", "--concurrency", "8"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // Sections in order: the one-subscription channel, the proxy baseline, the three subscriptions.
    let rate_after = |title: &str, field: &str| -> f64 {
        let at = text.find(title).unwrap_or_else(|| panic!("no '{title}' in:\n{text}"));
        let line = text[at..].lines().find(|l| l.contains(field)).unwrap();
        line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let one = rate_after("the same channel path with one subscription", "end-to-end throughput:");
    let proxy = rate_after("forwarding proxy (hyper", "throughput:");
    let three = rate_after("channel (ingress → durable log → 3 subscription(s)", "end-to-end throughput:");
    let label = "deliveries with 3 subscriptions / min(3 × the 1-subscription rate, forwarding proxy):";
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no fan-out ratio in:\n{text}"));
    let printed: f64 =
        line[line.find(label).unwrap() + label.len()..].split_whitespace().next().unwrap().parse().unwrap();
    let expected = three / (3.0 * one).min(proxy);
    assert!((printed - expected).abs() <= 0.011 + expected * 0.01, "{line}: expected {expected:.3}");
    let bound = if proxy < 3.0 * one { "bound: the forwarding proxy" } else { "bound: 3 × the 1-subscription rate" };
    assert!(line.contains(bound), "{line} (one {one}, proxy {proxy})");
    assert!(!text.contains("INCOMPLETE"), "{text}");
}

/// The binary's relative relocations are packed (DT_RELR) wherever the linker can
/// pack them: unpacked, the loader read and kept resident a 2.7 MB table at every
/// start (an idle server's RSS went from 21 to 18 MiB with it packed).
#[test]
fn the_binary_is_linked_with_packed_relative_relocations() {
    let ld = std::process::Command::new("ld").arg("--help").output();
    let packs = ld.map(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs")).unwrap_or(false);
    if !packs {
        assert!(std::env::var_os("CI").is_none(), "CI's linker must know -z pack-relative-relocs");
        eprintln!("skipped: this linker cannot pack relative relocations");
        return;
    }
    let out = std::process::Command::new("readelf").args(["--dynamic", "--wide", BIN]).output().expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "readelf failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("(RELR)"), "no DT_RELR in the dynamic section of {BIN}:\n{text}");
    let relocs = std::process::Command::new("readelf").args(["--section-headers", "--wide", BIN]).output().unwrap();
    let sections = String::from_utf8_lossy(&relocs.stdout);
    let rela = sections.lines().find(|l| l.contains(".rela.dyn")).unwrap_or_else(|| panic!("{sections}"));
    // name type address offset size: the table of relocations left unpacked is small.
    let size = rela.split_whitespace().skip_while(|w| *w != "RELA").nth(3).unwrap();
    let size = u64::from_str_radix(size, 16).unwrap();
    assert!(size < 256 * 1024, ".rela.dyn still holds {size} bytes: {rela}");
}
