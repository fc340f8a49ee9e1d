//! Client commands: talk to a running server's admin API, or send events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use spate_api::Kind;
use spate_core::{CloudEvent, ExtValue};

use crate::cli::{ApplyArgs, DeleteArgs, GetArgs, LogsArgs, OutputFormat, SendArgs, SendMode, ValidateArgs};
use spate_api::{Derived, read_manifests};

type Exit = anyhow::Result<std::process::ExitCode>;

static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The admin API token (`--token`, `SPATE_TOKEN`) every admin request carries.
pub fn set_token(token: Option<String>) {
    if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
        let _ = TOKEN.set(t.trim().to_string());
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().http1_only().tcp_nodelay(true)
}

/// A client for the data plane (no admin credentials).
fn http() -> reqwest::Client {
    builder().build().expect("HTTP client builds with static configuration")
}

/// A client for the admin API: the token, and a body type a browser could not send unasked.
fn admin() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = TOKEN.get()
        && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
    {
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    builder().default_headers(headers).build().expect("HTTP client builds with static configuration")
}

fn unreachable(server: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow!(
        "cannot reach the Spate admin API at {server}: {e} (is `spate serve` running? set --server or SPATE_SERVER)"
    )
}

/// Prints an API error body (the list of problems) and returns exit code 1.
fn report_failure(body: &str) -> std::process::ExitCode {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let errs = v["errors"].as_array().cloned().unwrap_or_default();
            if errs.len() > 1 || v["message"].as_str().is_some_and(|m| m.contains("problem(s)")) {
                eprintln!("error: {} problem(s), nothing was applied:", errs.len());
                for e in errs {
                    eprintln!("  - {}", e.as_str().unwrap_or_default());
                }
            } else {
                eprintln!("error: {}", v["message"].as_str().unwrap_or(body));
            }
        }
        Err(_) => eprintln!("error: {body}"),
    }
    std::process::ExitCode::FAILURE
}

