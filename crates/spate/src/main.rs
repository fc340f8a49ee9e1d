//! `spate`: Knative Eventing in one binary. This file only parses the command
//! line and hands over: `serve` to the server library (`spate-server`), every
//! other subcommand to the CLI's modules, which talk to a server over HTTP only.

mod bench;
mod cli;
mod client;
mod output;

use clap::Parser;

/// glibc's allocator spent ~15% of server CPU in malloc/free/consolidation under
/// load (perf); mimalloc's thread-local free lists remove most of it. Built
/// without transparent huge pages (`no_thp`): idle memory stays in 4 KiB pages.
/// `--features system-alloc` keeps glibc's, for heap profilers (heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // rustls is built with two crypto providers (ring, Spate's; aws-lc-rs, pulled in by the
    // RocketMQ client's reqwest): name the process default so that libraries building
    // TLS configs from it (async-nats, lapin) never find it ambiguous.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    client::set_token(args.token.clone());
    let command = args.resolve();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            cli::Command::Serve(a) => spate_server::serve::run(*a).await.map_err(anyhow::Error::from),
            cli::Command::Apply(a) => client::apply(a).await,
            cli::Command::Delete(a) => client::delete(a).await,
            cli::Command::Get(a) => client::get(a).await,
            cli::Command::Send(a) => client::send(a).await,
            cli::Command::Logs(a) => client::logs(a).await,
            cli::Command::Describe(a) => client::describe(a).await,
            cli::Command::Tail(a) => client::tail(a).await,
            cli::Command::Replay(a) => client::replay(a).await,
            cli::Command::Validate(a) => client::validate(a),
            cli::Command::Kubeconfig(a) => client::kubeconfig(&a).map(|text| {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }),
            cli::Command::Bench(a) => bench::run(a).await,
            cli::Command::BenchPart(p) => match p.role {
                cli::BenchRole::Sink => bench::sink::serve_child().await.map(|()| std::process::ExitCode::SUCCESS),
                cli::BenchRole::Load => {
                    bench::load_child(&p.bench, &p.url).await.map(|()| std::process::ExitCode::SUCCESS)
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
