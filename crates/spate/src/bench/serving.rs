//! `spate bench --target service`: cold starts (compiled and Python
//! functions), the activator's cost when instances are warm, and a burst from
//! zero to N concurrent clients.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::percentiles;
use crate::cli::BenchArgs;

fn service(name: &str, command: &[String], annotations: &[(&str, &str)]) -> String {
    let mut ann = String::new();
    for (k, v) in annotations {
        ann.push_str(&format!("        {k}: \"{v}\"\n"));
    }
    let cmd = command.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 6s\n{ann}    spec:\n      containers:\n        - command: [{cmd}]\n"
    )
}

fn functions(a: &BenchArgs) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let rust = exe.with_file_name("hello-fn");
    if !rust.is_file() {
        bail!("{} is missing: build it with `cargo build --release -p hello-fn`", rust.display());
    }
    let py = a.function_dir.join("hello.py");
    if !py.is_file() {
        bail!("{} is missing (run from the repository root, or give --function-dir)", py.display());
    }
    let py = py.canonicalize()?;
    Ok((vec![rust.display().to_string()], vec!["python3".into(), py.display().to_string()]))
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let r = client.get(url).send().await?;
    let ok = r.status().is_success();
    let _ = r.bytes().await?;
    if !ok {
        bail!("GET {url} failed");
    }
    Ok(t0.elapsed())
}

pub async fn run(a: &BenchArgs, admin: &str, data: &str) -> anyhow::Result<std::process::ExitCode> {
    let (rust, python) = functions(a)?;
    let client = reqwest::Client::builder().http1_only().tcp_nodelay(true).build()?;
    let apply = |yaml: String| async move { super::apply(admin, &yaml).await };

    println!("spate bench: serving (functions: {} and {})", rust[0], python.join(" "));
    // Cold start: one request to each of several services at zero.
    let samples = 8;
    for (label, cmd) in [("compiled (Rust, std only)", &rust), ("Python (http.server)", &python)] {
        let prefix = if cmd.len() == 1 { "cold-rs" } else { "cold-py" };
        let yaml: Vec<String> = (0..samples).map(|i| service(&format!("{prefix}-{i}"), cmd, &[])).collect();
        apply(yaml.join("---\n")).await.context("creating the cold-start services")?;
        let mut took = vec![];
        for i in 0..samples {
            took.push(get(&client, &format!("{data}/services/default/{prefix}-{i}")).await?.as_nanos() as u64);
        }
        println!("\ncold start, zero to first response, {label}, {samples} services\n  {}", percentiles(took));
    }

    warm(&client, admin, data, &rust).await?;
    burst(a, &client, admin, data, &rust).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Warm: the activator's cost over calling the instance directly.
async fn warm(client: &reqwest::Client, admin: &str, data: &str, rust: &[String]) -> anyhow::Result<()> {
    let client = client.clone();
    super::apply(admin, &service("warm", rust, &[("autoscaling.knative.dev/min-scale", "1")])).await?;
    let url = format!("{data}/services/default/warm");
    get(&client, &url).await?;
    let n = 2000;
    let mut via = vec![];
    for _ in 0..n {
        via.push(get(&client, &url).await?.as_nanos() as u64);
    }
    let port = spate_process::free_port()?;
    let mut direct_fn = tokio::process::Command::new(&rust[0])
        .env("PORT", port.to_string())
        .kill_on_drop(true)
        .spawn()
        .context("starting hello-fn for the direct baseline")?;
    let direct_url = format!("http://127.0.0.1:{port}/");
    while get(&client, &direct_url).await.is_err() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut direct = vec![];
    for _ in 0..n {
        direct.push(get(&client, &direct_url).await?.as_nanos() as u64);
    }
    let _ = direct_fn.kill().await;
    let p50 = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1e6
    };
    let (pv, pd) = (p50(&mut via.clone()), p50(&mut direct.clone()));
    println!(
        "\nwarm, {n} sequential requests\n  through Spate: {}\n  direct:        {}\n  activator adds {:.3} ms at p50",
        percentiles(via),
        percentiles(direct),
        pv - pd
    );

    Ok(())
}

/// Burst: N clients at once against a service at zero (target 10 concurrent per instance).
async fn burst(
    a: &BenchArgs,
    client: &reqwest::Client,
    admin: &str,
    data: &str,
    rust: &[String],
) -> anyhow::Result<()> {
    let clients = a.concurrency;
    let secs = a.burst_seconds;
    // containerConcurrency 10: an instance takes at most 10, so the burst needs the autoscaler.
    let burst = service("burst", rust, &[("autoscaling.knative.dev/target", "10")])
        .replace("      containers:", "      containerConcurrency: 10\n      containers:");
    super::apply(admin, &burst).await?;
    let url = format!("{data}/services/default/burst?sleep=20");
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut tasks = vec![];
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            while Instant::now() < until {
                let t0 = Instant::now();
                if get(&client, &url).await.is_ok() {
                    out.push((t0.duration_since(start), t0.elapsed()));
                }
            }
            out
        }));
    }
    let mut all: Vec<(Duration, Duration)> = vec![];
    for t in tasks {
        all.extend(t.await?);
    }
    let bucket = Duration::from_millis(250);
    let nb = (Duration::from_secs(secs).as_millis() / bucket.as_millis()) as usize;
    let mut per = vec![0u32; nb + 1];
    for (at, _) in &all {
        per[(at.as_millis() / bucket.as_millis()) as usize] += 1;
    }
    let tail = &per[nb.saturating_sub(8)..nb];
    let steady = f64::from(tail.iter().sum::<u32>()) / tail.len().max(1) as f64;
    let reached = per.iter().position(|c| f64::from(*c) >= 0.9 * steady).unwrap_or(nb);
    let first2: Vec<u64> =
        all.iter().filter(|(at, _)| *at < Duration::from_secs(2)).map(|(_, l)| l.as_nanos() as u64).collect();
    let overall: Vec<u64> = all.iter().map(|(_, l)| l.as_nanos() as u64).collect();
    let st =
        crate::client::get_json(admin, "/apis/serving.knative.dev/v1/namespaces/default/revisions/burst-00001").await?;
    println!(
        "\nburst from zero: {clients} clients, closed loop for {secs} s, 20 ms per request, target and containerConcurrency 10\n  \
         time to steady state (90% of the last 2 s rate): {} ms\n  steady rate: {:.0} requests/s, instances: {}\n  \
         latency in the first 2 s: {}\n  latency overall: {}",
        reached as u128 * bucket.as_millis(),
        steady / bucket.as_secs_f64(),
        st["status"]["actualScale"],
        percentiles(first2),
        percentiles(overall)
    );
    Ok(())
}