pub async fn apply(a: ApplyArgs) -> Exit {
    let text = read_manifests(&a.files)?;
    let url = format!("{}/apply", a.server.server.trim_end_matches('/'));
    let resp = admin()
        .post(&url)
        .header("content-type", "application/yaml")
        .body(text)
        .send()
        .await
        .map_err(|e| unreachable(&a.server.server, e))?;
    let ok = resp.status().is_success();
    let body = resp.text().await?;
    if !ok {
        return Ok(report_failure(&body));
    }
    let v: Value = serde_json::from_str(&body).context("reading the server's answer")?;
    for x in v["applied"].as_array().into_iter().flatten() {
        println!(
            "{}.{}/{} {} (namespace {})",
            x["kind"].as_str().unwrap_or("").to_lowercase(),
            x["group"].as_str().unwrap_or(""),
            x["name"].as_str().unwrap_or(""),
            x["action"].as_str().unwrap_or(""),
            x["namespace"].as_str().unwrap_or("")
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn validate(a: ValidateArgs) -> Exit {
    let text = read_manifests(&a.files)?;
    match spate_api::admit_text(&text) {
        Ok(rs) => {
            for (r, _) in &rs {
                println!("{} {}/{}: valid", r.kind.name(), r.namespace, r.name);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

fn kind_arg(k: &str) -> anyhow::Result<Kind> {
    Kind::from_cli(k).ok_or_else(|| {
        anyhow!("unknown kind '{k}' (known: {})", Kind::all().map(Kind::plural).collect::<Vec<_>>().join(", "))
    })
}

fn resource_url(server: &str, kind: Kind, ns: Option<&str>, name: Option<&str>) -> String {
    let group = if kind.group().is_empty() { "core" } else { kind.group() };
    let mut u = format!("{}/apis/{group}/{}", server.trim_end_matches('/'), kind.version());
    if let Some(ns) = ns {
        u.push_str(&format!("/namespaces/{ns}"));
    }
    u.push_str(&format!("/{}", kind.plural()));
    if let Some(n) = name {
        u.push_str(&format!("/{n}"));
    }
    u
}

pub async fn delete(a: DeleteArgs) -> Exit {
    let mut targets = vec![];
    if !a.files.is_empty() {
        for doc in spate_api::parse_documents(&read_manifests(&a.files)?)? {
            let k = kind_arg(doc["kind"].as_str().unwrap_or(""))?;
            let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            targets.push((k, ns, name));
        }
    } else {
        let (Some(k), Some(n)) = (&a.kind, &a.name) else { bail!("give KIND NAME, or -f FILE") };
        targets.push((kind_arg(k)?, a.namespace.clone(), n.clone()));
    }
    let client = admin();
    let mut code = std::process::ExitCode::SUCCESS;
    for (k, ns, name) in targets {
        let resp = client
            .delete(resource_url(&a.server.server, k, Some(&ns), Some(&name)))
            .send()
            .await
            .map_err(|e| unreachable(&a.server.server, e))?;
        if resp.status().is_success() {
            println!("{}.{}/{} deleted (namespace {ns})", k.name().to_lowercase(), k.group(), name);
        } else {
            code = report_failure(&resp.text().await?);
        }
    }
    Ok(code)
}

pub async fn get_objects(
    server: &str,
    kind: Kind,
    ns: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Result<Vec<Value>, String>> {
    let resp = admin().get(resource_url(server, kind, ns, name)).send().await.map_err(|e| unreachable(server, e))?;
    let ok = resp.status().is_success();
    let body = resp.text().await?;
    if !ok {
        return Ok(Err(body));
    }
    let v: Value = serde_json::from_str(&body).context("reading the server's answer")?;
    Ok(Ok(if name.is_some() { vec![v] } else { v["items"].as_array().cloned().unwrap_or_default() }))
}

pub async fn logs(a: LogsArgs) -> Exit {
    let Some((kind, name)) = a.target.split_once('/') else {
        bail!("'{}': use service/NAME or containersource/NAME", a.target);
    };
    let server = a.server.server.trim_end_matches('/');
    let resp = admin()
        .get(format!("{server}/logs/{kind}/{}/{name}", a.namespace))
        .send()
        .await
        .map_err(|e| unreachable(server, e))?;
    let ok = resp.status().is_success();
    let body = resp.text().await?;
    if !ok {
        return Ok(report_failure(&body));
    }
    print!("{body}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `spate get revisions|configurations|routes`: read-only, derived from Services.
async fn get_derived(a: &GetArgs, d: Derived) -> Exit {
    let server = a.server.server.trim_end_matches('/');
    let mut url = format!("{server}/apis/serving.knative.dev/v1");
    if !a.all_namespaces {
        url.push_str(&format!("/namespaces/{}", a.namespace));
    }
    url.push_str(&format!("/{}", d.plural()));
    if let Some(n) = &a.name {
        url.push_str(&format!("/{n}"));
    }
    let resp = admin().get(url).send().await.map_err(|e| unreachable(server, e))?;
    let ok = resp.status().is_success();
    let body = resp.text().await?;
    if !ok {
        return Ok(report_failure(&body));
    }
    let v: Value = serde_json::from_str(&body).context("reading the server's answer")?;
    let items = if a.name.is_some() { vec![v] } else { v["items"].as_array().cloned().unwrap_or_default() };
    if a.output != OutputFormat::Table {
        print!("{}", crate::output::render(Kind::Service, &items, a.output, a.name.is_some()));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let s = |v: &Value, p: &str| match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let (header, cols): (&[&str], &[&str]) = match d {
        Derived::Revision => (
            &["NAMESPACE", "NAME", "SERVICE", "DESIRED", "ACTUAL", "RESTARTS", "READY"],
            &[
                "/metadata/labels/serving.knative.dev~1service",
                "/status/desiredScale",
                "/status/actualScale",
                "/status/restarts",
                "/status/conditions/0/status",
            ],
        ),
        Derived::Configuration => (
            &["NAMESPACE", "NAME", "LATESTCREATED", "LATESTREADY", "READY"],
            &["/status/latestCreatedRevisionName", "/status/latestReadyRevisionName", "/status/conditions/0/status"],
        ),
        Derived::Route => (&["NAMESPACE", "NAME", "URL", "READY"], &["/status/url", "/status/conditions/0/status"]),
    };
    let mut rows = vec![header.iter().map(ToString::to_string).collect::<Vec<_>>()];
    for it in &items {
        let mut row = vec![s(it, "/metadata/namespace"), s(it, "/metadata/name")];
        row.extend(cols.iter().map(|c| s(it, c)));
        rows.push(row);
    }
    print!("{}", crate::output::table(rows, d.plural()));
    Ok(std::process::ExitCode::SUCCESS)
}

/// GET an admin API path as JSON.
pub async fn get_json(server: &str, path: &str) -> anyhow::Result<Value> {
    let server = server.trim_end_matches('/');
    let resp = admin().get(format!("{server}{path}")).send().await.map_err(|e| unreachable(server, e))?;
    let body = resp.text().await?;
    serde_json::from_str(&body).with_context(|| format!("reading {path}: {body}"))
}

pub async fn get(a: GetArgs) -> Exit {
    if let Some(d) = Derived::from_plural(&a.kind) {
        return get_derived(&a, d).await;
    }
    let ns = if a.all_namespaces { None } else { Some(a.namespace.as_str()) };
    if matches!(a.kind.to_ascii_lowercase().as_str(), "sources" | "source") {
        return get_sources(&a, ns).await;
    }
    if a.kind.eq_ignore_ascii_case("all") {
        return get_all(&a, ns).await;
    }
    let k = kind_arg(&a.kind)?;
    match get_objects(&a.server.server, k, ns, a.name.as_deref()).await? {
        Ok(items) => {
            print!("{}", crate::output::render(k, &items, a.output, a.name.is_some()));
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(body) => Ok(report_failure(&body)),
    }
}

/// `spate get all`: every kind but Secrets and ConfigMaps (as `kubectl get all`),
/// one table per kind that has objects; with `-o json|yaml`, one list.
async fn get_all(a: &GetArgs, ns: Option<&str>) -> Exit {
    if a.name.is_some() {
        bail!("`get all` lists everything; name one object with its kind (get broker NAME)");
    }
    let mut tables = vec![];
    let mut items = vec![];
    for k in Kind::all().filter(|k| !matches!(k, Kind::Secret | Kind::ConfigMap | Kind::Namespace)) {
        match get_objects(&a.server.server, k, ns, None).await? {
            Ok(found) if found.is_empty() => {}
            Ok(found) => {
                if a.output == crate::cli::OutputFormat::Table {
                    tables.push(format!("# {}\n{}", k.plural(), crate::output::render(k, &found, a.output, false)));
                }
                items.extend(found);
            }
            Err(body) => return Ok(report_failure(&body)),
        }
    }
    match a.output {
        crate::cli::OutputFormat::Table if tables.is_empty() => println!("No resources found."),
        crate::cli::OutputFormat::Table => print!("{}", tables.join("\n")),
        other => print!("{}", crate::output::render(Kind::Broker, &items, other, false)),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `spate tail`: the admin API's server-sent events, one line per event.
pub async fn tail(a: crate::cli::TailArgs) -> Exit {
    let server = a.server.server.trim_end_matches('/');
    let target = match a.target.as_deref() {
        None => String::new(),
        Some(t) => match t.split_once('/') {
            Some((kind @ ("broker" | "channel" | "trigger"), name)) => format!("{kind}/{}/{name}", a.namespace),
            _ => bail!("'{t}': use broker/NAME, channel/NAME or trigger/NAME"),
        },
    };
    let mut query = vec![("target", target.clone())];
    if let Some(f) = &a.filter {
        query.push(("cesql", f.clone()));
    }
    let mut resp =
        admin().get(format!("{server}/tail")).query(&query).send().await.map_err(|e| unreachable(server, e))?;
    if !resp.status().is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Ok(report_failure(&body));
    }
    eprintln!("tailing {}; Ctrl-C to stop", if target.is_empty() { "every broker and channel" } else { &target });
    let mut buf = String::new();
    let mut event_name = String::new();
    while let Some(chunk) = resp.chunk().await.context("reading the event stream")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event: ") {
                event_name = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                print_tailed(&event_name, data, a.output);
                event_name.clear();
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `spate replay trigger/NAME --from-time T | --from-offset N`, with a progress bar.
pub async fn replay(a: crate::cli::ReplayArgs) -> Exit {
    let server = a.server.server.trim_end_matches('/');
    let Some(("trigger", name)) = a.target.split_once('/') else {
        bail!("'{}': use trigger/NAME (a replay goes to one trigger)", a.target)
    };
    let body = match (&a.from_time, a.from_offset) {
        (Some(t), None) => serde_json::json!({"fromTime": t}),
        (None, Some(n)) => serde_json::json!({"fromOffset": n}),
        _ => bail!("give one of --from-time and --from-offset"),
    };
    let url = format!("{server}/replay/{}/{name}", a.namespace);
    let mut resp = admin().post(url).json(&body).send().await.map_err(|e| unreachable(server, e))?;
    if !resp.status().is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Ok(report_failure(&body));
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} events read {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let (mut buf, mut last) = (String::new(), Value::Null);
    while let Some(chunk) = resp.chunk().await.context("reading the replay's progress")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else { continue };
            if let Some(e) = v["error"].as_str() {
                bar.abandon();
                bail!("replay failed: {e}");
            }
            bar.set_length(v["total"].as_u64().unwrap_or(0));
            bar.set_position(v["scanned"].as_u64().unwrap_or(0));
            bar.set_message(format!("· {} matched · {} delivered", v["matched"], v["delivered"]));
            last = v;
        }
    }
    bar.finish_and_clear();
    if last["done"] != true {
        bail!("the server ended the replay early (see its log)");
    }
    println!(
        "replayed to trigger {}/{name} from offset {}: {} event(s) read, {} matched its filter, {} delivered, {} failed",
        a.namespace, last["fromOffset"], last["scanned"], last["matched"], last["delivered"], last["failed"]
    );
    Ok(if last["failed"] == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}

fn print_tailed(event_name: &str, data: &str, output: crate::cli::OutputFormat) {
    if event_name == "dropped" {
        eprintln!("(fell behind: {data} event(s) not shown)");
        return;
    }
    if output != crate::cli::OutputFormat::Table {
        println!("{data}");
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else { return };
    let e = &v["event"];
    let field = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let outcome = v["outcome"].as_str().map(|o| format!("  {o}")).unwrap_or_default();
    println!(
        "{}  {}  {}  {}  {}{outcome}",
        field("knativearrivaltime"),
        v["target"].as_str().unwrap_or(""),
        field("type"),
        field("source"),
        field("id")
    );
}

/// `spate describe KIND NAME` (or `KIND/NAME`).
pub async fn describe(a: crate::cli::DescribeArgs) -> Exit {
    let (kind, name) = match (a.kind.split_once('/'), &a.name) {
        (Some((k, n)), None) => (k.to_string(), n.to_string()),
        (None, Some(n)) => (a.kind.clone(), n.clone()),
        _ => bail!("give KIND NAME or KIND/NAME"),
    };
    let k = kind_arg(&kind)?;
    match get_objects(&a.server.server, k, Some(&a.namespace), Some(&name)).await? {
        Ok(items) => {
            print!("{}", crate::output::describe(&items[0]));
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(body) => Ok(report_failure(&body)),
    }
}

/// `spate get sources`: every source kind, with sink and state.
async fn get_sources(a: &GetArgs, ns: Option<&str>) -> Exit {
    let mut all = vec![];
    for k in Kind::sources() {
        match get_objects(&a.server.server, k, ns, None).await? {
            Ok(items) => all.extend(items.into_iter().map(|i| (k, i))),
            Err(body) => return Ok(report_failure(&body)),
        }
    }
    if a.name.is_some() {
        bail!("`get sources` lists every source; name one with its kind (get pingsource NAME)");
    }
    match a.output {
        crate::cli::OutputFormat::Table => print!("{}", crate::output::sources_table(&all)),
        other => {
            let items: Vec<Value> = all.into_iter().map(|(_, i)| i).collect();
            print!("{}", crate::output::render(Kind::sources().next().expect("a source kind"), &items, other, false));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Resolves a broker's address through the admin API (`status.address.url`).
/// `status.address.url` of an addressable resource (Broker, Channel, Sequence, …).
pub async fn address_url(server: &str, kind: Kind, ns: &str, name: &str) -> anyhow::Result<String> {
    let k = kind.name();
    let lower = k.to_ascii_lowercase();
    match get_objects(server, kind, Some(ns), Some(name)).await? {
        Ok(items) => {
            items[0].pointer("/status/address/url").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                anyhow!("{k} {ns}/{name} has no address yet (is it Ready? see `spate get {lower} {name} -n {ns}`)")
            })
        }
        Err(_) => bail!("{k} {ns}/{name} not found (see `spate get {lower} -A`)"),
    }
}

fn parse_extensions(exts: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    exts.iter()
        .map(|e| {
            let (k, v) = e.split_once('=').ok_or_else(|| anyhow!("--extension '{e}': use name=value"))?;
            spate_core::rules::check_attribute_name(k).map_err(|err| anyhow!("--extension '{e}': {err}"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Live progress on standard error for long sends.
pub struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        // indicatif draws only on a terminal; the summary line is printed either way.
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} events, {per_sec}, {msg}")
                .expect("a valid template")
                .progress_chars("= "),
        );
        Progress { bar, started: Instant::now() }
    }
    pub fn show(&self, done: u64, failed: u64, last: bool) {
        self.bar.set_position(done);
        self.bar.set_message(format!("{failed} failed"));
        if last {
            self.bar.finish_and_clear();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "{done}/{} events, {:.0}/s, {failed} failed",
                self.bar.length().unwrap_or(done),
                done as f64 / secs
            );
        }
    }
}

pub async fn send(a: SendArgs) -> Exit {
    let url = match (&a.to, &a.broker) {
        (Some(u), _) => u.clone(),
        (None, Some(b)) => address_url(&a.server.server, Kind::Broker, &a.namespace, b).await?,
        (None, None) => bail!("give --to URL or --broker NAME"),
    };
    let exts = parse_extensions(&a.extensions)?;
    let base_id = a.id.clone().unwrap_or_else(|| {
        format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        )
    });
    let build = |i: u64| -> anyhow::Result<(HeaderMap, Bytes)> {
        let id = if a.count > 1 { format!("{base_id}-{i}") } else { base_id.clone() };
        let mut ev = CloudEvent::new(id, a.source.clone(), a.ty.clone());
        ev.datacontenttype = Some(a.content_type.clone());
        ev.data = a.data.clone().map(Bytes::from);
        for (k, v) in &exts {
            ev.set_extension(k, ExtValue::String(v.clone()));
        }
        ev.validate().map_err(|e| anyhow!("the event is not valid: {e}"))?;
        let mut h = HeaderMap::new();
        let body = match a.mode {
            SendMode::Binary => spate_core::http_codec::encode_binary(&ev, &mut h),
            SendMode::Structured => spate_core::http_codec::encode_structured(&ev, &mut h),
        };
        Ok((h, body))
    };
    build(0)?;
    let client = http();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let progress = Progress::new(a.count);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut ticker = (a.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut last_show = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (h, body) = build(i)?;
        let (client, url, sent_c, failed_c, first_error) =
            (client.clone(), url.clone(), sent.clone(), failed.clone(), first_error.clone());
        tasks.spawn(async move {
            let (sent, failed) = (sent_c, failed_c);
            let r = client.post(&url).headers(h).body(body).send().await;
            let err = match r {
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => {
                    Some(format!("HTTP {}: {}", resp.status().as_u16(), resp.text().await.unwrap_or_default().trim()))
                }
                Err(e) => Some(e.to_string()),
            };
            match err {
                None => sent.fetch_add(1, Ordering::Relaxed),
                Some(e) => {
                    first_error.lock().expect("lock").get_or_insert(e);
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        if a.count > 1 && last_show.elapsed() > Duration::from_millis(200) {
            progress.show(
                sent.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                false,
            );
            last_show = Instant::now();
        }
    }
    while tasks.join_next().await.is_some() {}
    let (ok, bad) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if a.count > 1 {
        progress.show(ok + bad, bad, true);
    }
    if let Some(e) = first_error.lock().expect("lock").take() {
        eprintln!("error: {bad} of {} event(s) failed; first failure: {e}", a.count);
        return Ok(std::process::ExitCode::FAILURE);
    }
    if a.count == 1 {
        println!("event {base_id} sent to {url}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A kubeconfig for this server: cluster (with the CA's certificates, if
/// given), user (with the token, if any) and a context using both.
pub fn kubeconfig(a: &crate::cli::KubeconfigArgs) -> anyhow::Result<String> {
    use base64::Engine;
    let mut cluster = serde_json::json!({"server": a.server.server});
    if let Some(path) = &a.ca_file {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading --ca-file {}: {e}", path.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            anyhow::bail!("--ca-file {} holds no PEM certificate", path.display());
        }
        cluster["certificate-authority-data"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let user = match &a.token {
        Some(t) => serde_json::json!({"token": t}),
        None => serde_json::json!({}),
    };
    let config = serde_json::json!({"apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "spate", "cluster": cluster}],
        "users": [{"name": "spate", "user": user}],
        "contexts": [{"name": "spate", "context": {"cluster": "spate", "user": "spate", "namespace": a.namespace}}],
        "current-context": "spate"});
    Ok(serde_saphyr::to_string(&config)?)
}
