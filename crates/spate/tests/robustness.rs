//! Hostile input against a real `spate serve`: requests and manifests that
//! used to crash it, connections that never finish, a full disk, a stuck
//! subscriber before a kill -9. The server must stay up and say why.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn healthy(s: &Server) -> bool {
    matches!(client().get(format!("{}/healthz", s.admin)).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test]
async fn hostile_expressions_get_400_or_a_field_path_and_the_server_stays_up() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let event = |req: reqwest::RequestBuilder| {
        req.header("ce-specversion", "1.0").header("ce-id", "1").header("ce-source", "/t").header("ce-type", "x")
    };
    for (param, expr) in [
        ("cesql", format!("{}true{}", "(".repeat(900), ")".repeat(900))),
        ("cesql", vec!["true"; 5000].join(" AND ")),
        ("cel", format!("{}true{}", "(".repeat(3000), ")".repeat(3000))),
        ("cel", vec!["true"; 3000].join(" && ")),
    ] {
        let r = event(client().post(format!("{}/_spate/fn/filter", s.data)).query(&[(param, &expr)]))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("query parameter `{param}`")), "{body}");
        assert!(body.len() < 2000, "the expression is not echoed whole: {} bytes", body.len());
    }
    // The manifest that used to put the server in a crash loop is refused with its path.
    let huge = vec!["type = 'x'"; 8000].join(" AND ");
    let (code, v) = s
        .apply(&format!(
            "{}---\n{}",
            broker("default", ""),
            trigger("t", "default", &format!("  filters:\n    - cesql: \"{huge}\"\n"), "http://127.0.0.1:9/", "")
        ))
        .await;
    assert!(code == 400 || code == 422, "{code} {v}");
    assert!(v.to_string().contains("spec.filters[0].cesql"), "{v}");
    assert!(healthy(&s).await);
}

#[tokio::test]
async fn after_kill_9_behind_a_stuck_event_only_in_flight_events_are_sent_again() {
    const IN_FLIGHT: usize = 50;
    const TOTAL: usize = 1000;
    let sink = Sink::stuck_on("ev-0").await;
    let dir = tempdir();
    let (dp, ap) = (free_port(), free_port());
    let (listen, admin) = (format!("127.0.0.1:{dp}"), format!("127.0.0.1:{ap}"));
    let mut server = Server::start_on(dir.path(), &listen, &admin, &[]);
    let t = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    spate.dev/max-in-flight: \"{IN_FLIGHT}\"\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sink.url
    );
    server.apply_ok(&format!("{}---\n{t}", broker("default", ""))).await;
    let url = server.broker_url("default", "default");
    for i in 0..TOTAL {
        assert_eq!(send(&url, &format!("ev-{i}"), "t", "{}").await, 202);
    }
    // Every event but the stuck one is delivered; the stuck one is still in flight.
    sink.wait_until("all but the stuck event", |g| g.len() >= TOTAL).await;
    // Wait until the server counts them delivered (the sink saw them before it answered).
    let line = format!("spate_events_delivered_total{{sender=\"trigger/default/t\"}} {}", TOTAL - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.metrics().await.contains(&line) {
        assert!(Instant::now() < deadline, "the trigger never counted {} deliveries", TOTAL - 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    let before = sink.count();
    let server = Server::start_on(dir.path(), &listen, &admin, &[]);
    // The stuck event is delivered again (it never finished); wait for that redelivery.
    sink.wait_until("the stuck event's redelivery", |g| g.iter().filter(|r| r.event.id == "ev-0").count() >= 2).await;
    // Then a marker event proves the worker has moved past everything it redelivers.
    assert_eq!(send(&url, "marker", "t", "{}").await, 202);
    sink.wait_for_id("marker").await;
    let again: Vec<String> =
        sink.events()[before..].iter().map(|r| r.event.id.clone()).filter(|id| id != "marker").collect();
    println!("kill -9 behind a stuck event: {} event(s) sent again (bound {IN_FLIGHT})", again.len());
    assert!(again.len() <= IN_FLIGHT, "{} sent again, more than max-in-flight {IN_FLIGHT}: {again:?}", again.len());
    drop(server);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Reads until the server closes the connection; how long that took.
async fn until_closed(mut c: tokio::net::TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed_and_others_are_served() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--header-read-timeout", "2"]);
    s.apply_ok(&broker("default", "")).await;
    let addr = s.data.trim_start_matches("http://").to_string();
    let mut slow = vec![];
    for _ in 0..200 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-id: 1\r\n").await.unwrap();
        slow.push(tokio::spawn(until_closed(c)));
    }
    // Meanwhile normal requests are served at once.
    let url = s.broker_url("default", "default");
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(send(&url, &format!("ok-{i}"), "t", "{}").await, 202);
        assert!(t.elapsed() < Duration::from_secs(1), "a normal request waited {:?}", t.elapsed());
    }
    // Every slow connection is closed by the server, within the timeout plus slack.
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        let mut longest = Duration::ZERO;
        for h in slow {
            longest = longest.max(h.await.unwrap());
        }
        longest
    })
    .await
    .expect("the server closes connections that never finish their headers");
    println!("200 slow-header connections closed, the last after {waited:?}");
    assert!(waited < Duration::from_secs(5), "closed after {waited:?} with a 2 s header-read timeout");
    assert!(healthy(&s).await);
}

#[tokio::test]
async fn beyond_the_connection_cap_a_clear_503_and_http_errors_have_bodies() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--max-connections", "20"]);
    s.apply_ok(&broker("default", "")).await;
    let addr = s.data.trim_start_matches("http://").to_string();
    let mut held = vec![];
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("too many open connections"), "{answer}");
    // The admin API has its own cap: health checks still answer.
    assert!(healthy(&s).await);
    drop(held);

    // Bad chunked encoding is a malformed request (400), not 413, and says so. The server
    // frees the held connections' slots as it notices them close: until then, 503.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = c.write_all(
            b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: /s\r\nce-type: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await;
        if !answer.contains("too many open connections") || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("could not be read"), "{answer}");
    // Errors the HTTP layer raises itself have bodies too: an unparsable request (400)
    // and a head over the 64 KiB limit (431).
    for (request, status, says) in [
        (b"GARBAGE\r\n\r\n".to_vec(), "400", "malformed HTTP request"),
        (
            [
                b"POST /default/default HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec(),
                vec![b'a'; 100_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "431",
            "exceed 65536 bytes",
        ),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = c.write_all(&request).await;
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains(says), "{answer}");
    }
    // A path nothing serves: 404 with a body that says where things are.
    let r = client().get(format!("{}/no/such/path/here", s.data)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("brokers are at"));
    let r = client().get(format!("{}/nothing", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().is_empty());
    // An out-of-range TTL is malformed.
    let r = client()
        .post(s.broker_url("default", "default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "ttl")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("ce-knativebrokerttl", "99999999999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("32-bit"));
    // The stored resources are readable by their owner only.
    let mode = std::fs::metadata(dir.path().join("resources.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "resources.json mode {:o}", mode & 0o777);
}

/// One raw request on a new connection; the whole answer (the server closes, or 30 s pass).
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn probes_answer_while_the_admin_cap_is_full_slow_bodies_are_cut_and_framing_is_strict() {
    let dir = tempdir();
    let s = Server::start(
        dir.path(),
        &["--admin-max-connections", "4", "--header-read-timeout", "3", "--min-body-rate", "1024"],
    );
    s.apply_ok(&broker("default", "")).await;
    let admin = s.admin.trim_start_matches("http://").to_string();
    let data = s.data.trim_start_matches("http://").to_string();

    // Four live-event streams (`/tail`, answered and held open) fill the admin cap; probes
    // still answer, other paths get the cap's 503.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n").into_bytes();
    let mut held = vec![];
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(&admin).await.unwrap();
        c.write_all(&get("/tail")).await.unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "the stream is being served, so it holds a slot");
        held.push(c);
    }
    let probe = raw(&admin, &get("/healthz")).await;
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    let ready = raw(&admin, &get("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let list = raw(&admin, &get("/apis/eventing.knative.dev/v1/brokers")).await;
    assert!(list.starts_with("HTTP/1.1 503") && list.contains("only /healthz and /readyz"), "{list}");
    drop(held);

    // A body trickled one byte a second is cut once the grace (the header-read timeout) has passed.
    let mut c = tokio::net::TcpStream::connect(&data).await.unwrap();
    c.write_all(b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: slow\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 100\r\n\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if c.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(60), trickle).await.expect("cut within the minute").unwrap();
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("--min-body-rate"), "{answer}");

    // Strict framing: no Host, or both Content-Length and Transfer-Encoding, is 400 (and nothing stored).
    let no_host = raw(&data, b"POST /default/default HTTP/1.1\r\nce-specversion: 1.0\r\nce-id: nohost\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 2\r\n\r\n{}").await;
    assert!(no_host.starts_with("HTTP/1.1 400") && no_host.contains("Host header"), "{no_host}");
    let both = raw(&data, b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: both\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").await;
    assert!(both.starts_with("HTTP/1.1 400") && both.contains("Transfer-Encoding"), "{both}");
    let swapped = raw(&data, b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: both2\r\nce-source: /s\r\nce-type: t\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n2\r\n{}\r\n0\r\n\r\n").await;
    assert!(swapped.starts_with("HTTP/1.1 400"), "{swapped}");
    // A well-framed request is served as before; HTTP/1.0 needs no Host.
    let fine = raw(&data, b"POST /default/default HTTP/1.1\r\nhost: x\r\nce-specversion: 1.0\r\nce-id: fine\r\nce-source: /s\r\nce-type: t\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}").await;
    assert!(fine.starts_with("HTTP/1.1 202"), "{fine}");
    let old = raw(&data, b"POST /default/default HTTP/1.0\r\nce-specversion: 1.0\r\nce-id: old\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 2\r\n\r\n{}").await;
    assert!(old.starts_with("HTTP/1.0 202") || old.starts_with("HTTP/1.1 202"), "{old}");
    assert!(healthy(&s).await);
}

/// A small tmpfs for the data directory, so the disk can really fill up.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(mb: u32) -> Option<SmallDisk> {
        let dir = tempdir().keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(SmallDisk(dir))
        } else if std::env::var_os("CI").is_some() {
            panic!("cannot mount a tmpfs (the full-disk test needs root, as CI has)");
        } else {
            eprintln!("skipping: cannot mount a tmpfs for the full-disk test (needs root)");
            None
        }
    }

    /// Fills the disk; the filler is removed by `free`.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_restart_on_a_full_disk_answers_503_then_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount(16) else { return };
    let data = disk.0.join("data");
    let sink = Sink::start().await;
    let manifests = disk.0.join("m.yaml");
    std::fs::write(&manifests, format!("{}---\n{}", broker("default", ""), trigger("t", "default", "", &sink.url, "")))
        .unwrap();
    let args = ["-f", manifests.to_str().unwrap()];
    let mut s = Server::start(&data, &args);
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "before", "t", "{}").await, 202);
    sink.wait_for_id("before").await;
    s.terminate();

    disk.fill();
    let s = Server::start(&data, &args);
    let url = s.broker_url("default", "default");
    let payload = "x".repeat(64 * 1024);
    let r = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "full")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap();
    assert!(body.contains("no space left"), "{body}");
    assert!(!body.contains(data.to_str().unwrap()), "the data-dir path is not shown: {body}");

    disk.free();
    // The sender retries as told; the server recovers by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    loop {
        let code = send(&url, "after", "t", &payload).await;
        *statuses.entry(code).or_default() += 1;
        if code == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "no 202 after space returned: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.wait_for_id("after").await;
    assert!(healthy(&s).await);
}
